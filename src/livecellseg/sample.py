"""The embedded sample: synthetic phase-contrast images of LIVECell's eight cell lines with exact
polygon annotations, written as a LIVECell data root (`write_livecell_root`: LZW TIFFs and COCO
files in LIVECell's layout and naming).

How an image is made (`render_image`), each step drawn per cell line from `LOOKS`:
1. Density: cells per image log-uniform from near-empty to confluent (BV2 into the
   thousands), scaled to the image area. Cells are scattered, or grouped in clusters
   (epithelial lines); some round cells come in dividing pairs.
2. Shapes: each cell claims the pixels inside its radial outline (ellipse with harmonic
   wobble); where outlines meet, the cell nearer relative to its size wins, so crowded cells
   press into polygons as in a confluent monolayer. SH-SY5Y's flat cells spread in 1-4
   extensions that taper to a point (spindles, stars). Processes (SH-SY5Y, from those tips;
   a few in A172, BV2, SK-OV-3) grow as branching, gently turning walks into free space.
3. Annotation, as LIVECell outlines cells: a cell's mask is the whole cell, its flat lamella
   and the base of its processes (`PROCESS_BASE` px), not the rest of a process. The outline
   of each mask becomes its polygon, and the mask is re-rasterised from that polygon
   (pycocotools, as evaluation does): the image is drawn from exactly what the annotation
   says. Clumps of dead round cells and debris are drawn but not annotated (`dead_clumps`).
4. Optics, fitted to the real reference frames (bench/look.py measures them; the constants
   below set the contrasts): a flat cell is seen by its membrane, a thin bright line with
   dark flanks along its outline, over a lamella about as grey as the medium; its body, round
   the nucleus, is thicker (darker, a faint halo) and carries granules; processes are thin
   bright lines thinning to their tips; round (thick, dividing, floating) cells are dark with
   a bright halo; out-of-focus cells are blurred. Debris and an illumination gradient are
   added; slow shading is then removed and the mean set to 128 (LIVECell's frames are
   flat-field corrected), and camera noise matched to the reference frames' background (std,
   neighbour correlation, the sensor's row pattern) is added.
5. Time-lapse (`layout`, `grow_cells`): as LIVECell's Incucyte frames, the images are series
   of one position in a well at several elapsed times, named as LIVECell names them. The same
   cells move a little from frame to frame and divide: the count grows as
   n0 * 2^(t / doubling time), the doubling time fixed per cell line (`LOOKS`), so growth
   analysis has a known answer; a medium-only control well (`EMPTY_WELL`) has no cells.
Everything follows from the seed; series are independent, so they render in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours
from tqdm import tqdm

from livecellseg.images import write_gray
from livecellseg.livecell import BASE_URL, image_dir, parse_name, write_coco

# LIVECell ships its own train/val/test files; the sample spreads its images over the same three.
LIVECELL_SPLIT_CYCLE = ("train",) * 5 + ("val", "test")
# Pictures listed twice, as in LIVECell's files (annotated twice): (the n-th image of a split,
# the split of its second entry). The second entry of a picture in the same split lacks its
# last cell (a less complete annotation); the one in another split has the same cells.
LIVECELL_DUPLICATES = (("train", 0, "train"), ("train", 1, "val"), ("test", 0, "test"))
LIVECELL_AREA = 704 * 520  # densities are per LIVECell image
MIN_CELL_PIXELS = 12  # a sliver at the border: not a cell anyone would annotate
FLAT_FIELD_SIGMA = 10.0  # px
PROCESS_BASE = 6  # px of a process inside its cell's outline
# the optics, set so that the sample's tiles match the reference frames (bench/realism.py)
MEMBRANE_CONTRAST = 42.0  # grey levels of a membrane line (before its high pass)
MEMBRANE_BLUR = 0.5  # px, the membrane line's blur
MEMBRANE_FLANK = 1.2  # px, the high pass that gives the line its dark flanks
SPOT_CONTRAST = 14.0  # grey levels of a granule
SPOTS_PER_PX = 0.054  # granules per px of a flat cell (times the line's texture)
BODY_CONTRAST = 22.0  # grey levels per unit of thickness of a flat cell's body
LAMELLA_TEXTURE = 0.2  # the lamellae's fine texture, in thickness units
ROUND_CONTRAST = 14.0  # grey levels per unit of thickness of a round cell
PROCESS_CONTRAST = 0.56  # a process's line against a membrane's
BODY_BROAD = 0.65  # the body's broad (5 px) darkening against its fine one
BODY_SIZE = 0.4  # the body's radius, share of the cell's
LAMELLA_GRAIN = 1.0  # px, the scale of the lamellae's texture
ROW_NOISE = 0.2  # grey levels: each row's own offset (std)
ROW_ALTERNATION = 0.4  # grey levels: even against odd rows, at most


@dataclass(frozen=True)
class CellLineLook:
    radius: float  # median equivalent radius of a free cell, px
    radius_sd: float  # its spread (log-normal: sd of the log radius = radius_sd / radius)
    elongation: float  # max axis ratio
    irregularity: float  # amplitude of the outline's harmonics, fraction of the radius
    n_cells: tuple[int, int]  # cells per 704x520 image, log-uniform min..max
    cluster: float  # mean cells per cluster (1: scattered)
    round_frac: float  # share of thick round cells (rounded, dividing, floating)
    thickness: float  # flat cell thickness (phase units; round cells are ~3x)
    texture: float  # granularity of the cytoplasm
    neurites: float  # mean neurites per flat cell
    neurite_len: float  # mean neurite length, px
    doubling_h: float  # the time-lapse series' doubling time, hours
    dead: float = 1.0  # clumps of dead round cells per 100 cells (drawn, not annotated)
    arms: float = 0.0  # mean tapering extensions of a flat cell (part of its mask)
    arm_len: float = 0.0  # their mean length beyond the outline, in radii


# From LIVECell's paper and images: A172 large, spread, irregular; BT474/MCF7 compact clusters;
# BV2 small, round, bright and very dense; Huh7 polygonal clusters; SH-SY5Y spread, spindle- or
# star-shaped cells whose flat extensions taper into long thin processes; SkBr3 rounded
# grape-like clusters; SK-OV-3 large, flat, elongated.
# Means of the log-uniform counts: ~300 cells per image over the eight lines, as LIVECell.
LOOKS: dict[str, CellLineLook] = {
    "A172": CellLineLook(21, 5, 2.6, 0.30, (25, 500), 1.0, 0.08, 0.8, 1.0, 0.7, 22, 36),
    "BT474": CellLineLook(11, 2, 1.4, 0.12, (60, 1000), 14.0, 0.08, 1.1, 1.2, 0.0, 0, 72),
    "BV2": CellLineLook(6.5, 1.2, 1.35, 0.10, (150, 2800), 1.0, 0.55, 1.3, 0.6, 0.15, 8, 20),
    "Huh7": CellLineLook(15, 3, 1.5, 0.18, (40, 550), 9.0, 0.05, 0.9, 1.3, 0.0, 0, 30),
    "MCF7": CellLineLook(12, 2.5, 1.5, 0.14, (60, 900), 12.0, 0.06, 1.0, 1.1, 0.0, 0, 40),
    "SHSY5Y": CellLineLook(
        8, 2.5, 2.0, 0.15, (40, 600), 1.8, 0.30, 1.6, 1.1, 3.5, 73, 48, 3.0, arms=2.5, arm_len=2.5
    ),
    "SkBr3": CellLineLook(9, 1.8, 1.3, 0.10, (70, 1000), 6.0, 0.45, 1.2, 1.0, 0.0, 0, 56),
    "SKOV3": CellLineLook(18, 4, 2.8, 0.22, (25, 400), 1.0, 0.05, 0.7, 1.0, 0.2, 15, 44),
}


@dataclass
class Cell:
    cy: float
    cx: float
    radius: float
    ratio: float  # axis ratio
    angle: float
    harmonics: np.ndarray  # (3, 2): amplitude, phase of harmonics 2, 3, 5
    round: bool
    defocus: bool
    n_neurites: int
    # tapering extensions of the lamella: (angle, length in radii, angular half-width), in
    # the cell's own frame; processes leave from their tips
    arms: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))


def new_cell(rng: np.random.Generator, look: CellLineLook, cy: float, cx: float) -> Cell:
    """A cell of `look` centred at (cy, cx), its shape drawn."""
    is_round = rng.random() < look.round_frac
    cell = Cell(
        cy,
        cx,
        max(3.0, look.radius * np.exp(rng.normal(0, look.radius_sd / look.radius)))
        * (0.75 if is_round else 1.0),
        1.0 if is_round else rng.uniform(1.0, look.elongation),
        rng.uniform(0, np.pi),
        np.stack(
            [
                look.irregularity * (0.3 if is_round else 1.0) * rng.normal(0, 1, 3),
                rng.uniform(0, 2 * np.pi, 3),
            ],
            1,
        ),
        is_round,
        is_round and rng.random() < 0.15,
        0 if is_round else int(rng.poisson(look.neurites)),
    )
    if look.arms and not is_round:  # drawn only for lines with arms: the others' streams stay
        n = max(1, rng.poisson(look.arms))
        start = rng.uniform(0, 2 * np.pi)
        cell.arms = np.stack(
            [
                start + np.arange(n) * 2 * np.pi / n + rng.normal(0, 0.4, n),
                look.arm_len * rng.lognormal(0, 0.4, n),
                rng.uniform(0.4, 0.8, n),
            ],
            1,
        )
    return cell


class Spacing:
    """Cell centres on a grid of `min_dist` cells: is a new centre at least `min_dist` from
    every one placed?"""

    def __init__(self, min_dist: float, cells: Iterable[Cell] = ()) -> None:
        self.min_dist = min_dist
        self.grid: dict[tuple[int, int], list[tuple[float, float]]] = {}
        for c in cells:
            self.add(c.cy, c.cx)

    def free(self, cy: float, cx: float) -> bool:
        gy, gx = int(cy // self.min_dist), int(cx // self.min_dist)
        near = (
            p
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            for p in self.grid.get((gy + dy, gx + dx), ())
        )
        return all((cy - y) ** 2 + (cx - x) ** 2 >= self.min_dist**2 for y, x in near)

    def add(self, cy: float, cx: float) -> None:
        self.grid.setdefault((int(cy // self.min_dist), int(cx // self.min_dist)), []).append(
            (cy, cx)
        )


def _inside(cy: float, cx: float, height: int, width: int) -> bool:
    return -5 <= cy <= height + 5 and -5 <= cx <= width + 5


def draw_cells(
    rng: np.random.Generator, look: CellLineLook, n: int, height: int, width: int
) -> list[Cell]:
    """Centres (scattered or clustered, never on top of each other) and shape parameters."""
    n_clusters = max(1, round(n / look.cluster))
    centres = rng.uniform((-5, -5), (height + 5, width + 5), (n_clusters, 2))
    spread = look.radius * 1.1 * np.sqrt(look.cluster)
    cand = centres[rng.integers(0, n_clusters, 3 * n)]
    if look.cluster > 1:
        cand = cand + rng.normal(0, spread, cand.shape)
    else:
        cand = rng.uniform((-5, -5), (height + 5, width + 5), (3 * n, 2))
    spacing = Spacing(0.9 * look.radius)
    cells: list[Cell] = []
    for cy, cx in cand:
        if len(cells) == n:
            break
        if not _inside(cy, cx, height, width) or not spacing.free(cy, cx):
            continue
        spacing.add(cy, cx)
        cells.append(new_cell(rng, look, cy, cx))
        if cells[-1].round and rng.random() < 0.2 and len(cells) < n:  # dividing: a sibling
            a = rng.uniform(0, 2 * np.pi)
            d = 1.9 * cells[-1].radius
            sib = Cell(**{**cells[-1].__dict__, "defocus": False})
            sib.cy, sib.cx = cy + d * np.sin(a), cx + d * np.cos(a)
            cells.append(sib)
    return cells


def grow_cells(
    rng: np.random.Generator,
    look: CellLineLook,
    cells: list[Cell],
    n: int,
    height: int,
    width: int,
) -> list[Cell]:
    """The same cells a time-lapse interval later: each has moved a little (a step of ~0.4
    radius, turned a little) and new cells, born of random mothers, sit beside them until
    there are `n` (fewer if the image is full: a daughter needs a free place, as in
    draw_cells, within 3 radii of its mother)."""
    moved = []
    for c in cells:
        step = rng.normal(0, 0.4 * c.radius, 2)
        cy, cx = c.cy + step[0], c.cx + step[1]
        if not _inside(cy, cx, height, width):  # it stays in view: reflect the step
            cy, cx = c.cy - step[0], c.cx - step[1]
        moved.append(Cell(**{**c.__dict__, "cy": cy, "cx": cx}))
        moved[-1].angle = c.angle + rng.normal(0, 0.2)
    spacing = Spacing(0.9 * look.radius, moved)
    tries = 0
    while len(moved) < n and moved and tries < 30 * n:
        tries += 1
        mother = moved[rng.integers(0, len(moved))]
        a, d = rng.uniform(0, 2 * np.pi), mother.radius * rng.uniform(1.0, 3.0)
        cy, cx = mother.cy + d * np.sin(a), mother.cx + d * np.cos(a)
        if _inside(cy, cx, height, width) and spacing.free(cy, cx):
            spacing.add(cy, cx)
            moved.append(new_cell(rng, look, cy, cx))
    return moved


def claim_pixels(cells: list[Cell], which: list[int], height: int, width: int) -> np.ndarray:
    """Label image of the cells `which` (-1: background). A pixel goes to the cell whose
    outline it is inside and that is nearest relative to its size."""
    best = np.full((height, width), np.inf, np.float32)
    owner = np.full((height, width), -1, np.int32)
    k = np.array([2, 3, 5])
    for i in which:
        c = cells[i]
        a, b = c.radius * np.sqrt(c.ratio), c.radius / np.sqrt(c.ratio)
        reach = a * (1 + np.abs(c.harmonics[:, 0]).sum() + c.arms[:, 1].sum()) + 1
        y0, y1 = max(int(c.cy - reach), 0), min(int(c.cy + reach) + 2, height)
        x0, x1 = max(int(c.cx - reach), 0), min(int(c.cx + reach) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy + 0.5 - c.cy, xx + 0.5 - c.cx
        u = dx * np.cos(c.angle) + dy * np.sin(c.angle)
        v = -dx * np.sin(c.angle) + dy * np.cos(c.angle)
        theta = np.arctan2(v / b, u / a)
        harmonic = c.harmonics[:, :1, None] / k[:, None, None]
        wobble = 1 + (harmonic * np.cos(k[:, None, None] * theta + c.harmonics[:, 1:, None])).sum(0)
        for phi, length, spread in c.arms:  # an extension along phi, tapering to its tip
            off = np.abs(np.angle(np.exp(1j * (theta - phi))))
            wobble = wobble + length * np.clip(1 - off / spread, 0, None) ** 2
        nd = np.hypot(u / a, v / b) / np.maximum(wobble, 0.3)
        box = (slice(y0, y1), slice(x0, x1))
        win = (nd < 1.0) & (nd < best[box])
        best[box][win] = nd[win]
        owner[box][win] = i
    return owner


def grow_neurites(
    rng: np.random.Generator,
    cells: list[Cell],
    owner: np.ndarray,
    top: np.ndarray,
    length: float,
) -> np.ndarray:
    """Processes: branching, gently turning walks from each soma into free space, 1 px wide;
    a walk stops at another cell (of either map) or the border. The first `PROCESS_BASE` px
    of each (2 px wide) are claimed by their cell in `owner`: LIVECell's outlines take in a
    process's base, not the whole process. Returns the process strength map (1 at the base,
    thinning to 0.3 at the tip), which the optics draw as a thin bright line."""
    height, width = owner.shape
    process = np.zeros(owner.shape, np.float32)
    for i, c in enumerate(cells):
        walkers = [
            (c.cy, c.cx, rng.uniform(0, 2 * np.pi), max(6.0, rng.normal(length, length / 3)), 0)
            for _ in range(c.n_neurites)
        ]
        if len(c.arms):  # processes leave from the tips of the extensions
            a, b = np.sqrt(c.ratio), 1 / np.sqrt(c.ratio)
            phi = c.arms[:, 0]
            u, v = a * np.cos(phi), b * np.sin(phi)
            tips = np.arctan2(
                u * np.sin(c.angle) + v * np.cos(c.angle), u * np.cos(c.angle) - v * np.sin(c.angle)
            )
            walkers = [
                (y, x, tips[j % len(tips)] + 0.1 * (angle - np.pi), left, done)
                for j, (y, x, angle, left, done) in enumerate(walkers)
            ]
        while walkers:
            y, x, angle, left, done = walkers.pop()
            steps, branched, outside = int(left), False, 0
            for s in range(steps):
                angle += rng.normal(0, 0.08)
                y, x = y + np.sin(angle), x + np.cos(angle)
                iy, ix = int(y), int(x)
                if not (0 <= iy < height - 1 and 0 <= ix < width - 1):
                    break
                if (top[iy, ix] != -1) or owner[iy, ix] not in (-1, i):
                    break
                if not outside and owner[iy, ix] != -1:
                    continue  # still inside its own cell
                outside += 1  # steps since it left the cell
                if done + outside <= PROCESS_BASE:  # the base: part of the cell's mask
                    patch = owner[iy : iy + 2, ix : ix + 2]
                    patch[patch == -1] = i
                process[iy, ix] = max(process[iy, ix], 1.0 - 0.7 * s / max(steps, 1))
                if not branched and s > steps / 3 and rng.random() < 0.02:
                    branched = True
                    walkers.append(
                        (y, x, angle + rng.choice((-1, 1)) * 0.7, (steps - s) * 0.7, PROCESS_BASE)
                    )
    return process


def outline_polygon(mask: np.ndarray, y0: int, x0: int) -> np.ndarray | None:
    """The outer outline of a binary mask (its largest 4-connected part, holes filled) as a
    polygon (N, 2) of (x, y) image coordinates, pixel corners at integers (COCO's)."""
    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == 1 + int(np.argmax(ndimage.sum_labels(mask, labels, range(1, n + 1))))
    mask = ndimage.binary_fill_holes(mask)
    if mask.sum() < MIN_CELL_PIXELS:
        return None
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    ring = approximate_polygon(max(contours, key=len), tolerance=0.4)[:-1]
    if len(ring) < 3:
        return None
    return np.stack([ring[:, 1] - 0.5 + x0, ring[:, 0] - 0.5 + y0], axis=1)


def rasterize(poly: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """The mask pycocotools makes of a polygon, computed in its bounding box only."""
    x0, y0 = max(int(poly[:, 0].min()) - 1, 0), max(int(poly[:, 1].min()) - 1, 0)
    x1 = min(int(np.ceil(poly[:, 0].max())) + 1, width)
    y1 = min(int(np.ceil(poly[:, 1].max())) + 1, height)
    local = (poly - (x0, y0)).ravel().tolist()
    rle = mask_utils.merge(mask_utils.frPyObjects([local], y1 - y0, x1 - x0))
    return mask_utils.decode(rle).astype(bool), (slice(y0, y1), slice(x0, x1))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-6)


def render_image(
    rng: np.random.Generator, look: CellLineLook, cells: list[Cell], height: int, width: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A uint8 phase-contrast-like image of `cells` and the polygons (x, y) of its cells."""
    # round cells sit on top of flat ones: the flat cell's mask goes on beneath (overlaps,
    # as LIVECell's annotations have them); cells of one kind press against each other
    owner = claim_pixels(cells, [i for i, c in enumerate(cells) if not c.round], height, width)
    top = claim_pixels(cells, [i for i, c in enumerate(cells) if c.round], height, width)
    process = grow_neurites(rng, cells, owner, top, look.neurite_len)

    flat = np.zeros((height, width), np.float32)  # thickness of flat cells' bodies
    membrane = np.zeros((height, width), np.float32)  # thin bright lines: outlines, processes
    thick = np.zeros((height, width), np.float32)  # round cells: wider, stronger halo
    blurred = np.zeros((height, width), np.float32)  # out of focus
    spots = np.zeros((height, width), np.float32)  # granules of the cell bodies
    lamella = np.zeros((height, width), bool)  # where any flat cell is
    polygons = []
    flat_boxes, top_boxes = ndimage.find_objects(owner + 1), ndimage.find_objects(top + 1)
    for i, c in enumerate(cells):
        labels, boxes = (top, top_boxes) if c.round else (owner, flat_boxes)
        sl = boxes[i] if i < len(boxes) else None
        if sl is None:
            continue
        poly = outline_polygon(labels[sl] == i, sl[0].start, sl[1].start)
        if poly is None:
            continue
        mask, box = rasterize(poly, height, width)
        if mask.sum() < MIN_CELL_PIXELS:
            continue
        polygons.append(poly)
        edt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].astype(np.float32)
        depth = edt / max(float(edt.max()), 1.0)
        h = look.thickness * rng.uniform(0.7, 1.3)
        if c.round:
            # thick: a dark ring and a lighter centre (the phase wraps where the cell is tallest)
            t = 3.2 * h * np.sqrt(depth) * (1 - 0.55 * depth**2)
            (blurred if c.defocus else thick)[box] += t * mask
            continue
        # a flat cell: a lamella about as grey as the medium, seen by its membrane (a thin
        # bright line along the outline), and a thicker, granular body round its nucleus
        outline = ndimage.binary_opening(np.pad(mask, 2)) | np.pad(mask & (edt > 1), 2)
        soft = ndimage.gaussian_filter(outline.astype(np.float32), MEMBRANE_BLUR)[2:-2, 2:-2]
        membrane[box] += rng.uniform(0.5, 1.3) * 2.5 * np.hypot(*np.gradient(soft))
        yy, xx = np.nonzero(mask)
        cy, cx = yy.mean(), xx.mean()
        rn = BODY_SIZE * min(np.sqrt(mask.sum() / np.pi), c.radius)  # arms are flat
        gy, gx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
        body = np.exp(-((gy - cy) ** 2 + (gx - cx) ** 2) / rn**2) * mask
        flat[box] += h * (0.15 * np.minimum(edt / 2, 1) * mask + 0.6 * body)
        lamella[box] |= mask
        n_spots = rng.poisson(look.texture * SPOTS_PER_PX * mask.sum())
        if n_spots:
            k = rng.choice(yy.size, n_spots, p=body[yy, xx] / body[yy, xx].sum())
            np.add.at(spots[box], (yy[k], xx[k]), rng.normal(-1.0, 1.0, n_spots))

    dead = dead_clumps(rng, look, owner, top, len(polygons))
    debris = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(3, 30)):
        y, x = rng.integers(0, height), rng.integers(0, width)
        debris[y, x] += rng.normal(0, 25)
    debris = ndimage.gaussian_filter(debris, rng.uniform(0.7, 1.2))

    def highpass(phase, sigma):
        return phase - ndimage.gaussian_filter(phase, sigma)

    thick += ndimage.gaussian_filter(blurred, 2.0) + dead
    # the lamellae's own faint texture (folds, vesicles), measured inside real cells
    flat += (
        LAMELLA_TEXTURE
        * look.thickness
        * _smooth_noise(rng, (height, width), LAMELLA_GRAIN)
        * lamella
    )
    lines = membrane + ndimage.gaussian_filter(PROCESS_CONTRAST * process, 0.5)
    image = (
        MEMBRANE_CONTRAST * highpass(lines, MEMBRANE_FLANK)
        - BODY_CONTRAST * (highpass(flat, 1.5) + BODY_BROAD * highpass(flat, 5.0))
        - ROUND_CONTRAST * (highpass(thick, 2.0) + 0.6 * highpass(thick, 1.0))
        + SPOT_CONTRAST * ndimage.gaussian_filter(spots, 0.7)
    )
    relief = ndimage.gaussian_filter(flat + 0.5 * thick, 1.0)
    image += 12 * (np.gradient(relief, axis=0) + np.gradient(relief, axis=1))
    yy, xx = np.mgrid[0:height, 0:width]
    gy, gx = rng.normal(0, 3, 2)
    image += gy * (yy / height - 0.5) + gx * (xx / width - 0.5) + debris
    # LIVECell's frames are flat-field corrected: slow shading is gone, mean grey is 128
    image -= ndimage.gaussian_filter(image, FLAT_FIELD_SIGMA)
    image += camera_noise(rng, height, width) + 128
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), polygons


def camera_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The camera's noise as measured on the reference frames' background (pixels with no
    cell within 6 px, bench/look.py): std 1.0, neighbours correlated ~0.1, and a row
    pattern of the sensor's read-out: each row offset by N(0, ROW_NOISE), even and odd rows
    apart by a per-frame amount (the frames' spectra peak at the vertical Nyquist frequency)."""
    rows = rng.normal(0, ROW_NOISE, height) + rng.uniform(-1, 1) * ROW_ALTERNATION * (
        np.arange(height) % 2 * 2 - 1
    )
    return _smooth_noise(rng, (height, width), 0.4) + rows[:, None].astype(np.float32)


def dead_clumps(
    rng: np.random.Generator, look: CellLineLook, owner: np.ndarray, top: np.ndarray, n: int
) -> np.ndarray:
    """Thickness of clumps of dead, round, granular cells in free space: drawn, not
    annotated (LIVECell leaves them out). About `look.dead` clumps per 100 cells."""
    height, width = owner.shape
    out = np.zeros((height, width), np.float32)
    free = (owner == -1) & (top == -1)
    for _ in range(rng.poisson(look.dead * n / 100)):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        for _ in range(rng.integers(2, 9)):
            r = rng.uniform(2.0, 3.5)
            by, bx = y + rng.normal(0, 3.5), x + rng.normal(0, 3.5)
            y0, y1 = max(int(by - r) - 1, 0), min(int(by + r) + 2, height)
            x0, x1 = max(int(bx - r) - 1, 0), min(int(bx + r) + 2, width)
            if y0 >= y1 or x0 >= x1:
                continue
            gy, gx = np.mgrid[y0:y1, x0:x1]
            d = np.hypot(gy + 0.5 - by, gx + 0.5 - bx) / r
            blob = np.clip(1 - d**2, 0, None) * free[y0:y1, x0:x1]
            out[y0:y1, x0:x1] += 2.5 * blob * rng.uniform(0.6, 1.4, blob.shape)
    return out


def sample_file_name(cell_line: str, well: str, position: int, hours: float) -> str:
    """LIVECell's naming: <line>_Phase_<well>_<field>_<DDdHHhMMm>_<crop>.tif (the position
    is the crop of field 1)."""
    minutes = round(hours * 60)
    days, rest = divmod(minutes, 24 * 60)
    return f"{cell_line}_Phase_{well}_1_{days:02d}d{rest // 60:02d}h{rest % 60:02d}m_{position}.tif"


EMPTY_WELL = "H12"  # the sample's medium-only control well: imaged like the others, no cells


@dataclass(frozen=True)
class Series:
    """One position of a well imaged at `hours`: a time-lapse series."""

    line: str
    well: str
    position: int
    hours: tuple[float, ...]
    empty: bool


def layout(
    n_images: int,
    empty_images: int,
    cell_lines: tuple[str, ...],
    hours: tuple[float, ...],
    positions: int,
) -> list[Series]:
    """The sample's series: the n_images - empty_images images with cells form series of
    len(hours) frames (the last may be shorter), the cell lines in turn; a line's series
    fill the positions of its wells B2, C2, ..., then the next column. The empty images are
    the control well H12 of the next line in turn (its positions in turn, each at the first
    hours)."""
    out, n_cells = [], n_images - empty_images
    for s in range(-(-n_cells // len(hours))):
        k = s // len(cell_lines)  # the line's k-th series
        w = k // positions
        out.append(
            Series(
                cell_lines[s % len(cell_lines)],
                f"{'BCDEFG'[w % 6]}{2 + w // 6}",
                1 + k % positions,
                hours[: min(len(hours), n_cells - s * len(hours))],
                False,
            )
        )
    line = cell_lines[len(out) % len(cell_lines)]  # the next line in turn
    for p in range(-(-empty_images // len(hours))):
        frames = min(len(hours), empty_images - p * len(hours))
        out.append(Series(line, EMPTY_WELL, 1 + p, hours[:frames], True))
    return out


def _render_series(job: tuple) -> list[tuple[str, str, np.ndarray, list[np.ndarray]]]:
    series, child, height, width = job
    rng = np.random.default_rng(child)
    look = LOOKS[series.line]
    lo, hi = look.n_cells
    scale = height * width / LIVECELL_AREA
    span = series.hours[-1] - series.hours[0]
    # the start density, log-uniform, low enough that the last frame stays within the line's
    # range: n(t) = n0 * 2^(t / doubling time)
    top = max(lo, hi / 2 ** (span / look.doubling_h))
    n0 = np.exp(rng.uniform(np.log(lo), np.log(top))) * scale
    cells: list[Cell] = []
    out = []
    for t in series.hours:
        n = (
            0
            if series.empty
            else max(1, round(n0 * 2 ** ((t - series.hours[0]) / look.doubling_h)))
        )
        if n and not cells:
            cells = draw_cells(rng, look, n, height, width)
        elif n:
            cells = grow_cells(rng, look, cells, n, height, width)
        image, polygons = render_image(rng, look, cells, height, width)
        out.append(
            (
                sample_file_name(series.line, series.well, series.position, t),
                series.line,
                image,
                polygons,
            )
        )
    return out


def generate(
    *,
    n_images: int,
    empty_images: int,
    cell_lines: tuple[str, ...],
    width: int,
    height: int,
    seed: int,
    hours: tuple[float, ...] = (0.0,),
    positions: int = 1,
    workers: int = 1,
) -> Iterator[tuple[str, str, np.ndarray, list[np.ndarray]]]:
    """Yield (file_name, cell_line, image, polygons) for each image, series by series (see
    `layout`; one time point: every image its own well), frame by frame; the same for any
    number of `workers` (each series has its own seeded generator)."""
    series = layout(n_images, empty_images, cell_lines, tuple(hours), positions)
    children = np.random.SeedSequence(seed).spawn(len(series))
    jobs = [(s, child, height, width) for s, child in zip(series, children, strict=True)]
    if workers <= 1:
        for job in jobs:
            yield from _render_series(job)
        return
    with ProcessPoolExecutor(min(workers, os.cpu_count() or 1)) as pool:
        for frames in pool.map(_render_series, jobs):
            yield from frames


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
    duplicates: tuple[tuple[str, int, str], ...] = LIVECELL_DUPLICATES,
    total: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write generated samples (`generate`'s output) into `out` as a LIVECell data root, its
    JSONs as LIVECell's bucket has them (list form, `original_filename` and `url` fields);
    image i goes to the split `splits[i % len(splits)]`, and the `duplicates` get a second
    entry (new image id) as described at LIVECELL_DUPLICATES. A well's frames share a
    split: `splits` is cycled over the wells (line and well, in order of first image), as
    LIVECell's time-lapse frames of one position are near-duplicates. Returns the counts
    written."""
    docs: dict[str, tuple[list[dict], list[dict]]] = {s: ([], []) for s in ("train", "val", "test")}
    n_cells, n_images = 0, 0
    per_line: dict[str, list[int]] = {}
    kept: dict[tuple[str, int], tuple[dict, list[np.ndarray]]] = {}
    wanted = {(split, n) for split, n, _ in duplicates}
    bar = tqdm(samples, total=total, desc="sample", unit="img", disable=not progress)
    wells: dict[tuple[str, str], int] = {}
    for i, (name, line, image, polygons) in enumerate(bar):
        point = parse_name(name)
        split = splits[wells.setdefault((line, point.well), len(wells)) % len(splits)]
        path = out / image_dir(split) / line / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_gray(path, image)
        n_images = i + 1
        height, width = image.shape
        entry = {
            "id": n_images,
            "file_name": name,
            "width": width,
            "height": height,
            "original_filename": name.replace("_Phase_", "_Phase_orig_"),
            "url": f"{BASE_URL}/{image_dir(split)}/{line}/{name}",
        }
        imgs, anns = docs[split]
        imgs.append(entry)
        for poly in polygons:
            n_cells += 1
            anns.append(polygon_annotation(n_cells, entry["id"], poly))
        per_line.setdefault(line, []).append(len(polygons))
        if (split, len(imgs) - 1) in wanted:  # the n-th image of its split
            kept[split, len(imgs) - 1] = entry, polygons
    next_ann_id, next_image_id, n_entries = n_cells + 1, n_images + 1, n_images
    for split, n, second in duplicates:
        if (split, n) not in kept:
            continue  # too few images for this duplicate
        entry, polygons = kept[split, n]
        copy_polygons = polygons[:-1] if second == split else polygons
        imgs, anns = docs[second]
        imgs.append({**entry, "id": next_image_id})
        for poly in copy_polygons:
            anns.append(polygon_annotation(next_ann_id, next_image_id, poly))
            next_ann_id += 1
        next_image_id += 1
        n_entries += 1
    for split, (imgs, anns) in docs.items():
        write_coco(out / "annotations" / f"livecell_coco_{split}.json", imgs, anns)
    return {
        "images": n_images,
        "image_entries": n_entries,
        "cells": n_cells,
        "annotations": next_ann_id - 1,
        "cells_per_image": per_line,
    }
