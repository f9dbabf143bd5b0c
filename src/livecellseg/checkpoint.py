"""The checkpoint format: what a training checkpoint holds, and saving, loading, exporting it.

A checkpoint is a plain dict (torchvision's references do the same), loaded with
`weights_only=True`:
    format, name ("transfer" | "custom"), model (state dict), optimizer, scheduler, scaler
    (the training state: in the last checkpoint, which a run resumes from, not in the best),
    epoch, phase, best_f1, best_epoch, val (metrics of that epoch),
    params (the params.yaml sections that shaped it, and `predict` as it was then:
    settings.recorded_params),
    run (what else identifies the run: pretrained, data fingerprint), versions;
    the best checkpoint also `look`: what the model saw in training (novelty.TrainingLook),
    from which prediction flags images unlike it (an older checkpoint without it predicts
    without the flag).
Saving is atomic and byte-reproducible: the same content gives the same bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torchvision

import livecellseg
from livecellseg.errors import LivecellsegError
from livecellseg.io import atomic_path

# 3: `params` holds what shaped the weights (seed, model, tile, train, the model's section)
# and `predict`, the post-processing at training time (2 held `stitch` and the thresholds
# under `model`; 1 nested the sections). An older checkpoint still loads: training starts
# afresh rather than resume it (another identity), and prediction refuses it for want of
# recorded settings (predict.load_model).
FORMAT = 3
TRAINING_STATE = ("optimizer", "scheduler", "scaler")


def save_checkpoint(obj: dict, path: Path) -> None:
    # through a file object: torch.save names the zip's root after a path it is given, and
    # the temporary name is random, so saving to the path would change the bytes every run
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(_interned(obj), f)


def _interned(obj: Any) -> Any:
    """The same structure with every string interned. Pickle writes a repeated object once,
    so equal strings must be one object for a resumed run (whose optimizer keys came from a
    loaded checkpoint) to save the same bytes as a run never stopped."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_interned(k): _interned(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_interned(v) for v in obj)
    return obj


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LivecellsegError(
            f"{path}: checkpoint not found; train it (dvc repro) or fix the path"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LivecellsegError(
            f"{path}: not a readable checkpoint ({type(e).__name__}); delete it and retrain"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "format" not in ckpt:
        raise LivecellsegError(f"{path}: not a livecellseg checkpoint; delete it and retrain")
    if ckpt["format"] > FORMAT:
        raise LivecellsegError(
            f"{path}: checkpoint format {ckpt['format']} is newer than this livecellseg "
            f"({FORMAT}); upgrade livecellseg"
        )
    return ckpt


def inference_state(ckpt: dict) -> dict:
    """A checkpoint without its training state: what prediction needs."""
    return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}


def export_weights(checkpoint: Path, out: Path) -> tuple[int, int]:
    """Copy a checkpoint without its training state; return (bytes before, bytes after)."""
    save_checkpoint(inference_state(load_checkpoint(checkpoint)), out)
    return checkpoint.stat().st_size, out.stat().st_size


def versions() -> dict[str, str]:
    return {
        "livecellseg": livecellseg.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }
