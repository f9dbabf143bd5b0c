"""End to end: the DVC pipeline in a temporary copy of the project, on a tiny sample."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from livecellseg.trainlog import VARYING
from tests.helpers import ROOT, RangeHandler, scratch_dir, serve_site

pytestmark = pytest.mark.slow
# one time point: each image is a well of its own (the by-well split is tested in test_split)
TINY_SAMPLE = {"n_images": 6, "empty_images": 1, "cell_lines": ["A172", "BV2"], "hours": [0]}


def _copy_project(dst: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("metrics/", "dvc.lock")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    # outputs hard-linked to the cache, not copied: each copy's checkpoints once on disk
    # (CI's disk is small); stages write by rename, so a link is never written through
    (dst / ".dvc/config.local").write_text("[cache]\n    type = hardlink\n")
    return dst


def _sh(args, cwd, *, stdout_only=False, threads=None):
    env = {
        **os.environ,
        **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(cwd),
    }
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{args} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout if stdout_only else r.stdout + r.stderr


def _sh_together(*runs):
    """Several commands at once, each in its own directory and on one thread: much of a run
    (process starts, DVC, data stages) is single-threaded, so two overlap on two cores."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: _sh(*run, threads=1), runs))


def _set_params(project: Path, **sections):
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    with scratch_dir(tmp_path_factory, "project") as p:
        _copy_project(p)
        _set_params(p, sample=TINY_SAMPLE)
        yield p


def test_repro_tile_then_nothing_to_do(project):
    _sh(["dvc", "repro", "tile"], project)
    report = json.loads((project / "metrics/tile.json").read_text())
    assert report["total"]["images"] == 6 and report["total"]["tiles"] == 150
    assert report["total"]["lost"] == 0
    assert {k: report[k]["images"] for k in ("train", "val", "test")} == {
        "train": 4,
        "val": 1,
        "test": 1,
    }
    tiles = json.loads((project / "data/tiles/train.json").read_text())
    assert (
        len(tiles["images"]) == 100 and len(list((project / "data/tiles/train").iterdir())) == 100
    )
    assert sum(r["tiles"] for r in (report["train"], report["val"], report["test"])) == 150
    subset = json.loads((project / "metrics/subset.json").read_text())
    assert subset["images_chosen"] == 6 and subset["annotations_skipped"] == 0
    fit = json.loads((project / "metrics/anchors.json").read_text())  # of the train tiles
    assert fit["boxes"] == len(tiles["annotations"]) > 0
    for name in ("transfer", "custom"):
        assert set(fit[name]["per_cell_line"]) <= {"A172", "BV2"}
        assert 0 <= fit[name]["positive"] <= fit[name]["centred"]["positive"] <= 1
        assert len(fit[name]["suggested_sizes"]) == 5
    assert "metrics/anchors.json" in _sh(["dvc", "metrics", "show"], project)

    again = _sh(["dvc", "repro", "tile"], project)
    assert "Running stage" not in again
    assert again.count("didn't change, skipping") == 4


def test_real_livecell_path_from_a_local_server(project, tmp_path):
    _sh(["dvc", "repro", "sample"], project)  # the sample stands in for the real archive
    raw = project / "data" / "sample"
    www = tmp_path / "www"
    base = www / "LIVECell_dataset_2021"
    (base / "annotations" / "LIVECell").mkdir(parents=True)
    shutil.make_archive(str(base / "images"), "zip", raw, "images")
    for f in (raw / "annotations").iterdir():
        shutil.copy(f, base / "annotations" / "LIVECell" / f.name)

    class H(RangeHandler):
        ranges_seen = []

    get_livecell = [sys.executable, "-m", "livecellseg.cli", "get-livecell", "data/livecell"]
    server, url = serve_site(www, H)
    try:
        _sh([*get_livecell, "--base-url", url], project)
    finally:
        server.shutdown()
    _sh(["dvc", "commit", "--force", "data.dvc"], project)
    assert "md5" in (project / "data.dvc").read_text()
    _set_params(project, data={"source": "livecell"})
    _sh(["dvc", "repro", "subset"], project)
    subset = json.loads((project / "metrics/subset.json").read_text())
    assert subset["source"] == "livecell" and subset["images_chosen"] == 6
    assert "data.dvc" not in _sh(["dvc", "status", "data.dvc"], project).replace(
        "Data and pipelines are up to date.", ""
    )


def _tiny_project(dst: Path, raw_params) -> Path:
    """A fresh copy on the tiny profile, committed (dvclive needs a commit; a clone has one)."""
    from tests.helpers import tiny_train_params

    p = _copy_project(dst)
    tiny = tiny_train_params(raw_params)
    _set_params(
        p,
        sample=TINY_SAMPLE,
        **{k: tiny[k] for k in ("model", "train", "transfer", "custom", "predict")},
    )
    _sh(["git", "add", "-A"], p)
    _sh([*GIT, "commit", "-qm", "project"], p)
    return p


GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _lock_outs(project: Path) -> dict[str, str]:
    """Every output's hash in dvc.lock, but dvclive's plots (they hold epoch time and memory)."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for name, stage in lock["stages"].items()
        for out in stage.get("outs", [])
        if not out["path"].endswith("/plots/metrics")
    }


def _changed_stages(project: Path) -> set[str]:
    """What `dvc status` names, through DVC's API (one process start instead of one per call)."""
    from dvc.repo import Repo

    with contextlib.chdir(project), Repo(str(project)) as repo:  # names relative to the root
        status = repo.status()
    return {name for name in status if not name.startswith("data.dvc")}


STITCH = {"stitch_predict@transfer", "stitch_predict@custom"}
EVALUATE = {"evaluate@transfer", "evaluate@custom"}


def _changed(value):
    """Another valid value for a predict param."""
    if isinstance(value, str):
        return {"stitched": "whole", "whole": "stitched"}[value]
    if isinstance(value, int):
        return value + 1
    return round(value + 0.05 if value < 0.9 else value - 0.05, 4)


def _post_processing_never_retrains(project: Path) -> None:
    """Each key of `predict` changed alone: only stages after the network are stale (dvc
    status names the stages whose own dependencies changed; the rest follow on a run)."""
    text = (project / "params.yaml").read_text()
    predict = yaml.safe_load(text)["predict"]
    try:
        for key, value in predict.items():
            change = {key: _changed(value)}
            if key == "min_score":  # stays <= score_thresh
                change = {key: round(value - 0.05, 4)}
            _set_params(project, predict=change)
            stale = _changed_stages(project)
            expected = {  # the operating threshold is applied after stitching
                "score_thresh": EVALUATE | {"growth"},
                "min_score": STITCH | EVALUATE,  # evaluate's threshold curve starts there
            }.get(key, STITCH)
            assert stale == expected, (key, stale)
            (project / "params.yaml").write_text(text)
    finally:
        (project / "params.yaml").write_text(text)


def _weight_shaping_retrains_both(project: Path) -> None:
    """A param that shapes the weights: both training stages are stale."""
    text = (project / "params.yaml").read_text()
    try:
        for change in (
            {"train": {"warmup_steps": 3}},
            {"train": {"val_score_thresh": 0.6}},
            {"model": {"box_batch_size_per_image": 32}},
            {"evaluate": {"iou_thresh": 0.6}},
        ):
            _set_params(project, **change)
            stale = _changed_stages(project)
            assert {"train_transfer", "train_custom"} <= stale, (change, stale)
            (project / "params.yaml").write_text(text)
    finally:
        (project / "params.yaml").write_text(text)


def test_full_pipeline_twice_identical_then_an_experiment(tmp_path, raw_params):
    """dvc repro through evaluate on a tiny profile in two fresh copies: the same metrics and
    outputs to the bit. A param change reruns only the stages that read it. Then
    `dvc exp run -S model.lr=1e-4`: exp show, metrics diff and plots diff see both runs."""
    from tests.helpers import CHROMIUM, rendered_plots

    p = _tiny_project(tmp_path / "a", raw_params)
    q = _tiny_project(tmp_path / "b", raw_params)
    _sh_together([["dvc", "repro"], p], [["dvc", "repro"], q])
    metrics = sorted(f.relative_to(p) for f in (p / "metrics").rglob("*.json"))
    # subset, tile, anchors, two training summaries, two evaluations, growth, finetune
    assert len(metrics) == 9
    # no corrections in a fresh clone: the finetune stage says so and writes no model
    assert json.loads((p / "metrics/finetune/metrics.json").read_text()) == {"corrections": 0}
    assert list((p / "models/finetuned").iterdir()) == []
    for f in metrics:
        assert (p / f).read_text() == (q / f).read_text(), f
    assert _lock_outs(p) == _lock_outs(q) and len(_lock_outs(p)) >= 14
    curves = sorted(f.relative_to(p) for f in (p / "metrics").rglob("*.tsv"))
    for f in curves:  # every logged curve, but time and memory
        if f.stem not in VARYING:
            assert (p / f).read_text() == (q / f).read_text(), f
    for name in ("transfer", "custom"):
        m = json.loads((p / f"metrics/{name}.json").read_text())
        assert m["gt"] > 0 and {"f1", "miou", "ap", "ap50", "per_cell_line"} <= set(m)
        results = json.loads((p / f"predictions/{name}.json").read_text())
        assert isinstance(results, list)
        assert (p / f"plots/{name}/precision_recall.csv").exists()
        thresholds = (p / f"plots/{name}/thresholds.csv").read_text().splitlines()
        assert thresholds[0] == "score_thresh,precision,recall,f1" and len(thresholds) > 2
        assert m["score_thresh"] == 0.5 and set(m["best_threshold"]) >= {"score_thresh", "f1"}
        assert len(list((p / f"plots/{name}/overlays").glob("*.png"))) == 1  # 1 test image

    growth = json.loads((p / "metrics/growth.json").read_text())
    assert growth["images"] == 1 and set(growth) >= {"truth", "transfer", "custom"}
    (fit,) = growth["truth"]["wells"].values()  # one frame: no doubling time, and why
    assert fit["doubling_h"] is None and fit["reason"].startswith("not estimable")
    assert len(list((p / "plots/growth").glob("*.csv"))) == 1

    # a param change: dvc status names the stages that read it...
    assert _changed_stages(q) == set()
    _post_processing_never_retrains(q)
    _weight_shaping_retrains_both(q)
    _set_params(q, predict={"nms_iou": 0.6}, model={"lr": 1e-3})  # lr: the transfer model's
    assert _changed_stages(q) == {"train_transfer"} | STITCH

    # ...and a run reruns only those and what depends on their outputs
    _sh(["git", "add", "-A"], p)
    _sh([*GIT, "commit", "-qm", "base"], p)
    out = _sh(["dvc", "exp", "run", "-S", "model.lr=1e-4"], p)
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert {"train_transfer", "stitch_predict@transfer"} <= ran, out[-3000:]
    # evaluate@transfer and growth too when the predictions changed (a tiny model may
    # predict nothing)
    assert ran <= {"train_transfer", "stitch_predict@transfer", "evaluate@transfer", "growth"}, ran
    shown = _sh(["dvc", "exp", "show", "--no-pager", "--csv"], p)
    assert "0.0001" in shown and "0.005" in shown
    _sh(["dvc", "metrics", "diff", "HEAD", "--all"], p)
    _sh(["dvc", "params", "diff", "HEAD"], p)
    _sh(["dvc", "plots", "diff", "HEAD", "-o", "plots_html"], p)
    html = (p / "plots_html/index.html").read_text()
    assert "HEAD" in html and "workspace" in html
    if CHROMIUM:
        drawn = rendered_plots(p / "plots_html/index.html")
        assert drawn["errors"] == [] and drawn["plots"] >= 6 and drawn["images"] >= 2
