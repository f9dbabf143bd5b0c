"""The one place validated params become what the code runs with.

`params.yaml` is the only source of numbers: the model's inference settings and RoI sampling,
the training run (phases, batches, profile), and prediction (tiles, stitching) are built here
from its sections and nowhere else; no other module writes a default for them. A checkpoint
records the sections it was trained with (`recorded_params`), and `settings_of_checkpoint`
rebuilds the settings from that record, so the CLI and the app predict exactly as
the pipeline's `stitch_predict` does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from livecellseg.config import (
    CustomConfig,
    ModelConfig,
    Params,
    StitchConfig,
    TileConfig,
    TrainConfig,
    parse_section,
)
from livecellseg.errors import ConfigError

Mode = Literal["stitched", "whole"]


@dataclass(frozen=True)
class InferenceSettings:
    """What the model does at test time: input scale, proposal and detection budgets,
    thresholds (torchvision's MaskRCNN arguments of the same meaning)."""

    score_thresh: float
    nms_thresh: float
    detections_per_img: int
    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    rpn_score_thresh: float  # proposals below this objectness skip the RoI heads
    min_size: int
    max_size: int

    def whole_image(self, height: int, width: int, scale: float) -> InferenceSettings:
        """Native scale for a whole image, budgets scaled from a tile's by the area `scale`."""
        return replace(
            self,
            min_size=min(height, width),
            max_size=max(height, width),
            rpn_pre_nms_top_n=round(self.rpn_pre_nms_top_n * scale),
            rpn_post_nms_top_n=round(self.rpn_post_nms_top_n * scale),
            detections_per_img=round(self.detections_per_img * scale),
        )


@dataclass(frozen=True)
class SamplingSettings:
    """Proposals and RoIs sampled per tile in training."""

    rpn_pre_nms_top_n: int
    rpn_post_nms_top_n: int
    box_batch_size_per_image: int
    mask_rois_per_image: int  # of those RoIs' positives, the mask head learns from <= this


@dataclass(frozen=True)
class ArchSettings:
    """What shapes the network besides its layers: the RPN's anchors per FPN level, in the
    pixels the model sees, and the input normalisation."""

    anchor_sizes: tuple[tuple[float, ...], ...]  # per level P2..P6, each size x every ratio
    anchor_ratios: tuple[float, ...]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]


@dataclass(frozen=True)
class StitchSettings:
    """How an image is cut into tiles and their detections stitched back."""

    mode: Mode
    mask_thresh: float  # mask probability -> binary mask
    grid: int
    window: int
    min_owned: float
    nms_iou: float
    batch_size: int  # tiles per forward pass
    amp: bool  # autocast (runtime.autocast_dtype): float16 on CUDA, bfloat16 on a bf16 CPU

    @property
    def tile_to_image(self) -> float:
        """Image area over tile area: what whole-image budgets are scaled by."""
        return (self.grid / self.window) ** 2


@dataclass(frozen=True)
class PredictSettings:
    inference: InferenceSettings
    stitch: StitchSettings


@dataclass(frozen=True)
class Phase:
    epochs: int
    optimizer: Literal["sgd", "adamw"]
    lr: float
    weight_decay: float
    momentum: float  # SGD only
    frozen_backbone: bool | None  # None: keep the model's trainable set as built
    step_size: int  # StepLR period in epochs; 0: constant after warm-up
    gamma: float


@dataclass(frozen=True)
class FitConfig:
    phases: tuple[Phase, ...]
    batch_size: int
    warmup_steps: int
    grad_clip: float  # max gradient norm; 0: no clipping
    max_tiles_per_epoch: int  # 0: all tiles
    max_val_tiles: int  # 0: all tiles
    augmentation: dict
    mask_thresh: float
    val_score_thresh: float
    val_iou_thresh: float  # evaluate.iou_thresh: a match as the test metrics count it
    val_detections_per_tile: int
    seed: int
    workers: int
    amp: bool
    device: str  # "auto" | "cpu" | "cuda"

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


def inference_settings(model: ModelConfig, stitch: StitchConfig) -> InferenceSettings:
    return InferenceSettings(
        score_thresh=model.score_thresh,
        nms_thresh=model.nms_thresh,
        detections_per_img=model.detections_per_img,
        rpn_pre_nms_top_n=model.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n=model.rpn_post_nms_top_n_test,
        rpn_score_thresh=stitch.rpn_score_thresh,
        min_size=model.min_size,
        max_size=model.max_size,
    )


def sampling_settings(model: ModelConfig) -> SamplingSettings:
    return SamplingSettings(
        rpn_pre_nms_top_n=model.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n=model.rpn_post_nms_top_n_train,
        box_batch_size_per_image=model.box_batch_size_per_image,
        mask_rois_per_image=model.mask_rois_per_image,
    )


def arch_settings(name: str, model: ModelConfig, custom: CustomConfig | None) -> ArchSettings:
    """The transfer model has one anchor size per level (3 anchors a location, as its COCO
    weights); the custom model each level's size times `custom.anchor_scales` (9)."""
    if name == "custom":
        if custom is None:
            raise ConfigError("the custom model's anchors need the 'custom' section")
        sizes = tuple(tuple(s * k for k in custom.anchor_scales) for s in model.anchor_sizes)
    else:
        sizes = tuple((s,) for s in model.anchor_sizes)
    return ArchSettings(sizes, model.anchor_ratios, model.image_mean, model.image_std)


def stitch_settings(
    model: ModelConfig, tile: TileConfig, stitch: StitchConfig, train: TrainConfig
) -> StitchSettings:
    return StitchSettings(
        mode=stitch.mode,
        mask_thresh=model.mask_thresh,
        grid=tile.grid,
        window=tile.window,
        min_owned=stitch.min_owned,
        nms_iou=stitch.nms_iou,
        batch_size=stitch.batch_size,
        amp=train.amp,
    )


def predict_settings(params: Params) -> PredictSettings:
    return PredictSettings(
        inference_settings(params.model, params.stitch),
        stitch_settings(params.model, params.tile, params.stitch, params.train),
    )


def phases(name: str, params: Params, pretrained: bool) -> tuple[tuple[Phase, ...], int]:
    """The phases and batch size of a model's training.

    The transfer model from COCO weights trains its heads on a frozen backbone, then the
    backbone too. Without weights a frozen random backbone would teach the heads nothing:
    both phases train everything, phase 2 at the lower learning rate (a step decay).
    """
    if name == "transfer":
        t = params.transfer
        common = {
            "optimizer": "sgd",
            "momentum": t.momentum,
            "weight_decay": t.weight_decay,
            "step_size": 0,  # constant after warm-up within each phase
            "gamma": 1.0,
        }
        return (
            Phase(
                epochs=t.epochs_frozen,
                lr=params.model.lr,
                frozen_backbone=True if pretrained else None,
                **common,
            ),
            Phase(
                epochs=t.epochs_unfrozen,
                lr=params.model.lr * t.unfrozen_lr_ratio,
                frozen_backbone=False if pretrained else None,
                **common,
            ),
        ), t.batch_size
    c = params.custom
    return (
        Phase(
            epochs=c.epochs,
            optimizer="adamw",
            lr=c.lr,
            weight_decay=c.weight_decay,
            momentum=0.0,  # unused by AdamW
            frozen_backbone=None,
            step_size=c.step_size,
            gamma=c.gamma,
        ),
    ), c.batch_size


def fit_config(name: str, params: Params, *, pretrained: bool = False) -> FitConfig:
    model_phases, batch_size = phases(name, params, pretrained)
    tr = params.train
    return FitConfig(
        phases=tuple(p for p in model_phases if p.epochs > 0),
        batch_size=batch_size,
        warmup_steps=tr.warmup_steps,
        grad_clip=tr.grad_clip,
        max_tiles_per_epoch=tr.max_tiles_per_epoch,
        max_val_tiles=tr.max_val_tiles,
        augmentation=asdict(tr.augment),
        mask_thresh=params.model.mask_thresh,
        val_score_thresh=tr.val_score_thresh,
        val_iou_thresh=params.evaluate.iou_thresh,
        val_detections_per_tile=tr.val_detections_per_tile,
        seed=params.seed,
        workers=min(params.n_workers(), 4),
        amp=tr.amp,
        device=tr.device,
    )


def recorded_params(name: str, params: Params) -> dict[str, Any]:
    """The params sections a model's checkpoint records: all it was trained and is to be
    evaluated with (the training stage depends on exactly these in dvc.yaml)."""
    return {
        "seed": params.seed,
        "model": asdict(params.model),
        "tile": asdict(params.tile),
        "stitch": asdict(params.stitch),
        "train": asdict(params.train),
        name: asdict(getattr(params, name)),
    }


def settings_of_checkpoint(
    recorded: Any, name: str
) -> tuple[PredictSettings, SamplingSettings, ArchSettings]:
    """The settings a checkpoint of model `name` records (ConfigError if it records none,
    or not all of them)."""
    if not isinstance(recorded, dict):
        raise ConfigError("no recorded params")
    model, tile, stitch, train = (
        parse_section(cls, recorded.get(key), key)
        for key, cls in (
            ("model", ModelConfig),
            ("tile", TileConfig),
            ("stitch", StitchConfig),
            ("train", TrainConfig),
        )
    )
    predict = PredictSettings(
        inference_settings(model, stitch), stitch_settings(model, tile, stitch, train)
    )
    custom = (
        parse_section(CustomConfig, recorded.get("custom"), "custom") if name == "custom" else None
    )
    return predict, sampling_settings(model), arch_settings(name, model, custom)


def differences(a: PredictSettings, b: PredictSettings) -> list[str]:
    """Dotted names of the settings in which two PredictSettings differ."""
    da, db = asdict(a), asdict(b)
    return [f"{part}.{k}" for part in da for k in da[part] if da[part][k] != db[part][k]]
