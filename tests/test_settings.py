"""One source of settings: params.yaml -> settings -> checkpoint -> the CLI predicts exactly
what the pipeline's stitch_predict wrote, whatever the tile and predict params; the trained
geometry is checked, the post-processing is the caller's."""

import argparse
import ast
import json
from pathlib import Path

import pytest
import yaml

from livecellseg.cli import main as cli
from livecellseg.config import parse_params
from livecellseg.errors import LivecellsegError
from livecellseg.predict import Predictor
from livecellseg.settings import params_predict_settings
from livecellseg.training import train_model
from stages.stitch_predict import main as stitch_predict
from tests.helpers import make_tiles, scratch_dir, tiny_train_params

# an untrained model scores low: keep every detection, so there are cells to compare
KEEP_ALL = {"score_thresh": 0.0, "min_score": 0.0, "detections_per_img": 40}
CHANGED = {  # other tiles and stitching than params.yaml's, each of them in effect
    "tile": {"grid": 5, "window": 2},
    "predict": {"min_owned": 0.3, "nms_iou": 0.4, "batch_size": 3, "rpn_score_thresh": 0.1},
}


@pytest.fixture(scope="module", params=[{}, CHANGED], ids=["params.yaml", "changed"])
def pipeline(request, tmp_path_factory, raw_params):
    """A tiny custom model trained with the given sections changed, and stitch_predict's
    output on its test image: (params, the stage's arguments)."""
    with scratch_dir(tmp_path_factory, "pipeline") as tmp_path:
        changed = dict(request.param)
        predict = KEEP_ALL | changed.pop("predict", {})
        raw = tiny_train_params(raw_params, custom={"epochs": 1}, predict=predict, **changed)
        params = parse_params(raw)
        params_file = tmp_path / "params.yaml"
        params_file.write_text(yaml.safe_dump(raw))
        tiles = make_tiles(tmp_path / "tiles", grid=params.tile.grid, window=params.tile.window)
        best = tmp_path / "custom.pt"
        train_model(
            "custom",
            params,
            tiles=tiles,
            best=best,
            last=tmp_path / "last.pt",
            live_dir=tmp_path / "l",
        )
        args = argparse.Namespace(
            params=str(params_file),
            checkpoint=best,
            model="custom",
            split=tiles / "_split" / "test.json",
            images=tiles / "_images",
            out=tmp_path / "predictions.json",
            counts=tmp_path / "counts.csv",
        )
        stitch_predict(params, args)
        yield params, args


def _detections(results: list[dict]) -> list[tuple]:
    return [(r["segmentation"]["counts"], r["score"], r["bbox"], r["area"]) for r in results]


@pytest.mark.slow  # trains (the pipeline fixture)
def test_cli_predicts_what_stitch_predict_wrote(pipeline, tmp_path):
    params, args = pipeline
    predictor, _ = Predictor.from_checkpoint(args.checkpoint, "cpu")
    assert predictor.settings == params_predict_settings(params)  # recorded, not code defaults
    assert predictor.settings.stitch.grid == params.tile.grid
    written = json.loads(args.out.read_text())
    test_images = json.loads(args.split.read_text())["images"]
    for im in test_images:
        path = args.images / im["file_name"]
        argv = ["predict", str(path), "--model", str(args.checkpoint), "--out", str(tmp_path)]
        assert cli(argv) == 0
        doc = json.loads((tmp_path / f"{path.stem}_coco.json").read_text())
        mine = [r for r in written if r["image_id"] == im["id"]]
        assert len(mine) > 0
        assert _detections(doc["annotations"]) == _detections(mine)


@pytest.mark.slow  # trains (the pipeline fixture)
def test_training_records_what_the_model_saw_and_prediction_flags_what_differs(pipeline):
    import csv

    import numpy as np
    import torch

    from livecellseg.images import read_gray

    params, args = pipeline
    look = torch.load(args.checkpoint, weights_only=True)["look"]
    assert look["tiles"][0] > 0 and look["tiles"][1] > 0 and look["threshold"] > 0
    with open(args.counts) as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["distance"]) > 0 and r["unlike_training"] in ("True", "False") for r in rows)
    predictor, _ = Predictor.from_checkpoint(args.checkpoint, torch.device("cpu"))
    (im,) = json.loads(args.split.read_text())["images"]
    image = read_gray(args.images / im["file_name"])
    seen = predictor.segment(image).look
    assert not seen.unlike  # a test image of the same sample
    # a model trained for 2 steps: an inverted image lies farther than the test image, noise
    # beyond the threshold; how the default run's models flag magnified, shrunk, inverted and
    # blurred images is measured by bench/novelty.py (docs/screens.md)
    assert predictor.segment(255 - image).look.distance > seen.distance
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    odd = predictor.segment(noise).look
    assert odd.unlike and odd.distance > seen.distance


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("model", "anchor_sizes", [9, 18, 36, 72, 144]),
        ("model", "min_size", 80),
        ("tile", "grid", 9),
    ],
)
@pytest.mark.slow  # trains (the pipeline fixture)
def test_stitch_predict_refuses_a_checkpoint_trained_with_other_geometry(
    pipeline, section, key, value
):
    params, args = pipeline
    raw = yaml.safe_load(Path(args.params).read_text())
    raw[section][key] = value
    with pytest.raises(LivecellsegError, match=rf"trained with other settings .*{section}\.{key}"):
        stitch_predict(parse_params(raw), args)


@pytest.mark.slow  # trains (the pipeline fixture)
def test_stitch_predict_takes_post_processing_from_params_not_the_checkpoint(pipeline, tmp_path):
    params, args = pipeline
    raw = yaml.safe_load(Path(args.params).read_text())
    raw["predict"].update(score_thresh=0.5, min_score=0.5, nms_iou=0.3)
    out = argparse.Namespace(
        **vars(args) | {"out": tmp_path / "p.json", "counts": tmp_path / "c.csv"}
    )
    stitch_predict(parse_params(raw), out)  # no refusal: it does not shape the weights
    scores = [r["score"] for r in json.loads(out.out.read_text())]
    assert all(s > 0.5 for s in scores)  # params.yaml's min_score, not the recorded 0.0
    assert len(scores) < len(json.loads(args.out.read_text()))


SETTING_NAMES = {  # params.yaml keys that say how a model predicts, tiles or stitches
    "grid",
    "window",
    "min_visible",
    "min_owned",
    "nms_iou",
    "score_thresh",
    "min_score",
    "nms_thresh",
    "mask_thresh",
    "iou_thresh",
    "detections_per_img",
    "rpn_pre_nms_top_n",
    "rpn_post_nms_top_n",
    "rpn_score_thresh",
    "box_batch_size_per_image",
    "mask_rois_per_image",
    "min_size",
    "max_size",
}


def _is_number(node: ast.AST | None) -> bool:
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _defaulted(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every function argument or class field named like a setting that has
    a number as its default (None, meaning "the recorded one", is fine)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            positional = a.posonlyargs + a.args
            with_default = positional[len(positional) - len(a.defaults) :]
            pairs = list(zip(with_default, a.defaults, strict=True))
            pairs += list(zip(a.kwonlyargs, a.kw_defaults, strict=True))
            found += [
                (arg.lineno, arg.arg)
                for arg, default in pairs
                if arg.arg in SETTING_NAMES and _is_number(default)
            ]
        elif isinstance(node, ast.AnnAssign) and _is_number(node.value):
            name = getattr(node.target, "id", None)
            if name in SETTING_NAMES:
                found.append((node.lineno, name))
    return found


def test_no_module_writes_a_default_for_a_setting():
    """params.yaml is the one source: a default in code would silently differ from it."""
    src = Path(__file__).resolve().parents[1] / "src" / "livecellseg"
    offenders = [
        f"{path.relative_to(src)}:{line} {name}"
        for path in sorted(src.rglob("*.py"))
        for line, name in _defaulted(ast.parse(path.read_text()))
    ]
    assert offenders == [], offenders


def test_the_default_finder_finds_defaults():
    code = (
        "def f(a, grid=7, *, nms_iou=0.5, b=1, score_thresh=None): pass\n"
        "class S:\n    window: int = 3\n    mode: str = 'x'\n"
    )
    assert _defaulted(ast.parse(code)) == [(1, "grid"), (1, "nms_iou"), (3, "window")]


@pytest.mark.slow  # trains (the pipeline fixture)
def test_cli_counts_the_cells_evaluate_and_growth_count(pipeline, tmp_path):
    """With default settings the CLI's count of an image is evaluate's and growth's: one
    operating threshold, recorded at training and read by the pipeline from params.yaml."""
    import csv

    import torch

    from stages.evaluate import main as evaluate_stage
    from stages.growth import main as growth_stage

    params, args = pipeline
    written = json.loads(args.out.read_text())
    scores = sorted(r["score"] for r in written)
    thresh = scores[len(scores) // 2]  # the median score: some detections are cells, some not
    # the model as if trained beside this operating threshold: its record is the CLI's default
    ckpt = torch.load(args.checkpoint, weights_only=True)
    ckpt["params"]["predict"]["score_thresh"] = thresh
    model = tmp_path / "custom.pt"
    torch.save(ckpt, model)
    raw = yaml.safe_load(Path(args.params).read_text())
    raw["predict"]["score_thresh"] = thresh
    params = parse_params(raw)
    evaluated = argparse.Namespace(
        predictions=args.out,
        split=args.split,
        images=args.images,
        metrics=tmp_path / "metrics.json",
        plots=tmp_path / "plots",
    )
    evaluate_stage(params, evaluated)
    grown = argparse.Namespace(
        split=args.split,
        predictions=[args.out],
        metrics=tmp_path / "growth.json",
        plots=tmp_path / "growth",
        figure=tmp_path / "growth.png",
    )
    growth_stage(params, grown)

    (im,) = json.loads(args.split.read_text())["images"]
    out = tmp_path / "cli"
    assert (
        cli(
            [
                "predict",
                str(args.images / im["file_name"]),
                "--model",
                str(model),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    with open(out / "summary.csv") as f:
        (row,) = list(csv.DictReader(f))
    evaluate_count = json.loads(evaluated.metrics.read_text())["pred"]
    (well,) = grown.plots.glob("*.csv")
    with open(well) as f:
        (counts,) = list(csv.DictReader(f))
    assert 0 < int(row["cells"]) < len(written)
    assert int(row["cells"]) == evaluate_count == round(float(counts[args.out.stem]))


def test_trained_differences_names_each_geometry_key_that_changed(raw_params):
    """What stitch_predict refuses (tested end to end above and in test_bad_inputs): a record
    of other anchors, input scale, normalisation, tile grid or window; post-processing is not
    part of it."""
    from livecellseg.settings import TRAINED_GEOMETRY, recorded_params, trained_differences

    params = parse_params(raw_params)
    record = recorded_params("custom", params)
    assert trained_differences(record, "custom", params) == []
    changed = dict(raw_params, predict=dict(raw_params["predict"], nms_iou=0.3))
    assert trained_differences(record, "custom", parse_params(changed)) == []
    for section, keys in TRAINED_GEOMETRY.items():
        for key in keys:
            other = {s: dict(v) if isinstance(v, dict) else v for s, v in raw_params.items()}
            value = other[section][key]
            if isinstance(value, list):  # anchors (px) doubled, normalisation halved
                value = [v * 2 if isinstance(v, int) else v / 2 for v in value]
            else:
                value += 1
            other[section][key] = value
            assert trained_differences(record, "custom", parse_params(other)) == [
                f"{section}.{key}"
            ]
