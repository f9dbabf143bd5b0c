"""Decoded cell pixels, outlines and label images agree with the masks they come from."""

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from livecellseg.visualize import cell_pixels, label_image, outline_mask, overlay


def _rles(masks):
    return [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


SHAPE = (30, 40)
MASKS = [_disc(SHAPE, 10, 10, 6), _disc(SHAPE, 12, 16, 6), _disc(SHAPE, 0, 39, 5)]  # 0,1 overlap


def test_cell_pixels_are_the_masks_and_their_inner_boundary():
    cells = cell_pixels(_rles(MASKS), SHAPE)
    for m, idx, edge in zip(MASKS, cells.masks, cells.edges, strict=True):
        np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(m))
        np.testing.assert_array_equal(np.sort(edge), np.flatnonzero(m & ~ndimage.binary_erosion(m)))
    np.testing.assert_array_equal(cells.areas, [m.sum() for m in MASKS])


def test_label_image_higher_score_wins_overlaps_and_subsets_are_numbered_from_1():
    cells = cell_pixels(_rles(MASKS), SHAPE)
    scores = np.array([0.9, 0.6, 0.7])
    labels = label_image(cells, scores)
    assert labels.dtype == np.uint16
    overlap = MASKS[0] & MASKS[1]
    assert overlap.any() and (labels[overlap] == 1).all()  # cell 0 (0.9) beats cell 1 (0.6)
    assert (labels[MASKS[1] & ~MASKS[0]] == 2).all() and (labels[MASKS[2]] == 3).all()
    sub = label_image(cells, scores, np.array([1, 2]))
    assert set(np.unique(sub)) == {0, 1, 2} and (sub[MASKS[1]] == 1).all()


def test_outlines_of_a_subset_and_overlay_colours():
    cells = cell_pixels(_rles(MASKS), SHAPE)
    only_two = outline_mask(cells, np.array([2]))
    assert only_two.sum() == len(cells.edges[2]) and not only_two[MASKS[0]].any()
    rgb = overlay(np.zeros(SHAPE, np.uint8), _rles(MASKS[:1]), _rles(MASKS[2:]))
    assert (rgb[outline_mask(cell_pixels(_rles(MASKS[:1]), SHAPE))] == (255, 0, 255)).all()
    assert (rgb[outline_mask(cell_pixels(_rles(MASKS[2:]), SHAPE))] == (0, 230, 0)).all()


def test_no_cells():
    cells = cell_pixels([], SHAPE)
    assert not outline_mask(cells).any() and not label_image(cells, np.zeros(0)).any()
