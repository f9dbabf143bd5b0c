"""The "unlike the training data" description: pooling, shrinkage, threshold, checkpoint round
trip, and the Predictor's use of it in both modes (tiny untrained model)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from livecellseg.models import build_model
from livecellseg.novelty import (
    FULL,
    FeatureTap,
    TrainingLook,
    fit_look,
    ledoit_wolf,
    pool_features,
    tile_features,
)
from livecellseg.predict import Predictor
from tests.helpers import default_model_settings, small_image, tiny_inference, tiny_predict_settings


def test_pool_features_averages_each_region_of_each_level_without_padding():
    # image 0 is 64x32 at the input, image 1 32x32; the batch is padded to 64x64
    level0 = torch.zeros(2, 1, 16, 16)  # stride 4
    level0[0, 0, :8, :2] = 1.0  # image 0 (16x8 valid cells): 16 cells at its top left
    level0[1, 0, 8:, :] = 5.0  # image 1: all padding, never averaged
    level1 = torch.ones(2, 1, 8, 8)  # stride 8
    feats = pool_features(
        {"0": level0, "1": level1},
        [(64, 32), (32, 32)],
        64,
        [[FULL, (0.0, 0.5, 0.0, 0.5)], [FULL]],
        ("0", "1"),
    )
    assert feats[0].shape == (2, 2) and feats[1].shape == (1, 2)
    np.testing.assert_allclose(feats[0][0], [16 / 128, 1.0])
    np.testing.assert_allclose(feats[0][1], [16 / 32, 1.0])  # its top-left quarter: 8x4 cells
    np.testing.assert_allclose(feats[1][0], [0.0, 1.0])


def test_ledoit_wolf_is_a_shrunk_invertible_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 80)) * np.linspace(0.5, 2, 80)  # more features than samples
    mean, cov, shrinkage = ledoit_wolf(x)
    np.testing.assert_allclose(mean, x.mean(0))
    assert 0 < shrinkage < 1
    assert np.linalg.eigvalsh(cov).min() > 0  # the sample covariance alone is singular
    # with many samples of few features it barely shrinks
    y = rng.normal(size=(5000, 3)) * [1, 2, 3]
    _, cov_y, s_y = ledoit_wolf(y)
    assert s_y < 0.01
    np.testing.assert_allclose(np.diag(cov_y), [1, 4, 9], rtol=0.1)


def _look(rng, n=400, d=6, q=0.9):
    train = rng.normal(size=(n, d))
    val = rng.normal(size=(n, d))
    tiles = [rng.integers(100, 140, size=(8, 8)).astype(np.uint8) for _ in range(20)]
    return fit_look(train, val, tiles, [100.0, 200.0, 300.0], levels=("0",), quantile=q)


def test_threshold_is_the_validation_quantile_and_shifted_data_is_unlike():
    rng = np.random.default_rng(1)
    look = _look(rng)
    val_like = rng.normal(size=(2000, 6))
    share = (look.distances(val_like) > look.threshold).mean()
    assert 0.04 < share < 0.2  # ~10% above the 0.9 quantile of held-out data like it
    shifted = rng.normal(size=(2000, 6)) + 3.0
    assert (look.distances(shifted) > look.threshold).mean() > 0.95
    assert look.cell_area == 200.0 and look.tiles == (400, 400)


def test_training_look_survives_a_checkpoint_round_trip(tmp_path):
    look = _look(np.random.default_rng(2))
    path = tmp_path / "c.pt"
    torch.save({"look": look.record()}, path)
    again = TrainingLook.from_record(torch.load(path, weights_only=True)["look"])
    x = np.random.default_rng(3).normal(size=(10, 6))
    np.testing.assert_allclose(again.distances(x), look.distances(x), rtol=1e-5)
    assert again.threshold == look.threshold and again.levels == look.levels


def test_image_statistics_name_what_differs():
    look = _look(np.random.default_rng(4))
    feats = np.zeros((1, 6))
    same = look.look(feats, [np.full((8, 8), 120, np.uint8)])
    bright = look.look(feats, [np.full((8, 8), 250, np.uint8)])
    assert same.reasons() == "" or "contrast" in same.reasons()
    assert bright.grey_z > 3 and "brighter" in bright.reasons()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, _ = build_model(
        "custom",
        inference=tiny_inference(),
        sampling=default_model_settings()[1],
        arch=default_model_settings()[2],
    )
    model.eval()
    images = [small_image(seed=s)[0] for s in (1, 2, 3, 4)]
    return model, images


def test_predictor_flags_an_out_of_focus_image_in_both_modes_without_changing_detections(tiny):
    model, images = tiny
    device = torch.device("cpu")
    settings = tiny_predict_settings(batch_size=7)
    levels = ("0", "1", "2", "3", "pool")
    tiles = []
    for im in images:
        h, w = im.shape
        tiles += [im[: h // 2, : w // 2], im[h // 2 :, w // 2 :], im[: h // 2, w // 2 :]]
    x = tile_features(model, tiles, device, levels)
    look = fit_look(x[::2], x[1::2], tiles, [50.0], levels=levels)
    predictor = Predictor(model, device, settings, look)
    image = images[0]
    distance = {}
    for mode in ("stitched", "whole"):
        seg = predictor.segment(image, mode)
        det, counts = predictor(image, mode)  # the same detections, with or without a look
        assert [r["counts"] for r in seg.det.rles] == [r["counts"] for r in det.rles]
        assert seg.look is not None and np.isfinite(seg.look.distance)
        distance[mode] = seg.look.distance
        blurred = ndimage.gaussian_filter(image.astype(np.float32), 3)  # out of focus
        odd = predictor.segment(np.rint(blurred).astype(np.uint8), mode).look
        assert odd.unlike and odd.distance > seg.look.distance
    # both modes measure the image's tiles as training measured its tiles
    assert distance["whole"] == pytest.approx(distance["stitched"], rel=1e-3)
    # without a training look, or not asked for, there is none
    assert Predictor(model, device, settings).segment(image, "whole").look is None
    assert predictor.segment(image, "whole", look=False).look is None


def test_whole_mode_batches_images_of_one_size_to_the_same_results(tiny):
    model, images = tiny
    device = torch.device("cpu")
    predictor = Predictor(model, device, tiny_predict_settings(batch_size=3))
    many = predictor.segment_many(images, "whole")
    for im, seg in zip(images, many, strict=True):
        one = predictor.segment(im, "whole")
        assert len(one.det.rles) == len(seg.det.rles)
        np.testing.assert_allclose(one.det.scores, seg.det.scores, atol=1e-4)


def test_tap_is_removed_after_use(tiny):
    model, images = tiny
    tap = FeatureTap(("0",))
    with tap.tapped(model):
        pass
    assert not model.transform._forward_hooks and not model.backbone._forward_hooks
    with pytest.raises(RuntimeError):
        tap.pooled()
