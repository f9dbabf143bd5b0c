"""finetune: a trained model fine-tuned on a lab's corrected images (data/corrections).

data/corrections/images holds images, data/corrections/labels their corrected label images
(IMG_labels.tif, paired by name; docs/finetune.md). With none there the stage does nothing
but say so: models/finetuned stays empty and metrics/finetune/metrics.json counts 0
corrections. Otherwise it trains on them, `finetune.replay` of each epoch drawn from the
model's own training tiles (data/tiles), and writes models/finetuned/<model>.pt (and its
report, .json), and dvclive curves and the held-out F1 before and after to metrics/finetune.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from livecellseg.finetune import expand, finetune, pair_corrections
from livecellseg.io import write_json
from stages.common import run_stage

log = logging.getLogger("stages.finetune")


def main(params, args) -> None:
    cfg = params.finetune
    images, labels = (
        expand([d]) if d.is_dir() else []
        for d in (args.corrections / "images", args.corrections / "labels")
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.live.exists():  # curves of another run must not mix with this one's
        shutil.rmtree(args.live)
    if not images and not labels:
        log.info(
            "no corrections in %s/images and %s/labels: nothing to fine-tune (docs/finetune.md)",
            args.corrections,
            args.corrections,
        )
        (args.live / "plots").mkdir(parents=True)
        write_json(args.live / "metrics.json", {"corrections": 0})
        return
    corrections = pair_corrections(images, labels)
    out = args.out / f"{cfg.model}.pt"
    report = finetune(
        corrections,
        args.model,
        out,
        cfg,
        iou_thresh=params.evaluate.iou_thresh,
        replay=args.replay,
        live_dir=args.live,
        device=params.train.device,
    )
    write_json(out.with_suffix(".json"), report)
    metrics = json.loads((args.live / "metrics.json").read_text())
    metrics |= {
        "corrections": report["images"],
        "cells": report["cells"],
        "heldout_before": report["before"],
        "heldout_after": report["after"],
    }
    write_json(args.live / "metrics.json", metrics)
    log.info(
        "held-out F1 %.4f -> %.4f (%d corrected images, %d cells) -> %s",
        report["before"]["f1"],
        report["after"]["f1"],
        report["images"],
        report["cells"],
        out,
    )


def add_args(parser) -> None:
    parser.add_argument("--corrections", type=Path, required=True, help="images/ and labels/")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to start from")
    parser.add_argument(
        "--replay", type=Path, help="tiles the model was trained on (finetune.replay of an epoch)"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory of the fine-tuned model")
    parser.add_argument("--live", type=Path, required=True, help="dvclive directory")


if __name__ == "__main__":
    run_stage("finetune", add_args, main)
