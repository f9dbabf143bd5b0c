"""Shared CLI of the two training stages (train_transfer, train_custom)."""

from __future__ import annotations

import logging
from pathlib import Path

from livecellseg.training import train_model
from stages.common import run_stage


def run(name: str) -> None:
    log = logging.getLogger(f"stages.train_{name}")

    def main(params, args) -> None:
        summary = train_model(
            name,
            params,
            tiles=args.tiles,
            best=args.out,
            last=args.last,
            live_dir=args.live,
            resume=not args.restart,
        )
        if summary:
            log.info(
                "best val F1 %.4f at epoch %s; pretrained: %s -> %s",
                summary["best_val_f1"],
                summary["best_epoch"],
                summary["pretrained"],
                args.out,
            )

    def add_args(parser) -> None:
        parser.add_argument("--tiles", type=Path, required=True, help="tile stage output")
        parser.add_argument("--out", type=Path, required=True, help="best checkpoint to write")
        parser.add_argument(
            "--last",
            type=Path,
            required=True,
            help="last checkpoint (written every epoch; resumed from)",
        )
        parser.add_argument("--live", type=Path, required=True, help="dvclive directory")
        parser.add_argument(
            "--restart",
            action="store_true",
            help="ignore an unfinished last checkpoint instead of resuming it",
        )

    run_stage(f"train_{name}", add_args, main)
