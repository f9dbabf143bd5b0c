"""How well the RPN's anchors fit the cells (pure numpy): YOLO's "best possible recall" check.

The RPN labels an anchor positive at IoU >= 0.7 with a cell and negative below 0.3
(torchvision's `rpn_fg_iou_thresh` / `rpn_bg_iou_thresh`); a cell whose best anchor stays
below 0.7 gets only its one "low-quality" match, and one below 0.3 is a cell the RPN must
regress far to find. A cell's best IoU is taken two ways, in the pixels the model sees
(after its resize):
- on the grid: with the anchors as the RPN lays them, centred every `stride` px on each FPN
  level (what the RPN's matcher sees);
- centred: with every anchor shape centred on the cell (an upper bound, blind to strides).
"""

from __future__ import annotations

import numpy as np

POSITIVE_IOU = 0.7  # torchvision's rpn_fg_iou_thresh
NEGATIVE_IOU = 0.3  # torchvision's rpn_bg_iou_thresh
STRIDES = (4, 8, 16, 32, 64)  # FPN levels P2..P6 of a ResNet
SIZE_DIVISIBLE = 32  # torchvision pads a batch to a multiple of this


def anchor_shapes(sizes: tuple[tuple[float, ...], ...], ratios: tuple[float, ...]) -> np.ndarray:
    """(A, 2) widths and heights of every anchor, as torchvision's AnchorGenerator makes
    them: h/w = ratio at area size², corners rounded to whole pixels."""
    shapes = []
    for level in sizes:
        for ratio in ratios:  # torchvision's order: ratio, then size
            for size in level:
                h_ratio = np.sqrt(ratio)
                half_w = np.round(size / h_ratio / 2)  # generate_anchors rounds ±w/2, ±h/2
                half_h = np.round(size * h_ratio / 2)
                shapes.append((2 * half_w, 2 * half_h))
    return np.asarray(shapes, dtype=np.float64).reshape(-1, 2)


def _iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, A) IoU of (N, 4) boxes with anchors given per box, (N, A, 4); all x1, y1, x2, y2."""
    b = boxes[:, None, :]
    iw = np.clip(
        np.minimum(b[..., 2], anchors[..., 2]) - np.maximum(b[..., 0], anchors[..., 0]), 0, None
    )
    ih = np.clip(
        np.minimum(b[..., 3], anchors[..., 3]) - np.maximum(b[..., 1], anchors[..., 1]), 0, None
    )
    inter = iw * ih
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    area_a = (anchors[..., 2] - anchors[..., 0]) * (anchors[..., 3] - anchors[..., 1])
    return inter / (area_b + area_a - inter)


def centred_best_iou(boxes: np.ndarray, sizes, ratios) -> np.ndarray:
    """(N,) each x1, y1, x2, y2 box's highest IoU with any anchor centred on it."""
    shapes = anchor_shapes(sizes, ratios)
    w, h = boxes[:, None, 2] - boxes[:, None, 0], boxes[:, None, 3] - boxes[:, None, 1]
    inter = np.minimum(w, shapes[None, :, 0]) * np.minimum(h, shapes[None, :, 1])
    iou = inter / (w * h + shapes[None, :, 0] * shapes[None, :, 1] - inter)
    return iou.max(axis=1) if len(shapes) else np.zeros(len(boxes))


def grid_best_iou(
    boxes: np.ndarray, image_wh: np.ndarray, sizes, ratios, strides=STRIDES
) -> np.ndarray:
    """(N,) each box's highest IoU with the anchors of the RPN's grid: level l's anchors are
    centred at (i, j) x stride_l for the cells of its feature map (the padded image over the
    stride). Only the 4 grid points around the box's centre can hold its best anchor."""
    best = np.zeros(len(boxes))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    padded = np.ceil(image_wh / SIZE_DIVISIBLE) * SIZE_DIVISIBLE
    for level, stride in zip(sizes, strides, strict=True):
        half = anchor_shapes((level,), ratios) / 2  # (a, 2)
        last = np.ceil(padded / stride) - 1  # the feature map's last index, x and y
        for dx in (0, 1):
            for dy in (0, 1):
                grid = np.floor(centre / stride) + (dx, dy)
                at = np.minimum(grid, last) * stride  # (N, 2) anchor centres
                anchors = np.concatenate(
                    [at[:, None, :] - half[None], at[:, None, :] + half[None]], axis=2
                )
                best = np.maximum(best, _iou(boxes, anchors).max(axis=1))
    return best


def fit_summary(best_iou: np.ndarray) -> dict[str, float | int]:
    """Share of cells with a positive anchor, share below the negative threshold, median."""
    n = len(best_iou)
    if not n:
        return {"cells": 0, "positive": 0.0, "negative": 0.0, "median_iou": 0.0}
    return {
        "cells": n,
        "positive": round(float(np.mean(best_iou >= POSITIVE_IOU)), 4),
        "negative": round(float(np.mean(best_iou < NEGATIVE_IOU)), 4),
        "median_iou": round(float(np.median(best_iou)), 4),
    }


def suggest_sizes(
    boxes: np.ndarray,
    image_wh: np.ndarray,
    ratios: tuple[float, ...],
    scales: tuple[float, ...],
    *,
    sample: int = 4000,
    seed: int = 0,
) -> list[float]:
    """One anchor size per level (each expanded by `scales`), increasing with the level,
    that maximises the share of cells with a positive anchor on the grid less the share
    with none above the negative threshold, then the median IoU: coordinate ascent over
    sizes stride x 2^(k/4), k = -4..8 (half to 4x the stride), from 2x the stride, on a
    seeded sample of the boxes (deterministic)."""
    if not len(boxes):
        return []
    pick = np.random.default_rng(seed).permutation(len(boxes))[:sample]
    b, wh = boxes[pick], image_wh[pick]

    def score(sizes: list[float]) -> tuple[float, float]:
        best = grid_best_iou(b, wh, tuple(tuple(s * k for k in scales) for s in sizes), ratios)
        share = np.mean(best >= POSITIVE_IOU) - np.mean(best < NEGATIVE_IOU)
        return float(share), float(np.median(best))

    sizes = [2.0 * s for s in STRIDES]
    current = score(sizes)
    for _ in range(2):
        for level, stride in enumerate(STRIDES):
            for k in range(-4, 9):
                trial = sizes.copy()
                trial[level] = float(np.round(stride * 2 ** (k / 4)))
                if any(a >= b for a, b in zip(trial, trial[1:], strict=False)):
                    continue
                value = score(trial)
                if value > current:
                    sizes, current = trial, value
    return sizes


def anchor_fit_report(
    boxes: np.ndarray,
    image_wh: np.ndarray,
    groups: np.ndarray,
    anchors: dict[str, tuple[tuple[float, ...], ...]],
    ratios: tuple[float, ...],
    *,
    scales: dict[str, tuple[float, ...]],
) -> dict:
    """Per model (`anchors`: name -> sizes per level): the fit on the grid overall and per
    group (cell line), the centred upper bound, and the sizes a fit suggests (expanded by
    that model's `scales`) with their fit. Boxes are x1, y1, x2, y2 in model-input px in
    images of `image_wh`; also the box-side quantiles."""
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    report: dict = {
        "boxes": len(boxes),
        "box_side_px": {
            f"p{q}": round(float(np.percentile(side, q)), 2) if len(side) else 0.0
            for q in (5, 25, 50, 75, 95)
        },
    }
    for name, sizes in anchors.items():
        best = grid_best_iou(boxes, image_wh, sizes, ratios)
        suggested = suggest_sizes(boxes, image_wh, ratios, scales[name])
        expanded = tuple(tuple(s * k for k in scales[name]) for s in suggested)
        report[name] = fit_summary(best) | {
            "centred": fit_summary(centred_best_iou(boxes, sizes, ratios)),
            "per_cell_line": {
                str(g): fit_summary(best[groups == g]) for g in sorted(set(groups.tolist()))
            },
            "suggested_sizes": suggested,
            "suggested": fit_summary(grid_best_iou(boxes, image_wh, expanded, ratios)),
        }
    return report


def model_input_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor torchvision's GeneralizedRCNNTransform resizes an image by."""
    return min(min_size / min(height, width), max_size / max(height, width))
