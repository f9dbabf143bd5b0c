"""Inference on whole images: the 25 tiles batched through the model and stitched, or one pass.

`Predictor` loads a checkpoint once and segments 2-D uint8 images of any size; its output is
in full-image coordinates (RLE masks) either way, so evaluation, the CLI and the app share it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils

from livecellseg.config import ModelConfig, Params
from livecellseg.datasets import gray_to_tensor
from livecellseg.engine import load_checkpoint
from livecellseg.errors import LivecellsegError
from livecellseg.models import MODEL_NAMES, InferenceSettings, build_model
from livecellseg.stitch import ImageDetections, StitchCounts, TileDetections, stitch, whole_image
from livecellseg.tiling import tile_windows
from livecellseg.training import inference_settings

log = logging.getLogger(__name__)
Mode = Literal["stitched", "whole"]


@dataclass(frozen=True)
class StitchSettings:
    mode: Mode = "stitched"
    grid: int = 7
    window: int = 3
    min_owned: float = 0.4
    nms_iou: float = 0.5
    batch_size: int = 5  # tiles per forward pass
    mask_thresh: float = 0.5
    amp: bool = True  # float16 autocast on CUDA (ignored on CPU)
    # Proposals whose objectness is below this never reach the RoI heads (torchvision's
    # rpn.score_thresh, 0 by default). The heads' cost is per proposal and dominates on CPU;
    # a sparse tile has a few dozen real proposals among its 1,000. Measured on the sample's
    # test images (bench/predict.py): identical detections, 1.08x faster on CPU.
    rpn_score_thresh: float = 0.05


def stitch_settings(params: Params) -> StitchSettings:
    """StitchSettings from params.yaml (stitch, tile grid/window, model.mask_thresh)."""
    s = params.stitch
    return StitchSettings(
        mode=s.mode,
        grid=params.tile.grid,
        window=params.tile.window,
        min_owned=s.min_owned,
        nms_iou=s.nms_iou,
        batch_size=s.batch_size,
        mask_thresh=params.model.mask_thresh,
        rpn_score_thresh=s.rpn_score_thresh,
    )


def trained_model_config(ckpt: dict, path: str | Path) -> ModelConfig:
    """The `model` params a checkpoint was trained with (its input scale, thresholds, budgets)."""
    try:
        return ModelConfig(**ckpt["params"]["params"]["model"])
    except (KeyError, TypeError, LivecellsegError):
        raise LivecellsegError(
            f"{path}: checkpoint does not record its model params; retrain it with this "
            "livecellseg or use the pipeline's stitch_predict stage"
        ) from None


def load_model(
    path: str | Path,
    inference: InferenceSettings | None,
    device: torch.device,
    *,
    score_thresh: float | None = None,
    expect: str | None = None,
) -> tuple[torch.nn.Module, dict]:
    """A trained model in eval mode from a livecellseg checkpoint (weights_only loading).

    `inference=None` uses the settings the checkpoint was trained with; `score_thresh`
    overrides the score threshold either way; `expect` names the model it must hold.
    """
    ckpt = load_checkpoint(Path(path))
    name = ckpt.get("name")
    if name not in MODEL_NAMES:
        raise LivecellsegError(f"{path}: checkpoint names no known model ({name!r})")
    if expect is not None and name != expect:
        raise LivecellsegError(
            f"{path}: holds the {name} model, expected {expect}; "
            f"put the train_{expect} stage's checkpoint there (dvc repro train_{expect})"
        )
    if inference is None:
        inference = inference_settings(trained_model_config(ckpt, path))
    if score_thresh is not None:
        inference = replace(inference, score_thresh=score_thresh)
    model, _ = build_model(name, weights="none", inference=inference)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise LivecellsegError(
            f"{path}: weights do not fit the {name} model (a checkpoint of another "
            "architecture or version); retrain or pass the right checkpoint"
        ) from None
    return model.to(device).eval(), ckpt


class Predictor:
    """Segments images with one model; stitched (25 tiles) or whole-image inference."""

    def __init__(self, model: torch.nn.Module, device: torch.device, settings: StitchSettings):
        self.model, self.device, self.s = model, device, settings
        model.rpn.score_thresh = settings.rpn_score_thresh  # the model is the predictor's now

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: torch.device, *, score_thresh: float | None = None
    ) -> tuple[Predictor, dict]:
        """A predictor with the checkpoint's own settings (for the CLI and the app)."""
        model, ckpt = load_model(path, None, device, score_thresh=score_thresh)
        mask_thresh = trained_model_config(ckpt, path).mask_thresh
        return cls(model, device, StitchSettings(mask_thresh=mask_thresh)), ckpt

    @torch.inference_mode()
    def forward(self, images: list[np.ndarray]) -> list[TileDetections]:
        """Model outputs for a batch of gray images: bool masks (n, h, w) and scores."""
        batch = [gray_to_tensor(im).to(self.device, non_blocking=True) for im in images]
        amp = self.s.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
            outputs = self.model(batch)
        return [
            TileDetections(
                (out["masks"][:, 0] > self.s.mask_thresh).cpu().numpy(),
                out["scores"].float().cpu().numpy(),
            )
            for out in outputs
        ]

    def __call__(
        self, image: np.ndarray, mode: Mode | None = None
    ) -> tuple[ImageDetections, StitchCounts]:
        mode = mode or self.s.mode
        h, w = image.shape
        if mode == "stitched" and min(h, w) < self.s.grid:
            log.warning(
                "a %dx%d image cannot be cut into %dx%d mini-tiles; predicting it whole",
                w,
                h,
                self.s.grid,
                self.s.grid,
            )
            mode = "whole"
        if mode == "whole":
            with whole_image_settings(self.model, h, w, (self.s.grid / self.s.window) ** 2):
                (det,) = self.forward([image])
            return whole_image(det.masks, det.scores)
        windows = tile_windows(h, w, self.s.grid, self.s.window)
        crops = [image[win.y0 : win.y1, win.x0 : win.x1] for win in windows]
        tiles: list[TileDetections] = []
        for i in range(0, len(crops), self.s.batch_size):
            tiles.extend(self.forward(crops[i : i + self.s.batch_size]))
        return stitch(
            tiles,
            h,
            w,
            grid=self.s.grid,
            window=self.s.window,
            min_owned=self.s.min_owned,
            nms_iou=self.s.nms_iou,
        )


@contextlib.contextmanager
def whole_image_settings(model, height: int, width: int, scale: float):
    """Native input scale, and proposal/detection budgets scaled from a tile to the image."""
    t, rpn, heads = model.transform, model.rpn, model.roi_heads
    saved = (t.min_size, t.max_size, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n))
    saved_dets = heads.detections_per_img
    t.min_size, t.max_size = (min(height, width),), max(height, width)
    for budget in (rpn._pre_nms_top_n, rpn._post_nms_top_n):
        budget["testing"] = round(budget["testing"] * scale)
    heads.detections_per_img = round(saved_dets * scale)
    try:
        yield
    finally:
        t.min_size, t.max_size, rpn._pre_nms_top_n, rpn._post_nms_top_n = saved
        heads.detections_per_img = saved_dets


def to_coco_results(image_id: int, det: ImageDetections) -> list[dict]:
    """COCO results entries (RLE masks, str counts) for one image, best score first."""
    if not det.rles:
        return []
    boxes = mask_utils.toBbox(det.rles)
    # one RLE at a time: pycocotools 2.0.11's area() of >= 256 RLEs overflows under numpy 2
    areas = [mask_utils.area(rle) for rle in det.rles]
    return [
        {
            "image_id": image_id,
            "category_id": 1,
            "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
            "score": round(float(score), 5),
            "bbox": [round(float(v), 2) for v in box],
            "area": int(area),
        }
        for rle, score, box, area in zip(det.rles, det.scores, boxes, areas, strict=True)
    ]


def coco_document(file_name: str, height: int, width: int, det: ImageDetections) -> dict:
    """One image's detections as a COCO document (image, annotations with scores, category):
    COCO() opens it as a data set, and its `annotations` are valid COCO results."""
    anns = to_coco_results(1, det)
    for i, ann in enumerate(anns, start=1):
        ann.update(id=i, iscrowd=0)
    return {
        "images": [{"id": 1, "file_name": file_name, "height": height, "width": width}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cell"}],
    }
