"""Benchmark: evaluation time, the project's matching against pycocotools' own evaluation.

Synthetic LIVECell-like data: N images of 704x520 with D ground-truth cells each (polygons)
and D predictions (the cells jittered, some missed, some false), encoded as COCO results.
Times, on the same data:
- matching: `evaluation.detection_metrics` (mask IoU via pycocotools.mask.iou, Hungarian
  one-to-one matching, per cell line too);
- pycocotools: `COCOeval(segm).evaluate()` with LIVECell's maxDets (its own matching);
- the whole `evaluation.evaluate` (matching + COCO AP overall and per cell line).
Target: matching <= 2x pycocotools' evaluate. pycocotools' evaluate is a Python loop over
IoU thresholds x detections x ground truth per image, so at LIVECell's density it is slow:
--images defaults to a subset, and figures per image extrapolate to 1,500 images. Prints JSON.

    python bench/evaluate.py [--images 40] [--cells 500]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--cells", type=int, default=500)
    p.add_argument("--target-images", type=int, default=1500, help="extrapolate to this many")
    args = p.parse_args()

    from pycocotools.cocoeval import COCOeval

    from livecellseg.config import load_params
    from livecellseg.evaluation import MAX_DETS, _coco_gt, detection_metrics, evaluate

    gt_doc, results = synthetic(args.images, args.cells)
    out = {
        "benchmark": "evaluate",
        "images": args.images,
        "cells_per_image": args.cells,
        "predictions": len(results),
    }

    t0 = time.perf_counter()
    cfg = load_params().evaluate
    thresholds = {"score_thresh": cfg.score_thresh, "iou_thresh": cfg.iou_thresh}
    metrics = detection_metrics(gt_doc, results, **thresholds)
    out["matching_s"] = round(time.perf_counter() - t0, 2)

    gt = _coco_gt(gt_doc)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.maxDets = MAX_DETS
        t0 = time.perf_counter()
        ev.evaluate()
        out["pycocotools_evaluate_s"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    full, _ = evaluate(gt_doc, results, **thresholds)
    out["evaluate_all_s"] = round(time.perf_counter() - t0, 2)

    scale = args.target_images / args.images
    out["ratio_matching_vs_pycocotools"] = round(
        out["matching_s"] / out["pycocotools_evaluate_s"], 3
    )
    out[f"extrapolated_{args.target_images}_images_s"] = {
        k: round(out[k] * scale) for k in ("matching_s", "pycocotools_evaluate_s", "evaluate_all_s")
    }
    out["f1"] = round(metrics["overall"]["f1"], 4)
    out["ap"] = round(full["overall"]["ap"], 4)
    out["target_met"] = out["ratio_matching_vs_pycocotools"] <= 2
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
