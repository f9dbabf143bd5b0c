"""growth: per well of the test split, cell counts over time and the doubling time, from the
ground truth and from each model's predictions: metrics/growth.json, a CSV per well (a DVC
plot) and a PNG of them all."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from livecellseg.evaluation import load_as_rle
from livecellseg.growth import (
    compare,
    count_table,
    describe,
    plot_comparison,
    segmentations_by_image,
)
from livecellseg.io import atomic_dir, write_csv, write_json
from stages.common import run_stage

log = logging.getLogger("stages.growth")


def main(params, args) -> None:
    gt = load_as_rle(args.split)
    thresh = params.predict.score_thresh  # the operating threshold, as evaluate counts
    sources = {"truth": segmentations_by_image(gt["annotations"])}
    for path in args.predictions:
        sources[path.stem] = segmentations_by_image(json.loads(path.read_text()), thresh)
    result = compare(gt["images"], sources)
    if result.skipped:
        log.warning(
            "%d of %d images skipped: not time-lapse names (%s, ...)",
            len(result.skipped),
            len(gt["images"]),
            result.skipped[0],
        )
    for name, fits in result.fits.items():
        for well, fit in fits.items():
            log.info("%s: %s", name, describe(well, fit))
    write_json(args.metrics, {"score_thresh": thresh} | result.metrics)
    with atomic_dir(args.plots) as out:
        for well in result.fits["truth"]:
            write_csv(out / f"{well.replace(' ', '_')}.csv", count_table(result, well))
    plot_comparison(result, args.figure)
    log.info(
        "%d wells -> %s, %s, %s", len(result.fits["truth"]), args.metrics, args.plots, args.figure
    )


def add_args(parser) -> None:
    parser.add_argument("--split", type=Path, required=True, help="ground truth COCO JSON")
    parser.add_argument(
        "--predictions", type=Path, nargs="+", required=True, help="COCO results JSONs"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--plots", type=Path, required=True, help="plots directory to write")
    parser.add_argument("--figure", type=Path, required=True, help="PNG of the counts to write")


if __name__ == "__main__":
    run_stage("growth", add_args, main)
