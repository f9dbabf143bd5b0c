"""tile: 25 overlapping tiles per image with annotations clipped by mask intersection."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from livecellseg.io import atomic_dir, write_json
from livecellseg.tileset import tile_split
from stages.common import run_stage

log = logging.getLogger("stages.tile")
SPLITS = ("train", "val", "test")


def main(params, args) -> None:
    cfg = params.tile
    report = {}
    with atomic_dir(args.out) as out:
        for split in SPLITS:
            doc = json.loads((args.split / f"{split}.json").read_text())
            tiles, counts = tile_split(
                doc,
                args.images,
                out / split,
                grid=cfg.grid,
                window=cfg.window,
                min_visible=cfg.min_visible,
                workers=params.n_workers(),
                desc=split,
            )
            write_json(out / f"{split}.json", tiles, indent=None)
            report[split] = counts
            log.info("%s: %s", split, counts)
    report["total"] = {k: sum(r[k] for r in report.values()) for k in report[SPLITS[0]]}
    write_json(args.report, report)


def add_args(parser) -> None:
    parser.add_argument("--split", type=Path, required=True, help="directory of split JSONs")
    parser.add_argument("--images", type=Path, required=True, help="directory of the images")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--report", type=Path, required=True, help="metrics JSON to write")


if __name__ == "__main__":
    run_stage("tile", add_args, main)
