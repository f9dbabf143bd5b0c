"""A training run from validated params: datasets, model and identity for either model."""

from __future__ import annotations

import hashlib
from pathlib import Path

from livecellseg.config import Params
from livecellseg.datasets import TileDataset
from livecellseg.engine import fit
from livecellseg.models import build_model
from livecellseg.runtime import seed_everything
from livecellseg.settings import (
    arch_settings,
    fit_config,
    recorded_params,
    sampling_settings,
    validation_settings,
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
    return fit(
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
