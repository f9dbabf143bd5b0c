import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livecellseg.errors import DataError
from livecellseg.livecell import index_images
from livecellseg.subset import build_subset
from tests.conftest import make_livecell_root

FILES = ("livecell_coco_train.json", "livecell_coco_val.json", "livecell_coco_test.json")


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return make_livecell_root(tmp_path_factory.mktemp("raw"), n_images=12, width=210, height=140)


def _copy(small_root, tmp_path) -> Path:
    import shutil

    dst = tmp_path / "raw"
    shutil.copytree(small_root, dst)
    return dst


def _run(root, out, n=100, lines=(), seed=0):
    return build_subset(root, FILES, n=n, cell_lines=lines, seed=seed, out=out)


def _edit(root, name, fn):
    path = root / "annotations" / name
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_subset_picks_stratified_and_keeps_only_its_annotations(small_root, tmp_path):
    report = _run(small_root, tmp_path / "out", n=8)
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert report["images_chosen"] == 8 and report["images_available"] == 12
    assert report["images_per_cell_line"] == {"A172": 2, "BV2": 2, "MCF7": 2, "SHSY5Y": 2}
    ids = {img["id"] for img in doc["images"]}
    assert all(a["image_id"] in ids for a in doc["annotations"])
    assert len(doc["annotations"]) == report["annotations_kept"] > 0
    assert report["annotations_skipped"] == 0
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == sorted(
        img["file_name"] for img in doc["images"]
    )
    # every annotation of the chosen images is kept
    total = sum(
        len(json.loads((small_root / "annotations" / f).read_text())["annotations"]) for f in FILES
    )
    assert report["annotations_read"] == total


def test_subset_cap_filter_and_seed(small_root, tmp_path):
    assert _run(small_root, tmp_path / "a", n=1000)["images_chosen"] == 12
    r = _run(small_root, tmp_path / "b", n=100, lines=("BV2",))
    assert r["images_per_cell_line"] == {"BV2": 3}
    _run(small_root, tmp_path / "c", n=5, seed=1)
    _run(small_root, tmp_path / "d", n=5, seed=1)
    assert (tmp_path / "c/annotations.json").read_text() == (
        tmp_path / "d/annotations.json"
    ).read_text()
    with pytest.raises(DataError, match="no image matches subset.cell_lines"):
        _run(small_root, tmp_path / "e", lines=("Huh7",))


def _first_image(root):
    return sorted(index_images(root).values())[0]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.unlink(), "image not found"),
        (lambda p: p.write_bytes(b"II*\x00garbage"), "corrupt"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "re-download or replace it"),
        (lambda p: tifffile.imwrite(p, np.zeros((140, 200), np.uint8)), "image is 200x140"),
        (lambda p: tifffile.imwrite(p, np.zeros((140, 210, 3), np.uint8)), "RGB image"),
        (lambda p: tifffile.imwrite(p, np.zeros((140, 210), np.uint16)), "expected 8-bit"),
    ],
)
def test_bad_images_stop_with_one_line(small_root, tmp_path, damage, message):
    root = _copy(small_root, tmp_path)
    bad = _first_image(root)
    damage(bad)
    with pytest.raises(DataError) as e:
        _run(root, tmp_path / "out")
    assert message in str(e.value) and bad.name in str(e.value) and "\n" not in str(e.value)


def test_bad_annotations_are_skipped_and_counted(small_root, tmp_path):
    root = _copy(small_root, tmp_path)

    def damage(doc):
        anns = doc["annotations"]
        first = next(iter(anns.values()))
        anns["900001"] = {**first, "id": 900001, "image_id": 424242}  # unknown image
        anns["900002"] = {**first, "id": 900002, "segmentation": [[1.0, 2.0, 3.0, 4.0]]}
        anns["900003"] = {**first, "id": 900003, "segmentation": []}
        anns["900004"] = {**first}  # same id as `first`
        anns["900005"] = {**first, "id": 900005, "segmentation": [[0, 0, 5, 5, 9, 9]]}

    _edit(root, FILES[0], damage)
    report = _run(root, tmp_path / "out")
    assert {k: v for k, v in report["skipped"].items() if v} == {
        "degenerate_polygon": 1,
        "duplicate_annotation_id": 1,
        "empty_segmentation": 1,
        "unknown_image": 1,
        "zero_area": 1,
    }
    assert report["annotations_read"] == report["annotations_kept"] + 5


def test_duplicate_image_id_across_files(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    first_val = json.loads((root / "annotations" / FILES[1]).read_text())["images"][0]
    _edit(
        root,
        FILES[0],
        lambda d: d["images"].append({**first_val, "file_name": "BV2_Phase_X9_1_00d00h00m_9.tif"}),
    )
    with pytest.raises(DataError, match=f"image id {first_val['id']}"):
        _run(root, tmp_path / "out")


def test_missing_annotation_file_and_bad_name(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    (root / "annotations" / FILES[2]).unlink()
    with pytest.raises(DataError, match="livecell_coco_test.json: annotation file not found"):
        _run(root, tmp_path / "out")
    root = _copy(small_root, tmp_path / "2")
    _edit(root, FILES[0], lambda d: d["images"][0].update(file_name="img001.tif"))
    with pytest.raises(DataError, match="img001.tif: name does not follow"):
        _run(root, tmp_path / "out")
