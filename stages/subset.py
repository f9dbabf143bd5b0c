"""subset: choose N images of the data source, stratified by cell line; stream the COCO JSON."""

from __future__ import annotations

import logging
from pathlib import Path

from livecellseg.io import atomic_dir, write_json
from livecellseg.subset import build_subset
from stages.common import run_stage

log = logging.getLogger("stages.subset")


def main(params, args) -> None:
    cfg = params.subset
    with atomic_dir(args.out) as out:
        report = build_subset(
            args.raw,
            cfg.annotation_files,
            n=cfg.n_images,
            cell_lines=cfg.cell_lines,
            seed=params.seed,
            out=out,
        )
    write_json(args.report, {"source": params.data.source, **report})
    log.info(
        "%d of %d images, %d annotations kept, %d skipped (%s) -> %s",
        report["images_chosen"],
        report["images_available"],
        report["annotations_kept"],
        report["annotations_skipped"],
        {k: v for k, v in report["skipped"].items() if v} or "none",
        args.out,
    )
    d = report["duplicates"]
    log.info(
        "%d of %d image entries are second entries of a picture (%d file names listed twice: "
        "%d within one file, %d across files); of the chosen, %d entries dropped with their %d "
        "annotations (kept: held-out split %d, more annotations %d, first listed %d)",
        report["image_entries"] - report["images_available"],
        report["image_entries"],
        d["file_names_listed_twice"],
        d["within_one_file"],
        d["across_files"],
        d["entries_dropped"],
        d["annotations_dropped"],
        d["kept_held_out_split"],
        d["kept_more_annotations"],
        d["kept_first_listed"],
    )


def add_args(parser) -> None:
    parser.add_argument("--raw", type=Path, required=True, help="LIVECell-format data root")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--report", type=Path, required=True, help="metrics JSON to write")


if __name__ == "__main__":
    run_stage("subset", add_args, main)
