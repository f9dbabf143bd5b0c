"""Instance matching and detection metrics on RLE masks (pure, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment


def match_masks(gt: list[dict], pred: list[dict], iou_thresh: float) -> np.ndarray:
    """One-to-one matching on mask IoU (each GT and each prediction used once).

    Maximises the total IoU over pairs with IoU >= iou_thresh (Hungarian algorithm).
    Returns the IoUs of the matched pairs.
    """
    if not gt or not pred:
        return np.zeros(0)
    iou = mask_utils.iou(pred, gt, [0] * len(gt))  # (n_pred, n_gt)
    rows, cols = linear_sum_assignment(np.where(iou >= iou_thresh, iou, 0.0), maximize=True)
    ious = iou[rows, cols]
    return ious[ious >= iou_thresh]


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
