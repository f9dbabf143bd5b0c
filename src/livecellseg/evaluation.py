"""Evaluation of whole-image predictions against COCO ground truth (pure, no torch).

Seed metrics: one-to-one matching on mask IoU (metrics.match_masks) over whole images,
images without cells included, for predictions with score > `score_thresh`: precision,
recall, F1 at IoU `iou_thresh`, mean IoU of matched pairs, counts. COCO mask AP with
LIVECell's settings: maxDets 100/500/2000 (reported at 2000), areas small < 324 px²,
medium 324-961, large > 961. Everything overall and per cell line.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections import defaultdict

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from livecellseg.coco import to_rle
from livecellseg.images import cell_line_of
from livecellseg.metrics import DetectionCounts

MAX_DETS = [100, 500, 2000]
AREA_RANGES = [[0, 1e10], [0, 324], [324, 961], [961, 1e10]]  # all, small, medium, large
AP_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def cell_line(image: dict) -> str:
    return image.get("cell_line") or cell_line_of(image["file_name"])


def detection_metrics(
    gt_doc: dict, results: list[dict], *, score_thresh: float = 0.5, iou_thresh: float = 0.5
) -> dict[str, dict]:
    """Seed metrics overall and per cell line: {"overall": {...}, "<line>": {...}}."""
    gt: dict[int, list[dict]] = defaultdict(list)
    images = {im["id"]: im for im in gt_doc["images"]}
    for ann in gt_doc["annotations"]:
        im = images[ann["image_id"]]
        gt[ann["image_id"]].append(to_rle(ann["segmentation"], im["height"], im["width"]))
    pred: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        if r["score"] > score_thresh:
            pred[r["image_id"]].append(to_rle(r["segmentation"], *r["segmentation"]["size"]))
    groups: dict[str, DetectionCounts] = defaultdict(DetectionCounts)
    for image_id, im in sorted(images.items()):
        for group in ("overall", cell_line(im)):
            groups[group].add(gt[image_id], pred[image_id], iou_thresh)
    return {g: c.summary() for g, c in groups.items()}


def _coco_gt(gt_doc: dict) -> COCO:
    coco = COCO()
    doc = copy.copy(gt_doc)
    doc["annotations"] = [{"iscrowd": 0, **a} for a in gt_doc["annotations"]]
    coco.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_mask_ap(
    gt_doc: dict, results: list[dict], image_ids: list[int] | None = None
) -> tuple[dict[str, float], np.ndarray]:
    """COCO mask AP with LIVECell's settings; also precision at IoU 0.5 over 101 recall points.

    AP values are in [0, 1]; -1 where the images hold no ground truth (pycocotools' convention).
    """
    gt = _coco_gt(gt_doc)
    image_ids = sorted(gt.getImgIds()) if image_ids is None else sorted(image_ids)
    results = [r for r in results if r["image_id"] in set(image_ids)]
    if not results:  # pycocotools cannot load an empty result list: 0 where there are cells
        areas = [a["area"] for a in gt.loadAnns(gt.getAnnIds(imgIds=image_ids))]
        ranges = [AREA_RANGES[0]] * 3 + AREA_RANGES[1:]  # ap, ap50, ap75, then by size
        stats = {
            k: 0.0 if any(lo <= a <= hi for a in areas) else -1.0  # as pycocotools
            for k, (lo, hi) in zip(AP_KEYS, ranges, strict=True)
        }
        return stats, np.full(101, stats["ap"])
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.imgIds = image_ids
        ev.params.maxDets = MAX_DETS
        ev.params.areaRng = AREA_RANGES
        ev.params.areaRngLbl = ["all", "small", "medium", "large"]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()  # stats[0:6]: AP, AP50, AP75, APs, APm, APl, all at maxDets 2000
    stats = {k: float(v) for k, v in zip(AP_KEYS, ev.stats[:6], strict=True)}
    pr = ev.eval["precision"][0, :, 0, 0, -1]  # IoU 0.5, all recall points, area all, 2000 dets
    return stats, pr


def evaluate(
    gt_doc: dict, results: list[dict], *, score_thresh: float = 0.5, iou_thresh: float = 0.5
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """All metrics per group ("overall" and each cell line), and each group's PR curve."""
    metrics = detection_metrics(gt_doc, results, score_thresh=score_thresh, iou_thresh=iou_thresh)
    by_line: dict[str, list[int]] = defaultdict(list)
    for im in gt_doc["images"]:
        by_line[cell_line(im)].append(im["id"])
    curves = {}
    for group in metrics:
        ids = None if group == "overall" else by_line[group]
        ap, curves[group] = coco_mask_ap(gt_doc, results, ids)
        metrics[group] |= ap
    return metrics, curves
