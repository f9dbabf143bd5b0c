"""The anchor-fit report: anchors as torchvision makes them, best IoU, shares, fitted sizes."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from livecellseg.anchors import (
    anchor_fit_report,
    anchor_shapes,
    centred_best_iou,
    fit_summary,
    grid_best_iou,
    model_input_scale,
    suggest_sizes,
)

SIZES = ((8,), (16,), (32,), (64,), (128,))
RATIOS = (0.5, 1.0, 2.0)


def test_anchor_shapes_are_torchvisions():
    custom = tuple((s, s * 1.26, s * 1.587) for s in (8, 16, 32, 64, 128))
    for sizes in (SIZES, custom, ((32, 64, 128),) * 5):
        gen = AnchorGenerator(sizes=sizes, aspect_ratios=(RATIOS,) * len(sizes))
        cells = torch.cat(gen.cell_anchors)  # x1, y1, x2, y2 centred on 0
        expected = torch.stack([cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]], 1)
        assert np.array_equal(anchor_shapes(sizes, RATIOS), expected.numpy())


def square_boxes(centres, sides):
    c, h = np.asarray(centres, float), np.asarray(sides, float)[:, None] / 2
    return np.concatenate([c - h, c + h], axis=1)


def test_centred_best_iou_by_hand():
    sizes = ((10.0,), (20.0,))  # with ratio 2: 14x28 and 28x56 as torchvision rounds them
    boxes = square_boxes([[50, 50]] * 3, [10, 20, 5])
    # a 20x20 box around the 10x10 anchor: 100/400; a 5x5 box inside it: 25/100
    assert centred_best_iou(boxes, sizes, (1.0,)) == pytest.approx([1.0, 1.0, 0.25])
    assert centred_best_iou(boxes[1:2], ((10.0,),), (1.0,)) == pytest.approx([0.25])


def test_grid_best_iou_sees_the_stride():
    """A 8x8 anchor every 4 px (P2): a cell on a grid point fits it exactly; one 2 px off
    in x and y (half a stride) overlaps it 6x6 = 36 px: IoU 36 / (64 + 64 - 36)."""
    sizes = ((8.0,), (1000.0,), (1000.0,), (1000.0,), (1000.0,))  # the big ones fit nothing
    boxes = square_boxes([[40, 40], [42, 42]], [8, 8])
    wh = np.array([[300.0, 222.0]] * 2)
    assert grid_best_iou(boxes, wh, sizes, (1.0,)) == pytest.approx([1.0, 36 / 92])
    assert centred_best_iou(boxes, sizes, (1.0,)) == pytest.approx([1.0, 1.0])


def test_grid_anchors_stop_at_the_feature_map():
    """A cell past the padded image's last P2 grid point is only reached from that point."""
    sizes = ((8.0,), (1000.0,), (1000.0,), (1000.0,), (1000.0,))
    boxes = square_boxes([[30, 30]], [8])
    small = np.array([[32.0, 32.0]])  # padded 32x32: P2 points 0..28, the last at 28
    assert grid_best_iou(boxes, small, sizes, (1.0,)) == pytest.approx([36 / 92])


def test_fit_summary_shares_and_median():
    s = fit_summary(np.array([0.9, 0.7, 0.5, 0.2, 0.1]))
    assert s == {"cells": 5, "positive": 0.4, "negative": 0.4, "median_iou": 0.5}
    assert fit_summary(np.zeros(0))["cells"] == 0


def test_suggested_sizes_fit_better_than_anchors_far_too_large():
    rng = np.random.default_rng(0)
    sides = rng.uniform(6, 20, 2000)
    boxes = square_boxes(rng.uniform(20, 200, (2000, 2)), sides)
    wh = np.full((2000, 2), 222.0)
    sizes = suggest_sizes(boxes, wh, (0.5, 1.0, 2.0), (1.0,))
    assert sizes == sorted(sizes) and len(set(sizes)) == 5
    assert sizes == suggest_sizes(boxes, wh, (0.5, 1.0, 2.0), (1.0,))  # deterministic
    fitted = grid_best_iou(boxes, wh, tuple((s,) for s in sizes), (0.5, 1.0, 2.0))
    large = grid_best_iou(boxes, wh, ((32,), (64,), (128,), (256,), (512,)), (0.5, 1.0, 2.0))
    assert np.median(fitted) > np.median(large) + 0.3


def test_report_of_anchors_too_large_and_scaled():
    """Cells of 8-20 px: the design's unscaled anchors (32 px and up) fit none, anchors at
    their scale many; per cell line."""
    rng = np.random.default_rng(1)
    side = rng.uniform(8, 20, 500)
    centres = rng.uniform(20, 200, (500, 2))
    boxes = np.concatenate([centres - side[:, None] / 2, centres + side[:, None] / 2], 1)
    wh = np.full((500, 2), 222.0)
    groups = np.array(["A172", "BV2"] * 250, dtype=object)
    report = anchor_fit_report(
        boxes,
        wh,
        groups,
        {"unscaled": ((32,), (64,), (128,), (256,), (512,)), "scaled": SIZES},
        RATIOS,
        scales={"unscaled": (1.0,), "scaled": (1.0,)},
    )
    assert report["boxes"] == 500 and set(report["unscaled"]["per_cell_line"]) == {"A172", "BV2"}
    assert report["unscaled"]["positive"] == 0 and report["unscaled"]["negative"] > 0.5
    assert report["scaled"]["centred"]["median_iou"] > 0.6
    assert report["scaled"]["positive"] <= report["scaled"]["centred"]["positive"]
    assert report["unscaled"]["per_cell_line"]["BV2"]["cells"] == 250
    assert report["box_side_px"]["p50"] == pytest.approx(np.median(side), abs=0.01)


def test_model_input_scale_is_torchvisions_resize():
    assert model_input_scale(222, 300, 222, 304) == 1.0
    assert model_input_scale(222, 300, 444, 608) == 2.0
    assert model_input_scale(222, 300, 800, 1333) == pytest.approx(800 / 222)
