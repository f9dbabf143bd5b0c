"""The embedded sample: phase-contrast-like images with exact polygons, written as a LIVECell
data root (`write_livecell_root`: LZW TIFFs and COCO files in LIVECell's layout and naming).

Each cell is a smooth random star-shaped polygon (ellipse plus low harmonics), drawn the way
a phase-contrast microscope shows it: a dark body with brighter texture, a bright membrane
outline and a bright halo outside. Cell lines differ in size, elongation, irregularity and
density; fields are dense enough that cells touch and overlap, and some images are empty.
Everything follows from the seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon
from tqdm import tqdm

from livecellseg.images import write_gray
from livecellseg.livecell import image_dir, write_coco

# LIVECell ships its own train/val/test files; the sample spreads its images over the same three.
LIVECELL_SPLIT_CYCLE = ("train",) * 5 + ("val", "test")


@dataclass(frozen=True)
class CellLineLook:
    radius: float  # mean equivalent radius, px
    radius_sd: float
    elongation: float  # max axis ratio
    irregularity: float  # amplitude of the harmonics, fraction of the radius
    n_cells: tuple[int, int]  # cells per image, min..max
    contrast: float  # body darkening, grey levels


# Sizes follow the ordering seen in LIVECell (BV2 small, A172/Huh7/SKOV3 large, SHSY5Y long).
LOOKS: dict[str, CellLineLook] = {
    "A172": CellLineLook(15, 3, 2.6, 0.20, (25, 60), 38),
    "BT474": CellLineLook(10, 2, 1.4, 0.10, (50, 110), 45),
    "BV2": CellLineLook(7, 1.5, 1.3, 0.08, (70, 150), 50),
    "Huh7": CellLineLook(16, 3, 1.6, 0.18, (25, 55), 34),
    "MCF7": CellLineLook(12, 2.5, 1.5, 0.14, (40, 90), 40),
    "SHSY5Y": CellLineLook(9, 2, 3.2, 0.22, (40, 90), 42),
    "SkBr3": CellLineLook(10, 2, 1.3, 0.10, (50, 110), 46),
    "SKOV3": CellLineLook(16, 3.5, 1.8, 0.16, (25, 55), 36),
}


def cell_polygon(rng: np.random.Generator, look: CellLineLook, cy: float, cx: float) -> np.ndarray:
    """A closed star-shaped polygon (N, 2) in (x, y) around the centre."""
    r = max(3.0, rng.normal(look.radius, look.radius_sd))
    ratio = rng.uniform(1.0, look.elongation)
    a, b = r * np.sqrt(ratio), r / np.sqrt(ratio)
    theta0 = rng.uniform(0, np.pi)
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    wobble = 1.0
    for k in (2, 3, 5):
        wobble = wobble + look.irregularity / k * rng.normal() * np.cos(
            k * t + rng.uniform(0, 2 * np.pi)
        )
    x, y = a * np.cos(t) * wobble, b * np.sin(t) * wobble
    xr = cx + x * np.cos(theta0) - y * np.sin(theta0)
    yr = cy + x * np.sin(theta0) + y * np.cos(theta0)
    return np.stack([xr, yr], axis=1)


def place_centres(rng: np.random.Generator, n: int, look: CellLineLook, height: int, width: int):
    """Random centres; neighbours may touch and overlap a little, never sit on each other."""
    centres: list[tuple[float, float]] = []
    min_dist = 1.2 * look.radius
    for _ in range(n * 30):
        if len(centres) == n:
            break
        cy, cx = rng.uniform(-5, height + 5), rng.uniform(-5, width + 5)
        if all((cy - y) ** 2 + (cx - x) ** 2 >= min_dist**2 for y, x in centres):
            centres.append((cy, cx))
    return centres


def render_image(
    rng: np.random.Generator, look: CellLineLook, n_cells: int, height: int, width: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A uint8 phase-contrast-like image and the polygons (x, y) of its cells (clipped to it)."""
    yy, xx = np.mgrid[0:height, 0:width]
    gy, gx = rng.normal(0, 6, 2)
    background = 128 + gy * (yy / height - 0.5) + gx * (xx / width - 0.5)
    image = background + ndimage.gaussian_filter(rng.normal(0, 6, (height, width)), 2)

    polygons, bodies = [], np.zeros((height, width), bool)
    outline = np.zeros((height, width), bool)
    for cy, cx in place_centres(rng, n_cells, look, height, width):
        poly = cell_polygon(rng, look, cy, cx)
        poly[:, 0] = np.clip(poly[:, 0], 0, width)
        poly[:, 1] = np.clip(poly[:, 1], 0, height)
        rr, cc = fill_polygon(poly[:, 1], poly[:, 0], shape=(height, width))
        if rr.size < 12:  # a sliver at the border: not a cell anyone would annotate
            continue
        pad = 2
        y0, x0 = max(rr.min() - pad, 0), max(cc.min() - pad, 0)
        y1, x1 = min(rr.max() + pad + 1, height), min(cc.max() + pad + 1, width)
        mask = np.zeros((y1 - y0, x1 - x0), bool)  # work in the cell's box, not the image
        mask[rr - y0, cc - x0] = True
        box = (slice(y0, y1), slice(x0, x1))
        body = mask & ~bodies[box]  # the cell on top hides what lies beneath
        image[box][body] -= look.contrast * rng.uniform(0.8, 1.2)
        nucleus = ndimage.binary_erosion(mask, iterations=max(2, int(look.radius / 3)))
        image[box][nucleus & body] += look.contrast * 0.35
        outline[box] |= mask & ~ndimage.binary_erosion(mask)
        bodies[box] |= mask
        polygons.append(poly)
    halo = ndimage.binary_dilation(bodies, iterations=3) & ~bodies
    image[halo] += 45
    image[outline] += 30
    image = ndimage.gaussian_filter(image, 0.8) + rng.normal(0, 3, (height, width))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), polygons


def sample_file_name(cell_line: str, index: int) -> str:
    """LIVECell's naming: <line>_Phase_<well>_<location>_<DDdHHhMMm>_<crop>.tif."""
    well = f"{'ABCDEFGH'[index % 8]}{1 + index // 8 % 12}"
    days, hours = divmod(4 * (index // 2), 24)
    return (
        f"{cell_line}_Phase_{well}_{1 + index % 2}_{days:02d}d{hours:02d}h00m_{1 + index % 4}.tif"
    )


def generate(
    *,
    n_images: int,
    empty_images: int,
    cell_lines: tuple[str, ...],
    width: int,
    height: int,
    seed: int,
):
    """Yield (file_name, cell_line, image, polygons) for each image, deterministically."""
    root = np.random.SeedSequence(seed)
    for i, child in enumerate(root.spawn(n_images)):
        rng = np.random.default_rng(child)
        line = cell_lines[i % len(cell_lines)]
        look = LOOKS[line]
        empty = i >= n_images - empty_images
        n_cells = 0 if empty else int(rng.integers(look.n_cells[0], look.n_cells[1] + 1))
        image, polygons = render_image(rng, look, n_cells, height, width)
        yield sample_file_name(line, i // len(cell_lines)), line, image, polygons


def polygon_annotation(ann_id: int, image_id: int, poly: np.ndarray) -> dict:
    """A LIVECell-style annotation: one polygon ring, its shoelace area and bounding box."""
    poly = np.round(poly, 2)
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    x0, y0 = float(x.min()), float(y.min())
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "segmentation": [poly.reshape(-1).tolist()],
        "area": round(area, 2),
        "bbox": [x0, y0, round(float(x.max()) - x0, 2), round(float(y.max()) - y0, 2)],
    }


def write_livecell_root(
    out: Path,
    samples: Iterable[tuple[str, str, np.ndarray, list[np.ndarray]]],
    *,
    splits: tuple[str, ...] = LIVECELL_SPLIT_CYCLE,
    total: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write generated samples (`generate`'s output) into `out` as a LIVECell data root;
    image i goes to the split `splits[i % len(splits)]`. Returns the counts written."""
    docs: dict[str, tuple[list[dict], list[dict]]] = {s: ([], []) for s in ("train", "val", "test")}
    next_ann_id, n_images = 1, 0
    bar = tqdm(samples, total=total, desc="sample", unit="img", disable=not progress)
    for i, (name, line, image, polygons) in enumerate(bar):
        split = splits[i % len(splits)]
        path = out / image_dir(split) / line / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_gray(path, image)
        image_id, n_images = i + 1, i + 1
        imgs, anns = docs[split]
        height, width = image.shape
        imgs.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for poly in polygons:
            anns.append(polygon_annotation(next_ann_id, image_id, poly))
            next_ann_id += 1
    for split, (imgs, anns) in docs.items():
        write_coco(out / "annotations" / f"livecell_coco_{split}.json", imgs, anns)
    return {"images": n_images, "cells": next_ann_id - 1}
