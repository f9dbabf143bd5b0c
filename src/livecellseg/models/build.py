"""The two Mask R-CNNs: torchvision's ResNet50-FPN (transfer) and ResNet-18+CBAM+FPN (custom)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18, resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from livecellseg.errors import LivecellsegError
from livecellseg.models.cbam import CBAM

log = logging.getLogger(__name__)

MODEL_NAMES = ("transfer", "custom")


@dataclass(frozen=True)
class InferenceSettings:
    """What the model does at test time (thresholds, how many detections, input scale)."""

    score_thresh: float = 0.4
    nms_thresh: float = 0.5
    detections_per_img: int = 1000  # LIVECell images hold hundreds of cells
    rpn_pre_nms_top_n: int = 3000
    rpn_post_nms_top_n: int = 2000
    min_size: int = 222  # with max_size 304, 300x222 tiles run at native scale
    max_size: int = 304


@dataclass(frozen=True)
class TrainSettings:
    """RoI sampling during training (torchvision defaults: 2000/2000 proposals, 512 RoIs)."""

    rpn_pre_nms_top_n: int = 2000
    rpn_post_nms_top_n: int = 1000
    box_batch_size_per_image: int = 256


def _maskrcnn_kwargs(inference: InferenceSettings, train: TrainSettings) -> dict:
    return {
        "min_size": inference.min_size,
        "max_size": inference.max_size,
        "box_score_thresh": inference.score_thresh,
        "box_nms_thresh": inference.nms_thresh,
        "box_detections_per_img": inference.detections_per_img,
        "rpn_pre_nms_top_n_test": inference.rpn_pre_nms_top_n,
        "rpn_post_nms_top_n_test": inference.rpn_post_nms_top_n,
        "rpn_pre_nms_top_n_train": train.rpn_pre_nms_top_n,
        "rpn_post_nms_top_n_train": train.rpn_post_nms_top_n,
        "box_batch_size_per_image": train.box_batch_size_per_image,
    }


def build_model(
    name: str,
    *,
    weights: str = "none",
    num_classes: int = 2,
    inference: InferenceSettings | None = None,
    train: TrainSettings | None = None,
) -> tuple[MaskRCNN, bool]:
    """Build a model; return it and whether pretrained (COCO) weights were loaded.

    `weights` (transfer only): "coco" (torchvision's COCO weights; offline this fails and the
    model keeps its initialisation, with a warning), "none", or a path to a COCO-layout state
    dict (e.g. torchvision's .pth saved by hand).
    """
    inference = inference or InferenceSettings()
    train = train or TrainSettings()
    kwargs = _maskrcnn_kwargs(inference, train)
    if name == "transfer":
        return _transfer(weights, num_classes, kwargs)
    if name == "custom":
        if weights != "none":
            raise LivecellsegError(
                f"custom model: weights={weights!r}; it trains from scratch, use 'none'"
            )
        return _custom(num_classes, kwargs), False
    raise LivecellsegError(f"unknown model {name!r}; allowed: {list(MODEL_NAMES)}")


def _transfer(weights: str, num_classes: int, kwargs: dict) -> tuple[MaskRCNN, bool]:
    # torchvision's maskrcnn_resnet50_fpn as built for its COCO weights: frozen BatchNorm,
    # the 3 last ResNet stages trainable.
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), trainable_layers=3)
    model = MaskRCNN(backbone, num_classes=91, **kwargs)
    pretrained = load_transfer_weights(model, weights)
    model.roi_heads.box_predictor = FastRCNNPredictor(1024, num_classes)
    model.roi_heads.mask_predictor = MaskRCNNPredictor(256, 256, num_classes)
    return model, pretrained


def load_transfer_weights(model: MaskRCNN, weights: str) -> bool:
    """Load COCO-layout (91-class) weights into `model`; False (and a warning) if unavailable."""
    if weights == "none":
        return False
    if weights == "coco":
        try:
            state = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.get_state_dict(
                progress=True, check_hash=True, weights_only=True
            )
        except Exception as e:  # offline: URLError, socket errors, HTTP errors
            log.warning(
                "!!! COCO weights for the transfer model could not be downloaded (%s: %s). "
                "Training continues from torchvision's random initialisation; the metrics "
                "record pretrained: false. Put the file in $TORCH_HOME/hub/checkpoints/ or set "
                "transfer.weights to a local path to do real transfer learning. !!!",
                type(e).__name__,
                e,
            )
            return False
    else:
        path = Path(weights)
        if not path.is_file():
            raise LivecellsegError(
                f"{path}: transfer.weights file not found; use 'coco', 'none' or an existing .pth"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file, or a pickle that is more than tensors
            raise LivecellsegError(
                f"{path}: transfer.weights is not a loadable state_dict ({type(e).__name__}); "
                "point it at torchvision's maskrcnn_resnet50_fpn .pth file"
            ) from None
    model.load_state_dict(state)
    return True


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
    n_levels = 5
    anchors = AnchorGenerator(
        sizes=((32, 64, 128),) * n_levels, aspect_ratios=((0.5, 1.0, 2.0),) * n_levels
    )
    return MaskRCNN(
        backbone,
        num_classes=num_classes,
        rpn_anchor_generator=anchors,
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
