import urllib.error

import pytest
import torch
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNN_ResNet50_FPN_Weights
from torchvision.ops import FrozenBatchNorm2d

from livecellseg.errors import LivecellsegError
from livecellseg.models import build_model, parameter_table, set_backbone_frozen
from livecellseg.models.cbam import CBAM
from livecellseg.settings import fit_config
from tests.helpers import build, default_model_settings, default_params

SETTINGS = dict(
    zip(("inference", "sampling", "arch"), default_model_settings("transfer"), strict=True)
)


@pytest.fixture(scope="module")
def transfer():
    return build("transfer", pretrained_layout=True)  # as built for the COCO weights


@pytest.fixture(scope="module")
def custom():
    return build("custom")


def test_transfer_parameter_counts(transfer):
    assert parameter_table(transfer)["all"] == {"total": 43_922_395, "trainable": 43_699_995}
    set_backbone_frozen(transfer, True)
    assert parameter_table(transfer)["all"]["trainable"] == 16_529_164
    set_backbone_frozen(transfer, False)
    assert parameter_table(transfer)["all"]["trainable"] == 43_699_995


@pytest.mark.parametrize("norm, layer", [("batch", nn.BatchNorm2d), ("group", nn.GroupNorm)])
def test_transfer_without_weights_is_built_as_torchvision_builds_it(norm, layer):
    """No COCO weights: trainable normalisation and every stage trainable (as
    maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)); frozen only with weights."""
    model = build("transfer", norm=norm)
    assert parameter_table(model)["all"] == {"total": 43_975_515, "trainable": 43_975_515}
    assert [type(m) for m in _norms(model)] == [layer] * 53
    coco = build("transfer", pretrained_layout=True)
    assert [type(m) for m in _norms(coco)] == [FrozenBatchNorm2d] * 53


def _norms(model):
    kinds = nn.BatchNorm2d | nn.GroupNorm | FrozenBatchNorm2d
    return [m for m in model.backbone.body.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("pretrained", [True, False])
def test_transfer_phases_freeze_only_a_pretrained_backbone(pretrained):
    params = default_params()
    cfg = fit_config("transfer", params, pretrained=pretrained)
    frozen = [p.frozen_backbone for p in cfg.phases]
    assert frozen == ([True, False] if pretrained else [None, None])
    assert cfg.phases[1].lr == pytest.approx(cfg.phases[0].lr * params.transfer.unfrozen_lr_ratio)


def test_custom_parameter_counts(custom):
    table = {k: v["total"] for k, v in parameter_table(custom).items()}
    assert table == {
        "trunk": 11_176_512,
        "cbam": 43_912,
        "fpn": 2_607_104,
        "rpn": 601_645,
        "box_head": 13_905_930,
        "mask_head": 2_623_234,
        "all": 30_958_337,
    }
    assert parameter_table(custom)["all"]["trainable"] == 30_958_337


def test_custom_wiring(custom):
    assert custom.rpn.anchor_generator.num_anchors_per_location() == [9] * 5
    assert custom.roi_heads.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert custom.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert custom.rpn._pre_nms_top_n["training"] == 2000
    assert custom.rpn.fg_bg_sampler.batch_size_per_image == 256
    assert custom.rpn.fg_bg_sampler.positive_fraction == 0.5
    feats = custom.backbone(torch.rand(1, 3, 64, 96))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[1] for f in feats.values()] == [256] * 5


def test_inference_settings_and_native_scale(custom):
    s, _, _ = default_model_settings()
    assert custom.roi_heads.score_thresh == s.score_thresh == default_params().predict.min_score
    assert custom.rpn.score_thresh == s.rpn_score_thresh
    assert custom.rpn.post_nms_top_n() == s.rpn_post_nms_top_n == 1000
    assert custom.roi_heads.nms_thresh == 0.5
    assert custom.roi_heads.detections_per_img >= 500
    custom.eval()
    images, _ = custom.transform([torch.rand(3, 222, 300)])
    assert images.image_sizes == [(222, 300)]  # a tile runs at native scale


@pytest.mark.parametrize("name", ["transfer", "custom"])
def test_every_image_of_a_batch_trains(name):
    """Each image's targets reach the loss (the seed's custom model used only the first)."""
    torch.manual_seed(0)
    model = build(name, min_size=64, max_size=96).train()
    mask = torch.zeros(1, 64, 96, dtype=torch.uint8)
    mask[0, 10:30, 20:50] = 1
    target = {
        "boxes": torch.tensor([[20.0, 10.0, 50.0, 30.0]]),
        "labels": torch.tensor([1]),
        "masks": mask,
    }
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 64, 96, dtype=torch.uint8),
    }
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    torch.manual_seed(1)
    with_cell = model(images, [empty, target])
    torch.manual_seed(1)
    without = model(images, [empty, empty])
    assert with_cell["loss_mask"] > 0 and without["loss_mask"] == 0
    assert with_cell["loss_box_reg"] > 0  # box regression is trained


@pytest.mark.parametrize("cap", [0, 2])
def test_mask_head_learns_from_at_most_mask_rois_per_image(cap):
    """The box branch samples its RoIs as torchvision does; the mask branch takes <= `cap`
    of each tile's positives (0: all of them). Same state dict either way."""
    from dataclasses import replace

    infer, sampling, arch = default_model_settings("custom")
    torch.manual_seed(0)
    model, _ = build_model(
        "custom",
        inference=replace(infer, min_size=64, max_size=96),
        sampling=replace(sampling, mask_rois_per_image=cap),
        arch=arch,
    )
    masks = torch.zeros(6, 64, 96, dtype=torch.uint8)
    for i in range(6):
        masks[i, 5 + 9 * i : 13 + 9 * i, 10 + 12 * i : 20 + 12 * i] = 1
    boxes = torch.tensor([[10.0 + 12 * i, 5.0 + 9 * i, 20 + 12 * i, 13 + 9 * i] for i in range(6)])
    target = {"boxes": boxes, "labels": torch.ones(6, dtype=torch.int64), "masks": masks}
    seen = []
    hook = model.roi_heads.mask_roi_pool.register_forward_hook(
        lambda _m, args, _out: seen.extend(len(b) for b in args[1])
    )
    losses = model.train()([torch.rand(3, 64, 96)] * 2, [target, target])
    hook.remove()
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_mask"}
    assert losses["loss_mask"] > 0 and len(seen) == 2
    # the ground-truth boxes are proposals too: >= 6 positives a tile
    assert all(n == 2 for n in seen) if cap else all(n >= 6 for n in seen)
    assert model.state_dict().keys() == build("custom").state_dict().keys()


def test_cbam_shapes():
    x = torch.rand(2, 64, 9, 11)
    assert CBAM(64)(x).shape == x.shape


def test_coco_weights_offline_fall_back_loudly(monkeypatch, caplog):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(MaskRCNN_ResNet50_FPN_Weights.COCO_V1), "get_state_dict", offline)
    model, pretrained = build_model("transfer", weights="coco", **SETTINGS)
    assert pretrained is False
    assert "could not be downloaded" in caplog.text and "pretrained: false" in caplog.text
    assert parameter_table(model)["all"]["trainable"] == 43_975_515  # the untrained layout


def test_coco_weights_from_the_local_cache(tmp_path, monkeypatch):
    """torchvision finds the COCO file in $TORCH_HOME/hub/checkpoints and loads it, offline."""
    # stands in for the real COCO weights
    coco = build_model("transfer", num_classes=91, pretrained_layout=True, **SETTINGS)[0]
    with torch.no_grad():
        for p in coco.parameters():
            p.uniform_(-0.01, 0.01)
    url = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(coco.state_dict(), cache / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, pretrained = build_model("transfer", weights="coco", **SETTINGS)
    assert pretrained is True
    a = model.backbone.body.layer3[0].conv1.weight
    assert torch.equal(a, coco.backbone.body.layer3[0].conv1.weight)
    assert model.roi_heads.box_predictor.cls_score.out_features == 2  # new 2-class heads

    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)
    model, pretrained = build_model("transfer", weights=str(path), **SETTINGS)
    assert pretrained and torch.equal(
        model.rpn.head.conv[0][0].weight, coco.rpn.head.conv[0][0].weight
    )
    with pytest.raises(LivecellsegError, match="transfer.weights file not found"):
        build_model("transfer", weights=str(tmp_path / "nope.pth"), **SETTINGS)
    with pytest.raises(LivecellsegError, match="unknown model"):
        build_model("resnet", **SETTINGS)
