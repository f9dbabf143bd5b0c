"""SAHI peer: SAHI's sliced prediction run with one of our Mask R-CNNs on exactly our 25 tiles.

Written against sahi 0.12.8. What SAHI needed to run our model:
- `LivecellTorchVision`, a subclass of `sahi.models.torchvision.TorchVisionDetectionModel`
  built from the already-loaded model (`model=...`, no `model_path`; `set_model` then only
  calls eval() and .to(device)). `category_mapping={"1": "cell"}`, else `set_model` installs
  the 91 COCO names and label 1 becomes "person". `image_size=None` leaves the model's own
  transform (the native-scale min_size/max_size that `apply_inference` set) untouched.
  Thresholds: `confidence_threshold` = our score_thresh (SAHI keeps `score > thr`, as
  torchvision does), `mask_threshold` = our stitch.mask_thresh (SAHI keeps `prob > thr`).
- `perform_inference` is replaced: the stock one builds its tensor with `to_float_tensor`,
  which divides by 255 only when the tile's maximum is > 1, and calls the model without
  no_grad/inference_mode (autograd records the whole forward). Ours feeds `gray_to_tensor`
  of the gray image (SAHI hands over an HxWx3 copy; all channels must be equal) under
  `torch.inference_mode()`.
- The conversion to ObjectPredictions drops first the detections whose thresholded mask
  gives no polygon (empty, or only contours of < 3 points such as 1-2 px specks and 1 px
  lines): stock SAHI raises `ValueError("Invalid segmentation mask.")` on them and the whole
  image is lost. `dropped_no_polygon` counts them; the rest is SAHI's own conversion.
- `sahi_predict` does what `get_sliced_prediction` does, with slices on our `tile_windows`
  (a regular SAHI grid cannot make them: 36 slices for 304x224 with 204/150 px overlaps):
  `get_prediction` per window with its shift and the full shape, `get_shifted_object_prediction`
  of each result, then the postprocess class from `POSTPROCESS_NAME_TO_CLASS` with
  class_agnostic=False (get_sliced_prediction's default). Not done, as ours does neither:
  the extra whole-image pass (`perform_standard_pred`: our transform would shrink a 704x520
  image to 304 px wide) and the switch to NMS/IOU below confidence 0.1 (ours is 0.4).
The model object is shared with the Predictor: its OwnershipFilter patches the model only
inside a stitched call, so SAHI sees the plain model and runs every proposal of every tile
through the heads (compare its seconds with ours_all_proposals); do not run both at once.
SAHI holds masks as COCO polygons (`ObjectPrediction.mask.segmentation`, from cv2
contours); `mask.bool_mask` rasterises them (cv2.fillPoly) at `full_shape`. The full-image
masks returned here are that rasterisation of each merged prediction, encoded as RLE. The
polygons lose parts of < 3 contour points; a merge (NMM, GREEDYNMM) unions them in shapely
and keeps exterior rings only, so merged masks lose their holes. Note: device="cpu" makes
SAHI's select_device set CUDA_VISIBLE_DEVICES=-1 for the whole process.

    PYTHONPATH=src python bench/sahi_peer.py [--model models/custom.pt] [--images 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from sahi.models.torchvision import TorchVisionDetectionModel
from sahi.predict import POSTPROCESS_NAME_TO_CLASS, get_prediction
from sahi.utils.cv import get_coco_segmentation_from_bool_mask

from livecellseg.datasets import gray_to_tensor
from livecellseg.tiling import Window

POSTPROCESS_TYPES = ("GREEDYNMM", "NMM", "NMS")
MATCH_METRICS = ("IOS", "IOU")


class LivecellTorchVision(TorchVisionDetectionModel):
    """SAHI's torchvision wrapper around one of our loaded Mask R-CNNs (gray input)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        score_thresh: float,
        mask_thresh: float,
        device: str = "cpu",
    ) -> None:
        self.dropped_no_polygon = 0  # detections without a polygon, over all calls
        super().__init__(
            model=model,
            device=device,
            confidence_threshold=score_thresh,
            mask_threshold=mask_thresh,
            category_mapping={"1": "cell"},
            image_size=None,
        )

    @classmethod
    def of(cls, predictor) -> LivecellTorchVision:
        """The wrapper of a `livecellseg.predict.Predictor`'s model, with its thresholds."""
        return cls(
            predictor.model,
            score_thresh=predictor.settings.inference.score_thresh,
            mask_thresh=predictor.settings.stitch.mask_thresh,
            device=str(predictor.device),
        )

    def perform_inference(self, image: np.ndarray, image_size: int | None = None) -> None:
        gray = image[..., 0] if image.ndim == 3 else image
        if image.ndim == 3 and (image != gray[..., None]).any():
            raise ValueError("the model takes gray images; got one with unequal RGB channels")
        tensor = gray_to_tensor(np.ascontiguousarray(gray)).to(self.device)
        with torch.inference_mode():
            self._original_predictions = self.model([tensor])

    def _create_object_prediction_list_from_original_predictions(
        self, shift_amount_list=None, full_shape_list=None
    ) -> None:
        """SAHI's conversion, after dropping (and counting) detections without a polygon;
        `_original_predictions` keeps only the converted ones."""
        kept = []
        for pred in self._original_predictions:
            masks = (pred["masks"][:, 0] > self.mask_threshold).cpu().numpy()
            polygon = [bool(get_coco_segmentation_from_bool_mask(m)) for m in masks]
            polygon = torch.tensor(polygon, dtype=torch.bool, device=pred["scores"].device)
            above = pred["scores"] > self.confidence_threshold
            self.dropped_no_polygon += int((above & ~polygon).sum())
            kept.append({k: v[polygon] for k, v in pred.items()})
        self._original_predictions = kept
        super()._create_object_prediction_list_from_original_predictions(
            shift_amount_list=shift_amount_list, full_shape_list=full_shape_list
        )


def slice_predictions(
    detection_model: LivecellTorchVision, image: np.ndarray, windows: list[Window]
) -> list:
    """SAHI's ObjectPredictions of a gray (H, W) uint8 image, one `get_prediction` per
    window (its shift and the full shape), shifted to image coordinates, not yet merged."""
    h, w = image.shape
    rgb = np.repeat(image[..., None], 3, axis=2)
    objects = []
    for win in windows:
        result = get_prediction(
            rgb[win.y0 : win.y1, win.x0 : win.x1],
            detection_model,
            shift_amount=[win.x0, win.y0],
            full_shape=[h, w],
            postprocess=None,
            verbose=0,
        )
        objects.extend(p.get_shifted_object_prediction() for p in result.object_prediction_list)
    return objects


def merge(
    objects: list,
    postprocess_type: str = "GREEDYNMM",
    match_metric: str = "IOS",
    match_threshold: float = 0.5,
) -> tuple[list[dict], np.ndarray, dict]:
    """SAHI's merge of slice predictions as `get_sliced_prediction` applies it
    (class_agnostic=False), then each merged prediction rasterised by SAHI at the full shape.

    Returns full-image RLEs and float32 scores (best first), and counts: objects before and
    after the merge, merged masks that rasterise to no pixel. SAHI's NMM classes write merged
    predictions into the list they are given: pass a copy to merge one list several ways.
    """
    if postprocess_type not in POSTPROCESS_TYPES:
        raise ValueError(f"postprocess_type {postprocess_type!r}: one of {POSTPROCESS_TYPES}")
    if match_metric not in MATCH_METRICS:
        raise ValueError(f"match_metric {match_metric!r}: one of {MATCH_METRICS}")
    postprocess = POSTPROCESS_NAME_TO_CLASS[postprocess_type](
        match_threshold=match_threshold, match_metric=match_metric, class_agnostic=False
    )
    merged = postprocess(objects) if len(objects) > 1 else list(objects)
    merged.sort(key=lambda p: -p.score.value)
    masks = [p.mask.bool_mask for p in merged]  # SAHI's rasterisation at full_shape (h, w)
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    scores = np.array([p.score.value for p in merged], np.float32)
    info = {
        "before_merge": len(objects),
        "after_merge": len(merged),
        "empty_after_merge": sum(not m.any() for m in masks),
    }
    return rles, scores, info


def sahi_predict(
    detection_model: LivecellTorchVision,
    image: np.ndarray,
    windows: list[Window],
    *,
    postprocess_type: str = "GREEDYNMM",
    match_metric: str = "IOS",
    match_threshold: float = 0.5,
) -> tuple[list[dict], np.ndarray, dict]:
    """SAHI's sliced prediction of a gray (H, W) uint8 image, slices on `windows`: what
    `get_sliced_prediction` does, on our tiles. RLEs, scores, counts (see `merge`)."""
    dropped = detection_model.dropped_no_polygon
    objects = slice_predictions(detection_model, image, windows)
    rles, scores, info = merge(objects, postprocess_type, match_metric, match_threshold)
    info |= {
        "slices": len(windows),
        "dropped_no_polygon": detection_model.dropped_no_polygon - dropped,
    }
    return rles, scores, info


def matched_fraction(rles: list[dict], others: list[dict], iou: float = 0.5) -> float:
    """Share of `rles` whose best mask IoU with one of `others` is > `iou`."""
    if not rles or not others:
        return 0.0
    return float((mask_utils.iou(rles, others, [0] * len(others)).max(1) > iou).mean())


def round_trip(detection_model: LivecellTorchVision, image: np.ndarray, win: Window) -> dict:
    """Every mask of one tile through SAHI: thresholded mask -> SAHI's ObjectPrediction
    (polygons, shifted) -> full-image bool mask, against the thresholded mask pasted."""
    h, w = image.shape
    crop = np.repeat(image[win.y0 : win.y1, win.x0 : win.x1, None], 3, axis=2)
    detection_model.perform_inference(crop)
    detection_model.convert_original_predictions(shift_amount=[win.x0, win.y0], full_shape=[h, w])
    (pred,) = detection_model.original_predictions  # filtered: one entry per object
    keep = pred["scores"] > detection_model.confidence_threshold
    masks = (pred["masks"][keep][:, 0] > detection_model.mask_threshold).numpy()
    objects = detection_model.object_prediction_list
    missing = extra = area = exact = 0
    worst = 0.0
    for m, p in zip(masks, objects, strict=True):
        orig = np.zeros((h, w), bool)
        orig[win.y0 : win.y1, win.x0 : win.x1] = m
        back = p.get_shifted_object_prediction().mask.bool_mask
        lost, added = int((orig & ~back).sum()), int((back & ~orig).sum())
        missing, extra, area = missing + lost, extra + added, area + int(m.sum())
        exact += lost == added == 0
        worst = max(worst, (lost + added) / max(int(m.sum()), 1))
    return {
        "tile": [win.row, win.col],
        "masks": len(objects),
        "exact": exact,
        "pixels_original": area,
        "pixels_missing": missing,
        "pixels_extra": extra,
        "worst_mask_diff_fraction": round(worst, 4),
    }


def main() -> None:
    from livecellseg.images import read_gray
    from livecellseg.predict import Predictor
    from livecellseg.tiling import tile_windows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/custom.pt")
    ap.add_argument("--images", type=int, default=2)
    args = ap.parse_args()
    predictor, _ = Predictor.from_checkpoint(args.model, torch.device("cpu"))
    s = predictor.settings.stitch
    sahi_model = LivecellTorchVision.of(predictor)
    doc = json.loads(Path("data/split/test.json").read_text())
    runs = {"greedynmm_ios_0.5": ("GREEDYNMM", "IOS", 0.5), "nms_ios_0.5": ("NMS", "IOS", 0.5)}
    report = {"model": args.model, "sahi": "0.12.8", "images": []}
    for entry in doc["images"][: args.images]:
        image = read_gray(Path("data/subset/images") / entry["file_name"])
        windows = tile_windows(*image.shape, s.grid, s.window)
        predictor.forward([image[:224, :304]])  # warm-up, untimed
        row, dets = {"file_name": entry["file_name"]}, {}
        # ours as it runs (OwnershipFilter), and with every proposal through the heads as SAHI
        for name, owned_only in (("ours", True), ("ours_all_proposals", False)):
            predictor.owned_only = owned_only
            t = time.perf_counter()
            dets[name], _ = predictor(image, "stitched")
            seconds = round(time.perf_counter() - t, 2)
            row[name] = {"detections": len(dets[name].rles), "seconds": seconds}
        del predictor.owned_only
        ours = dets["ours"]
        for name, (kind, metric, thresh) in runs.items():
            t = time.perf_counter()
            rles, _, info = sahi_predict(
                sahi_model,
                image,
                windows,
                postprocess_type=kind,
                match_metric=metric,
                match_threshold=thresh,
            )
            row[name] = {
                "detections": len(rles),
                "seconds": round(time.perf_counter() - t, 2),
                "matched_in_ours_iou_0.5": round(matched_fraction(rles, ours.rles), 4),
                "ours_matched_in_sahi_iou_0.5": round(matched_fraction(ours.rles, rles), 4),
                **info,
            }
        row["round_trip"] = round_trip(sahi_model, image, windows[len(windows) // 2])
        report["images"].append(row)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
