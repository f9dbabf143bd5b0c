"""Benchmark: stitched prediction against the naive way and against the model's forward alone.

On N test images, each configuration in a fresh process (so peak RSS is its own):
- ours: `Predictor` (tiles batched `stitch.batch_size` per forward pass, vectorised stitching);
- naive: one tile per forward pass, then per-detection Python loops for ownership and a
  full-image mask per detection for pasting (how the seed did it);
- forward: the model's forward pass alone on the same tiles, same batches (the limit);
- ours_rpn0: ours with every RPN proposal scored by the heads (stitch.rpn_score_thresh 0).
Then ours again on 2N images: peak RSS must not grow with the number of images. Targets:
stitching and post-processing add <= 15% over the forward time; >= 1.5x the naive images/s.
Prints JSON.

    python bench/predict.py [--model models/custom.pt] [--images 3] [--device auto]
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


def load_images(args) -> list:
    from livecellseg.images import read_gray

    doc = json.loads(args.split.read_text())
    names = [im["file_name"] for im in doc["images"]]
    names = (names * (1 + args.images // max(len(names), 1)))[: args.images]
    return [read_gray(args.image_dir / n) for n in names]


def naive_stitch(tiles, windows, height, width, s):
    """The seed's way: a Python loop per detection, a full-size mask each, no vectorisation."""
    from pycocotools import mask as mask_utils

    from livecellseg.stitch import mask_nms
    from livecellseg.tiling import owned_box

    rles, scores = [], []
    for det, win in zip(tiles, windows, strict=True):
        owned = owned_box(win, height, width, s.grid, s.window)
        for mask, score in zip(det.masks, det.scores, strict=True):
            full = np.zeros((height, width), np.uint8)
            full[win.y0 : win.y1, win.x0 : win.x1] = mask
            area = full.sum()
            if area == 0:
                continue
            inside = full[owned.y0 : owned.y1, owned.x0 : owned.x1].sum()
            ys, xs = np.nonzero(full)
            cy, cx = int(ys.mean()), int(xs.mean())
            centre = owned.y0 <= cy < owned.y1 and owned.x0 <= cx < owned.x1
            if inside / area > s.min_owned or centre:
                rles.append(mask_utils.encode(np.asfortranarray(full)))
                scores.append(score)
    scores = np.array(scores, np.float32)
    return mask_nms(rles, scores, s.nms_iou)


def run_one(config: str, args) -> dict:
    import torch

    from livecellseg.models import apply_inference
    from livecellseg.predict import Predictor
    from livecellseg.runtime import peak_memory_bytes, pick_device
    from livecellseg.tiling import tile_windows

    device = pick_device(args.device)
    predictor, _ = Predictor.from_checkpoint(args.model, device)
    if config == "ours_rpn0":  # every proposal through the heads (torchvision's default)
        infer = replace(predictor.settings.inference, rpn_score_thresh=0.0)
        apply_inference(predictor.model, infer)
    images = load_images(args)
    s = predictor.settings.stitch
    predictor(images[0][:200, :300], "whole")  # warm-up (allocator, lazy inits)
    cells = 0
    t0 = time.perf_counter()
    for image in images:
        h, w = image.shape
        if config in ("ours", "ours_rpn0"):
            det, _ = predictor(image, "stitched")
            cells += len(det.scores)
            continue
        windows = tile_windows(h, w, s.grid, s.window)
        crops = [image[win.y0 : win.y1, win.x0 : win.x1] for win in windows]
        if config == "forward":
            from livecellseg.datasets import gray_to_tensor

            with torch.inference_mode():
                for i in range(0, len(crops), s.batch_size):
                    predictor.model(
                        [gray_to_tensor(c).to(device) for c in crops[i : i + s.batch_size]]
                    )
            if device.type == "cuda":
                torch.cuda.synchronize()
        else:  # naive
            tiles = []
            for crop in crops:
                tiles.extend(predictor.forward([crop]))
            cells += len(naive_stitch(tiles, windows, h, w, s))
    wall = time.perf_counter() - t0
    return {
        "config": config,
        "images": len(images),
        "seconds": round(wall, 2),
        "images_per_s": round(len(images) / wall, 4),
        "cells": cells,
        "peak_memory_mb": round(peak_memory_bytes(device) / 2**20),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/custom.pt"))
    p.add_argument("--split", type=Path, default=Path("data/split/test.json"))
    p.add_argument("--image-dir", type=Path, default=Path("data/subset/images"))
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return

    def child(config: str, n: int) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            config,
            "--model",
            str(args.model),
            "--split",
            str(args.split),
            "--image-dir",
            str(args.image_dir),
            "--images",
            str(n),
            "--device",
            args.device,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    runs = {c: child(c, args.images) for c in ("forward", "ours", "naive", "ours_rpn0")}
    double = child("ours", 2 * args.images)
    fwd, ours, naive = runs["forward"], runs["ours"], runs["naive"]
    result = {
        "benchmark": "predict_stitched",
        "model": str(args.model),
        "runs": [*runs.values(), double],
        "overhead_over_forward": round(ours["seconds"] / fwd["seconds"] - 1, 3),
        "speedup_vs_naive": round(ours["images_per_s"] / naive["images_per_s"], 2),
        "peak_memory_ratio_2n_vs_n": round(double["peak_memory_mb"] / ours["peak_memory_mb"], 3),
        "same_cells_as_naive": ours["cells"] == naive["cells"],
        "speedup_from_rpn_score_thresh": round(
            ours["images_per_s"] / runs["ours_rpn0"]["images_per_s"], 2
        ),
        "same_cells_without_it": ours["cells"] == runs["ours_rpn0"]["cells"],
    }
    result["targets_met"] = {
        "overhead_le_15pct": result["overhead_over_forward"] <= 0.15,
        "speedup_ge_1.5x": result["speedup_vs_naive"] >= 1.5,
        "memory_flat": result["peak_memory_ratio_2n_vs_n"] <= 1.1,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
