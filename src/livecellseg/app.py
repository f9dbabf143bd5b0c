"""The web app (`livecellseg app`): segment one image, re-threshold it live, explain the model.

The event logic is plain functions over `Segmenter` and the checkpoint/example dicts
(`segment`, `explain`, `checkpoint_defaults`...): they return plain values and raise
`LivecellsegError` for what the user can fix, and are tested without Gradio. `build_app` only
lays out the page and wires events to thin adapters that turn those values into component
updates, `gr.Warning` and `gr.Error`.

`Segmenter` holds what the app knows: models load once per checkpoint and stay cached; a
prediction is made once per (image, checkpoint, mode) at the lowest score the slider offers,
decoded once into pixel indices, and every slider move only re-selects cells from it (no model
call, no RLE decoding). Checkpoints are loaded with `weights_only=True`; uploads are only ever
decoded as images (size-limited).
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, get_args

import numpy as np

from livecellseg.correct import Corrections, add_cell, cell_at, delete_cell, draw
from livecellseg.errors import LivecellsegError
from livecellseg.images import IMAGE_SUFFIXES, load_image
from livecellseg.novelty import Look
from livecellseg.predict import Predictor, write_segmentation
from livecellseg.runtime import pick_device
from livecellseg.settings import Mode
from livecellseg.stitch import ImageDetections
from livecellseg.visualize import (
    PRED_COLOUR,
    CellPixels,
    cell_pixels,
    draw_outlines,
    gray_to_rgb,
    label_image,
    save_png,
)

if TYPE_CHECKING:
    import pandas as pd

    from livecellseg.config import FinetuneConfig

log = logging.getLogger(__name__)

MIN_SCORE = 0.05  # the slider's lowest value: predictions are cached at this threshold
MAX_SCORE = 0.95  # the slider's highest
AREA_BIN = "area (px²)"  # the area histogram's bin column


@dataclass(frozen=True)
class Prediction:
    image: np.ndarray
    detections: ImageDetections  # every detection above MIN_SCORE, best first
    cells: CellPixels
    seconds: float  # model + stitching time when it was made
    look: Look | None = None  # how unlike the model's training data the image is


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
        self._pending: dict[tuple, threading.Lock] = {}  # one lock per prediction being made

    def predictor(self, checkpoint: Path) -> Predictor:
        key = (str(checkpoint), checkpoint.stat().st_mtime_ns)
        with self._cache_lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        predictor, ckpt = Predictor.from_checkpoint(checkpoint, self.device)
        # every detection the slider can reach; the operating threshold stays the recorded one
        s = predictor.settings
        floor = replace(s, inference=replace(s.inference, score_thresh=MIN_SCORE))
        predictor = Predictor(predictor.model, self.device, floor, predictor.training_look)
        log.info("loaded %s (%s model, epoch %s)", checkpoint, ckpt["name"], ckpt.get("epoch"))
        with self._cache_lock:
            self._models[key] = predictor
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
        return predictor

    def predict(self, image: np.ndarray, checkpoint: Path, mode: Mode) -> Prediction:
        """The cached prediction, or a new one. Requests for the same prediction at once
        wait for the first instead of running the model again."""
        digest = hashlib.sha1(image.tobytes()).hexdigest()
        key = (digest, image.shape, str(checkpoint), checkpoint.stat().st_mtime_ns, mode)
        with self._cache_lock:
            pending = self._pending.setdefault(key, threading.Lock())
        try:
            with pending:
                with self._cache_lock:
                    if key in self._predictions:
                        self._predictions.move_to_end(key)
                        return self._predictions[key]
                prediction = self._predict(image, checkpoint, mode)
                with self._cache_lock:
                    self._predictions[key] = prediction
                    while len(self._predictions) > self._max_predictions:
                        self._predictions.popitem(last=False)
                return prediction
        finally:
            with self._cache_lock:
                if self._pending.get(key) is pending:
                    del self._pending[key]

    def _predict(self, image: np.ndarray, checkpoint: Path, mode: Mode) -> Prediction:
        predictor = self.predictor(checkpoint)
        t0 = time.perf_counter()
        with self._model_lock:
            seg = predictor.segment(image, mode)
        det = seg.det
        seconds = time.perf_counter() - t0
        h, w = image.shape
        log.info(
            "predicted a %dx%d image, %s mode: %d cells in %.1f s",
            w,
            h,
            mode,
            len(det.rles),
            seconds,
        )
        return Prediction(image, det, cell_pixels(det.rles, image.shape), seconds, seg.look)

    def explain(self, image: np.ndarray, checkpoint: Path):
        """The explanation module's hooks and figures for one image (see explain.py)."""
        from livecellseg.explain import explain_image

        predictor = self.predictor(checkpoint)
        with self._model_lock:
            return explain_image(predictor, image)

    @staticmethod
    def view(prediction: Prediction, score: float) -> View:
        keep = prediction.detections.above(score)
        rgb = draw_outlines(gray_to_rgb(prediction.image), prediction.cells, PRED_COLOUR, keep)
        return View(rgb, keep, prediction.cells.areas[keep])

    @staticmethod
    def write_downloads(
        prediction: Prediction, view: View, file_name: str, out: Path
    ) -> tuple[Path, Path]:
        """The label TIFF and COCO JSON of what the view shows, named after `file_name`."""
        det, cells = prediction.detections, prediction.cells
        return write_segmentation(out, Path(file_name).stem, file_name, det, cells, view.keep)


def respond(
    segmenter: Segmenter, source: str | Path, checkpoint: Path, mode: Mode, score: float, out: Path
) -> tuple[Prediction, View, tuple[Path, Path], list[str]]:
    """Read the image, predict (or hit the cache), select the cells above `score`, write the
    downloads into `out`. Returns the notes on image conversions too."""
    image, notes = load_image(source)
    prediction = segmenter.predict(image, checkpoint, mode)
    view = segmenter.view(prediction, score)
    downloads = segmenter.write_downloads(prediction, view, Path(source).name, out)
    return prediction, view, downloads, notes


def area_histogram(areas: np.ndarray, bins: int = 20) -> pd.DataFrame:
    """Cell counts per area bin as a small table; the browser draws the bar chart."""
    import pandas as pd

    if len(areas) == 0:
        return pd.DataFrame({AREA_BIN: pd.Series([], dtype=str), "cells": []})
    counts, edges = np.histogram(areas, bins=min(bins, max(1, len(np.unique(areas)))))
    labels = [f"{lo:.0f}–{hi:.0f}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return pd.DataFrame({AREA_BIN: labels, "cells": counts})


def require_image(source: str | Path | None) -> str | Path:
    if not source:
        raise LivecellsegError("no image yet: upload one or pick an example")
    return source


def checkpoint_path(checkpoints: dict[str, Path], label: str | None) -> Path:
    if not label or label not in checkpoints:
        raise LivecellsegError(
            "no checkpoint chosen; train one (dvc repro) or start the app with --models DIR"
        )
    return checkpoints[label]


def example_path(examples: dict[str, Path], name: str | None) -> str | None:
    """The example image's path (the app's current image), or None when none is chosen."""
    if not name:
        return None
    if name not in examples:
        raise LivecellsegError(f"no example image named {name!r}")
    return str(examples[name])


def check_controls(mode: str, score: float | None) -> None:
    if mode not in get_args(Mode):
        raise LivecellsegError(f"mode {mode!r}: choose one of {list(get_args(Mode))}")
    if score is None or not MIN_SCORE <= score <= 1:
        raise LivecellsegError(f"score threshold {score}: give a number in [{MIN_SCORE}, 1]")


def checkpoint_defaults(
    segmenter: Segmenter, checkpoints: dict[str, Path], label: str | None
) -> tuple[float, Mode]:
    """Where the slider and the mode go for a checkpoint: its recorded operating threshold
    (predict.score_thresh, within the slider's range) and stitching mode."""
    predictor = segmenter.predictor(checkpoint_path(checkpoints, label))
    score = min(max(float(predictor.score_thresh), MIN_SCORE), MAX_SCORE)
    return score, predictor.settings.stitch.mode


@dataclass(frozen=True)
class Segmentation:
    """What the Segment tab shows for one request."""

    overlay: np.ndarray  # RGB, the kept cells outlined
    overlay_png: Path  # the same, written atomically (what the page shows; see segment)
    count: int
    mean_area: float  # px², to 0.1
    summary: str  # markdown
    histogram: pd.DataFrame  # area bin -> cells (area_histogram)
    downloads: tuple[Path, Path]  # label TIFF, COCO JSON
    notes: list[str]  # "file: what was converted" (e.g. RGB to gray), "unlike the training..."
    unlike: bool = False  # the image is unlike the model's training data (novelty.py)


def segment(
    segmenter: Segmenter,
    checkpoints: dict[str, Path],
    source: str | Path | None,
    checkpoint_label: str | None,
    mode: str,
    score: float,
    work: Path,
) -> Segmentation:
    """The Segment tab's answer: the image at `source` segmented with the chosen checkpoint,
    the cells above `score`, downloads written under `work`."""
    source = require_image(source)
    checkpoint = checkpoint_path(checkpoints, checkpoint_label)
    check_controls(mode, score)
    # one directory per request kind: repeating a request rewrites, not accumulates
    key = f"{source}|{checkpoint_label}|{mode}|{score:.2f}".encode()
    out = work / hashlib.sha1(key).hexdigest()[:16]
    prediction, view, downloads, notes = respond(segmenter, source, checkpoint, mode, score, out)
    # the page gets a file we write by rename: for an array Gradio writes its cached PNG in
    # place, so two sessions showing the same overlay could truncate it under a download
    overlay_png = out / "overlay.png"
    save_png(overlay_png, view.overlay)
    h, w = prediction.image.shape
    summary = (
        f"**{view.count} cells** above score {score:.2f} · mean area {view.mean_area:.0f} px² · "
        f"{w}x{h} px · {mode} · model time {prediction.seconds:.1f} s"
    )
    notes = [f"{Path(source).name}: {note}" for note in notes]
    if (look := prediction.look) is not None and look.unlike:
        why = look.reasons()
        warning = (
            f"unlike the images this model was trained on (distance {look.distance:.1f}, "
            f"threshold {segmenter.predictor(checkpoint).training_look.threshold:.1f}"
            f"{'; ' + why if why else ''}): the count may be wrong, check the outlines"
        )
        summary = f"⚠️ **{warning[0].upper()}{warning[1:]}**\n\n{summary}"
        notes.append(f"{Path(source).name}: {warning}")
    return Segmentation(
        overlay=view.overlay,
        overlay_png=overlay_png,
        count=view.count,
        mean_area=round(view.mean_area, 1),
        summary=summary,
        histogram=area_histogram(view.areas),
        downloads=downloads,
        notes=notes,
        unlike=bool(prediction.look and prediction.look.unlike),
    )


def explain(
    segmenter: Segmenter,
    checkpoints: dict[str, Path],
    source: str | Path | None,
    checkpoint_label: str | None,
    work: Path,
) -> tuple[list[list], list[tuple[str, str]]]:
    """The Explain tab's answer: (module, share of mean |activation| %) rows and the figures
    as (PNG path, caption) pairs, written into a new directory under `work`."""
    from livecellseg.explain import save_explanation

    image, _ = load_image(require_image(source))
    exp = segmenter.explain(image, checkpoint_path(checkpoints, checkpoint_label))
    files = save_explanation(exp, image, Path(tempfile.mkdtemp(dir=work)))
    rows = [[module, round(share, 2)] for module, share in exp.importance.items()]
    return rows, [(str(f), f.stem) for f in files if f.suffix == ".png"]


GROWTH_HEADERS = ["well", "doubling time (h)", "95% CI low", "95% CI high", "R²", "note"]


def growth(
    segmenter: Segmenter,
    checkpoints: dict[str, Path],
    files: list | None,
    folder: str | None,
    checkpoint_label: str | None,
    mode: str,
    work: Path,
    *,
    allow_folders: bool,
) -> tuple[Path, list[list], list[Path], list[str]]:
    """The Growth tab's answer: time-lapse images (uploaded, or a folder on this computer)
    segmented at the checkpoint's operating threshold (predict.score_thresh); the plot, a
    row per well, the downloads (growth.csv, wells.csv, doubling.json, growth.png) and the
    files skipped."""
    from livecellseg.growth import analyse, parse_names, write_growth

    paths = [Path(f) for f in files or []]
    if folder and folder.strip():
        if not allow_folders:
            raise LivecellsegError(
                "a folder path is read only when the app serves this computer alone "
                "(--host 127.0.0.1); upload the images instead"
            )
        d = Path(folder.strip()).expanduser()
        if not d.is_dir():
            raise LivecellsegError(f"{d}: no such folder on this computer; give a folder of images")
        paths += sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise LivecellsegError("no images: upload time-lapse images or give a folder of them")
    points = parse_names(paths)  # before the model loads
    checkpoint = checkpoint_path(checkpoints, checkpoint_label)
    if mode not in get_args(Mode):
        raise LivecellsegError(f"mode {mode!r}: choose one of {list(get_args(Mode))}")
    threshold = segmenter.predictor(checkpoint).score_thresh

    def cells(image):
        det = segmenter.predict(image, checkpoint, mode).detections
        return det.take(det.above(threshold)).rles

    result = analyse(paths, points, cells)
    downloads = write_growth(result, Path(tempfile.mkdtemp(dir=work, prefix="growth-")))
    rows = [
        [name, *(round(v, 2) for v in (f.hours, *f.ci95, f.r2)), ""]
        if f.estimable
        else [name, None, None, None, None, f.reason]
        for name, f in result.fits.items()
    ]
    return downloads[3], rows, downloads, result.skipped


# ---- Correct: delete and add cells by hand, collect the corrections, fine-tune on them

TOOLS = ("delete a cell", "add a cell: click around it")
UNDO = 20  # edits an undo can go back


@dataclass(frozen=True)
class Editing:
    """A correction in progress: the image, its labels now, the outline being clicked, and
    the labels before each edit (undo)."""

    name: str  # the image's file name
    image: np.ndarray
    labels: np.ndarray  # uint16, 0 background
    points: tuple[tuple[int, int], ...] = ()
    history: tuple[np.ndarray, ...] = ()

    def edited(self, labels: np.ndarray) -> Editing:
        return replace(self, labels=labels, points=(), history=(*self.history, self.labels)[-UNDO:])

    @property
    def cells(self) -> int:
        return len(np.unique(self.labels)) - 1 if self.labels.any() else 0


def start_correction(
    segmenter: Segmenter,
    checkpoints: dict[str, Path],
    source: str | Path | None,
    checkpoint_label: str | None,
    mode: str,
    score: float,
) -> Editing:
    """The image's segmentation as the Segment tab shows it (checkpoint, mode, threshold),
    as a label image to correct."""
    source = require_image(source)
    checkpoint = checkpoint_path(checkpoints, checkpoint_label)
    check_controls(mode, score)
    image, _ = load_image(source)
    prediction = segmenter.predict(image, checkpoint, mode)
    view = segmenter.view(prediction, score)
    labels = label_image(prediction.cells, prediction.detections.scores, view.keep)
    return Editing(Path(source).name, image, labels)


def require_editing(editing: Editing | None) -> Editing:
    if editing is None:
        raise LivecellsegError(
            "no image to correct: upload one here, or segment one and press 'Correct it'"
        )
    return editing


def click(editing: Editing | None, tool: str, x: float, y: float) -> Editing:
    """A click on the image: delete the cell under it, or add a point to the outline."""
    editing = require_editing(editing)
    if tool == TOOLS[0]:
        return editing.edited(delete_cell(editing.labels, x, y)[0])
    if tool != TOOLS[1]:
        raise LivecellsegError(f"tool {tool!r}: choose one of {list(TOOLS)}")
    cell_at(editing.labels, x, y)  # inside the image
    return replace(editing, points=(*editing.points, (int(x), int(y))))


def close_outline(editing: Editing | None) -> Editing:
    """The outline clicked so far becomes a new cell."""
    editing = require_editing(editing)
    return editing.edited(add_cell(editing.labels, list(editing.points))[0])


def undo(editing: Editing | None) -> Editing:
    """Take back the last point of an open outline, else the last edit."""
    editing = require_editing(editing)
    if editing.points:
        return replace(editing, points=editing.points[:-1])
    if not editing.history:
        raise LivecellsegError("nothing to undo")
    return replace(editing, labels=editing.history[-1], history=editing.history[:-1])


def editing_view(editing: Editing, work: Path) -> tuple[Path, str]:
    """The picture of the correction (written by rename, as the Segment tab's) and a line
    saying where it stands."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="correct-")) / "correction.png"
    save_png(out, draw(editing.image, editing.labels, list(editing.points)))
    text = f"**{editing.cells} cells** in {editing.name} · {len(editing.history)} edits"
    if editing.points:
        text += f" · outline of {len(editing.points)} points: 'Close outline' adds the cell"
    return out, text


def save_correction(editing: Editing | None, corrections: Corrections) -> tuple[Path, int]:
    """Keep the correction for fine-tuning; its label TIFF (to download) and how many are kept."""
    editing = require_editing(editing)
    path = corrections.save(editing.name, editing.image, editing.labels)
    return path, len(corrections.list())


def finetune_corrections(
    corrections: Corrections,
    checkpoints: dict[str, Path],
    checkpoint_label: str | None,
    settings: tuple[FinetuneConfig, float, Path | None] | None,
    work: Path,
    device: str,
) -> tuple[dict, Path, str]:
    """Fine-tune the chosen checkpoint on the corrections kept (livecellseg.finetune, as the
    CLI; `settings`: the finetune section, evaluate.iou_thresh and the tiles to replay, or
    None); the new checkpoint joins the app's list. Returns the report, its path and label."""
    from livecellseg.finetune import finetune

    if settings is None:
        raise LivecellsegError(
            "fine-tuning reads params.yaml's finetune section: start the app from the "
            "project root or pass --params"
        )
    kept = corrections.list()
    if not kept:
        raise LivecellsegError("no corrections kept yet: correct an image and press 'Keep'")
    checkpoint = checkpoint_path(checkpoints, checkpoint_label)
    cfg, iou, replay = settings
    out = Path(tempfile.mkdtemp(dir=work, prefix="finetuned-")) / (
        f"{checkpoint.stem}_finetuned.pt"
    )
    report = finetune(kept, checkpoint, out, cfg, iou_thresh=iou, replay=replay, device=device)
    label = f"{checkpoint.stem} fine-tuned on {len(kept)} image(s) ({out.parent.name})"
    checkpoints[label] = out
    return report, out, label


def finetune_summary(report: dict) -> str:
    b, a = report["before"], report["after"]
    return (
        f"**Held-out F1 {b['f1']:.3f} → {a['f1']:.3f}** (recall {b['recall']:.3f} → "
        f"{a['recall']:.3f}) on {report['val_tiles']} held-out tiles · {report['images']} "
        f"image(s), {report['cells']} cells · {report['steps']} steps in "
        f"{report['seconds']:.0f} s · the new model is in the checkpoint lists"
    )


@contextlib.contextmanager
def _gradio_errors(gr):
    """A LivecellsegError becomes a gr.Error with its message; anything else is logged with
    its traceback and shown as one line."""
    try:
        yield
    except LivecellsegError as e:
        raise gr.Error(html.escape(str(e)), title="Cannot segment this") from None
    except Exception as e:
        log.exception("unexpected error")
        message = f"unexpected error ({type(e).__name__}: {e}); see the server log"
        raise gr.Error(html.escape(message), title="Error") from None


def _gradio_adapters(
    gr,
    segmenter: Segmenter,
    checkpoints: dict[str, Path],
    examples: dict[str, Path],
    work: Path,
    allow_folders: bool = False,
    finetune_settings: tuple[FinetuneConfig, float] | None = None,
) -> SimpleNamespace:
    """The event handlers as Gradio calls them: each calls the plain function and turns its
    values into component values, its notes into gr.Warning, its errors into gr.Error."""

    def segment_(source, label, mode, score, progress=gr.Progress()):  # noqa: B008
        progress(0.1, desc="segmenting (the first time per image and model)")
        with _gradio_errors(gr):
            r = segment(segmenter, checkpoints, source, label, mode, score, work)
        for note in r.notes:
            gr.Warning(html.escape(note))
        bars = gr.BarPlot(value=r.histogram, sort=list(r.histogram[AREA_BIN]))
        return (
            str(r.overlay_png),
            r.count,
            r.mean_area,
            r.summary,
            bars,
            [str(p) for p in r.downloads],
        )

    def control(source, *rest):  # a control moved: nothing to redo before an image
        return segment_(source, *rest) if source else gr.skip()  # one skip() skips every output

    def checkpoint(label):
        with _gradio_errors(gr):
            return checkpoint_defaults(segmenter, checkpoints, label)

    def example(name):
        with _gradio_errors(gr):
            return example_path(examples, name)

    def explain_(source, label):
        with _gradio_errors(gr):
            return explain(segmenter, checkpoints, source, label, work)

    def growth_(files, folder, label, mode, progress=gr.Progress()):  # noqa: B008
        progress(0.1, desc="segmenting the series")
        with _gradio_errors(gr):
            plot, rows, downloads, skipped = growth(
                segmenter,
                checkpoints,
                files,
                folder,
                label,
                mode,
                work,
                allow_folders=allow_folders,
            )
        for reason in skipped:
            gr.Warning(html.escape(f"skipped: {reason}"))
        return str(plot), rows, [str(p) for p in downloads]

    def shown(editing):
        png, text = editing_view(editing, work)
        return editing, str(png), text

    def correct_(source, label, mode, score, progress=gr.Progress()):  # noqa: B008
        progress(0.1, desc="segmenting (the first time per image and model)")
        with _gradio_errors(gr):
            return shown(start_correction(segmenter, checkpoints, source, label, mode, score))

    def click_(editing, tool, evt):
        with _gradio_errors(gr):
            return shown(click(editing, tool, *evt.index[:2]))

    # the class itself, not the string `from __future__ import annotations` leaves: Gradio
    # finds the argument to fill with the click by its annotation
    click_.__annotations__["evt"] = gr.SelectData

    def close_(editing):
        with _gradio_errors(gr):
            return shown(close_outline(editing))

    def undo_(editing):
        with _gradio_errors(gr):
            return shown(undo(editing))

    def keep_(editing, root):
        root = root or tempfile.mkdtemp(dir=work, prefix="corrections-")
        with _gradio_errors(gr):
            path, n = save_correction(editing, Corrections(Path(root)))
        return root, str(path), f"{n} correction(s) kept for fine-tuning"

    def finetune_(root, label, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        progress(0.0, desc="fine-tuning")
        with _gradio_errors(gr):
            corrections = Corrections(Path(root or tempfile.mkdtemp(dir=work)))
            report, path, new = finetune_corrections(
                corrections,
                checkpoints,
                label,
                finetune_settings,
                work,
                segmenter.device.type,
            )
        choices = gr.update(choices=list(checkpoints))
        return finetune_summary(report), str(path), choices, choices

    return SimpleNamespace(
        correct=correct_,
        click=click_,
        close=close_,
        undo=undo_,
        keep=keep_,
        finetune=finetune_,
        segment=segment_,
        control=control,
        checkpoint=checkpoint,
        example=example,
        explain=explain_,
        growth=growth_,
    )


INTRO = (
    "## livecellseg: cell instance segmentation (Mask R-CNN, LIVECell)\n"
    "Upload a phase-contrast image or pick an example; outlines are drawn in magenta. "
    "Moving the score threshold re-filters the cached prediction without re-running the model."
)
GROWTH_INTRO = (
    "Time-lapse images named as LIVECell's (`<line>_Phase_<well>_<field>_<DD>d<HH>h<MM>m_"
    "<crop>.tif`): cells and confluence per image, mean ± sd over positions per well, and "
    "each well's doubling time from a log-linear fit over its exponential phase."
)
CORRECT_INTRO = (
    "Correct the segmentation of an image, then fine-tune the model on your corrections. "
    "'Correct it' takes the Segment tab's image, model and threshold (or upload one here). "
    "*Delete a cell*: click inside it. *Add a cell*: click around its outline, then 'Close "
    "outline'. 'Keep this correction' stores it (and offers its label TIFF, which napari and "
    "Fiji open); 'Fine-tune' trains the chosen model on every kept correction, a part held "
    "out to measure it, and adds the new model to the checkpoint lists."
)
EXPLAIN_INTRO = (
    "One forward pass on the current image with hooks on the backbone stages, CBAM blocks, "
    "FPN levels, RPN and heads: each module's share of the mean absolute activation, its "
    "feature maps, and the attention maps."
)


def build_app(
    segmenter: Segmenter,
    checkpoints: dict[str, Path],
    examples: dict[str, Path],
    *,
    allow_folders: bool = False,
    finetune_settings: tuple[FinetuneConfig, float, Path | None] | None = None,
):
    """The Gradio Blocks: Segment, Correct, Explain and Growth tabs; layout and wiring only.
    `allow_folders`: the Growth tab reads a folder path on the server (local use only).
    `finetune_settings`: params.yaml's finetune section, evaluate.iou_thresh and the tiles to
    replay (None: the Fine-tune button says where to get them)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    work = Path(tempfile.mkdtemp(prefix="livecellseg-app-"))
    area_histogram(np.ones(3))  # imports pandas now, not on the first slider move
    on = _gradio_adapters(
        gr, segmenter, checkpoints, examples, work, allow_folders, finetune_settings
    )
    first = next(iter(checkpoints), None)
    # the page starts with the first checkpoint's score threshold and mode
    start = checkpoint_defaults(segmenter, checkpoints, first) if first else (MIN_SCORE, None)

    # delete_cache: Gradio's copies of uploads and outputs older than an hour, hourly
    with gr.Blocks(title="livecellseg", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
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
                    list(examples), value=None, label="…or an example image", elem_id="example"
                )
                ckpt = gr.Dropdown(
                    list(checkpoints), value=first, label="Model checkpoint", elem_id="checkpoint"
                )
                mode = gr.Radio(
                    list(get_args(Mode)),
                    value=start[1],
                    label="Mode",
                    info="stitched: overlapping tiles, as the pipeline; whole: one pass, faster",
                )
                score = gr.Slider(
                    MIN_SCORE,
                    MAX_SCORE,
                    start[0],
                    step=0.01,
                    label="Score threshold",
                    elem_id="score",
                )
                run = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                overlay = gr.Image(
                    label="Overlay", format="png", interactive=False, elem_id="overlay"
                )
                with gr.Row():
                    count = gr.Number(label="Cells", elem_id="count", interactive=False)
                    mean_area = gr.Number(
                        label="Mean cell area (px²)", elem_id="mean-area", interactive=False
                    )
                summary = gr.Markdown(elem_id="summary")
                hist = gr.BarPlot(
                    x=AREA_BIN, y="cells", label="Cell areas", elem_id="areas", x_label_angle=-45
                )
                downloads = gr.File(
                    label="Downloads: label TIFF, COCO JSON",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
        editing, kept_root = gr.State(None), gr.State(None)
        with gr.Tab("Correct"):
            gr.Markdown(CORRECT_INTRO)
            with gr.Row():
                with gr.Column(scale=1):
                    correct_upload = gr.File(
                        label="Image to correct (TIFF, PNG, JPEG)",
                        file_types=list(IMAGE_SUFFIXES),
                        type="filepath",
                        elem_id="correct-upload",
                    )
                    correct_btn = gr.Button("Correct it", elem_id="correct-start")
                    tool = gr.Radio(list(TOOLS), value=TOOLS[0], label="A click", elem_id="tool")
                    with gr.Row():
                        close_btn = gr.Button("Close outline", elem_id="close-outline")
                        undo_btn = gr.Button("Undo", elem_id="undo")
                    keep_btn = gr.Button("Keep this correction", elem_id="keep")
                    labels_file = gr.File(
                        label="Corrected label TIFF", interactive=False, elem_id="correct-labels"
                    )
                    kept_text = gr.Markdown(elem_id="kept")
                    finetune_btn = gr.Button(
                        "Fine-tune on the kept corrections", variant="primary", elem_id="finetune"
                    )
                    finetune_text = gr.Markdown(elem_id="finetune-report")
                    finetuned_file = gr.File(
                        label="Fine-tuned checkpoint", interactive=False, elem_id="finetuned"
                    )
                with gr.Column(scale=2):
                    correction = gr.Image(
                        label="Correction (click on it)",
                        format="png",
                        interactive=False,
                        elem_id="correction",
                    )
                    correct_text = gr.Markdown(elem_id="correct-summary")
        with gr.Tab("Explain"):
            gr.Markdown(EXPLAIN_INTRO)
            explain_btn = gr.Button("Explain the current image", elem_id="explain")
            importance = gr.Dataframe(
                headers=["module", "share of mean |activation| (%)"],
                elem_id="importance",
                interactive=False,
            )
            gallery = gr.Gallery(label="Feature maps and attention", columns=2, height="auto")
        with gr.Tab("Growth"):
            gr.Markdown(GROWTH_INTRO)
            with gr.Row():
                with gr.Column(scale=1):
                    series = gr.File(
                        label="Time-lapse images (LIVECell names)",
                        file_count="multiple",
                        file_types=list(IMAGE_SUFFIXES),
                        type="filepath",
                        elem_id="series",
                    )
                    folder = gr.Textbox(
                        label="…or a folder on this computer",
                        interactive=allow_folders,
                        placeholder="/path/to/images"
                        if allow_folders
                        else "only with --host 127.0.0.1",
                        elem_id="folder",
                    )
                    growth_ckpt = gr.Dropdown(
                        list(checkpoints), value=first, label="Model checkpoint"
                    )
                    growth_mode = gr.Radio(list(get_args(Mode)), value="whole", label="Mode")
                    growth_btn = gr.Button("Analyse", variant="primary", elem_id="growth-run")
                with gr.Column(scale=2):
                    growth_plot = gr.Image(label="Growth", format="png", interactive=False)
                    fits = gr.Dataframe(headers=GROWTH_HEADERS, interactive=False, elem_id="fits")
                    growth_files = gr.File(
                        label="Downloads: growth.csv, wells.csv, doubling.json, growth.png",
                        file_count="multiple",
                        interactive=False,
                        elem_id="growth-downloads",
                    )

        outputs = [overlay, count, mean_area, summary, hist, downloads]
        inputs = [source, ckpt, mode, score]
        hidden = {"api_visibility": "undocumented"}
        # API (gradio_client, one session per client): /upload or /example, then /segment
        upload.upload(lambda f: f, upload, source, api_name="upload").then(
            on.segment, inputs, outputs, api_name="segment"
        )
        example.input(on.example, example, source, api_name="example").then(
            on.segment, inputs, outputs, **hidden
        )
        run.click(on.segment, inputs, outputs, **hidden)
        # another checkpoint: the slider moves to its threshold, then the image is redone
        ckpt.input(on.checkpoint, ckpt, [score, mode], **hidden).success(
            on.control, inputs, outputs, **hidden
        )
        mode.input(on.control, inputs, outputs, **hidden)
        # cached: only the newest value matters while the slider moves
        score.input(
            on.control,
            inputs,
            outputs,
            show_progress="hidden",
            trigger_mode="always_last",
            **hidden,
        )
        shown = [editing, correction, correct_text]
        correct_upload.upload(lambda f: f, correct_upload, source, **hidden).then(
            on.correct, inputs, shown, **hidden
        )
        correct_btn.click(on.correct, inputs, shown, **hidden)
        correction.select(on.click, [editing, tool], shown, **hidden)
        close_btn.click(on.close, editing, shown, **hidden)
        undo_btn.click(on.undo, editing, shown, **hidden)
        keep_btn.click(on.keep, [editing, kept_root], [kept_root, labels_file, kept_text], **hidden)
        # one fine-tuning at a time; the other tabs go on answering meanwhile
        finetune_btn.click(
            on.finetune,
            [kept_root, ckpt],
            [finetune_text, finetuned_file, ckpt, growth_ckpt],
            concurrency_limit=1,
            concurrency_id="finetune",
            **hidden,
        )
        explain_btn.click(on.explain, [source, ckpt], [importance, gallery], api_name="explain")
        growth_btn.click(
            on.growth,
            [series, folder, growth_ckpt, growth_mode],
            [growth_plot, fits, growth_files],
            api_name="growth",
        )
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
    params: Path | None = None,
    replay_tiles: Path | None = None,
) -> None:
    """Serve the app. `params`: the params.yaml whose finetune section the Fine-tune button
    uses (absent: the button says so); `replay_tiles`: the tile stage output the models were
    trained on, replayed while fine-tuning (absent: the corrections alone)."""
    import gradio as gr

    from livecellseg.config import load_params

    checkpoints = find_checkpoints(models_dir)
    if not checkpoints:
        raise LivecellsegError(
            f"{models_dir}: no checkpoints (*.pt); train with `dvc repro` or pass --models DIR"
        )
    examples = find_examples(examples_dir)
    log.info("%d checkpoints in %s, %d example images", len(checkpoints), models_dir, len(examples))
    local = host in ("127.0.0.1", "localhost", "::1")
    settings = None
    if params is not None and Path(params).is_file():
        p = load_params(params)
        if replay_tiles is not None and not (Path(replay_tiles) / "train.json").is_file():
            log.info(
                "%s has no train.json: fine-tuning trains on the corrections alone", replay_tiles
            )
            replay_tiles = None
        settings = (p.finetune, p.evaluate.iou_thresh, replay_tiles)
    else:
        log.warning("%s not found: the Correct tab cannot fine-tune (pass --params)", params)
    demo = build_app(
        Segmenter(device), checkpoints, examples, allow_folders=local, finetune_settings=settings
    )
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
