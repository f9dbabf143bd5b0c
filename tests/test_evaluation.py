"""Evaluation metrics against hand-computed cases and pycocotools run directly."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from livecellseg.coco import encode_mask
from livecellseg.evaluation import (
    best_threshold,
    coco_mask_ap,
    detection_metrics,
    evaluate,
    threshold_curve,
    threshold_grid,
)

H, W = 100, 120

LIVECELL = {
    "score_thresh": 0.5,
    "iou_thresh": 0.5,
}  # params.yaml's predict.score_thresh, evaluate.iou_thresh


def square(y, x, side, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y : y + side, x : x + side] = True
    return m


def doc(
    images: dict[int, list[np.ndarray]], lines: dict[int, str] | None = None, size=(H, W)
) -> dict:
    lines = lines or {}
    out = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    for image_id, masks in images.items():
        line = lines.get(image_id, "A172")
        out["images"].append(
            {
                "id": image_id,
                "file_name": f"{line}_Phase_A1_1_00d00h00m_{image_id}.tif",
                "width": size[1],
                "height": size[0],
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


def pycocotools_run(gt: dict, results: list[dict], image_ids: list[int]) -> COCOeval:
    """pycocotools itself, LIVECell's settings, on some images: evaluated and accumulated."""
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
    return ev


def by_hand_at_2000(ev: COCOeval) -> list[float]:
    """AP, AP50, AP75, APs, APm, APl from pycocotools' precision array at the last maxDets
    (2000): the mean of the defined (> -1) entries, -1 where none is."""
    precision = ev.eval["precision"][..., -1]  # IoU x recall x category x area

    def mean(p):
        return float(p[p > -1].mean()) if (p > -1).any() else -1.0

    iou = ev.params.iouThrs
    at50, at75 = precision[iou == 0.5], precision[iou == 0.75]
    return [mean(precision[..., 0]), mean(at50[..., 0]), mean(at75[..., 0])] + [
        mean(precision[..., a]) for a in (1, 2, 3)
    ]


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
    metrics, curves = evaluate(gt, results, **LIVECELL)
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
    m = detection_metrics(gt, [result(1, shifted, 0.9)], **LIVECELL)["overall"]
    assert m["miou"] == pytest.approx(300 / 500)
    assert m["tp"] == 1 and m["f1"] == 1.0
    far = square(10, 25, 20)  # overlap 100, union 700: IoU 0.143 < 0.5, no match
    m = detection_metrics(gt, [result(1, far, 0.9)], **LIVECELL)["overall"]
    assert m["tp"] == 0 and m["precision"] == 0 and m["recall"] == 0


def test_duplicates_are_false_positives_and_low_scores_are_ignored():
    cell = square(10, 10, 20)
    gt = doc({1: [cell]})
    results = [result(1, cell, 0.9), result(1, cell, 0.8), result(1, cell, 0.4)]
    m = detection_metrics(gt, results, **LIVECELL)["overall"]
    assert (m["gt"], m["pred"], m["tp"]) == (1, 2, 1)
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["f1"] == pytest.approx(2 / 3)


def test_threshold_curve_is_detection_metrics_at_each_threshold():
    cells = [square(5, 5, 10), square(30, 30, 15), square(60, 70, 20)]
    gt = doc({1: cells, 2: [square(10, 10, 20)]})
    results = [  # a hit at each score, a duplicate at 0.45, a false positive at 0.7
        result(1, cells[0], 0.9),
        result(1, cells[1], 0.55),
        result(1, cells[2], 0.3),
        result(1, cells[2], 0.45),
        result(2, square(60, 60, 20), 0.7),
    ]
    grid = threshold_grid(0.2, 0.5)
    assert grid[0] == 0.2 and grid[-1] == 0.95 and 0.5 in grid and len(grid) == 16
    assert threshold_grid(0.2, 0.52).count(0.52) == 1  # the operating threshold is drawn too
    curve = threshold_curve(gt, results, grid, iou_thresh=0.5)
    for row in curve:
        m = detection_metrics(gt, results, score_thresh=row["score_thresh"], iou_thresh=0.5)
        for key in ("precision", "recall", "f1"):
            assert row[key] == pytest.approx(m["overall"][key], abs=1e-4), (row, key)
    at = {row["score_thresh"]: row for row in curve}
    assert at[0.2]["recall"] == 0.75 and at[0.2]["precision"] == 0.6  # 3 of 4; 3 of 5
    assert at[0.5]["recall"] == 0.5 and at[0.9]["recall"] == 0.0  # "above": 0.9 is out
    best = best_threshold(curve)
    assert best["f1"] == max(row["f1"] for row in curve)
    assert best["score_thresh"] == min(r["score_thresh"] for r in curve if r["f1"] == best["f1"])


def test_an_empty_image_with_one_prediction_is_one_false_positive():
    cell = square(10, 10, 20)
    gt = doc({1: [cell], 2: []})
    m = detection_metrics(gt, [result(1, cell, 0.9), result(2, cell, 0.9)], **LIVECELL)["overall"]
    assert (m["gt"], m["pred"], m["tp"]) == (1, 2, 1)
    assert m["precision"] == 0.5


def test_matching_is_one_to_one_on_mask_iou():
    a, b = square(10, 10, 20), square(10, 26, 20)  # neighbours sharing a border region
    gt = doc({1: [a, b]})
    merged = a | b  # one prediction covering both: matches at most one of them
    m = detection_metrics(gt, [result(1, merged, 0.9)], **LIVECELL)["overall"]
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

    def direct(image_ids):  # under 100 cells per image: summarize()'s stats[0] is right here
        ev = pycocotools_run(gt, results, image_ids)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
        return list(ev.stats[:6])

    # one evaluate, accumulated per group = pycocotools run on each group's images alone
    for group, ids in (("all", [1, 2]), ("one", [1]), ("two", [2])):
        assert list(ours[group][0].values()) == pytest.approx(direct(ids))


def test_no_predictions_at_all():
    gt = doc({1: [square(10, 10, 20)], 2: []})
    metrics, _ = evaluate(gt, [], **LIVECELL)
    assert metrics["overall"]["ap"] == 0.0 and metrics["overall"]["f1"] == 0.0
    assert metrics["overall"]["ap_medium"] == 0.0  # a 400 px² cell
    assert metrics["overall"]["ap_small"] == metrics["overall"]["ap_large"] == -1.0  # none


LIVECELL_SIZE = (520, 704)  # height, width
AP_NAMES = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def grid_cells(n: int, sides: tuple[int, ...], pitch: int) -> list[np.ndarray]:
    """n disjoint squares on a LIVECell-size image, row by row, sides cycling through `sides`."""
    per_row = LIVECELL_SIZE[1] // pitch
    return [
        square((i // per_row) * pitch, (i % per_row) * pitch, sides[i % len(sides)], *LIVECELL_SIZE)
        for i in range(n)
    ]


def test_every_ap_counts_2000_detections_per_image():
    # 500 cells on one image, all found: pycocotools' summarize() reads AP (stats[0]) at
    # maxDets 100 and would give ~0.2 here (100 of 500 cells); LIVECell's AP is at 2000
    cells = grid_cells(500, sides=(12, 20), pitch=24)  # 144 px² small, 400 px² medium
    gt = doc({1: cells}, size=LIVECELL_SIZE)
    results = [result(1, m, 1 - n / 1000) for n, m in enumerate(cells)]  # distinct scores
    stats, pr = coco_mask_ap(gt, results)["overall"]
    assert stats == {
        "ap": 1.0,
        "ap50": 1.0,
        "ap75": 1.0,
        "ap_small": 1.0,
        "ap_medium": 1.0,
        "ap_large": -1.0,  # no cell > 961 px²
    }
    assert np.allclose(pr, 1.0)
    ev = pycocotools_run(gt, results, [1])
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    assert ev.stats[0] < 0.25  # what the old reading of stats[0] reported


def imperfect_case() -> tuple[dict, list[dict]]:
    """Four images, two cell lines, cells of all three sizes, one image over 100 cells: some
    cells missed, some found shifted (IoU from ~0.7 to 1), false positives in empty places
    and on an image without cells; distinct random scores."""
    rng = np.random.default_rng(1)
    sides, pitch = (12, 20, 34), 40  # small, medium, large; 17 x 13 slots
    counts = {1: 150, 2: 30, 3: 120, 4: 0}
    cells = {i: grid_cells(n, sides, pitch) for i, n in counts.items()}
    gt = doc(cells, {3: "BV2", 4: "BV2"}, size=LIVECELL_SIZE)
    masks = []
    for image_id, image_cells in cells.items():
        for n, m in enumerate(image_cells):
            if n % 9 == 4:
                continue  # missed
            masks.append((image_id, np.roll(m, int(rng.integers(0, 6)), axis=1)))
        spare = grid_cells(len(image_cells) + 6, sides, pitch)[len(image_cells) :]
        masks += [(image_id, m) for m in spare[::2]]  # three false positives per image
    scores = rng.permutation(len(masks)) / len(masks) + 0.001
    return gt, [result(i, m, float(s)) for (i, m), s in zip(masks, scores, strict=True)]


def test_ap_equals_pycocotools_precision_at_2000_by_hand():
    gt, results = imperfect_case()
    stats, pr = coco_mask_ap(gt, results)["overall"]
    ev = pycocotools_run(gt, results, [1, 2, 3, 4])
    assert tuple(stats) == AP_NAMES
    assert list(stats.values()) == pytest.approx(by_hand_at_2000(ev))
    assert 0 < stats["ap"] < stats["ap50"] < 1  # a case where the values say something
    assert np.allclose(pr, ev.eval["precision"][0, :, 0, 0, -1])


def test_each_cell_line_equals_its_images_evaluated_alone():
    gt, results = imperfect_case()
    metrics, curves = evaluate(gt, results, **LIVECELL)
    for line, ids in (("overall", [1, 2, 3, 4]), ("A172", [1, 2]), ("BV2", [3, 4])):
        ev = pycocotools_run(gt, results, ids)
        ours = [metrics[line][k] for k in AP_NAMES]
        assert ours == pytest.approx(by_hand_at_2000(ev)), line
        assert np.allclose(curves[line], ev.eval["precision"][0, :, 0, 0, -1]), line


def test_groups_are_not_the_overall_numbers_and_a_group_without_predictions_scores_zero():
    """faster-coco-eval accumulates inside evaluate(): each group must be evaluated on its
    own, or every group would silently get the overall numbers."""
    gt, results = imperfect_case()
    metrics, _ = evaluate(gt, results, **LIVECELL)
    assert metrics["A172"]["ap"] != metrics["overall"]["ap"] != metrics["BV2"]["ap"]
    no_bv2 = [r for r in results if r["image_id"] in (1, 2)]
    metrics, curves = evaluate(gt, no_bv2, **LIVECELL)
    assert metrics["BV2"]["ap"] == metrics["BV2"]["ap50"] == 0.0 and np.all(curves["BV2"] <= 0)
    ev = pycocotools_run(gt, no_bv2, [1, 2])
    assert [metrics["A172"][k] for k in AP_NAMES] == pytest.approx(by_hand_at_2000(ev))


@pytest.mark.parametrize("chunk", [1, 3])
def test_matching_images_in_chunks_changes_nothing(chunk):
    """Images are matched `chunk` at a time (memory), then each group accumulated: the same
    numbers, to the bit, as matching them all at once."""
    gt, results = imperfect_case()
    groups = {"overall": [1, 2, 3, 4], "A172": [1, 2], "BV2": [3, 4], "odd": [3, 1]}
    once = coco_mask_ap(gt, results, groups, chunk=100)
    chunked = coco_mask_ap(gt, results, groups, chunk=chunk)
    for g in groups:
        assert once[g][0] == chunked[g][0] and np.array_equal(once[g][1], chunked[g][1]), g
    ev = pycocotools_run(gt, results, [1, 3])
    assert list(chunked["odd"][0].values()) == pytest.approx(by_hand_at_2000(ev))


def test_recall_by_area_counts_each_cell_in_its_bin():
    """Cells of 81, 144, 289, 625 and 1225 px, one per AREA_BINS bin; the 144-px and the
    625-px cells are found: each bin's recall, the under-200 and LIVECell-small ones."""
    cells = [square(2, 2, 9), square(2, 20, 12), square(2, 40, 17), square(30, 2, 25)]
    cells.append(square(60, 60, 35))
    gt = doc({1: cells, 2: []}, {2: "BV2"})
    results = [result(1, cells[1], 0.9), result(1, cells[3], 0.9), result(1, cells[0], 0.3)]
    m = detection_metrics(gt, results, **LIVECELL)
    assert m["overall"]["gt_by_area"] == {
        "0-100": 1, "100-200": 1, "200-400": 1, "400-800": 1, "800+": 1, "0-200": 2, "small": 3
    }  # fmt: skip
    assert m["overall"]["recall_by_area"] == {
        "0-100": 0.0, "100-200": 1.0, "200-400": 0.0, "400-800": 1.0, "800+": 0.0,
        "0-200": 0.5, "small": pytest.approx(1 / 3, abs=1e-4),
    }  # fmt: skip
    assert m["A172"]["recall_by_area"] == m["overall"]["recall_by_area"]
    assert m["BV2"]["gt_by_area"]["0-100"] == 0 and m["BV2"]["recall_by_area"]["0-100"] == 0.0
