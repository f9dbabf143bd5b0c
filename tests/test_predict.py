"""Predictor on a tiny untrained model: full-image outputs in both modes, COCO results, errors."""

import contextlib
import copy
import io
from dataclasses import replace

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from livecellseg.checkpoint import FORMAT
from livecellseg.errors import LivecellsegError
from livecellseg.models import build_model
from livecellseg.predict import Predictor, load_model, to_coco_results
from livecellseg.settings import SamplingSettings
from tests.helpers import (
    default_model_settings,
    save_tiny_checkpoint,
    small_image,
    tiny_inference,
    tiny_predict_settings,
)

TINY = tiny_inference()
SAMPLING: SamplingSettings = default_model_settings()[1]
ARCH = default_model_settings()[2]


@pytest.fixture(scope="module")
def image():
    return small_image()[0]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    model, _ = build_model("custom", inference=TINY, sampling=SAMPLING, arch=ARCH)
    return Predictor(model.eval(), torch.device("cpu"), tiny_predict_settings(batch_size=7))


@pytest.mark.parametrize("mode", ["stitched", "whole"])
def test_predictions_are_whole_image_rles_readable_by_pycocotools(predictor, image, mode):
    det, counts = predictor(image, mode)
    assert counts.kept == len(det.rles) == len(det.scores) > 0
    assert all(tuple(r["size"]) == image.shape for r in det.rles)
    results = to_coco_results(7, det)
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 7, "height": image.shape[0], "width": image.shape[1]}],
        "annotations": [],
        "categories": [{"id": 1, "name": "cell"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        loaded = gt.loadRes(results)
    assert len(loaded.getAnnIds()) == len(results)
    assert all(r["area"] > 0 and r["bbox"][2] > 0 for r in results)
    assert results == sorted(results, key=lambda r: -r["score"])  # best first


def test_stitched_batching_does_not_change_the_result(predictor, image):
    a, _ = predictor(image, "stitched")
    one = Predictor(predictor.model, predictor.device, tiny_predict_settings(batch_size=1))
    b, _ = one(image, "stitched")
    assert len(a.rles) == len(b.rles)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_whole_mode_restores_the_model_settings(predictor, image):
    before = (predictor.model.transform.min_size, dict(predictor.model.rpn._post_nms_top_n))
    predictor(image, "whole")
    assert (predictor.model.transform.min_size, dict(predictor.model.rpn._post_nms_top_n)) == before


def test_load_model_rejects_a_checkpoint_of_the_other_model(tmp_path, raw_params):
    ckpt = torch.load(save_tiny_checkpoint(tmp_path / "c.pt", raw_params), weights_only=True)
    torch.save(ckpt | {"name": "transfer"}, tmp_path / "x.pt")
    with pytest.raises(LivecellsegError, match="holds the transfer model, expected custom"):
        load_model(tmp_path / "x.pt", torch.device("cpu"), expect="custom")
    with pytest.raises(LivecellsegError, match="do not fit the transfer model"):
        load_model(tmp_path / "x.pt", torch.device("cpu"))
    torch.save(ckpt | {"params": {"model": {}}}, tmp_path / "old.pt")
    with pytest.raises(LivecellsegError, match="does not record the settings"):
        load_model(tmp_path / "old.pt", torch.device("cpu"))
    torch.save({"format": FORMAT, "name": "unet", "model": {}}, tmp_path / "y.pt")
    with pytest.raises(LivecellsegError, match="names no known model"):
        load_model(tmp_path / "y.pt", torch.device("cpu"))


@pytest.mark.parametrize(
    "pretrained, norm, layer",
    [
        (True, "batch", FrozenBatchNorm2d),
        (False, "batch", nn.BatchNorm2d),
        (False, "group", nn.GroupNorm),
    ],
)
def test_a_transfer_checkpoint_loads_in_the_layout_it_was_trained_in(
    tmp_path, raw_params, pretrained, norm, layer
):
    raw = copy.deepcopy(raw_params)
    raw["transfer"]["scratch_norm"] = norm
    path = save_tiny_checkpoint(tmp_path / "t.pt", raw, "transfer", pretrained=pretrained)
    model, ckpt, _ = load_model(path, torch.device("cpu"), expect="transfer")
    kinds = nn.BatchNorm2d | nn.GroupNorm | FrozenBatchNorm2d
    found = {type(m) for m in model.backbone.body.modules() if isinstance(m, kinds)}
    assert found == {layer} and ckpt["run"]["pretrained"] is pretrained


def test_rpn_score_threshold_prunes_proposals_before_the_heads(image):
    torch.manual_seed(0)
    model, _ = build_model("custom", inference=TINY, sampling=SAMPLING, arch=ARCH)
    seen = []
    model.roi_heads.box_head.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    for thresh in (0.0, 0.6):
        inference = replace(TINY, rpn_score_thresh=thresh)
        settings = replace(tiny_predict_settings(), inference=inference)
        Predictor(model.eval(), torch.device("cpu"), settings)(image, "whole")
        assert model.rpn.score_thresh == thresh
    assert seen[1] < seen[0]  # fewer RoIs through the box head


def test_coco_results_of_a_dense_image():
    """LIVECell images hold up to ~2,000 cells; pycocotools' area() of >= 256 RLEs at once
    overflows under numpy 2, so the results are built one RLE at a time."""
    from pycocotools import mask as mask_utils

    from livecellseg.stitch import ImageDetections

    masks = np.zeros((40, 50, 300), np.uint8, order="F")
    for i in range(300):
        masks[i % 40, : 1 + i % 50, i] = 1
    det = ImageDetections(list(mask_utils.encode(masks)), np.linspace(1, 0.1, 300))
    results = to_coco_results(7, det)
    assert [r["area"] for r in results] == [1 + i % 50 for i in range(300)]
    assert all(r["bbox"][3] == 1 for r in results)


def test_prediction_on_a_cpu_autocasts_to_bfloat16_only_when_asked(predictor, monkeypatch):
    monkeypatch.setattr("livecellseg.runtime.cpu_has_bf16", lambda: True)  # even on a bf16 CPU
    p = Predictor(predictor.model, torch.device("cpu"), tiny_predict_settings())
    assert p.settings.stitch.amp and p.autocast_dtype() is None
    p.cpu_bf16 = True
    assert p.autocast_dtype() == torch.bfloat16
