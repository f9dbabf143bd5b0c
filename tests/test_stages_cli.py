"""Stages as a user runs them: a bad input ends with one line on stderr and exit code 1."""

import subprocess
import sys

import yaml

from livecellseg.livecell import index_images
from tests.helpers import ROOT, make_livecell_root


def _stage(name, *args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args], cwd=cwd, capture_output=True, text=True
    )


def _last_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    return lines[-1]


def test_bad_params_file(tmp_path, raw_params):
    bad = dict(raw_params, tile={**raw_params["tile"], "grid": "seven"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    r = _stage("split", "--params", str(tmp_path / "params.yaml"), "--subset", "x", "--out", "y")
    assert r.returncode == 1
    assert _last_line(r) == "error: params.yaml: 'tile.grid' must be an integer, got 'seven'"
    assert "Traceback" not in r.stderr


def test_missing_image_leaves_no_output(tmp_path):
    root = make_livecell_root(tmp_path / "raw", n_images=4, width=140, height=100)
    missing = sorted(index_images(root).values())[-1]
    missing.unlink()
    out = tmp_path / "subset"
    r = _stage(
        "subset", "--raw", str(root), "--out", str(out), "--report", str(tmp_path / "subset.json")
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert _last_line(r).startswith(f"error: {root}/images/**/{missing.name}: image not found")
    assert not out.exists() and not (tmp_path / "subset.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temporary left behind
