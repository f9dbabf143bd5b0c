"""tile: 25 overlapping tiles per image with annotations clipped by mask intersection, and
how well the models' anchors fit the training cells (metrics/anchors.json)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from livecellseg.anchors import POSITIVE_IOU, anchor_fit_report
from livecellseg.io import atomic_dir, write_json
from livecellseg.settings import arch_settings
from livecellseg.tileset import model_boxes, tile_split
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
            if split == "train":
                write_json(args.anchors, anchor_fit(tiles, params))
    report["total"] = {k: sum(r[k] for r in report.values()) for k in report[SPLITS[0]]}
    write_json(args.report, report)


def anchor_fit(tiles: dict, params) -> dict:
    """Both models' anchor fit to the train tiles' cells; a loud warning where it is poor."""
    m = params.model
    boxes, image_wh, groups = model_boxes(tiles, m.min_size, m.max_size)
    models = {name: arch_settings(name, m, params.custom) for name in ("transfer", "custom")}
    fit = anchor_fit_report(
        boxes,
        image_wh,
        groups,
        {name: a.anchor_sizes for name, a in models.items()},
        m.anchor_ratios,
        scales={"transfer": (1.0,), "custom": params.custom.anchor_scales},
    )
    for name in models:
        f = fit[name]
        log.info(
            "anchors of %s: %.0f%% of %d train cells have an anchor of IoU >= %.1f, %.0f%% "
            "none above 0.3, median best IoU %.2f (sizes fitted to them, %s: %.0f%%)",
            name, 100 * f["positive"], f["cells"], POSITIVE_IOU, 100 * f["negative"],
            f["median_iou"], f["suggested_sizes"], 100 * f["suggested"]["positive"],
        )  # fmt: skip
        if f["cells"] and f["positive"] < 0.5:
            log.warning(
                "!!! the %s model's anchors fit the cells poorly: only %.0f%% of them have an "
                "anchor of IoU >= %.1f (median box side %.1f px at the model's input scale). "
                "Set model.anchor_sizes near the suggested %s (metrics/anchors.json). !!!",
                name, 100 * f["positive"], POSITIVE_IOU, fit["box_side_px"]["p50"],
                f["suggested_sizes"],
            )  # fmt: skip
    return fit


def add_args(parser) -> None:
    parser.add_argument("--split", type=Path, required=True, help="directory of split JSONs")
    parser.add_argument("--images", type=Path, required=True, help="directory of the images")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--report", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument(
        "--anchors", type=Path, required=True, help="anchor-fit metrics JSON to write"
    )


if __name__ == "__main__":
    run_stage("tile", add_args, main)
