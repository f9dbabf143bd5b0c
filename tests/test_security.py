"""Security: nothing unpickles arbitrary objects, archives cannot write outside their target
(tests/test_livecell.py), and the app listens on 127.0.0.1 unless told otherwise."""

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch

from livecellseg.checkpoint import load_checkpoint
from livecellseg.errors import LivecellsegError
from tests.helpers import ROOT

SOURCES = sorted(p for d in ("src", "stages", "bench", "scripts") for p in (ROOT / d).rglob("*.py"))


def _calls(tree):
    """(call, owner name or "" , function name, a bare name call like eval(...))"""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                yield node, "", f.id, True
            elif isinstance(f, ast.Attribute):
                owner = f.value.id if isinstance(f.value, ast.Name) else ""
                yield node, owner, f.attr, False


def _kw(node, name):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(value) -> bool:
    return isinstance(value, ast.Constant) and value.value is True


def _problems(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "marshal") for n in names):
                out.append(f"{node.lineno}: imports a pickle module")
    for node, owner, name, bare in _calls(tree):
        loads_torch = (owner == "torch" and name == "load") or name in (
            "load_state_dict_from_url",
            "get_state_dict",
        )
        if loads_torch and not _is_true(_kw(node, "weights_only")):
            out.append(f"{node.lineno}: {owner}.{name} without weights_only=True")
        if owner == "np" and name == "load" and _is_true(_kw(node, "allow_pickle")):
            out.append(f"{node.lineno}: np.load with allow_pickle")
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
            out.append(f"{node.lineno}: yaml.{name} (use yaml.safe_load)")
        if bare and name in ("eval", "exec"):
            out.append(f"{node.lineno}: {name}()")
        if _is_true(_kw(node, "shell")):
            out.append(f"{node.lineno}: subprocess with shell=True")
        if name == "extractall":
            out.append(f"{node.lineno}: extractall (use livecell.safe_extract)")
    return [f"{path.relative_to(root)}:{line}" for line in out]


def test_no_code_loads_pickles_or_evaluates_text(tmp_path):
    assert [p for path in SOURCES for p in _problems(path)] == []
    bad = tmp_path / "bad.py"  # the scan finds what it looks for
    bad.write_text(
        "import pickle\nimport torch, yaml\ntorch.load('x')\nyaml.load(s)\neval('1')\n"
        "torch.hub.load_state_dict_from_url(u)\nz.extractall(d)\n"
    )
    found = _problems(bad, tmp_path)
    assert len(found) == 6, found


class RunsCode:
    """A pickle that runs code when loaded without weights_only (here: writes a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_a_checkpoint_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "custom.pt"
    torch.save({"format": 1, "model": {}, "x": RunsCode(marker)}, evil)
    with pytest.raises(LivecellsegError, match="not a readable checkpoint"):
        load_checkpoint(evil)
    assert not marker.exists()
    with open(tmp_path / "plain.pkl", "wb") as f:  # proves the payload works when unpickled
        pickle.dump(RunsCode(marker), f)
    with open(tmp_path / "plain.pkl", "rb") as f:
        pickle.load(f)  # noqa: S301
    assert marker.read_text() == "code ran"


def test_transfer_weights_load_only_tensors(tmp_path, monkeypatch):
    from torchvision.models import _api

    from livecellseg.models import build
    from tests import helpers

    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    torch.save({"w": RunsCode(marker)}, evil)
    model = helpers.build("transfer", pretrained_layout=True)
    with pytest.raises(LivecellsegError, match="not a loadable state_dict"):
        build.transfer_weights(str(evil))
    assert not marker.exists()

    seen = {}

    def fake_download(url, *args, **kwargs):  # what torchvision's COCO weights loading gets
        seen.update(kwargs)
        return model.state_dict()

    monkeypatch.setattr(_api, "load_state_dict_from_url", fake_download)
    assert build.transfer_weights("coco") is not None
    assert seen["weights_only"] is True and seen["check_hash"] is True


@pytest.mark.slow  # starts the app's server
def test_the_app_binds_to_localhost_by_default(tmp_path, monkeypatch, raw_params):
    import gradio as gr

    from livecellseg.cli import main
    from tests.helpers import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path / "models" / "custom.pt", raw_params)
    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    os.environ.pop("GRADIO_SERVER_NAME", None)
    assert main(["app", "--models", str(tmp_path / "models"), "--device", "cpu"]) == 0
    assert seen["server_name"] == "127.0.0.1" and seen["max_file_size"] == 20 * 2**20
    assert main(["app", "--models", str(tmp_path / "models"), "--host", "0.0.0.0"]) == 0
    assert seen["server_name"] == "0.0.0.0"  # only when asked
