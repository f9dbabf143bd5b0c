"""Benchmark: evaluation time and mask AP, faster-coco-eval (ours) against pycocotools.

Synthetic LIVECell-like data: N images of 704x520 with D ground-truth cells each (polygons)
and D predictions (the cells jittered, some missed, some false), encoded as COCO results.
Times, on the same data:
- matching: `evaluation.detection_metrics` (mask IoU via pycocotools.mask.iou, Hungarian
  one-to-one matching, per cell line too);
- mask AP overall and per cell line, each group evaluated on its own, with LIVECell's
  settings: `evaluation.coco_mask_ap` (faster-coco-eval) against pycocotools' COCOeval
  (evaluate + accumulate per group, the APs read the same way), and the largest difference
  between their APs and PR curves;
- the whole `evaluation.evaluate` (matching + COCO AP overall and per cell line).
Targets: matching <= 2x pycocotools' evaluate; faster-coco-eval's APs equal pycocotools'
(<= 1e-12). pycocotools is a Python loop over IoU thresholds x detections x ground truth per
image, so at LIVECell's density it is slow: --images defaults to a subset, and figures per
image extrapolate to 1,564 images (LIVECell's test set). Prints JSON.

    python bench/evaluate.py [--images 16] [--cells 500]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time

import numpy as np


def synthetic(n_images: int, n_cells: int, seed: int = 0) -> tuple[dict, list[dict]]:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    h, w = 520, 704
    lines = ["A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3"]
    images, anns, results = [], [], []
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    for i in range(n_images):
        name = f"{lines[i % 8]}_Phase_A1_1_00d00h00m_{i}.tif"
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        cy, cx = rng.uniform(8, h - 8, n_cells), rng.uniform(8, w - 8, n_cells)
        r = rng.uniform(6, 14, n_cells)
        for j in range(n_cells):
            poly = np.stack([cx[j] + r[j] * np.cos(angles), cy[j] + r[j] * np.sin(angles)], 1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "segmentation": [poly.ravel().round(2).tolist()],
                    "area": float(np.pi * r[j] ** 2),
                    "bbox": [cx[j] - r[j], cy[j] - r[j], 2 * r[j], 2 * r[j]],
                }
            )
            if rng.random() < 0.1:  # missed cell
                continue
            jitter = poly + rng.normal(0, 1.0, poly.shape)
            (rle,) = mask_utils.frPyObjects([jitter.ravel().tolist()], h, w)
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": 1,
                    "score": float(rng.uniform(0.3, 1)),
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                }
            )
        for _ in range(n_cells // 10):  # false positives
            y, x, rr = rng.uniform(8, h - 8), rng.uniform(8, w - 8), rng.uniform(6, 14)
            poly = np.stack([x + rr * np.cos(angles), y + rr * np.sin(angles)], 1)
            (rle,) = mask_utils.frPyObjects([poly.ravel().tolist()], h, w)
            results.append(
                {
                    "image_id": i + 1,
                    "category_id": 1,
                    "score": float(rng.uniform(0.3, 0.7)),
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                }
            )
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    return gt, results


def pycocotools_ap(gt_doc: dict, results: list[dict], groups: dict[str, list[int]]):
    """The reference: pycocotools' COCOeval on each group's images alone (evaluate then
    accumulate), APs read as `evaluation.ap_at_max_dets` reads them. Returns the groups'
    (APs, PR curve at IoU 0.5) and the seconds `evaluate()` took over all groups."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from livecellseg.evaluation import AREA_RANGES, MAX_DETS, ap_at_max_dets

    out, evaluate_s = {}, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {**gt_doc, "annotations": [dict(a) for a in gt_doc["annotations"]]}
        gt.createIndex()
        dt = gt.loadRes([dict(r) for r in results])
        for group, ids in groups.items():
            ev = COCOeval(gt, dt, iouType="segm")
            ev.params.imgIds = sorted(ids)
            ev.params.maxDets = MAX_DETS
            ev.params.areaRng = AREA_RANGES
            t0 = time.perf_counter()
            ev.evaluate()
            evaluate_s += time.perf_counter() - t0
            ev.accumulate()
            precision = ev.eval["precision"]
            out[group] = (ap_at_max_dets(precision, ev.params.iouThrs), precision[0, :, 0, 0, -1])
    return out, round(evaluate_s, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--cells", type=int, default=500)
    p.add_argument("--target-images", type=int, default=1564, help="extrapolate to this many")
    args = p.parse_args()

    from livecellseg.config import load_params
    from livecellseg.evaluation import coco_mask_ap, detection_metrics, evaluate
    from livecellseg.livecell import cell_line

    gt_doc, results = synthetic(args.images, args.cells)
    out = {
        "benchmark": "evaluate",
        "images": args.images,
        "cells_per_image": args.cells,
        "predictions": len(results),
    }

    t0 = time.perf_counter()
    cfg = load_params()
    thresholds = {"score_thresh": cfg.predict.score_thresh, "iou_thresh": cfg.evaluate.iou_thresh}
    metrics = detection_metrics(gt_doc, results, **thresholds)
    out["matching_s"] = round(time.perf_counter() - t0, 2)

    groups = {"overall": [im["id"] for im in gt_doc["images"]]}
    for im in gt_doc["images"]:
        groups.setdefault(cell_line(im), []).append(im["id"])
    t0 = time.perf_counter()
    reference, out["pycocotools_evaluate_s"] = pycocotools_ap(gt_doc, results, groups)
    out["pycocotools_ap_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    ours = coco_mask_ap(gt_doc, results, groups)
    out["faster_coco_eval_ap_s"] = round(time.perf_counter() - t0, 2)
    out["speedup_ap"] = round(out["pycocotools_ap_s"] / out["faster_coco_eval_ap_s"], 1)
    out["max_abs_diff_ap"] = max(
        abs(ours[g][0][k] - reference[g][0][k]) for g in groups for k in ours[g][0]
    )
    out["max_abs_diff_pr_curve"] = float(
        max(np.abs(ours[g][1] - reference[g][1]).max() for g in groups)
    )

    t0 = time.perf_counter()
    full, _ = evaluate(gt_doc, results, **thresholds)
    out["evaluate_all_s"] = round(time.perf_counter() - t0, 2)

    scale = args.target_images / args.images
    out["ratio_matching_vs_pycocotools"] = round(
        out["matching_s"] / out["pycocotools_evaluate_s"], 3
    )
    out[f"extrapolated_{args.target_images}_images_s"] = {
        k: round(out[k] * scale)
        for k in ("matching_s", "pycocotools_ap_s", "faster_coco_eval_ap_s", "evaluate_all_s")
    }
    out["f1"] = round(metrics["overall"]["f1"], 4)
    out["ap"] = round(full["overall"]["ap"], 4)
    out["ap_per_cell_line"] = {g: round(v[0]["ap"], 4) for g, v in ours.items()}
    out["target_met"] = (
        out["ratio_matching_vs_pycocotools"] <= 2 and out["max_abs_diff_ap"] <= 1e-12
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
