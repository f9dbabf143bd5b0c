"""Reading and writing LIVECell images: 8-bit grayscale, LZW-compressed TIFF."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from livecellseg.errors import DataError

_CELL_LINE = re.compile(r"^([A-Za-z0-9]+)_Phase_")


def cell_line_of(file_name: str) -> str:
    """'A172_Phase_C7_1_00d00h00m_1.tif' -> 'A172' (LIVECell's naming)."""
    m = _CELL_LINE.match(Path(file_name).name)
    if m is None:
        raise DataError(
            f"{file_name}: name does not follow LIVECell's '<CellLine>_Phase_<well>_...tif' "
            "pattern; rename it so the cell line can be read from it"
        )
    return m.group(1)


def read_gray(path: str | Path, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a 2-D uint8 image; `size` is the expected (width, height) from the COCO JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image not found; restore the file or remove it from the JSON")
    try:
        img = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for damaged files
        raise DataError(
            f"{path}: cannot be read as TIFF ({type(e).__name__}: {e}); re-download or replace it"
        ) from None
    if img.size == 0:
        raise DataError(f"{path}: TIFF holds no image data (corrupt); re-download or replace it")
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        raise DataError(
            f"{path}: RGB image of shape {img.shape}; LIVECell images are grayscale, "
            "convert it to 8-bit gray"
        )
    if img.ndim != 2:
        raise DataError(f"{path}: expected a 2-D grayscale image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise DataError(f"{path}: expected 8-bit (uint8) pixels, got {img.dtype}; convert to 8-bit")
    if size is not None and (img.shape[1], img.shape[0]) != tuple(size):
        raise DataError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]} but its JSON entry says "
            f"{size[0]}x{size[1]}; fix the JSON's width/height or replace the image"
        )
    return img


def write_gray(path: str | Path, img: np.ndarray) -> None:
    """Write an 8-bit LZW TIFF atomically (the way LIVECell stores its images)."""
    path = Path(path)
    assert img.ndim == 2 and img.dtype == np.uint8, (img.shape, img.dtype)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tifffile.imwrite(tmp, img, compression="lzw", photometric="minisblack")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
