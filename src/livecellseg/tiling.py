"""Tiles and ownership: the 7x7 mini-tile grid, the 3x3 sliding window, and instance clipping.

Pure functions of array shapes and numpy masks. The grid is derived from the image size;
the last mini-tile row/column absorbs the remainder (704 = 6x100 + 104, 520 = 6x74 + 76),
so every pixel lies in exactly one mini-tile and in at least one tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """Tile (row, col) of the window grid and its pixel box [y0, y1) x [x0, x1)."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def grid_edges(length: int, grid: int) -> np.ndarray:
    """grid + 1 mini-tile edges along one axis; the last mini-tile takes the remainder."""
    if length < grid:
        raise ValueError(f"an axis of {length} px cannot hold {grid} mini-tiles")
    edges = np.arange(grid + 1) * (length // grid)
    edges[-1] = length
    return edges


def tile_windows(height: int, width: int, grid: int, window: int) -> list[Window]:
    """The (grid - window + 1)^2 tiles, row-major; tile (r, c) spans mini-tiles r..r+window-1."""
    ey, ex = grid_edges(height, grid), grid_edges(width, grid)
    n = grid - window + 1
    return [
        Window(r, c, int(ey[r]), int(ey[r + window]), int(ex[c]), int(ex[c + window]))
        for r in range(n)
        for c in range(n)
    ]


def owner(index: int, grid: int, window: int) -> int:
    """The tile row (or column) that owns mini-tile row (or column) `index`.

    Each tile owns its centre mini-tile; border tiles also own the image edge.
    """
    return min(max(index - window // 2, 0), grid - window)


def owned_box(win: Window, height: int, width: int, grid: int, window: int) -> Window:
    """The pixel box owned by tile `win` (ownership regions are rectangles)."""
    ey, ex = grid_edges(height, grid), grid_edges(width, grid)
    rows = [i for i in range(grid) if owner(i, grid, window) == win.row]
    cols = [i for i in range(grid) if owner(i, grid, window) == win.col]
    return Window(
        win.row,
        win.col,
        int(ey[rows[0]]),
        int(ey[rows[-1] + 1]),
        int(ex[cols[0]]),
        int(ex[cols[-1] + 1]),
    )


def ownership_map(height: int, width: int, grid: int, window: int) -> np.ndarray:
    """(H, W) int array: the index (row-major in tile_windows) of the tile owning each pixel."""
    n = grid - window + 1
    ey, ex = grid_edges(height, grid), grid_edges(width, grid)
    row_owner = np.repeat([owner(i, grid, window) for i in range(grid)], np.diff(ey))
    col_owner = np.repeat([owner(i, grid, window) for i in range(grid)], np.diff(ex))
    return row_owner[:, None] * n + col_owner[None, :]


@dataclass(frozen=True)
class ClippedInstance:
    """An instance as seen by one tile: its mask in tile coordinates and how much is inside.

    Only the part inside the tile is stored (a crop and its corner); `mask` builds the
    tile-sized mask when asked, so a dense image's ~9,000 (cell, tile) pairs do not hold
    ~9,000 tile-sized masks at once.
    """

    source: int  # index of the instance in the input list
    part: np.ndarray  # bool, the instance's pixels inside the tile, cropped to their box
    corner: tuple[int, int]  # (y, x) of `part` in tile coordinates
    shape: tuple[int, int]  # the tile's (height, width)
    area: int  # pixels inside the tile
    clipped: bool  # part of the instance lies outside the tile

    @property
    def mask(self) -> np.ndarray:
        """bool, tile-sized."""
        out = np.zeros(self.shape, bool)
        y, x = self.corner
        out[y : y + self.part.shape[0], x : x + self.part.shape[1]] = self.part
        return out


@dataclass
class TileCounts:
    instances: int = 0  # (instance, tile) pairs kept
    clipped: int = 0  # kept pairs whose instance is cut by the tile border
    dropped: int = 0  # pairs cut below min_visible (the instance is mostly in other tiles)
    lost: int = 0  # instances kept by no tile at all


def clip_instances(
    masks: list[np.ndarray], boxes: list[tuple[int, int]], windows: list[Window], min_visible: float
) -> tuple[list[list[ClippedInstance]], TileCounts]:
    """Clip instances to every window by mask intersection (true geometry, no vertex clamping).

    masks[i] is instance i's bool mask cropped to its bounding box, whose top-left corner
    in image pixels is boxes[i] = (y, x). A clipped instance is kept in a tile when at least
    `min_visible` of its area lies inside; its area is then the clipped mask area.
    """
    per_tile: list[list[ClippedInstance]] = [[] for _ in windows]
    counts = TileCounts()
    for i, (mask, (by, bx)) in enumerate(zip(masks, boxes, strict=True)):
        total = int(mask.sum())
        if total == 0:
            continue
        kept_somewhere = False
        for t, w in enumerate(windows):
            y0, y1 = max(w.y0, by), min(w.y1, by + mask.shape[0])
            x0, x1 = max(w.x0, bx), min(w.x1, bx + mask.shape[1])
            if y0 >= y1 or x0 >= x1:
                continue
            part = mask[y0 - by : y1 - by, x0 - bx : x1 - bx]
            inside = int(part.sum())
            if inside == 0:
                continue
            if inside < min_visible * total:
                counts.dropped += 1
                continue
            corner = (y0 - w.y0, x0 - w.x0)
            per_tile[t].append(ClippedInstance(i, part, corner, w.shape, inside, inside < total))
            counts.instances += 1
            counts.clipped += inside < total
            kept_somewhere = True
        counts.lost += not kept_somewhere
    return per_tile, counts
