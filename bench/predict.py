"""Benchmark: stitched prediction, before and after the ownership filter, against whole-image
prediction and against SAHI (the sliced-inference library people use), side by side.

On the test split's images (default: all), each configuration in a fresh process, same
model, same images; each writes COCO results, which are scored here as the `evaluate` stage
scores them (F1 at IoU 0.5 above predict.score_thresh, COCO mask AP):
- before: ours stitched with every proposal through the heads (`Predictor.owned_only` off,
  as before the ownership filter);
- stitched: ours stitched, the default (proposals and detections that cannot reach their
  tile's owned box skip the box and mask heads);
- whole: ours, one pass on the whole image;
- bf16: ours stitched under bfloat16 autocast, forced (where the CPU lacks native bf16,
  oneDNN emulates it: the speed is then not what a bf16 CPU gets, the accuracy is);
- sahi: SAHI 0.12.8 (bench extra) with the same model on the same 25 tiles, each merge
  setting applied to the same slice predictions (bench/sahi_peer.py): its default GREEDYNMM
  and NMM, NMS, each at IOS and IOU 0.5. Seconds per image = slicing and prediction +
  that merge + rasterising its polygons to image masks.
Targets: stitched >= 2x faster than before at equal accuracy (same cell count +-1%, F1 and
AP within 0.005) and >= 2x faster than SAHI at better F1 and AP. Prints JSON.

    PYTHONPATH=src python bench/predict.py [--model models/custom.pt] [--images 0]
        [--configs before stitched whole bf16 sahi] [--device auto] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("before", "stitched", "whole", "bf16", "sahi")
SAHI_MERGES = [(t, m) for t in ("GREEDYNMM", "NMM", "NMS") for m in ("IOS", "IOU")]


def test_images(args) -> list[dict]:
    images = json.loads(args.split.read_text())["images"]
    return images[: args.images] if args.images else images


def run_one(config: str, args) -> dict:
    """Predict the images with one configuration; write COCO results per setting."""
    from livecellseg.images import read_gray
    from livecellseg.predict import Predictor, to_coco_results
    from livecellseg.runtime import peak_memory_bytes, pick_device
    from livecellseg.stitch import ImageDetections

    device = pick_device(args.device)
    predictor, _ = Predictor.from_checkpoint(args.model, device)
    if config == "before":
        predictor.owned_only = False
    if config == "bf16":
        predictor.cpu_bf16 = True
    images = test_images(args)
    pixels = [read_gray(args.image_dir / im["file_name"]) for im in images]
    predictor(pixels[0][:200, :300], "whole")  # warm-up (allocator, lazy inits)
    results: dict[str, list] = {}
    seconds: dict[str, float] = {}
    counts: dict[str, int] = {}
    if config == "sahi":
        from sahi_peer import LivecellTorchVision, merge, slice_predictions

        from livecellseg.tiling import tile_windows

        s = predictor.settings.stitch
        wrapped = LivecellTorchVision.of(predictor)
        for im, image in zip(images, pixels, strict=True):
            t0 = time.perf_counter()
            objects = slice_predictions(
                wrapped, image, tile_windows(*image.shape, s.grid, s.window)
            )
            sliced = time.perf_counter() - t0
            for kind, metric in SAHI_MERGES:
                name = f"sahi_{kind}_{metric}".lower()
                mine = copy.deepcopy(objects)  # SAHI's merge writes into its input list
                t0 = time.perf_counter()
                rles, scores, _ = merge(mine, kind, metric, 0.5)
                seconds[name] = seconds.get(name, 0.0) + sliced + time.perf_counter() - t0
                det = ImageDetections(rles, scores)
                results.setdefault(name, []).extend(to_coco_results(im["id"], det))
        counts["dropped_no_polygon"] = wrapped.dropped_no_polygon
    else:
        mode = "whole" if config == "whole" else "stitched"
        t0 = time.perf_counter()
        for im, image in zip(images, pixels, strict=True):
            det, c = predictor(image, mode)
            results.setdefault(config, []).extend(to_coco_results(im["id"], det))
            for k, v in vars(c).items():
                counts[k] = counts.get(k, 0) + v
        seconds[config] = time.perf_counter() - t0
    for name, res in results.items():
        (args.work / f"{name}.json").write_text(json.dumps(res))
    return {
        "seconds": seconds,
        "counts": counts,
        "peak_memory_mb": round(peak_memory_bytes(device) / 2**20),
    }


def score(name: str, args, gt: dict, seconds: float, n: int) -> dict:
    from livecellseg.config import load_params
    from livecellseg.evaluation import evaluate

    cfg = load_params(Path("params.yaml"))
    results = json.loads((args.work / f"{name}.json").read_text())
    metrics, _ = evaluate(
        gt, results, score_thresh=cfg.predict.score_thresh, iou_thresh=cfg.evaluate.iou_thresh
    )
    m = metrics["overall"]
    return {
        "config": name,
        "s_per_image": round(seconds / n, 2),
        "images_per_s": round(n / seconds, 4),
        "cells": m["pred"],
        **{k: round(m[k], 4) for k in ("precision", "recall", "f1", "miou", "ap", "ap50")},
    }


def same_cells(args, a: str, b: str, score_thresh: float) -> dict:
    """How many of `a`'s cells (above the score threshold) `b` has too, by mask IoU."""
    from pycocotools import mask as mask_utils

    def by_image(name):
        out: dict[int, list] = {}
        for r in json.loads((args.work / f"{name}.json").read_text()):
            if r["score"] > score_thresh:
                rle = {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"]}
                out.setdefault(r["image_id"], []).append(rle)
        return out

    ra, rb = by_image(a), by_image(b)
    identical = close = total = 0
    for image_id, masks in ra.items():
        other = rb.get(image_id, [])
        total += len(masks)
        if not other:
            continue
        best = mask_utils.iou(masks, other, [0] * len(other)).max(1)
        identical += int((best >= 1.0 - 1e-9).sum())
        close += int((best > 0.9).sum())
    return {"cells": total, "identical": identical, "iou_above_0.9": close}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/custom.pt"))
    p.add_argument("--split", type=Path, default=Path("data/split/test.json"))
    p.add_argument("--image-dir", type=Path, default=Path("data/subset/images"))
    p.add_argument("--images", type=int, default=0, help="first N test images (0: all)")
    p.add_argument(
        "--configs", nargs="+", choices=CONFIGS, help="default: all; bf16 only on a bf16 CPU"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return

    import torch

    from livecellseg.config import load_params
    from livecellseg.runtime import cpu_has_bf16

    if not args.configs:  # emulated bf16 is ~50x slower: only on request there
        args.configs = [c for c in CONFIGS if c != "bf16" or cpu_has_bf16()]
    images = test_images(args)
    ids = {im["id"] for im in images}
    doc = json.loads(args.split.read_text())
    gt = doc | {
        "images": images,
        "annotations": [a for a in doc["annotations"] if a["image_id"] in ids],
    }
    runs, scored = {}, []
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        for config in args.configs:
            cmd = [sys.executable, __file__, "--one", config, "--work", work]
            for flag in ("model", "split", "image_dir", "images", "device"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            print(f"{config}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            runs[config] = run
            for name, seconds in run["seconds"].items():
                scored.append(
                    score(name, args, gt, seconds, len(images))
                    | {"peak_memory_mb": run["peak_memory_mb"]}
                )
        by = {r["config"]: r for r in scored}
        thresh = load_params(Path("params.yaml")).predict.score_thresh
        result = {
            "benchmark": "predict_stitched_vs_sahi",
            "model": str(args.model),
            "images": len(images),
            "cells_in_truth": len(gt["annotations"]),
            "device": str(args.device),
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "cpu_native_bf16": cpu_has_bf16(),
            "runs": scored,
            "counts": {c: r["counts"] for c, r in runs.items()},
        }
        if "before" in by and "stitched" in by:
            a, b = by["before"], by["stitched"]
            result["stitched_vs_before"] = {
                "speedup": round(b["images_per_s"] / a["images_per_s"], 2),
                "cell_count_change": round(b["cells"] / max(a["cells"], 1) - 1, 4),
                "f1_change": round(b["f1"] - a["f1"], 4),
                "ap_change": round(b["ap"] - a["ap"], 4),
                "same_cells": same_cells(args, "before", "stitched", thresh),
            }
        sahi = [r for r in scored if r["config"].startswith("sahi_")]
        if sahi and "stitched" in by:
            ours, default = by["stitched"], by["sahi_greedynmm_ios"]
            best = max(sahi, key=lambda r: (r["ap"], r["f1"]))
            result["stitched_vs_sahi"] = {
                "default_merge": default["config"],
                "best_merge": best["config"],
                "speedup_vs_default": round(ours["images_per_s"] / default["images_per_s"], 2),
                "speedup_vs_best": round(ours["images_per_s"] / best["images_per_s"], 2),
                "f1_ours_default_best": [ours["f1"], default["f1"], best["f1"]],
                "ap_ours_default_best": [ours["ap"], default["ap"], best["ap"]],
            }
        if "stitched_vs_before" in result:
            c = result["stitched_vs_before"]
            result["targets_met"] = {
                "2x_faster_than_before": c["speedup"] >= 2.0,
                "same_count_1pct": abs(c["cell_count_change"]) <= 0.01,
                "f1_ap_within_0.005": abs(c["f1_change"]) <= 0.005 and abs(c["ap_change"]) <= 0.005,
            }
            if "stitched_vs_sahi" in result:
                s = result["stitched_vs_sahi"]
                result["targets_met"] |= {
                    "2x_faster_than_sahi": min(s["speedup_vs_default"], s["speedup_vs_best"]) >= 2,
                    "better_f1_ap_than_sahi": by["stitched"]["f1"]
                    > max(s["f1_ours_default_best"][1:])
                    and by["stitched"]["ap"] > max(s["ap_ours_default_best"][1:]),
                }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
