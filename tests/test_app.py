"""The app: Segmenter's caches and views (no browser), then the real app in headless Chromium."""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from livecellseg.app import MIN_SCORE, Segmenter, find_checkpoints, find_examples
from livecellseg.images import write_gray
from livecellseg.predict import Predictor
from tests.conftest import save_tiny_checkpoint, small_image
from tests.test_plots_offline import CHROMIUM


@pytest.fixture(scope="module")
def setup(tmp_path_factory, raw_params):
    root = tmp_path_factory.mktemp("app")
    ckpt = save_tiny_checkpoint(root / "models" / "custom.pt", raw_params)
    save_tiny_checkpoint(root / "models" / "custom_last.pt", raw_params, seed=1)
    image, _ = small_image()
    (root / "examples" / "sub").mkdir(parents=True)
    write_gray(root / "examples" / "sub" / "BV2_Phase_A1_1_00d00h00m_1.tif", image)
    return root, ckpt, image


def test_checkpoints_and_examples_are_found(setup):
    root, ckpt, _ = setup
    assert find_checkpoints(root / "models") == {
        "custom (best val F1)": ckpt,
        "custom_last (last epoch)".replace("custom_last", "custom"): ckpt.with_name(
            "custom_last.pt"
        ),
    }
    assert list(find_examples(root / "examples")) == ["BV2_Phase_A1_1_00d00h00m_1.tif"]
    assert find_examples(root / "nowhere") == {}


def test_prediction_is_cached_and_a_threshold_view_equals_predicting_at_it(setup, tmp_path):
    _, ckpt, image = setup
    seg = Segmenter("cpu")
    first = seg.predict(image, ckpt, "whole")
    calls = []
    model = seg.predictor(ckpt).model
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    assert seg.predict(image.copy(), ckpt, "whole") is first  # same pixels: no model call
    assert calls == []
    seg.predict(image, ckpt, "stitched")  # another mode: a new prediction
    assert calls
    hook.remove()
    scores = first.detections.scores
    assert len(scores) > 2 and (scores > MIN_SCORE).all()
    threshold = float(np.median(scores))
    view = seg.view(first, threshold)
    direct, _ = Predictor.from_checkpoint(ckpt, torch.device("cpu"), score_thresh=threshold)
    det, _ = direct(image, "whole")
    assert view.count == len(det.scores) == (scores > threshold).sum()
    np.testing.assert_allclose(np.sort(first.detections.scores[view.keep]), np.sort(det.scores))
    labels, coco = seg.write_downloads(first, view, "img", tmp_path)
    lab = tifffile.imread(labels)
    doc = json.loads(coco.read_text())
    assert lab.dtype == np.uint16 and lab.max() <= view.count == len(doc["annotations"])
    assert np.isclose(view.mean_area, np.mean([a["area"] for a in doc["annotations"]]))


def test_model_cache_is_bounded(setup):
    root, ckpt, _ = setup
    seg = Segmenter("cpu", max_models=1)
    a = seg.predictor(ckpt)
    assert seg.predictor(ckpt) is a
    seg.predictor(root / "models" / "custom_last.pt")
    assert seg.predictor(ckpt) is not a  # evicted, reloaded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(setup, tmp_path_factory):
    root, _, _ = setup
    port = _free_port()
    exe = Path(sys.executable).with_name("livecellseg")
    log = open(root / "app.log", "w")  # noqa: SIM115
    env = os.environ | {"GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    proc = subprocess.Popen(
        [
            str(exe),
            "app",
            "--models",
            str(root / "models"),
            "--examples",
            str(root / "examples"),
            "--port",
            str(port),
            "--max-upload-mb",
            "1",
            "--device",
            "cpu",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the app did not start:\n{(root / 'app.log').read_text()}")
            time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _threshold_between(scores: np.ndarray, near: float) -> float:
    """A slider value (2 decimals) that no score is close to, near `near`."""
    candidates = np.round(np.arange(0.06, 0.95, 0.01), 2)
    gaps = np.array([np.abs(scores - c).min() for c in candidates])
    ok = candidates[gaps > 0.003]
    return float(ok[np.argmin(np.abs(ok - near))])


def test_app_in_a_real_browser(setup, app_url, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    root, ckpt, image = setup
    scores = Segmenter("cpu").predict(image, ckpt, "whole").detections.scores
    low = _threshold_between(scores, 0.4)
    high = _threshold_between(scores, float(np.quantile(scores, 0.75)))
    assert (scores > low).sum() != (scores > high).sum()
    external: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})

        def route(r):
            if r.request.url.startswith(app_url):
                return r.continue_()
            external.append(r.request.url)  # the page must work offline
            return r.abort()

        page.route("**/*", route)
        page.goto(app_url)
        page.get_by_label("whole").check()
        page.wait_for_timeout(1000)
        assert page.get_by_text("no image yet").count() == 0  # no error for a control alone
        number = page.locator("#score input[type=number]")
        number.fill(f"{low:.2f}")
        number.press("Enter")
        page.locator("#upload input[type=file]").set_input_files(
            root / "examples" / "sub" / "BV2_Phase_A1_1_00d00h00m_1.tif"
        )

        def wait_summary(text: str) -> str:
            page.wait_for_function(
                "t => (document.querySelector('#summary')?.innerText || '').includes(t)",
                arg=text,
                timeout=120_000,
            )
            return page.locator("#summary").inner_text()

        summary = wait_summary(f"above score {low:.2f}")
        count = int(page.locator("#count input").input_value())
        assert count == (scores > low).sum() and f"{count} cells" in summary
        overlay = page.locator("#overlay img")
        first_src = overlay.get_attribute("src")
        page.wait_for_function(
            "() => document.querySelector('#overlay img')?.complete"
            " && document.querySelector('#overlay img').naturalWidth > 0"
        )
        assert overlay.evaluate("i => i.naturalWidth") == image.shape[1]
        links = [a.get_attribute("href") for a in page.locator("#downloads a").all()]
        label_url = next(u for u in links if u and u.endswith("_labels.tif"))
        labels = tifffile.imread(io.BytesIO(page.request.get(label_url).body()))
        assert labels.dtype == np.uint16 and labels.shape == image.shape and labels.max() > 0
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

        # move the slider: cached prediction, new count and overlay
        page.locator("#score input[type=range]").fill(f"{high:.2f}")
        wait_summary(f"above score {high:.2f}")
        page.wait_for_function(
            "src => document.querySelector('#overlay img')?.src !== src", arg=first_src
        )
        assert int(page.locator("#count input").input_value()) == (scores > high).sum()
        bars = page.locator("#areas")
        bars.locator("canvas, svg").first.wait_for(timeout=30_000)  # drawn in the page, offline

        # explain the current image
        page.get_by_role("tab", name="Explain").click()
        page.locator("#explain").click()
        page.wait_for_function(
            "() => (document.querySelector('#importance')?.innerText || '').includes('cbam4')",
            timeout=120_000,
        )
        assert "mask_head" in page.locator("#importance").inner_text()

        # a file that is not an image: a message in the page, not a traceback
        page.get_by_role("tab", name="Segment").click()
        fake = tmp_path / "fake.tif"
        fake.write_text("<html>not an image</html>")
        page.locator("#upload button[aria-label='Clear']").click()
        page.locator("#upload input[type=file]").set_input_files(fake)
        page.get_by_text("cannot be read as an image").first.wait_for(timeout=60_000)
        assert "Traceback" not in page.content()

        # too large for --max-upload-mb 1: refused by the server
        big = tmp_path / "big.tif"
        big.write_bytes(os.urandom(2 * 2**20))
        page.locator("#upload button[aria-label='Clear']").click()
        page.locator("#upload input[type=file]").set_input_files(big)
        page.get_by_text("maximum", exact=False).first.wait_for(timeout=60_000)
        browser.close()
    assert external == []


def test_twenty_concurrent_clients_through_the_api(setup, app_url, tmp_path):
    """20 sessions at once (bench/app_load.py's bounded client): uploads of 4 images and a
    non-image, each followed by /segment. No error but the non-image's message; every image
    gets the library's count; the same image requested at once is predicted once."""
    pytest.importorskip("gradio_client")
    from bench.app_load import run_round

    root, ckpt, _ = setup
    images = []
    seg = Segmenter("cpu")
    expected = {}
    for seed in range(4):
        image, _ = small_image(seed=10 + seed)
        path = tmp_path / f"BV2_Phase_A1_1_00d00h00m_{seed}.tif"
        write_gray(path, image)
        images.append(path)
        expected[path.name] = seg.view(seg.predict(image, ckpt, "whole"), 0.3).count
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not an image at all")
    log = root / "app.log"
    made_before = log.read_text().count("predicted ")

    results = run_round(app_url, [*images, junk], 20, 20, "custom (best val F1)", "whole", 0.3)
    assert len(results) == 20
    errors = [r for r in results if "error" in r]
    assert {r["image"] for r in errors} == {"junk.tif"} and len(errors) == 4
    assert all("cannot be read as an image" in r["error"] for r in errors), errors[0]
    for r in results:
        if "cells" in r:
            assert r["cells"] == expected[r["image"]], r
    assert log.read_text().count("predicted ") - made_before == 4  # once per image
