"""Mask R-CNN models, composed from torchvision parts.

`build_model("transfer" | "custom", ...)` returns a torchvision `MaskRCNN` with 2 classes
(background, cell). See ../shared/DESIGN.md, "Models", for the numbers tested here.
"""

from livecellseg.models.build import (
    MODEL_NAMES,
    apply_inference,
    build_model,
    inference_applied,
    inference_of,
    parameter_table,
    set_backbone_frozen,
    transfer_weights,
)

__all__ = [
    "MODEL_NAMES",
    "apply_inference",
    "build_model",
    "inference_applied",
    "inference_of",
    "parameter_table",
    "set_backbone_frozen",
    "transfer_weights",
]
