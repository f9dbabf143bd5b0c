"""Benchmark: stitching cost as images get dense (no model: constructed tile detections).

Synthetic 704x520 images with 50, 200, 500 and 1000 cells (discs, overlapping neighbours
allowed); every tile reports every cell that touches it, cut by the tile border, as a model
would. Times `stitch()` (ownership, pasting into image RLEs, cross-tile NMS) and checks that
each cell comes out exactly once. Target: time grows no worse than linearly in the number of
detections. Prints JSON.

    python bench/stitch.py [--cells 50 200 500 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def tile_detections(n_cells: int, height: int, width: int, seed: int, grid: int, window: int):
    from livecellseg.stitch import TileDetections
    from livecellseg.tiling import tile_windows

    rng = np.random.default_rng(seed)
    cy, cx, radius = np.zeros(n_cells), np.zeros(n_cells), rng.uniform(5, 9, n_cells)
    for i in range(n_cells):  # neighbours may touch and overlap a little, never IoU > 0.5
        while True:
            y, x = rng.uniform(0, height), rng.uniform(0, width)
            d = np.hypot(cy[:i] - y, cx[:i] - x)
            if (d >= np.maximum(radius[:i], radius[i])).all():
                cy[i], cx[i] = y, x
                break
    tiles = []
    for win in tile_windows(height, width, grid, window):
        h, w = win.y1 - win.y0, win.x1 - win.x0
        yy, xx = np.mgrid[win.y0 : win.y1, win.x0 : win.x1]
        near = np.flatnonzero(
            (cy + radius > win.y0)
            & (cy - radius < win.y1)
            & (cx + radius > win.x0)
            & (cx - radius < win.x1)
        )
        masks = np.zeros((len(near), h, w), bool)
        for j, i in enumerate(near):
            y0, y1 = (
                max(int(cy[i] - radius[i]) - win.y0 - 1, 0),
                min(int(cy[i] + radius[i]) - win.y0 + 2, h),
            )
            x0, x1 = (
                max(int(cx[i] - radius[i]) - win.x0 - 1, 0),
                min(int(cx[i] + radius[i]) - win.x0 + 2, w),
            )
            masks[j, y0:y1, x0:x1] = (yy[y0:y1, x0:x1] - cy[i]) ** 2 + (
                xx[y0:y1, x0:x1] - cx[i]
            ) ** 2 <= radius[i] ** 2
        visible = masks.reshape(len(near), -1).any(1)
        scores = rng.uniform(0.5, 1.0, len(near)).astype(np.float32)
        tiles.append(TileDetections(masks[visible], scores[visible]))
    return tiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[50, 200, 500, 1000])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    from livecellseg.config import load_params
    from livecellseg.stitch import stitch

    p = load_params()
    settings = {
        "grid": p.tile.grid,
        "window": p.tile.window,
        "min_owned": p.predict.min_owned,
        "nms_iou": p.predict.nms_iou,
    }
    height, width = 520, 704
    rows = []
    for n in args.cells:
        tiles = tile_detections(n, height, width, n, settings["grid"], settings["window"])
        raw = sum(len(t.scores) for t in tiles)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            det, counts = stitch(tiles, height, width, **settings)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "cells": n,
                "tile_detections": raw,
                "kept": counts.kept,
                "each_cell_once": counts.kept == n == len(det.scores),
                "stitch_s": round(min(times), 4),
                "ms_per_detection": round(1000 * min(times) / raw, 4),
            }
        )
    first, last = rows[0], rows[-1]
    # exponent k of time ~ detections^k between the sparsest and the densest image (1: linear)
    slope = np.log(last["stitch_s"] / first["stitch_s"]) / np.log(
        last["tile_detections"] / first["tile_detections"]
    )
    result = {
        "benchmark": "stitch_dense",
        "image": [height, width],
        "rows": rows,
        "loglog_slope": round(float(slope), 3),
        "linear_target_met": bool(slope <= 1.15),
        "each_cell_once": all(r["each_cell_once"] for r in rows),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
