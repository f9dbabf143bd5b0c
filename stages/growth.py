"""growth: per well of the test split, cell counts over time and the doubling time, from the
ground truth and from each model's predictions: metrics/growth.json and one plot per well."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from livecellseg.evaluation import load_as_rle
from livecellseg.growth import coco_rows, describe, fit_summary, fit_wells, well_rows
from livecellseg.io import atomic_dir, write_csv, write_json
from stages.common import run_stage

log = logging.getLogger("stages.growth")


def by_image(annotations: list[dict], score_thresh: float | None = None) -> dict[int, list]:
    """image id -> RLEs (predictions: those above the score threshold)."""
    out: dict[int, list] = {}
    for a in annotations:
        if score_thresh is None or a["score"] > score_thresh:
            out.setdefault(a["image_id"], []).append(a["segmentation"])
    return out


def main(params, args) -> None:
    gt = load_as_rle(args.split)
    thresh = params.evaluate.score_thresh
    sources = {"truth": by_image(gt["annotations"])}
    for path in args.predictions:
        sources[path.stem] = by_image(json.loads(path.read_text()), thresh)
    rows, fits, wells = {}, {}, {}
    for name, segs in sources.items():
        rows[name], skipped = coco_rows(gt["images"], segs)
        fits[name], wells[name] = fit_wells(rows[name]), well_rows(rows[name])
    if skipped:
        log.warning(
            "%d of %d test images skipped: not time-lapse names (%s ...)",
            len(skipped),
            len(gt["images"]),
            skipped[0],
        )
    metrics: dict = {"score_thresh": thresh, "images": len(rows["truth"]), "skipped": len(skipped)}
    for name, model_fits in fits.items():
        truth = None if name == "truth" else fits["truth"]
        per_well = {w: fit_summary(f, truth and truth[w]) for w, f in model_fits.items()}
        metrics[name] = {"wells": per_well}
        if truth is not None:
            errors = [abs(s["error_pct"]) for s in per_well.values() if s["error_pct"] is not None]
            metrics[name]["median_abs_error_pct"] = (
                round(float(np.median(errors)), 2) if errors else None
            )
            metrics[name]["wells_compared"] = len(errors)
        for w, f in model_fits.items():
            log.info("%s: %s", name, describe(w, f))
    write_json(args.metrics, metrics)
    with atomic_dir(args.plots) as out:
        for well in fits["truth"]:
            table = {
                name: {
                    r["hours"]: r["cells_mean"]
                    for r in ws
                    if f"{r['line']} {r['well']}".strip() == well
                }
                for name, ws in wells.items()
            }
            hours = sorted(table["truth"])
            write_csv(
                out / f"{well.replace(' ', '_')}.csv",
                [{"hours": h} | {name: t.get(h, 0.0) for name, t in table.items()} for h in hours],
            )
    log.info("%d wells -> %s, %s", len(fits["truth"]), args.metrics, args.plots)


def add_args(parser) -> None:
    parser.add_argument("--split", type=Path, required=True, help="ground truth COCO JSON")
    parser.add_argument(
        "--predictions", type=Path, nargs="+", required=True, help="COCO results JSONs"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--plots", type=Path, required=True, help="plots directory to write")


if __name__ == "__main__":
    run_stage("growth", add_args, main)
