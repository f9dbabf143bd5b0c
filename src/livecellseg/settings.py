"""The one place validated params become what the code runs with.

`params.yaml` is the only source of numbers: the model's architecture and RoI sampling,
the training run (phases, batches, profile, validation), and prediction (thresholds, budgets,
tiles, stitching) are built here from its sections and nowhere else; no other module writes a
default for them. Two kinds of setting:
- what shapes the weights (seed, tile, model, train, the model's section): the training
  stages depend on exactly these, a checkpoint records them, and prediction takes them from
  the checkpoint (`trained_differences` names any that params.yaml contradicts);
- what is done after the network (`predict`): the pipeline takes it from params.yaml; the
  checkpoint records the section as it was at training time, the CLI's and the app's
  defaults (`settings_of_checkpoint`), so with defaults they count as the pipeline does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from livecellseg.config import (
    CustomConfig,
    ModelConfig,
    Params,
    PredictConfig,
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

    score_thresh: float  # the model's box_score_thresh: detections below it are not made
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
    score_thresh: float  # the operating threshold: a detection scoring above it is a cell


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
    val_mask_thresh: float
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


def inference_settings(model: ModelConfig, predict: PredictConfig) -> InferenceSettings:
    return InferenceSettings(
        score_thresh=predict.min_score,
        nms_thresh=predict.nms_thresh,
        detections_per_img=predict.detections_per_img,
        rpn_pre_nms_top_n=predict.rpn_pre_nms_top_n,
        rpn_post_nms_top_n=predict.rpn_post_nms_top_n,
        rpn_score_thresh=predict.rpn_score_thresh,
        min_size=model.min_size,
        max_size=model.max_size,
    )


def validation_settings(model: ModelConfig, train: TrainConfig) -> InferenceSettings:
    """What the model does while validation picks the best epoch: `train.val_*`, proposals
    as in training, every proposal to the heads (part of training, unlike `predict`)."""
    return InferenceSettings(
        score_thresh=train.val_score_thresh,
        nms_thresh=train.val_nms_thresh,
        detections_per_img=train.val_detections_per_tile,
        rpn_pre_nms_top_n=model.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n=model.rpn_post_nms_top_n_train,
        rpn_score_thresh=0.0,
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


def stitch_settings(tile: TileConfig, predict: PredictConfig, train: TrainConfig) -> StitchSettings:
    return StitchSettings(
        mode=predict.mode,
        mask_thresh=predict.mask_thresh,
        grid=tile.grid,
        window=tile.window,
        min_owned=predict.min_owned,
        nms_iou=predict.nms_iou,
        batch_size=predict.batch_size,
        amp=train.amp,
    )


def predict_settings(
    model: ModelConfig, tile: TileConfig, predict: PredictConfig, train: TrainConfig
) -> PredictSettings:
    return PredictSettings(
        inference_settings(model, predict),
        stitch_settings(tile, predict, train),
        score_thresh=predict.score_thresh,
    )


def params_predict_settings(params: Params) -> PredictSettings:
    """How the pipeline predicts: params.yaml's `predict` on the trained geometry."""
    return predict_settings(params.model, params.tile, params.predict, params.train)


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
        val_mask_thresh=tr.val_mask_thresh,
        val_score_thresh=tr.val_score_thresh,
        val_iou_thresh=params.evaluate.iou_thresh,
        val_detections_per_tile=tr.val_detections_per_tile,
        seed=params.seed,
        workers=min(params.n_workers(), 4),
        amp=tr.amp,
        device=tr.device,
    )


# What a checkpoint's recorded settings must agree on with params.yaml to predict with it:
# the network's input and anchors, and the tiles it was trained on.
TRAINED_GEOMETRY = {
    "model": ("min_size", "max_size", "anchor_sizes", "anchor_ratios", "image_mean", "image_std"),
    "tile": ("grid", "window"),
    "custom": ("anchor_scales",),
}


def recorded_params(name: str, params: Params) -> dict[str, Any]:
    """The params sections a model's checkpoint records: what shaped its weights (the
    training stage depends on exactly these in dvc.yaml), and `predict` as it was at training
    time, the CLI's and the app's defaults (not a training dependency: the pipeline
    predicts with params.yaml's)."""
    return {
        "seed": params.seed,
        "model": asdict(params.model),
        "tile": asdict(params.tile),
        "train": asdict(params.train),
        name: asdict(getattr(params, name)),
        "predict": asdict(params.predict),
    }


def _recorded_sections(recorded: Any, name: str) -> dict[str, Any]:
    if not isinstance(recorded, dict):
        raise ConfigError("no recorded params")
    sections = {
        key: parse_section(cls, recorded.get(key), key)
        for key, cls in (
            ("model", ModelConfig),
            ("tile", TileConfig),
            ("train", TrainConfig),
            ("predict", PredictConfig),
        )
    }
    if name == "custom":
        sections["custom"] = parse_section(CustomConfig, recorded.get("custom"), "custom")
    return sections


def settings_of_checkpoint(
    recorded: Any, name: str, predict: PredictConfig | None = None
) -> tuple[PredictSettings, SamplingSettings, ArchSettings]:
    """The settings a checkpoint of model `name` records (ConfigError if it records none,
    or not all of them); `predict` replaces its recorded post-processing."""
    r = _recorded_sections(recorded, name)
    model = r["model"]
    settings = predict_settings(model, r["tile"], predict or r["predict"], r["train"])
    return settings, sampling_settings(model), arch_settings(name, model, r.get("custom"))


def recorded_predict(recorded: Any) -> PredictConfig:
    """The `predict` section a checkpoint recorded (ConfigError if it has none)."""
    if not isinstance(recorded, dict):
        raise ConfigError("no recorded params")
    return parse_section(PredictConfig, recorded.get("predict"), "predict")


def trained_differences(recorded: Any, name: str, params: Params) -> list[str]:
    """Dotted names of the trained geometry (TRAINED_GEOMETRY) in which a checkpoint's
    record and `params` differ."""
    r = _recorded_sections(recorded, name)
    return [
        f"{section}.{key}"
        for section, keys in TRAINED_GEOMETRY.items()
        if section in r
        for key in keys
        if getattr(r[section], key) != getattr(getattr(params, section), key)
    ]


def with_overrides(predict: PredictConfig, overrides: dict[str, Any]) -> PredictConfig:
    """`predict` with some keys replaced (the CLI's `--set predict.KEY=VALUE`), validated as
    params.yaml is: an unknown key or a bad value is a ConfigError naming it."""
    return parse_section(PredictConfig, asdict(predict) | overrides, "predict")
