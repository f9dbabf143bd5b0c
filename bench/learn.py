"""Benchmark: do the models learn? Train both on the sample with a longer CPU profile, then
segment the test images (stitched, and whole-image for comparison) and print test
F1/mIoU/AP per model and mode as JSON.

The profile (below, or --set section.key=value) is params.yaml with more tiles and epochs;
outputs go to a temporary directory, the project's models and metrics are not touched.
Needs the tile stage's output (dvc repro tile). Target on the sample: F1 >= 0.8 for one model.

    python bench/learn.py [--models transfer custom] [--set custom.epochs=6 ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

# On 2 CPU cores: custom 27 min (measured: test F1 0.98 on the sample); transfer about as
# long (estimated: 5 epochs of 160 tiles at ~1.5 s per tile).
PROFILE = {
    "train": {"max_tiles_per_epoch": 160, "max_val_tiles": 32, "warmup_steps": 50},
    "transfer": {"epochs_frozen": 2, "epochs_unfrozen": 3},
    "custom": {"epochs": 4, "lr": 3e-4, "step_size": 4},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["custom", "transfer"])
    p.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    p.add_argument("--tiles", type=Path, default=Path("data/tiles"))
    p.add_argument("--split", type=Path, default=Path("data/split/test.json"))
    p.add_argument("--images", type=Path, default=Path("data/subset/images"))
    p.add_argument("--keep", type=Path, help="copy each trained model here as <model>.pt")
    args = p.parse_args()

    import torch

    from livecellseg.config import parse_params
    from livecellseg.evaluation import evaluate
    from livecellseg.images import read_gray
    from livecellseg.predict import Predictor, to_coco_results
    from livecellseg.runtime import pick_device
    from livecellseg.training import train_model

    raw = yaml.safe_load(Path("params.yaml").read_text())
    for section, values in PROFILE.items():
        raw[section].update(values)
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw[section][name] = yaml.safe_load(value)
    params = parse_params(raw)
    gt = json.loads(args.split.read_text())
    device = pick_device(params.train.device)
    report = {"benchmark": "learn", "profile": PROFILE, "overrides": args.set}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out = Path(tmp) / name
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
            rows = (out / "live/plots/metrics/epoch/val_f1.tsv").read_text().splitlines()
            val_f1 = [float(row.split("\t")[-1]) for row in rows[1:]]
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(out / "best.pt", args.keep / f"{name}.pt")
            predict, _ = Predictor.from_checkpoint(out / "best.pt", device)
            report[name] = {
                "pretrained": summary["pretrained"],
                "train_s": round(train_s),
                "val_f1_per_epoch": val_f1,
            }
            for mode in ("stitched", "whole"):  # the same model, both ways of segmenting
                results = []
                t = time.perf_counter()
                for im in gt["images"]:
                    det, _ = predict(read_gray(args.images / im["file_name"]), mode)
                    results.extend(to_coco_results(im["id"], det))
                predict_s = time.perf_counter() - t
                metrics, _ = evaluate(
                    gt,
                    results,
                    score_thresh=params.evaluate.score_thresh,
                    iou_thresh=params.evaluate.iou_thresh,
                )
                report[name][mode] = {
                    "test": {k: round(v, 4) for k, v in metrics["overall"].items()},
                    "predict_s_per_image": round(predict_s / len(gt["images"]), 2),
                }
            print(f"{name}: {report[name]}", file=sys.stderr)
            del predict
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
