import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livecellseg.errors import DataError
from livecellseg.livecell import index_images
from livecellseg.subset import build_subset, keep_one
from tests.helpers import make_livecell_root

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
        first = anns[0]
        anns.append({**first, "id": 900001, "image_id": 424242})  # unknown image
        anns.append({**first, "id": 900002, "segmentation": [[1.0, 2.0, 3.0, 4.0]]})
        anns.append({**first, "id": 900003, "segmentation": []})
        anns.append({**first})  # same id as `first`
        anns.append({**first, "id": 900005, "segmentation": [[0, 0, 5, 5, 9, 9]]})

    _edit(root, FILES[0], damage)
    report = _run(root, tmp_path / "out")
    assert {k: v for k, v in report["skipped"].items() if v} == {
        "degenerate_polygon": 1,
        "duplicate_annotation_id": 1,
        "empty_segmentation": 1,
        "unknown_image": 1,
        "zero_area": 1,
    }
    dropped = report["duplicates"]["annotations_dropped"]
    assert report["annotations_read"] == report["annotations_kept"] + 5 + dropped


def test_same_image_id_for_two_pictures_across_files(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    first_val = json.loads((root / "annotations" / FILES[1]).read_text())["images"][0]
    _edit(
        root,
        FILES[0],
        lambda d: d["images"].append({**first_val, "file_name": "BV2_Phase_X9_1_00d00h00m_9.tif"}),
    )
    with pytest.raises(DataError, match=f"image id {first_val['id']}"):
        _run(root, tmp_path / "out")


def _entries(root) -> dict[str, list[tuple[str, int, int]]]:
    """file name -> [(split, image id, annotations)] over the three files."""
    out: dict[str, list] = {}
    for f in FILES:
        doc = json.loads((root / "annotations" / f).read_text())
        count = Counter(a["image_id"] for a in doc["annotations"])
        for img in doc["images"]:
            split = f.removeprefix("livecell_coco_").removesuffix(".json")
            out.setdefault(img["file_name"], []).append((split, img["id"], count[img["id"]]))
    return out


def test_pictures_listed_twice_are_one_image_in_one_split(small_root, tmp_path):
    """The sample lists pictures twice as LIVECell does: twice in train (the second copy one
    cell short), in train and val, twice in test; each is kept once, by the stated rule."""
    entries = _entries(small_root)
    twice = {name: e for name, e in entries.items() if len(e) > 1}
    assert sorted(tuple(s for s, *_ in e) for e in twice.values()) == [
        ("test", "test"),
        ("train", "train"),
        ("train", "val"),
    ]
    report = _run(small_root, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    names = [img["file_name"] for img in doc["images"]]
    assert len(names) == len(set(names)) == len(entries) == report["images_available"] == 12
    assert report["image_entries"] == 15
    kept = {img["file_name"]: img for img in doc["images"]}
    count = Counter(a["image_id"] for a in doc["annotations"])
    for name, copies in twice.items():
        splits = [s for s, *_ in copies]
        img = kept[name]
        if splits == ["train", "val"]:  # the held-out copy
            assert (img["source_split"], img["id"]) == ("val", copies[1][1])
        else:  # same split: the copy with more annotations
            best = max(copies, key=lambda c: c[2])
            assert img["id"] == best[1] and count[img["id"]] == best[2]
    d = report["duplicates"]
    assert d["file_names_listed_twice"] == 3
    assert (d["within_one_file"], d["across_files"]) == (2, 1)
    assert d["entries_dropped"] == 3
    assert (d["kept_held_out_split"], d["kept_more_annotations"]) == (1, 2)
    dropped = sum(min(c[2] for c in copies) for copies in twice.values())
    assert d["annotations_dropped"] == dropped
    assert report["annotations_read"] == report["annotations_kept"] + dropped
    # the extra LIVECell fields travel with the image
    assert {"original_filename", "url"} <= set(doc["images"][0])


def test_keep_one_rule():
    train, val, test = ({"source_split": s} for s in ("train", "val", "test"))
    assert keep_one([train, val], [9, 1]) == (1, "held_out_split")
    assert keep_one([val, test, train], [5, 5, 5]) == (1, "held_out_split")
    assert keep_one([train, dict(train)], [3, 4]) == (1, "more_annotations")
    assert keep_one([train, dict(train)], [4, 4]) == (0, "first_listed")
    assert keep_one([{"source_split": None}, {"source_split": None}], [0, 2]) == (
        1,
        "more_annotations",
    )


def test_same_id_in_two_files_for_one_picture_and_copies_in_unchosen_images(small_root, tmp_path):
    """A picture in train and val under one id (allowed: the same file) is one image; with
    a subset of one image per line, no dropped copy of an unchosen picture is counted."""
    root = _copy(small_root, tmp_path)
    val = json.loads((root / "annotations" / FILES[1]).read_text())
    first_val = val["images"][0]
    anns = [a for a in val["annotations"] if a["image_id"] == first_val["id"]]

    def add(d):
        d["images"].append(first_val)
        d["annotations"] += [{**a, "id": a["id"] + 10**6} for a in anns]

    _edit(root, FILES[0], add)
    report = _run(root, tmp_path / "all")
    doc = json.loads((tmp_path / "all" / "annotations.json").read_text())
    img = next(i for i in doc["images"] if i["file_name"] == first_val["file_name"])
    assert img["source_split"] == "val"
    assert sorted(a["id"] for a in doc["annotations"] if a["image_id"] == img["id"]) == sorted(
        a["id"] for a in anns
    )
    assert report["duplicates"]["file_names_listed_twice"] == 4
    few = _run(root, tmp_path / "few", n=1)
    assert few["images_chosen"] == 1
    assert few["duplicates"]["entries_dropped"] <= 1


def test_missing_annotation_file_and_bad_name(small_root, tmp_path):
    root = _copy(small_root, tmp_path)
    (root / "annotations" / FILES[2]).unlink()
    with pytest.raises(DataError, match="livecell_coco_test.json: annotation file not found"):
        _run(root, tmp_path / "out")
    root = _copy(small_root, tmp_path / "2")
    _edit(root, FILES[0], lambda d: d["images"][0].update(file_name="img001.tif"))
    with pytest.raises(DataError, match="img001.tif: name does not follow"):
        _run(root, tmp_path / "out")
