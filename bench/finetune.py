"""Benchmark: the human-in-the-loop loop on a cell line the model has not seen.

1. Train the custom model (params.yaml's CPU profile) on the sample's train/val splits
   (data/split, data/subset/images: `dvc repro split`) without one cell line, LINE.
2. LINE's wells, all unseen: the first well's frames stand in for a person's corrections,
   their ground truth written as label TIFFs (what napari would save); the other wells are
   LINE's test images.
3. Fine-tune with `livecellseg.finetune` (the CLI's code path) on 1, 2 and 4 corrected frames
   (densest first: a person corrects the frame where counting fails), each round from the
   base model, and time it.
4. Each model (base and each round) segments LINE's test images (stitched, params.yaml's
   `predict`) and the last test frame of every other test line (has fine-tuning cost the
   lines it already knew?), scored as the `evaluate` stage scores (F1 at IoU 0.5 above
   predict.score_thresh, recall by LIVECell's size classes).

    PYTHONPATH=src:. python bench/finetune.py [--line SHSY5Y] [--rounds 1 2 4] [--float32]
        [--work bench_work/finetune] [--out docs/bench/finetune.json]

The base model and its scores are kept in --work and reused by a rerun of the same line and
params.
Prints JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import yaml


def line_of(im: dict) -> str:
    from livecellseg.livecell import cell_line

    return cell_line(im)


def well_of(im: dict) -> str:
    from livecellseg.livecell import parse_name

    p = parse_name(im["file_name"])
    return f"{p.line}_{p.well}"


def hours_of(im: dict) -> float:
    from livecellseg.livecell import parse_name

    return parse_name(im["file_name"]).hours


def part(doc: dict, keep) -> dict:
    images = [im for im in doc["images"] if keep(im)]
    ids = {im["id"] for im in images}
    return doc | {
        "images": images,
        "annotations": [a for a in doc["annotations"] if a["image_id"] in ids],
    }


def train_base(args, params, split: dict[str, dict], images: Path) -> Path:
    """The custom model trained without LINE (reused when its record matches)."""
    from livecellseg.io import write_json
    from livecellseg.tileset import tile_split
    from livecellseg.training import train_model

    base = args.work / f"custom_without_{args.line}.pt"
    stamp = args.work / "base.json"
    raw = yaml.safe_load(Path(args.params).read_text())
    want = {
        "line": args.line,
        "params": {k: raw[k] for k in ("seed", "tile", "model", "train", "custom")},
        "data_md5": {  # the split it trains on: a new sample trains a new base
            s: hashlib.md5((args.split / f"{s}.json").read_bytes()).hexdigest()
            for s in ("train", "val")
        },
    }
    if base.exists() and stamp.exists():
        recorded = json.loads(stamp.read_text())
        recorded.pop("seconds", None)  # the stamp adds the training time
        if recorded == want:
            return base
    tiles = args.work / "tiles"
    kw = {
        "grid": params.tile.grid,
        "window": params.tile.window,
        "min_visible": params.tile.min_visible,
    }
    for name in ("train", "val"):
        doc, _ = tile_split(split[name], images, tiles / name, workers=2, desc=f"tile {name}", **kw)
        write_json(tiles / f"{name}.json", doc)
    t0 = time.perf_counter()
    train_model(
        "custom",
        params,
        tiles=tiles,
        best=base,
        last=args.work / "custom_last.pt",
        live_dir=args.work / "live_base",
        resume=False,
    )
    want["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(stamp, want)
    return base


def write_corrections(doc: dict, images: Path, out: Path) -> None:
    """Each image's ground truth as a uint16 label TIFF beside a copy of the image."""
    import shutil

    from pycocotools import mask as mask_utils

    from livecellseg.coco import to_rle
    from livecellseg.images import write_labels

    (out / "images").mkdir(parents=True, exist_ok=True)
    for im in doc["images"]:
        labels = np.zeros((im["height"], im["width"]), np.uint16)
        anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
        for i, a in enumerate(anns, start=1):
            m = mask_utils.decode(to_rle(a["segmentation"], im["height"], im["width"])).astype(bool)
            labels[m] = i
        stem = Path(im["file_name"]).stem
        shutil.copyfile(images / im["file_name"], out / "images" / f"{stem}.tif")
        write_labels(out / f"{stem}_labels.tif", labels)


def score(model: Path, params, doc: dict, images: Path) -> dict:
    """Stitched prediction of doc's images with params.yaml's `predict`, scored as the
    evaluate stage scores (overall: F1, P, R, recall by size; seconds per image)."""
    from livecellseg.evaluation import detection_metrics
    from livecellseg.images import read_gray
    from livecellseg.predict import Predictor, to_coco_results
    from livecellseg.runtime import pick_device

    predictor, _ = Predictor.from_checkpoint(model, pick_device("auto"), predict=params.predict)
    results, t0 = [], time.perf_counter()
    for im in doc["images"]:
        image = read_gray(images / im["file_name"], size=(im["width"], im["height"]))
        results.extend(to_coco_results(im["id"], predictor.segment(image).det))
    seconds = (time.perf_counter() - t0) / max(len(doc["images"]), 1)
    m = detection_metrics(
        doc,
        results,
        score_thresh=params.predict.score_thresh,
        iou_thresh=params.evaluate.iou_thresh,
    )["overall"]
    keep = ("f1", "precision", "recall", "miou", "gt", "pred", "tp", "recall_by_area")
    return {k: m[k] for k in keep if k in m} | {"seconds_per_image": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--line", default="SHSY5Y")
    ap.add_argument("--rounds", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--images", type=Path, default=Path("data/subset/images"))
    ap.add_argument("--work", type=Path, default=Path("bench_work/finetune"))
    ap.add_argument("--out", type=Path, default=Path("docs/bench/finetune.json"))
    ap.add_argument("--base-only", action="store_true", help="train the base model and stop")
    ap.add_argument(
        "--float32",
        action="store_true",
        help="fine-tune with bf16 autocast off (what a CPU without AVX512-BF16 runs)",
    )
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="[bench.finetune] %(message)s")
    import torch

    from livecellseg.config import load_params
    from livecellseg.finetune import finetune, pair_corrections
    from livecellseg.io import write_json

    params = load_params(args.params)
    args.work.mkdir(parents=True, exist_ok=True)
    docs = {s: json.loads((args.split / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    without = {s: part(docs[s], lambda im: line_of(im) != args.line) for s in ("train", "val")}
    ours = [
        im for s in ("train", "val", "test") for im in docs[s]["images"] if line_of(im) == args.line
    ]
    if not ours:
        raise SystemExit(f"{args.split}: no image of {args.line}; pick a line of the sample")
    merged, anns = [], []  # LINE's images from every split; ids made unique across splits
    for offset, d in enumerate(docs.values()):
        merged += [im | {"id": im["id"] + offset * 10**6} for im in d["images"]]
        anns += [a | {"image_id": a["image_id"] + offset * 10**6} for a in d["annotations"]]
    whole = {"images": merged, "annotations": anns, "categories": docs["train"]["categories"]}
    wells = sorted({well_of(im) for im in ours})
    pool = part(whole, lambda im: well_of(im) == wells[0])
    test = part(whole, lambda im: line_of(im) == args.line and well_of(im) != wells[0])
    others_last = {}
    for im in docs["test"]["images"]:
        if line_of(im) != args.line and hours_of(im) >= hours_of(others_last.get(line_of(im), im)):
            others_last[line_of(im)] = im
    others = part(docs["test"], lambda im: im in others_last.values())

    base = train_base(args, params, without, args.images)
    if args.base_only:
        return
    base_info = json.loads((args.work / "base.json").read_text())
    density = sorted(
        pool["images"],
        key=lambda im: -sum(a["image_id"] == im["id"] for a in pool["annotations"]),
    )
    corrections_dir = args.work / "corrections"
    write_corrections(pool, args.images, corrections_dir)

    # the base model's scores, kept beside it for reruns with other fine-tuning budgets
    key = hashlib.md5(
        json.dumps([base_info, dataclasses.asdict(params.predict), test, others]).encode()
        + base.read_bytes()
    ).hexdigest()
    cached = args.work / "base_scores.json"
    kept = json.loads(cached.read_text()) if cached.is_file() else {}
    if kept.get("key") == key:
        rows = [kept["row"]]
    else:
        rows = [
            {
                "corrected_images": 0,
                "model": base.name,
                "test": score(base, params, test, args.images),
                "other_lines": score(base, params, others, args.images),
            }
        ]
        write_json(cached, {"key": key, "row": rows[0]})
    start = base
    if args.float32:  # the base's recorded settings with autocast off: fine-tuning keeps them
        from livecellseg.checkpoint import load_checkpoint, save_checkpoint

        ckpt = load_checkpoint(base)
        ckpt["params"]["train"]["amp"] = False
        start = args.work / f"{base.stem}_float32.pt"
        save_checkpoint(ckpt, start)
    for k in args.rounds:
        chosen = [Path(im["file_name"]).stem for im in density[:k]]
        pairs = pair_corrections(
            [corrections_dir / "images" / f"{c}.tif" for c in chosen],
            [corrections_dir / f"{c}_labels.tif" for c in chosen],
        )
        out = args.work / f"custom_finetuned_{k}.pt"
        report = finetune(
            pairs,
            start,
            out,
            params.finetune,
            iou_thresh=params.evaluate.iou_thresh,
            replay=args.work / "tiles",  # what the base model was trained on
        )
        rows.append(
            {
                "corrected_images": k,
                "model": out.name,
                "finetune": report,
                "test": score(out, params, test, args.images),
                "other_lines": score(out, params, others, args.images),
            }
        )
        print(json.dumps(rows[-1]["test"] | {"k": k, "seconds": report["seconds"]}))
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    result = {
        "bench": "finetune",
        "line": args.line,
        "base_training_s": base_info.get("seconds"),
        "corrections_well": wells[0],
        "corrected_order": [Path(im["file_name"]).stem for im in density],
        "test_images": len(test["images"]),
        "test_cells": len(test["annotations"]),
        "other_lines_images": len(others["images"]),
        "finetune": dataclasses.asdict(params.finetune),
        "float32": args.float32,
        "rows": rows,
        "machine": {
            "cpu": next(
                (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), ""
            ),
            "bf16": "avx512_bf16" in cpu,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
