"""Evaluation metrics against hand-computed cases and pycocotools run directly."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from livecellseg.coco import encode_mask
from livecellseg.evaluation import coco_mask_ap, detection_metrics, evaluate

H, W = 100, 120


def square(y, x, side, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y : y + side, x : x + side] = True
    return m


def doc(images: dict[int, list[np.ndarray]], lines: dict[int, str] | None = None) -> dict:
    lines = lines or {}
    out = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    for image_id, masks in images.items():
        line = lines.get(image_id, "A172")
        out["images"].append(
            {
                "id": image_id,
                "file_name": f"{line}_Phase_A1_1_00d00h00m_{image_id}.tif",
                "width": W,
                "height": H,
                "cell_line": line,
            }
        )
        for m in masks:
            ys, xs = np.nonzero(m)
            out["annotations"].append(
                {
                    "id": len(out["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": encode_mask(m),
                    "area": int(m.sum()),
                    "bbox": [
                        int(xs.min()),
                        int(ys.min()),
                        int(np.ptp(xs)) + 1,
                        int(np.ptp(ys)) + 1,
                    ],
                    "iscrowd": 0,
                }
            )
    return out


def result(image_id, mask, score):
    return {
        "image_id": image_id,
        "category_id": 1,
        "segmentation": encode_mask(mask),
        "score": score,
    }


# one cell of each COCO size class: small (< 324 px²), medium (324-961), large (> 961)
CELLS = [square(5, 5, 10), square(30, 30, 25), square(60, 70, 35)]


def test_perfect_predictions_score_one_everywhere():
    gt = doc({1: CELLS, 2: CELLS[:1]}, {2: "BV2"})
    results = [result(1, m, 0.9) for m in CELLS] + [result(2, CELLS[0], 0.9)]
    metrics, curves = evaluate(gt, results)
    for group in ("overall", "A172"):
        m = metrics[group]
        for key in ("precision", "recall", "f1", "miou", "ap", "ap50", "ap75"):
            assert m[key] == pytest.approx(1.0), (group, key)
        for key in ("ap_small", "ap_medium", "ap_large"):
            assert m[key] == pytest.approx(1.0), (group, key)
    assert metrics["overall"]["tp"] == metrics["overall"]["gt"] == 4
    assert metrics["BV2"]["ap_large"] == -1  # no large cell there: undefined, as pycocotools says
    assert np.allclose(curves["overall"], 1.0)


def test_a_shifted_mask_gives_the_hand_computed_iou():
    gt = doc({1: [square(10, 10, 20)]})
    shifted = square(10, 15, 20)  # 20x15 overlap = 300 px; union 400 + 400 - 300 = 500
    m = detection_metrics(gt, [result(1, shifted, 0.9)])["overall"]
    assert m["miou"] == pytest.approx(300 / 500)
    assert m["tp"] == 1 and m["f1"] == 1.0
    far = square(10, 25, 20)  # overlap 100, union 700: IoU 0.143 < 0.5, no match
    m = detection_metrics(gt, [result(1, far, 0.9)])["overall"]
    assert m["tp"] == 0 and m["precision"] == 0 and m["recall"] == 0


def test_duplicates_are_false_positives_and_low_scores_are_ignored():
    cell = square(10, 10, 20)
    gt = doc({1: [cell]})
    results = [result(1, cell, 0.9), result(1, cell, 0.8), result(1, cell, 0.4)]
    m = detection_metrics(gt, results, score_thresh=0.5)["overall"]
    assert (m["gt"], m["pred"], m["tp"]) == (1, 2, 1)
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["f1"] == pytest.approx(2 / 3)


def test_an_empty_image_with_one_prediction_is_one_false_positive():
    cell = square(10, 10, 20)
    gt = doc({1: [cell], 2: []})
    m = detection_metrics(gt, [result(1, cell, 0.9), result(2, cell, 0.9)])["overall"]
    assert (m["gt"], m["pred"], m["tp"]) == (1, 2, 1)
    assert m["precision"] == 0.5


def test_matching_is_one_to_one_on_mask_iou():
    a, b = square(10, 10, 20), square(10, 26, 20)  # neighbours sharing a border region
    gt = doc({1: [a, b]})
    merged = a | b  # one prediction covering both: matches at most one of them
    m = detection_metrics(gt, [result(1, merged, 0.9)])["overall"]
    assert m["tp"] <= 1


def test_ap_of_a_hand_computed_case():
    cells = [square(10, 10, 20), square(50, 50, 20)]
    gt = doc({1: cells})
    results = [result(1, cells[0], 0.9), result(1, square(10, 80, 20), 0.8)]  # 1 TP, then 1 FP
    stats, pr = coco_mask_ap(gt, results)["overall"]
    # recall reaches 0.5 at precision 1, never more: interpolated precision is 1 on the
    # 51 recall points 0.00..0.50 and 0 on the other 50
    assert stats["ap50"] == pytest.approx(51 / 101)
    assert stats["ap"] == pytest.approx(51 / 101)  # the TP is exact: same at every IoU
    assert np.allclose(pr[:51], 1.0) and np.allclose(pr[51:], 0.0)


def test_ap_matches_pycocotools_run_directly():
    rng = np.random.default_rng(0)
    cells = [
        square(int(y), int(x), int(s)) for y, x, s in rng.integers([0, 0, 8], [60, 80, 40], (12, 3))
    ]
    gt = doc({1: cells[:6], 2: cells[6:]})
    results = []
    for image_id, group in ((1, cells[:6]), (2, cells[6:])):
        for m in group:
            shift = int(rng.integers(0, 6))
            results.append(result(image_id, np.roll(m, shift, axis=1), float(rng.uniform(0.3, 1))))
    ours = coco_mask_ap(gt, results, {"all": [1, 2], "one": [1], "two": [2]})

    def direct(image_ids):
        coco = COCO()
        coco.dataset = gt
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
            mine = copy.deepcopy([r for r in results if r["image_id"] in image_ids])
            ev = COCOeval(coco, coco.loadRes(mine), iouType="segm")
            ev.params.imgIds = image_ids
            ev.params.maxDets = [100, 500, 2000]
            ev.params.areaRng = [[0, 1e10], [0, 324], [324, 961], [961, 1e10]]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return list(ev.stats[:6])

    # one evaluate, accumulated per group = pycocotools run on each group's images alone
    for group, ids in (("all", [1, 2]), ("one", [1]), ("two", [2])):
        assert list(ours[group][0].values()) == pytest.approx(direct(ids))


def test_no_predictions_at_all():
    gt = doc({1: [square(10, 10, 20)], 2: []})
    metrics, _ = evaluate(gt, [])
    assert metrics["overall"]["ap"] == 0.0 and metrics["overall"]["f1"] == 0.0
    assert metrics["overall"]["ap_medium"] == 0.0  # a 400 px² cell
    assert metrics["overall"]["ap_small"] == metrics["overall"]["ap_large"] == -1.0  # none
