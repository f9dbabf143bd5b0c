"""One training engine for both models: phases, warm-up, clipping, AMP, DDP, resume, dvclive.

Follows torchvision's detection reference: one `train_one_epoch` / `evaluate` pair, a
non-finite loss stops the run, checkpoints are plain dicts. A run is a list of phases
(transfer: frozen backbone, then unfrozen; custom: one phase), counted in global epochs.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torchvision
from pycocotools import mask as mask_utils
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

import livecellseg
from livecellseg.datasets import TileDataset, collate
from livecellseg.errors import LivecellsegError
from livecellseg.io import atomic_path, remove_stale_temps
from livecellseg.metrics import DetectionCounts
from livecellseg.models import parameter_table, set_backbone_frozen

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Phase:
    epochs: int
    optimizer: str  # "sgd" | "adamw"
    lr: float
    weight_decay: float
    momentum: float = 0.9
    frozen_backbone: bool | None = None  # None: keep the model's trainable set as built
    step_size: int = 0  # StepLR period in epochs; 0: constant after warm-up
    gamma: float = 0.1


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
    val_detections_per_tile: int
    seed: int
    workers: int
    amp: bool
    device: str  # "auto" | "cpu" | "cuda"

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


class NonFiniteLoss(LivecellsegError):
    pass


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(wanted: str, local_rank: int = 0) -> torch.device:
    if wanted == "cuda" and not torch.cuda.is_available():
        raise LivecellsegError("train.device is 'cuda' but no CUDA device is visible; use 'auto'")
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _phase_at(phases: tuple[Phase, ...], epoch: int) -> tuple[int, int]:
    """(phase index, first global epoch of that phase) for a global epoch."""
    start = 0
    for i, p in enumerate(phases):
        if epoch < start + p.epochs:
            return i, start
        start += p.epochs
    raise ValueError(epoch)


def make_optimizer(model: torch.nn.Module, phase: Phase, warmup_steps: int, steps_per_epoch: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if phase.optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=phase.lr, momentum=phase.momentum, weight_decay=phase.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=phase.weight_decay)

    def factor(step: int) -> float:  # linear warm-up per step, then StepLR per epoch
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        decay = (
            phase.gamma ** (step // steps_per_epoch // phase.step_size) if phase.step_size else 1.0
        )
        return warm * decay

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_one_epoch(
    model,
    optimizer,
    scheduler,
    loader,
    device,
    *,
    scaler,
    grad_clip: float,
    on_step=None,
    desc: str = "train",
) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = defaultdict(float)
    grad_norms: list[float] = []
    n = 0
    bar = tqdm(loader, desc=desc, unit="batch", disable=not _is_main())
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(
                f"training stopped: non-finite loss {loss.item()} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} }); lower the learning "
                "rate, raise train.warmup_steps or set train.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        grad_norms.append(float(norm))
        values = {k: v.item() for k, v in losses.items()} | {"loss": loss.item()}
        for k, v in values.items():
            sums[k] += v
        n += 1
        bar.set_postfix(loss=f"{values['loss']:.3f}")
        if on_step:
            on_step(values | {"lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norms[-1]})
    stats = {k: v / max(n, 1) for k, v in sums.items()}
    stats["grad_norm_mean"] = float(np.mean(grad_norms)) if grad_norms else 0.0
    stats["grad_norm_std"] = float(np.std(grad_norms)) if grad_norms else 0.0
    return stats


def masks_to_rles(masks: torch.Tensor, thresh: float) -> list[dict]:
    """(N, 1, H, W) mask probabilities -> RLEs of the thresholded masks."""
    binary = (masks[:, 0] > thresh).cpu().numpy().astype(np.uint8)
    if not len(binary):
        return []
    return mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))


@torch.inference_mode()
def evaluate(
    model,
    dataset: TileDataset,
    device,
    *,
    mask_thresh: float,
    score_thresh: float,
    max_detections: int = 0,
    batch_size: int = 4,
) -> dict[str, float]:
    """Precision/recall/F1/mIoU at mask IoU 0.5 on tiles, and predictions per tile."""
    model.eval()
    heads = model.roi_heads
    saved = heads.detections_per_img, heads.score_thresh
    # Only detections above score_thresh are counted: drop the rest before the mask head runs.
    heads.score_thresh = max(heads.score_thresh, score_thresh)
    if max_detections:
        heads.detections_per_img = min(heads.detections_per_img, max_detections)
    try:
        return _evaluate(model, dataset, device, mask_thresh, score_thresh, batch_size)
    finally:
        heads.detections_per_img, heads.score_thresh = saved


def _evaluate(model, dataset, device, mask_thresh, score_thresh, batch_size) -> dict[str, float]:
    counts = DetectionCounts()
    per_image: list[int] = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for images, targets in tqdm(loader, desc="val", unit="batch", disable=not _is_main()):
        outputs = model([im.to(device) for im in images])
        for out, target in zip(outputs, targets, strict=True):
            keep = out["scores"] > score_thresh
            pred = masks_to_rles(out["masks"][keep], mask_thresh)
            gt_masks = target["masks"].numpy()
            gt = (
                mask_utils.encode(np.asfortranarray(gt_masks.transpose(1, 2, 0)))
                if len(gt_masks)
                else []
            )
            counts.add(gt, pred)
            per_image.append(len(pred))
    return counts.summary() | {
        "predictions_per_tile": float(np.mean(per_image)) if per_image else 0.0
    }


def _is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _save_atomic(obj: dict, path: Path) -> None:
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


TRAINING_STATE = ("optimizer", "scheduler", "scaler")


def export_weights(checkpoint: Path, out: Path) -> tuple[int, int]:
    """Copy a checkpoint without its training state; return (bytes before, bytes after)."""
    ckpt = load_checkpoint(checkpoint)
    _save_atomic({k: v for k, v in ckpt.items() if k not in TRAINING_STATE}, out)
    return checkpoint.stat().st_size, out.stat().st_size


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
    if ckpt["format"] > CHECKPOINT_FORMAT:
        raise LivecellsegError(
            f"{path}: checkpoint format {ckpt['format']} is newer than this livecellseg "
            f"({CHECKPOINT_FORMAT}); upgrade livecellseg"
        )
    return ckpt


def versions() -> dict[str, str]:
    return {
        "livecellseg": livecellseg.__version__,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
    }


def fit(
    model,
    train_set: TileDataset,
    val_set: TileDataset,
    cfg: FitConfig,
    *,
    name: str,
    best_path: Path,
    last_path: Path,
    live_dir: Path,
    run_meta: dict,
    resume: bool,
) -> dict:
    """Train through cfg.phases; write best/last checkpoints and dvclive logs; return summary.

    `run_meta` identifies the run (model params, data fingerprint, pretrained flag). With
    `resume`, an unfinished last checkpoint with the same `run_meta` is continued; any other
    is ignored, so a param or data change never continues a stale run.
    """
    from dvclive import Live

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local_rank)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    world = dist.get_world_size() if distributed else 1
    rank = dist.get_rank() if distributed else 0
    seed_everything(cfg.seed)
    model.to(device)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None

    start_epoch, best_f1, best_epoch, ckpt = 0, -1.0, -1, None
    if rank == 0 and (stale := remove_stale_temps(best_path) + remove_stale_temps(last_path)):
        log.info("removed %d temporary checkpoint(s) left by a killed run", stale)
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        if ckpt.get("params") == run_meta and ckpt["epoch"] < cfg.epochs:
            model.load_state_dict(ckpt["model"])
            start_epoch, best_f1, best_epoch = ckpt["epoch"], ckpt["best_f1"], ckpt["best_epoch"]
            log.info(
                "resuming %s from %s at epoch %d of %d", name, last_path, start_epoch, cfg.epochs
            )
        else:
            log.info("%s is from another run or finished; starting afresh", last_path)
            ckpt = None
    live = (
        Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=ckpt is not None)
        if rank == 0
        else None
    )
    train_model = model

    phase_index, optimizer, scheduler, global_step = -1, None, None, 0
    for epoch in range(start_epoch, cfg.epochs):
        i, phase_start = _phase_at(cfg.phases, epoch)
        phase = cfg.phases[i]
        torch.manual_seed(cfg.seed * 1000 + epoch)  # same epoch, same draws, resumed or not
        epoch_set = _epoch_subset(train_set, cfg, epoch)
        sampler = (
            DistributedSampler(epoch_set, world, rank, shuffle=True, seed=cfg.seed)
            if distributed
            else None
        )
        if sampler:
            sampler.set_epoch(epoch)
        loader = DataLoader(
            epoch_set,
            batch_size=cfg.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
            drop_last=False,
        )
        if i != phase_index:
            if phase.frozen_backbone is not None:
                set_backbone_frozen(model, phase.frozen_backbone)
            if distributed:  # DDP records the trainable set when it wraps the model
                train_model = DistributedDataParallel(model)
            optimizer, scheduler = make_optimizer(model, phase, cfg.warmup_steps, len(loader))
            if ckpt is not None and ckpt["phase"] == i:
                optimizer.load_state_dict(ckpt["optimizer"])
                scheduler.load_state_dict(ckpt["scheduler"])
                if scaler is not None and ckpt.get("scaler"):
                    scaler.load_state_dict(ckpt["scaler"])
            phase_index = i
            global_step = epoch * len(loader)
            if ckpt is not None and live is not None:  # a killed run logged past its checkpoint
                _trim_live_logs(live_dir, epoch_step=epoch, batch_step=global_step)
        train_set.set_epoch(epoch)

        def on_step(values, _epoch=epoch):
            nonlocal global_step
            global_step += 1
            if live is not None:
                live.step = global_step
                for k, v in values.items():
                    live.log_metric(f"batch/{k}", v)

        t0 = time.perf_counter()
        stats = train_one_epoch(
            train_model,
            optimizer,
            scheduler,
            loader,
            device,
            scaler=scaler,
            grad_clip=cfg.grad_clip,
            on_step=on_step,
            desc=f"{name} epoch {epoch + 1}/{cfg.epochs}",
        )
        epoch_time = time.perf_counter() - t0
        if rank == 0:
            val = evaluate(
                model,
                val_set,
                device,
                mask_thresh=cfg.mask_thresh,
                score_thresh=cfg.val_score_thresh,
                max_detections=cfg.val_detections_per_tile,
            )
            improved = val["f1"] > best_f1
            if improved:
                best_f1, best_epoch = val["f1"], epoch + 1
            state = {
                "format": CHECKPOINT_FORMAT,
                "name": name,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else {},
                "epoch": epoch + 1,
                "phase": i,
                "best_f1": best_f1,
                "best_epoch": best_epoch,
                "params": run_meta,
                "val": val,
                "versions": versions(),
            }
            live.step = epoch + 1
            for k, v in stats.items():
                live.log_metric(f"epoch/train_{k}", v)
            for k, v in val.items():
                live.log_metric(f"epoch/val_{k}", v)
            live.log_metric("epoch/lr", optimizer.param_groups[0]["lr"])
            # time and memory vary between runs: plotted, but kept out of metrics.json
            live.log_metric("epoch/time_s", epoch_time)
            live.log_metric("epoch/peak_memory_mb", peak_memory_bytes(device) / 2**20)
            _write_summary(live, run_meta, model, best_f1, best_epoch, cfg, epoch + 1)
            # after the logs: a kill between the two is trimmed and redone on resume
            if improved:
                _save_atomic(state, best_path)
            _save_atomic(state, last_path)
            log.info(
                "epoch %d/%d (phase %d): loss %.4f, val F1 %.4f, mIoU %.4f, %.1f s",
                epoch + 1,
                cfg.epochs,
                i + 1,
                stats["loss"],
                val["f1"],
                val["miou"],
                epoch_time,
            )
        if distributed:
            dist.barrier()
        ckpt = None
    summary = live.summary if live is not None else {}
    if distributed:
        dist.destroy_process_group()
    return summary


def _trim_live_logs(live_dir: Path, *, epoch_step: int, batch_step: int) -> None:
    """Drop dvclive rows logged after the checkpoint being resumed (dvclive appends), so a
    resumed run's curves hold each step once, as an uninterrupted run's do."""
    for tsv in sorted(Path(live_dir, "plots", "metrics").rglob("*.tsv")):
        last = epoch_step if tsv.parent.name == "epoch" else batch_step
        text = tsv.read_text()
        if "\n" not in text:  # created by dvclive just before the kill: no complete row
            tsv.unlink()
            continue
        header, *rows = text.splitlines()
        col = header.split("\t").index("step")
        keep = [r for r in rows if _step_of(r, col, len(header.split("\t"))) <= last]
        trimmed = "\n".join([header, *keep, ""])
        if trimmed != text:
            with atomic_path(tsv) as tmp:
                tmp.write_text(trimmed)


def _step_of(row: str, col: int, n_cols: int) -> float:
    fields = row.split("\t")
    try:  # a row cut short by the kill counts as after the checkpoint
        float(fields[-1])
        return int(fields[col]) if len(fields) == n_cols else math.inf
    except ValueError:
        return math.inf


def _epoch_subset(train_set: TileDataset, cfg: FitConfig, epoch: int):
    """The tiles of one epoch: all, or a seeded draw of max_tiles_per_epoch (CPU profile)."""
    if not cfg.max_tiles_per_epoch or cfg.max_tiles_per_epoch >= len(train_set):
        return train_set
    rng = np.random.default_rng([cfg.seed, epoch])
    return Subset(
        train_set,
        sorted(rng.choice(len(train_set), cfg.max_tiles_per_epoch, replace=False).tolist()),
    )


def _write_summary(live, run_meta, model, best_f1, best_epoch, cfg, epoch) -> None:
    for k in ("epoch/time_s", "epoch/peak_memory_mb"):
        live.summary.get("epoch", {}).pop(k.split("/")[1], None)
    table = parameter_table(model)
    live.summary["params"] = {f"{c}_{k}": v for c, row in table.items() for k, v in row.items()}
    live.summary["pretrained"] = bool(run_meta.get("pretrained", False))
    live.summary["best_val_f1"] = best_f1
    live.summary["best_epoch"] = best_epoch
    live.summary["epochs_done"] = epoch
    live.summary["epochs"] = cfg.epochs
    live.make_summary()
