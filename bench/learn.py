"""Benchmark: how well and how fast do the models learn? Train on the tiles with a profile,
then segment the test images as stitch_predict does and print, per model, the wall time of
training and of prediction, val F1 per epoch against wall time (the learning curve) and the
test metrics (P/R/F1/mIoU, mask AP) as JSON, and the growth analysis of the test wells: each
well's doubling time from the model's counts beside the ground truth's, and whether the median
error is within GROWTH_TOLERANCE_PCT (`growth_ok`).

Profiles: `default` is params.yaml as it is (what `dvc repro` trains); `long` trains longer
(LONG below). `--set section.key=value` overrides either. Outputs go to a temporary
directory; the project's models and metrics are not touched. Needs the tile stage's output
(dvc repro tile).

    python bench/learn.py [--profile default|long] [--models custom transfer]
                          [--set transfer.scratch_norm=group ...] [--bf16 auto|force]
                          [--threads N] [--whole] [--out FILE] [--keep DIR]
                          [--nms 0.6 0.7] [--trained DIR]

`--nms` segments the test images again with other box NMS thresholds (post-processing, the
same weights); `--trained DIR` skips training and segments with DIR/<model>.pt, the model a
`--keep DIR` run kept: a post-processing sweep of a trained model.

`--bf16 force` runs bfloat16 autocast on a CPU without native bfloat16 too (oneDNN emulates
it): to measure what it costs there. `auto` uses it only where the CPU has it (train.amp).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

GROWTH_TOLERANCE_PCT = 25.0  # the stated tolerance of a model's doubling time (README, Growth)
LONG = {  # 8 epochs per model instead of 5: 1.6x the default's training time
    "transfer": {"epochs_frozen": 6, "epochs_unfrozen": 2},
    "custom": {"epochs": 8, "step_size": 6},
}


def learning_curve(live: Path) -> list[dict]:
    """Per epoch: wall seconds since training started (validation included) and val F1."""
    series = {}
    for key in ("wall_s", "val_f1", "val_precision", "val_recall"):
        rows = (live / f"plots/metrics/epoch/{key}.tsv").read_text().splitlines()[1:]
        series[key] = [float(row.split("\t")[-1]) for row in rows]
    return [
        {"epoch": i + 1} | {k: round(v[i], 4) for k, v in series.items()}
        for i in range(len(series["val_f1"]))
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=["default", "long"], default="default")
    p.add_argument("--models", nargs="+", default=["custom", "transfer"])
    p.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    p.add_argument("--bf16", choices=["auto", "force"], default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--whole", action="store_true", help="also segment whole images")
    p.add_argument("--tiles", type=Path, default=Path("data/tiles"))
    p.add_argument("--split", type=Path, default=Path("data/split/test.json"))
    p.add_argument("--images", type=Path, default=Path("data/subset/images"))
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--keep", type=Path, help="copy each trained model here as <model>.pt")
    p.add_argument(
        "--nms", type=float, nargs="*", default=[],
        help="also segment (stitched) with these box NMS IoU thresholds: the same weights",
    )  # fmt: skip
    p.add_argument(
        "--trained", type=Path,
        help="no training: segment with DIR/<model>.pt (a --keep of an earlier run)",
    )  # fmt: skip
    args = p.parse_args()

    import torch

    from livecellseg import runtime
    from livecellseg.config import parse_params
    from livecellseg.evaluation import evaluate, load_as_rle
    from livecellseg.growth import compare, segmentations_by_image
    from livecellseg.images import read_gray
    from livecellseg.models import apply_inference
    from livecellseg.predict import Predictor, to_coco_results
    from livecellseg.runtime import pick_device
    from livecellseg.training import train_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bf16 == "force":
        runtime.cpu_has_bf16 = lambda: True  # autocast_dtype reads it at call time
    raw = yaml.safe_load(Path("params.yaml").read_text())
    if args.profile == "long":
        for section, values in LONG.items():
            raw[section].update(values)
    for item in args.set:
        key, value = item.split("=", 1)
        *section, name = key.split(".", 1)  # "seed=7" or "custom.lr=0.001"
        (raw[section[0]] if section else raw)[name] = yaml.safe_load(value)
    params = parse_params(raw)
    gt = json.loads(args.split.read_text())
    truth = segmentations_by_image(load_as_rle(args.split)["annotations"])
    device = pick_device(params.train.device)
    report = {
        "benchmark": "learn",
        "profile": args.profile,
        "overrides": args.set,
        "bf16": args.bf16,
        "autocast": str(runtime.autocast_dtype(device, params.train.amp)),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out = Path(tmp) / name
            if args.trained:  # a model trained before (--keep): post-processing runs only
                predict, ckpt = Predictor.from_checkpoint(
                    args.trained / f"{name}.pt", device, predict=params.predict
                )
                report[name] = {"trained": str(args.trained / f"{name}.pt"), "val": ckpt["val"]}
            else:
                t = time.perf_counter()
                summary = train_model(
                    name,
                    params,
                    tiles=args.tiles,
                    best=out / "best.pt",
                    last=out / "last.pt",
                    live_dir=out / "live",
                    resume=False,
                )
                train_s = time.perf_counter() - t
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(out / "best.pt", args.keep / f"{name}.pt")
                predict, _ = Predictor.from_checkpoint(
                    out / "best.pt", device, predict=params.predict
                )
                report[name] = {
                    "pretrained": summary["pretrained"],
                    "train_s": round(train_s),
                    "best_epoch": summary["best_epoch"],
                    "epochs": learning_curve(out / "live"),
                }
            runs = [("stitched", None)] + [("whole", None)] * args.whole
            runs += [("stitched", nms) for nms in args.nms]
            for mode, nms in runs:
                if nms is not None:  # post-processing only: the same weights
                    s = predict.settings
                    predict.settings = replace(s, inference=replace(s.inference, nms_thresh=nms))
                    apply_inference(predict.model, predict.settings.inference)
                results = []
                t = time.perf_counter()
                for im in gt["images"]:
                    det, _ = predict(read_gray(args.images / im["file_name"]), mode)
                    results.extend(to_coco_results(im["id"], det))
                predict_s = time.perf_counter() - t
                metrics, _ = evaluate(
                    gt,
                    results,
                    score_thresh=params.predict.score_thresh,
                    iou_thresh=params.evaluate.iou_thresh,
                )
                overall = metrics["overall"]
                key = mode if nms is None else f"{mode}_nms{nms:g}"
                report[name][key] = {
                    "nms_thresh": predict.settings.inference.nms_thresh,
                    "test": {k: round(v, 4) for k, v in overall.items() if not isinstance(v, dict)},
                    "recall_by_area": overall["recall_by_area"],
                    "gt_by_area": overall["gt_by_area"],
                    "per_cell_line_f1": {
                        group: round(m["f1"], 3)
                        for group, m in metrics.items()
                        if group != "overall"
                    },
                    "per_cell_line_recall": {
                        group: round(m["recall"], 3)
                        for group, m in metrics.items()
                        if group != "overall"
                    },
                    "predict_s": round(predict_s),
                }
                thresh = params.predict.score_thresh
                found = segmentations_by_image(results, thresh)
                growth = compare(gt["images"], {"truth": truth, name: found}).metrics
                error = growth[name]["median_abs_error_pct"]
                report[name][key]["growth"] = {
                    "median_abs_error_pct": error,
                    "tolerance_pct": GROWTH_TOLERANCE_PCT,
                    "growth_ok": error is not None and error <= GROWTH_TOLERANCE_PCT,
                    "doubling_h": {
                        well: [growth["truth"]["wells"][well]["doubling_h"], fit["doubling_h"]]
                        for well, fit in growth[name]["wells"].items()
                    },  # [truth, model]
                }
            print(f"{name}: {json.dumps(report[name])}", file=sys.stderr, flush=True)
            del predict
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
