"""load_image: what users bring (8/16-bit, RGB, PNG/JPEG, broken files) becomes 2-D uint8."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from livecellseg.errors import DataError
from livecellseg.images import load_image, write_gray, write_labels


@pytest.fixture
def gray():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60), dtype=np.uint8)


def test_8bit_tiff_and_png_are_read_unchanged(gray, tmp_path):
    write_gray(tmp_path / "a.tif", gray)
    Image.fromarray(gray).save(tmp_path / "a.png")
    for name in ("a.tif", "a.png"):
        img, notes = load_image(tmp_path / name)
        assert notes == [] and img.dtype == np.uint8
        np.testing.assert_array_equal(img, gray)


def test_rgb_becomes_gray_by_luminance_with_a_note(gray, tmp_path):
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 255)], -1)).save(tmp_path / "a.png")
    for name in ("rgb.png", "a.png"):
        img, notes = load_image(tmp_path / name)
        assert notes == ["RGB converted to gray"]
        np.testing.assert_array_equal(img, gray)  # equal channels: the same gray


def test_16bit_is_rescaled_between_percentiles(tmp_path):
    ramp = np.arange(1000, 1000 + 64 * 100, 100, dtype=np.uint16).reshape(8, 8)
    tifffile.imwrite(tmp_path / "deep.tif", ramp)
    img, notes = load_image(tmp_path / "deep.tif")
    assert img.dtype == np.uint8 and "uint16 rescaled to 8-bit" in notes[0]
    assert img.min() == 0 and img.max() == 255
    assert (np.diff(img.ravel().astype(int)) >= 0).all()  # order kept


def test_16bit_rgb_is_rescaled_not_clipped(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint16)
    rgb[:4] = 60000
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    img, notes = load_image(tmp_path / "rgb16.tif")
    assert len(notes) == 2 and set(np.unique(img)) == {0, 255}


def test_jpeg_is_read(gray, tmp_path):
    Image.fromarray(gray).save(tmp_path / "a.jpg", quality=95)
    img, _ = load_image(tmp_path / "a.jpg")
    assert img.shape == gray.shape and np.abs(img.astype(int) - gray).mean() < 20


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "cannot be read"),
        (lambda p: p.write_bytes(b"II*\x00" + b"\x00" * 20), "corrupt or truncated"),
        (lambda p: p.write_text("<script>alert(1)</script>"), "cannot be read"),
        (lambda p: tifffile.imwrite(p, np.zeros((3, 8, 8, 2), np.uint8)), "2-D grayscale"),
        (lambda p: tifffile.imwrite(p, np.full((4, 4), np.nan, np.float32)), "NaN"),
    ],
)
def test_bad_files_raise_one_line_naming_the_file(write, message, tmp_path):
    path = tmp_path / "bad.tif"
    write(path)
    with pytest.raises(DataError, match=message) as e:
        load_image(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_tiff_is_refused(gray, tmp_path):
    write_gray(tmp_path / "a.tif", np.tile(gray, (8, 8)))
    data = (tmp_path / "a.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tif"):
        load_image(tmp_path / "cut.tif")


def test_label_tiff_round_trip(tmp_path):
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    write_labels(tmp_path / "l.tif", labels)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "l.tif"), labels)
