"""Correcting a label image by hand: deleting, adding, drawing, keeping (correct.py)."""

import numpy as np
import pytest
import tifffile

from livecellseg.correct import (
    POINT_COLOUR,
    Corrections,
    add_cell,
    delete_cell,
    draw,
    relabel,
)
from livecellseg.errors import LivecellsegError
from livecellseg.visualize import PRED_COLOUR


def two_cells() -> np.ndarray:
    lab = np.zeros((40, 60), np.uint16)
    lab[5:15, 5:15] = 1
    lab[20:30, 30:50] = 4
    return lab


def test_a_click_inside_a_cell_deletes_it_and_nothing_else():
    lab = two_cells()
    out, value = delete_cell(lab, x=35.7, y=25.2)  # (x, y): column 35, row 25
    assert value == 4 and not (out == 4).any()
    assert np.array_equal(out == 1, lab == 1)
    assert (lab == 4).any()  # the input is left as it was (undo keeps it)


def test_a_click_on_background_or_outside_says_what_to_do():
    with pytest.raises(LivecellsegError, match=r"no cell at \(0, 0\): click inside an outline"):
        delete_cell(two_cells(), 0, 0)
    with pytest.raises(LivecellsegError, match="outside the 60x40 image"):
        delete_cell(two_cells(), 60, 3)


def test_a_closed_outline_becomes_a_new_cell_over_what_it_covers():
    lab = two_cells()
    square = [(2, 20), (12, 20), (12, 30), (2, 30)]  # x, y
    out, value = add_cell(lab, square)
    assert value == 5
    assert (out[20:31, 2:13] == 5).all()  # inside and on the outline
    assert (out == 5).sum() == 11 * 11
    over, _ = add_cell(lab, [(10, 10), (20, 10), (20, 20), (10, 20)])  # over cell 1's corner
    assert (over[10:15, 10:15] == 5).all() and (over == 1).sum() == 100 - 25


def test_an_outline_of_fewer_than_three_points_or_pixels_is_refused():
    with pytest.raises(LivecellsegError, match="needs 3 points or more, 2 given"):
        add_cell(two_cells(), [(1, 1), (5, 5)])
    with pytest.raises(LivecellsegError, match="covers 1 px"):
        add_cell(two_cells(), [(1, 1), (1, 1), (1, 1)])


def test_relabel_numbers_cells_one_to_n():
    out = relabel(two_cells())
    assert out.dtype == np.uint16 and sorted(np.unique(out)) == [0, 1, 2]
    assert np.array_equal(out > 0, two_cells() > 0)


def test_draw_outlines_cells_and_the_open_outline():
    image = np.full((40, 60), 100, np.uint8)
    rgb = draw(image, two_cells(), [(40, 5), (55, 5), (55, 15)])
    assert (rgb[5, 5] == PRED_COLOUR).all() and (rgb[10, 10] == 100).all()  # edge, inside
    assert (rgb[5, 47] == POINT_COLOUR).all()  # on the first segment
    assert (rgb[10, 55] == POINT_COLOUR).all()  # on the second
    assert (rgb[10, 47] == 100).all()  # not closed: no segment back to the first point


def test_corrections_keep_pairs_finetune_reads(tmp_path):
    from livecellseg.finetune import pair_corrections

    kept = Corrections(tmp_path / "c")
    image = np.full((40, 60), 90, np.uint8)
    path = kept.save("my image.png", image, two_cells())
    assert path == tmp_path / "c" / "labels" / "my_image_labels.tif"
    assert tifffile.imread(path).max() == 2
    kept.save("my image.png", image, two_cells())  # the same name again: replaced
    (c,) = kept.list()
    (paired,) = pair_corrections([c.image], [c.labels])
    assert paired == c
    with pytest.raises(LivecellsegError, match="no cell is labelled"):
        kept.save("other.tif", image, np.zeros_like(two_cells()))
    with pytest.raises(LivecellsegError, match="start the correction again"):
        kept.save("other.tif", image[:10], two_cells())
    assert len(kept.list()) == 1
