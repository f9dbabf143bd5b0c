"""`dvc plots show` renders offline: the page is opened in headless Chromium with every
network request blocked, and the plots must draw."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    return subprocess.run(
        [str(dvc), *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=300
    )


def rendered_plots(html: Path) -> dict:
    """Open `html` in headless Chromium, no network; count drawn Vega plots and errors."""
    if CHROMIUM is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    blocked: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()

        def route(r):
            if r.request.url.startswith("file://"):
                return r.continue_()
            blocked.append(r.request.url)
            return r.abort()

        page.route("**/*", route)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_function(
            "document.querySelectorAll('svg.marks, canvas.marks').length > 0", timeout=30_000
        )
        counts = page.evaluate(
            """() => ({
                plots: document.querySelectorAll('svg.marks, canvas.marks').length,
                images: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
                // drawn pixels: not transparent and not white, over all plot canvases
                inked: [...document.querySelectorAll('canvas.marks')].map(c => {
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0;
                    for (let i = 0; i < d.length; i += 4)
                        if (d[i + 3] > 0 && (d[i] < 200 || d[i + 1] < 200 || d[i + 2] < 200)) n++;
                    return n;
                }),
            })"""
        )
        page.screenshot(path=str(html.with_suffix(".png")))
        browser.close()
    return counts | {"blocked": blocked, "errors": errors}


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
