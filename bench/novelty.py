"""Benchmark: which distance tells images unlike the training data from the test split.

For a trained checkpoint, each candidate distance is fitted as training fits it
(livecellseg.novelty: mean and shrunk covariance of pooled FPN features on train tiles,
threshold at the validation tiles' 99th percentile), then applied as prediction applies it
(median over an image's 25 stitched tiles) to:
- the sample's test split as it is (should be flagged <= 5%),
- the same images magnified 2x (centre crop, upscaled), shrunk 2x (downscaled, mirrored back
  to full size: a lower magnification), inverted, blurred (Gaussian sigma 2): all should be,
- the real LIVECell reference frames in ../shared/reference/livecell (reported).
Candidates: each FPN level alone, all levels together, and the image statistics alone
(mean grey and contrast, a 2-D Mahalanobis distance); and, for a checkpoint that records
one, the description training made (its levels, train tiles and threshold). Prints JSON.

    python bench/novelty.py --model models/custom.pt [--out docs/novelty_custom.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.transform import resize

from livecellseg.images import read_gray
from livecellseg.novelty import TrainingLook, fit_look, tile_features
from livecellseg.predict import load_model
from livecellseg.tiling import tile_windows

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "livecell"
ALL_LEVELS = ("0", "1", "2", "3", "pool")
CANDIDATES = {
    "fpn0": ("0",),
    "fpn1": ("1",),
    "fpn2": ("2",),
    "fpn3": ("3",),
    "fpn_pool": ("pool",),
    "fpn_all": ALL_LEVELS,
}


def magnified(im: np.ndarray) -> np.ndarray:
    h, w = im.shape
    crop = im[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
    return _u8(resize(crop, (h, w), order=1, preserve_range=True))


def shrunk(im: np.ndarray) -> np.ndarray:
    h, w = im.shape
    small = resize(im, (h // 2, w // 2), order=1, anti_aliasing=True, preserve_range=True)
    return _u8(np.pad(small, ((0, h - h // 2), (0, w - w // 2)), mode="symmetric"))


def inverted(im: np.ndarray) -> np.ndarray:
    return 255 - im


def blurred(im: np.ndarray) -> np.ndarray:
    return _u8(ndimage.gaussian_filter(im.astype(np.float32), 2.0))


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


TRANSFORMS = {
    "magnified_2x": magnified,
    "shrunk_2x": shrunk,
    "inverted": inverted,
    "blurred": blurred,
}


def image_tiles(im: np.ndarray, grid: int, window: int) -> list[np.ndarray]:
    return [im[w.y0 : w.y1, w.x0 : w.x1] for w in tile_windows(*im.shape, grid, window)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models/custom.pt")
    ap.add_argument("--tiles", type=Path, default=ROOT / "data/tiles")
    ap.add_argument("--split", type=Path, default=ROOT / "data/split/test.json")
    ap.add_argument("--images", type=Path, default=ROOT / "data/subset/images")
    ap.add_argument("--train-tiles", type=int, default=500)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    model, ckpt, settings = load_model(args.model, device)
    grid, window = settings.stitch.grid, settings.stitch.window
    seed = ckpt["params"]["seed"]  # the train tiles training described
    t0 = time.perf_counter()

    def split(name: str, limit: int = 0):
        doc = json.loads((args.tiles / f"{name}.json").read_text())
        images = doc["images"]
        if limit and len(images) > limit:
            pick = np.random.default_rng(seed).permutation(len(images))[:limit]
            images = [images[i] for i in sorted(pick)]
        ids = {im["id"] for im in images}
        areas = [a["area"] for a in doc["annotations"] if a["image_id"] in ids]
        return [read_gray(args.tiles / name / im["file_name"]) for im in images], areas

    train, areas = split("train", args.train_tiles)
    val, _ = split("val")
    feats = {
        "train": tile_features(model, train, device, ALL_LEVELS),
        "val": tile_features(model, val, device, ALL_LEVELS),
    }
    test = [
        read_gray(args.images / im["file_name"])
        for im in json.loads(args.split.read_text())["images"]
    ]
    sets = {"test": test} | {k: [f(im) for im in test] for k, f in TRANSFORMS.items()}
    refs = sorted(REFERENCE.glob("*.tif"))
    if refs:
        sets["reference"] = [read_gray(p) for p in refs]
    tiles_of = {k: [image_tiles(im, grid, window) for im in ims] for k, ims in sets.items()}
    image_feats = {
        k: [tile_features(model, t, device, ALL_LEVELS) for t in tl] for k, tl in tiles_of.items()
    }
    width = feats["train"].shape[1] // len(ALL_LEVELS)

    def cols(levels):
        return np.concatenate(
            [
                np.arange(ALL_LEVELS.index(lv) * width, (ALL_LEVELS.index(lv) + 1) * width)
                for lv in levels
            ]
        )

    def stats(ts):
        return np.array([[t.mean(), t.std()] for t in ts], np.float64)

    results = {}
    candidates = [*CANDIDATES.items(), ("image_stats", None)]
    if "look" in ckpt:  # what the checkpoint recorded in training (its levels: LEVELS)
        candidates.append(("checkpoint", "recorded"))
    for name, levels in candidates:
        if levels == "recorded":
            look = TrainingLook.from_record(ckpt["look"])
            c = cols(look.levels)
            per_image = {k: [look.distances(f[:, c]) for f in fs] for k, fs in image_feats.items()}
        elif levels is None:  # mean grey and contrast per tile, the same Mahalanobis machinery
            look = fit_look(stats(train), stats(val), train, areas, levels=())
            per_image = {k: [look.distances(stats(t)) for t in tl] for k, tl in tiles_of.items()}
        else:
            c = cols(levels)
            look = fit_look(feats["train"][:, c], feats["val"][:, c], train, areas, levels=levels)
            per_image = {k: [look.distances(f[:, c]) for f in fs] for k, fs in image_feats.items()}
        row = {"threshold": round(look.threshold, 2)}
        for k, dists in per_image.items():
            med = np.array([np.median(d) for d in dists])
            row[k] = {
                "flagged": round(float((med > look.threshold).mean()), 3),
                "median_distance": round(float(np.median(med)), 2),
                "min_distance": round(float(med.min()), 2),
            }
        results[name] = row
    out = {
        "bench": "novelty",
        "model": str(args.model),
        "name": ckpt["name"],
        "train_tiles": len(train),
        "val_tiles": len(val),
        "test_images": len(test),
        "reference_frames": len(refs),
        "seconds": round(time.perf_counter() - t0, 1),
        "candidates": results,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
