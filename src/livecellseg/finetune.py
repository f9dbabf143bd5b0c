"""Fine-tuning a trained model on a user's corrected label images: the human-in-the-loop loop.

A corrected label image (uint16 TIFF, 0 background, 1..N cells: what `livecellseg predict`
writes and napari or Fiji edit) next to its image is a training example. `pair_corrections`
pairs images and label images by name and checks them all before anything is written;
`finetune` tiles them exactly as the pipeline tiles LIVECell (the checkpoint's recorded grid,
window and min_visible), holds a part out, and continues training the checkpoint with the
engine's own loop: the checkpoint's recorded settings (architecture, sampling, augmentation,
validation), a new phase of `finetune.epochs` at `finetune.lr_ratio` times the model's
learning rate. It reports the held-out F1 before and after.

A round is `finetune.epochs` epochs of `finetune.tiles_per_epoch` tiles whatever the number
of corrected images: fewer training tiles than an epoch are listed again (`repeat_tiles`).
Given the tiles the model was trained on (the tile stage's output), `finetune.replay` of each
epoch's tiles are drawn from them (`replay_tiles`), so the model keeps the cells it knew.

Held out: `finetune.holdout` of the images (at least one) when there are two or more; a single
image is split in space instead, its last row of tiles held out and the tiles overlapping
them left out, so no held-out pixel is trained on. The held-out F1 is measured on the tiles
that cover the held-out part once over (`covering_tiles`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage

from livecellseg.checkpoint import load_checkpoint
from livecellseg.coco import encode_mask
from livecellseg.config import FinetuneConfig, ModelConfig, TileConfig, TrainConfig, parse_section
from livecellseg.datasets import TileDataset
from livecellseg.engine import evaluate, fit
from livecellseg.errors import DataError, LivecellsegError
from livecellseg.images import IMAGE_SUFFIXES, load_image, write_gray
from livecellseg.io import atomic_path, write_json
from livecellseg.models import apply_inference
from livecellseg.predict import load_model
from livecellseg.runtime import pick_device
from livecellseg.settings import FitConfig, Phase, validation_settings
from livecellseg.tileset import tile_split
from livecellseg.training import record_training_look

log = logging.getLogger(__name__)

# How label images are named beside their image IMG: IMG_labels.tif (livecellseg predict),
# IMG_masks / IMG_cp_masks (Cellpose), IMG_label / IMG_mask, or IMG.tif in another folder.
LABEL_SUFFIXES = ("_cp_masks", "_labels", "_label", "_masks", "_mask")
# A label of fewer pixels, or narrower than MIN_CELL_SIDE_PX in x or y, is a fragment, not a
# cell: the sliver left where one cell was painted over another, a stray brush dot. As targets
# they make the box regression diverge (a box 1-2 px wide is 0 px wide at bfloat16's
# precision, and its log-width infinite); they are left out, counted and reported.
MIN_CELL_PX = 10
MIN_CELL_SIDE_PX = 3


@dataclass(frozen=True)
class Correction:
    """A corrected image: the image file and its label image."""

    image: Path
    labels: Path

    @property
    def name(self) -> str:
        return self.image.stem


def label_key(path: Path) -> str:
    """The image name a label file belongs to: its stem without a label suffix."""
    stem = path.stem
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def expand(inputs: list[Path]) -> list[Path]:
    """Files as given; directories expanded to their image files (sorted, not recursive)."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def pair_corrections(images: list[Path], labels: list[Path]) -> list[Correction]:
    """Pair image files with label files by name; DataError with one line per file that has
    no partner or a name used twice."""
    problems: list[str] = []
    by_key: dict[str, Path] = {}
    for img in images:
        if img.stem in by_key:
            problems.append(
                f"{img}: a second image named {img.stem} ({by_key[img.stem]}); rename one"
            )
        by_key[img.stem] = img
    paired: dict[str, Path] = {}
    for lab in labels:
        key = label_key(lab)
        if key not in by_key:
            problems.append(
                f"{lab}: matches no image (expected an image named {key} with a "
                f"{'/'.join(IMAGE_SUFFIXES)} suffix); pass its image or rename it"
            )
        elif key in paired:
            problems.append(
                f"{lab}: a second label image for {by_key[key]} ({paired[key]}); keep one"
            )
        else:
            paired[key] = lab
    for key, img in by_key.items():
        if key not in paired:
            problems.append(
                f"{img}: no label image for it (expected {key}_labels.tif); pass its labels or "
                "leave the image out"
            )
    if problems:
        raise DataError("\n".join(problems))
    if not paired:
        raise DataError("no corrected images given; pass images and their label images")
    return [Correction(by_key[k], paired[k]) for k in sorted(paired)]


def read_labels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A label image as int64 (0 background, each other value one cell), checked against its
    image's (height, width); DataError naming the file and the fix otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            labels = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                labels = np.asarray(im)
    except Exception as e:
        raise DataError(
            f"{path}: cannot be read as a label image ({type(e).__name__}); save it as an "
            "integer TIFF or PNG"
        ) from None
    labels = np.squeeze(labels)
    if labels.ndim != 2:
        raise DataError(
            f"{path}: a label image is one 2-D plane of cell ids, got shape {labels.shape}; "
            "save the labels layer alone (napari: Save selected layer)"
        )
    integral = np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and np.array_equal(labels, np.round(labels))
    )
    if not integral:  # a binary mask (bool), probabilities, or another kind of array
        raise DataError(
            f"{path}: labels must be integer cell ids, got {labels.dtype} values; save "
            "an integer label image (0 background, 1..N cells), not a mask or probabilities"
        )
    if labels.shape != tuple(shape):
        raise DataError(
            f"{path}: labels are {labels.shape[1]}x{labels.shape[0]} px, its image is "
            f"{shape[1]}x{shape[0]}; correct the labels of this image, at its size"
        )
    if labels.min() < 0:
        raise DataError(f"{path}: negative label values; use 0 for background, 1..N for cells")
    labels = labels.astype(np.int64)
    if not labels.any():
        raise DataError(
            f"{path}: no cell is labelled (all 0); label the cells of this image, or leave it out"
        )
    return labels


def label_annotations(labels: np.ndarray, image_id: int, first_id: int) -> tuple[list[dict], int]:
    """COCO annotations (RLE) of a label image, one per cell id, ids from `first_id`; and
    how many labels were fragments (under MIN_CELL_PX pixels or MIN_CELL_SIDE_PX wide), left
    out."""
    anns, fragments = [], 0
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.zeros(labels.shape, bool)
        mask[box] = labels[box] == value
        ys, xs = box
        narrow = min(ys.stop - ys.start, xs.stop - xs.start) < MIN_CELL_SIDE_PX
        if narrow or mask[box].sum() < MIN_CELL_PX:
            fragments += 1
            continue
        rle = encode_mask(mask)
        anns.append(
            {
                "id": first_id + len(anns),
                "image_id": image_id,
                "category_id": 1,
                "segmentation": rle,
                "area": int(mask[box].sum()),
                "bbox": [xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
                "iscrowd": 0,
            }
        )
    return anns, fragments


@dataclass
class Prepared:
    """Corrections read, checked and written as a tile stage output (train/, val/ + json)."""

    tiles: Path
    train_doc: dict  # the training tiles' doc (tiles/train.json)
    train: list[str]  # image names trained on (a single image: its rows of tiles)
    val: list[str]
    cells: int
    train_tiles: int
    val_tiles: int
    fragments: int = 0  # labels under MIN_CELL_PX px, left out


def cover_starts(grid: int, window: int) -> list[int]:
    """Window starts along one axis that cover the grid, neighbours sharing one mini-tile:
    0, 2, 4 for the 7x7 grid and 3x3 window (3 of the 5 positions)."""
    starts = list(range(0, grid - window + 1, max(1, window - 1)))
    return starts if starts[-1] == grid - window else [*starts, grid - window]


def covering_tiles(doc: dict, grid: int, window: int) -> dict:
    """The tiles of a tile doc that cover each image once over, neighbours overlapping by a
    mini-tile (9 of 25 per image): the held-out tiles validated after every epoch. All 25
    count a cell up to nine times and take 2.8x as long to validate, the largest share of a
    fine-tuning round after training itself."""
    starts = set(cover_starts(grid, window))
    images = [t for t in doc["images"] if t["row"] in starts and t["col"] in starts]
    ids = {t["id"] for t in images}
    return doc | {
        "images": images,
        "annotations": [a for a in doc["annotations"] if a["image_id"] in ids],
    }


def repeat_tiles(doc: dict, at_least: int) -> tuple[dict, int]:
    """A tile doc listing every tile k times (k the fewest that make `at_least` entries), each
    copy an entry of its own: the engine's seeded draw of an epoch's tiles then fills the
    epoch, and each copy gets flips and rotations of its own. One corrected image has 10
    training tiles: without repeats its epoch is 3 steps, not the 10 of four images. Returns
    the doc and k."""
    n = len(doc["images"])
    k = max(1, math.ceil(at_least / n)) if n else 1
    if k == 1:
        return doc, 1
    images, annotations = [], []
    by_tile: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        by_tile.setdefault(a["image_id"], []).append(a)
    for _ in range(k):
        for t in doc["images"]:
            images.append(t | {"id": len(images) + 1})
            annotations += [
                a | {"id": len(annotations) + j + 1, "image_id": images[-1]["id"]}
                for j, a in enumerate(by_tile.get(t["id"], []))
            ]
    return doc | {"images": images, "annotations": annotations}, k


def replay_tiles(doc: dict, base: dict, count: int, *, seed: int) -> dict:
    """`doc` with `count` tiles of `base` (the tile doc the model was trained on) added: a
    seeded draw, each an entry of its own (ids after doc's, files under replay/). Training on
    them beside the corrections keeps what the model knew of the other cells."""
    count = min(count, len(base["images"]))
    if count <= 0:
        return doc
    chosen = np.random.default_rng(seed).choice(len(base["images"]), count, replace=False)
    picked = [base["images"][i] for i in sorted(chosen.tolist())]
    by_tile: dict[int, list[dict]] = {t["id"]: [] for t in picked}
    for a in base["annotations"]:
        if a["image_id"] in by_tile:
            by_tile[a["image_id"]].append(a)
    image_id = max((t["id"] for t in doc["images"]), default=0)
    ann_id = max((a["id"] for a in doc["annotations"]), default=0)
    images, annotations = list(doc["images"]), list(doc["annotations"])
    for t in picked:
        image_id += 1
        images.append(t | {"id": image_id, "file_name": f"replay/{t['file_name']}"})
        for a in by_tile[t["id"]]:
            ann_id += 1
            annotations.append(a | {"id": ann_id, "image_id": image_id})
    return doc | {"images": images, "annotations": annotations}


def read_replay(tiles: Path) -> dict:
    """The training tiles of a tile stage output (tiles/train.json, tiles/train/); DataError
    naming what is missing otherwise."""
    doc_path, image_dir = tiles / "train.json", tiles / "train"
    if not doc_path.is_file() or not image_dir.is_dir():
        raise DataError(
            f"{tiles}: no train.json and train/ to replay; pass the tile stage's output the "
            "model was trained on (data/tiles), or set finetune.replay to 0"
        )
    doc = json.loads(doc_path.read_text())
    missing = [t["file_name"] for t in doc["images"] if not (image_dir / t["file_name"]).is_file()]
    if missing:
        raise DataError(
            f"{image_dir}: {len(missing)} of the {len(doc['images'])} tiles {doc_path} lists are "
            f"missing (first: {missing[0]}); rerun the tile stage (dvc repro tile)"
        )
    return doc


def prepare(
    corrections: list[Correction], tile: TileConfig, work: Path, *, holdout: float, seed: int
) -> Prepared:
    """Read and check every correction (all before any tile is written), then tile them into
    work/tiles/{train,val} with their json, as the tile stage lays out its output."""
    images, docs, notes, fragments = [], [], [], 0
    for i, c in enumerate(corrections, start=1):
        pixels, conv = load_image(c.image)
        notes += [f"{c.image}: {n}" for n in conv]
        labels = read_labels(c.labels, pixels.shape)
        images.append(pixels)
        docs.append((i, labels))
    for note in notes:
        log.warning("%s", note)
    src = work / "images"
    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
    for c, pixels, (i, labels) in zip(corrections, images, docs, strict=True):
        file_name = f"{c.name}.tif"
        write_gray(src / file_name, pixels)
        h, w = pixels.shape
        doc["images"].append({"id": i, "file_name": file_name, "height": h, "width": w})
        anns, skipped = label_annotations(labels, i, len(doc["annotations"]) + 1)
        if skipped:
            log.warning(
                "%s: %d label(s) of fewer than %d px or narrower than %d px left out as "
                "fragments, not cells",
                c.labels,
                skipped,
                MIN_CELL_PX,
                MIN_CELL_SIDE_PX,
            )
        doc["annotations"] += anns
        fragments += skipped
    n = len(corrections)
    tiles = work / "tiles"
    kw = {"grid": tile.grid, "window": tile.window, "min_visible": tile.min_visible}
    if n == 1:  # split in space: the last row of tiles held out, rows overlapping it dropped
        all_tiles, _ = tile_split(doc, src, tiles / "all", desc="tile corrections", **kw)
        last = tile.grid - tile.window

        def rows(keep) -> dict:
            entries = [t for t in all_tiles["images"] if keep(t["row"])]
            ids = {t["id"] for t in entries}
            annotations = [a for a in all_tiles["annotations"] if a["image_id"] in ids]
            return all_tiles | {"images": entries, "annotations": annotations}

        split_docs = {
            "train": rows(lambda r: r + tile.window <= last),
            "val": covering_tiles(rows(lambda r: r == last), tile.grid, tile.window),
        }
        for split, split_doc in split_docs.items():
            (tiles / split).mkdir(parents=True)
            for t in split_doc["images"]:
                os.link(tiles / "all" / t["file_name"], tiles / split / t["file_name"])
            write_json(tiles / f"{split}.json", split_doc)
        name = corrections[0].name
        names = {
            "train": [f"{name} (tile rows 0-{last - tile.window})"],
            "val": [f"{name} (tile row {last})"],
        }
    else:
        k = max(1, round(n * holdout))
        held = set(np.random.default_rng(seed).permutation(n)[:k].tolist())
        names, split_docs = {}, {}
        for split, ids in (
            ("train", [i for i in range(n) if i not in held]),
            ("val", sorted(held)),
        ):
            keep = {doc["images"][i]["id"] for i in ids}
            part = doc | {
                "images": [im for im in doc["images"] if im["id"] in keep],
                "annotations": [a for a in doc["annotations"] if a["image_id"] in keep],
            }
            split_doc, _ = tile_split(part, src, tiles / split, desc=f"tile {split}", **kw)
            if split == "val":
                split_doc = covering_tiles(split_doc, tile.grid, tile.window)
            write_json(tiles / f"{split}.json", split_doc)
            names[split], split_docs[split] = [corrections[i].name for i in ids], split_doc
    return Prepared(
        tiles,
        split_docs["train"],
        names["train"],
        names["val"],
        len(doc["annotations"]),
        len(split_docs["train"]["images"]),
        len(split_docs["val"]["images"]),
        fragments,
    )


def finetune_config(
    ckpt: dict, cfg: FinetuneConfig, *, iou_thresh: float, device: str, workers: int
) -> FitConfig:
    """The engine's FitConfig for fine-tuning a checkpoint: its recorded training settings
    (batch, augmentation, validation, seed, precision), one phase of cfg.epochs with its own
    optimizer at cfg.lr_ratio times its learning rate, every held-out tile validated."""
    name, recorded = ckpt["name"], ckpt["params"]
    train = parse_section(TrainConfig, recorded["train"], "train")
    own = recorded[name]
    if name == "custom":
        phase = Phase(
            epochs=cfg.epochs,
            optimizer="adamw",
            lr=own["lr"] * cfg.lr_ratio,
            weight_decay=own["weight_decay"],
            momentum=0.0,
            frozen_backbone=None,
            step_size=0,
            gamma=1.0,
        )
    else:
        phase = Phase(
            epochs=cfg.epochs,
            optimizer="sgd",
            lr=recorded["model"]["lr"] * cfg.lr_ratio,
            weight_decay=own["weight_decay"],
            momentum=own["momentum"],
            frozen_backbone=None,  # as the checkpoint's layout trains (COCO: 3 last stages)
            step_size=0,
            gamma=1.0,
        )
    return FitConfig(
        phases=(phase,),
        batch_size=own["batch_size"],
        warmup_steps=cfg.warmup_steps,
        grad_clip=train.grad_clip,
        max_tiles_per_epoch=cfg.tiles_per_epoch,
        max_val_tiles=0,
        augmentation=asdict(train.augment),
        val_mask_thresh=train.val_mask_thresh,
        val_score_thresh=train.val_score_thresh,
        val_iou_thresh=iou_thresh,
        val_detections_per_tile=train.val_detections_per_tile,
        seed=recorded["seed"],
        workers=workers,
        amp=train.amp,
        device=device,
    )


@contextlib.contextmanager
def norm_statistics_frozen(model: torch.nn.Module) -> Iterator[int]:
    """Batch-norm layers keep their running statistics while the model trains (their scale
    and shift still learn): a handful of corrected tiles, four to a batch, are too few to
    re-estimate them, and updating them alone (the learning rate near zero) lowered the
    held-out F1 of one dense corrected image by half. Yields how many layers it holds."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.train = types.MethodType(lambda self, mode=True: torch.nn.Module.train(self, False), m)
        m.eval()
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.train


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows one, a copy otherwise."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finetune(
    corrections: list[Correction],
    checkpoint: Path,
    out: Path,
    cfg: FinetuneConfig,
    *,
    iou_thresh: float,
    replay: Path | None = None,
    live_dir: Path | None = None,
    device: str = "auto",
    workers: int = 0,
) -> dict:
    """Fine-tune `checkpoint` on `corrections`; write the best epoch (held-out F1) to `out`.
    Validation counts a match at mask IoU `iou_thresh` (params.yaml's evaluate.iou_thresh).
    `replay`: the tile stage output the checkpoint was trained on; `cfg.replay` of each
    epoch's tiles are drawn from its training tiles (none without it).
    Returns the report: held-out F1 before and after, the split, the budget and the time.
    Every input is checked before anything is written; `out` is written once, at the end."""
    started = time.perf_counter()
    base = read_replay(replay) if replay is not None and cfg.replay > 0 else None
    if base is None and cfg.replay > 0:
        log.info("no tiles to replay given: training on the corrections alone")
    try:
        model, ckpt, _ = load_model(checkpoint, torch.device("cpu"))
    except LivecellsegError as e:
        raise LivecellsegError(f"{e} (fine-tuning starts from a trained checkpoint)") from None
    name, recorded = ckpt["name"], ckpt["params"]
    tile = parse_section(TileConfig, recorded["tile"], "tile")
    train = parse_section(TrainConfig, recorded["train"], "train")
    model_cfg = parse_section(ModelConfig, recorded["model"], "model")
    apply_inference(model, validation_settings(model_cfg, train))
    fit_cfg = finetune_config(ckpt, cfg, iou_thresh=iou_thresh, device=device, workers=workers)
    with tempfile.TemporaryDirectory(prefix="livecellseg-finetune-") as tmp:
        work = Path(tmp)
        prep = prepare(corrections, tile, work, holdout=cfg.holdout, seed=fit_cfg.seed)
        if prep.train_tiles == 0 or prep.val_tiles == 0:
            raise DataError(
                f"{corrections[0].image}: too small to tile into training and held-out parts; "
                "correct larger images"
            )
        log.info(
            "%d corrected image(s), %d cells: %d training tiles (%s), %d held-out tiles (%s)",
            len(corrections),
            prep.cells,
            prep.train_tiles,
            ", ".join(prep.train),
            prep.val_tiles,
            ", ".join(prep.val),
        )
        per_epoch = cfg.tiles_per_epoch or prep.train_tiles
        own_share = 1.0 if base is None else 1.0 - cfg.replay
        repeated, copies = repeat_tiles(prep.train_doc, math.ceil(per_epoch * own_share))
        if copies > 1:
            log.info(
                "%d training tiles, each listed %d times (its own flips and rotations) to fill "
                "an epoch of %d tiles",
                prep.train_tiles,
                copies,
                math.ceil(per_epoch * own_share),
            )
        replayed = 0
        if base is not None:  # replay: the epoch's draw takes cfg.replay of its tiles from them
            replayed = round(len(repeated["images"]) * cfg.replay / (1 - cfg.replay))
            repeated = replay_tiles(repeated, base, replayed, seed=fit_cfg.seed)
            replayed = len(repeated["images"]) - prep.train_tiles * copies
            (prep.tiles / "train" / "replay").mkdir()
            for t in repeated["images"][prep.train_tiles * copies :]:
                base_file = replay / "train" / t["file_name"].removeprefix("replay/")
                link_or_copy(base_file, prep.tiles / "train" / t["file_name"])
            # what the fine-tuned model saw, for its novelty check: corrections and replay
            write_json(
                prep.tiles / "train.json",
                replay_tiles(prep.train_doc, base, replayed, seed=fit_cfg.seed),
            )
            log.info(
                "replay: %d of the %d tiles the model was trained on (%s) listed beside the "
                "corrections, %.0f%% of each epoch",
                replayed,
                len(base["images"]),
                replay,
                100 * cfg.replay,
            )
        write_json(prep.tiles / "train_epochs.json", repeated)
        listed = len(repeated["images"])
        epoch_tiles = min(cfg.tiles_per_epoch, listed) if cfg.tiles_per_epoch else listed
        train_set = TileDataset(
            prep.tiles / "train_epochs.json",
            prep.tiles / "train",
            augmentation=fit_cfg.augmentation,
            seed=fit_cfg.seed,
        )
        val_set = TileDataset(prep.tiles / "val.json", prep.tiles / "val", seed=fit_cfg.seed)
        run_device = pick_device(device)
        before = evaluate(
            model.to(run_device),
            val_set,
            run_device,
            mask_thresh=fit_cfg.val_mask_thresh,
            score_thresh=fit_cfg.val_score_thresh,
            iou_thresh=fit_cfg.val_iou_thresh,
            max_detections=fit_cfg.val_detections_per_tile,
        )
        log.info(
            "held-out F1 before fine-tuning: %.4f (recall %.4f)", before["f1"], before["recall"]
        )
        identity = {
            "params": recorded,
            "run": (ckpt.get("run") or {})
            | {
                "finetuned_from": {"checkpoint": checkpoint.name, "md5": _md5(checkpoint)},
                "finetune": asdict(cfg),
                "corrections": {"train": prep.train, "val": prep.val, "cells": prep.cells},
            },
        }
        with norm_statistics_frozen(model):
            fit(
                model,
                train_set,
                val_set,
                fit_cfg,
                name=name,
                best_path=work / "best.pt",
                last_path=work / "last.pt",
                live_dir=live_dir or work / "live",
                identity=identity,
                resume=False,
            )
        record_training_look(model, work / "best.pt", prep.tiles, seed=fit_cfg.seed)
        best = load_checkpoint(work / "best.pt")
        with atomic_path(out) as tmp_out:
            shutil.copyfile(work / "best.pt", tmp_out)
    after = best["val"]
    report = {
        "model": name,
        "from": str(checkpoint),
        "out": str(out),
        "images": len(corrections),
        "cells": prep.cells,
        "fragments_left_out": prep.fragments,
        "train": prep.train,
        "val": prep.val,
        "train_tiles": prep.train_tiles,
        "replay_tiles": replayed,
        "val_tiles": prep.val_tiles,
        "epochs": cfg.epochs,
        "best_epoch": best["best_epoch"],
        "steps": cfg.epochs * math.ceil(epoch_tiles / fit_cfg.batch_size),
        "lr": fit_cfg.phases[0].lr,
        "before": {k: before[k] for k in ("f1", "precision", "recall", "miou")},
        "after": {k: after[k] for k in ("f1", "precision", "recall", "miou")},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if after["f1"] <= before["f1"]:
        log.warning(
            "fine-tuning did not raise the held-out F1 (%.4f before, %.4f after): %s may serve "
            "these cells better; correct more images or more cells",
            before["f1"],
            after["f1"],
            checkpoint,
        )
    return report
