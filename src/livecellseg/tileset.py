"""Cut the images of one split into tiles and write them with their clipped annotations."""

from __future__ import annotations

import contextlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from livecellseg.anchors import model_input_scale
from livecellseg.coco import encode_mask, to_rle
from livecellseg.errors import DataError
from livecellseg.images import read_gray, write_gray
from livecellseg.livecell import cell_line
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


def tile_image(
    img: dict[str, Any],
    anns: list[dict],
    image_dir: Path,
    out_dir: Path,
    *,
    grid: int,
    window: int,
    min_visible: float,
) -> tuple[list[dict], list[list[dict]], dict[str, int]]:
    """Write the tiles of one image; return their entries, annotations per tile, and counts.

    Ids are left to the caller, so images can be tiled in any order or process.
    """
    image = read_gray(image_dir / img["file_name"], size=(img["width"], img["height"]))
    windows = tile_windows(img["height"], img["width"], grid, window)
    masks, boxes = instance_crops(anns, img["height"], img["width"])
    per_tile, counts = clip_instances(masks, boxes, windows, min_visible)
    stem = Path(img["file_name"]).stem
    entries, tile_anns = [], []
    for w, clipped in zip(windows, per_tile, strict=True):
        name = f"{stem}_r{w.row}c{w.col}.tif"
        write_gray(out_dir / name, np.ascontiguousarray(image[w.y0 : w.y1, w.x0 : w.x1]))
        entries.append(
            {
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
        anns_here = []
        for inst in clipped:
            rle = encode_mask(inst.mask)
            anns_here.append(
                {
                    "category_id": 1,
                    "segmentation": rle,
                    "area": inst.area,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                    "source_id": anns[inst.source]["id"],
                    "clipped": inst.clipped,
                }
            )
        tile_anns.append(anns_here)
    return entries, tile_anns, asdict(counts)


def tile_split(
    doc: dict[str, Any],
    image_dir: Path,
    out_dir: Path,
    *,
    grid: int,
    window: int,
    min_visible: float,
    workers: int = 1,
    desc: str = "tile",
) -> tuple[dict[str, Any], dict[str, int]]:
    """Tile every image of a COCO doc into out_dir; return the tiles' COCO doc and counts.

    With workers > 1 images are tiled in parallel processes; results are gathered in input
    order, so the output is identical whatever the number of workers.
    """
    stems = Counter(Path(img["file_name"]).stem for img in doc["images"])
    clash = sorted(stem for stem, n in stems.items() if n > 1)
    if clash:  # tiles are named after the image: they would overwrite each other
        raise DataError(
            f"{out_dir}: {len(clash)} image name(s) occur twice (e.g. {clash[0]}); tiles would "
            "overwrite each other: keep one entry per picture (the subset stage does)"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[Any, list[dict]] = {img["id"]: [] for img in doc["images"]}
    for ann in doc["annotations"]:
        by_image[ann["image_id"]].append(ann)
    job = partial(
        _tile_job,
        image_dir=image_dir,
        out_dir=out_dir,
        grid=grid,
        window=window,
        min_visible=min_visible,
    )
    jobs = [(img, by_image[img["id"]]) for img in doc["images"]]

    tiles, tile_anns, total = [], [], Counter()
    with ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        results = pool.map(job, jobs, chunksize=2) if pool else map(job, jobs)
        for entries, anns_per_tile, counts in tqdm(results, total=len(jobs), desc=desc, unit="img"):
            total.update(counts)
            for entry, anns in zip(entries, anns_per_tile, strict=True):
                tiles.append({"id": len(tiles) + 1, **entry})
                for ann in anns:
                    tile_anns.append({"id": len(tile_anns) + 1, "image_id": len(tiles), **ann})
    counts = {
        "images": len(doc["images"]),
        "tiles": len(tiles),
        "source_instances": len(doc["annotations"]),
        **{k: total[k] for k in asdict(TileCounts())},
    }
    return {"images": tiles, "annotations": tile_anns, "categories": doc["categories"]}, counts


def _tile_job(item, **kwargs):
    img, anns = item
    return tile_image(img, anns, **kwargs)


def model_boxes(doc: dict, min_size: int, max_size: int):
    """A tile set's annotation boxes (COCO `bbox`) as x1, y1, x2, y2 in the pixels the model
    sees (after its resize), (N, 4); each one's image size there, (N, 2) width, height; and
    its group, (N,): its tile's cell line, "unknown" for a name that is not LIVECell's."""
    images = {}
    for im in doc["images"]:
        try:
            line = cell_line(im)
        except DataError:  # not a LIVECell name: the box still counts overall
            line = "unknown"
        scale = model_input_scale(im["height"], im["width"], min_size, max_size)
        images[im["id"]] = (scale, (im["width"] * scale, im["height"] * scale), line)
    boxes, sizes, groups = [], [], []
    for ann in doc["annotations"]:
        scale, size, line = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        boxes.append((x * scale, y * scale, (x + w) * scale, (y + h) * scale))
        sizes.append(size)
        groups.append(line)
    return (
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray(sizes, dtype=np.float64).reshape(-1, 2),
        np.asarray(groups, dtype=object),
    )
