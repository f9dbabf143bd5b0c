"""Screen-scale prediction: a directory tree streamed, resumed after a SIGKILL, sharded over two
torchrun processes (gloo, CPU), with the same outputs as one uninterrupted process."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from livecellseg.images import write_gray
from livecellseg.screen import equal_outputs, plan
from tests.helpers import ROOT, save_tiny_checkpoint, small_image

N_IMAGES = 100  # one of them unreadable


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "livecellseg", "predict", *args]


def _env() -> dict:
    return os.environ | {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def screen(tmp_path_factory, raw_params):
    """A plate of 99 small images in well folders plus one truncated file, and a checkpoint."""
    d = tmp_path_factory.mktemp("screen")
    plate = d / "plate1"
    base, _ = small_image(width=96, height=72)
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES - 1):
        shift = rng.integers(-20, 20)
        image = np.clip(base.astype(int) + shift, 0, 255).astype(np.uint8)
        write_gray(plate / f"B{i % 4 + 2}" / f"img_{i:03d}.tif", np.roll(image, i, axis=1))
    good = (plate / "B2" / "img_000.tif").read_bytes()
    (plate / "B3" / "broken.tif").write_bytes(good[: len(good) // 3])
    (plate / ".hidden.tif").write_bytes(b"not looked at")
    ckpt = save_tiny_checkpoint(d / "custom.pt", raw_params)
    return plate, ckpt


def _args(plate: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    # an untrained model scores everything ~0.5: few detections keep the test fast
    return [
        *(str(plate), "--model", str(ckpt), "--out", str(out), "--mode", "whole"),
        *("--set", "detections_per_img=4", "--score", "0", *extra),
    ]


@pytest.fixture(scope="module")
def uninterrupted(screen, tmp_path_factory):
    plate, ckpt = screen
    out = tmp_path_factory.mktemp("one") / "out"
    r = subprocess.run(_cli(*_args(plate, ckpt, out)), capture_output=True, text=True, env=_env())
    assert r.returncode == 1, r.stderr[-2000:]  # the broken file
    return out, r


def _running(out: Path) -> list:
    import psutil

    alive = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if str(out) in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            alive.append(p)
    return alive


def _summary(out: Path) -> list[dict]:
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.pop("seconds")
    return rows


@pytest.mark.slow  # processes end to end
def test_the_plate_layout_is_kept_and_a_bad_file_is_one_line(screen, uninterrupted):
    plate, _ = screen
    out, r = uninterrupted
    assert (out / "B2" / "img_000_coco.json").is_file()
    assert len(list(out.rglob("*_labels.tif"))) == N_IMAGES - 1
    rows = _summary(out)
    assert len(rows) == N_IMAGES
    (bad,) = [row for row in rows if not row["status"].startswith("ok")]
    assert bad["output"] == "B3/broken" and bad["status"].startswith("skipped: ")
    assert sum("broken.tif" in line for line in r.stderr.splitlines()) == 1
    assert f"{N_IMAGES - 1} of {N_IMAGES} images segmented" in r.stdout
    doc = json.loads((out / "B2" / "img_000_coco.json").read_text())
    assert doc["images"][0]["cells"] == len(doc["annotations"])
    assert doc["images"][0]["prediction"]["model"] == "custom"


@pytest.mark.slow  # processes end to end
def test_a_killed_run_resumes_to_the_outputs_of_an_uninterrupted_one(
    screen, uninterrupted, tmp_path
):
    plate, ckpt = screen
    out = tmp_path / "out"
    args = _cli(*_args(plate, ckpt, out))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.monotonic() + 300
    while len(list(out.rglob("*_coco.json"))) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the main process only, as the OOM killer does
    proc.wait()
    before = len(list(out.rglob("*_coco.json")))
    deadline = time.monotonic() + 30  # its DataLoader workers die with it
    while _running(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(out)
    assert 10 <= before < N_IMAGES - 1
    r = subprocess.run(args, capture_output=True, text=True, env=_env())
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"{before} done before (skipped)" in r.stderr
    assert f"{before} of them done before (skipped)" in r.stdout
    assert equal_outputs(uninterrupted[0], out) == []
    assert _summary(out) == _summary(uninterrupted[0])
    assert not [p for p in out.rglob(".*") if p.name.endswith(".tmp")]
    # again: nothing left to do, and the same summary
    r = subprocess.run(args, capture_output=True, text=True, env=_env())
    assert f"{N_IMAGES - 1} done before (skipped), 1 to segment" in r.stderr  # the broken one


@pytest.mark.slow  # processes end to end
def test_two_torchrun_ranks_write_what_one_process_writes(screen, uninterrupted, tmp_path):
    plate, ckpt = screen
    out = tmp_path / "out"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "livecellseg",
            "predict",
            *_args(plate, ckpt, out, "--workers", "1"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert r.returncode != 0  # the broken file: exit code 1 on every rank (torchrun says so)
    frames = [line for line in r.stderr.splitlines() if line.strip().startswith("File ")]
    assert not [f for f in frames if "livecellseg" in f], r.stderr[-3000:]
    assert "rank 0/2: 50 images" in r.stderr and "rank 1/2: 50 images" in r.stderr
    assert equal_outputs(uninterrupted[0], out) == []
    assert _summary(out) == _summary(uninterrupted[0])
    assert r.stdout.count("images segmented") == 1  # one summary, from rank 0


def test_plan_is_sorted_skips_hidden_files_and_the_output_inside_the_input(tmp_path):
    d = tmp_path / "in"
    for name in ("b/2.tif", "a/1.png", "a/sub/3.TIF", ".git/x.tif", "a/notes.txt"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"")
    (d / "segmentations").mkdir()
    (d / "segmentations" / "1_overlay.png").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    jobs, problems = plan([d, tmp_path / "empty"], d / "segmentations")
    assert [j.output for j in jobs] == ["a/1", "a/sub/3", "b/2"]
    assert jobs[1].coco == (d / "segmentations" / "a" / "sub" / "3_coco.json").resolve()
    assert len(problems) == 1 and "empty: no .tif" in problems[0]
