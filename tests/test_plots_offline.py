"""`dvc plots show` renders offline: the page is opened in headless Chromium with every
network request blocked, and the plots must draw."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, rendered_plots


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    return subprocess.run(
        [str(dvc), *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=300
    )


@pytest.mark.slow  # dvc and Chromium
def test_dvc_plots_show_renders_offline(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    (repo / ".dvc/plots").mkdir()
    shutil.copy(ROOT / ".dvc/plots/offline.html", repo / ".dvc/plots/offline.html")
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # plots.html_template
    (repo / "pr.csv").write_text("recall,precision\n0.0,1.0\n0.5,0.8\n1.0,0.3\n")
    (repo / "lines.csv").write_text("cell_line,f1\nA172,0.7\nBV2,0.4\n")
    (repo / "dvc.yaml").write_text(
        "plots:\n"
        "  - pr.csv: {x: recall, y: precision, template: linear}\n"
        "  - lines.csv: {x: f1, y: cell_line, template: bar_horizontal}\n"
    )
    _dvc(repo, "plots", "show", "-o", "out")
    html = repo / "out/index.html"
    assert "cdn.jsdelivr.net" not in html.read_text()
    result = rendered_plots(html)
    assert result["errors"] == [] and result["blocked"] == []
    assert result["plots"] == 2
    assert len(result["inked"]) == 2 and min(result["inked"]) > 500, result["inked"]
