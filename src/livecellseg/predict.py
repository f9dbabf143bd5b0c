"""Segmenting whole images with a trained model: (grid - window + 1)^2 overlapping tiles
batched and stitched (25 with params.yaml's 7x7 grid and 3x3 window), or one pass.

`Predictor` holds a model and the settings it predicts with; `Predictor.from_checkpoint`
takes the trained geometry from the checkpoint, and the post-processing from params.yaml's
`predict` (the pipeline) or from the checkpoint's record of it (the CLI and the app, with
per-call overrides), so with default settings they count alike. Images are 2-D uint8 of any
size; detections come out in full-image coordinates (RLE masks) either way.

Stitched mode does only the work tile ownership can keep (`OwnershipFilter`): a tile owns
only its centre mini-tile (border tiles: to the image edge), so most of what a tile sees is
another tile's. Proposals that cannot reach the tile's owned box skip the box head, and
detections that cannot reach it skip the mask head; stitching then decides as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from livecellseg.checkpoint import load_checkpoint
from livecellseg.config import PredictConfig
from livecellseg.datasets import gray_to_tensor
from livecellseg.errors import ConfigError, LivecellsegError
from livecellseg.images import write_labels
from livecellseg.io import write_json
from livecellseg.models import MODEL_NAMES, apply_inference, build_model, inference_applied
from livecellseg.novelty import FeatureTap, Look, TrainingLook, tile_features
from livecellseg.runtime import autocast_dtype
from livecellseg.settings import (
    Mode,
    PredictSettings,
    recorded_predict,
    settings_of_checkpoint,
    with_overrides,
)
from livecellseg.stitch import ImageDetections, StitchCounts, TileDetections, stitch, whole_image
from livecellseg.tiling import Window, owned_box, tile_windows
from livecellseg.visualize import CellPixels, label_image

log = logging.getLogger(__name__)


def load_model(
    path: str | Path,
    device: torch.device,
    *,
    expect: str | None = None,
    predict: PredictConfig | None = None,
) -> tuple[torch.nn.Module, dict, PredictSettings]:
    """A trained model in eval mode, its checkpoint, and the settings it predicts with: the
    checkpoint's, post-processing from `predict` when given (else the recorded one).

    `expect` names the model the checkpoint must hold. Loading is `weights_only`.
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
    try:
        settings, sampling, arch = settings_of_checkpoint(ckpt.get("params"), name, predict)
    except ConfigError:
        raise LivecellsegError(
            f"{path}: checkpoint does not record the settings it was trained with; retrain "
            "it with this livecellseg (dvc repro)"
        ) from None
    model, _ = build_model(
        name, inference=settings.inference, sampling=sampling, arch=arch, **layout(ckpt)
    )
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise LivecellsegError(
            f"{path}: weights do not fit the {name} model (a checkpoint of another "
            "architecture or version); retrain or pass the right checkpoint"
        ) from None
    return model.to(device).eval(), ckpt, settings


def layout(ckpt: dict) -> dict:
    """build_model's layout arguments for a checkpoint: the transfer model trained from COCO
    weights keeps their layout; one trained without has its recorded normalisation."""
    run, recorded = ckpt.get("run") or {}, (ckpt.get("params") or {}).get("transfer") or {}
    return {
        "pretrained_layout": bool(run.get("pretrained")),
        "norm": recorded.get("scratch_norm", "batch"),
    }


# How far from a proposal its detection can lie. The box head learns to regress proposals of
# IoU >= 0.5 with a cell onto the cell (torchvision's fg_iou_thresh) and to score the rest as
# background; a box of IoU >= 0.5 with a proposal lies inside the proposal grown by its own
# width and height on each side (tests/test_ownership_filter.py checks the bound).
PROPOSAL_REACH = 1.0
# paste_masks_in_image pastes a 28x28 mask into its box grown by 1/28 of its size on each
# side (a 1-pixel border, mask_rcnn's expand_masks); coordinates are then truncated.
MASK_REACH = 1 / 28
PAD_PX = 2.0  # the truncation, and the tile's resize to the model's input scale (< 1%)


def reaches(boxes: torch.Tensor, region: torch.Tensor, grow: float, pad: float) -> torch.Tensor:
    """(n,) whether each box (x0, y0, x1, y1), grown on each side by `grow` times its width
    and height plus `pad` pixels, overlaps `region` (x0, y0, x1, y1)."""
    size = boxes[:, 2:] - boxes[:, :2]
    lo, hi = boxes[:, :2] - grow * size - pad, boxes[:, 2:] + grow * size + pad
    return ((lo < region[2:]) & (hi > region[:2])).all(1)


@dataclass
class OwnershipFilter:
    """Makes a Mask R-CNN skip the work tile ownership would throw away.

    A detection is kept only if its mask overlaps its tile's owned box (stitch.py), and its
    mask lies inside its box grown by MASK_REACH: a detection whose grown box misses the
    owned box gets no mask (exact: stitching would drop it). Its box comes from a proposal
    within PROPOSAL_REACH, so a proposal whose box grown by that, and by the mask's reach,
    misses the owned box skips the box head. This one assumes the box head keeps its
    training (a detection has IoU >= 0.5 with its proposal); docs/performance.md gives what it
    changes on the sample. `owned[i]` is batch image i's owned box in its pixels.
    """

    owned: list[Window]
    sizes: list[tuple[int, int]]  # (height, width) of each image of the batch
    skipped_proposals: int = 0
    skipped_detections: int = 0
    _regions: list[torch.Tensor] = field(default_factory=list, repr=False)

    def _scale(self, image_sizes: list[tuple[int, int]], device: torch.device) -> None:
        """The owned boxes in the model's resized input coordinates."""
        self._regions = [
            torch.tensor([o.x0, o.y0, o.x1, o.y1], dtype=torch.float32, device=device)
            * torch.tensor([w1 / w, h1 / h] * 2, device=device)
            for o, (h, w), (h1, w1) in zip(self.owned, self.sizes, image_sizes, strict=True)
        ]

    def _reaching(self, boxes: list[torch.Tensor], grow: float) -> list[torch.Tensor]:
        return [reaches(b, r, grow, PAD_PX) for b, r in zip(boxes, self._regions, strict=True)]

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        rpn, heads = model.rpn, model.roi_heads
        rpn_forward, postprocess = rpn.forward, heads.postprocess_detections
        proposal_reach = PROPOSAL_REACH + (1 + 2 * PROPOSAL_REACH) * MASK_REACH

        def filtered_rpn(images, features, targets=None):
            proposals, losses = rpn_forward(images, features, targets)
            self._scale(images.image_sizes, proposals[0].device)
            keep = self._reaching(proposals, proposal_reach)
            self.skipped_proposals += sum(int((~k).sum()) for k in keep)
            return _take(proposals, keep), losses

        def filtered_detections(*args, **kwargs):
            boxes, scores, labels = postprocess(*args, **kwargs)
            keep = self._reaching(boxes, MASK_REACH)
            self.skipped_detections += sum(int((~k).sum()) for k in keep)
            return _take(boxes, keep), _take(scores, keep), _take(labels, keep)

        rpn.forward, heads.postprocess_detections = filtered_rpn, filtered_detections
        try:
            yield
        finally:
            del rpn.forward, heads.postprocess_detections


def _take(tensors: list[torch.Tensor], keep: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t[k] for t, k in zip(tensors, keep, strict=True)]


@dataclass
class Segmented:
    """One image's segmentation: every detection above min_score, what stitching counted,
    and how unlike the training data the image looked (None: the checkpoint has no
    description of it, or it was not asked for)."""

    det: ImageDetections
    counts: StitchCounts
    look: Look | None = None


class Predictor:
    """Segments images with one model; stitched (tiles) or whole-image inference. It returns
    every detection above `min_score`; the cells are those above `score_thresh`. With a
    `training_look` (the checkpoint's), `segment` also says how unlike the training data an
    image is (novelty.py): from the tiles' features in the forward pass itself in stitched
    mode; in whole mode from a pass of the tiles through the backbone alone.

    `owned_only` (stitched mode): skip the work ownership throws away (OwnershipFilter);
    False runs every proposal through the heads, as before it existed (bench/predict.py).
    `cpu_bf16`: bfloat16 autocast on a CPU. Off by default: on the sample it moved F1 and AP
    by more than 0.005 (docs/performance.md); on CUDA, `train.amp` gives float16 autocast.
    """

    owned_only: bool = True
    cpu_bf16: bool = False

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        settings: PredictSettings,
        training_look: TrainingLook | None = None,
    ):
        self.model, self.device, self.settings = model, device, settings
        self.training_look = training_look
        apply_inference(model, settings.inference)  # the model is the predictor's now

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: torch.device,
        *,
        predict: PredictConfig | None = None,
        overrides: dict | None = None,
        expect: str | None = None,
    ) -> tuple[Predictor, dict]:
        """A predictor with the checkpoint's trained geometry and post-processing from
        `predict` (default: the checkpoint's record of params.yaml's `predict`), with the
        keys in `overrides` replaced (a LivecellsegError names a bad one). An operating
        threshold below `min_score` lowers `min_score` with it."""
        model, ckpt, settings = load_model(path, device, expect=expect, predict=predict)
        if overrides:
            base = predict or recorded_predict(ckpt["params"])
            if "score_thresh" in overrides and "min_score" not in overrides:
                score = overrides["score_thresh"]
                if isinstance(score, (int, float)) and score < base.min_score:
                    overrides = overrides | {"min_score": score}
            try:
                changed = with_overrides(base, overrides)
            except ConfigError as e:
                raise LivecellsegError(
                    str(e).replace("params.yaml: ", "", 1)
                    + f" (an override of {path}'s recorded predict settings)"
                ) from None
            settings = settings_of_checkpoint(ckpt["params"], ckpt["name"], changed)[0]
        look = TrainingLook.from_record(ckpt["look"]) if "look" in ckpt else None
        return cls(model, device, settings, look), ckpt

    @property
    def score_thresh(self) -> float:
        """The operating threshold: a detection scoring above it is a cell."""
        return self.settings.score_thresh

    @property
    def min_score(self) -> float:
        """The lowest score a detection is made with (the model's box_score_thresh)."""
        return self.settings.inference.score_thresh

    @torch.inference_mode()
    def forward(
        self, images: list[np.ndarray], only: OwnershipFilter | None = None
    ) -> list[TileDetections]:
        """Model outputs for a batch of gray images: bool masks (n, h, w) and scores; with
        `only`, of the detections that can reach each image's owned box."""
        batch = [gray_to_tensor(im).to(self.device, non_blocking=True) for im in images]
        s = self.settings.stitch
        dtype = self.autocast_dtype()
        with (
            torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None),
            only.applied(self.model) if only else contextlib.nullcontext(),
        ):
            outputs = self.model(batch)
        return [
            TileDetections(
                (out["masks"][:, 0] > s.mask_thresh).cpu().numpy(),
                out["scores"].float().cpu().numpy(),
            )
            for out in outputs
        ]

    def autocast_dtype(self) -> torch.dtype | None:
        """float16 on CUDA with `train.amp`; bfloat16 on a CPU only with `cpu_bf16` (which
        oneDNN emulates, ~50x slower, on a CPU without AVX512-BF16 or AMX)."""
        if self.device.type == "cpu":
            return torch.bfloat16 if self.cpu_bf16 else None
        return autocast_dtype(self.device, self.settings.stitch.amp)

    def whole_image_inference(self, height: int, width: int):
        """The inference settings of one pass on a whole image: native scale, budgets scaled
        from a tile's to the image's area."""
        s = self.settings
        return s.inference.whole_image(height, width, s.stitch.tile_to_image)

    def __call__(
        self, image: np.ndarray, mode: Mode | None = None
    ) -> tuple[ImageDetections, StitchCounts]:
        seg = self.segment(image, mode, look=False)
        return seg.det, seg.counts

    def _mode(self, image: np.ndarray, mode: Mode | None) -> Mode:
        s = self.settings.stitch
        mode = mode or s.mode
        h, w = image.shape
        if mode == "stitched" and min(h, w) < s.grid:
            log.warning(
                "a %dx%d image cannot be cut into %dx%d mini-tiles; predicting it whole",
                w,
                h,
                s.grid,
                s.grid,
            )
            mode = "whole"
        return mode

    def _tap(self, look: bool) -> FeatureTap | None:
        return FeatureTap(self.training_look.levels) if look and self.training_look else None

    def segment(self, image: np.ndarray, mode: Mode | None = None, *, look: bool = True):
        """Segmented: the image's detections, stitching counts and (with `look` and a
        training look) how unlike the training data it is."""
        return self.segment_many([image], mode, look=look)[0]

    def segment_many(
        self, images: list[np.ndarray], mode: Mode | None = None, *, look: bool = True
    ) -> list[Segmented]:
        """`segment` for several images; in whole mode images of one size share forward
        passes of predict.batch_size images (stitched mode batches each image's tiles)."""
        out: list[Segmented | None] = [None] * len(images)
        whole = [i for i, im in enumerate(images) if self._mode(im, mode) == "whole"]
        for i in range(len(images)):
            if i not in whole:
                out[i] = self._stitched(images[i], self._tap(look))
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i in whole:
            by_shape.setdefault(images[i].shape, []).append(i)
        n = self.settings.stitch.batch_size
        for idx in by_shape.values():
            for j in range(0, len(idx), n):
                chunk = idx[j : j + n]
                segs = self._whole([images[i] for i in chunk], self._tap(look) is not None)
                for i, seg in zip(chunk, segs, strict=True):
                    out[i] = seg
        return out

    def _tile_look(self, image: np.ndarray) -> Look:
        """The look of an image predicted whole: its tiles through the transform and the
        backbone, as stitched mode and training see them. Pooling the whole image's feature
        maps instead would not do: the custom model's CBAM attention pools over its whole
        input, so a 704x520 image's features differ from its tiles' (bench/screen.py: every
        test image flagged)."""
        s = self.settings.stitch
        h, w = image.shape
        windows = tile_windows(h, w, s.grid, s.window) if min(h, w) >= s.grid else None
        crops = [image[v.y0 : v.y1, v.x0 : v.x1] for v in windows] if windows else [image]
        look = self.training_look
        feats = tile_features(self.model, crops, self.device, look.levels, s.batch_size)
        return look.look(feats, crops)

    def _whole(self, images: list[np.ndarray], look: bool) -> list[Segmented]:
        h, w = images[0].shape
        with inference_applied(self.model, self.whole_image_inference(h, w)):
            dets = self.forward(images)
        return [
            Segmented(*whole_image(d.masks, d.scores), self._tile_look(im) if look else None)
            for d, im in zip(dets, images, strict=True)
        ]

    def _stitched(self, image: np.ndarray, tap: FeatureTap | None) -> Segmented:
        s = self.settings.stitch
        h, w = image.shape
        windows = tile_windows(h, w, s.grid, s.window)
        crops = [image[win.y0 : win.y1, win.x0 : win.x1] for win in windows]
        tiles: list[TileDetections] = []
        feats: list[np.ndarray] = []
        skipped = [0, 0]
        for i in range(0, len(crops), s.batch_size):
            batch, wins = crops[i : i + s.batch_size], windows[i : i + s.batch_size]
            only = None
            if self.owned_only:
                owned = [shifted(owned_box(w_, h, w, s.grid, s.window), w_) for w_ in wins]
                only = OwnershipFilter(owned, [c.shape for c in batch])
            with tap.tapped(self.model) if tap else contextlib.nullcontext():
                tiles.extend(self.forward(batch, only))
            if tap:
                feats.extend(tap.pooled())
            if only:
                skipped[0] += only.skipped_proposals
                skipped[1] += only.skipped_detections
        det, counts = stitch(
            tiles,
            h,
            w,
            grid=s.grid,
            window=s.window,
            min_owned=s.min_owned,
            nms_iou=s.nms_iou,
        )
        counts.skipped_proposals, counts.skipped = skipped
        look = self.training_look.look(np.concatenate(feats), crops) if tap else None
        return Segmented(det, counts, look)


def shifted(box: Window, tile: Window) -> Window:
    """`box` in the pixel coordinates of `tile`."""
    return replace(
        box, y0=box.y0 - tile.y0, y1=box.y1 - tile.y0, x0=box.x0 - tile.x0, x1=box.x1 - tile.x0
    )


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
            "score": float(score),  # exact: "above the threshold" reads the same everywhere
            "bbox": [round(float(v), 2) for v in box],
            "area": int(area),
        }
        for rle, score, box, area in zip(det.rles, det.scores, boxes, areas, strict=True)
    ]


def coco_document(
    file_name: str, height: int, width: int, det: ImageDetections, info: dict | None = None
) -> dict:
    """One image's detections as a COCO document (image, annotations with scores, category):
    COCO() opens it as a data set, and its `annotations` are valid COCO results. `info`
    adds keys to the image entry."""
    anns = to_coco_results(1, det)
    for i, ann in enumerate(anns, start=1):
        ann.update(id=i, iscrowd=0)
    image = {"id": 1, "file_name": file_name, "height": height, "width": width}
    return {
        "images": [image | (info or {})],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cell"}],
    }


def write_segmentation(
    out: Path,
    stem: str,
    file_name: str,
    det: ImageDetections,
    cells: CellPixels,
    keep: np.ndarray | None = None,
    info: dict | None = None,
) -> tuple[Path, Path]:
    """`{stem}_labels.tif` (uint16 labels, what Cellpose, napari and Fiji open) and then
    `{stem}_coco.json` (a COCO document naming `file_name`, its image entry with `info`) in
    `out`, each written atomically: the detections at `keep` (default: all), whose decoded
    pixels `cells` holds."""
    height, width = cells.shape
    out.mkdir(parents=True, exist_ok=True)
    labels, coco = out / f"{stem}_labels.tif", out / f"{stem}_coco.json"
    write_labels(labels, label_image(cells, det.scores, keep))
    kept = det if keep is None else det.take(keep)
    write_json(coco, coco_document(file_name, height, width, kept, info), indent=None)
    return labels, coco
