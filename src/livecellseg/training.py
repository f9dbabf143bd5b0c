"""A training run from validated params: datasets, model and identity for either model."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from livecellseg.checkpoint import load_checkpoint, save_checkpoint
from livecellseg.config import Params
from livecellseg.datasets import TileDataset
from livecellseg.engine import fit
from livecellseg.models import build_model
from livecellseg.novelty import describe_training_data
from livecellseg.runtime import seed_everything
from livecellseg.settings import (
    arch_settings,
    fit_config,
    recorded_params,
    sampling_settings,
    validation_settings,
)

log = logging.getLogger(__name__)


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
    seed_everything(params.seed)  # the initial weights too
    model, pretrained = build_model(
        name,
        inference=validation_settings(params.model, params.train),
        sampling=sampling_settings(params.model),
        arch=arch_settings(name, params.model, params.custom),
        weights=params.transfer.weights if name == "transfer" else "none",
        norm=params.transfer.scratch_norm,
    )
    cfg = fit_config(name, params, pretrained=pretrained)  # the phases depend on the layout
    train_set = TileDataset(
        tiles / "train.json", tiles / "train", augmentation=cfg.augmentation, seed=params.seed
    )
    val_set = TileDataset(
        tiles / "val.json", tiles / "val", seed=params.seed, limit=cfg.max_val_tiles
    )
    identity = {
        "params": recorded_params(name, params),
        "run": {
            "pretrained": pretrained,
            "data": _fingerprint(tiles / "train.json", tiles / "val.json"),
        },
    }
    summary = fit(
        model,
        train_set,
        val_set,
        cfg,
        name=name,
        best_path=best,
        last_path=last,
        live_dir=live_dir,
        identity=identity,
        resume=resume,
    )
    if int(os.environ.get("RANK", "0")) == 0 and best.exists():
        record_training_look(model, best, tiles, seed=params.seed)
    return summary


def record_training_look(model: torch.nn.Module, best: Path, tiles: Path, *, seed: int) -> None:
    """Add to the best checkpoint what its model saw in training (novelty.TrainingLook), so
    prediction can flag an image unlike it."""
    ckpt = load_checkpoint(best)
    model.load_state_dict(ckpt["model"])
    device = next(model.parameters()).device
    look = describe_training_data(model, tiles, device, seed=seed)
    ckpt["look"] = look.record()
    save_checkpoint(ckpt, best)
    log.info(
        "%s: described %d train and %d validation tiles; an image is unlike them above "
        "distance %.2f (the validation tiles' %g quantile)",
        best,
        *look.tiles,
        look.threshold,
        look.quantile,
    )
