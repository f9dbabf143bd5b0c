"""Test helpers: tiny data roots, tile sets, params, models and checkpoints, a local HTTP
server and headless Chromium (fixtures that use them are in conftest.py and the test modules)."""

from __future__ import annotations

import copy
import http.server
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
import yaml

from livecellseg.images import write_gray
from livecellseg.livecell import md5sum
from livecellseg.sample import generate, polygon_annotation, write_livecell_root

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def scratch_dir(tmp_path_factory, name: str) -> Iterator[Path]:
    """A directory for a module-scoped fixture, removed when the module's tests are done
    (pytest keeps those until the session ends; the big ones would fill CI's disk)."""
    path = tmp_path_factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_livecell_root(
    root: Path,
    *,
    n_images: int = 8,
    empty: int = 1,
    width: int = 704,
    height: int = 520,
    seed: int = 0,
    lines: tuple[str, ...] = ("A172", "BV2", "MCF7", "SHSY5Y"),
    hours: tuple[float, ...] = (0.0,),
) -> Path:
    """A LIVECell-format data root: images/<split dir>/<line>/*.tif + annotations/*.json;
    well i goes to train, val, test in turn (one time point: every image a well)."""
    samples = generate(
        n_images=n_images,
        empty_images=empty,
        cell_lines=lines,
        width=width,
        height=height,
        seed=seed,
        hours=hours,
    )
    write_livecell_root(root, samples, splits=("train", "val", "test"))
    return root


def make_tiles(
    out: Path,
    *,
    n_images: int = 6,
    width: int = 140,
    height: int = 105,
    seed: int = 0,
    grid: int = 7,
    window: int = 3,
) -> Path:
    """A tile-stage output (train/val/test JSON + tile TIFFs) from small sample images; the
    images are in out/_images and their split's COCO documents in out/_split/."""
    from livecellseg.tileset import tile_split

    docs = {
        s: {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cell"}]}
        for s in ("train", "val", "test")
    }
    images_dir = out / "_images"
    images_dir.mkdir(parents=True)
    for i, (name, line, image, polys) in enumerate(
        generate(
            n_images=n_images,
            empty_images=0,
            cell_lines=("BV2", "SkBr3"),
            width=width,
            height=height,
            seed=seed,
        )
    ):
        split = "train" if i < n_images - 2 else ("val", "test")[i % 2]
        write_gray(images_dir / name, image)
        doc = docs[split]
        doc["images"].append(
            {"id": i + 1, "file_name": name, "width": width, "height": height, "cell_line": line}
        )
        for p in polys:
            doc["annotations"].append(
                polygon_annotation(100 * i + len(doc["annotations"]), i + 1, p)
            )
    import json

    (out / "_split").mkdir()
    for split, doc in docs.items():
        tiles, _ = tile_split(
            doc, images_dir, out / split, grid=grid, window=window, min_visible=0.3
        )
        (out / f"{split}.json").write_text(json.dumps(tiles))
        (out / "_split" / f"{split}.json").write_text(json.dumps(doc))
    return out


def tiny_train_params(raw: dict, **overrides) -> dict:
    """params.yaml made tiny: small input scale, few tiles, one or two epochs."""
    p = copy.deepcopy(raw)
    p["workers"] = 1
    p["model"].update(
        min_size=64,
        max_size=96,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        box_batch_size_per_image=64,
    )
    p["predict"].update(rpn_pre_nms_top_n=300, rpn_post_nms_top_n=100)
    p["train"].update(
        max_tiles_per_epoch=4,
        max_val_tiles=4,
        warmup_steps=2,
        device="cpu",
        val_detections_per_tile=20,
    )
    p["custom"].update(epochs=2, batch_size=2)
    p["transfer"].update(epochs_frozen=1, epochs_unfrozen=1, weights="none")
    for section, values in overrides.items():
        p[section].update(values)
    return p


def default_params():
    """params.yaml as the pipeline reads it."""
    from livecellseg.config import load_params

    return load_params(ROOT / "params.yaml")


def default_model_settings(name: str = "custom"):
    """(InferenceSettings, SamplingSettings, ArchSettings) of params.yaml for model `name`:
    what build_model takes."""
    from livecellseg.settings import arch_settings, inference_settings, sampling_settings

    p = default_params()
    return (
        inference_settings(p.model, p.predict),
        sampling_settings(p.model),
        arch_settings(name, p.model, p.custom),
    )


def build(name: str, *, pretrained_layout: bool = False, norm: str = "batch", **inference):
    """build_model with params.yaml's settings, inference settings overridden by keyword
    (the transfer model: untrained layout, or the COCO one with `pretrained_layout`)."""
    from dataclasses import replace

    from livecellseg.models import build_model

    infer, sampling, arch = default_model_settings(name)
    return build_model(
        name,
        inference=replace(infer, **inference),
        sampling=sampling,
        arch=arch,
        pretrained_layout=pretrained_layout,
        norm=norm,
    )[0]


TINY_MODEL = {"min_size": 64, "max_size": 96}  # an untrained tiny model: small input scale
TINY_PREDICT = {"rpn_pre_nms_top_n": 100, "rpn_post_nms_top_n": 50, "detections_per_img": 8}


def tiny_params(raw: dict, **predict):
    """Params with TINY_MODEL in the model section, TINY_PREDICT (and `predict` overrides)
    in the predict section."""
    from livecellseg.config import parse_params

    return parse_params(
        copy.deepcopy(raw)
        | {
            "model": dict(raw["model"]) | TINY_MODEL,
            "predict": dict(raw["predict"]) | TINY_PREDICT | predict,
        }
    )


def save_tiny_checkpoint(
    path: Path,
    raw: dict,
    name: str = "custom",
    seed: int = 0,
    *,
    pretrained: bool = False,
    score_spread: float = 1.0,
) -> Path:
    """An untrained model's checkpoint, tiny at inference (small input scale and budgets),
    in the training stage's format: what the CLI and the app load. `pretrained`: as if
    trained from COCO weights (the transfer model's COCO layout). `score_spread` scales the
    box classifier: an untrained model scores every detection ~0.5 (within ~0.005); x100
    spreads them over ~0.15-0.6, so thresholds between them can be tested."""
    import torch

    from livecellseg.checkpoint import FORMAT
    from livecellseg.models import build_model
    from livecellseg.settings import (
        arch_settings,
        inference_settings,
        recorded_params,
        sampling_settings,
    )

    params = tiny_params(raw)
    torch.manual_seed(seed)
    model, _ = build_model(
        name,
        inference=inference_settings(params.model, params.predict),
        sampling=sampling_settings(params.model),
        arch=arch_settings(name, params.model, params.custom),
        pretrained_layout=pretrained,
        norm=params.transfer.scratch_norm,
    )
    with torch.no_grad():
        for p in model.roi_heads.box_predictor.cls_score.parameters():
            p.mul_(score_spread)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": FORMAT,
            "name": name,
            "model": model.state_dict(),
            "optimizer": {},
            "epoch": 1,
            "params": recorded_params(name, params),
            "run": {"pretrained": pretrained, "data": "none"},
            "val": {"f1": 0.0},
        },
        path,
    )
    return path


def tiny_inference():
    """Inference settings for untrained tiny models: keep every detection, small input scale."""
    from livecellseg.settings import inference_settings

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    # untrained: keep everything so there is something to stitch
    p = tiny_params(raw, score_thresh=0.0, min_score=0.0)
    return inference_settings(p.model, p.predict)


def tiny_predict_settings(**stitch):
    """PredictSettings of an untrained tiny model (every detection a cell); stitch settings
    overridden by keyword."""
    from dataclasses import replace

    from livecellseg.settings import PredictSettings, stitch_settings

    p = default_params()
    base = stitch_settings(p.tile, p.predict, p.train)
    return PredictSettings(tiny_inference(), replace(base, **stitch), score_thresh=0.0)


def small_image(seed: int = 1, width: int = 176, height: int = 130):
    """A sample image (uint8, height x width) and its cell polygons."""
    (_, _, image, polys), *_ = generate(
        n_images=1, empty_images=0, cell_lines=("BV2",), width=width, height=height, seed=seed
    )
    return image, polys


def train_custom_args(params: Path, tiles: Path, out: Path) -> list[str]:
    """`python -m stages.train_custom ...` as dvc.yaml runs it, writing under `out`."""
    import sys

    return [
        sys.executable,
        "-m",
        "stages.train_custom",
        *("--params", str(params), "--tiles", str(tiles)),
        *("--out", str(out / "custom.pt"), "--last", str(out / "custom_last.pt")),
        *("--live", str(out / "live")),
    ]


def add_training_look(path: Path, images: list) -> Path:
    """Record in the checkpoint at `path` a description of `images` (gray arrays, each cut
    in quarters) as its training data: even quarters the distribution, odd ones the
    threshold (novelty.py), as training records it."""
    import torch

    from livecellseg.novelty import LEVELS, fit_look, tile_features
    from livecellseg.predict import load_model

    model, ckpt, _ = load_model(path, torch.device("cpu"))
    crops = []
    for im in images:
        h, w = im.shape[0] // 2, im.shape[1] // 2
        crops += [im[:h, :w], im[:h, w:], im[h:, :w], im[h:, w:]]
    x = tile_features(model, crops, torch.device("cpu"), LEVELS)
    ckpt["look"] = fit_look(x[::2], x[1::2], crops[::2], [100.0], levels=LEVELS).record()
    torch.save(ckpt, path)
    return path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with Range support, an optional wrong ETag and an optional cut-off."""

    ranges_seen: list = []
    paths_seen: list = []
    etag: str | None = None
    cut_after: int | None = None  # close the connection after this many body bytes

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).paths_seen.append(self.path)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            type(self).ranges_seen.append(rng)
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{self.etag or md5sum(path)}"')
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


def serve_site(www: Path, handler) -> tuple:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving `www`; (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/LIVECell_dataset_2021"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


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
