"""The bad-input matrix, end to end: each bad input goes through a stage as `dvc repro` runs
it (`python -m stages.X`) or through the `livecellseg predict` command, and ends with one line
naming the file and the fix, or is skipped and counted; nothing half-written is left. The
"Bad input" table of docs/reliability.md has a row for each case here (checked by the last test)."""

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from livecellseg.checkpoint import FORMAT as CHECKPOINT_FORMAT
from livecellseg.images import write_gray
from livecellseg.livecell import index_images
from tests.helpers import ROOT, make_livecell_root, save_tiny_checkpoint, small_image

W, H = 140, 100
TRAIN_JSON = "annotations/livecell_coco_train.json"
LIVECELLSEG = str(Path(sys.executable).parent / "livecellseg")


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory):
    return make_livecell_root(tmp_path_factory.mktemp("raw"), n_images=6, width=W, height=H)


def _run(*args):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _stage(name, *args):
    return _run(sys.executable, "-m", f"stages.{name}", *map(str, args))


def _error_line(r) -> str:
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: "), lines[-3:]
    return lines[-1]


# ---- subset: damaged images and annotation files stop the stage ----------------------------


def _image(root: Path) -> Path:
    return sorted(index_images(root).values())[0]  # every image is chosen (6 < subset.n_images)


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


def _write(path: Path, data: bytes | str) -> Path:
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _tiff(path: Path, array: np.ndarray) -> Path:
    tifffile.imwrite(path, array)
    return path


def _truncate(path: Path, keep: float = 0.5) -> Path:
    return _write(path, path.read_bytes()[: int(path.stat().st_size * keep)])


def _edit_json(root: Path, fn) -> Path:
    path = root / TRAIN_JSON
    doc = json.loads(path.read_text())
    fn(doc)
    return _write(path, json.dumps(doc))


# (documented row, damage(root) -> the file the message must name, what the message says)
SUBSET_STOPS = [
    ("missing TIFF", lambda r: _unlink(_image(r)), "image not found"),
    ("corrupt TIFF", lambda r: _write(_image(r), b"II*\x00garbage"), "re-download or replace"),
    ("truncated TIFF", lambda r: _truncate(_image(r), 0.3), "re-download or replace it"),
    ("empty (0-byte) image file", lambda r: _write(_image(r), b""), "cannot be read as TIFF"),
    (
        "16-bit image",
        lambda r: _tiff(_image(r), np.zeros((H, W), np.uint16)),
        "expected 8-bit (uint8) pixels, got uint16; convert to 8-bit",
    ),
    (
        "RGB image",
        lambda r: _tiff(_image(r), np.zeros((H, W, 3), np.uint8)),
        "LIVECell images are grayscale, convert it to 8-bit gray",
    ),
    (
        "image size differs from its JSON entry",
        lambda r: _tiff(_image(r), np.zeros((H, W + 8), np.uint8)),
        f"image is {W + 8}x{H} but its JSON entry says {W}x{H}; fix the JSON's width/height",
    ),
    (
        "malformed COCO JSON",
        lambda r: _write(r / TRAIN_JSON, '{"images": [,]}'),
        "malformed or truncated JSON",
    ),
    ("truncated COCO JSON", lambda r: _truncate(r / TRAIN_JSON), "malformed or truncated JSON"),
    (
        "COCO JSON that is not an object",
        lambda r: _write(r / TRAIN_JSON, "[]"),
        "top level is not a JSON object",
    ),
    (
        "image entry without width/height",
        lambda r: _edit_json(r, lambda d: d["images"][0].pop("width")),
        "lacks id/file_name/width/height",
    ),
    (
        "duplicate image id",
        lambda r: _edit_json(r, lambda d: d["images"].append(dict(d["images"][0]))),
        "duplicate image id",
    ),
    ("missing annotation file", lambda r: _unlink(r / TRAIN_JSON), "annotation file not found"),
    (
        "file name not LIVECell's",
        lambda r: (
            _edit_json(r, lambda d: d["images"][0].update(file_name="img001.tif"))
            and Path("img001.tif")
        ),
        "name does not follow",
    ),
]


@pytest.mark.parametrize(
    ("case", "damage", "message"), SUBSET_STOPS, ids=[c[0] for c in SUBSET_STOPS]
)
def test_subset_stops_with_one_line_and_writes_nothing(case, damage, message, clean_root, tmp_path):
    root = shutil.copytree(clean_root, tmp_path / "raw")
    named = damage(root)
    r = _stage(
        "subset", "--raw", root, "--out", tmp_path / "subset", "--report", tmp_path / "s.json"
    )
    line = _error_line(r)
    assert message in line and named.name in line, line
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no output, no temporary


# ---- subset: bad annotations are skipped and counted, odd ones kept as rasterised ---------

OUTSIDE = [W + 10.0, 10.0, W + 30.0, 10.0, W + 30.0, 30.0, W + 10.0, 30.0]
ACROSS_BORDER = [W - 10.0, 10.0, W + 10.0, 10.0, W + 10.0, 30.0, W - 10.0, 30.0]  # half inside
BOWTIE = [10.0, 10.0, 30.0, 30.0, 30.0, 10.0, 10.0, 30.0]  # edges cross at (20, 20)

# (documented row, annotation change, the defect it is counted under)
SKIPPED_ANNOTATIONS = [
    ("annotation entirely outside its image", {"segmentation": [OUTSIDE]}, "zero_area"),
    ("zero-area polygon", {"segmentation": [[0, 0, 5, 5, 9, 9]]}, "zero_area"),
    ("polygon with < 3 points", {"segmentation": [[1.0, 2.0, 3.0, 4.0]]}, "degenerate_polygon"),
    (
        "polygon with non-numeric coordinates",
        {"segmentation": [[1, 2, "x", 4, 5, 6]]},
        "degenerate_polygon",
    ),
    ("empty segmentation", {"segmentation": []}, "empty_segmentation"),
    ("malformed RLE", {"segmentation": {"counts": 5}}, "bad_rle"),
    ("annotation of an unknown image", {"image_id": 424242}, "unknown_image"),
    ("unknown category", {"category_id": 99}, "unknown_category"),
    ("annotation without segmentation", {"segmentation": None}, "malformed_annotation"),
    ("duplicate annotation id", {"id": "same as the first"}, "duplicate_annotation_id"),
]
KEPT_ANNOTATIONS = [
    ("annotation partly outside its image", ACROSS_BORDER),
    ("self-intersecting polygon", BOWTIE),
]


def test_subset_skips_and_counts_bad_annotations_and_keeps_odd_ones(clean_root, tmp_path):
    root = shutil.copytree(clean_root, tmp_path / "raw")
    doc = json.loads((root / TRAIN_JSON).read_text())
    first = doc["annotations"][0]
    new_id = 900_000
    for _, change, _ in SKIPPED_ANNOTATIONS:
        new_id += 1
        ann = {**first, "id": new_id} | change
        if change.get("id"):
            ann["id"] = first["id"]
        if change.get("segmentation", 0) is None:
            del ann["segmentation"]
        doc["annotations"].append(ann)
    kept_ids = {}
    for case, polygon in KEPT_ANNOTATIONS:
        new_id += 1
        doc["annotations"].append({**first, "id": new_id, "segmentation": [polygon]})
        kept_ids[case] = new_id
    (root / TRAIN_JSON).write_text(json.dumps(doc))

    report_path = tmp_path / "subset.json"
    r = _stage("subset", "--raw", root, "--out", tmp_path / "subset", "--report", report_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(report_path.read_text())
    expected: dict[str, int] = {}
    for _, _, defect in SKIPPED_ANNOTATIONS:
        expected[defect] = expected.get(defect, 0) + 1
    assert {k: v for k, v in report["skipped"].items() if v} == expected
    dropped = report["duplicates"]["annotations_dropped"]  # second entries of a picture
    assert (
        report["annotations_read"]
        == report["annotations_kept"] + len(SKIPPED_ANNOTATIONS) + dropped
    )
    assert "annotation" in r.stderr and "skipped" in r.stderr  # logged as well as counted

    subset = json.loads((tmp_path / "subset/annotations.json").read_text())
    by_id = {a["id"]: a for a in subset["annotations"]}
    across = by_id[kept_ids["annotation partly outside its image"]]
    assert across["area"] == 10 * 20 and across["bbox"][0] + across["bbox"][2] <= W  # clipped
    bowtie = by_id[kept_ids["self-intersecting polygon"]]
    rle = mask_utils.frPyObjects([BOWTIE], H, W)
    assert bowtie["area"] == int(mask_utils.area(mask_utils.merge(rle))) > 0
    # the sample's image without cells is kept, with no annotations
    with_cells = {a["image_id"] for a in subset["annotations"]}
    assert len(subset["images"]) == 6 and len(with_cells) == 5


# ---- params.yaml ----------------------------------------------------------------------------

PARAMS_STOPS = [
    (
        "params.yaml value of the wrong type",
        lambda p: p["subset"].update(n_images="ten"),
        "error: params.yaml: 'subset.n_images' must be an integer, got 'ten'",
    ),
    (
        "params.yaml value out of range",
        lambda p: p["split"].update(val=0.5),
        "fractions summing to 1",
    ),
    (
        "params.yaml unknown key",
        lambda p: p["tile"].update(gird=7),
        "error: params.yaml: unknown key 'tile.gird'",
    ),
    (
        "params.yaml missing key",
        lambda p: p["tile"].pop("window"),
        "error: params.yaml: missing key 'tile.window'",
    ),
    ("params.yaml not valid YAML", None, "not valid YAML"),
]


@pytest.mark.parametrize(
    ("case", "change", "message"), PARAMS_STOPS, ids=[c[0] for c in PARAMS_STOPS]
)
def test_bad_params_stop_every_stage_with_one_line(case, change, message, raw_params, tmp_path):
    path = tmp_path / "params.yaml"
    if change is None:
        path.write_text("tile: [unclosed\n")
    else:
        params = json.loads(json.dumps(raw_params))
        change(params)
        path.write_text(yaml.safe_dump(params))
    r = _stage("split", "--params", path, "--subset", tmp_path / "a.json", "--out", tmp_path / "o")
    assert message in _error_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


# ---- checkpoints: stitch_predict (the stage) and livecellseg predict (the command) ---------


def _checkpoint(path: Path, raw: dict, model="custom", **changes) -> Path:
    save_tiny_checkpoint(path, raw, model)
    if changes:
        ckpt = torch.load(path, weights_only=True) | changes
        torch.save(ckpt, path)
    return path


def _other_weights(path: Path, raw: dict) -> Path:  # says transfer, holds the custom weights
    return _checkpoint(path, raw, "custom", name="transfer")


# (documented row, make(path, raw params) -> checkpoint path, message)
CHECKPOINT_STOPS = [
    ("checkpoint missing", lambda p, raw: p, "checkpoint not found"),
    (
        "checkpoint corrupt",
        lambda p, raw: _write(p, b"PK\x03\x04junk"),
        "not a readable checkpoint",
    ),
    (
        "checkpoint truncated",
        lambda p, raw: _truncate(_checkpoint(p, raw)),
        "not a readable checkpoint (RuntimeError); delete it and retrain",
    ),
    (
        "not a livecellseg checkpoint (a bare state_dict)",
        lambda p, raw: torch.save({"backbone.w": torch.zeros(1)}, p) or p,
        "not a livecellseg checkpoint",
    ),
    (
        "checkpoint from a newer livecellseg",
        lambda p, raw: _checkpoint(p, raw, format=CHECKPOINT_FORMAT + 1),
        f"checkpoint format {CHECKPOINT_FORMAT + 1} is newer than this livecellseg",
    ),
    ("checkpoint whose weights are another model's", _other_weights, "weights do not fit"),
    (
        "checkpoint without recorded settings (an older livecellseg)",
        lambda p, raw: _checkpoint(p, raw, "transfer", format=1, params={"model": "transfer"}),
        "does not record the settings it was trained with; retrain it",
    ),
]
STAGE_ONLY_CHECKPOINTS = [
    (
        "checkpoint of the other model",
        lambda p, raw: _checkpoint(p, raw, "custom"),
        "holds the custom model, expected transfer; put the train_transfer stage's checkpoint",
    ),
    (  # the tiny checkpoint records a smaller input scale than params.yaml
        "checkpoint trained with another geometry than params.yaml (anchors, input scale, "
        "normalisation, tile grid or window)",
        lambda p, raw: _checkpoint(p, raw, "transfer"),
        "trained with other settings than params.yaml (model.min_size, model.max_size); "
        "retrain it: dvc repro train_transfer",
    ),
]


@pytest.fixture(scope="module")
def test_split(tmp_path_factory):
    d = tmp_path_factory.mktemp("split")
    image, _ = small_image()
    write_gray(d / "images" / "BV2_Phase_A1_1_00d00h00m_1.tif", image)
    h, w = image.shape
    images = [{"id": 1, "file_name": "BV2_Phase_A1_1_00d00h00m_1.tif", "width": w, "height": h}]
    (d / "test.json").write_text(json.dumps({"images": images, "annotations": []}))
    return d


@pytest.mark.parametrize(
    ("case", "make", "message"),
    [
        # a process each; the checks themselves run in-process in the predict command's cases
        # below, tests/test_predict.py (the other model) and tests/test_settings.py (geometry)
        pytest.param(*c, id=c[0], marks=pytest.mark.slow)
        for c in [*CHECKPOINT_STOPS, *STAGE_ONLY_CHECKPOINTS]
    ],
)
def test_stitch_predict_stops_on_a_bad_checkpoint(
    case, make, message, test_split, raw_params, tmp_path
):
    ckpt = make(tmp_path / "transfer.pt", raw_params)
    out = tmp_path / "predictions"
    r = _stage(
        "stitch_predict",
        "--model",
        "transfer",
        "--checkpoint",
        ckpt,
        "--split",
        test_split / "test.json",
        "--images",
        test_split / "images",
        "--out",
        out / "transfer.json",
        "--counts",
        out / "transfer_images.csv",
    )
    line = _error_line(r)
    assert message in line and str(ckpt) in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "make", "message"), CHECKPOINT_STOPS, ids=[c[0] for c in CHECKPOINT_STOPS]
)
def test_predict_command_stops_on_a_bad_checkpoint(
    case, make, message, test_split, raw_params, tmp_path, capsys
):
    from livecellseg.cli import main  # the console script's entry, in this process (faster)

    ckpt = make(tmp_path / "model.pt", raw_params)
    image = next((test_split / "images").iterdir())
    assert main(["predict", str(image), "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 1
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert message in line and str(ckpt) in line, line
    assert not (tmp_path / "o").exists()


# ---- livecellseg predict: any image a user has ----------------------------------------------


def _huge_tiff(path: Path) -> None:  # 9000 x 9000 zeros: a tiny file, 81 megapixels decoded
    tifffile.imwrite(path, np.zeros((9000, 9000), np.uint8), compression="zlib")


# (documented row, file name, make(path), summary.csv status starts with)
PREDICT_IMAGES = [
    ("missing image file", "missing.tif", None, "skipped: "),
    ("corrupt image file", "corrupt.tif", lambda p: p.write_bytes(b"II*\x00garbage"), "skipped: "),
    ("truncated image file", "truncated.png", "truncate", "skipped: "),
    ("empty (0-byte) file", "empty.png", lambda p: p.write_bytes(b""), "skipped: "),
    ("image over 64 megapixels", "huge.tif", _huge_tiff, "skipped: "),
    (
        "16-bit image (predict)",
        "deep.tif",
        lambda p: tifffile.imwrite(p, (small_image()[0].astype(np.uint16) * 200)),
        "ok (uint16 rescaled to 8-bit",
    ),
    (
        "RGB image (predict)",
        "colour.png",
        lambda p: Image.fromarray(np.stack([small_image()[0]] * 3, -1)).save(p),
        "ok (RGB converted to gray)",
    ),
    ("blank image", "blank.tif", lambda p: write_gray(p, np.zeros((130, 176), np.uint8)), "ok"),
    (
        "image smaller than the 7x7 tile grid",
        "tiny.tif",
        lambda p: write_gray(p, np.full((5, 40), 128, np.uint8)),
        "ok",
    ),
]


def test_predict_command_segments_what_it_can_and_counts_what_it_skips(raw_params, tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "custom.pt", raw_params)
    d = tmp_path / "in"
    d.mkdir()
    for _, name, make, _ in PREDICT_IMAGES:
        if make == "truncate":
            Image.fromarray(small_image()[0]).save(d / name)
            _truncate(d / name, 0.4)
        elif make is not None:
            make(d / name)
    out = tmp_path / "out"
    r = _run(
        LIVECELLSEG,
        "predict",
        str(d),
        str(d / "missing.tif"),
        "--model",
        str(ckpt),
        "--out",
        str(out),
        "--mode",
        "stitched",
        "--set",
        "detections_per_img=4",  # an untrained model: few detections keep the test fast
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    rows = {Path(row["file"]).name: row for row in csv.DictReader((out / "summary.csv").open())}
    assert len(rows) == len(PREDICT_IMAGES)
    for case, name, _, status in PREDICT_IMAGES:
        assert rows[name]["status"].startswith(status), (case, rows[name])
        written = (out / f"{Path(name).stem}_labels.tif").exists()
        assert written == status.startswith("ok"), case
    skipped = [n for _, n, _, s in PREDICT_IMAGES if s.startswith("skipped")]
    assert (
        f"{len(PREDICT_IMAGES) - len(skipped)} of {len(PREDICT_IMAGES)} images segmented"
        in r.stdout
    )
    assert "too large, the limit is 64; crop or split it" in rows["huge.tif"]["status"]
    assert "holds no image data (corrupt or truncated)" in rows["corrupt.tif"]["status"]
    assert "cannot be read as an image" in rows["empty.png"]["status"]
    assert tifffile.imread(out / "tiny_labels.tif").shape == (5, 40)
    assert "cannot be cut into 7x7 mini-tiles; predicting it whole" in r.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# ---- livecellseg finetune: corrected label images ------------------------------------------


def _pair(d: Path, name: str = "img", labels=None, image_name: str | None = None) -> None:
    """An image and its label image (the image's own cells unless `labels` is given)."""
    from tests.test_finetune import labels_of

    image, polys = small_image()
    write_gray(d / f"{image_name or name}.tif", image)
    lab = labels_of(polys, image.shape) if labels is None else labels
    tifffile.imwrite(d / f"{name}_labels.tif", lab)


# (documented row, make(dir, raw params) -> checkpoint, message); every pair in dir is passed
FINETUNE_STOPS = [
    (
        "label image of another size",
        lambda d, raw: _pair(d, labels=np.ones((100, 176), np.uint16)),
        "labels are 176x100 px, its image is 176x130",
    ),
    (
        "label image that is not integer cell ids",
        lambda d, raw: _pair(d, labels=np.full((130, 176), 0.5, np.float32)),
        "labels must be integer cell ids",
    ),
    (
        "empty label image",
        lambda d, raw: _pair(d, labels=np.zeros((130, 176), np.uint16)),
        "no cell is labelled (all 0)",
    ),
    (
        "label image matching no image",
        lambda d, raw: _pair(d) or _pair(d, "other", image_name="img"),
        "other_labels.tif: matches no image",
    ),
    (
        "checkpoint of another layout (finetune)",
        lambda d, raw: _pair(d) or _other_weights(d / "model.pt", raw),
        "weights do not fit",
    ),
]


@pytest.mark.parametrize(
    ("case", "make", "message"), FINETUNE_STOPS, ids=[c[0] for c in FINETUNE_STOPS]
)
def test_finetune_command_stops_with_one_line_and_writes_nothing(
    case, make, message, raw_params, tmp_path, capsys
):
    from livecellseg.cli import main

    d = tmp_path / "in"
    d.mkdir()
    ckpt = make(d, raw_params) or save_tiny_checkpoint(tmp_path / "model.pt", raw_params)
    images = [str(p) for p in d.glob("*.tif") if "_labels" not in p.name]
    args = ["finetune", *images, "--labels", *map(str, d.glob("*_labels.tif"))]
    out = tmp_path / "out" / "new.pt"
    args += ["--model", str(ckpt), "--out", str(out), "--params", str(ROOT / "params.yaml")]
    assert main(args) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ln.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "out").exists()


# ---- the documentation's table --------------------------------------------------------------


def test_the_documented_table_lists_every_case():
    text = (ROOT / "docs/reliability.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    rows = {m.strip() for m in re.findall(r"^\| ([^|]+?) \|", section, re.M)} - {"input"}
    stops = [*SUBSET_STOPS, *PARAMS_STOPS, *CHECKPOINT_STOPS, *STAGE_ONLY_CHECKPOINTS]
    cases = {c[0] for c in stops}
    cases |= {c[0] for c in [*SKIPPED_ANNOTATIONS, *KEPT_ANNOTATIONS, *PREDICT_IMAGES]}
    cases |= {c[0] for c in FINETUNE_STOPS}
    assert cases <= rows, sorted(cases - rows)
    others = {"too few images for the split fractions", "a cell no tile keeps"}
    assert rows - cases == others  # tested in tests/test_split.py and tests/test_tiling.py
