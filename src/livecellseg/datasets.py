"""Tile datasets for training: COCO tiles -> (image tensor, Mask R-CNN target)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from livecellseg.images import read_gray


def augment(
    image: np.ndarray,
    masks: np.ndarray,
    rng: np.random.Generator,
    *,
    hflip: bool,
    vflip: bool,
    rot90: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and quarter turns of an (H, W) image and its (N, H, W) masks."""
    if hflip and rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if vflip and rng.random() < 0.5:
        image, masks = image[::-1], masks[:, ::-1]
    if rot90:
        k = int(rng.integers(4))
        image, masks = np.rot90(image, k), np.rot90(masks, k, axes=(1, 2))
    return np.ascontiguousarray(image), np.ascontiguousarray(masks)


def to_target(masks: np.ndarray, image_id: int) -> dict[str, torch.Tensor]:
    """Mask R-CNN target; boxes enclose the mask's pixels (x1, y1 exclusive, never empty)."""
    m = torch.from_numpy(masks.astype(np.uint8))
    if len(m):
        ys = m.any(dim=2)
        xs = m.any(dim=1)
        y0 = ys.float().argmax(dim=1)
        x0 = xs.float().argmax(dim=1)
        y1 = ys.shape[1] - ys.flip(1).float().argmax(dim=1)
        x1 = xs.shape[1] - xs.flip(1).float().argmax(dim=1)
        boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    else:
        boxes = torch.zeros((0, 4))
    return {
        "boxes": boxes,
        "labels": torch.ones(len(m), dtype=torch.int64),
        "masks": m,
        "image_id": torch.tensor(image_id),
    }


def gray_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> float (3, H, W) in [0, 1]; both models take 3 channels (COCO layout)."""
    return torch.from_numpy(image).float().div_(255).expand(3, -1, -1).contiguous()


class TileDataset(Dataset):
    """Tiles of one split as written by the `tile` stage.

    Augmentation draws from a generator seeded by (seed, epoch, index), so a sample is the
    same whatever the worker, the number of workers, or whether the run was resumed.
    """

    def __init__(
        self,
        coco_json: Path,
        image_dir: Path,
        *,
        augmentation: dict | None = None,
        seed: int = 0,
        limit: int = 0,
    ) -> None:
        doc = json.loads(Path(coco_json).read_text())
        self.images: list[dict[str, Any]] = doc["images"]
        if limit:
            order = np.random.default_rng(seed).permutation(len(self.images))[:limit]
            self.images = [self.images[i] for i in sorted(order)]
        ids = {img["id"] for img in self.images}
        self.anns: dict[int, list[dict]] = {i: [] for i in ids}
        for ann in doc["annotations"]:
            if ann["image_id"] in ids:
                self.anns[ann["image_id"]].append(ann)
        self.image_dir = Path(image_dir)
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.images[index]
        image = read_gray(self.image_dir / info["file_name"])
        rles = [a["segmentation"] for a in self.anns[info["id"]]]
        if rles:
            masks = mask_utils.decode(rles).transpose(2, 0, 1)
        else:
            masks = np.zeros((0, *image.shape), np.uint8)
        return image, masks

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, masks = self.load(index)
        if self.augmentation:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, masks = augment(image, masks, rng, **self.augmentation)
        return gray_to_tensor(image), to_target(masks, self.images[index]["id"])


def collate(batch):
    return tuple(zip(*batch, strict=True))
