"""Pictures of segmentations: outlines over the image, label images (pure numpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

GT_COLOUR = (0, 230, 0)  # green
PRED_COLOUR = (255, 0, 255)  # magenta


def outlines(rles: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the inner boundary pixels of every mask (overlapping masks each drawn)."""
    out = np.zeros(shape, bool)
    if not rles:
        return out
    for rle, (x, y, w, h) in zip(rles, mask_utils.toBbox(rles).astype(int), strict=True):
        if w == 0 or h == 0:
            continue
        y0, x0 = max(y - 1, 0), max(x - 1, 0)
        y1, x1 = min(y + h + 1, shape[0]), min(x + w + 1, shape[1])
        m = mask_utils.decode(rle)[y0:y1, x0:x1].astype(bool)
        out[y0:y1, x0:x1] |= m & ~ndimage.binary_erosion(m)
    return out


def overlay(image: np.ndarray, pred: list[dict], gt: list[dict] | None = None) -> np.ndarray:
    """RGB uint8: the gray image with GT outlines (green) and prediction outlines (magenta)."""
    rgb = np.repeat(image[..., None], 3, axis=2)
    if gt:
        rgb[outlines(gt, image.shape)] = GT_COLOUR
    rgb[outlines(pred, image.shape)] = PRED_COLOUR
    return rgb


def label_image(rles: list[dict], scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """uint16 (H, W): 0 background, 1..N cells; where masks overlap the higher score wins."""
    labels = np.zeros(shape, np.uint16)
    for rank in np.argsort(scores, kind="stable"):  # lowest first, so the best is painted last
        labels[mask_utils.decode(rles[rank]).astype(bool)] = rank + 1
    return labels


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG atomically."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(rgb).save(tmp, format="PNG")
    tmp.replace(path)
