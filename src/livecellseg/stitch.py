"""Stitching tile detections back into whole images (pure numpy + pycocotools RLE).

Each tile keeps only the detections that lie mostly in the mini-tiles it owns (see
tiling.owner): a detection is kept when more than `min_owned` of its mask lies in its tile's
ownership box, or when its tile owns the mask's centre of mass. The second rule is ours: with
the first alone, a cell on a corner where four ownership boxes meet has at most ~25% in any
of them and is dropped by every tile (tests/test_stitch.py has the case). Kept masks are
pasted into full-image coordinates as RLE, then a mask-IoU NMS across tiles removes a cell
that two tiles both kept (one cut by a border, one whole).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils

from livecellseg.coco import encode_masks
from livecellseg.tiling import Window, owned_box, tile_windows


@dataclass
class TileDetections:
    """One tile's detections: bool masks in tile coordinates (n, h, w) and scores (n,)."""

    masks: np.ndarray
    scores: np.ndarray


@dataclass
class StitchCounts:
    skipped_proposals: int = 0  # proposals that could not reach their tile's owned box (predict)
    skipped: int = 0  # detections that could not reach it: no mask computed (predict)
    raw: int = 0  # detections with a mask, over all tiles
    empty: int = 0  # empty mask after thresholding
    not_owned: int = 0  # mostly outside the tile's owned mini-tiles (another tile keeps it)
    duplicates: int = 0  # removed by the cross-tile mask NMS
    kept: int = 0

    def add(self, other: StitchCounts) -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


@dataclass
class ImageDetections:
    """Detections of one whole image: RLE masks in image coordinates, scores."""

    rles: list[dict] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def above(self, score_thresh: float) -> np.ndarray:
        """Indices of the detections scoring above `score_thresh`: the same detections as
        predicting with that threshold (greedy NMS only lets a higher score suppress a lower
        one), as long as the per-image detection cap did not bind. Indices, not a new
        ImageDetections, because a caller that predicted once at a low threshold (the app)
        keeps per-detection data beside these (decoded pixels) and selects from both."""
        return np.flatnonzero(self.scores > score_thresh)

    def take(self, indices: np.ndarray) -> ImageDetections:
        """The detections at `indices` (from `above`), in that order."""
        return ImageDetections([self.rles[i] for i in indices], self.scores[indices])


def owned_fraction(masks: np.ndarray, win: Window, owned: Window) -> np.ndarray:
    """(n,) share of each mask's pixels inside the owned box (both boxes in image pixels)."""
    area = masks.sum((1, 2))
    inside = masks[:, owned.y0 - win.y0 : owned.y1 - win.y0, owned.x0 - win.x0 : owned.x1 - win.x0]
    inside = inside.sum((1, 2))
    return np.divide(inside, area, out=np.zeros(len(masks)), where=area > 0)


def centre_owned(masks: np.ndarray, win: Window, owned: Window) -> np.ndarray:
    """(n,) whether each mask's centre of mass (rounded down) lies in the owned box."""
    area = np.maximum(masks.sum((1, 2)), 1)
    cy = masks.sum(2) @ np.arange(masks.shape[1]) / area + win.y0
    cx = masks.sum(1) @ np.arange(masks.shape[2]) / area + win.x0
    cy, cx = np.floor(cy), np.floor(cx)
    return (cy >= owned.y0) & (cy < owned.y1) & (cx >= owned.x0) & (cx < owned.x1)


def paste(masks: np.ndarray, win: Window, height: int, width: int) -> list[dict]:
    """Tile-coordinate bool masks (n, h, w) -> RLEs of the full (height, width) image.

    Encoded from the mask pixels alone, without a full-size buffer per mask: the pixels'
    column-major positions in the image give each mask's runs, whose lengths and gaps are
    COCO's uncompressed RLE counts; pycocotools compresses them.
    """
    n = len(masks)
    if n == 0:
        return []
    owner, col, row = np.nonzero(masks.transpose(0, 2, 1))  # by mask, then column, then row
    pos = (win.x0 + col).astype(np.int64) * height + (win.y0 + row)
    new_mask = np.diff(owner, prepend=-1) != 0
    starts = np.flatnonzero(new_mask | (np.diff(pos, prepend=-2) != 1))  # run starts
    lengths = np.diff(starts, append=len(pos))
    begin, run_owner = pos[starts], owner[starts]
    end = begin + lengths
    first_run = new_mask[starts]
    gaps = begin - np.where(first_run, 0, np.roll(end, 1))
    counts = np.stack([gaps, lengths], 1).ravel()
    bounds = np.searchsorted(run_owner, np.arange(n + 1))
    total = height * width
    objs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        c = counts[2 * a : 2 * b].tolist()
        tail = total - (int(end[b - 1]) if b > a else 0)
        if tail or b == a:  # pycocotools writes no trailing zero-length run
            c.append(tail)
        objs.append({"size": [height, width], "counts": c})
    return mask_utils.frPyObjects(objs, height, width)


def mask_nms(rles: list[dict], scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS on mask IoU; returns kept indices, best score first."""
    order = np.argsort(-scores, kind="stable")
    if len(order) == 0:
        return order
    ranked = [rles[i] for i in order]
    iou = mask_utils.iou(ranked, ranked, [0] * len(ranked))  # bbox-pruned in C
    suppressed = np.zeros(len(order), bool)
    for i in range(len(order)):
        if not suppressed[i]:
            suppressed[i + 1 :] |= iou[i, i + 1 :] > iou_thresh
    return order[~suppressed]


def stitch(
    tiles: list[TileDetections],
    height: int,
    width: int,
    *,
    grid: int,
    window: int,
    min_owned: float,
    nms_iou: float,
) -> tuple[ImageDetections, StitchCounts]:
    """Tile detections (in tile_windows order) -> one image's detections, and what was dropped."""
    windows = tile_windows(height, width, grid, window)
    if len(tiles) != len(windows):
        raise ValueError(f"{len(tiles)} tiles given, the grid has {len(windows)}")
    counts = StitchCounts()
    rles: list[dict] = []
    scores: list[np.ndarray] = []
    for det, win in zip(tiles, windows, strict=True):
        counts.raw += len(det.scores)
        if len(det.scores) == 0:
            continue
        owned = owned_box(win, height, width, grid, window)
        empty = det.masks.sum((1, 2)) == 0
        mine = (owned_fraction(det.masks, win, owned) > min_owned) | centre_owned(
            det.masks, win, owned
        )
        keep = mine & ~empty
        counts.empty += int(empty.sum())
        counts.not_owned += int((~keep & ~empty).sum())
        rles.extend(paste(det.masks[keep], win, height, width))
        scores.append(det.scores[keep])
    all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    kept = mask_nms(rles, all_scores, nms_iou)
    counts.duplicates = len(rles) - len(kept)
    counts.kept = len(kept)
    return ImageDetections([rles[i] for i in kept], all_scores[kept]), counts


def whole_image(masks: np.ndarray, scores: np.ndarray) -> tuple[ImageDetections, StitchCounts]:
    """Detections of one forward pass on the whole image (no stitching; empty masks dropped)."""
    empty = masks.sum((1, 2)) == 0
    keep = ~empty
    rles = encode_masks(masks[keep])
    counts = StitchCounts(raw=len(scores), empty=int(empty.sum()), kept=int(keep.sum()))
    return ImageDetections(rles, scores[keep]), counts
