"""Pictures of segmentations: outlines over the image, label images (pure numpy).

Masks are decoded once into `CellPixels` (flat pixel indices of each cell's mask and
outline); drawing or labelling any subset of cells is then a few array writes, which is what
lets the app re-draw at a new score threshold without decoding again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from livecellseg.io import atomic_path

GT_COLOUR = (0, 230, 0)  # green
PRED_COLOUR = (255, 0, 255)  # magenta


@dataclass(frozen=True)
class CellPixels:
    """Flat indices into an (H, W) image of each cell's mask pixels and inner-boundary pixels."""

    shape: tuple[int, int]
    masks: list[np.ndarray]
    edges: list[np.ndarray]

    @property
    def areas(self) -> np.ndarray:
        return np.array([len(m) for m in self.masks], np.int64)


def cell_pixels(rles: list[dict], shape: tuple[int, int]) -> CellPixels:
    """Decode each RLE once, within its bounding box (plus a 1-px margin for the erosion)."""
    height, width = shape
    masks, edges = [], []
    boxes = mask_utils.toBbox(rles).astype(int) if rles else []
    for rle, (x, y, w, h) in zip(rles, boxes, strict=True):
        y0, x0 = max(y - 1, 0), max(x - 1, 0)
        y1, x1 = min(y + h + 1, height), min(x + w + 1, width)
        m = mask_utils.decode(rle)[y0:y1, x0:x1].astype(bool)
        edge = m & ~ndimage.binary_erosion(m)
        for part, out in ((m, masks), (edge, edges)):
            yy, xx = np.nonzero(part)
            out.append((yy + y0) * width + (xx + x0))
    return CellPixels((height, width), masks, edges)


def outline_mask(cells: CellPixels, keep: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: the outlines of the kept cells (all by default; overlapping ones each drawn)."""
    out = np.zeros(cells.shape[0] * cells.shape[1], bool)
    idx = range(len(cells.edges)) if keep is None else keep
    for i in idx:
        out[cells.edges[i]] = True
    return out.reshape(cells.shape)


def label_image(
    cells: CellPixels, scores: np.ndarray, keep: np.ndarray | None = None
) -> np.ndarray:
    """uint16 (H, W): 0 background, 1..N the kept cells in the order given; where masks
    overlap the higher score wins."""
    idx = np.arange(len(cells.masks)) if keep is None else np.asarray(keep)
    if len(idx) >= 2**16:
        raise ValueError(f"{len(idx)} cells do not fit a uint16 label image")
    labels = np.zeros(cells.shape[0] * cells.shape[1], np.uint16)
    for rank in np.argsort(scores[idx], kind="stable"):  # lowest first: the best is painted last
        labels[cells.masks[idx[rank]]] = rank + 1
    return labels.reshape(cells.shape)


def draw_outlines(rgb: np.ndarray, cells: CellPixels, colour, keep=None) -> np.ndarray:
    rgb[outline_mask(cells, keep)] = colour
    return rgb


def gray_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2)


def overlay(image: np.ndarray, pred: list[dict], gt: list[dict] | None = None) -> np.ndarray:
    """RGB uint8: the gray image with GT outlines (green) and prediction outlines (magenta)."""
    rgb = gray_to_rgb(image)
    if gt:
        draw_outlines(rgb, cell_pixels(gt, image.shape), GT_COLOUR)
    return draw_outlines(rgb, cell_pixels(pred, image.shape), PRED_COLOUR)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB (or gray) image as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
