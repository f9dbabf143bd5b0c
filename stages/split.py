"""split: train/val/test, LIVECell's own (official) or seeded and stratified by cell line, by
well (a well's time-lapse frames together) or by image; no image (file name) in two splits."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from livecellseg.io import atomic_dir, write_json
from livecellseg.split import (
    assign_groups,
    assign_splits,
    check_unique_names,
    official_splits,
    well_of,
)
from stages.common import run_stage

log = logging.getLogger("stages.split")


def main(params, args) -> None:
    doc = json.loads(args.subset.read_text())
    images = doc["images"]
    check_unique_names(images, str(args.subset))
    if params.split.mode == "official":
        parts = official_splits(images, str(args.subset))
    else:
        strata = [img["cell_line"] for img in images]
        if params.split.by == "well":
            groups = [well_of(img["file_name"]) for img in images]
            parts = assign_groups(groups, strata, params.split.fractions(), seed=params.seed)
            log.info("split.by well: %d wells", len(set(groups)))
        else:
            parts = assign_splits(strata, params.split.fractions(), seed=params.seed)
    log.info("split.mode %s", params.split.mode)
    with atomic_dir(args.out) as out:
        for name, indices in parts.items():
            chosen = [images[i] for i in indices]
            ids = {img["id"] for img in chosen}
            anns = [a for a in doc["annotations"] if a["image_id"] in ids]
            write_json(
                out / f"{name}.json",
                {"images": chosen, "annotations": anns, "categories": doc["categories"]},
                indent=None,
            )
            lines = Counter(img["cell_line"] for img in chosen)
            log.info("%s: %d images, %d cells, %s", name, len(chosen), len(anns), dict(lines))


def add_args(parser) -> None:
    parser.add_argument("--subset", type=Path, required=True, help="subset annotations.json")
    parser.add_argument("--out", type=Path, required=True, help="output directory")


if __name__ == "__main__":
    run_stage("split", add_args, main)
