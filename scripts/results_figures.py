"""The README's result figures, rendered from a finished `dvc repro` (and bench/learn.py runs).

    python scripts/results_figures.py [--image SkBr3] [--learn bench1.json bench2.json ...]

Writes docs/results_curves.png (training loss per step, val F1 per epoch against wall time,
both models, from metrics/train_<model>/), docs/results_overlay.png (one test image: ground
truth green, predictions magenta, each model; from plots/<model>/overlays/),
docs/threshold_curves.png (test P, R, F1 against the score threshold, from
plots/<model>/thresholds.csv) and, with
--learn, docs/learning_curves.png (val F1 against wall time for each bench/learn.py run).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

MODELS = ("custom", "transfer")


def read_tsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) columns of a dvclive TSV."""
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return np.array([float(r[0]) for r in rows]), np.array([float(r[-1]) for r in rows])


def smooth(y: np.ndarray, n: int = 10) -> np.ndarray:
    if len(y) < n:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def curves(out: Path) -> None:
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 4))
    for name in MODELS:
        live = Path("metrics") / f"train_{name}" / "plots" / "metrics"
        step, loss = read_tsv(live / "batch" / "loss.tsv")
        ax_loss.plot(step[len(step) - len(smooth(loss)) :], smooth(loss), label=name)
        _, f1 = read_tsv(live / "epoch" / "val_f1.tsv")
        _, wall = read_tsv(live / "epoch" / "wall_s.tsv")
        ax_f1.plot(wall / 60, f1, "o-", label=name)
    ax_loss.set(xlabel="step (batch)", ylabel="training loss (mean of 10 steps)", yscale="log")
    ax_f1.set(xlabel="wall time of training (min)", ylabel="val F1 (tiles, IoU 0.5)", ylim=(0, 1))
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Default `dvc repro` on the embedded sample (2 CPU cores)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def overlay(image: str, out: Path) -> None:
    fig, axes = plt.subplots(1, len(MODELS), figsize=(14, 5.4))
    for ax, name in zip(axes, MODELS, strict=True):
        path = next((Path("plots") / name / "overlays").glob(f"{image}_*.png"))
        ax.imshow(plt.imread(path), cmap="gray")
        ax.set_title(f"{name}: {path.stem} (ground truth green, predictions magenta)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def thresholds(out: Path) -> None:
    """Test P, R and F1 against the score threshold, each model (plots/<model>/thresholds.csv,
    the data `dvc plots show` draws), the operating threshold marked."""
    fig, axes = plt.subplots(1, len(MODELS), figsize=(11, 4), sharey=True)
    for ax, name in zip(axes, MODELS, strict=True):
        with open(Path("plots") / name / "thresholds.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        thresh = [float(r["score_thresh"]) for r in rows]
        for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
            ax.plot(thresh, [float(r[key]) for r in rows], "o-", ms=3, label=label)
        test = json.loads((Path("metrics") / f"{name}.json").read_text())
        ax.axvline(test["score_thresh"], color="grey", ls="--", lw=1, label="operating threshold")
        ax.set(title=name, xlabel="score threshold", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test split, IoU 0.5")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def learning_curves(runs: list[Path], out: Path) -> None:
    """Val F1 against wall time: each bench/learn.py run, and the default run (metrics/)."""
    fig, ax = plt.subplots(figsize=(9, 5))
    for path in runs:
        report = json.loads(path.read_text())
        for name in MODELS:
            if name not in report:
                continue
            epochs = report[name]["epochs"]
            test = report[name].get("stitched", {}).get("test")
            result = f"test F1 {test['f1']:.2f}, AP {test['ap']:.2f}" if test else "stopped"
            label = f"{path.stem}, {report['threads']} thread(s): {result}"
            wall = [e["wall_s"] / 60 for e in epochs]
            ax.plot(wall, [e["val_f1"] for e in epochs], "o--", label=label, alpha=0.8)
    for name in MODELS:
        live = Path("metrics") / f"train_{name}" / "plots" / "metrics" / "epoch"
        test = json.loads((Path("metrics") / f"{name}.json").read_text())
        _, f1 = read_tsv(live / "val_f1.tsv")
        _, wall = read_tsv(live / "wall_s.tsv")
        label = f"{name}, default run, 2 threads: test F1 {test['f1']:.2f}, AP {test['ap']:.2f}"
        ax.plot(wall / 60, f1, "s-", lw=2.5, label=label)
    ax.set(xlabel="wall time of training (min)", ylabel="val F1 (16 tiles, IoU 0.5)", ylim=(0, 1))
    ax.set_title("Learning curves on the embedded sample, 100 tiles per epoch (2-core CPU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", default="SkBr3", help="cell line of the test image shown")
    p.add_argument("--learn", nargs="*", type=Path, default=[], help="bench/learn.py JSONs")
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args()
    args.out.mkdir(exist_ok=True)
    curves(args.out / "results_curves.png")
    overlay(args.image, args.out / "results_overlay.png")
    thresholds(args.out / "threshold_curves.png")
    if args.learn:
        learning_curves(args.learn, args.out / "learning_curves.png")


if __name__ == "__main__":
    main()
