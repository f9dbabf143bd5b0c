"""Kills: a training stage SIGKILLed mid-epoch resumes to the uninterrupted result, and a kill
during a checkpoint write leaves the previous checkpoint whole."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from livecellseg import checkpoint, trainlog
from tests.helpers import ROOT, make_tiles, scratch_dir, tiny_train_params, train_custom_args

STEPS_PER_EPOCH = 4  # max_tiles_per_epoch 8 / batch_size 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory, raw_params):
    with scratch_dir(tmp_path_factory, "kill") as base:
        tiles = make_tiles(base / "tiles")
        params = tiny_train_params(raw_params, train={"max_tiles_per_epoch": 8})
        (base / "params.yaml").write_text(yaml.safe_dump(params))
        full = base / "full"
        r = _stage(base, full).communicate(timeout=600)
        assert (full / "custom_last.pt").exists(), r
        yield base, tiles, full


def _stage(base, out):
    return subprocess.Popen(
        train_custom_args(base / "params.yaml", base / "tiles", out),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _logged_steps(out, name="batch/loss.tsv"):
    path = out / "live/plots/metrics" / name
    if not path.exists():
        return []
    return [int(r.split("\t")[0]) for r in path.read_text().splitlines()[1:] if r.strip()]


@pytest.mark.slow  # trains
def test_sigkill_mid_epoch_then_rerun_completes_from_the_last_checkpoint(setup):
    base, _, full = setup
    cut = base / "cut"
    proc = _stage(base, cut)
    deadline = time.monotonic() + 600
    while max(_logged_steps(cut), default=0) <= STEPS_PER_EPOCH + 1:  # inside epoch 2
        assert proc.poll() is None and time.monotonic() < deadline, "finished before the kill"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(cut / "custom_last.pt", weights_only=True)["epoch"] == 1
    assert max(_logged_steps(cut)) > STEPS_PER_EPOCH  # the killed epoch's steps were logged

    _, err = _stage(base, cut).communicate(timeout=600)
    assert "resuming custom" in err and "at epoch 1 of 2" in err, err[-2000:]
    for name in ("custom.pt", "custom_last.pt"):  # the same bytes as a run never killed
        assert (cut / name).read_bytes() == (full / name).read_bytes()
    assert (cut / "live/metrics.json").read_text() == (full / "live/metrics.json").read_text()
    for tsv in ("batch/loss.tsv", "batch/lr.tsv", "epoch/val_f1.tsv", "epoch/train_loss.tsv"):
        assert _logged_steps(cut, tsv) == _logged_steps(full, tsv)  # each step once
        a, b = ((d / "live/plots/metrics" / tsv).read_text() for d in (cut, full))
        assert a == b


KILLED_WRITER = """
import io, os, signal, sys, torch
from pathlib import Path
from livecellseg import checkpoint

real_save = torch.save
def save_half_then_die(obj, f):  # the process dies with half the bytes on disk
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
state = {"format": checkpoint.FORMAT, "model": {"w": torch.ones(100_000)}, "epoch": 2}
checkpoint.save_checkpoint(state, Path(sys.argv[1]))
"""


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "custom_last.pt"
    checkpoint.save_checkpoint(
        {"format": checkpoint.FORMAT, "model": {"w": torch.zeros(3)}, "epoch": 1}, path
    )
    before = path.read_bytes()
    r = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], cwd=ROOT)
    assert r.returncode == -signal.SIGKILL
    assert path.read_bytes() == before and checkpoint.load_checkpoint(path)["epoch"] == 1
    (stale,) = tmp_path.glob(".custom_last.pt.*.tmp")  # what the killed writer left
    assert stale.stat().st_size > 0
    from livecellseg.io import remove_stale_temps

    assert remove_stale_temps(path) == 1 and list(tmp_path.iterdir()) == [path]


@pytest.mark.slow  # trains (the setup fixture)
def test_a_truncated_checkpoint_stops_the_stage_with_one_line(setup, tmp_path):
    base, _, full = setup
    out = tmp_path / "out"
    out.mkdir()
    data = (full / "custom_last.pt").read_bytes()
    (out / "custom_last.pt").write_bytes(data[: len(data) // 3])
    _, err = _stage(base, out).communicate(timeout=600)
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last == (
        f"error: {out / 'custom_last.pt'}: not a readable checkpoint (RuntimeError); "
        "delete it and retrain"
    ), err[-2000:]
    assert "Traceback" not in err and not (out / "custom.pt").exists()


def test_a_stage_output_directory_replaces_what_a_killed_run_left(tmp_path):
    from livecellseg.io import atomic_dir

    out = tmp_path / "tiles"
    stale = tmp_path / ".tiles.k1ll3d.tmp"  # what a SIGKILL inside `with atomic_dir` leaves
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "half.tif").write_bytes(b"half")
    with atomic_dir(out) as tmp:
        (tmp / "done.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]
    assert [p.name for p in out.iterdir()] == ["done.json"]


def test_dvclive_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    metrics = tmp_path / "plots" / "metrics"
    (metrics / "batch").mkdir(parents=True)
    (metrics / "epoch").mkdir()
    (metrics / "batch" / "loss.tsv").write_text("step\tloss\n1\t0.5\n2\t0.4\n3\t0.3\n4\t0.")
    (metrics / "epoch" / "val_f1.tsv").write_text("step\tval_f1\n1\t0.1\n2\t0.2\n")
    (metrics / "epoch" / "lr.tsv").write_text("ste")  # created, killed before the header ended
    trainlog.trim_live_logs(tmp_path, epoch_step=1, batch_step=2)
    assert (metrics / "batch" / "loss.tsv").read_text() == "step\tloss\n1\t0.5\n2\t0.4\n"
    assert (metrics / "epoch" / "val_f1.tsv").read_text() == "step\tval_f1\n1\t0.1\n"
    assert not (metrics / "epoch" / "lr.tsv").exists()  # dvclive writes it anew, header first
