"""From validated params to a training run: model, datasets and FitConfig for either model."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from livecellseg.config import ModelConfig, Params
from livecellseg.datasets import TileDataset
from livecellseg.engine import FitConfig, Phase, fit, seed_everything
from livecellseg.models import InferenceSettings, TrainSettings, build_model


def inference_settings(m: ModelConfig) -> InferenceSettings:
    return InferenceSettings(
        score_thresh=m.score_thresh,
        nms_thresh=m.nms_thresh,
        detections_per_img=m.detections_per_img,
        rpn_pre_nms_top_n=m.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n=m.rpn_post_nms_top_n_test,
        min_size=m.min_size,
        max_size=m.max_size,
    )


def model_settings(params: Params) -> tuple[InferenceSettings, TrainSettings]:
    m = params.model
    inference = inference_settings(m)
    train = TrainSettings(
        rpn_pre_nms_top_n=m.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n=m.rpn_post_nms_top_n_train,
        box_batch_size_per_image=m.box_batch_size_per_image,
    )
    return inference, train


def phases(name: str, params: Params) -> tuple[tuple[Phase, ...], int]:
    """The phases and batch size of a model's training, from params."""
    if name == "transfer":
        t = params.transfer
        common = {"optimizer": "sgd", "momentum": t.momentum, "weight_decay": t.weight_decay}
        return (
            Phase(epochs=t.epochs_frozen, lr=params.model.lr, frozen_backbone=True, **common),
            Phase(
                epochs=t.epochs_unfrozen,
                lr=params.model.lr * t.unfrozen_lr_ratio,
                frozen_backbone=False,
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
            step_size=c.step_size,
            gamma=c.gamma,
        ),
    ), c.batch_size


def fit_config(name: str, params: Params) -> FitConfig:
    model_phases, batch_size = phases(name, params)
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
        val_detections_per_tile=tr.val_detections_per_tile,
        seed=params.seed,
        workers=min(params.n_workers(), 4),
        amp=tr.amp,
        device=tr.device,
    )


def _fingerprint(*paths: Path) -> str:
    h = hashlib.md5()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def train_model(
    name: str,
    params: Params,
    *,
    tiles: Path,
    best: Path,
    last: Path,
    live_dir: Path,
    resume: bool = True,
) -> dict:
    """Train model `name` on tiles/{train,val}; checkpoints to best/last; dvclive to live_dir."""
    cfg = fit_config(name, params)
    train_set = TileDataset(
        tiles / "train.json", tiles / "train", augmentation=cfg.augmentation, seed=params.seed
    )
    val_set = TileDataset(
        tiles / "val.json", tiles / "val", seed=params.seed, limit=cfg.max_val_tiles
    )
    inference, sampling = model_settings(params)
    seed_everything(params.seed)  # the initial weights too
    weights = params.transfer.weights if name == "transfer" else "none"
    model, pretrained = build_model(name, weights=weights, inference=inference, train=sampling)
    section = params.transfer if name == "transfer" else params.custom
    run_meta = {
        "model": name,
        "seed": params.seed,
        "pretrained": pretrained,
        "data": _fingerprint(tiles / "train.json", tiles / "val.json"),
        "params": {
            "model": asdict(params.model),
            "train": asdict(params.train),
            name: asdict(section),
        },
    }
    return fit(
        model,
        train_set,
        val_set,
        cfg,
        name=name,
        best_path=best,
        last_path=last,
        live_dir=live_dir,
        run_meta=run_meta,
        resume=resume,
    )
