"""The two Mask R-CNNs: torchvision's ResNet50-FPN (transfer) and ResNet-18+CBAM+FPN (custom)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_loss
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from livecellseg.errors import LivecellsegError
from livecellseg.models.cbam import CBAM
from livecellseg.settings import ArchSettings, InferenceSettings, SamplingSettings

log = logging.getLogger(__name__)

MODEL_NAMES = ("transfer", "custom")


def _maskrcnn_kwargs(sampling: SamplingSettings, arch: ArchSettings) -> dict:
    """MaskRCNN's arguments from RoI sampling and architecture settings."""
    n_levels = len(arch.anchor_sizes)
    return {
        "rpn_pre_nms_top_n_train": sampling.rpn_pre_nms_top_n,
        "rpn_post_nms_top_n_train": sampling.rpn_post_nms_top_n,
        "box_batch_size_per_image": sampling.box_batch_size_per_image,
        "rpn_anchor_generator": AnchorGenerator(
            sizes=arch.anchor_sizes, aspect_ratios=(arch.anchor_ratios,) * n_levels
        ),
        "image_mean": list(arch.image_mean),
        "image_std": list(arch.image_std),
    }


class MaskSampledRoIHeads(RoIHeads):
    """torchvision's RoIHeads, except that in training the mask branch learns from at most
    `mask_rois_per_image` of the positive RoIs the box branch samples (a random subset).

    The mask head (4 convolutions at 14x14 on every positive RoI) is most of a training
    step's cost, and a dense tile has hundreds of cells: this lets the box classifier see many
    RoIs per tile (`box_batch_size_per_image`) at a fixed mask cost. Inference is unchanged.
    """

    mask_rois_per_image: int  # 0: every positive RoI (torchvision); set by _sample_masks

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training or not self.mask_rois_per_image:
            return super().forward(features, proposals, image_shapes, targets)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
            proposals, targets
        )
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        loss_classifier, loss_box_reg = fastrcnn_loss(
            class_logits, box_regression, labels, regression_targets
        )
        mask_boxes, mask_matched = [], []
        for boxes, matched, label in zip(proposals, matched_idxs, labels, strict=True):
            pos = torch.where(label > 0)[0]
            if len(pos) > self.mask_rois_per_image:
                pos = pos[torch.randperm(len(pos), device=pos.device)[: self.mask_rois_per_image]]
            mask_boxes.append(boxes[pos])
            mask_matched.append(matched[pos])
        mask_features = self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes))
        loss_mask = maskrcnn_loss(
            self.mask_predictor(mask_features),
            mask_boxes,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            mask_matched,
        )
        losses = {
            "loss_classifier": loss_classifier,
            "loss_box_reg": loss_box_reg,
            "loss_mask": loss_mask,
        }
        return [], losses


def _sample_masks(model: MaskRCNN, mask_rois_per_image: int) -> MaskRCNN:
    """Give `model` MaskSampledRoIHeads (same modules and state dict, another forward)."""
    model.roi_heads.__class__ = MaskSampledRoIHeads
    model.roi_heads.mask_rois_per_image = mask_rois_per_image
    return model


def apply_inference(model: MaskRCNN, s: InferenceSettings) -> None:
    """The one place inference settings reach a model: input scale, proposal and detection
    budgets, thresholds. Public attributes where torchvision has them; the RPN keeps its
    test-time budgets only in `_pre_nms_top_n` / `_post_nms_top_n` (no setter)."""
    model.transform.min_size, model.transform.max_size = (s.min_size,), s.max_size
    model.rpn._pre_nms_top_n["testing"] = s.rpn_pre_nms_top_n
    model.rpn._post_nms_top_n["testing"] = s.rpn_post_nms_top_n
    model.rpn.score_thresh = s.rpn_score_thresh
    heads = model.roi_heads
    heads.score_thresh, heads.nms_thresh = s.score_thresh, s.nms_thresh
    heads.detections_per_img = s.detections_per_img


def inference_of(model: MaskRCNN) -> InferenceSettings:
    """The inference settings a model runs with now (what apply_inference set)."""
    heads = model.roi_heads
    return InferenceSettings(
        score_thresh=heads.score_thresh,
        nms_thresh=heads.nms_thresh,
        detections_per_img=heads.detections_per_img,
        rpn_pre_nms_top_n=model.rpn._pre_nms_top_n["testing"],
        rpn_post_nms_top_n=model.rpn._post_nms_top_n["testing"],
        rpn_score_thresh=model.rpn.score_thresh,
        min_size=model.transform.min_size[0],
        max_size=model.transform.max_size,
    )


@contextlib.contextmanager
def inference_applied(model: MaskRCNN, s: InferenceSettings) -> Iterator[None]:
    """Run with other inference settings for a while (validation, whole-image mode)."""
    saved = inference_of(model)
    apply_inference(model, s)
    try:
        yield
    finally:
        apply_inference(model, saved)


TRANSFER_NORMS = ("batch", "group")


def build_model(
    name: str,
    *,
    inference: InferenceSettings,
    sampling: SamplingSettings,
    arch: ArchSettings,
    weights: str = "none",
    pretrained_layout: bool = False,
    norm: str = "batch",
    num_classes: int = 2,
) -> tuple[MaskRCNN, bool]:
    """Build a model; return it and whether pretrained (COCO) weights were loaded.

    `weights` (transfer only): "coco" (torchvision's COCO weights; offline this fails and the
    model is built untrained, with a warning), "none", or a path to a COCO-layout state
    dict (e.g. torchvision's .pth saved by hand).

    The transfer model has two layouts, as torchvision's `maskrcnn_resnet50_fpn` has:
    with weights, frozen BatchNorm and the 3 last ResNet stages trainable; without, trainable
    normalisation (`norm`: "batch" as torchvision, or "group", 32 groups) and every stage
    trainable. `pretrained_layout` builds the first without loading weights (to load a
    checkpoint trained from COCO weights). `arch` gives both models their anchors (in the
    pixels the model sees) and input normalisation.
    """
    kwargs = _maskrcnn_kwargs(sampling, arch)
    if name == "transfer":
        model, pretrained = _transfer(weights, pretrained_layout, norm, num_classes, kwargs)
    elif name == "custom":
        if weights != "none":
            raise LivecellsegError(
                f"custom model: weights={weights!r}; it trains from scratch, use 'none'"
            )
        model, pretrained = _custom(num_classes, kwargs), False
    else:
        raise LivecellsegError(f"unknown model {name!r}; allowed: {list(MODEL_NAMES)}")
    _sample_masks(model, sampling.mask_rois_per_image)
    apply_inference(model, inference)
    return model, pretrained


def _transfer(
    weights: str, pretrained_layout: bool, norm: str, num_classes: int, kwargs: dict
) -> tuple[MaskRCNN, bool]:
    state = transfer_weights(weights)
    if state is None and not pretrained_layout:
        if norm not in TRANSFER_NORMS:
            raise LivecellsegError(f"transfer norm {norm!r}; allowed: {list(TRANSFER_NORMS)}")
        # torchvision's maskrcnn_resnet50_fpn(weights=None, weights_backbone=None): trainable
        # normalisation, all 5 stages trainable (a frozen random stem would stay random).
        layer = nn.BatchNorm2d if norm == "batch" else lambda c: nn.GroupNorm(32, c)
        backbone = _resnet_fpn_extractor(resnet50(norm_layer=layer), trainable_layers=5)
        return MaskRCNN(backbone, num_classes=num_classes, **kwargs), False
    # as built for torchvision's COCO weights: frozen BatchNorm, the 3 last stages trainable
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers=3)
    model = MaskRCNN(backbone, num_classes=91, **kwargs)
    if state is not None:
        model.load_state_dict(state)
    model.roi_heads.box_predictor = FastRCNNPredictor(1024, num_classes)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, num_classes)
    return model, state is not None


def transfer_weights(weights: str) -> dict | None:
    """The COCO-layout (91-class) state dict `weights` names; None for "none", or (with a
    warning) when the COCO weights cannot be downloaded."""
    if weights == "none":
        return None
    if weights == "coco":
        try:
            return MaskRCNN_ResNet50_FPN_Weights.COCO_V1.get_state_dict(
                progress=True, check_hash=True, weights_only=True
            )
        except Exception as e:  # offline: URLError, socket errors, HTTP errors
            log.warning(
                "!!! COCO weights for the transfer model could not be downloaded (%s: %s). "
                "The model is built untrained (trainable normalisation, every stage "
                "trainable) and trains from scratch; the metrics record pretrained: false. "
                "Put the file in $TORCH_HOME/hub/checkpoints/ or set transfer.weights to a "
                "local path to do real transfer learning. !!!",
                type(e).__name__,
                e,
            )
            return None
    path = Path(weights)
    if not path.is_file():
        raise LivecellsegError(
            f"{path}: transfer.weights file not found; use 'coco', 'none' or an existing .pth"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file, or a pickle that is more than tensors
        raise LivecellsegError(
            f"{path}: transfer.weights is not a loadable state_dict ({type(e).__name__}); "
            "point it at torchvision's maskrcnn_resnet50_fpn .pth file"
        ) from None


class _CBAMStage(nn.Sequential):
    """A ResNet stage followed by CBAM, so the FPN sees the attended features."""

    def __init__(self, stage: nn.Module, channels: int) -> None:
        super().__init__(stage, CBAM(channels))


def _custom(num_classes: int, kwargs: dict) -> MaskRCNN:
    trunk = resnet18()  # from scratch, trainable BatchNorm
    for i, channels in enumerate((64, 128, 256, 512), start=1):
        setattr(trunk, f"layer{i}", _CBAMStage(getattr(trunk, f"layer{i}"), channels))
    backbone = BackboneWithFPN(
        trunk,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512],
        out_channels=256,
    )  # the FPN adds a max-pooled level "pool" for the RPN
    return MaskRCNN(
        backbone,
        num_classes=num_classes,
        rpn_batch_size_per_image=256,  # 128 positive + 128 negative
        rpn_positive_fraction=0.5,
        box_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=14, sampling_ratio=2),
        **kwargs,
    )


def set_backbone_frozen(model: MaskRCNN, frozen: bool) -> None:
    """Phase 1 of transfer learning trains the RoI heads only (backbone, FPN and RPN frozen);
    phase 2 restores torchvision's trainable set (conv1 and layer1 stay frozen)."""
    for name, p in model.named_parameters():
        if name.startswith(("backbone.", "rpn.")):
            in_fixed_stem = name.startswith(("backbone.body.conv1", "backbone.body.layer1"))
            p.requires_grad_(not frozen and not in_fixed_stem)


def _component(name: str) -> str:
    if ".1.channel." in name or ".1.spatial." in name:
        return "cbam"
    for prefix, component in (
        ("backbone.body.", "trunk"),
        ("backbone.fpn.", "fpn"),
        ("rpn.", "rpn"),
        ("roi_heads.box_", "box_head"),
        ("roi_heads.mask_", "mask_head"),
    ):
        if name.startswith(prefix):
            return component
    return "other"


def parameter_table(model: nn.Module) -> dict[str, dict[str, int]]:
    """Total and trainable parameters per component, and overall."""
    table: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        row = table.setdefault(_component(name), {"total": 0, "trainable": 0})
        row["total"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    table["all"] = {k: sum(r[k] for r in table.values()) for k in ("total", "trainable")}
    return table
