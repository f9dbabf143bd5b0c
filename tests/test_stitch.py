"""Stitching on constructed detections: each cell comes out once, with its full mask."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from livecellseg.stitch import (
    TileDetections,
    mask_nms,
    owned_fraction,
    paste,
    stitch,
    whole_image,
)
from livecellseg.tiling import owned_box, tile_windows

H, W = 520, 704
SEED = {"grid": 7, "window": 3, "min_owned": 0.4, "nms_iou": 0.5}  # the design's numbers


def disc(cy: float, cx: float, r: float, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def box_mask(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def tiles_seeing(cells: list[np.ndarray], scores: list[float] | None = None):
    """What a perfect model sees in each tile: every cell clipped to the tile."""
    scores = scores or [0.9] * len(cells)
    out = []
    for win in tile_windows(H, W, 7, 3):
        masks, s = [], []
        for cell, score in zip(cells, scores, strict=True):
            part = cell[win.y0 : win.y1, win.x0 : win.x1]
            if part.any():
                masks.append(part)
                s.append(score)
        shape = (len(masks), *win.shape)
        out.append(TileDetections(np.array(masks, bool).reshape(shape), np.array(s, np.float32)))
    return out


def decoded(det):
    return [mask_utils.decode(r).astype(bool) for r in det.rles]


@pytest.mark.parametrize(
    "cell",
    [
        disc(74 * 2, 100 * 3, 20),  # on a mini-tile corner: cut by the borders of many tiles
        disc(74 * 3 + 30, 100 * 2, 25),  # on one vertical mini-tile border
        box_mask(150, 230, 180, 330),  # large, spanning 2x3 mini-tiles
        disc(0, 0, 15),  # image corner, owned by the corner tile
        box_mask(500, 520, 680, 704),  # in the remainder strip (bottom-right 20x24 px)
        box_mask(10, 40, 700, 704),  # the 4 px remainder column only
        box_mask(516, 520, 300, 340),  # the bottom rows of the last (76 px) mini-tile row
    ],
)
def test_a_cell_comes_out_once_with_its_full_mask(cell):
    det, counts = stitch(tiles_seeing([cell]), H, W, **SEED)
    assert counts.kept == 1, counts
    (mask,) = decoded(det)
    assert np.array_equal(mask, cell)


def test_many_cells_each_once():
    rng = np.random.default_rng(0)
    cells = [disc(rng.uniform(0, H), rng.uniform(0, W), rng.uniform(6, 30)) for _ in range(40)]
    cells = [c for c in cells if c.any()]
    det, counts = stitch(tiles_seeing(cells), H, W, **SEED)
    got = decoded(det)
    assert counts.kept == len(cells) == len(got)
    for cell in cells:  # every cell recovered exactly (IoU 1 with one output mask)
        assert sum(np.array_equal(cell, g) for g in got) == 1
    assert counts.raw == counts.kept + counts.not_owned + counts.duplicates + counts.empty


def test_cross_tile_nms_removes_a_cell_kept_twice():
    cell = disc(200, 350, 30)
    tiles = tiles_seeing([cell])
    # min_owned 0: every tile that sees any of the cell keeps it; NMS must leave one
    det, counts = stitch(tiles, H, W, grid=7, window=3, min_owned=0.0, nms_iou=0.3)
    assert counts.kept == 1 and counts.duplicates > 0
    assert np.array_equal(decoded(det)[0], cell)  # whole masks score the same; first whole wins


def test_paste_is_exact_for_every_tile_shape():
    for win in tile_windows(H, W, 7, 3):
        local = np.zeros((1, *win.shape), bool)
        local[0, 0, 0] = local[0, -1, -1] = True  # both corners of the tile
        full = mask_utils.decode(paste(local, win, H, W))[..., 0]
        assert full.sum() == 2
        assert full[win.y0, win.x0] and full[win.y1 - 1, win.x1 - 1]


def test_paste_gives_the_same_rle_bytes_as_encoding_a_full_image():
    from livecellseg.tiling import Window

    rng = np.random.default_rng(0)
    for trial in range(300):
        height, width = (int(v) for v in rng.integers(3, 50, 2))
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        masks = rng.random((int(rng.integers(1, 5)), h, w)) < rng.random()
        masks[0] = trial % 3 == 0 if trial % 2 else masks[0]  # empty and full masks too
        full = np.zeros((height, width, len(masks)), np.uint8, order="F")
        full[y0 : y0 + h, x0 : x0 + w] = masks.transpose(1, 2, 0)
        ours = paste(masks, Window(0, 0, y0, y0 + h, x0, x0 + w), height, width)
        assert [r["counts"] for r in ours] == [r["counts"] for r in mask_utils.encode(full)]


def test_owned_fraction_and_ownership_partition():
    windows = tile_windows(H, W, 7, 3)
    owned = np.zeros((H, W), int)
    for win in windows:
        o = owned_box(win, H, W, 7, 3)
        owned[o.y0 : o.y1, o.x0 : o.x1] += 1
        full = np.ones((1, *win.shape), bool)
        frac = owned_fraction(full, win, o)[0]
        assert frac == pytest.approx((o.y1 - o.y0) * (o.x1 - o.x0) / (win.shape[0] * win.shape[1]))
    assert (owned == 1).all()  # each pixel owned by exactly one tile


def test_mask_nms_keeps_the_best_of_overlapping_masks():
    a, b, c = disc(100, 100, 20), disc(102, 101, 20), disc(300, 300, 20)
    rles = mask_utils.encode(np.asfortranarray(np.stack([a, b, c], -1).astype(np.uint8)))
    keep = mask_nms(rles, np.array([0.6, 0.9, 0.5]), 0.5)
    assert keep.tolist() == [1, 2]


def test_whole_image_drops_empty_masks():
    masks = np.stack([disc(50, 50, 10), np.zeros((H, W), bool)])
    det, counts = whole_image(masks, np.array([0.9, 0.8], np.float32))
    assert counts.kept == 1 and counts.empty == 1 and len(det.rles) == 1


def test_wrong_number_of_tiles_is_an_error():
    with pytest.raises(ValueError, match="24 tiles given, the grid has 25"):
        stitch(tiles_seeing([])[:24], H, W, **SEED)


def test_the_owned_share_rule_alone_would_drop_a_cell_on_a_four_box_corner():
    cell = disc(74 * 2, 100 * 3, 20)  # centred where four ownership boxes meet
    shares = [
        owned_fraction(t.masks, win, owned_box(win, H, W, 7, 3))
        for t, win in zip(tiles_seeing([cell]), tile_windows(H, W, 7, 3), strict=True)
        if len(t.scores)
    ]
    assert max(float(s.max()) for s in shares) < 0.4  # so the centre-of-mass rule keeps it


def test_no_detections_anywhere():
    from livecellseg.stitch import whole_image

    det, counts = whole_image(np.zeros((0, H, W), bool), np.zeros(0, np.float32))
    assert det.rles == [] and counts.kept == 0
    empty = [
        TileDetections(np.zeros((0, *w.shape), bool), np.zeros(0)) for w in tile_windows(H, W, 7, 3)
    ]
    det, counts = stitch(empty, H, W, **SEED)
    assert det.rles == [] and counts.raw == counts.kept == 0
