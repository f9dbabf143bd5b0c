"""Benchmark: training throughput of both models, our settings vs the naive configuration.

For each model, each configuration in a fresh process: images/s over timed training steps
(after one warm-up step) and peak memory (process RSS on CPU, CUDA peak allocation on a GPU),
at the project's settings (300x222 tiles at native scale, RoI sampling from params.yaml) and
at torchvision's defaults (min_size 800 / max_size 1333, 2000/2000 RPN proposals, 512 RoIs
per image): the naive configuration. The data loading time inside a step is reported too.

With --f1-epochs N, each configuration is then trained from the same seed for N epochs on
--f1-tiles training tiles and evaluated on the validation tiles (F1 at mask IoU 0.5), to
check that the speed costs no accuracy. Needs the tile stage's output (dvc repro tile).
Target: >= 3x the naive images/s on CPU at no loss of validation F1.

    python bench/train.py [--steps 4] [--models transfer custom] [--f1-epochs 0] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def measure(name: str, config: str, args: argparse.Namespace) -> dict:
    """One configuration of one model: timed steps, then optionally a short training + val F1."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from livecellseg.config import load_params
    from livecellseg.datasets import TileDataset, collate
    from livecellseg.engine import evaluate, make_optimizer, train_one_epoch
    from livecellseg.models import build_model
    from livecellseg.runtime import peak_memory_bytes, pick_device, seed_everything
    from livecellseg.settings import (
        ArchSettings,
        SamplingSettings,
        arch_settings,
        fit_config,
        sampling_settings,
        validation_settings,
    )

    params = load_params()
    inference = validation_settings(params.model, params.train)
    sampling = sampling_settings(params.model)
    arch = arch_settings(name, params.model, params.custom)
    if config == "naive":  # torchvision's maskrcnn_resnet50_fpn defaults (the design's anchors)
        inference = replace(inference, min_size=800, max_size=1333)
        sampling = SamplingSettings(
            rpn_pre_nms_top_n=2000,
            rpn_post_nms_top_n=2000,
            box_batch_size_per_image=512,
            mask_rois_per_image=0,
        )
        sizes = ((32, 64, 128),) * 5 if name == "custom" else ((32,), (64,), (128,), (256,), (512,))
        arch = ArchSettings(sizes, (0.5, 1.0, 2.0), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    cfg = fit_config(name, params)
    device = pick_device(args.device)
    phase = cfg.phases[-1]  # for transfer the unfrozen phase: the costlier one
    train = TileDataset(
        args.tiles / "train.json",
        args.tiles / "train",
        augmentation=cfg.augmentation,
        seed=params.seed,
    )
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.amp else None

    def fresh_model():
        seed_everything(params.seed)
        model, _ = build_model(name, inference=inference, sampling=sampling, arch=arch)
        return model.to(device)

    def loader(dataset):
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(params.seed),
        )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model = fresh_model()
    batches = iter(loader(train))
    t = time.perf_counter()
    steps = [next(batches) for _ in range(args.steps + 1)]
    load_s = (time.perf_counter() - t) / len(steps)
    opt, sched = make_optimizer(model, phase, 0, len(steps))
    kw = {"scaler": scaler, "grad_clip": cfg.grad_clip, "desc": f"{name}/{config}"}
    train_one_epoch(model, opt, sched, steps[:1], device, **kw)
    sync()
    t = time.perf_counter()
    train_one_epoch(model, opt, sched, steps[1:], device, **kw)
    sync()
    step_s = (time.perf_counter() - t) / args.steps
    out = {
        "device": str(device),
        "min_size": inference.min_size,
        "max_size": inference.max_size,
        "rois_per_image": sampling.box_batch_size_per_image,
        "mask_rois_per_image": sampling.mask_rois_per_image,
        "batch_size": cfg.batch_size,
        "images_per_s": round(cfg.batch_size / step_s, 3),
        "step_s": round(step_s, 3),
        "data_load_s_per_batch": round(load_s, 4),
        "peak_memory_mb": round(peak_memory_bytes(device) / 2**20, 1),
    }
    if args.f1_epochs:
        model = fresh_model()
        rng = np.random.default_rng(params.seed)
        n = min(args.f1_tiles, len(train)) if args.f1_tiles else len(train)
        subset = Subset(train, sorted(rng.choice(len(train), n, replace=False).tolist()))
        epochs = [loader(subset) for _ in range(args.f1_epochs)]
        opt, sched = make_optimizer(model, phase, cfg.warmup_steps, len(epochs[0]))
        t = time.perf_counter()
        for epoch, epoch_loader in enumerate(epochs):
            train.set_epoch(epoch)
            train_one_epoch(model, opt, sched, epoch_loader, device, **kw)
        out["f1_train_s"] = round(time.perf_counter() - t, 1)
        out["f1_train_tiles"] = n
        val = TileDataset(args.tiles / "val.json", args.tiles / "val", seed=params.seed)
        out["val"] = evaluate(
            model,
            val,
            device,
            mask_thresh=cfg.val_mask_thresh,
            score_thresh=cfg.val_score_thresh,
            iou_thresh=cfg.val_iou_thresh,
            max_detections=cfg.val_detections_per_tile,
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="timed training steps per configuration")
    p.add_argument("--models", nargs="+", default=["transfer", "custom"])
    p.add_argument("--configs", nargs="+", default=["ours", "naive"])
    p.add_argument("--f1-epochs", type=int, default=0, help="also train N epochs, report val F1")
    p.add_argument("--f1-tiles", type=int, default=0, help="tiles to train on (0: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiles", type=Path, default=Path("data/tiles"))
    p.add_argument("--child", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # one measurement, in its own process so peak memory is its own
        print(json.dumps(measure(*args.child, args)))
        return
    results = {}
    for name in args.models:
        for config in args.configs:
            r = subprocess.run(
                [sys.executable, __file__, "--child", name, config, *sys.argv[1:]],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                sys.exit(f"{name}/{config} failed:\n{r.stderr[-3000:]}")
            results.setdefault(name, {})[config] = json.loads(r.stdout.strip().splitlines()[-1])
            print(f"{name}/{config}: {results[name][config]}", file=sys.stderr)
        if {"ours", "naive"} <= set(results[name]):
            ours, naive = results[name]["ours"], results[name]["naive"]
            results[name]["speedup"] = round(ours["images_per_s"] / naive["images_per_s"], 2)
            results[name]["memory_ratio"] = round(
                ours["peak_memory_mb"] / naive["peak_memory_mb"], 3
            )
    print(
        json.dumps(
            {
                "benchmark": "train",
                "steps": args.steps,
                "f1_epochs": args.f1_epochs,
                "target_speedup_min": 3.0,
                **results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
