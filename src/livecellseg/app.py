"""The web app (`livecellseg app`): segment an image, move the score threshold, explain.

`Segmenter` holds what the app knows, without Gradio (unit-tested on its own): models load
once per checkpoint and stay cached; a prediction is made once per (image, checkpoint, mode)
at the lowest score the slider offers, decoded once into pixel indices, and every slider move
only re-selects cells from it (no model call, no RLE decoding). Checkpoints are loaded with
`weights_only=True`; uploads are only ever decoded as images (size-limited).
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livecellseg.engine import pick_device
from livecellseg.errors import LivecellsegError
from livecellseg.images import IMAGE_SUFFIXES, load_image, write_labels
from livecellseg.io import write_json
from livecellseg.predict import Mode, Predictor, coco_document
from livecellseg.stitch import ImageDetections
from livecellseg.visualize import (
    PRED_COLOUR,
    CellPixels,
    cell_pixels,
    draw_outlines,
    gray_to_rgb,
    label_image,
)

log = logging.getLogger(__name__)

MIN_SCORE = 0.05  # the slider's lowest value: predictions are cached at this threshold


@dataclass(frozen=True)
class Prediction:
    image: np.ndarray
    detections: ImageDetections  # every detection above MIN_SCORE, best first
    cells: CellPixels
    seconds: float  # model + stitching time when it was made


@dataclass(frozen=True)
class View:
    overlay: np.ndarray  # RGB
    keep: np.ndarray  # indices into the prediction's detections
    areas: np.ndarray  # px, of the kept cells

    @property
    def count(self) -> int:
        return len(self.keep)

    @property
    def mean_area(self) -> float:
        return float(self.areas.mean()) if len(self.areas) else 0.0


def find_checkpoints(models_dir: Path) -> dict[str, Path]:
    """'custom (best val F1)' -> models/custom.pt, 'custom (last epoch)' -> custom_last.pt..."""
    found = {}
    for path in sorted(Path(models_dir).glob("*.pt")):
        kind = "last epoch" if path.stem.endswith("_last") else "best val F1"
        found[f"{path.stem.removesuffix('_last')} ({kind})"] = path
    return found


def find_examples(examples_dir: Path, limit: int = 50) -> dict[str, Path]:
    if not Path(examples_dir).is_dir():
        return {}
    files = sorted(p for p in Path(examples_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return {p.name: p for p in files[:limit]}


class Segmenter:
    """Model cache, prediction cache and the views the app shows."""

    def __init__(self, device: str = "auto", *, max_models: int = 4, max_predictions: int = 32):
        self.device = pick_device(device)
        self._models: OrderedDict[tuple, Predictor] = OrderedDict()
        self._predictions: OrderedDict[tuple, Prediction] = OrderedDict()
        self._max_models, self._max_predictions = max_models, max_predictions
        self._model_lock = threading.Lock()  # whole-image mode re-configures the model in place
        self._cache_lock = threading.Lock()

    def predictor(self, checkpoint: Path) -> Predictor:
        key = (str(checkpoint), checkpoint.stat().st_mtime_ns)
        with self._cache_lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        predictor, ckpt = Predictor.from_checkpoint(checkpoint, self.device, score_thresh=MIN_SCORE)
        log.info("loaded %s (%s model, epoch %s)", checkpoint, ckpt["name"], ckpt.get("epoch"))
        with self._cache_lock:
            self._models[key] = predictor
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
        return predictor

    def predict(self, image: np.ndarray, checkpoint: Path, mode: Mode) -> Prediction:
        digest = hashlib.sha1(image.tobytes()).hexdigest()
        key = (digest, image.shape, str(checkpoint), checkpoint.stat().st_mtime_ns, mode)
        with self._cache_lock:
            if key in self._predictions:
                self._predictions.move_to_end(key)
                return self._predictions[key]
        predictor = self.predictor(checkpoint)
        t0 = time.perf_counter()
        with self._model_lock:
            det, _ = predictor(image, mode)
        seconds = time.perf_counter() - t0
        prediction = Prediction(image, det, cell_pixels(det.rles, image.shape), seconds)
        with self._cache_lock:
            self._predictions[key] = prediction
            while len(self._predictions) > self._max_predictions:
                self._predictions.popitem(last=False)
        return prediction

    @staticmethod
    def view(prediction: Prediction, score: float) -> View:
        keep = np.flatnonzero(prediction.detections.scores > score)
        rgb = draw_outlines(gray_to_rgb(prediction.image), prediction.cells, PRED_COLOUR, keep)
        return View(rgb, keep, prediction.cells.areas[keep])

    @staticmethod
    def write_downloads(prediction: Prediction, view: View, name: str, out: Path) -> list[Path]:
        """The label TIFF and COCO JSON of what the view shows."""
        out.mkdir(parents=True, exist_ok=True)
        h, w = prediction.image.shape
        det = prediction.detections
        kept = ImageDetections([det.rles[i] for i in view.keep], det.scores[view.keep])
        labels = label_image(prediction.cells, det.scores, view.keep)
        paths = [out / f"{name}_labels.tif", out / f"{name}_coco.json"]
        write_labels(paths[0], labels)
        write_json(paths[1], coco_document(name, h, w, kept), indent=None)
        return paths


def area_histogram(areas: np.ndarray):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 2.6), layout="constrained")
    ax = fig.add_subplot()
    if len(areas):
        ax.hist(areas, bins=min(40, max(5, len(areas) // 5)), color="#b000b0")
    ax.set_xlabel("cell area (px²)")
    ax.set_ylabel("cells")
    return fig


def build_app(segmenter: Segmenter, checkpoints: dict[str, Path], examples: dict[str, Path]):
    """The Gradio Blocks: a Segment tab and an Explain tab."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    from livecellseg.explain import explain_image, save_explanation

    work = Path(tempfile.mkdtemp(prefix="livecellseg-app-"))

    def user_error(e: Exception) -> gr.Error:
        if isinstance(e, LivecellsegError):
            return gr.Error(html.escape(str(e)), title="Cannot segment this")
        log.exception("unexpected error")
        return gr.Error(
            html.escape(f"unexpected error ({type(e).__name__}: {e}); see the server log"),
            title="Error",
        )

    def current_image(source: str | None) -> tuple[np.ndarray, str]:
        if not source:
            raise LivecellsegError("no image yet: upload one or pick an example")
        image, notes = load_image(source)
        for note in notes:
            gr.Warning(html.escape(f"{Path(source).name}: {note}"))
        return image, Path(source).stem

    def checkpoint_path(label: str | None) -> Path:
        if not label or label not in checkpoints:
            raise LivecellsegError(
                "no checkpoint chosen; train one (dvc repro) or start the app with --models DIR"
            )
        return checkpoints[label]

    def segment(source, ckpt_label, mode, score, progress=gr.Progress()):  # noqa: B008
        try:
            image, name = current_image(source)
            progress(0.1, desc="segmenting (the first time per image and model)")
            prediction = segmenter.predict(image, checkpoint_path(ckpt_label), mode)
            view = segmenter.view(prediction, score)
            out = Path(tempfile.mkdtemp(dir=work))
            labels, coco = segmenter.write_downloads(prediction, view, name, out)
        except Exception as e:
            raise user_error(e) from None
        summary = (
            f"**{view.count} cells** above score {score:.2f} · mean area "
            f"{view.mean_area:.0f} px² · {image.shape[1]}x{image.shape[0]} px · {mode} · "
            f"model time {prediction.seconds:.1f} s"
        )
        return (
            view.overlay,
            view.count,
            round(view.mean_area, 1),
            summary,
            area_histogram(view.areas),
            [str(labels), str(coco)],
        )

    def explain(source, ckpt_label):
        try:
            image, _ = current_image(source)
            predictor = segmenter.predictor(checkpoint_path(ckpt_label))
            with segmenter._model_lock:
                exp = explain_image(predictor.model, image, segmenter.device)
            files = save_explanation(exp, image, Path(tempfile.mkdtemp(dir=work)))
        except Exception as e:
            raise user_error(e) from None
        rows = [[k, round(v, 2)] for k, v in exp.importance.items()]
        gallery = [(str(f), f.stem) for f in files if f.suffix == ".png"]
        return rows, gallery

    ckpt_labels = list(checkpoints)
    with gr.Blocks(title="livecellseg", analytics_enabled=False) as demo:
        gr.Markdown(
            "## livecellseg: cell instance segmentation (Mask R-CNN, LIVECell)\n"
            "Upload a phase-contrast image or pick an example; outlines are drawn in magenta. "
            "Moving the score threshold re-filters the cached prediction without re-running "
            "the model."
        )
        source = gr.State(None)
        with gr.Tab("Segment"), gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(
                    label="Image (TIFF, PNG, JPEG)",
                    file_types=list(IMAGE_SUFFIXES),
                    type="filepath",
                    elem_id="upload",
                )
                example = gr.Dropdown(
                    choices=list(examples),
                    value=None,
                    label="…or an example image",
                    elem_id="example",
                )
                ckpt = gr.Dropdown(
                    choices=ckpt_labels,
                    value=ckpt_labels[0] if ckpt_labels else None,
                    label="Model checkpoint",
                    elem_id="checkpoint",
                )
                mode = gr.Radio(
                    ["stitched", "whole"],
                    value="stitched",
                    label="Mode",
                    info="stitched: 25 tiles, as the pipeline; whole: one pass, ~3x faster",
                )
                score = gr.Slider(
                    MIN_SCORE,
                    0.95,
                    value=0.4,
                    step=0.01,
                    label="Score threshold",
                    elem_id="score",
                )
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                overlay = gr.Image(
                    label="Overlay",
                    type="numpy",
                    format="png",
                    interactive=False,
                    elem_id="overlay",
                )
                with gr.Row():
                    count = gr.Number(label="Cells", elem_id="count", interactive=False)
                    mean_area = gr.Number(
                        label="Mean cell area (px²)", elem_id="mean-area", interactive=False
                    )
                summary = gr.Markdown(elem_id="summary")
                hist = gr.Plot(label="Cell areas", elem_id="areas")
                downloads = gr.File(
                    label="Downloads: label TIFF, COCO JSON",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
        with gr.Tab("Explain"):
            gr.Markdown(
                "One forward pass on the current image with hooks on the backbone stages, "
                "CBAM blocks, FPN levels, RPN and heads: each module's share of the mean "
                "absolute activation, its feature maps, and the attention maps."
            )
            explain_btn = gr.Button("Explain the current image", elem_id="explain")
            importance = gr.Dataframe(
                headers=["module", "share of mean |activation| (%)"],
                elem_id="importance",
                interactive=False,
            )
            gallery = gr.Gallery(label="Feature maps and attention", columns=2, height="auto")

        outputs = [overlay, count, mean_area, summary, hist, downloads]
        inputs = [source, ckpt, mode, score]
        upload.upload(lambda f: f, upload, source).then(segment, inputs, outputs)
        example.input(lambda e: str(examples[e]) if e else None, example, source).then(
            segment, inputs, outputs
        )
        run.click(segment, inputs, outputs)
        for control in (ckpt, mode):
            control.input(segment, inputs, outputs)
        # cached: only the newest value matters while the slider moves
        score.input(segment, inputs, outputs, show_progress="hidden", trigger_mode="always_last")
        explain_btn.click(explain, [source, ckpt], [importance, gallery])
    demo.livecellseg_workdir = work
    return demo


def launch(
    *,
    models_dir: Path,
    examples_dir: Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_mb: float = 20.0,
    device: str = "auto",
) -> None:
    import gradio as gr

    checkpoints = find_checkpoints(models_dir)
    if not checkpoints:
        raise LivecellsegError(
            f"{models_dir}: no checkpoints (*.pt); train with `dvc repro` or pass --models DIR"
        )
    examples = find_examples(examples_dir)
    log.info("%d checkpoints in %s, %d example images", len(checkpoints), models_dir, len(examples))
    demo = build_app(Segmenter(device), checkpoints, examples)
    theme = gr.themes.Default(  # system fonts: the page loads nothing from the internet
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    try:
        demo.queue(default_concurrency_limit=2).launch(
            server_name=host,
            server_port=port,
            max_file_size=int(max_upload_mb * 2**20),
            show_error=False,
            ssr_mode=False,
            theme=theme,
            footer_links=[],
        )
    finally:
        shutil.rmtree(demo.livecellseg_workdir, ignore_errors=True)
