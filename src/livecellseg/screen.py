"""Segmenting a screen: thousands of images under a directory tree, streamed, resumable and
sharded over processes and machines with torchrun.

`plan` lists every image under the inputs (recursively, sorted: the same list in every
process) and where its outputs go: a directory's images keep their sub-directories below
`out` (plate and well folders). An image is done when its overlay, label TIFF and COCO
document exist and the document records the same model and settings (`Identity`): a rerun
skips it, whatever a killed run logged. Each output is written atomically, the COCO document
last, so a SIGKILL loses only the images in flight. `summary.csv` is rebuilt from the
per-image documents at the end of every run.

Under torchrun, rank r of `world` takes jobs r, r + world, ... of the sorted list, decodes its
images in DataLoader workers ahead of the model, and writes its own outputs; after a gloo
barrier rank 0 writes the one summary. A node's ranks use its GPUs by LOCAL_RANK when CUDA is
there; every rank must see the same output directory (a shared file system across nodes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from livecellseg.errors import LivecellsegError
from livecellseg.images import IMAGE_SUFFIXES, load_image
from livecellseg.io import write_csv, write_json
from livecellseg.predict import Predictor, Segmented, write_segmentation
from livecellseg.visualize import PRED_COLOUR, cell_pixels, draw_outlines, gray_to_rgb, save_png

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = (
    "file",
    "output",
    "cells",
    "mean_area_px",
    "distance",
    "unlike_training",
    "seconds",
    "status",
)


@dataclass(frozen=True)
class Job:
    """One input image and where its outputs go."""

    source: Path
    out_dir: Path
    stem: str
    output: str  # the outputs' name relative to the output root, e.g. plate1/B2/img1

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.stem}{suffix}"

    @property
    def coco(self) -> Path:  # written last: the image is done when it is there
        return self.path("_coco.json")

    @property
    def outputs(self) -> tuple[Path, Path, Path]:
        return self.path("_overlay.png"), self.path("_labels.tif"), self.coco

    @property
    def error(self) -> Path:
        return self.path("_error.json")


def plan(inputs: list[Path], out: Path) -> tuple[list[Job], list[str]]:
    """Every image under `inputs` with its output place, and a message per input that held
    none. Directories are searched recursively (hidden entries and anything under `out`
    left out) and keep their layout below `out`; files given directly go to `out`. A name
    repeated in one output directory gets _2, _3... so nothing is overwritten."""
    out = out.resolve()
    jobs, problems, seen = [], [], {}
    for item in inputs:
        if item.is_dir():
            found = sorted(
                (p for p in item.rglob("*") if _is_input(p, item, out)),
                key=lambda p: p.relative_to(item).as_posix(),
            )
            if not found:
                problems.append(
                    f"{item}: no {'/'.join(IMAGE_SUFFIXES)} files in this directory or below"
                )
            pairs = [(p, p.relative_to(item).parent) for p in found]
        else:
            pairs = [(item, Path())]  # a missing file is reported when it is read
        for path, rel in pairs:
            key = (rel.as_posix(), path.stem)
            seen[key] = seen.get(key, 0) + 1
            stem = path.stem if seen[key] == 1 else f"{path.stem}_{seen[key]}"
            jobs.append(Job(path, out / rel, stem, (rel / stem).as_posix()))
    return jobs, problems


def _is_input(path: Path, root: Path, out: Path) -> bool:
    rel = path.relative_to(root)
    if any(part.startswith(".") for part in rel.parts):
        return False
    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return False
    return not path.resolve().is_relative_to(out)


@dataclass(frozen=True)
class Identity:
    """What made an image's outputs: the checkpoint's bytes and the post-processing."""

    model: str
    checkpoint_md5: str
    settings: str  # a hash of the prediction settings

    @classmethod
    def of(cls, checkpoint: Path, predictor: Predictor, name: str) -> Identity:
        h = hashlib.md5()
        with open(checkpoint, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        settings = json.dumps(asdict(predictor.settings), sort_keys=True, default=str)
        return cls(name, h.hexdigest(), hashlib.md5(settings.encode()).hexdigest()[:12])


def recorded(job: Job) -> dict | None:
    """The image entry of a job's COCO document, when all its outputs are there."""
    if not all(p.is_file() for p in job.outputs):
        return None
    try:
        return json.loads(job.coco.read_text())["images"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None  # unreadable: redone


def _die_with_parent(_worker_id: int) -> None:
    """A DataLoader worker whose process is killed (SIGKILL, out of memory) would wait on its
    full queue forever: on Linux, make it die with its parent."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before prctl: follow it now
            os._exit(1)


class _Images(Dataset):
    """The images of some jobs, decoded in DataLoader workers."""

    def __init__(self, jobs: list[Job]):
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int):
        try:
            image, notes = load_image(self.jobs[i].source)
            return i, image, notes, None
        except LivecellsegError as e:
            return i, None, [], str(e)


@dataclass
class Tally:
    done: int = 0  # segmented by this run
    skipped: int = 0  # done before, by the same model and settings
    failed: int = 0  # could not be read
    unlike: int = 0  # flagged as unlike the training data

    def add(self, other: Tally) -> None:
        for k in vars(self):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def predict_screen(
    inputs: list[Path],
    out: Path,
    predictor: Predictor,
    identity: Identity,
    *,
    checkpoint: Path,
    overwrite: bool = False,
    workers: int = 2,
) -> tuple[Tally, list[dict]]:
    """Segment every image under `inputs` into `out`, this process's share of them under
    torchrun; return the run's tally (all ranks) and, on rank 0, the summary rows."""
    rank, world = _rank(), _world()
    jobs, problems = plan(inputs, out)
    for p in problems:
        log.error("%s", p)
    if not jobs:
        raise LivecellsegError(
            f"no images found in {' '.join(map(str, inputs))}; pass .tif/.tiff/.png/.jpg/.jpeg "
            "files or directories holding them"
        )
    mine = jobs[rank::world]
    _remove_temps(mine)
    todo, tally, other = [], Tally(), None
    for job in mine:
        rec = None if overwrite else recorded(job)
        if rec is None:
            todo.append(job)
        elif rec.get("prediction") == asdict(identity):
            tally.skipped += 1
        else:
            other = other or job
            todo.append(job)
    if other is not None:
        raise LivecellsegError(
            f"{other.coco}: segmented with another model or settings than {checkpoint} "
            "now has; pass --overwrite to redo such images, or another --out"
        )
    log.info(
        "%s%d images: %d done before (skipped), %d to segment -> %s",
        f"rank {rank}/{world}: " if world > 1 else "",
        len(mine),
        tally.skipped,
        len(todo),
        out,
    )
    # whole mode on a GPU: images of one size share forward passes. Not on a CPU, where it
    # gains nothing and another batch would change scores in the last float bit: there an
    # image's outputs are the same whatever the ranks and resumes.
    batched = predictor.settings.stitch.mode == "whole" and predictor.device.type == "cuda"
    loader = DataLoader(
        _Images(todo),
        batch_size=predictor.settings.stitch.batch_size if batched else 1,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=_die_with_parent,
    )
    with tqdm(total=len(todo), unit="img", desc=f"predict{f' {rank}' if world > 1 else ''}") as bar:
        for batch in loader:
            _segment_batch(batch, todo, predictor, identity, tally)
            bar.update(len(batch))
    total = _all_ranks(tally)
    rows = summary_rows(jobs, identity) if rank == 0 else []
    if rank == 0:
        write_csv(out / "summary.csv", rows)
    _barrier()
    total.failed += len(problems)
    return total, rows


def _segment_batch(batch, jobs: list[Job], predictor: Predictor, identity: Identity, tally: Tally):
    images, items = [], []
    for i, image, notes, error in batch:
        job = jobs[i]
        if error is not None:
            log.error("skipped: %s", error)
            write_json(job.error, {"file": str(job.source), "error": error})
            tally.failed += 1
            continue
        for note in notes:
            log.warning("%s: %s", job.source, note)
        images.append(image)
        items.append((job, notes))
    if not images:
        return
    t0 = time.perf_counter()
    segs = predictor.segment_many(images)
    seconds = (time.perf_counter() - t0) / len(images)
    for (job, notes), image, seg in zip(items, images, segs, strict=True):
        _write(job, image, notes, seg, predictor, identity, seconds)
        tally.done += 1
        tally.unlike += bool(seg.look and seg.look.unlike)


def _write(job, image, notes, seg: Segmented, predictor, identity, seconds: float) -> None:
    keep = seg.det.above(predictor.score_thresh)
    det = seg.det.take(keep)  # the cells: above the operating threshold
    cells = cell_pixels(det.rles, image.shape)
    areas = cells.areas
    info = {
        "source": str(job.source),
        "cells": len(areas),
        "mean_area_px": round(float(areas.mean()), 1) if len(areas) else None,
        "seconds": round(seconds, 3),
        "notes": notes,
        "prediction": asdict(identity),
    }
    if seg.look is not None:
        look = predictor.training_look
        info |= {
            "distance": round(seg.look.distance, 3),
            "unlike_training": seg.look.unlike,
            "distance_threshold": round(look.threshold, 3),
            "grey_z": round(seg.look.grey_z, 2),
            "contrast_z": round(seg.look.contrast_z, 2),
        }
        if seg.look.unlike:
            why = seg.look.reasons()
            log.warning(
                "%s: unlike the training data (distance %.1f > %.1f%s): check its cells",
                job.source,
                seg.look.distance,
                look.threshold,
                f"; {why}" if why else "",
            )
    save_png(job.path("_overlay.png"), draw_outlines(gray_to_rgb(image), cells, PRED_COLOUR))
    write_segmentation(job.out_dir, job.stem, job.source.name, det, cells, info=info)
    job.error.unlink(missing_ok=True)


def summary_rows(jobs: list[Job], identity: Identity) -> list[dict]:
    """One row per job from its outputs on disk (or its error record)."""
    rows = []
    for job in jobs:
        row = dict.fromkeys(SUMMARY_COLUMNS, "") | {"file": str(job.source), "output": job.output}
        rec = recorded(job)
        if rec is not None and rec.get("prediction") == asdict(identity):
            notes = rec.get("notes") or []
            row |= {
                "cells": rec["cells"],
                "mean_area_px": "" if rec.get("mean_area_px") is None else rec["mean_area_px"],
                "distance": rec.get("distance", ""),
                "unlike_training": {True: "yes", False: "no"}.get(rec.get("unlike_training"), ""),
                "seconds": rec.get("seconds", ""),
                "status": "ok" + (f" ({'; '.join(notes)})" if notes else ""),
            }
        elif job.error.is_file():
            try:
                error = json.loads(job.error.read_text())["error"]
            except (OSError, ValueError, KeyError):
                error = "unreadable"
            row["status"] = f"skipped: {error}"
        else:
            row["status"] = "not done (run the command again)"
        rows.append(row)
    return rows


def _remove_temps(jobs: list[Job]) -> None:
    """Delete the temporaries a killed run left for these jobs' outputs (atomic writes)."""
    names_by_dir: dict[Path, set[str]] = {}
    for job in jobs:
        names = names_by_dir.setdefault(job.out_dir, set())
        names.update(p.name for p in (*job.outputs, job.error))
    removed = 0
    for folder, names in names_by_dir.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            n = entry.name
            if n.startswith(".") and n.endswith(".tmp") and n[1:].rsplit(".", 2)[0] in names:
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("removed %d temporary file(s) left by a killed run", removed)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def start_ranks() -> tuple[int, int]:
    """Join torchrun's process group (gloo: only barriers and counts travel) when it
    started several processes; (local rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
    return int(os.environ.get("LOCAL_RANK", "0")), world


def stop_ranks() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_ranks(tally: Tally) -> Tally:
    if not dist.is_initialized():
        return tally
    t = torch.tensor([tally.done, tally.skipped, tally.failed, tally.unlike], dtype=torch.int64)
    dist.all_reduce(t)
    return Tally(*map(int, t.tolist()))


def equal_outputs(a: Path, b: Path) -> list[str]:
    """Relative paths whose outputs differ between two output roots (labels and COCO
    documents compared by content, timings aside): for tests and benchmarks."""
    import tifffile

    diffs = []
    names = sorted(
        p.relative_to(a).as_posix()
        for p in a.rglob("*")
        if p.name.endswith(("_labels.tif", "_coco.json"))
    )
    for name in names:
        pa, pb = a / name, b / name
        if not pb.is_file():
            diffs.append(name)
        elif name.endswith(".tif"):
            if not np.array_equal(tifffile.imread(pa), tifffile.imread(pb)):
                diffs.append(name)
        else:
            da, db = json.loads(pa.read_text()), json.loads(pb.read_text())
            for d in (da, db):
                d["images"][0].pop("seconds", None)
            if da != db:
                diffs.append(name)
    return diffs
