"""Explanation hooks on tiny untrained models: names, shares, maps, figures, hooks removed."""

import json
from dataclasses import replace

import pytest
import torch

from livecellseg.cli import main
from livecellseg.explain import explain_image, hook_targets, save_explanation
from livecellseg.images import write_gray
from livecellseg.predict import Predictor
from tests.helpers import build, save_tiny_checkpoint, small_image, tiny_predict_settings


def tiny_predictor(name: str, model=None) -> Predictor:
    """An untrained tiny model (seeded) as a predictor: keeps every detection."""
    if model is None:
        torch.manual_seed(0)
        model = build(name)
    return Predictor(model, torch.device("cpu"), tiny_predict_settings())


@pytest.fixture(scope="module")
def image():
    return small_image()[0]


@pytest.mark.parametrize(
    "name",
    ["custom", pytest.param("transfer", marks=pytest.mark.slow)],  # a ResNet-50: big
)
def test_every_part_is_hooked_shares_sum_to_100_and_hooks_are_removed(name, image, tmp_path):
    torch.manual_seed(0)
    model = tiny_predictor(name).model
    exp = explain_image(tiny_predictor(name, model), image, top=3)
    expected = [f"layer{i}" for i in range(1, 5)]
    expected += [f"cbam{i}" for i in range(1, 5)] if name == "custom" else []
    expected += ["fpn.P2", "fpn.P3", "fpn.P4", "fpn.P5", "fpn.pool", "rpn", "box_head", "mask_head"]
    assert sorted(exp.importance) == sorted(expected) and exp.not_run == []
    assert sum(exp.importance.values()) == pytest.approx(100, abs=1e-2)
    assert all(v > 0 for v in exp.importance.values())
    assert exp.detections > 0
    # maps are cropped to the image: stride 4 at layer1/P2, 8 at layer2/P3
    h, w = image.shape
    assert exp.activity["layer1"].mean_map.shape == (-(-h // 4), -(-w // 4))
    assert exp.activity["fpn.P3"].mean_map.shape == (-(-h // 8), -(-w // 8))
    assert [len(a.top) for a in exp.activity.values()] == [3] * len(exp.activity)
    attention = {"rpn.objectness"} | (
        {f"cbam{i}.spatial" for i in range(1, 5)} if name == "custom" else set()
    )
    assert set(exp.attention) == attention
    assert all(m.min() >= 0 and m.max() <= 1 for m in exp.attention.values())
    assert all(not m._forward_hooks for m in model.modules())
    files = save_explanation(exp, image, tmp_path)
    assert {f.name for f in files} >= {
        "importance.json",
        "importance.png",
        "layer1.png",
        "attention_rpn_objectness.png",
    }
    assert json.loads((tmp_path / "importance.json").read_text())["importance_percent"] == (
        exp.importance
    )


def test_hooks_are_removed_when_the_forward_pass_fails(image):
    torch.manual_seed(0)
    model = tiny_predictor("custom").model

    def fail(*_):
        raise ValueError("boom")

    ours = model.roi_heads.box_head.register_forward_hook(fail)
    with pytest.raises(ValueError, match="boom"):
        explain_image(tiny_predictor("custom", model), image)
    ours.remove()
    assert all(not m._forward_hooks for m in model.modules())


def test_the_mask_head_is_reported_as_not_run_without_detections(image):
    torch.manual_seed(0)
    settings = tiny_predict_settings()
    nothing_passes = replace(settings, inference=replace(settings.inference, score_thresh=1.0))
    model = tiny_predictor("custom").model
    exp = explain_image(Predictor(model, torch.device("cpu"), nothing_passes), image)
    assert exp.detections == 0 and exp.not_run == ["mask_head"]
    assert sum(exp.importance.values()) == pytest.approx(100, abs=1e-2)
    assert set(hook_targets(model)) - {"fpn"} - set(exp.importance) == {"mask_head"}


def test_explain_command(image, tmp_path, raw_params, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "custom.pt", raw_params)
    write_gray(tmp_path / "img.tif", image)
    assert (
        main(
            [
                "explain",
                str(tmp_path / "img.tif"),
                "--model",
                str(ckpt),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 0
    )
    assert "cbam1" in capsys.readouterr().out
    assert (tmp_path / "x" / "attention_cbam4_spatial.png").stat().st_size > 0
