"""Image files: LIVECell's 8-bit LZW TIFFs, users' TIFF/PNG/JPEG as 8-bit gray, label TIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from livecellseg.errors import DataError
from livecellseg.io import atomic_path


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
    assert img.ndim == 2 and img.dtype == np.uint8, (img.shape, img.dtype)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, img, compression="lzw", photometric="minisblack")


MAX_PIXELS = 64_000_000  # refuse larger inputs (decompression bombs); LIVECell images are 0.37 MP
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def load_image(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Any user image (TIFF, PNG, JPEG) as 2-D uint8, with notes on what was converted.

    RGB(A) becomes gray by luminance; other bit depths are rescaled to 0..255 between their
    0.1 and 99.9 percentiles. The models were trained on LIVECell's 8-bit phase contrast, so
    each conversion is reported: results on such images deserve a look.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:  # the size from the header, before decoding
                if not tif.series:
                    raise DataError(
                        f"{path}: holds no image data (corrupt or truncated); replace the file"
                    )
                _check_pixels(path, tif.series[0].shape)
                img = tif.asarray()
        else:
            from PIL import Image

            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr") else im)
    except DataError:
        raise
    except Exception as e:  # readers raise many types for damaged files
        raise DataError(
            f"{path}: cannot be read as an image ({type(e).__name__}: {e}); "
            "replace it with a TIFF, PNG or JPEG"
        ) from None
    if img.size == 0:
        raise DataError(f"{path}: holds no image data (corrupt or truncated); replace the file")
    notes: list[str] = []
    eight_bit = img.dtype == np.uint8
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3].astype(np.float64)
        img = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's "L"
        notes.append("RGB converted to gray")
    if img.ndim != 2 or min(img.shape) == 0:
        raise DataError(
            f"{path}: expected a 2-D grayscale image, got shape {img.shape}; "
            "save one plane as an 8-bit gray image"
        )
    _check_pixels(path, img.shape)
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
            raise DataError(f"{path}: image holds NaN or infinite values; fix or replace it")
        if eight_bit:  # gray made from 8-bit RGB: round back to 8 bits
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        else:
            lo, hi = np.percentile(img, (0.1, 99.9))
            scaled = (img.astype(np.float64) - lo) / max(hi - lo, 1e-12) * 255
            notes.append(f"{img.dtype} rescaled to 8-bit ({lo:g}..{hi:g} -> 0..255)")
            img = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), notes


def _check_pixels(path: Path, shape: tuple[int, ...]) -> None:
    planes = shape[:-1] if len(shape) >= 3 and shape[-1] in (3, 4) else shape  # no channels
    if int(np.prod(planes)) > MAX_PIXELS:
        raise DataError(
            f"{path}: {np.prod(planes) / 1e6:.0f} megapixels (shape {tuple(shape)}) is too "
            f"large, the limit is {MAX_PIXELS / 1e6:.0f}; crop or split it"
        )


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """A uint16 label image (0 background, 1..N cells) as a zlib TIFF, atomically; what
    Cellpose, napari and Fiji open as labels."""
    assert labels.ndim == 2 and labels.dtype == np.uint16, (labels.shape, labels.dtype)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack")
