"""evaluate: seed metrics and COCO mask AP of a model's stitched predictions, plots.

P/R/F1/mIoU count the predictions above `predict.score_thresh` (the operating threshold);
COCO AP uses every prediction; `thresholds.csv` draws P, R and F1 against the threshold and
the metrics name the F1-best one, so the operating threshold can be chosen from data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from livecellseg.coco import to_rle
from livecellseg.evaluation import (
    best_threshold,
    evaluate,
    load_as_rle,
    threshold_curve,
    threshold_grid,
)
from livecellseg.images import read_gray
from livecellseg.io import atomic_dir, write_csv, write_json
from livecellseg.livecell import cell_line
from livecellseg.visualize import overlay, save_png
from stages.common import run_stage

log = logging.getLogger("stages.evaluate")
COLUMNS = ("f1", "precision", "recall", "miou", "ap", "ap50", "ap75", "gt", "pred", "tp")


def main(params, args) -> None:
    cfg, thresh = params.evaluate, params.predict.score_thresh
    gt = load_as_rle(args.split)  # polygons as RLEs: a fourth of the memory at LIVECell scale
    results = json.loads(args.predictions.read_text())
    metrics, curves = evaluate(gt, results, score_thresh=thresh, iou_thresh=cfg.iou_thresh)
    grid = threshold_grid(params.predict.min_score, thresh)  # below min_score nothing was kept
    by_thresh = threshold_curve(gt, results, grid, iou_thresh=cfg.iou_thresh)
    best = best_threshold(by_thresh)
    overall = metrics.pop("overall")
    lines = dict(sorted(metrics.items()))
    write_json(
        args.metrics,
        {"score_thresh": thresh} | overall | {"best_threshold": best, "per_cell_line": lines},
    )
    with atomic_dir(args.plots) as out:
        write_csv(
            out / "cell_lines.csv",
            [{"cell_line": k} | {c: v[c] for c in COLUMNS} for k, v in lines.items()],
        )
        write_csv(
            out / "precision_recall.csv",
            [
                {"recall": round(i / 100, 2), "precision": float(p)}
                for i, p in enumerate(curves["overall"])
                if p >= 0
            ],
        )
        write_csv(out / "thresholds.csv", by_thresh)
        _overlays(gt, results, args.images, out / "overlays", cfg.overlays, thresh)
    log.info(
        "%s: F1 %.4f (P %.4f, R %.4f), mIoU %.4f, mask AP %.4f (AP50 %.4f); %d cells, %d "
        "predictions above %.2f -> %s",
        args.predictions,
        overall["f1"],
        overall["precision"],
        overall["recall"],
        overall["miou"],
        overall["ap"],
        overall["ap50"],
        overall["gt"],
        overall["pred"],
        thresh,
        args.metrics,
    )
    log.info("recall by cell area (px): %s", overall["recall_by_area"])
    log.info(
        "F1-best score threshold %.2f: F1 %.4f (P %.4f, R %.4f); operating threshold %.2f "
        "(predict.score_thresh)",
        best["score_thresh"],
        best["f1"],
        best["precision"],
        best["recall"],
        thresh,
    )


def _overlays(gt, results, images_dir: Path, out: Path, n: int, score_thresh: float) -> None:
    """Outlines of GT (green) and predictions above `score_thresh` (magenta): the last test
    image (by name: a well's latest, densest frame) of each cell line in turn, `n` in all."""
    out.mkdir()
    last: dict[str, dict] = {}
    for im in sorted(gt["images"], key=lambda im: im["file_name"]):
        last[cell_line(im)] = im
    for im in list(last.values())[:n]:
        h, w = im["height"], im["width"]
        image = read_gray(images_dir / im["file_name"], size=(w, h))
        truth = [
            to_rle(a["segmentation"], h, w) for a in gt["annotations"] if a["image_id"] == im["id"]
        ]
        pred = [
            r["segmentation"]
            for r in results
            if r["image_id"] == im["id"] and r["score"] > score_thresh
        ]
        name = f"{cell_line(im)}_{im['id']}.png"
        save_png(out / name, overlay(image, pred, truth))


def add_args(parser) -> None:
    parser.add_argument("--predictions", type=Path, required=True, help="COCO results JSON")
    parser.add_argument("--split", type=Path, required=True, help="ground truth COCO JSON")
    parser.add_argument("--images", type=Path, required=True, help="directory of the images")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--plots", type=Path, required=True, help="plots directory to write")


if __name__ == "__main__":
    run_stage("evaluate", add_args, main)
