"""Correcting a segmentation by hand (the app's Correct tab), on plain label images.

A correction is an image and its label image (0 background, 1..N cells), as `livecellseg
predict` writes it and napari edits it. Deleting a cell is a click inside it; adding one is
its outline clicked point by point, then closed (the polygon rasterised as skimage does it;
the new cell takes the pixels it covers). Each edit returns a new label image, so an undo is
keeping the previous one. `Corrections` collects the corrected images of a session on disk,
paired by name as `livecellseg finetune` reads them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.draw import line, polygon_perimeter
from skimage.draw import polygon as polygon_pixels
from skimage.segmentation import find_boundaries

from livecellseg.errors import LivecellsegError
from livecellseg.finetune import Correction
from livecellseg.images import write_gray, write_labels
from livecellseg.visualize import PRED_COLOUR, gray_to_rgb

POINT_COLOUR = (255, 200, 0)  # the outline being drawn: amber
MIN_NEW_CELL_PX = 4  # a closed outline covering fewer pixels is a slip, not a cell


def cell_at(labels: np.ndarray, x: float, y: float) -> int:
    """The label under pixel (x, y), 0 for background; LivecellsegError outside the image."""
    h, w = labels.shape
    col, row = int(x), int(y)
    if not (0 <= row < h and 0 <= col < w):
        raise LivecellsegError(f"({col}, {row}) is outside the {w}x{h} image; click on it")
    return int(labels[row, col])


def delete_cell(labels: np.ndarray, x: float, y: float) -> tuple[np.ndarray, int]:
    """The labels without the cell under (x, y), and its label."""
    value = cell_at(labels, x, y)
    if value == 0:
        raise LivecellsegError(f"no cell at ({int(x)}, {int(y)}): click inside an outline")
    out = labels.copy()
    out[out == value] = 0
    return out, value


def add_cell(labels: np.ndarray, points: list[tuple[float, float]]) -> tuple[np.ndarray, int]:
    """The labels with the polygon `points` ((x, y) in order) as a new cell, and its label
    (one above the largest). It takes every pixel the polygon covers, its outline included."""
    if len(points) < 3:
        raise LivecellsegError(
            f"an outline needs 3 points or more, {len(points)} given: click around the cell"
        )
    xs = np.array([p[0] for p in points], float)
    ys = np.array([p[1] for p in points], float)
    inside = np.zeros(labels.shape, bool)
    inside[polygon_pixels(ys, xs, labels.shape)] = True
    inside[polygon_perimeter(np.round(ys), np.round(xs), labels.shape)] = True
    if inside.sum() < MIN_NEW_CELL_PX:
        raise LivecellsegError(
            f"the outline covers {int(inside.sum())} px: click around the whole cell"
        )
    value = int(labels.max()) + 1
    if value > np.iinfo(np.uint16).max:
        raise LivecellsegError(f"{value} cells do not fit a uint16 label image")
    out = labels.copy()
    out[inside] = value
    return out, value


def relabel(labels: np.ndarray) -> np.ndarray:
    """uint16 labels numbered 1..N in order of first appearance in raster order."""
    values, first = np.unique(labels[labels > 0], return_index=True)
    order = values[np.argsort(first)]
    lut = np.zeros(int(labels.max()) + 1, np.uint16)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.uint16)
    return lut[labels]


def draw(
    image: np.ndarray, labels: np.ndarray, points: list[tuple[float, float]] = ()
) -> np.ndarray:
    """RGB: each cell outlined (magenta, as the Segment tab), the outline being drawn in amber
    (its points, and the lines between them)."""
    rgb = gray_to_rgb(image)
    rgb[find_boundaries(labels, mode="inner")] = PRED_COLOUR
    if len(points):
        ys = np.round([p[1] for p in points])
        xs = np.round([p[0] for p in points])
        if len(points) >= 2:  # the path so far, not yet closed
            rgb[_open_path(ys, xs, labels.shape)] = POINT_COLOUR
        for x, y in zip(xs.astype(int), ys.astype(int), strict=True):
            rgb[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = POINT_COLOUR
    return rgb


def _open_path(ys, xs, shape) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of the lines joining consecutive points, inside the image."""
    lines = [
        line(int(y0), int(x0), int(y1), int(x1))
        for y0, x0, y1, x1 in zip(ys[:-1], xs[:-1], ys[1:], xs[1:], strict=True)
    ]
    rr = np.concatenate([r for r, _ in lines])
    cc = np.concatenate([c for _, c in lines])
    ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    return rr[ok], cc[ok]


SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Corrections:
    """A session's corrected images on disk: images/NAME.tif and labels/NAME_labels.tif
    under `root`, the layout data/corrections has. Saving an image of the same name again
    replaces its correction."""

    root: Path
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def save(self, name: str, image: np.ndarray, labels: np.ndarray) -> Path:
        """Write the pair (atomically, each file); return the label TIFF's path."""
        if image.shape != labels.shape:
            raise LivecellsegError(
                f"{name}: labels are {labels.shape[1]}x{labels.shape[0]}, the image "
                f"{image.shape[1]}x{image.shape[0]}; start the correction again"
            )
        if not labels.any():
            raise LivecellsegError(f"{name}: no cell is labelled; add the cells, then save")
        stem = SAFE_NAME.sub("_", Path(name).stem).strip("_") or "image"
        with self._lock:
            write_gray(self.root / "images" / f"{stem}.tif", image)
            path = self.root / "labels" / f"{stem}_labels.tif"
            write_labels(path, relabel(labels))
        return path

    def list(self) -> list[Correction]:
        with self._lock:
            images = sorted((self.root / "images").glob("*.tif"))
            return [
                Correction(p, self.root / "labels" / f"{p.stem}_labels.tif")
                for p in images
                if (self.root / "labels" / f"{p.stem}_labels.tif").is_file()
            ]
