"""A simple sample generator (smooth dark ellipses with a bright rim on a flat
background, ~65 cells per image), frozen here as the baseline of bench/realism.py. Not used by
the pipeline; copied from src/livecellseg/sample.py at commit e71e383.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon


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


def generate_images(n_images: int, cell_lines: tuple[str, ...], width: int, height: int, seed: int):
    """Yield (cell_line, image) as the old `generate` drew them (no empty images)."""
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n_images)):
        rng = np.random.default_rng(child)
        line = cell_lines[i % len(cell_lines)]
        look = LOOKS[line]
        n_cells = int(rng.integers(look.n_cells[0], look.n_cells[1] + 1))
        image, polygons = render_image(rng, look, n_cells, height, width)
        yield line, image, len(polygons)
