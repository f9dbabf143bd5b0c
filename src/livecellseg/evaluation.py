"""Evaluation of whole-image predictions against COCO ground truth (pure, no torch).

Seed metrics: one-to-one matching on mask IoU (metrics.match_masks) over whole images,
images without cells included, for predictions with score > `score_thresh`: precision,
recall, F1 at IoU `iou_thresh`, mean IoU of matched pairs, counts. COCO mask AP with
LIVECell's settings: maxDets 100/500/2000, every AP (AP, AP50, AP75, APs, APm, APl) at
2000, areas small < 324 px², medium 324-961, large > 961. Everything overall and per cell
line. And the seed metrics against the score threshold (`threshold_curve`), from which a
user picks the operating threshold.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from livecellseg.coco import iter_annotations, read_header, rle_areas, to_rle
from livecellseg.livecell import cell_line
from livecellseg.metrics import DetectionCounts, RecallByArea, match_pairs

MAX_DETS = [100, 500, 2000]
AREA_RANGES = [[0, 1e10], [0, 324], [324, 961], [961, 1e10]]  # all, small, medium, large
AP_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def detection_metrics(
    gt_doc: dict, results: list[dict], *, score_thresh: float, iou_thresh: float
) -> dict[str, dict]:
    """Seed metrics overall and per cell line: {"overall": {...}, "<line>": {...}}, with
    recall by ground-truth mask area (metrics.RecallByArea) in each."""
    images = {im["id"]: im for im in gt_doc["images"]}
    gt, scored = rles_by_image(gt_doc, results)
    pred = {i: [rle for score, rle in dets if score > score_thresh] for i, dets in scored.items()}
    groups: dict[str, DetectionCounts] = defaultdict(DetectionCounts)
    by_area: dict[str, RecallByArea] = defaultdict(RecallByArea)
    for image_id, im in sorted(images.items()):
        # once per image
        kept = pred.get(image_id, [])
        matched_gt, ious = match_pairs(gt[image_id], kept, iou_thresh)
        areas = rle_areas(gt[image_id])
        for group in ("overall", cell_line(im)):
            groups[group].add_matched(len(gt[image_id]), len(kept), ious)
            by_area[group].add(areas, matched_gt)
    return {g: c.summary() | by_area[g].summary() for g, c in groups.items()}


def rles_by_image(
    gt_doc: dict, results: list[dict]
) -> tuple[dict[int, list[dict]], dict[int, list[tuple[float, dict]]]]:
    """Per image id: the ground-truth masks as RLEs, and every prediction as (score, RLE)."""
    images = {im["id"]: im for im in gt_doc["images"]}
    gt: dict[int, list[dict]] = defaultdict(list)
    for ann in gt_doc["annotations"]:
        im = images[ann["image_id"]]
        gt[ann["image_id"]].append(to_rle(ann["segmentation"], im["height"], im["width"]))
    pred: dict[int, list[tuple[float, dict]]] = defaultdict(list)
    for r in results:
        rle = to_rle(r["segmentation"], *r["segmentation"]["size"])
        pred[r["image_id"]].append((r["score"], rle))
    return gt, pred


def threshold_grid(min_score: float, operating: float, step: float = 0.05) -> list[float]:
    """Score thresholds to draw P/R/F1 at: from `min_score` (below it no detection was kept)
    to 0.95 by `step`, and the operating threshold itself."""
    grid = np.round(np.arange(0, 1 - step / 2, step), 4)
    return sorted({float(t) for t in grid if t >= min_score} | {operating})


def threshold_curve(
    gt_doc: dict, results: list[dict], thresholds: list[float], *, iou_thresh: float
) -> list[dict]:
    """Precision, recall and F1 at each score threshold, matched as detection_metrics
    matches them (one-to-one, each threshold on its own), over all images."""
    gt, pred = rles_by_image(gt_doc, results)
    counts = {t: DetectionCounts() for t in thresholds}
    for image_id in sorted(im["id"] for im in gt_doc["images"]):
        for t, c in counts.items():
            kept = [rle for score, rle in pred[image_id] if score > t]
            matched_gt, ious = match_pairs(gt[image_id], kept, iou_thresh)
            c.add_matched(len(gt[image_id]), len(kept), ious)
    rows = []
    for t, c in counts.items():
        m = c.summary()
        rows.append(
            {"score_thresh": t} | {k: round(float(m[k]), 4) for k in ("precision", "recall", "f1")}
        )
    return rows


def best_threshold(curve: list[dict]) -> dict:
    """The row of the threshold curve with the highest F1 (the lowest such threshold)."""
    return max(curve, key=lambda row: (row["f1"], -row["score_thresh"]))


def load_as_rle(path: str | Path) -> dict[str, Any]:
    """A ground-truth COCO file with every segmentation as RLE (str counts), streamed: its
    polygons are never all in memory (LIVECell's test set: ~1.1 GB as Python lists, a
    fourth of that as RLEs)."""
    path = Path(path)
    images, categories, form = read_header(path)
    sizes = {img["id"]: (img["height"], img["width"]) for img in images}
    annotations = []
    for ann in iter_annotations(path, form):
        rle = to_rle(ann["segmentation"], *sizes[ann["image_id"]])
        counts = rle["counts"]
        ann["segmentation"] = {
            "size": list(rle["size"]),
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
        }
        annotations.append(ann)
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_gt(gt_doc: dict) -> COCO:
    coco = COCO()
    doc = copy.copy(gt_doc)
    doc["annotations"] = [{"iscrowd": 0, **a} for a in gt_doc["annotations"]]
    coco.dataset = doc
    coco.createIndex()
    return coco


def coco_mask_ap(
    gt_doc: dict,
    results: list[dict],
    groups: dict[str, list[int]] | None = None,
    *,
    chunk: int = 100,
) -> dict[str, tuple[dict[str, float], np.ndarray]]:
    """COCO mask AP with LIVECell's settings for groups of images (default: all, as
    "overall"); per group the AP values (all at maxDets 2000, `ap_at_max_dets`) and
    precision at IoU 0.5 over 101 recall points.

    faster-coco-eval (C++; equal to pycocotools on every AP, see tests) matches the images
    `chunk` at a time, keeping only each image's matching result (its mask IoU matrices,
    1.6 GB for LIVECell's test set, are freed with the chunk); each group is then
    accumulated from its own images' results, exactly as if it were evaluated alone (tested
    against pycocotools per group). AP values are in [0, 1]; -1 where the images hold no
    ground truth of that size (pycocotools' convention).
    """
    gt = _coco_gt(gt_doc)
    groups = groups or {"overall": sorted(gt.getImgIds())}
    dt = gt.loadRes([dict(r) for r in results])  # loadRes adds area/bbox/id to its dicts
    image_ids = sorted({i for ids in groups.values() for i in ids})
    matched: dict = {}  # (category index, area index, image id) -> its C++ ImageEvaluation
    params = None
    for start in range(0, len(image_ids), chunk):
        ev = _cocoeval(gt, dt, image_ids[start : start + chunk])
        ev.evaluate()  # separate_eval: per-image results, accumulated below
        params = ev._paramsEval
        n_cats, n_areas, n_images = len(params.catIds), len(params.areaRng), len(params.imgIds)
        for k in range(n_cats):
            for a in range(n_areas):
                for n, image_id in enumerate(params.imgIds):
                    matched[k, a, image_id] = ev._evalImgs_cpp[(k * n_areas + a) * n_images + n]
    out = {}
    for group, ids in groups.items():
        ids = sorted(set(ids))
        acc = _cocoeval(gt, dt, ids)
        acc._paramsEval = copy.deepcopy(params)
        acc._paramsEval.imgIds = acc.params.imgIds = ids
        # laid out category x area x image, as faster-coco-eval's accumulate reads it
        acc._evalImgs_cpp = [
            matched[k, a, i]
            for k in range(len(params.catIds))
            for a in range(len(params.areaRng))
            for i in ids
        ]
        acc.accumulate()
        precision = acc.eval["precision"]
        # IoU 0.5, all recall points, area all, 2000 detections
        out[group] = (ap_at_max_dets(precision, params.iouThrs), precision[0, :, 0, 0, -1])
    return out


def _cocoeval(gt: COCO, dt: COCO, image_ids: list[int]) -> COCOeval_faster:
    ev = COCOeval_faster(gt, dt, iouType="segm", print_function=_quiet, separate_eval=True)
    ev.params.imgIds = image_ids
    ev.params.maxDets = MAX_DETS
    ev.params.areaRng = AREA_RANGES
    ev.params.areaRngLbl = ["all", "small", "medium", "large"]
    return ev


def _quiet(*_args, **_kwargs) -> None:
    """faster-coco-eval's progress lines, not printed."""


def ap_at_max_dets(precision: np.ndarray, iou_thrs: np.ndarray) -> dict[str, float]:
    """AP, AP50, AP75, APs, APm, APl at the last maxDets, from pycocotools' accumulated
    precision (IoU x recall x category x area x maxDets; areas in `AREA_RANGES` order).

    Not `summarize()`: it reads AP (stats[0]) at maxDets 100 whatever `params.maxDets` says,
    and LIVECell reports every AP at 2000. Each value is the mean of the entries > -1 (-1
    where there are none), as pycocotools' `_summarize` computes it.
    """

    def mean_defined(p: np.ndarray) -> float:
        defined = p[p > -1]
        return float(defined.mean()) if defined.size else -1.0

    at_max = precision[..., -1]  # IoU x recall x category x area
    t50, t75 = (int(np.flatnonzero(np.isclose(iou_thrs, t))[0]) for t in (0.5, 0.75))
    all_areas = at_max[..., 0]
    selections = (all_areas, all_areas[t50], all_areas[t75], *np.moveaxis(at_max[..., 1:], -1, 0))
    return {k: mean_defined(p) for k, p in zip(AP_KEYS, selections, strict=True)}


def evaluate(
    gt_doc: dict, results: list[dict], *, score_thresh: float, iou_thresh: float
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """All metrics per group ("overall" and each cell line), and each group's PR curve."""
    metrics = detection_metrics(gt_doc, results, score_thresh=score_thresh, iou_thresh=iou_thresh)
    groups: dict[str, list[int]] = {"overall": [im["id"] for im in gt_doc["images"]]}
    for im in gt_doc["images"]:
        groups.setdefault(cell_line(im), []).append(im["id"])
    curves = {}
    for group, (ap, curve) in coco_mask_ap(gt_doc, results, groups).items():
        metrics[group] |= ap
        curves[group] = curve
    return metrics, curves
