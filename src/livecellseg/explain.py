"""Why the model decided as it did: forward hooks on its parts, activation shares, feature maps.

One forward pass on the whole image (native scale, as in whole-image prediction) with hooks on
the backbone stages (layer1..4), the CBAM blocks and their spatial attention (custom model),
the FPN levels, the RPN (its 3x3 conv on every level, and its objectness), the box head and the
mask head. Each hook reduces its output at once (mean |activation|, channel-mean map, the
strongest channels), so nothing full-size is held, and every hook is removed afterwards.

Importance is each module's share (%) of the summed mean absolute activations: a coarse
indicator of where the signal is strong for this image, not an attribution to the output.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from livecellseg.datasets import gray_to_tensor
from livecellseg.io import atomic_path, write_json
from livecellseg.models import inference_applied
from livecellseg.predict import Predictor

log = logging.getLogger(__name__)


@dataclass
class ModuleActivity:
    """What a hook keeps of one module's output."""

    abs_sum: float = 0.0
    count: int = 0
    mean_map: np.ndarray | None = None  # (h, w) mean over channels; (rois, units) for box_head
    top: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (channel, (h, w) map)

    @property
    def mean_abs(self) -> float:
        return self.abs_sum / max(self.count, 1)


@dataclass
class Explanation:
    model: str
    importance: dict[str, float]  # module -> % of the summed mean |activation|
    activity: dict[str, ModuleActivity]
    attention: dict[str, np.ndarray]  # name -> (h, w) map in [0, 1] (CBAM spatial, RPN objectness)
    detections: int
    not_run: list[str]  # hooked modules that did not run (the mask head when nothing is detected)


def hook_targets(model: nn.Module) -> dict[str, nn.Module]:
    """Modules to hook, by readable name, in forward order (both models)."""
    body = model.backbone.body
    targets: dict[str, nn.Module] = {}
    for i in range(1, 5):
        stage = getattr(body, f"layer{i}")
        if isinstance(stage, nn.Sequential) and hasattr(stage[-1], "spatial"):  # custom: +CBAM
            targets[f"layer{i}"] = stage[0]
            targets[f"cbam{i}"] = stage[1]
        else:
            targets[f"layer{i}"] = stage
    targets["fpn"] = model.backbone.fpn
    targets["rpn"] = model.rpn.head.conv
    targets["box_head"] = model.roi_heads.box_head
    targets["mask_head"] = model.roi_heads.mask_head
    return targets


def attention_targets(model: nn.Module) -> dict[str, nn.Module]:
    body = model.backbone.body
    targets = {
        f"cbam{i}.spatial": getattr(body, f"layer{i}")[-1].spatial
        for i in range(1, 5)
        if isinstance(getattr(body, f"layer{i}"), nn.Sequential)
        and hasattr(getattr(body, f"layer{i}")[-1], "spatial")
    }
    targets["rpn.objectness"] = model.rpn.head.cls_logits
    return targets


@contextlib.contextmanager
def hooks(pairs: list[tuple[nn.Module, object]]) -> Iterator[None]:
    """Register forward hooks; remove them all however the block ends."""
    handles = [module.register_forward_hook(fn) for module, fn in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _reduce(act: ModuleActivity, x: torch.Tensor, top: int, crop) -> None:
    if x.numel() == 0:  # e.g. the mask head with no detection: the module counts as not run
        return
    x = x.detach().float()
    act.abs_sum += float(x.abs().sum())
    act.count += x.numel()
    if act.mean_map is not None:  # multi-call modules (RPN conv per level): maps of the first
        return
    if x.dim() == 2:  # box head: (rois, units)
        units = x.abs().mean(0).topk(min(top, x.shape[1])).indices
        act.mean_map = x[:, units].cpu().numpy().T  # (units, rois)
        act.top = [(int(u), np.empty(0)) for u in units]
        return
    if x.shape[0] > 1 and x.dim() == 4 and crop is None:  # mask head: (dets, C, 14, 14)
        x = x.mean(0, keepdim=True)
    fmap = x[0]  # (C, h, w), one image
    if crop is not None:
        fmap = crop(fmap)
    act.mean_map = fmap.mean(0).cpu().numpy()
    channels = fmap.abs().mean((1, 2)).topk(min(top, fmap.shape[0])).indices
    act.top = [(int(c), fmap[c].cpu().numpy()) for c in channels]


@torch.inference_mode()
def explain_image(predictor: Predictor, image: np.ndarray, *, top: int = 6) -> Explanation:
    """Hook the predictor's model, run it once on the whole image as its whole-image mode
    does (native scale, budgets scaled from a tile's), reduce what it saw."""
    model, device = predictor.model.eval(), predictor.device
    h, w = image.shape
    pad = 32  # GeneralizedRCNNTransform pads to a multiple of 32: crop maps back to the image
    padded_h = -(-h // pad) * pad

    def crop(fmap: torch.Tensor) -> torch.Tensor:
        stride = padded_h / fmap.shape[-2]
        return fmap[..., : int(np.ceil(h / stride)), : int(np.ceil(w / stride))]

    activity = {name: ModuleActivity() for name in hook_targets(model)}
    attention: dict[str, np.ndarray] = {}

    def on_module(name):
        def fn(_module, _inputs, out):
            if name == "fpn":  # OrderedDict of levels: one entry per level
                for level, fmap in out.items():
                    key = f"fpn.{'P' + str(int(level) + 2) if level.isdigit() else level}"
                    _reduce(activity.setdefault(key, ModuleActivity()), fmap, top, crop)
                return
            _reduce(activity[name], out, top, None if name in ("box_head", "mask_head") else crop)

        return fn

    def on_attention(name):
        def fn(_module, _inputs, out):
            if name in attention:  # the RPN head runs once per level: keep the finest
                return
            m = crop(out.detach().float()[0])
            if name == "rpn.objectness":  # logits per anchor -> best anchor's probability
                m = torch.sigmoid(m.amax(0, keepdim=True))
            attention[name] = m[0].cpu().numpy()

        return fn

    pairs = [(m, on_module(n)) for n, m in hook_targets(model).items()]
    pairs += [(m, on_attention(n)) for n, m in attention_targets(model).items()]
    with hooks(pairs), inference_applied(model, predictor.whole_image_inference(h, w)):
        (out,) = model([gray_to_tensor(image).to(device)])
    order = []  # forward order, the FPN's levels in its place
    for k in hook_targets(model):
        order += sorted(a for a in activity if a.startswith("fpn.")) if k == "fpn" else [k]
    ran = {k: activity[k] for k in order if activity[k].count}
    total = sum(v.mean_abs for v in ran.values())
    importance = {k: round(100 * v.mean_abs / total, 4) for k, v in ran.items()}
    name = "custom" if any(k.startswith("cbam") for k in activity) else "transfer"
    return Explanation(
        model=name,
        importance=importance,
        activity=ran,
        attention=attention,
        detections=len(out["scores"]),
        not_run=[k for k in order if not activity[k].count],
    )


def save_explanation(exp: Explanation, image: np.ndarray, out: Path) -> list[Path]:
    """importance.json, importance.png, one feature-map PNG per module, attention overlays."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = [out / "importance.json"]
    write_json(
        files[0],
        {
            "model": exp.model,
            "detections": exp.detections,
            "importance_percent": exp.importance,
            "mean_abs_activation": {k: round(v.mean_abs, 6) for k, v in exp.activity.items()},
            "not_run": exp.not_run,
        },
    )

    def save(fig, name: str) -> None:
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        files.append(path)

    fig, ax = plt.subplots(figsize=(6, 0.3 * len(exp.importance) + 1))
    names = list(exp.importance)[::-1]
    ax.barh(names, [exp.importance[n] for n in names], color="tab:purple")
    ax.set_xlabel("share of mean |activation| (%)")
    ax.set_title(f"{exp.model} model: where the activation is ({exp.detections} cells)")
    save(fig, "importance.png")

    for name, act in exp.activity.items():
        panels = [("mean over channels", act.mean_map)]
        if act.top and act.top[0][1].size:
            panels += [(f"channel {c}", m) for c, m in act.top]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.6), squeeze=False)
        for ax, (title, m) in zip(axes[0], panels, strict=True):
            ax.imshow(m, cmap="magma", aspect="auto" if name == "box_head" else "equal")
            ax.set_title(title if name != "box_head" else "top units x RoIs", fontsize=8)
            ax.axis("off")
        fig.suptitle(f"{name}: {exp.importance[name]:.1f}% of mean |activation|", fontsize=9)
        save(fig, f"{name}.png")

    for name, m in exp.attention.items():
        fig, ax = plt.subplots(figsize=(7, 5.2))
        ax.imshow(image, cmap="gray")
        ax.imshow(
            m, cmap="jet", alpha=0.45, vmin=0, vmax=1, extent=(0, image.shape[1], image.shape[0], 0)
        )
        ax.set_title(f"{name} (0..1) over the image", fontsize=9)
        ax.axis("off")
        save(fig, f"attention_{name.replace('.', '_')}.png")
    return files
