"""Stitched mode skips the work ownership throws away (predict.OwnershipFilter), and still
finds every cell once: an oracle Mask R-CNN, whose RPN proposes every cell a tile sees and
whose heads turn each proposal into that cell, checks the filter inside torchvision's real
forward pass (transform, RoI heads' call order, mask pasting) on constructed cells."""

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from scipy.ndimage import find_objects
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import box_iou

from livecellseg import predict
from livecellseg.models import build_model
from livecellseg.predict import PROPOSAL_REACH, Predictor, reaches
from tests.helpers import default_model_settings, small_image, tiny_inference
from tests.helpers import tiny_predict_settings as settings

H, W = 520, 704


class NativeScale(GeneralizedRCNNTransform):
    """The model's transform without the resize: the oracle reads cell labels from pixels."""

    def resize(self, image, target=None):
        return image, target


class OracleRPN(nn.Module):
    """Proposes the visible box of every cell in the tile (pixel value = cell label)."""

    def __init__(self):
        super().__init__()
        self._pre_nms_top_n, self._post_nms_top_n = {"testing": 0}, {"testing": 0}
        self.score_thresh = 0.0

    def forward(self, images, features, targets=None):
        out = []
        for t, (h, w) in zip(images.tensors, images.image_sizes, strict=True):
            labels = torch.round(t[0, :h, :w] * 255).to(torch.uint8).numpy()
            boxes = [
                [s[1].start, s[0].start, s[1].stop - 1, s[0].stop - 1]  # as torchvision pastes
                for s in find_objects(labels)
                if s is not None
            ]
            out.append(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        return out, {}


class OracleHeads(nn.Module):
    """Each proposal becomes a detection of its box with a full mask; counts the work."""

    def __init__(self):
        super().__init__()
        self.score_thresh, self.nms_thresh, self.detections_per_img = 0.0, 0.5, 1000
        self.boxes_scored = self.masks_made = 0

    def postprocess_detections(self, proposals, image_shapes):
        scores = [torch.full((len(p),), 0.9) for p in proposals]
        return proposals, scores, [torch.ones(len(p), dtype=torch.int64) for p in proposals]

    def forward(self, features, proposals, image_shapes, targets=None):
        self.boxes_scored += sum(len(p) for p in proposals)
        boxes, scores, labels = self.postprocess_detections(proposals, image_shapes)
        self.masks_made += sum(len(b) for b in boxes)
        return [
            {"boxes": b, "scores": s, "labels": c, "masks": torch.ones(len(b), 1, 28, 28)}
            for b, s, c in zip(boxes, scores, labels, strict=True)
        ], {}


def oracle_predictor(owned_only: bool) -> Predictor:
    transform = NativeScale(222, 304, [0.0] * 3, [1.0] * 3)
    model = GeneralizedRCNN(nn.Identity(), OracleRPN(), OracleHeads(), transform).eval()
    p = Predictor(model, torch.device("cpu"), settings(batch_size=5))
    p.owned_only = owned_only
    return p


def rect(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


CLUTTER = [rect(y, y + 12, x, x + 12) for y in range(30, 500, 110) for x in range(20, 690, 150)]


@pytest.mark.parametrize(
    "cell",
    [
        rect(74 * 2 - 15, 74 * 2 + 15, 100 * 3 - 15, 100 * 3 + 15),  # on a 4-tile corner
        rect(10, 40, 700, 704),  # in the 4-px remainder column
        rect(444 + 10, 520, 600, 704),  # in the last (76-px, 104-px) row and column
        rect(150, 230, 180, 330),  # large: spans 2x3 mini-tiles
        rect(80, 280, 110, 390),  # the largest a tile sees whole: 3x3 mini-tiles, in 16 tiles
    ],
)
def test_a_cell_is_still_found_exactly_once(cell):
    cells = [cell] + [c for c in CLUTTER if not (c & cell).any()]
    image = np.zeros((H, W), np.uint8)
    for k, c in enumerate(cells, start=1):
        image[c] = k
    found = {}
    for owned_only in (True, False):
        p = oracle_predictor(owned_only)
        det, counts = p(image, "stitched")
        found[owned_only] = (det, counts, p.model.roi_heads)
        truth = mask_utils.encode(np.asfortranarray(np.stack(cells, -1).astype(np.uint8)))
        iou = mask_utils.iou(det.rles, truth, [0] * len(cells))
        assert (iou > 0.5).sum(0).tolist() == [1] * len(cells), iou.max(0)  # each cell once
        assert counts.kept == len(cells)
    (on, on_counts, on_heads), (off, off_counts, off_heads) = found[True], found[False]
    assert on.rles == off.rles  # the same cells, the same masks
    # less work: proposals and detections the owner would drop never reach the heads
    assert on_counts.skipped_proposals > 0
    assert on_heads.boxes_scored == off_heads.boxes_scored - on_counts.skipped_proposals
    assert on_heads.masks_made == on_heads.boxes_scored - on_counts.skipped
    assert on_heads.boxes_scored < 0.6 * off_heads.boxes_scored
    assert on_counts.not_owned < off_counts.not_owned and off_counts.skipped_proposals == 0


def test_a_box_of_iou_half_with_a_proposal_lies_within_its_reach():
    """PROPOSAL_REACH's bound: IoU >= 0.5 puts a box inside the proposal grown by its size."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[100.0, 100.0, 140.0, 120.0]])
    corners = torch.rand(200_000, 2, 2, generator=g) * torch.tensor([120.0, 80.0]) + 60
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    boxes = boxes[box_iou(boxes, p)[:, 0] >= 0.5]
    assert len(boxes) > 100
    size = p[:, 2:] - p[:, :2]
    grown = torch.cat([p[:, :2] - PROPOSAL_REACH * size, p[:, 2:] + PROPOSAL_REACH * size], 1)
    assert (boxes[:, :2] >= grown[:, :2]).all() and (boxes[:, 2:] <= grown[:, 2:]).all()
    # ... and it is not loose: random boxes reach past three quarters of it
    assert ((boxes[:, 2:] - p[:, 2:]).max(0).values > 0.75 * PROPOSAL_REACH * size[0]).all()


def test_reaches_on_boxes_near_a_region():
    region = torch.tensor([100.0, 50.0, 200.0, 120.0])
    boxes = torch.tensor(
        [
            [150, 60, 160, 70],  # inside
            [60, 60, 90, 70],  # 10 px left of it, 30 wide: reached when grown
            [10, 60, 20, 70],  # 80 px left, 10 wide: not
            [150, 130, 160, 134],  # 10 px below, 4 high: only with the pad
        ],
        dtype=torch.float32,
    )
    assert reaches(boxes, region, 0.0, 0.0).tolist() == [True, False, False, False]
    assert reaches(boxes, region, 1.0, 0.0).tolist() == [True, True, False, False]
    assert reaches(boxes, region, 1.0, 7.0).tolist() == [True, True, False, True]


@pytest.mark.slow  # a model forward pass per setting
def test_with_unlimited_reach_a_real_model_predicts_as_without_the_filter(monkeypatch):
    """The detection filter before the mask head is exact; the tile's resize to the model's
    input scale is accounted for (a random model: its proposals are anywhere)."""
    torch.manual_seed(0)
    model, _ = build_model(
        "custom",
        inference=tiny_inference(),
        sampling=default_model_settings()[1],
        arch=default_model_settings()[2],
    )
    image = small_image(width=352, height=260)[0]
    p = Predictor(model.eval(), torch.device("cpu"), settings(batch_size=5))
    p.owned_only = False
    off, off_counts = p(image, "stitched")
    p.owned_only = True
    monkeypatch.setattr(predict, "PROPOSAL_REACH", 1e6)
    on, on_counts = p(image, "stitched")
    assert on.rles == off.rles and np.array_equal(on.scores, off.scores)
    assert on_counts.skipped_proposals == 0 and on_counts.skipped > 0
    assert on_counts.raw == off_counts.raw - on_counts.skipped  # only unowned ones skipped
