"""stitch_predict: segment the test images with a trained model (tiles + stitching, or whole),
keeping every detection above predict.min_score; evaluate and growth apply predict.score_thresh."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from livecellseg.errors import LivecellsegError
from livecellseg.images import read_gray
from livecellseg.io import write_csv, write_json
from livecellseg.livecell import cell_line
from livecellseg.models import MODEL_NAMES
from livecellseg.predict import Predictor, to_coco_results
from livecellseg.runtime import pick_device
from livecellseg.settings import trained_differences
from livecellseg.stitch import StitchCounts
from stages.common import run_stage

log = logging.getLogger("stages.stitch_predict")


def main(params, args) -> None:
    device = pick_device(params.train.device)
    predict, ckpt = Predictor.from_checkpoint(
        args.checkpoint, device, predict=params.predict, expect=args.model
    )
    # post-processing is params.yaml's; what shaped the weights must be what params.yaml says
    if changed := trained_differences(ckpt["params"], args.model, params):
        raise LivecellsegError(
            f"{args.checkpoint}: trained with other settings than {args.params} "
            f"({', '.join(changed)}); retrain it: dvc repro train_{args.model}"
        )
    images = json.loads(args.split.read_text())["images"]
    log.info(
        "%s (epoch %s, val F1 %.3f) on %d images, %s mode, detections above %.2f, %s",
        args.checkpoint,
        ckpt["epoch"],
        ckpt["val"]["f1"],
        len(images),
        params.predict.mode,
        params.predict.min_score,
        device,
    )
    results, rows, total, unlike = [], [], StitchCounts(), 0
    t0 = time.perf_counter()
    for im in tqdm(images, desc=f"predict {ckpt['name']}", unit="img"):
        image = read_gray(args.images / im["file_name"], size=(im["width"], im["height"]))
        seg = predict.segment(image)
        results.extend(to_coco_results(im["id"], seg.det))
        total.add(seg.counts)
        look = {"distance": "", "unlike_training": ""}
        if seg.look:  # how unlike the training data the image is (novelty.py)
            look = {"distance": round(seg.look.distance, 3), "unlike_training": seg.look.unlike}
            unlike += seg.look.unlike
        rows.append(
            {"image_id": im["id"], "file_name": im["file_name"], "cell_line": cell_line(im)}
            | asdict(seg.counts)
            | look
        )
    wall = time.perf_counter() - t0
    if predict.training_look is None:
        log.warning("%s records no description of its training data", args.checkpoint)
    else:
        log.info(
            "%d of %d test images unlike the training data (distance > %.2f)",
            unlike,
            len(images),
            predict.training_look.threshold,
        )
    write_json(args.out, results, indent=None)
    write_csv(args.counts, rows)
    log.info(
        "%d detections kept of %d (not owned %d, cross-tile duplicates %d, empty %d); "
        "%.2f s per image -> %s",
        total.kept,
        total.raw,
        total.not_owned,
        total.duplicates,
        total.empty,
        wall / max(len(images), 1),
        args.out,
    )


def add_args(parser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="trained model (.pt)")
    parser.add_argument(
        "--model", choices=MODEL_NAMES, required=True, help="the model the checkpoint must hold"
    )
    parser.add_argument("--split", type=Path, required=True, help="COCO JSON of the images")
    parser.add_argument("--images", type=Path, required=True, help="directory of the images")
    parser.add_argument("--out", type=Path, required=True, help="COCO results JSON to write")
    parser.add_argument("--counts", type=Path, required=True, help="per-image counts CSV")


if __name__ == "__main__":
    run_stage("stitch_predict", add_args, main)
