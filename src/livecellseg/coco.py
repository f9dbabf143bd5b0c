"""COCO annotations: streaming reader for LIVECell's large JSON files, checks, and RLE helpers.

LIVECell's `livecell_coco_train.json` holds ~1 M annotations. As LIVECell's bucket serves
it, `annotations` is COCO's usual list; the Kaggle competition's copy maps id -> annotation
instead. Both forms are read here. The JSON is streamed with ijson, so memory stays at the
size of what is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ijson
import numpy as np
from pycocotools import mask as mask_utils

from livecellseg.errors import DataError

# Why an annotation can be skipped (each counted in the subset report).
DEFECTS = (
    "malformed_annotation",
    "unknown_image",
    "unknown_category",
    "empty_segmentation",
    "degenerate_polygon",
    "bad_rle",
    "zero_area",
    "duplicate_annotation_id",
)

Image = dict[str, Any]
Annotation = dict[str, Any]


def _malformed(path: Path, e: Exception) -> DataError:
    return DataError(
        f"{path}: malformed or truncated JSON ({type(e).__name__}: {str(e).splitlines()[0]}); "
        "re-download the file or fix its syntax"
    )


def read_header(path: str | Path) -> tuple[list[Image], list[dict], str]:
    """Images, categories and the form of `annotations` ('list', 'map' or 'none').

    Reads events only until `annotations` begins when images and categories came first;
    the annotations themselves are left to `iter_annotations`.
    """
    path = Path(path)
    images: list[Image] | None = None
    categories: list[dict] | None = None
    form = "none"
    try:
        with open(path, "rb") as f:
            events = ijson.parse(f, use_float=True)
            for prefix, event, _ in events:
                if prefix == "" and event not in ("start_map", "end_map", "map_key"):
                    raise DataError(f"{path}: top level is not a JSON object; expected COCO format")
                if prefix == "annotations" and event in ("start_array", "start_map"):
                    form = "list" if event == "start_array" else "map"
                    break  # what was not seen yet is read below, by a pass in C
                if prefix in ("images", "categories") and event == "start_array":
                    items = _collect_array(events, prefix)
                    if prefix == "images":
                        images = items
                    else:
                        categories = items
    except ijson.JSONError as e:
        raise _malformed(path, e) from None
    if images is None:
        images = _read_items(path, "images")
    if categories is None:
        categories = _read_items(path, "categories")
    if not images and not _has_key(path, "images"):
        raise DataError(f"{path}: no 'images' list; expected a COCO-format annotation file")
    return images, categories, form


def _collect_array(events: Iterator, prefix: str) -> list:
    builder = ijson.ObjectBuilder()
    builder.event("start_array", None)
    depth = 1
    for _, event, value in events:
        builder.event(event, value)
        if event in ("start_map", "start_array"):
            depth += 1
        elif event in ("end_map", "end_array"):
            depth -= 1
            if depth == 0:
                return builder.value
    raise ijson.IncompleteJSONError(f"'{prefix}' is not closed")


def _read_items(path: Path, key: str) -> list:
    try:
        with open(path, "rb") as f:
            return list(ijson.items(f, f"{key}.item", use_float=True))
    except ijson.JSONError as e:
        raise _malformed(path, e) from None


def _has_key(path: Path, key: str) -> bool:
    with open(path, "rb") as f:
        return any(True for _ in ijson.items(f, key))


def iter_annotations(path: str | Path, form: str) -> Iterator[Annotation]:
    """Stream the annotations of a COCO file, one dict at a time (built in C by ijson)."""
    path = Path(path)
    if form == "none":
        return
    try:
        with open(path, "rb") as f:
            if form == "list":
                yield from ijson.items(f, "annotations.item", use_float=True)
            else:
                for _, ann in ijson.kvitems(f, "annotations", use_float=True):
                    yield ann
    except ijson.JSONError as e:
        raise _malformed(path, e) from None


def check_images(path: Path, images: list[Image]) -> None:
    """Image entries must have an id, file name and size, and ids must be unique."""
    seen: dict[Any, str] = {}
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not {"id", "file_name", "width", "height"} <= set(img):
            raise DataError(f"{path}: images[{i}] lacks id/file_name/width/height; fix that entry")
        if img["id"] in seen:
            raise DataError(
                f"{path}: duplicate image id {img['id']} ({seen[img['id']]} and "
                f"{img['file_name']}); make image ids unique"
            )
        seen[img["id"]] = img["file_name"]


def clean_segmentation(seg: Any) -> tuple[list[list[float]] | dict | None, str | None]:
    """Drop polygon rings with < 3 points or non-finite values; return (segmentation, defect)."""
    if isinstance(seg, dict):
        ok = isinstance(seg.get("counts"), (str, list)) and len(seg.get("size", ())) == 2
        return (seg, None) if ok else (None, "bad_rle")
    if not isinstance(seg, list) or not seg:
        return None, "empty_segmentation"
    rings = []
    for ring in seg:
        if (
            isinstance(ring, list)
            and len(ring) >= 6
            and len(ring) % 2 == 0
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ring)
        ):
            rings.append([float(v) for v in ring])
    if not rings:
        return None, "degenerate_polygon"
    return rings, None


def to_rle(seg: list[list[float]] | dict, height: int, width: int) -> dict:
    """One RLE (pycocotools form, bytes counts) for a polygon list or an RLE segmentation."""
    if isinstance(seg, dict):
        rle = seg
        if isinstance(rle["counts"], list):
            rle = mask_utils.frPyObjects(rle, height, width)
        elif isinstance(rle["counts"], str):
            rle = {"size": rle["size"], "counts": rle["counts"].encode()}
        return rle
    return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))


def rle_areas(rles: list[dict]) -> np.ndarray:
    """Pixel areas of RLEs (int64). pycocotools' `area` on a list sizes a scratch uint8
    array with the list's length, so under numpy 2 it raises OverflowError for more than
    255 RLEs: it is called here on chunks of 255."""
    if not rles:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(
        [mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]
    ).astype(np.int64)


def encode_masks(masks: np.ndarray) -> list[dict]:
    """Binary masks (n, h, w) -> n RLEs (pycocotools form, bytes counts)."""
    if len(masks) == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def encode_mask(mask: np.ndarray) -> dict:
    """One binary mask (h, w) -> JSON-ready RLE (counts as str)."""
    (rle,) = encode_masks(mask[None])
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def make_annotation_checker(
    images: dict[Any, Image], category_ids: set
) -> Callable[[Annotation], tuple[Annotation | None, str | None]]:
    """Return check(ann) -> (clean annotation, None) or (None, defect name).

    Area and bbox are recomputed from the rasterised mask, so what later stages count is
    what a mask-based evaluation sees.
    """

    def check(ann: Annotation) -> tuple[Annotation | None, str | None]:
        if not isinstance(ann, dict) or not {"image_id", "segmentation"} <= set(ann):
            return None, "malformed_annotation"
        img = images.get(ann["image_id"])
        if img is None:
            return None, "unknown_image"
        if ann.get("category_id") not in category_ids:
            return None, "unknown_category"
        seg, defect = clean_segmentation(ann["segmentation"])
        if defect:
            return None, defect
        rle = to_rle(seg, img["height"], img["width"])
        area = int(mask_utils.area(rle))
        if area == 0:
            return None, "zero_area"
        clean = {
            "id": ann.get("id"),
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "segmentation": seg,
            "area": area,
            "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        return clean, None

    return check
