"""Cut the images of one split into tiles and write them with their clipped annotations."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from livecellseg.coco import encode_mask, to_rle
from livecellseg.images import read_gray, write_gray
from livecellseg.tiling import TileCounts, clip_instances, tile_windows


def instance_crops(anns: list[dict], height: int, width: int):
    """Each annotation as (bool mask cropped to its box, (y, x) of the box).

    Masks are rasterised at full image size, exactly as pycocotools does for evaluation
    (rasterising in a shifted local box changes pixels on half-pixel edges).
    """
    masks, boxes = [], []
    for ann in anns:
        rle = to_rle(ann["segmentation"], height, width)
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        if w == 0 or h == 0:
            masks.append(np.zeros((0, 0), bool))
            boxes.append((0, 0))
            continue
        masks.append(mask_utils.decode(rle)[y : y + h, x : x + w].astype(bool))
        boxes.append((y, x))
    return masks, boxes


def tile_split(
    doc: dict[str, Any],
    image_dir: Path,
    out_dir: Path,
    *,
    grid: int,
    window: int,
    min_visible: float,
    desc: str = "tile",
) -> tuple[dict[str, Any], dict[str, int]]:
    """Write out_dir/<stem>_r<R>c<C>.tif for every tile; return its COCO doc and counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[Any, list[dict]] = {img["id"]: [] for img in doc["images"]}
    for ann in doc["annotations"]:
        by_image[ann["image_id"]].append(ann)

    tiles, tile_anns, total = [], [], TileCounts()
    for img in tqdm(doc["images"], desc=desc, unit="img"):
        image = read_gray(image_dir / img["file_name"], size=(img["width"], img["height"]))
        anns = by_image[img["id"]]
        windows = tile_windows(img["height"], img["width"], grid, window)
        masks, boxes = instance_crops(anns, img["height"], img["width"])
        per_tile, counts = clip_instances(masks, boxes, windows, min_visible)
        for key, value in asdict(counts).items():
            setattr(total, key, getattr(total, key) + value)
        stem = Path(img["file_name"]).stem
        for w, clipped in zip(windows, per_tile, strict=True):
            tile_id = len(tiles) + 1
            name = f"{stem}_r{w.row}c{w.col}.tif"
            write_gray(out_dir / name, np.ascontiguousarray(image[w.y0 : w.y1, w.x0 : w.x1]))
            tiles.append(
                {
                    "id": tile_id,
                    "file_name": name,
                    "height": w.shape[0],
                    "width": w.shape[1],
                    "parent_id": img["id"],
                    "parent_file_name": img["file_name"],
                    "cell_line": img.get("cell_line"),
                    "row": w.row,
                    "col": w.col,
                    "y0": w.y0,
                    "x0": w.x0,
                }
            )
            for inst in clipped:
                rle = encode_mask(inst.mask)
                tile_anns.append(
                    {
                        "id": len(tile_anns) + 1,
                        "image_id": tile_id,
                        "category_id": 1,
                        "segmentation": rle,
                        "area": inst.area,
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "iscrowd": 0,
                        "source_id": anns[inst.source]["id"],
                        "clipped": inst.clipped,
                    }
                )
    counts = {
        "images": len(doc["images"]),
        "tiles": len(tiles),
        "source_instances": len(doc["annotations"]),
        **asdict(total),
    }
    return {"images": tiles, "annotations": tile_anns, "categories": doc["categories"]}, counts
