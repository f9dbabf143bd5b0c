"""Benchmark: where small cells are lost, in the RPN or in the heads.

For each test tile (data/tiles/test.json), a trained model's kept RPN proposals (after its
NMS, top-n and score threshold: what the RoI heads receive) and its detections are compared
with the tile's cells. By ground-truth mask area, it prints as JSON the share of cells

- `proposed`: some kept proposal has box IoU >= 0.5 with the cell (the box head's
  foreground threshold: the heads can only refine such a proposal into the cell);
- `found`: a detection above the operating threshold (`predict.score_thresh`) matches the
  cell at mask IoU >= 0.5 (one-to-one, as evaluate counts);
- `boxed`: a detection above the threshold has box IoU >= 0.5 with the cell;
- `never_proposed` = 1 - proposed; `dropped_by_heads`: proposed, yet not found, split into
  `not_boxed` (the box head scored it out or moved it off) and `mask_missed` (a detection
  boxes it, but no mask matches it at IoU 0.5: a mask problem).

Tile-level, not stitched: a diagnostic of the network, cells cut by the tile edge included.

    python bench/proposals.py --model models/custom.pt [--tiles data/tiles] [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a trained checkpoint")
    p.add_argument("--tiles", type=Path, default=Path("data/tiles"))
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=0, help="tiles to use (0: all)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args()

    import torch
    from pycocotools import mask as mask_utils
    from torchvision.ops import box_iou

    from livecellseg.anchors import model_input_scale
    from livecellseg.coco import encode_masks, rle_areas
    from livecellseg.datasets import TileDataset, gray_to_tensor
    from livecellseg.metrics import AREA_BINS, area_bin_names, match_pairs
    from livecellseg.predict import load_model
    from livecellseg.runtime import pick_device

    device = pick_device("auto")
    model, ckpt, settings = load_model(args.model, device)
    score_thresh = settings.score_thresh  # the checkpoint's recorded operating threshold
    mask_thresh = settings.stitch.mask_thresh
    proposals: list[torch.Tensor] = []
    model.rpn.register_forward_hook(lambda _m, _i, out: proposals.extend(out[0]))
    tiles = TileDataset(
        args.tiles / f"{args.split}.json", args.tiles / args.split, limit=args.limit
    )
    areas, proposed, boxed, found = [], [], [], []
    with torch.inference_mode():
        for i in range(len(tiles)):
            image, masks = tiles.load(i)
            proposals.clear()
            (det,) = model([gray_to_tensor(image).to(device)])
            if not len(masks):
                continue
            h, w = image.shape
            scale = model_input_scale(
                h, w, settings.inference.min_size, settings.inference.max_size
            )
            kept = proposals[0].float().cpu() / scale  # back to tile pixels
            rles = encode_masks(masks.astype(bool))
            boxes = torch.tensor(mask_utils.toBbox(rles), dtype=torch.float32)
            boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
            best = box_iou(boxes, kept).max(dim=1).values if len(kept) else torch.zeros(len(boxes))
            keep = det["scores"].cpu() > score_thresh
            pred = encode_masks((det["masks"][keep, 0] > mask_thresh).cpu().numpy())
            det_boxes = det["boxes"][keep].float().cpu()
            boxed_best = (
                box_iou(boxes, det_boxes).max(dim=1).values
                if len(det_boxes)
                else torch.zeros(len(boxes))
            )
            matched_gt, _ = match_pairs(rles, pred, 0.5)
            hit = np.zeros(len(rles), dtype=bool)
            hit[matched_gt] = True
            areas.extend(rle_areas(rles).tolist())
            proposed.extend((best >= 0.5).tolist())
            boxed.extend((boxed_best >= 0.5).tolist())
            found.extend(hit.tolist())
    areas, proposed, found = np.asarray(areas), np.asarray(proposed), np.asarray(found)
    boxed = np.asarray(boxed, dtype=bool)
    by_area = {}
    for name, lo, hi in zip(area_bin_names(), AREA_BINS[:-1], AREA_BINS[1:], strict=True):
        inside = (areas >= lo) & (areas < hi)
        by_area[name] = {"cells": int(inside.sum())} | {
            key: round(float(flags[inside].mean()), 4) if inside.any() else 0.0
            for key, flags in (
                ("proposed", proposed),
                ("boxed", boxed),
                ("found", found),
                ("never_proposed", ~proposed),
                ("dropped_by_heads", proposed & ~found),
                ("not_boxed", proposed & ~found & ~boxed),
                ("mask_missed", proposed & ~found & boxed),
            )
        }
    report = {
        "benchmark": "proposals",
        "model": str(args.model),
        "tiles": len(tiles),
        "cells": len(areas),
        "proposed": round(float(proposed.mean()), 4) if len(areas) else 0.0,
        "found": round(float(found.mean()), 4) if len(areas) else 0.0,
        "score_thresh": score_thresh,
        "by_area": by_area,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text, file=sys.stdout)


if __name__ == "__main__":
    main()
