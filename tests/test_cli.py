"""The `livecellseg` command: predict's outputs and its handling of bad files, export, help."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image
from pycocotools import mask as mask_utils

from livecellseg.cli import main
from livecellseg.images import write_gray
from tests.helpers import save_tiny_checkpoint, small_image


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, raw_params):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("models") / "custom.pt", raw_params)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    image, _ = small_image()
    write_gray(d / "gray.tif", image)
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(d / "colour.png")
    tifffile.imwrite(d / "deep.tif", image.astype(np.uint16) * 200 + 1000)  # 16-bit
    full = (d / "gray.tif").read_bytes()
    (d / "truncated.tif").write_bytes(full[: len(full) // 3])
    (d / "notes.txt").write_text("not an image, and not picked up from a directory")
    return d


def test_every_command_has_complete_help():
    exe = shutil.which("livecellseg", path=str(sys.executable.rsplit("/", 1)[0]))
    assert exe, "the console script is installed with the package"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("predict", "growth", "app", "explain", "export"):
        assert command in out
        sub = subprocess.run([exe, command, "--help"], capture_output=True, text=True, check=True)
        assert "usage: livecellseg " + command in sub.stdout
    predict_help = subprocess.run([exe, "predict", "--help"], capture_output=True, text=True).stdout
    for option in ("--model", "--out", "--score", "--mode", "--set", "--device"):
        assert option in predict_help


def test_predict_writes_label_tiff_coco_and_overlay_and_skips_a_bad_file(
    checkpoint, inputs, tmp_path, capsys, caplog
):
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            str(inputs),
            "--model",
            str(checkpoint),
            "--out",
            str(out),
            "--score",
            "0",
            "--mode",
            "whole",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 1  # one file failed
    assert "3 of 4 images segmented" in printed and "1 could not be read" in printed
    assert "truncated.tif" in caplog.text and "RGB converted to gray" in caplog.text
    assert "uint16 rescaled to 8-bit" in caplog.text
    image, _ = small_image()
    for stem in ("gray", "colour", "deep"):
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        doc = json.loads((out / f"{stem}_coco.json").read_text())
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        anns = doc["annotations"]
        assert labels.dtype == np.uint16 and labels.shape == image.shape
        assert overlay.shape == (*image.shape, 3)
        assert doc["images"][0]["file_name"].startswith(stem)
        assert len(anns) > 0 and labels.max() <= len(anns)
        assert set(np.unique(labels)) <= set(range(len(anns) + 1))
        # every labelled pixel belongs to its cell's mask
        for label in np.unique(labels)[1:6]:
            mask = mask_utils.decode(anns[label - 1]["segmentation"]).astype(bool)
            assert mask[labels == label].all()
    gray = json.loads((out / "gray_coco.json").read_text())["annotations"]
    colour = json.loads((out / "colour_coco.json").read_text())["annotations"]
    assert len(gray) == len(colour)  # gray RGB is the same image
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 5 and any("truncated" in r and "skipped" in r for r in rows)
    assert not (out / "truncated_labels.tif").exists()
    assert not list(out.glob(".*.tmp"))


def test_score_threshold_filters_the_same_prediction(checkpoint, inputs, tmp_path):
    for score in ("0", "0.5"):
        main(
            [
                "predict",
                str(inputs / "gray.tif"),
                "--model",
                str(checkpoint),
                "--out",
                str(tmp_path / score),
                "--score",
                score,
                "--mode",
                "whole",
            ]
        )
    low = json.loads((tmp_path / "0" / "gray_coco.json").read_text())["annotations"]
    high = json.loads((tmp_path / "0.5" / "gray_coco.json").read_text())["annotations"]
    assert all(a["score"] > 0.5 for a in high)
    assert [a["score"] for a in high] == [a["score"] for a in low if a["score"] > 0.5]


def test_post_processing_defaults_are_the_checkpoints_and_overridable(
    tmp_path, inputs, raw_params, caplog, capsys
):
    caplog.set_level("INFO")
    raw = {**raw_params, "predict": raw_params["predict"] | {"score_thresh": 0.3, "mode": "whole"}}
    ckpt = save_tiny_checkpoint(tmp_path / "custom.pt", raw)
    image = str(inputs / "gray.tif")
    base = ["predict", image, "--model", str(ckpt), "--out", str(tmp_path / "o")]
    assert main(base) == 0
    assert "whole mode, score > 0.30" in caplog.text  # the recorded predict section
    caplog.clear()
    changed = [*base, "--set", "mode=stitched", "--set", "predict.score_thresh=0.4"]
    assert main(changed) == 1  # the outputs there were made with other settings: not mixed
    assert "segmented with another model or settings" in capsys.readouterr().err
    assert main([*changed, "--overwrite"]) == 0
    assert "stitched mode, score > 0.40" in caplog.text


@pytest.mark.parametrize(
    "override, message",
    [
        ("bogus=1", "unknown key 'predict.bogus'"),
        ("nms_thresh", "--set nms_thresh: give KEY=VALUE"),
        ("nms_thresh=high", "'predict.nms_thresh' must be a number, got 'high'"),
        ("min_owned=1.5", "bad value for 'predict.min_owned'"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(
    checkpoint, inputs, tmp_path, capsys, override, message
):
    argv = ["predict", str(inputs / "gray.tif"), "--model", str(checkpoint), "--out", str(tmp_path)]
    assert main([*argv, "--set", override]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # nothing written


def test_stitched_mode_runs_from_the_cli(checkpoint, inputs, tmp_path):
    rc = main(
        [
            "predict",
            str(inputs / "gray.tif"),
            "--model",
            str(checkpoint),
            "--out",
            str(tmp_path),
            "--score",
            "0",
        ]
    )
    assert rc == 0
    assert tifffile.imread(tmp_path / "gray_labels.tif").max() > 0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pt", "checkpoint not found"),
        (lambda d: (d / "junk.pt").write_bytes(b"junk") and d / "junk.pt", "not a readable"),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_it(make, message, inputs, tmp_path, capsys):
    path = make(tmp_path)
    rc = main(
        ["predict", str(inputs / "gray.tif"), "--model", str(path), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and message in err and str(path) in err and len(err.splitlines()) == 1


def test_no_images_and_bad_score_are_clear_errors(checkpoint, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--model", str(checkpoint)]) == 1
    assert "no images found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), "--model", str(checkpoint), "--score", "2"]) == 1
    assert "--score 2" in capsys.readouterr().err


def test_repeated_file_names_do_not_overwrite_each_other(tmp_path):
    from livecellseg.screen import plan

    files = [tmp_path / p for p in ("a/x.tif", "b/x.tif", "y.png", "c/x.png")]
    jobs, problems = plan(files, tmp_path / "out")
    assert [j.output for j in jobs] == ["x", "x_2", "y", "x_3"] and not problems


def test_export_drops_training_state_and_predicts_the_same(checkpoint, inputs, tmp_path):
    import torch

    big = torch.load(checkpoint, weights_only=True)
    big["optimizer"] = {"state": {0: {"exp_avg": torch.zeros(200_000)}}, "param_groups": []}
    torch.save(big, tmp_path / "full.pt")
    assert main(["export", str(tmp_path / "full.pt"), str(tmp_path / "small.pt")]) == 0
    small = torch.load(tmp_path / "small.pt", weights_only=True)
    assert "optimizer" not in small and small["name"] == "custom"
    assert (tmp_path / "small.pt").stat().st_size < (tmp_path / "full.pt").stat().st_size
    for name in ("full", "small"):
        main(
            [
                "predict",
                str(inputs / "gray.tif"),
                "--model",
                str(tmp_path / f"{name}.pt"),
                "--out",
                str(tmp_path / name),
                "--score",
                "0",
                "--mode",
                "whole",
            ]
        )
    full, small = (
        json.loads((tmp_path / name / "gray_coco.json").read_text()) for name in ("full", "small")
    )
    assert full["annotations"] == small["annotations"]
