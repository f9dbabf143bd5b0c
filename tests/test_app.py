"""The app: Segmenter's caches and views and the event handlers (plain functions, no Gradio),
then the real app in headless Chromium."""

import copy
import io
import json
import os
import shutil
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
from PIL import Image

from livecellseg.app import (
    MAX_SCORE,
    MIN_SCORE,
    TOOLS,
    Segmenter,
    checkpoint_defaults,
    click,
    close_outline,
    editing_view,
    example_path,
    explain,
    find_checkpoints,
    find_examples,
    finetune_corrections,
    save_correction,
    segment,
    start_correction,
    undo,
)
from livecellseg.correct import Corrections
from livecellseg.errors import LivecellsegError
from livecellseg.images import write_gray
from livecellseg.predict import Predictor
from tests.helpers import CHROMIUM, add_training_look, save_tiny_checkpoint, small_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory, raw_params):
    root = tmp_path_factory.mktemp("app")
    ckpt = save_tiny_checkpoint(root / "models" / "custom.pt", raw_params, score_spread=100)
    last = copy.deepcopy(raw_params)
    last["predict"]["score_thresh"] = 0.3  # the slider moves to it when this checkpoint is chosen
    save_tiny_checkpoint(root / "models" / "custom_last.pt", last, seed=1, score_spread=100)
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
    direct, _ = Predictor.from_checkpoint(
        ckpt, torch.device("cpu"), overrides={"score_thresh": threshold, "min_score": threshold}
    )
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


def test_segment_returns_what_the_segment_tab_shows(setup, tmp_path):
    root, ckpt, image = setup
    seg, checkpoints = Segmenter("cpu"), find_checkpoints(root / "models")
    source = example_path(find_examples(root / "examples"), "BV2_Phase_A1_1_00d00h00m_1.tif")
    result = segment(seg, checkpoints, source, "custom (best val F1)", "whole", 0.3, tmp_path)
    view = seg.view(seg.predict(image, ckpt, "whole"), 0.3)
    assert result.count == view.count > 0 and result.mean_area == round(view.mean_area, 1)
    np.testing.assert_array_equal(result.overlay, view.overlay)
    # what the page shows: a file written by rename, not an array Gradio writes in place
    np.testing.assert_array_equal(np.asarray(Image.open(result.overlay_png)), view.overlay)
    assert result.summary.startswith(f"**{view.count} cells** above score 0.30 · mean area")
    assert "176x130 px · whole" in result.summary
    assert result.histogram["cells"].sum() == view.count and result.notes == []
    labels, coco = result.downloads
    assert (
        labels.name == "BV2_Phase_A1_1_00d00h00m_1_labels.tif" and labels.parent.parent == tmp_path
    )
    doc = json.loads(coco.read_text())
    assert doc["images"][0]["file_name"] == "BV2_Phase_A1_1_00d00h00m_1.tif"
    assert len(doc["annotations"]) == tifffile.imread(labels).max() == view.count
    again = segment(seg, checkpoints, source, "custom (best val F1)", "whole", 0.3, tmp_path)
    assert again.downloads == result.downloads  # the same request rewrites its files

    empty = segment(seg, checkpoints, source, "custom (best val F1)", "whole", 1.0, tmp_path)
    assert empty.count == 0 and empty.mean_area == 0 and empty.histogram.empty


def test_an_image_unlike_the_training_data_is_flagged_on_the_page(setup, tmp_path):
    root, ckpt, image = setup
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(ckpt, models / "custom.pt")
    add_training_look(models / "custom.pt", [small_image(seed=s)[0] for s in (1, 2, 3, 4)])
    noise = np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8)
    write_gray(tmp_path / "noise.tif", noise)  # nothing like a phase-contrast image
    seg, checkpoints = Segmenter("cpu"), find_checkpoints(models)
    (label,) = checkpoints
    odd = segment(seg, checkpoints, tmp_path / "noise.tif", label, "whole", 0.3, tmp_path)
    assert odd.unlike and odd.summary.startswith("⚠️ **Unlike the images this model was trained")
    assert any("noise.tif: unlike the images" in n for n in odd.notes)  # a gr.Warning too
    assert seg.predict(noise, models / "custom.pt", "whole").look.distance > 0
    # a checkpoint without a description: no flag, no warning
    plain = segment(
        seg,
        find_checkpoints(root / "models"),
        tmp_path / "noise.tif",
        "custom (best val F1)",
        "whole",
        0.3,
        tmp_path,
    )
    assert not plain.unlike and "Unlike" not in plain.summary


def test_handlers_refuse_what_the_user_can_fix(setup, tmp_path):
    root, _, _ = setup
    seg, checkpoints = Segmenter("cpu"), find_checkpoints(root / "models")
    examples = find_examples(root / "examples")
    source, label = next(iter(examples.values())), next(iter(checkpoints))
    not_an_image = tmp_path / "fake.tif"
    not_an_image.write_text("<html>not an image</html>")
    for args, message in [
        ((None, label, "whole", 0.3), "no image yet"),
        ((source, None, "whole", 0.3), "no checkpoint chosen"),
        ((source, "nope", "whole", 0.3), "no checkpoint chosen"),
        ((source, label, "tiled", 0.3), "mode 'tiled'"),
        ((source, label, "whole", 0.01), "score threshold 0.01"),
        ((not_an_image, label, "whole", 0.3), "cannot be read as an image"),
    ]:
        with pytest.raises(LivecellsegError, match=message):
            segment(seg, checkpoints, *args, tmp_path)
    with pytest.raises(LivecellsegError, match="no image yet"):
        explain(seg, checkpoints, None, label, tmp_path)
    with pytest.raises(LivecellsegError, match="no checkpoint chosen"):
        checkpoint_defaults(seg, checkpoints, "nope")
    assert example_path(examples, None) is None
    assert example_path(examples, "BV2_Phase_A1_1_00d00h00m_1.tif") == str(source)
    with pytest.raises(LivecellsegError, match="no example image named 'other.tif'"):
        example_path(examples, "other.tif")


def test_the_slider_starts_at_each_checkpoints_own_threshold(setup, raw_params, tmp_path):
    _, ckpt, _ = setup
    checkpoints = {"params.yaml's": ckpt}
    for name, thresh in [("trained at 0.3", 0.3), ("trained at 0", 0.0)]:
        raw = copy.deepcopy(raw_params)
        raw["predict"].update(score_thresh=thresh, min_score=min(thresh, 0.2), mode="whole")
        checkpoints[name] = save_tiny_checkpoint(tmp_path / f"{thresh}.pt", raw)
    seg = Segmenter("cpu")
    assert checkpoint_defaults(seg, checkpoints, "params.yaml's") == (
        raw_params["predict"]["score_thresh"],
        raw_params["predict"]["mode"],
    )
    assert checkpoint_defaults(seg, checkpoints, "trained at 0.3") == (0.3, "whole")
    # within the slider's range
    assert checkpoint_defaults(seg, checkpoints, "trained at 0") == (MIN_SCORE, "whole")
    assert MIN_SCORE < 0.3 < MAX_SCORE


@pytest.mark.slow  # the explanation end to end (its parts: tests/test_explain.py)
def test_explain_returns_module_shares_and_figures(setup, tmp_path):
    root, _, _ = setup
    seg, checkpoints = Segmenter("cpu"), find_checkpoints(root / "models")
    source = next(iter(find_examples(root / "examples").values()))
    rows, gallery = explain(seg, checkpoints, source, "custom (best val F1)", tmp_path)
    modules = [module for module, _ in rows]
    assert {"cbam4", "mask_head"} <= set(modules)
    assert all(isinstance(share, float) and 0 <= share <= 100 for _, share in rows)
    assert gallery and all(Path(path).is_file() and path.endswith(".png") for path, _ in gallery)
    assert all(Path(path).is_relative_to(tmp_path) for path, _ in gallery)


EXAMPLE = "BV2_Phase_A1_1_00d00h00m_1.tif"


def _cell_centre(labels: np.ndarray) -> tuple[int, int]:
    """(x, y) of a pixel deep inside some cell: the largest cell's most interior pixel."""
    from scipy import ndimage

    values, counts = np.unique(labels[labels > 0], return_counts=True)
    cell = labels == values[np.argmax(counts)]
    y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(cell)), cell.shape)
    return int(x), int(y)


def _empty_square(labels: np.ndarray, side: int = 12) -> list[tuple[int, int]]:
    """Corners (x, y) of a square of background, away from the image edge."""
    h, w = labels.shape
    for y in range(4, h - side - 4, 2):
        for x in range(4, w - side - 4, 2):
            if not labels[y - 2 : y + side + 3, x - 2 : x + side + 3].any():
                return [(x, y), (x + side, y), (x + side, y + side), (x, y + side)]
    raise AssertionError("no empty square")


def test_correct_tab_deletes_adds_undoes_and_keeps(setup, tmp_path):
    root, _, image = setup
    seg, checkpoints = Segmenter("cpu"), find_checkpoints(root / "models")
    source = example_path(find_examples(root / "examples"), EXAMPLE)
    e = start_correction(seg, checkpoints, source, "custom (best val F1)", "whole", 0.3)
    shown = segment(seg, checkpoints, source, "custom (best val F1)", "whole", 0.3, tmp_path)
    assert e.name == EXAMPLE and e.cells == shown.count > 0  # what the Segment tab shows
    x, y = _cell_centre(e.labels)
    gone = click(e, TOOLS[0], x, y)
    assert gone.cells == e.cells - 1 and gone.labels[y, x] == 0
    with pytest.raises(LivecellsegError, match="no cell at"):
        click(gone, TOOLS[0], x, y)
    square = _empty_square(gone.labels)
    drawing = gone
    for px, py in square:
        drawing = click(drawing, TOOLS[1], px, py)
    assert drawing.points == tuple(square) and drawing.cells == gone.cells
    png, text = editing_view(drawing, tmp_path)
    assert png.is_file() and "outline of 4 points" in text
    added = close_outline(drawing)
    (sx, sy) = square[0]
    assert added.cells == e.cells and added.points == () and added.labels[sy + 6, sx + 6] > 0
    assert undo(added).cells == gone.cells and undo(undo(added)).cells == e.cells
    assert undo(drawing).points == tuple(square[:-1])  # an open outline: its last point
    with pytest.raises(LivecellsegError, match="nothing to undo"):
        undo(e)
    with pytest.raises(LivecellsegError, match="no image to correct"):
        click(None, TOOLS[0], 1, 1)
    kept = Corrections(tmp_path / "kept")
    path, n = save_correction(added, kept)
    assert n == 1 and tifffile.imread(path).max() == added.cells
    with pytest.raises(LivecellsegError, match="params.yaml's finetune section"):
        finetune_corrections(kept, checkpoints, "custom (best val F1)", None, tmp_path, "cpu")
    with pytest.raises(LivecellsegError, match="no corrections kept yet"):
        finetune_corrections(
            Corrections(tmp_path / "none"),
            checkpoints,
            "custom (best val F1)",
            (1, 0.5, None),
            tmp_path,
            "cpu",
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finetune_params(root: Path) -> Path:
    """params.yaml with a fine-tuning budget a test can wait for (2 epochs of every tile)."""
    import yaml

    from tests.helpers import ROOT

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["finetune"].update(epochs=2, tiles_per_epoch=0, replay=0)  # whatever data/tiles holds
    raw["train"]["device"] = "cpu"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root / "params.yaml"


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
            "--params",
            str(_finetune_params(root)),
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


@pytest.mark.slow  # a server and Chromium
def test_app_in_a_real_browser(setup, app_url, raw_params, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    root, ckpt, image = setup
    scores = Segmenter("cpu").predict(image, ckpt, "whole").detections.scores
    low = _threshold_between(scores, 0.4)
    high = _threshold_between(scores, float(np.quantile(scores, 0.75)))
    assert (scores > low).sum() != (scores > high).sum()
    assert high != 0.3  # custom_last.pt's threshold: choosing it must move the slider
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
        assert float(number.input_value()) == raw_params["predict"]["score_thresh"]  # the model's
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

        # another checkpoint: the slider moves to the threshold it was trained with, and the
        # image is segmented again
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name="custom (last epoch)").click()
        wait_summary("above score 0.30")
        assert float(number.input_value()) == 0.3

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


@pytest.mark.slow  # a server, 20 clients
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
    assert {r["image"] for r in errors} == {"junk.tif"} and len(errors) == 4, errors
    assert all("cannot be read as an image" in r["error"] for r in errors), errors[0]
    for r in results:
        if "cells" in r:
            assert r["cells"] == expected[r["image"]], r
    assert log.read_text().count("predicted ") - made_before == 4  # once per image


@pytest.mark.slow  # a server, Chromium and a fine-tuning
def test_correct_and_finetune_in_a_real_browser(setup, app_url, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    root, ckpt, image = setup
    checkpoints = find_checkpoints(root / "models")
    start = checkpoint_defaults(Segmenter("cpu"), checkpoints, "custom (best val F1)")
    e = start_correction(
        Segmenter("cpu"),
        checkpoints,
        str(root / "examples" / "sub" / EXAMPLE),
        "custom (best val F1)",
        start[1],
        start[0],
    )
    x, y = _cell_centre(e.labels)
    square = _empty_square(click(e, TOOLS[0], x, y).labels)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(app_url)
        page.get_by_role("tab", name="Correct").click()
        page.locator("#correct-upload input[type=file]").set_input_files(
            root / "examples" / "sub" / EXAMPLE
        )

        def wait_text(selector: str, text: str, timeout: int = 120_000) -> str:
            page.wait_for_function(
                "([s, t]) => (document.querySelector(s)?.innerText || '').includes(t)",
                arg=[selector, text],
                timeout=timeout,
            )
            return page.locator(selector).inner_text()

        wait_text("#correct-summary", f"{e.cells} cells")
        img = page.locator("#correction img")
        page.wait_for_function("() => document.querySelector('#correction img')?.naturalWidth > 0")

        def click_at(px: int, py: int) -> None:  # image pixel -> where it is on the page
            box = img.bounding_box()
            natural = img.evaluate("i => [i.naturalWidth, i.naturalHeight]")
            scale = min(box["width"] / natural[0], box["height"] / natural[1])
            left = box["x"] + (box["width"] - natural[0] * scale) / 2
            top = box["y"] + (box["height"] - natural[1] * scale) / 2
            page.mouse.click(left + (px + 0.5) * scale, top + (py + 0.5) * scale)

        click_at(x, y)
        wait_text("#correct-summary", f"{e.cells - 1} cells")
        page.get_by_label(TOOLS[1]).check()
        for i, (px, py) in enumerate(square, start=1):
            click_at(px, py)
            wait_text("#correct-summary", f"outline of {i} points")
        page.locator("#close-outline").click()
        wait_text("#correct-summary", f"{e.cells} cells")
        page.locator("#keep").click()
        wait_text("#kept", "1 correction(s) kept")
        href = page.locator("#correct-labels a").first.get_attribute("href")
        labels = tifffile.imread(io.BytesIO(page.request.get(href).body()))
        assert labels.shape == image.shape and labels.max() == e.cells
        sx, sy = square[0]
        assert labels[sy + 6, sx + 6] > 0 and labels[y, x] == 0

        # fine-tune; meanwhile the page keeps answering (undo takes the new cell back)
        page.locator("#finetune").click()
        page.locator("#undo").click()
        wait_text("#correct-summary", f"{e.cells - 1} cells")
        assert "Held-out F1" not in page.locator("#finetune-report").inner_text()
        report = wait_text("#finetune-report", "Held-out F1", timeout=300_000)
        assert "1 image(s)" in report
        href = page.locator("#finetuned a").first.get_attribute("href")
        new = torch.load(io.BytesIO(page.request.get(href).body()), weights_only=True)
        assert new["run"]["finetuned_from"]["checkpoint"] == "custom.pt"
        page.get_by_role("tab", name="Segment").click()
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name="fine-tuned on 1 image(s)").first.wait_for()
        browser.close()
