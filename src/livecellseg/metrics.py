"""Instance matching and detection metrics on RLE masks (pure, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment

# Ground-truth mask areas (px) recall is reported in: most LIVECell cells are small
# (LIVECell's evaluation calls < 324 px "small"), so recall overall hides where cells are lost
AREA_BINS = (0, 100, 200, 400, 800, np.inf)


def match_pairs(
    gt: list[dict], pred: list[dict], iou_thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching on mask IoU (each GT and each prediction used once).

    Maximises the total IoU over pairs with IoU >= iou_thresh (Hungarian algorithm).
    Returns the indices of the matched GT masks and the IoUs of those pairs.
    """
    if not gt or not pred:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    iou = mask_utils.iou(pred, gt, [0] * len(gt))  # (n_pred, n_gt)
    rows, cols = linear_sum_assignment(np.where(iou >= iou_thresh, iou, 0.0), maximize=True)
    ious = iou[rows, cols]
    keep = ious >= iou_thresh
    return cols[keep], ious[keep]


def match_masks(gt: list[dict], pred: list[dict], iou_thresh: float) -> np.ndarray:
    """The IoUs of the pairs match_pairs matches."""
    return match_pairs(gt, pred, iou_thresh)[1]


def area_bin_names(bins: tuple[float, ...] = AREA_BINS) -> list[str]:
    """'0-100', '100-200', ..., '800+'."""
    return [
        f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}+"
        for lo, hi in zip(bins, bins[1:], strict=False)
    ]


@dataclass
class RecallByArea:
    """Ground-truth cells and those found, by mask area: per AREA_BINS bin, under 200 px
    and under LIVECell's "small" limit of 324 px."""

    areas: list[float] = field(default_factory=list)
    found: list[bool] = field(default_factory=list)

    def add(self, gt_areas: np.ndarray, matched_gt: np.ndarray) -> None:
        hit = np.zeros(len(gt_areas), dtype=bool)
        hit[matched_gt] = True
        self.areas.extend(np.asarray(gt_areas, dtype=float).tolist())
        self.found.extend(hit.tolist())

    def summary(self) -> dict[str, dict[str, float | int]]:
        areas, found = np.asarray(self.areas), np.asarray(self.found, dtype=bool)
        edges = list(zip(AREA_BINS, AREA_BINS[1:], strict=False)) + [(0, 200), (0, 324)]
        names = area_bin_names() + ["0-200", "small"]
        recall, cells = {}, {}
        for name, (lo, hi) in zip(names, edges, strict=True):
            inside = (areas >= lo) & (areas < hi)
            cells[name] = int(inside.sum())
            recall[name] = round(float(found[inside].mean()), 4) if inside.any() else 0.0
        return {"recall_by_area": recall, "gt_by_area": cells}


@dataclass
class DetectionCounts:
    """Running TP/FP/FN and matched IoUs; precision, recall, F1 and mean IoU from them."""

    gt: int = 0
    pred: int = 0
    tp: int = 0
    ious: list[float] = field(default_factory=list)

    def add(self, gt: list[dict], pred: list[dict], iou_thresh: float) -> None:
        self.add_matched(len(gt), len(pred), match_masks(gt, pred, iou_thresh))

    def add_matched(self, n_gt: int, n_pred: int, matched_ious: np.ndarray) -> None:
        """Counts of one image whose matching is already done (match_masks' output)."""
        self.gt += n_gt
        self.pred += n_pred
        self.tp += len(matched_ious)
        self.ious.extend(matched_ious.tolist())

    def summary(self) -> dict[str, float | int]:
        precision = self.tp / self.pred if self.pred else 0.0
        recall = self.tp / self.gt if self.gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        miou = float(np.mean(self.ious)) if self.ious else 0.0
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "miou": miou,
            "gt": self.gt,
            "pred": self.pred,
            "tp": self.tp,
        }
