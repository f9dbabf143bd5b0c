"""Benchmark: how far the embedded sample is from real LIVECell frames (the realism gap).

A logistic regression on texture features (intensity percentiles, gradient statistics, the
radially averaged power spectrum, local binary patterns) learns to tell 128x128 tiles of the
real reference frames (../shared/reference/livecell) from tiles of generated images of the
same size. Its cross-validated balanced accuracy is the gap: 0.5 = indistinguishable, 1.0 =
told apart every time. Folds are grouped by source image, so no image is in train and test.
Measured for a simple generator (bench/sample_v1.py) and the current one, on all
eight cell lines and on SH-SY5Y alone (the line the references show; the sample's SH-SY5Y
as two time-lapse series imaged at the reference frames' elapsed hours), with intensity,
gradient and spectrum statistics side by side and the cells per image per line.

It also measures what makes a cell visible (bench/look.py: profiles across thin bright and
dark lines, cell level and texture, granules, background noise) on the reference frames and
on the sample, and with --profiles draws those profiles, the tiles' power spectra and their
contrast side by side. With --figure it writes a PNG of reference, old and new tiles side by
side; with --model (once or more) a trained checkpoint's outlines on every reference frame
(PNGs in --overlays/<checkpoint name>, and with two or more, a PNG of every frame's crop under
each model side by side, --outlines) and its cell count per frame (the frames are one well
over 3.5 days: the count should grow).

    pip install -e .[bench]   # scikit-learn
    python bench/realism.py [--images 16] [--figure docs/realism.png]
        [--profiles docs/realism_profiles.png]
        [--model models/custom.pt [--model other.pt --outlines both.png]]
        [--overlays realism_overlays]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.feature import local_binary_pattern
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
import look  # noqa: E402
import sample_v1  # noqa: E402

from livecellseg.images import read_gray  # noqa: E402
from livecellseg.livecell import parse_name  # noqa: E402
from livecellseg.sample import LOOKS, generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TILE = 128
FOLDS = 5
W, H = 704, 520


def tiles_of(image: np.ndarray) -> list[np.ndarray]:
    return [
        image[y : y + TILE, x : x + TILE]
        for y in range(0, H - TILE + 1, TILE)
        for x in range(0, W - TILE + 1, TILE)
    ]


def power_spectrum(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean-removed tile's power spectrum (centred) and each entry's radial frequency."""
    f = np.abs(np.fft.fftshift(np.fft.fft2(tile - tile.mean()))) ** 2
    return f, np.hypot(*(np.indices(f.shape) - TILE // 2))


def radial_spectrum(tile: np.ndarray, bands: int = 8) -> np.ndarray:
    """Share of the (mean-removed) power in log-spaced radial frequency bands."""
    f, r = power_spectrum(tile)
    edges = np.geomspace(1, TILE // 2, bands + 1)
    power = np.array(
        [f[(r >= a) & (r < b)].sum() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    )
    return power / max(power.sum(), 1e-9)


def features(tile: np.ndarray) -> np.ndarray:
    t = tile.astype(np.float64)
    gy, gx = np.gradient(ndimage.gaussian_filter(t, 0.7))
    grad = np.hypot(gx, gy)
    lbp = local_binary_pattern(tile, 8, 1, method="uniform")
    return np.concatenate(
        [
            [t.mean(), t.std()],
            np.percentile(t, [1, 5, 25, 50, 75, 95, 99]) - t.mean(),
            [grad.mean(), grad.std(), np.percentile(grad, 90), ndimage.laplace(t).std()],
            np.log(radial_spectrum(t) + 1e-9),
            np.bincount(lbp.astype(int).ravel(), minlength=10)[:10] / lbp.size,
        ]
    )


def spectral_slope(tile: np.ndarray) -> float:
    """Slope of log mean power against log frequency, 2 to 32 cycles per tile."""
    f, r = power_spectrum(tile)
    r = np.rint(r).astype(int)
    radii = np.arange(2, 33)
    power = ndimage.mean(f, labels=r, index=radii)
    return float(np.polyfit(np.log(radii), np.log(power), 1)[0])


def image_stats(images: list[np.ndarray]) -> dict[str, float]:
    """Mean over images of: grey mean and std, gradient magnitude, spectral slope."""
    rows = []
    for im in images:
        t = im.astype(np.float64)
        slope = np.mean([spectral_slope(x.astype(np.float64)) for x in tiles_of(im)])
        rows.append([t.mean(), t.std(), np.hypot(*np.gradient(t)).mean(), slope])
    m = np.mean(rows, 0)
    return {"mean": m[0], "std": m[1], "gradient": m[2], "spectral_slope": m[3]}


def gap(reference: list[np.ndarray], generated: list[np.ndarray]) -> dict[str, float]:
    """Cross-validated balanced accuracy of telling reference tiles from generated ones."""
    x, y, fold = [], [], []
    for label, images in ((1, reference), (0, generated)):
        for k, im in enumerate(images):
            for t in tiles_of(im):
                x.append(features(t))
                y.append(label)
                fold.append(k % FOLDS)  # whole images per fold, both classes in each
    fold = np.array(fold)
    splits = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(FOLDS)]
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    scores = cross_val_score(clf, np.array(x), np.array(y), cv=splits, scoring="balanced_accuracy")
    return {"accuracy": float(scores.mean()), "accuracy_sd": float(scores.std()), "tiles": len(y)}


def counts_per_line(items) -> dict[str, dict[str, float]]:
    per: dict[str, list[int]] = {}
    for line, n in items:
        per.setdefault(line, []).append(n)
    return {
        line: {"mean": float(np.mean(n)), "min": int(min(n)), "max": int(max(n)), "images": len(n)}
        for line, n in per.items()
    }


def grid(rows: list[list[np.ndarray]], gap: int = 4) -> np.ndarray:
    """Equal-sized crops (grey or RGB) laid out in rows, with white gaps between them."""

    def pad(x, axis):
        shape = list(x.shape)
        shape[axis] = gap
        return np.full(shape, 255, np.uint8)

    lines = [np.concatenate([y for x in row for y in (x, pad(x, 1))][:-1], 1) for row in rows]
    return np.concatenate([y for x in lines for y in (x, pad(x, 0))][:-1], 0)


def figure(path: Path, reference, old, new, lines) -> None:
    """Rows: reference crops; old generator; new generator (one crop per cell line)."""
    from livecellseg.visualize import save_png

    crop = 160
    pick = lambda ims: [im[180 : 180 + crop, 270 : 270 + crop] for im in ims]  # noqa: E731
    ref = pick(reference[:: max(1, len(reference) // len(lines))][: len(lines)])
    save_png(path, grid([ref, pick(old), pick(new)]))


def model_on_references(model: Path, names, reference, out: Path) -> dict[str, int]:
    """The model's outlines on each reference frame (PNGs in `out`) and its count per frame."""
    import torch

    from livecellseg.predict import Predictor
    from livecellseg.runtime import pick_device
    from livecellseg.visualize import overlay, save_png

    predictor, _ = Predictor.from_checkpoint(model, pick_device("auto"))
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    with torch.inference_mode():
        for name, image in zip(names, reference, strict=True):
            det, _ = predictor(image)
            keep = det.above(predictor.score_thresh)
            save_png(out / f"{Path(name).stem}.png", overlay(image, [det.rles[i] for i in keep]))
            counts[name] = len(keep)
    return counts


def outlines_side_by_side(path: Path, dirs: list[Path], names: list[str]) -> None:
    """One row per reference frame: the same 200x300 crop of each model's overlay."""
    from PIL import Image

    from livecellseg.visualize import save_png

    rows = [
        [np.asarray(Image.open(d / f"{Path(name).stem}.png"))[160:360, 200:500] for d in dirs]
        for name in names
    ]
    save_png(path, grid(rows, gap=6))


def profiles_figure(path: Path, looks: dict[str, dict], spectra: dict[str, np.ndarray]) -> None:
    """Mean profiles across bright and dark lines, radial power spectra and tile contrast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for (label, m), colour in zip(looks.items(), ("black", "tab:orange", "tab:blue"), strict=False):
        axes[0].plot(look.OFFSETS, m["bright_profile"], color=colour, label=label)
        axes[1].plot(look.OFFSETS, m["dark_profile"], color=colour, label=label)
    for (label, (radii, power, stds)), colour in zip(
        spectra.items(), ("black", "tab:orange", "tab:blue", "tab:green"), strict=False
    ):
        axes[2].loglog(radii, power, color=colour, label=label)
        axes[3].hist(
            stds,
            bins=np.linspace(0, 20, 41),
            histtype="step",
            density=True,
            color=colour,
            label=label,
        )
    axes[0].set(
        title="across bright lines (membranes, processes)", xlabel="px", ylabel="grey - median"
    )
    axes[1].set(title="across dark lines", xlabel="px")
    axes[2].set(title="tile power spectrum", xlabel="cycles per 128 px", ylabel="mean power")
    axes[3].set(title="tile contrast (grey std)", xlabel="std", ylabel="share of tiles")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def tile_spectra(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radii 1..63, the tiles' mean radially averaged power, and each tile's grey std."""
    radii = np.arange(1, TILE // 2)
    power, stds = [], []
    for im in images:
        for t in tiles_of(im):
            f, r = power_spectrum(t.astype(np.float64))
            power.append(ndimage.mean(f, labels=np.rint(r).astype(int), index=radii))
            stds.append(t.std())
    return radii, np.mean(power, 0), np.array(stds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16, help="generated images per generator")
    p.add_argument("--reference", type=Path, default=ROOT.parent / "shared/reference/livecell")
    p.add_argument("--figure", type=Path, help="PNG: reference, old and new tiles")
    p.add_argument("--profiles", type=Path, help="PNG: line profiles, spectra, tile contrast")
    p.add_argument(
        "--model", type=Path, action="append", help="checkpoint to outline the reference frames"
    )
    p.add_argument("--overlays", type=Path, default=Path("realism_overlays"))
    p.add_argument("--outlines", type=Path, help="PNG: the models' outlines side by side")
    args = p.parse_args()

    names = sorted(f.name for f in args.reference.glob("*.tif"))
    if not names:
        sys.exit(f"{args.reference}: no reference .tif frames; pass --reference DIR")
    reference = [read_gray(args.reference / n) for n in names]
    lines = tuple(LOOKS)
    t0 = time.perf_counter()
    old = list(sample_v1.generate_images(args.images, lines, W, H, seed=0))
    t1 = time.perf_counter()
    new = [
        (line, img, len(polys))
        for _, line, img, polys in generate(
            n_images=args.images, empty_images=0, cell_lines=lines, width=W, height=H, seed=0
        )
    ]
    t2 = time.perf_counter()
    shsy_old = list(sample_v1.generate_images(args.images // 2, ("SHSY5Y",), W, H, seed=1))
    # SH-SY5Y as the reference frames are: time-lapse series imaged at their elapsed hours
    hours = tuple(parse_name(n).hours for n in names)
    shsy_new = [
        img
        for _, _, img, _ in generate(
            n_images=2 * len(hours),
            empty_images=0,
            cell_lines=("SHSY5Y",),
            width=W,
            height=H,
            seed=1,
            hours=hours,
        )
    ]
    result = {
        "reference_frames": len(reference),
        "generated_images": args.images,
        "tile": TILE,
        "realism_accuracy": {
            "old": gap(reference, [im for _, im, _ in old]),
            "new": gap(reference, [im for _, im, _ in new]),
            "old_shsy5y": gap(reference, [im for _, im, _ in shsy_old]),
            "new_shsy5y": gap(reference, shsy_new),
        },
        "stats": {
            "reference": image_stats(reference),
            "old": image_stats([im for _, im, _ in old]),
            "new": image_stats([im for _, im, _ in new]),
            "new_shsy5y": image_stats(shsy_new),
        },
        "look": {
            "reference": look.measure(reference),
            "sample_shsy5y": look.measure(shsy_new),
            "sample": look.measure([im for _, im, _ in new]),
        },
        "cells_per_image": {
            "old": counts_per_line((line, n) for line, _, n in old),
            "new": counts_per_line((line, n) for line, _, n in new),
        },
        "seconds_per_image": {
            "old": (t1 - t0) / args.images,
            "new": (t2 - t1) / args.images,
        },
    }
    if args.figure:
        figure(
            args.figure,
            reference,
            [im for _, im, _ in old[:8]],
            [im for _, im, _ in new[:8]],
            lines,
        )
        result["figure"] = str(args.figure)
    if args.profiles:
        looks = {
            "real frames": result["look"]["reference"],
            "sample, SH-SY5Y": result["look"]["sample_shsy5y"],
        }
        spectra = {
            "real frames": tile_spectra(reference),
            "sample, SH-SY5Y": tile_spectra(shsy_new),
            "sample, 8 lines": tile_spectra([im for _, im, _ in new]),
            "simple generator": tile_spectra([im for _, im, _ in old]),
        }
        profiles_figure(args.profiles, looks, spectra)
        result["profiles_figure"] = str(args.profiles)
    if args.model:
        result["model_cells_per_reference_frame"] = {
            str(m): model_on_references(m, names, reference, args.overlays / m.stem)
            for m in args.model
        }
        if args.outlines and len(args.model) > 1:
            outlines_side_by_side(
                args.outlines, [args.overlays / m.stem for m in args.model], names
            )
            result["outlines_figure"] = str(args.outlines)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
