"""Tiny training runs: determinism, resume after an interruption, non-finite loss, DDP."""

import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import yaml

from livecellseg import engine, training
from livecellseg.checkpoint import FORMAT, load_checkpoint
from livecellseg.config import parse_params
from livecellseg.errors import LivecellsegError
from livecellseg.novelty import describe_training_data
from livecellseg.training import train_model
from tests.helpers import ROOT, make_tiles, tiny_train_params, train_custom_args


@pytest.fixture(scope="module", autouse=True)
def small_training_look():
    """The description of the training data that ends a run is novelty's (tested there and in
    test_settings): here 16 train tiles of it suffice, for every run of this module alike."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            training, "describe_training_data", partial(describe_training_data, max_train_tiles=16)
        )
        yield


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    return make_tiles(tmp_path_factory.mktemp("tiles"))


@pytest.fixture(scope="module")
def full(tiles, tmp_path_factory, raw_params):
    """One uninterrupted tiny run, which the determinism and resume tests both compare with."""
    out = tmp_path_factory.mktemp("full")
    return out, _train(tiles, out, tiny_train_params(raw_params))


def _train(tiles, out, params, name="custom", resume=True):
    return train_model(
        name,
        parse_params(params),
        tiles=tiles,
        best=out / f"{name}.pt",
        last=out / f"{name}_last.pt",
        live_dir=out / "live",
        resume=resume,
    )


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


@pytest.mark.slow  # trains
def test_two_runs_give_identical_metrics_and_weights(tiles, full, tmp_path, raw_params):
    a, s1 = full
    _train(tiles, tmp_path / "b", tiny_train_params(raw_params))
    m1 = (a / "live/metrics.json").read_text()
    assert m1 == (tmp_path / "b/live/metrics.json").read_text()
    assert _same_weights(_weights(a / "custom_last.pt"), _weights(tmp_path / "b/custom_last.pt"))
    for name in ("custom.pt", "custom_last.pt"):  # byte-identical: what DVC hashes
        assert (a / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert s1["epochs_done"] == 2 and s1["params"]["all_total"] == 30_958_337
    ckpt = torch.load(a / "custom_last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "params", "versions"} <= set(ckpt)
    best = torch.load(a / "custom.pt", weights_only=True)  # for prediction only
    assert not {"optimizer", "scheduler", "scaler"} & set(best) and "params" in best
    assert (a / "custom.pt").stat().st_size < 0.4 * (a / "custom_last.pt").stat().st_size
    assert ckpt["versions"]["torch"] == torch.__version__
    assert (a / "live/plots/metrics/batch/loss_mask.tsv").exists()
    assert (a / "live/plots/metrics/epoch/time_s.tsv").exists()
    assert "time_s" not in json.loads(m1)["epoch"]  # run-to-run noise stays out of metrics


@pytest.mark.slow  # trains
def test_interrupted_run_resumes_to_the_same_result(tiles, full, tmp_path, raw_params, monkeypatch):
    params = tiny_train_params(raw_params)

    real = engine.train_one_epoch
    calls = {"n": 0}

    def dies_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        _train(tiles, tmp_path / "cut", params)
    assert torch.load(tmp_path / "cut/custom_last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(engine, "train_one_epoch", real)
    summary = _train(tiles, tmp_path / "cut", params)
    assert summary["epochs_done"] == 2
    assert _same_weights(
        _weights(full[0] / "custom_last.pt"), _weights(tmp_path / "cut/custom_last.pt")
    )
    rows = (tmp_path / "cut/live/plots/metrics/epoch/train_loss.tsv").read_text().splitlines()
    assert len(rows) == 3  # header + the epoch before and the epoch after the interruption

    # other params: the stale checkpoint is not continued
    changed = tiny_train_params(raw_params, custom={"lr": 5e-4})
    assert _train(tiles, tmp_path / "cut", changed)["epochs_done"] == 2


@pytest.mark.slow  # trains
def test_transfer_two_phases_offline(tiles, tmp_path, raw_params):
    params = tiny_train_params(raw_params)
    summary = _train(tiles, tmp_path, params, name="transfer")
    assert summary["pretrained"] is False
    # no COCO weights: the untrained layout, everything trained in both phases
    assert summary["params"]["all_total"] == 43_975_515
    assert summary["params"]["all_trainable"] == 43_975_515
    ckpt = torch.load(tmp_path / "transfer_last.pt", weights_only=True)
    assert ckpt["phase"] == 1 and ckpt["epoch"] == 2
    assert ckpt["run"]["pretrained"] is False
    lrs = (tmp_path / "live/plots/metrics/epoch/lr.tsv").read_text().splitlines()[1:]
    phase1, phase2 = (float(row.split("\t")[-1]) for row in lrs)
    assert phase2 == pytest.approx(phase1 * params["transfer"]["unfrozen_lr_ratio"])


def test_non_finite_loss_stops_with_a_message():
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, images, targets):
            return {"loss_mask": self.w * float("nan")}

    model = Exploding()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    batch = ([torch.zeros(3, 4, 4)], [{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(
        engine.NonFiniteLoss, match="non-finite loss nan .* lower the learning rate"
    ):
        engine.train_one_epoch(
            model, opt, sched, [batch], torch.device("cpu"), scaler=None, grad_clip=1.0
        )


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(LivecellsegError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(LivecellsegError, match="not a livecellseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"model": {}, "format": FORMAT + 1}, tmp_path / "new.pt")
    with pytest.raises(LivecellsegError, match="newer than this livecellseg"):
        load_checkpoint(tmp_path / "new.pt")


@pytest.mark.slow  # trains, in two processes
def test_ddp_two_cpu_processes(tiles, tmp_path, raw_params):
    params = tiny_train_params(raw_params, custom={"epochs": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    r = subprocess.run(
        [  # the stage's command, started by torchrun instead of python
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
            *train_custom_args(tmp_path / "params.yaml", tiles, out)[1:],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(out / "custom.pt", weights_only=True)["epoch"] == 1
    assert json.loads((out / "live/metrics.json").read_text())["epochs_done"] == 1
    assert r.stderr.count("epoch 1/1 (phase 1)") == 1  # logged by rank 0 only
