"""subset: choose N images of a LIVECell-format data root, stratified by cell line, streaming.

The COCO files are read with ijson in two steps: the image list first (small), then the
annotations one at a time, keeping only those of the chosen images. Memory is the size of
the subset, not of the file (LIVECell's train JSON holds ~1 M annotations).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from livecellseg.coco import (
    DEFECTS,
    check_images,
    iter_annotations,
    make_annotation_checker,
    read_header,
)
from livecellseg.errors import DataError
from livecellseg.images import read_gray
from livecellseg.io import write_json
from livecellseg.livecell import cell_line_of, index_images
from livecellseg.split import stratified_order

log = logging.getLogger(__name__)


def choose_images(images: list[dict], n: int, cell_lines: tuple[str, ...], seed: int) -> list[dict]:
    """n images (capped at what exists) in proportion to the cell lines, seeded."""
    pool = [img for img in images if not cell_lines or img["cell_line"] in cell_lines]
    order = stratified_order([img["cell_line"] for img in pool], np.random.default_rng(seed))
    return sorted((pool[i] for i in order[:n]), key=lambda img: img["file_name"])


def build_subset(
    root: Path,
    annotation_files: tuple[str, ...],
    *,
    n: int,
    cell_lines: tuple[str, ...],
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """Write out/annotations.json (COCO, list form) and out/images/; return the report."""
    files = [root / "annotations" / name for name in annotation_files]
    for f in files:
        if not f.is_file():
            raise DataError(
                f"{f}: annotation file not found; for data.source=livecell fetch the data "
                "(README, 'Real LIVECell'), or fix subset.annotation_files"
            )

    headers, all_images, categories = [], {}, {}
    for f in files:
        images, cats, form = read_header(f)
        check_images(f, images)
        for img in images:
            if img["id"] in all_images:
                raise DataError(
                    f"{f}: image id {img['id']} ({img['file_name']}) also appears in another "
                    "annotation file; make image ids unique across subset.annotation_files"
                )
            all_images[img["id"]] = {**img, "cell_line": cell_line_of(img["file_name"])}
        categories.update({c["id"]: c for c in cats})
        headers.append((f, form))

    chosen = choose_images(list(all_images.values()), n, cell_lines, seed)
    if not chosen:
        raise DataError(
            f"{root}: no image matches subset.cell_lines={list(cell_lines)}; "
            f"lines present: {sorted({i['cell_line'] for i in all_images.values()})}"
        )
    chosen_ids = {img["id"] for img in chosen}
    on_disk = index_images(root)

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    for img in tqdm(chosen, desc="check images", unit="img"):
        src = on_disk.get(img["file_name"])
        if src is None:
            raise DataError(
                f"{root / 'images'}/**/{img['file_name']}: image not found (image id {img['id']} "
                "in the JSON); restore the file or remove the image from the JSON"
            )
        read_gray(src, size=(img["width"], img["height"]))  # exists, opens, 2-D, size matches
        shutil.copy2(src, out / "images" / img["file_name"])

    check = make_annotation_checker(all_images, set(categories))
    kept: list[dict] = []
    skipped: Counter = Counter()
    seen_ids: set = set()
    n_total = 0
    for f, form in headers:
        for ann in tqdm(
            iter_annotations(f, form), desc=f"stream {f.name}", unit="ann", mininterval=1.0
        ):
            n_total += 1
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if image_id in all_images and image_id not in chosen_ids:
                continue  # an annotation of an image outside the subset
            clean, defect = check(ann)
            if clean is not None and clean["id"] in seen_ids:
                clean, defect = None, "duplicate_annotation_id"
            if defect:
                skipped[defect] += 1
                if skipped[defect] <= 5:  # the totals are in the report
                    log.warning("%s: annotation %s skipped: %s", f.name, _ann_id(ann), defect)
                continue
            seen_ids.add(clean["id"])
            kept.append(clean)

    doc = {
        "images": chosen,
        "annotations": sorted(kept, key=lambda a: (a["image_id"], a["id"])),
        "categories": sorted(categories.values(), key=lambda c: c["id"]),
    }
    write_json(out / "annotations.json", doc, indent=None)
    report = {
        "images_available": len(all_images),
        "images_chosen": len(chosen),
        "annotations_read": n_total,
        "annotations_kept": len(kept),
        "annotations_skipped": sum(skipped.values()),
        "skipped": {d: skipped[d] for d in DEFECTS},
        "images_per_cell_line": dict(sorted(Counter(i["cell_line"] for i in chosen).items())),
    }
    return report


def _ann_id(ann: Any) -> Any:
    return ann.get("id", "?") if isinstance(ann, dict) else "?"
