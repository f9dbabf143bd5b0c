"""params.yaml, read once into frozen dataclasses and validated there.

Every section is a frozen dataclass; `load_params` fails on an unknown key, a missing key,
a wrong type or a value outside its allowed set, naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from livecellseg.errors import ConfigError

CELL_LINES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")
N_FPN_LEVELS = 5  # P2..P5 and the max-pooled P6 ("pool") of torchvision's FPN
ANCHORS_PER_SIZE = 3  # ratios per anchor size: the RPN head's layout in the COCO weights
CellLine = Literal["A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3"]


@dataclass(frozen=True)
class DataConfig:
    source: Literal["sample", "livecell"]


@dataclass(frozen=True)
class SampleConfig:
    n_images: int
    empty_images: int
    cell_lines: tuple[CellLine, ...]
    width: int
    height: int
    hours: tuple[float, ...]  # the elapsed times each position is imaged at
    positions: int  # positions imaged per well

    def __post_init__(self) -> None:
        _check(self.n_images >= 1, "sample.n_images", "an integer >= 1")
        _check(
            len(self.hours) >= 1
            and self.hours[0] >= 0
            and all(a < b for a, b in zip(self.hours, self.hours[1:], strict=False)),
            "sample.hours",
            "a non-empty, increasing list of elapsed hours >= 0",
        )
        _check(self.positions >= 1, "sample.positions", "an integer >= 1")
        _check(
            0 <= self.empty_images <= self.n_images,
            "sample.empty_images",
            f"an integer in [0, sample.n_images={self.n_images}]",
        )
        _check(len(self.cell_lines) >= 1, "sample.cell_lines", f"a non-empty list of {CELL_LINES}")
        _check(self.width >= 64 and self.height >= 64, "sample.width/height", "integers >= 64")


@dataclass(frozen=True)
class SubsetConfig:
    n_images: int
    cell_lines: tuple[CellLine, ...]  # empty: all cell lines
    annotation_files: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(self.n_images >= 1, "subset.n_images", "an integer >= 1")
        _check(
            len(self.annotation_files) >= 1,
            "subset.annotation_files",
            "a non-empty list of COCO JSON file names under <source>/annotations/",
        )


@dataclass(frozen=True)
class SplitConfig:
    mode: Literal["stratified", "official"]  # official: LIVECell's own train/val/test
    by: Literal["well", "image"]  # stratified: a well's images stay in one split, or not
    train: float  # the fractions of the stratified mode
    val: float
    test: float

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            _check(0 <= getattr(self, name) <= 1, f"split.{name}", "a fraction in [0, 1]")
        _check(
            abs(self.train + self.val + self.test - 1) < 1e-6,
            "split.train/val/test",
            f"fractions summing to 1 (got {self.train + self.val + self.test:g})",
        )
        _check(self.train > 0, "split.train", "a fraction > 0")

    def fractions(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class TileConfig:
    grid: int
    window: int
    min_visible: float

    def __post_init__(self) -> None:
        _check(self.grid >= 1, "tile.grid", "an integer >= 1")
        _check(
            1 <= self.window <= self.grid,
            "tile.window",
            f"an integer in [1, tile.grid={self.grid}]",
        )
        _check(0 < self.min_visible <= 1, "tile.min_visible", "a fraction in (0, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """Shared by both models: what shapes their weights (input scale, anchors, normalisation,
    RoI sampling) and `lr` (see docs/experiments.md). What is done after the network is
    `PredictConfig`'s."""

    lr: float  # the transfer model's SGD learning rate (phase 1; phase 2 scales it)
    rpn_pre_nms_top_n_train: int
    rpn_post_nms_top_n_train: int
    box_batch_size_per_image: int
    mask_rois_per_image: int  # 0 = all positive RoIs (torchvision)
    min_size: int
    max_size: int
    # in the pixels the model sees (after the min_size/max_size resize), one per FPN level
    # P2..P6; the custom model puts custom.anchor_scales of each on its level
    anchor_sizes: tuple[float, ...]
    anchor_ratios: tuple[float, ...]  # height/width; 3, as COCO weights' RPN head has
    image_mean: tuple[float, ...]  # per RGB channel, on [0, 1] intensities (torchvision's form)
    image_std: tuple[float, ...]

    def __post_init__(self) -> None:
        _check(self.lr > 0, "model.lr", "a number > 0")
        _check(
            len(self.anchor_sizes) == N_FPN_LEVELS and all(s > 0 for s in self.anchor_sizes),
            "model.anchor_sizes",
            f"{N_FPN_LEVELS} sizes > 0 in px, one per FPN level P2..P6",
        )
        _check(
            len(self.anchor_ratios) == ANCHORS_PER_SIZE and all(r > 0 for r in self.anchor_ratios),
            "model.anchor_ratios",
            f"{ANCHORS_PER_SIZE} ratios > 0 (the RPN head's size, as COCO weights have it)",
        )
        for key in ("image_mean", "image_std"):
            values = getattr(self, key)
            _check(
                len(values) == 3
                and all(0 <= v <= 1 for v in values)
                and (key == "image_mean" or all(v > 0 for v in values)),
                f"model.{key}",
                "3 numbers (R, G, B) on [0, 1] intensities"
                + (", > 0" if key == "image_std" else ""),
            )
        _check(
            self.mask_rois_per_image >= 0,
            "model.mask_rois_per_image",
            "an integer >= 0 (0: every positive RoI)",
        )
        _check(
            0 < self.min_size <= self.max_size,
            "model.min_size/max_size",
            "integers with 0 < min_size <= max_size",
        )


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool
    vflip: bool
    rot90: bool


@dataclass(frozen=True)
class TrainConfig:
    """Shared by both training stages."""

    device: Literal["auto", "cpu", "cuda"]
    amp: bool  # autocast: float16 on CUDA, bfloat16 on a CPU with native bf16, else off
    warmup_steps: int
    grad_clip: float  # max gradient norm; 0 = off
    max_tiles_per_epoch: int  # 0 = all training tiles each epoch
    max_val_tiles: int  # 0 = all validation tiles
    # validation, which picks the best epoch, is part of training: its own thresholds
    val_score_thresh: float
    val_nms_thresh: float
    val_mask_thresh: float
    val_detections_per_tile: int  # caps an untrained model's flood of low-score detections
    augment: AugmentConfig

    def __post_init__(self) -> None:
        for key in ("val_score_thresh", "val_nms_thresh", "val_mask_thresh"):
            _check(0 <= getattr(self, key) <= 1, f"train.{key}", "a fraction in [0, 1]")
        _check(
            self.val_detections_per_tile >= 1, "train.val_detections_per_tile", "an integer >= 1"
        )
        _check(self.warmup_steps >= 0, "train.warmup_steps", "an integer >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip", "a number >= 0 (0 = off)")
        _check(self.max_tiles_per_epoch >= 0, "train.max_tiles_per_epoch", "an integer >= 0")
        _check(self.max_val_tiles >= 0, "train.max_val_tiles", "an integer >= 0")


@dataclass(frozen=True)
class TransferConfig:
    weights: str  # "coco" | "none" | path to a COCO-layout state dict
    scratch_norm: Literal["batch", "group"]  # normalisation of the untrained layout (no weights)
    epochs_frozen: int
    epochs_unfrozen: int
    unfrozen_lr_ratio: float  # phase-2 lr = model.lr * this
    momentum: float
    weight_decay: float
    batch_size: int

    def __post_init__(self) -> None:
        _check(
            self.epochs_frozen >= 0
            and self.epochs_unfrozen >= 0
            and self.epochs_frozen + self.epochs_unfrozen >= 1,
            "transfer.epochs_frozen/epochs_unfrozen",
            "integers >= 0, at least one epoch in all",
        )
        _check(self.batch_size >= 1, "transfer.batch_size", "an integer >= 1")


@dataclass(frozen=True)
class CustomConfig:
    lr: float
    weight_decay: float
    step_size: int  # StepLR period, epochs
    gamma: float
    epochs: int
    batch_size: int
    anchor_scales: tuple[float, ...]  # each level's model.anchor_sizes times these

    def __post_init__(self) -> None:
        _check(self.lr > 0, "custom.lr", "a number > 0")
        _check(
            len(self.anchor_scales) == 3 and all(s > 0 for s in self.anchor_scales),
            "custom.anchor_scales",
            "3 factors > 0 (with 3 ratios: the design's 9 anchors per location)",
        )
        _check(self.epochs >= 1, "custom.epochs", "an integer >= 1")
        _check(self.batch_size >= 1, "custom.batch_size", "an integer >= 1")
        _check(self.step_size >= 0, "custom.step_size", "an integer >= 0 (0 = constant lr)")


@dataclass(frozen=True)
class PredictConfig:
    """What is done after the network: thresholds, budgets, stitching. Changing it reruns
    stitch_predict, evaluate and growth, never training; a checkpoint records the values it
    was trained beside as the CLI's and the app's defaults."""

    score_thresh: float  # the operating threshold: a detection scoring above it is a cell
    min_score: float  # detections kept at all (predictions/, COCO AP, the threshold curves)
    nms_thresh: float  # box NMS within a tile (or a whole image)
    mask_thresh: float  # mask probability -> binary mask
    detections_per_img: int  # per tile; whole mode scales the budgets by the area ratio
    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    rpn_score_thresh: float  # proposals below this objectness skip the RoI heads
    mode: Literal["stitched", "whole"]  # tiles + stitching, or one pass on the whole image
    min_owned: float  # keep a tile's detection if more than this share lies in owned mini-tiles
    nms_iou: float  # cross-tile mask-IoU NMS threshold
    batch_size: int  # tiles per forward pass

    def __post_init__(self) -> None:
        for key in ("score_thresh", "min_score", "nms_thresh", "mask_thresh", "min_owned"):
            _check(0 <= getattr(self, key) <= 1, f"predict.{key}", "a fraction in [0, 1]")
        _check(
            self.min_score <= self.score_thresh,
            "predict.min_score",
            f"a score <= predict.score_thresh={self.score_thresh} (detections below it are "
            "not kept, so nothing could be counted between them)",
        )
        _check(0 <= self.rpn_score_thresh < 1, "predict.rpn_score_thresh", "a number in [0, 1)")
        _check(0 < self.nms_iou <= 1, "predict.nms_iou", "a number in (0, 1]")
        _check(self.batch_size >= 1, "predict.batch_size", "an integer >= 1")
        for key in ("detections_per_img", "rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            _check(getattr(self, key) >= 1, f"predict.{key}", "an integer >= 1")


@dataclass(frozen=True)
class EvaluateConfig:
    iou_thresh: float  # a prediction matches a cell at mask IoU >= this
    overlays: int  # overlay PNGs written per model (first test images)

    def __post_init__(self) -> None:
        _check(0 < self.iou_thresh <= 1, "evaluate.iou_thresh", "a number in (0, 1]")
        _check(self.overlays >= 0, "evaluate.overlays", "an integer >= 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning a trained model on a user's corrected label images (finetune.py): the CLI,
    the app's Fine-tune button and the finetune stage."""

    model: str  # the finetune stage starts from models/<model>.pt
    epochs: int
    tiles_per_epoch: int  # tiles drawn per epoch from the corrections' tiles (0: all)
    lr_ratio: float  # the learning rate: this times the model's own (custom.lr; model.lr)
    warmup_steps: int
    holdout: float  # share of corrected images held out for val F1 (one image: a band of it)
    replay: float  # share of each epoch's tiles drawn from the model's own training tiles

    def __post_init__(self) -> None:
        _check(self.model in ("transfer", "custom"), "finetune.model", "transfer | custom")
        _check(self.epochs >= 1, "finetune.epochs", "an integer >= 1")
        _check(self.tiles_per_epoch >= 0, "finetune.tiles_per_epoch", "an integer >= 0 (0: all)")
        _check(self.lr_ratio > 0, "finetune.lr_ratio", "a number > 0")
        _check(self.warmup_steps >= 0, "finetune.warmup_steps", "an integer >= 0")
        _check(0 < self.holdout < 1, "finetune.holdout", "a fraction in (0, 1)")
        _check(0 <= self.replay < 1, "finetune.replay", "a fraction in [0, 1) (0: none)")


@dataclass(frozen=True)
class Params:
    seed: int
    workers: int  # processes for per-image work; 0 = one per CPU. Outputs do not depend on it.
    data: DataConfig
    sample: SampleConfig
    subset: SubsetConfig
    split: SplitConfig
    tile: TileConfig
    model: ModelConfig
    train: TrainConfig
    transfer: TransferConfig
    custom: CustomConfig
    predict: PredictConfig
    evaluate: EvaluateConfig
    finetune: FinetuneConfig

    def __post_init__(self) -> None:
        _check(self.workers >= 0, "workers", "an integer >= 0 (0: one per CPU)")

    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def _check(ok: bool, key: str, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"params.yaml: bad value for '{key}': must be {allowed}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"params.yaml: bad value {value!r} for '{key}': allowed {list(allowed)}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):  # a tuple: a checkpoint's recorded params
            raise ConfigError(f"params.yaml: '{key}' must be a list, got {type(value).__name__}")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, inner, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params.yaml: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"params.yaml: '{key}' must be an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"params.yaml: '{key}' must be a {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug here, not in params.yaml


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = f"'{prefix}'" if prefix else "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"params.yaml: unknown key '{key}'; allowed keys in {where}: {names}")
    missing = [n for n in names if n not in raw]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(
            f"params.yaml: missing key '{key}'; add it (see docs/experiments.md, Parameters)"
        )
    values = {n: _convert(raw[n], hints[n], f"{prefix}.{n}" if prefix else n) for n in names}
    return cls(**values)


def parse_section(cls: type, raw: Any, key: str) -> Any:
    """One section (e.g. ModelConfig under 'model'), validated as load_params does."""
    return _build(cls, raw, key)


def parse_params(raw: Any) -> Params:
    return _build(Params, raw, "")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found; run from the project root or pass --params"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax"
        ) from None
    return parse_params(raw)
