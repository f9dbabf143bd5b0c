"""The training loop: `fit` runs a model through its phases; `train_one_epoch` and `evaluate`
are the pair torchvision's detection reference keeps.

A run is a list of phases (transfer: frozen backbone, then unfrozen; custom: one phase),
counted in global epochs. A non-finite loss stops it. Each epoch is logged, then
checkpointed (checkpoint.py); an unfinished run of the same params and data resumes from
its last checkpoint and ends byte-identical to one never stopped. Where it runs (device,
DDP) is runtime.py's business, the dvclive log trainlog.py's.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from livecellseg.checkpoint import (
    FORMAT,
    inference_state,
    load_checkpoint,
    save_checkpoint,
    versions,
)
from livecellseg.coco import encode_masks
from livecellseg.datasets import TileDataset, collate
from livecellseg.errors import LivecellsegError
from livecellseg.io import remove_stale_temps
from livecellseg.metrics import DetectionCounts
from livecellseg.models import inference_applied, inference_of, set_backbone_frozen
from livecellseg.runtime import (
    Runtime,
    autocast_dtype,
    is_main,
    peak_memory_bytes,
    seed_everything,
    start_runtime,
)
from livecellseg.settings import FitConfig, Phase
from livecellseg.trainlog import TrainingLog

log = logging.getLogger(__name__)


class NonFiniteLoss(LivecellsegError):
    pass


@dataclass
class TrainingPhase:
    """The phase being trained: its index, the module to train (the model or its DDP
    wrapper), its optimizer and scheduler."""

    index: int
    train_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Run:
    """What a training run holds between epochs."""

    name: str
    model: torch.nn.Module
    cfg: FitConfig
    rt: Runtime
    identity: dict  # {"params": ..., "run": ...}: a checkpoint of another identity is not resumed
    best_path: Path
    last_path: Path
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0  # the epoch being trained, 0-based (after a resume: the first left)
    best_f1: float = -1.0
    best_epoch: int = -1
    resumed: dict[str, Any] | None = None  # the checkpoint resumed, until its phase is set up

    def resume(self, wanted: bool) -> None:
        """Clean up after a killed run; continue its last checkpoint if it is this run's."""
        paths = (self.best_path, self.last_path)
        if self.rt.is_main and (stale := sum(remove_stale_temps(p) for p in paths)):
            log.info("removed %d temporary checkpoint(s) left by a killed run", stale)
        if not (wanted and self.last_path.exists()):
            return
        ckpt = load_checkpoint(self.last_path)
        if {k: ckpt.get(k) for k in self.identity} != self.identity or (
            ckpt["epoch"] >= self.cfg.epochs
        ):
            log.info("%s is from another run or finished; starting afresh", self.last_path)
            return
        self.model.load_state_dict(ckpt["model"])
        self.epoch, self.best_f1, self.best_epoch = (
            ckpt["epoch"],
            ckpt["best_f1"],
            ckpt["best_epoch"],
        )
        self.resumed = ckpt
        log.info(
            "resuming %s from %s at epoch %d of %d",
            self.name,
            self.last_path,
            self.epoch,
            self.cfg.epochs,
        )

    def start_phase(self, index: int, steps_per_epoch: int) -> TrainingPhase:
        """Set the trainable set, wrap for DDP, make the optimizer; restore them on resume."""
        phase = self.cfg.phases[index]
        if phase.frozen_backbone is not None:
            set_backbone_frozen(self.model, phase.frozen_backbone)
        train_model = self.rt.wrap(self.model)
        optimizer, scheduler = make_optimizer(
            self.model, phase, self.cfg.warmup_steps, steps_per_epoch
        )
        ckpt = self.resumed
        if ckpt is not None and ckpt["phase"] == index:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        return TrainingPhase(index, train_model, optimizer, scheduler)

    def validate(self, val_set: TileDataset) -> tuple[dict[str, float], bool]:
        """Validation metrics, and whether they are the best so far."""
        val = evaluate(
            self.model,
            val_set,
            self.rt.device,
            mask_thresh=self.cfg.val_mask_thresh,
            score_thresh=self.cfg.val_score_thresh,
            iou_thresh=self.cfg.val_iou_thresh,
            max_detections=self.cfg.val_detections_per_tile,
        )
        improved = val["f1"] > self.best_f1
        if improved:
            self.best_f1, self.best_epoch = val["f1"], self.epoch + 1
        return val, improved

    def save(self, phase: TrainingPhase, val: dict[str, float], improved: bool) -> None:
        """Checkpoint the epoch just trained: as last, and as best if it improved."""
        state = {
            "format": FORMAT,
            "name": self.name,
            "model": self.model.state_dict(),
            "optimizer": phase.optimizer.state_dict(),
            "scheduler": phase.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "epoch": self.epoch + 1,
            "phase": phase.index,
            "best_f1": self.best_f1,
            "best_epoch": self.best_epoch,
            **self.identity,
            "val": val,
            "versions": versions(),
        }
        if improved:  # best is for prediction: no training state (a third of the bytes)
            save_checkpoint(inference_state(state), self.best_path)
        save_checkpoint(state, self.last_path)


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
    identity: dict,
    resume: bool,
) -> dict:
    """Train through cfg.phases; write best/last checkpoints and dvclive logs; return summary.

    With `resume`, an unfinished last checkpoint of the same `identity` (params and data)
    is continued and any other ignored, so a param or data change never continues a stale run.
    """
    rt = start_runtime(cfg.device)
    seed_everything(cfg.seed)
    run = Run(name, model.to(rt.device), cfg, rt, identity, best_path, last_path)
    amp_dtype = autocast_dtype(rt.device, cfg.amp)
    run.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    if amp_dtype is not None:
        log.info("mixed precision: %s autocast on %s", amp_dtype, rt.device)
    run.resume(resume)
    trainlog = TrainingLog(live_dir, resumed=run.resumed is not None, enabled=rt.is_main)
    phase, step, started = None, 0, time.perf_counter()
    for epoch in range(run.epoch, cfg.epochs):
        run.epoch = epoch
        loader = _epoch_loader(train_set, cfg, epoch, rt)
        if phase is None or phase.index != _phase_at(cfg.phases, epoch):
            phase = run.start_phase(_phase_at(cfg.phases, epoch), len(loader))
            step = epoch * len(loader)
            if run.resumed is not None:  # a killed run logged past its checkpoint
                trainlog.trim(epoch_step=epoch, batch_step=step)
        train_set.set_epoch(epoch)

        def log_batch(values: dict[str, float]) -> None:
            nonlocal step
            step += 1
            trainlog.batch(step, values)

        t0 = time.perf_counter()
        stats = train_one_epoch(
            phase.train_model,
            phase.optimizer,
            phase.scheduler,
            loader,
            rt.device,
            scaler=run.scaler,
            amp_dtype=amp_dtype,
            grad_clip=cfg.grad_clip,
            on_step=log_batch,
            desc=f"{name} epoch {epoch + 1}/{cfg.epochs}",
        )
        seconds = time.perf_counter() - t0
        if rt.is_main:
            val, improved = run.validate(val_set)
            wall = time.perf_counter() - started  # training and validation, this process
            _log_epoch(trainlog, run, phase, stats, val, seconds, wall)  # before the checkpoint
            run.save(phase, val, improved)  # a kill between the two: trimmed and redone
        rt.barrier()
        run.resumed = None
    rt.close()
    return trainlog.written


def _phase_at(phases: tuple[Phase, ...], epoch: int) -> int:
    """The index of the phase a global epoch belongs to."""
    start = 0
    for i, p in enumerate(phases):
        if epoch < start + p.epochs:
            return i
        start += p.epochs
    raise ValueError(epoch)


def _epoch_loader(train_set: TileDataset, cfg: FitConfig, epoch: int, rt: Runtime) -> DataLoader:
    """The epoch's tiles (all, or a seeded draw of max_tiles_per_epoch), shuffled by a
    generator of (seed, epoch): the same epoch draws the same, resumed or not."""
    torch.manual_seed(cfg.seed * 1000 + epoch)
    epoch_set = train_set
    if cfg.max_tiles_per_epoch and cfg.max_tiles_per_epoch < len(train_set):
        rng = np.random.default_rng([cfg.seed, epoch])
        chosen = rng.choice(len(train_set), cfg.max_tiles_per_epoch, replace=False)
        epoch_set = Subset(train_set, sorted(chosen.tolist()))
    sampler = rt.sampler(epoch_set, cfg.seed, epoch)
    return DataLoader(
        epoch_set,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.workers,
        pin_memory=rt.device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
        drop_last=False,
    )


def _log_epoch(
    trainlog: TrainingLog, run: Run, phase: TrainingPhase, stats, val, seconds, wall
) -> None:
    trainlog.epoch(
        run.epoch + 1,
        {f"train_{k}": v for k, v in stats.items()}
        | {f"val_{k}": v for k, v in val.items()}
        | {
            "lr": phase.optimizer.param_groups[0]["lr"],
            "time_s": seconds,
            "wall_s": wall,
            "peak_memory_mb": peak_memory_bytes(run.rt.device) / 2**20,
        },
    )
    trainlog.summary(
        run.model,
        pretrained=bool(run.identity["run"]["pretrained"]),
        best_val_f1=run.best_f1,
        best_epoch=run.best_epoch,
        epochs_done=run.epoch + 1,
        epochs=run.cfg.epochs,
    )
    log.info(
        "epoch %d/%d (phase %d): loss %.4f, val F1 %.4f, mIoU %.4f, %.1f s",
        run.epoch + 1,
        run.cfg.epochs,
        phase.index + 1,
        stats["loss"],
        val["f1"],
        val["miou"],
        seconds,
    )


def train_one_epoch(
    model,
    optimizer,
    scheduler,
    loader,
    device,
    *,
    scaler,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float,
    on_step=None,
    desc: str = "train",
) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = defaultdict(float)
    grad_norms: list[float] = []
    n = 0
    bar = tqdm(loader, desc=desc, unit="batch", disable=not is_main())
    for images, targets in bar:
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
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


@torch.inference_mode()
def evaluate(
    model,
    dataset: TileDataset,
    device,
    *,
    mask_thresh: float,
    score_thresh: float,
    iou_thresh: float,
    max_detections: int = 0,  # 0: the model's own cap
    batch_size: int = 4,
) -> dict[str, float]:
    """Precision/recall/F1/mIoU at mask IoU `iou_thresh` on tiles, and predictions per tile."""
    model.eval()
    now = inference_of(model)
    # Only detections above score_thresh are counted: drop the rest before the mask head runs.
    val = replace(
        now,
        score_thresh=max(now.score_thresh, score_thresh),
        detections_per_img=min(now.detections_per_img, max_detections or now.detections_per_img),
    )
    with inference_applied(model, val):
        return _evaluate(model, dataset, device, mask_thresh, score_thresh, iou_thresh, batch_size)


def _evaluate(
    model, dataset, device, mask_thresh, score_thresh, iou_thresh, batch_size
) -> dict[str, float]:
    counts = DetectionCounts()
    per_image: list[int] = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    for images, targets in tqdm(loader, desc="val", unit="batch", disable=not is_main()):
        outputs = model([im.to(device) for im in images])
        for out, target in zip(outputs, targets, strict=True):
            keep = out["scores"] > score_thresh
            pred = encode_masks((out["masks"][keep][:, 0] > mask_thresh).cpu().numpy())
            gt = encode_masks(target["masks"].numpy())
            counts.add(gt, pred, iou_thresh)
            per_image.append(len(pred))
    return counts.summary() | {
        "predictions_per_tile": float(np.mean(per_image)) if per_image else 0.0
    }


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
