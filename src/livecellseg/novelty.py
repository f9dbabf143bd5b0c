"""Is an image like the ones a model was trained on? A Mahalanobis distance on the model's own
pooled FPN features, with a threshold set on held-out validation tiles.

At the end of training, `describe_training_data` runs the trained model's transform and
backbone on train tiles (mean and Ledoit-Wolf-shrunk covariance of the features pooled per
tile) and on validation tiles (the distances the model meets on data it did not train on:
the threshold is their `quantile`). It records image statistics beside them: each tile's
mean grey and contrast (std), and the median area of the train cells. The description is a
plain dict of tensors and numbers, stored in the checkpoint (`TrainingLook.record`).

At prediction, `FeatureTap` pools the same features from the forward pass the model makes
anyway, per tile (stitched mode) or per tile window of the whole-image feature maps (whole
mode), so the distance costs no extra network pass. An image's distance is the median of its
tiles' distances, so a shift that moves most of the image is flagged and one odd tile is not.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from livecellseg.datasets import gray_to_tensor
from livecellseg.images import read_gray

# FPN levels pooled (each level's 256 channels, concatenated). bench/novelty.py measured
# each level alone, all together and image statistics alone (docs/novelty_custom.json):
# only all levels together flagged every magnified, shrunk, inverted and blurred test image
# while flagging no untouched one.
LEVELS = ("0", "1", "2", "3", "pool")
QUANTILE = 0.99
Region = tuple[float, float, float, float]  # y0, y1, x0, x1 as fractions of the image
FULL: Region = (0.0, 1.0, 0.0, 1.0)


def pool_features(
    features: dict[str, torch.Tensor],
    image_sizes: Sequence[tuple[int, int]],
    padded_height: int,
    regions: Sequence[Sequence[Region]],
    levels: Sequence[str],
) -> list[np.ndarray]:
    """Per batch image i, a (len(regions[i]), channels x levels) array: the mean of each
    level's feature map over each region (fractions of the image), padding excluded.
    `image_sizes` are the images' sizes at the model's input, `padded_height` the batch's
    (a multiple of every level's stride, so the stride is exact)."""
    out = []
    for i, ((h, w), regs) in enumerate(zip(image_sizes, regions, strict=True)):
        rows = []
        for fy0, fy1, fx0, fx1 in regs:
            parts = []
            for level in levels:
                fmap = features[level][i]
                stride = padded_height / fmap.shape[-2]
                y0, x0 = math.floor(fy0 * h / stride), math.floor(fx0 * w / stride)
                y1 = max(y0 + 1, math.ceil(fy1 * h / stride))
                x1 = max(x0 + 1, math.ceil(fx1 * w / stride))
                parts.append(fmap[:, y0:y1, x0:x1].float().mean((1, 2)))
            rows.append(torch.cat(parts))
        out.append(torch.stack(rows).cpu().numpy().astype(np.float64))
    return out


class FeatureTap:
    """Records what a torchvision Mask R-CNN's transform and backbone produce in its forward
    pass, and pools it per region (`pooled`). Hooks are removed when `tapped` ends."""

    def __init__(self, levels: Sequence[str] = LEVELS):
        self.levels = tuple(levels)
        self._features: dict[str, torch.Tensor] = {}
        self._sizes: list[tuple[int, int]] = []
        self._height = 0

    @contextlib.contextmanager
    def tapped(self, model: torch.nn.Module) -> Iterator[FeatureTap]:
        def on_transform(_module, _inputs, output):
            images = output[0]
            self._sizes = [tuple(s) for s in images.image_sizes]
            self._height = images.tensors.shape[-2]

        def on_backbone(_module, _inputs, output):
            self._features = {k: output[k].detach() for k in self.levels}

        handles = [
            model.transform.register_forward_hook(on_transform),
            model.backbone.register_forward_hook(on_backbone),
        ]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def pooled(self, regions: Sequence[Sequence[Region]] | None = None) -> list[np.ndarray]:
        """The last forward pass's features pooled per region of each batch image (default:
        the whole image), then forgotten."""
        if not self._features:
            raise RuntimeError("FeatureTap.pooled before a forward pass")
        regions = regions or [[FULL]] * len(self._sizes)
        out = pool_features(self._features, self._sizes, self._height, regions, self.levels)
        self._features = {}
        return out


@torch.inference_mode()
def tile_features(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    device: torch.device,
    levels: Sequence[str] = LEVELS,
    batch_size: int = 8,
) -> np.ndarray:
    """(n, d) pooled features of gray tiles, through the model's transform and backbone only."""
    tap, rows = FeatureTap(levels), []
    with tap.tapped(model):
        for i in range(0, len(images), batch_size):
            batch = [gray_to_tensor(im).to(device) for im in images[i : i + batch_size]]
            image_list, _ = model.transform(batch)
            model.backbone(image_list.tensors)
            rows.extend(tap.pooled())
    return np.concatenate(rows) if rows else np.zeros((0, 0))


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, Ledoit-Wolf shrunk covariance (towards a scaled identity) and the shrinkage of
    the rows of `x` (n, d): the estimate scikit-learn's LedoitWolf makes, so that a
    covariance of ~256 features from a few hundred tiles can be inverted."""
    n, d = x.shape
    mean = x.mean(0)
    xc = x - mean
    emp = xc.T @ xc / n
    mu = np.trace(emp) / d
    x2 = xc**2
    beta_ = np.sum(x2.T @ x2)
    delta_ = np.sum(emp**2)
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * np.trace(emp) + d * mu**2) / d
    shrinkage = 0.0 if beta == 0 else min(beta, delta) / delta
    cov = (1 - shrinkage) * emp + shrinkage * mu * np.eye(d)
    return mean, cov, float(shrinkage)


@dataclass(frozen=True)
class Look:
    """What an image looked like to the model: its distance to the training data (the median
    of its tiles'), whether that is above the threshold, and image statistics as z-scores
    against the train tiles'."""

    distance: float
    unlike: bool
    grey_z: float  # mean grey, in train-tile sd (at least 1 grey level)
    contrast_z: float  # grey std, likewise

    def reasons(self) -> str:
        """Plain words for the log and the app."""
        words = []
        if abs(self.grey_z) > 3:
            words.append(f"{'brighter' if self.grey_z > 0 else 'darker'} ({self.grey_z:+.1f} sd)")
        if abs(self.contrast_z) > 3:
            more = "more" if self.contrast_z > 0 else "less"
            words.append(f"{more} contrast ({self.contrast_z:+.1f} sd)")
        return ", ".join(words)


@dataclass(frozen=True)
class TrainingLook:
    """The description of a model's training data that a checkpoint carries."""

    levels: tuple[str, ...]
    mean: np.ndarray
    precision: np.ndarray  # inverse of the shrunk covariance
    threshold: float  # the validation tiles' `quantile` of distance
    quantile: float
    grey: tuple[float, float]  # mean and sd over train tiles of their mean grey
    contrast: tuple[float, float]  # the same of their grey std
    cell_area: float  # median area of a train cell, px
    tiles: tuple[int, int]  # train and validation tiles described

    def distances(self, x: np.ndarray) -> np.ndarray:
        d = x - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))

    def look(self, features: np.ndarray, tiles: Sequence[np.ndarray]) -> Look:
        """The look of one image from its tiles' pooled features and pixels."""
        distance = float(np.median(self.distances(features)))
        grey = float(np.mean([t.mean() for t in tiles]))
        contrast = float(np.mean([t.std() for t in tiles]))
        # sd of at least one grey level: the sample's tiles all have mean grey ~128.0
        return Look(
            distance,
            distance > self.threshold,
            (grey - self.grey[0]) / max(self.grey[1], 1.0),
            (contrast - self.contrast[0]) / max(self.contrast[1], 1.0),
        )

    def record(self) -> dict:
        """A checkpoint entry (tensors and numbers: loads with weights_only)."""
        return {
            "levels": list(self.levels),
            "mean": torch.from_numpy(self.mean.astype(np.float32)),
            "precision": torch.from_numpy(self.precision.astype(np.float32)),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "grey": list(self.grey),
            "contrast": list(self.contrast),
            "cell_area": self.cell_area,
            "tiles": list(self.tiles),
        }

    @classmethod
    def from_record(cls, rec: dict) -> TrainingLook:
        return cls(
            tuple(rec["levels"]),
            rec["mean"].double().numpy(),
            rec["precision"].double().numpy(),
            float(rec["threshold"]),
            float(rec["quantile"]),
            tuple(rec["grey"]),
            tuple(rec["contrast"]),
            float(rec["cell_area"]),
            tuple(rec["tiles"]),
        )


def fit_look(
    train_features: np.ndarray,
    val_features: np.ndarray,
    train_tiles: Sequence[np.ndarray],
    cell_areas: Sequence[float],
    *,
    levels: Sequence[str] = LEVELS,
    quantile: float = QUANTILE,
) -> TrainingLook:
    """A TrainingLook from train-tile features (the distribution) and validation-tile
    features (the threshold)."""
    mean, cov, _ = ledoit_wolf(train_features)
    precision = np.linalg.inv(cov)
    greys = np.array([t.mean() for t in train_tiles])
    stds = np.array([t.std() for t in train_tiles])
    partial = TrainingLook(
        tuple(levels), mean, precision, 0.0, quantile, (0, 1), (0, 1), 0.0, (0, 0)
    )
    threshold = float(np.quantile(partial.distances(val_features), quantile))
    return TrainingLook(
        tuple(levels),
        mean,
        precision,
        threshold,
        quantile,
        (float(greys.mean()), float(greys.std())),
        (float(stds.mean()), float(stds.std())),
        float(np.median(cell_areas)) if len(cell_areas) else 0.0,
        (len(train_features), len(val_features)),
    )


def describe_training_data(
    model: torch.nn.Module,
    tiles: Path,
    device: torch.device,
    *,
    max_train_tiles: int = 500,
    seed: int = 0,
    levels: Sequence[str] = LEVELS,
    quantile: float = QUANTILE,
) -> TrainingLook:
    """Describe the train tiles (at most `max_train_tiles`, drawn with `seed`) and threshold
    on every validation tile of the tile stage's output `tiles`."""

    def split(name: str, limit: int) -> tuple[list[np.ndarray], list[float]]:
        doc = json.loads((tiles / f"{name}.json").read_text())
        images = doc["images"]
        if limit and len(images) > limit:
            pick = np.random.default_rng(seed).permutation(len(images))[:limit]
            images = [images[i] for i in sorted(pick)]
        pixels = [read_gray(tiles / name / im["file_name"]) for im in images]
        ids = {im["id"] for im in images}
        areas = [a["area"] for a in doc["annotations"] if a["image_id"] in ids]
        return pixels, areas

    was_training = model.training
    model.eval()
    train_tiles, areas = split("train", max_train_tiles)
    val_tiles, _ = split("val", 0)
    train_x = tile_features(model, train_tiles, device, levels)
    val_x = tile_features(model, val_tiles, device, levels)
    model.train(was_training)
    return fit_look(train_x, val_x, train_tiles, areas, levels=levels, quantile=quantile)
