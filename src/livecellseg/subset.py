"""subset: choose N images of a LIVECell-format data root, stratified by split and cell line.

The COCO files are read with ijson in two steps: the image lists first (small), then the
annotations one at a time, keeping only those of the chosen images, spooled to disk. Memory
does not grow with the annotations (LIVECell's three files hold ~1.6 M).

A picture listed more than once (LIVECell has 148 such entries) is one image here: its
entries are grouped by file name and one is kept (`keep_one`), so no file name reaches two
splits and no two tiles share a name; the report counts what was dropped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from array import array
from collections import Counter
from collections.abc import Hashable
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
from livecellseg.io import atomic_path
from livecellseg.livecell import cell_line_of, index_images, split_of
from livecellseg.split import stratified_order

log = logging.getLogger(__name__)


# A picture listed twice keeps the entry of the held-out split: test and val stay as LIVECell
# published them, and nothing evaluated was trained on.
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}


def keep_one(copies: list[dict], n_annotations: list[int]) -> tuple[int, str]:
    """Which of the image entries sharing a file name to keep, and why.

    In order: the entry of the held-out split (test, then val, then train); then the one
    with more valid annotations (the more complete annotation of the picture); then the
    first listed. Returns (index into `copies`, reason).
    """

    def rank(i: int) -> tuple[int, int, int]:
        return SPLIT_PRIORITY.get(copies[i].get("source_split"), 3), -n_annotations[i], i

    order = sorted(range(len(copies)), key=rank)
    best, runner_up = rank(order[0]), rank(order[1])
    if best[0] != runner_up[0]:
        return order[0], "held_out_split"
    if best[1] != runner_up[1]:
        return order[0], "more_annotations"
    return order[0], "first_listed"


def choose_images(images: list[dict], n: int, cell_lines: tuple[str, ...], seed: int) -> list[dict]:
    """n images (capped at what exists) in proportion to LIVECell's split and the cell
    lines, seeded."""
    pool = [img for img in images if not cell_lines or img["cell_line"] in cell_lines]
    strata = [(img.get("source_split") or "", img["cell_line"]) for img in pool]
    order = stratified_order(strata, np.random.default_rng(seed))
    return sorted((pool[i] for i in order[:n]), key=lambda img: img["file_name"])


def read_image_entries(files: list[Path]) -> tuple[list[dict], dict[int, dict], dict]:
    """Every image entry of the files (with `cell_line` and `source_split` added), the
    entries of each file by id, and the categories. An id may repeat across files only for
    the same file name (a picture listed in two splits)."""
    entries: list[dict] = []
    by_file: dict[int, dict] = {}
    categories: dict = {}
    names: dict = {}
    for k, f in enumerate(files):
        images, cats, form = read_header(f)
        check_images(f, images)
        split = split_of(f)
        by_file[k] = {"form": form, "images": {}}
        for img in images:
            if names.setdefault(img["id"], img["file_name"]) != img["file_name"]:
                raise DataError(
                    f"{f}: image id {img['id']} ({img['file_name']}) is {names[img['id']]} in "
                    "another annotation file; make image ids unique across "
                    "subset.annotation_files"
                )
            entry = {**img, "cell_line": cell_line_of(img["file_name"]), "source_split": split}
            entry["_entry"] = len(entries)
            entries.append(entry)
            by_file[k]["images"][img["id"]] = entry
        categories.update({c["id"]: c for c in cats})
    return entries, by_file, categories


def build_subset(
    root: Path,
    annotation_files: tuple[str, ...],
    *,
    n: int,
    cell_lines: tuple[str, ...],
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """Write out/annotations.json (COCO, list form) and out/images/; return the report.

    One entry per file name is kept (`keep_one`); the annotations are streamed into a spool
    file and the output is written from it, so memory holds no annotation at a time beyond
    the one being checked (~1.6 M annotations of LIVECell fit in < 1 GB).
    """
    files = [root / "annotations" / name for name in annotation_files]
    for f in files:
        if not f.is_file():
            raise DataError(
                f"{f}: annotation file not found; for data.source=livecell fetch the data "
                "(docs/livecell.md, Download), or fix subset.annotation_files"
            )
    entries, by_file, categories = read_image_entries(files)
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry["file_name"], []).append(entry)
    # the split a picture ends in does not depend on annotation counts (only within a split)
    pictures = [
        min(copies, key=lambda e: (SPLIT_PRIORITY.get(e["source_split"], 3), e["_entry"]))
        for copies in groups.values()
    ]
    chosen = choose_images(pictures, n, cell_lines, seed)
    if not chosen:
        raise DataError(
            f"{root}: no image matches subset.cell_lines={list(cell_lines)}; "
            f"lines present: {sorted({e['cell_line'] for e in entries})}"
        )
    candidates = {e["_entry"] for img in chosen for e in groups[img["file_name"]]}

    out.mkdir(parents=True, exist_ok=True)
    _copy_images(root, chosen, out / "images")
    spool = out / ".annotations.spool"
    try:
        n_read, skipped, records = _stream_annotations(
            files, by_file, categories, candidates, spool
        )
        per_entry = Counter(records.entry.tolist())
        kept_entries, duplicates = [], Counter()
        for img in chosen:
            copies = groups[img["file_name"]]
            k = 0
            if len(copies) > 1:
                k, reason = keep_one(copies, [per_entry[e["_entry"]] for e in copies])
                duplicates[f"kept_{reason}"] += 1
                duplicates["entries_dropped"] += len(copies) - 1
                duplicates["annotations_dropped"] += sum(
                    per_entry[e["_entry"]] for i, e in enumerate(copies) if i != k
                )
            kept_entries.append(copies[k])
        n_kept = _write_annotations(
            out / "annotations.json", kept_entries, len(entries), categories, records, spool
        )
    finally:
        spool.unlink(missing_ok=True)

    report = {
        "image_entries": len(entries),
        "images_available": len(groups),
        "images_chosen": len(kept_entries),
        "annotations_read": n_read,
        "annotations_kept": n_kept,
        "annotations_skipped": sum(skipped.values()),
        "skipped": {d: skipped[d] for d in DEFECTS},
        "duplicates": _duplicate_report(groups)
        | {
            k: duplicates[k]
            for k in (
                "entries_dropped",
                "annotations_dropped",
                "kept_held_out_split",
                "kept_more_annotations",
                "kept_first_listed",
            )
        },
        "images_per_cell_line": dict(sorted(Counter(e["cell_line"] for e in kept_entries).items())),
        "images_per_source_split": dict(
            sorted(Counter(str(e["source_split"]) for e in kept_entries).items())
        ),
    }
    return report


def _copy_images(root: Path, chosen: list[dict], dest: Path) -> None:
    on_disk = index_images(root)
    dest.mkdir(exist_ok=True)
    for img in tqdm(chosen, desc="check images", unit="img"):
        src = on_disk.get(img["file_name"])
        if src is None:
            raise DataError(
                f"{root / 'images'}/**/{img['file_name']}: image not found (image id {img['id']} "
                "in the JSON); restore the file or remove the image from the JSON"
            )
        read_gray(src, size=(img["width"], img["height"]))  # exists, opens, 2-D, size matches
        shutil.copy2(src, dest / img["file_name"])


class _Records:
    """Where each spooled annotation is: its image entry, byte offset and length."""

    def __init__(self) -> None:
        self._entry, self._offset, self._length = array("l"), array("q"), array("l")

    def add(self, entry: int, offset: int, length: int) -> None:
        self._entry.append(entry)
        self._offset.append(offset)
        self._length.append(length)

    @property
    def entry(self) -> np.ndarray:
        return np.frombuffer(self._entry, dtype=self._entry.typecode)

    @property
    def offset(self) -> np.ndarray:
        return np.frombuffer(self._offset, dtype=np.int64)

    @property
    def length(self) -> np.ndarray:
        return np.frombuffer(self._length, dtype=self._length.typecode)


def _stream_annotations(
    files: list[Path], by_file: dict, categories: dict, candidates: set[int], spool: Path
) -> tuple[int, Counter, _Records]:
    """Check every annotation of the candidate entries and spool the clean ones as JSON."""
    records = _Records()
    skipped: Counter = Counter()
    seen_ids: set = set()
    n_total = 0
    with open(spool, "wb") as sp:
        for k, f in enumerate(files):
            images = by_file[k]["images"]
            check = make_annotation_checker(images, set(categories))
            for ann in tqdm(
                iter_annotations(f, by_file[k]["form"]),
                desc=f"stream {f.name}",
                unit="ann",
                mininterval=1.0,
            ):
                n_total += 1
                image_id = ann.get("image_id") if isinstance(ann, dict) else None
                entry = images.get(image_id) if isinstance(image_id, Hashable) else None
                if entry is not None and entry["_entry"] not in candidates:
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
                text = json.dumps(clean, separators=(", ", ": ")).encode()
                records.add(entry["_entry"], sp.tell(), len(text))
                sp.write(text)
    return n_total, skipped, records


def _write_annotations(
    path: Path, kept: list[dict], n_entries: int, categories: dict, records: _Records, spool: Path
) -> int:
    """The subset's COCO file (list form), annotations in image order, then as read."""
    position = np.full(n_entries, -1, np.int64)  # entry -> its image's place in the output
    position[[e["_entry"] for e in kept]] = np.arange(len(kept))
    pos = position[records.entry]
    order = np.flatnonzero(pos >= 0)
    order = order[np.argsort(pos[order], kind="stable")]
    images = [{k: v for k, v in e.items() if k != "_entry"} for e in kept]
    head = {"images": images, "categories": sorted(categories.values(), key=lambda c: c["id"])}
    offsets, lengths = records.offset, records.length
    with atomic_path(path) as tmp, open(tmp, "wb") as f, open(spool, "rb") as sp:
        f.write(json.dumps(head)[:-1].encode() + b', "annotations": [')
        for n, i in enumerate(order):  # pread, not mmap: the spool's pages stay out of RSS
            if n:
                f.write(b", ")
            f.write(os.pread(sp.fileno(), int(lengths[i]), int(offsets[i])))
        f.write(b"]}")
    return len(order)


def _duplicate_report(groups: dict[str, list[dict]]) -> dict[str, int]:
    """How many pictures have more than one entry, within one file and across files."""
    within = across = 0
    for copies in groups.values():
        if len(copies) > 1:
            splits = [e["source_split"] for e in copies]
            within += len(set(splits)) < len(splits)
            across += len(set(splits)) > 1
    return {
        "file_names_listed_twice": sum(len(c) > 1 for c in groups.values()),
        "within_one_file": within,
        "across_files": across,
    }


def _ann_id(ann: Any) -> Any:
    return ann.get("id", "?") if isinstance(ann, dict) else "?"
