"""Atomic outputs: write to a temporary sibling, then rename, so a kill never leaves half a file."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(path: str | Path) -> int:
    """Delete the temporaries (files or directories) of `path` that `atomic_path` or
    `atomic_dir` left when their writer was killed; return how many.

    Only for paths one process writes at a time (a stage's own outputs, under DVC's lock).
    """
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def _atomic_file(path: str | Path, **open_kwargs) -> Iterator[IO]:
    """A text file open for writing that replaces `path` only if the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, "w", **open_kwargs) as f:
        yield f


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> None:
    with _atomic_file(path) as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of equal keys as CSV (header from the first row), atomically."""
    with _atomic_file(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `path` only if the block succeeds.

    For a stage's output directory (one writer at a time, under DVC's lock): temporaries a
    killed run left beside it are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_temps(path):
        log.info("removed %d temporary output(s) of %s left by an interrupted run", stale, path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
