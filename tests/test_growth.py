"""Growth curves: LIVECell names parsed, doubling times recovered from constructed series."""

import numpy as np
import pytest

from livecellseg.errors import LivecellsegError
from livecellseg.growth import TimePoint, doubling_time, parse_name


def test_a_livecell_name():
    assert parse_name("SHSY5Y_Phase_B10_1_01d12h00m_1.tif") == TimePoint(
        "SHSY5Y", "B10", "1_1", 36.0
    )
    assert parse_name("some/dir/A172_Phase_C7_2_00d04h30m_4.tif").hours == 4.5


@pytest.mark.parametrize(
    "name",
    ["SHSY5Y_B10_1_01d12h00m_1.tif", "A172_Phase_C7_1_1d_1.tif", "A172_Phase_C7_1_00d04h00m_1.png"],
)
def test_a_name_it_cannot_parse_is_a_one_line_error_naming_the_file(name):
    with pytest.raises(LivecellsegError, match=name.replace(".", r"\.") + ": name does not follow"):
        parse_name(name)


def test_another_naming_scheme_by_pattern():
    pattern = r"(?P<line>\w+?)-(?P<well>[A-H]\d+)-s(?P<field>\d+)-t(?P<hours>[\d.]+)h\.tif"
    assert parse_name("HeLa-D4-s2-t7.5h.tif", pattern) == TimePoint("HeLa", "D4", "2", 7.5)
    with pytest.raises(LivecellsegError, match="names no group hours"):
        parse_name("x.tif", r"(?P<well>\w+)\.tif")


def series(doubling: float, times, positions=4, noise=0.05, n0=40, seed=0, plateau=None):
    rng = np.random.default_rng(seed)
    t = np.repeat(np.asarray(times, float), positions)
    n = n0 * 2 ** (t / doubling)
    if plateau is not None:
        n = np.minimum(n, plateau)
    return t, np.round(n * np.exp(rng.normal(0, noise, len(t))))


@pytest.mark.parametrize("doubling", [18.0, 30.0])
def test_a_known_doubling_time_is_recovered(doubling):
    t, n = series(doubling, range(0, 73, 12))
    fit = doubling_time(t, n)
    assert fit.estimable and fit.hours == pytest.approx(doubling, rel=0.05)
    assert fit.ci95[0] < doubling < fit.ci95[1] and fit.r2 > 0.95
    assert (fit.start_h, fit.end_h, fit.points) == (0, 72, len(t))


def test_the_fit_stops_where_the_culture_is_confluent():
    t, n = series(20.0, range(0, 121, 12), plateau=40 * 2 ** (60 / 20))
    fit = doubling_time(t, n)
    assert fit.hours == pytest.approx(20.0, rel=0.1) and fit.end_h <= 72


@pytest.mark.parametrize(
    ("times", "counts", "why"),
    [
        ([0, 0, 12, 12, 24, 24, 36, 36], [50, 46, 49, 51, 50, 53, 47, 55], "no growth after 0 h"),
        ([0, 0, 24, 24, 48, 48], [20, 60, 25, 70, 30, 80], "no significant growth"),
        ([0, 12, 24, 36], [80, 60, 40, 20], "no growth after 0 h"),
        ([0, 12], [10, 20], "2 time points"),
        ([0, 12, 24], [0, 0, 5], "1 time points"),
    ],
)
def test_a_flat_noisy_shrinking_or_short_series_is_not_estimable(times, counts, why):
    fit = doubling_time(np.array(times), np.array(counts))
    assert not fit.estimable and fit.hours is None and fit.ci95 is None
    assert fit.reason.startswith("not estimable") and why in fit.reason


def test_confluence_and_counts_of_constructed_masks_give_the_doubling_time():
    """Measures from masks (overlapping cells counted once in the confluence), then the fit."""
    from pycocotools import mask as mask_utils

    from livecellseg.growth import fit_wells, image_measures, well_rows

    h, w = 120, 160
    rng = np.random.default_rng(1)
    rows = []
    for hours in (0, 12, 24, 36):
        for position in ("1_1", "1_2", "2_1"):
            n = round(6 * 2 ** (hours / 15) * rng.uniform(0.95, 1.05))
            masks = np.zeros((h, w, n), np.uint8, order="F")
            for k in range(n):
                y, x = rng.integers(5, h - 5), rng.integers(5, w - 5)
                masks[y - 3 : y + 3, x - 3 : x + 3, k] = 1
            rles = mask_utils.encode(masks)
            m = image_measures(list(rles), h, w)
            union = masks.any(2).sum()
            assert m["cells"] == n and m["confluence_pct"] == pytest.approx(
                100 * union / (h * w), abs=1e-3
            )
            rows.append({"line": "A172", "well": "B3", "position": position, "hours": hours} | m)
    (fit,) = fit_wells(rows).values()
    assert fit.hours == pytest.approx(15, rel=0.15)
    wells = well_rows(rows)
    assert [r["positions"] for r in wells] == [3] * 4 and wells[0]["cells_sd"] >= 0
    assert image_measures([], h, w) == {"cells": 0, "confluence_pct": 0.0, "mean_cell_area_px": ""}


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory):
    from livecellseg.images import write_gray
    from tests.helpers import small_image

    d = tmp_path_factory.mktemp("timelapse")
    image, _ = small_image(width=96, height=72)  # small: the command runs 12 images
    for well in ("B3", "C4"):
        for field in (1, 2):
            for hours in (0, 12, 24):
                write_gray(d / f"A172_Phase_{well}_{field}_00d{hours:02d}h00m_1.tif", image)
    return d


def test_the_growth_command_writes_tables_plot_and_fits(series_dir, tmp_path, raw_params, capsys):
    import csv
    import json

    from livecellseg.cli import main
    from tests.helpers import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "custom.pt", raw_params)
    out = tmp_path / "out"
    rc = main(
        ["growth", str(series_dir), "--model", str(ckpt), "--out", str(out), "--mode", "whole"]
    )
    assert rc == 0
    rows = list(csv.DictReader((out / "growth.csv").open()))
    assert len(rows) == 12 and {r["well"] for r in rows} == {"B3", "C4"}
    assert {r["position"] for r in rows} == {"1_1", "2_1"} and rows[0]["hours"] == "0.0"
    wells = list(csv.DictReader((out / "wells.csv").open()))
    assert len(wells) == 6 and all(w["positions"] == "2" for w in wells)
    fits = json.loads((out / "doubling.json").read_text())
    assert set(fits) == {"A172 B3", "A172 C4"}
    # the same image at every time point: no growth, and the command says so
    assert all(f["hours"] is None and "not estimable" in f["reason"] for f in fits.values())
    assert (out / "growth.png").read_bytes()[:4] == b"\x89PNG"
    assert "A172 B3: not estimable" in capsys.readouterr().out


def test_the_growth_command_stops_on_a_name_it_cannot_parse(series_dir, tmp_path, capsys):
    from livecellseg.cli import main

    bad = tmp_path / "well_B3_day1.tif"
    bad.write_bytes((next(series_dir.iterdir())).read_bytes())
    rc = main(
        ["growth", str(series_dir), str(bad), "--model", "none.pt", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "well_B3_day1.tif: name does not follow" in err
    assert not (tmp_path / "o").exists()  # stopped before any work


def test_the_app_growth_tab_from_uploads_or_a_local_folder(series_dir, tmp_path, raw_params):
    from livecellseg.app import Segmenter, growth
    from livecellseg.errors import LivecellsegError
    from tests.helpers import save_tiny_checkpoint

    checkpoints = {"custom": save_tiny_checkpoint(tmp_path / "custom.pt", raw_params)}
    seg = Segmenter("cpu")
    files = sorted(str(p) for p in series_dir.iterdir())
    plot, rows, downloads, skipped = growth(
        seg, checkpoints, files, "", "custom", "whole", tmp_path, allow_folders=False
    )
    assert [r[0] for r in rows] == ["A172 B3", "A172 C4"] and skipped == []
    assert all(r[1] is None and r[5].startswith("not estimable") for r in rows)  # same image
    assert [p.name for p in downloads] == ["growth.csv", "wells.csv", "doubling.json", "growth.png"]
    assert plot == downloads[3] and plot.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(LivecellsegError, match="only when the app serves this computer alone"):
        growth(
            seg,
            checkpoints,
            None,
            str(series_dir),
            "custom",
            "whole",
            tmp_path,
            allow_folders=False,
        )
    _, same, _, _ = growth(
        seg, checkpoints, None, str(series_dir), "custom", "whole", tmp_path, allow_folders=True
    )
    assert same == rows
    with pytest.raises(LivecellsegError, match="no images"):
        growth(seg, checkpoints, [], "", "custom", "whole", tmp_path, allow_folders=True)


@pytest.fixture(scope="module")
def sample_series(tmp_path_factory):
    """The sample's time-lapse at a quarter of LIVECell's area: every cell line, one well,
    four time points, written as a LIVECell root; its COCO entries in one document."""
    import json

    from livecellseg.sample import LOOKS, generate, write_livecell_root

    root = tmp_path_factory.mktemp("series")
    lines = tuple(LOOKS)
    samples = generate(
        n_images=4 * len(lines),
        empty_images=0,
        cell_lines=lines,
        width=352,
        height=260,
        seed=5,
        hours=(0, 24, 48, 72),
        workers=2,
    )
    write_livecell_root(root, samples, splits=("test",), duplicates=())
    doc = json.loads((root / "annotations" / "livecell_coco_test.json").read_text())
    return root, doc


def test_the_samples_known_doubling_time_is_recovered_from_its_ground_truth(sample_series):
    from livecellseg.coco import to_rle
    from livecellseg.growth import coco_rows, fit_wells
    from livecellseg.sample import LOOKS

    _, doc = sample_series
    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    segs: dict[int, list] = {}
    for a in doc["annotations"]:
        segs.setdefault(a["image_id"], []).append(to_rle(a["segmentation"], *sizes[a["image_id"]]))
    rows, skipped = coco_rows(doc["images"], segs)
    assert skipped == [] and len(rows) == 32
    fits = fit_wells(rows)
    assert len(fits) == 8
    for well, fit in fits.items():
        known = LOOKS[well.split()[0]].doubling_h
        assert fit.hours == pytest.approx(known, rel=0.15), (well, fit)
        assert fit.ci95[0] < known < fit.ci95[1]


def test_the_growth_stage_compares_each_model_with_the_truth_per_well(sample_series, tmp_path):
    """The stage on the ground truth and on a 'model' that misses 1 cell in 10 more at each
    time point (none at 0 h, 3 in 10 at 72 h): the truth's fits, the model's errors (slower
    growth: a longer doubling time) and one plot file per well with a column per source."""
    import csv
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT

    root, doc = sample_series
    split = tmp_path / "test.json"
    split.write_text(json.dumps(doc))
    frame = {im["id"]: int(im["file_name"].split("_")[4][:2]) for im in doc["images"]}  # day
    from livecellseg.coco import to_rle

    sizes = {im["id"]: (im["height"], im["width"]) for im in doc["images"]}
    results, seen = [], {}
    for a in doc["annotations"]:
        k = seen[a["image_id"]] = seen.get(a["image_id"], 0) + 1
        if k % 10 < frame[a["image_id"]]:
            continue
        rle = to_rle(a["segmentation"], *sizes[a["image_id"]])
        rle["counts"] = (
            rle["counts"].decode() if isinstance(rle["counts"], bytes) else rle["counts"]
        )
        results.append(
            {"image_id": a["image_id"], "category_id": 1, "segmentation": rle, "score": 0.9}
        )
    preds = tmp_path / "missing.json"
    preds.write_text(json.dumps(results))
    r = subprocess.run(
        [sys.executable, "-m", "stages.growth", "--split", split, "--predictions", preds,
         "--metrics", tmp_path / "growth.json", "--plots", tmp_path / "plots",
         "--figure", tmp_path / "growth.png"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "growth.json").read_text())
    assert m["images"] == 32 and m["skipped"] == 0 and set(m) >= {"truth", "missing"}
    assert len(m["truth"]["wells"]) == 8 and m["missing"]["wells_compared"] == 8
    for well, fit in m["missing"]["wells"].items():
        truth = m["truth"]["wells"][well]["doubling_h"]
        assert fit["doubling_h"] > truth and fit["error_pct"] > 0
    assert m["missing"]["median_abs_error_pct"] > 15
    files = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert len(files) == 8 and files[0] == "A172_B2.csv"
    rows = list(csv.DictReader((tmp_path / "plots" / "A172_B2.csv").open()))
    assert [r["hours"] for r in rows] == ["0.0", "24.0", "48.0", "72.0"]
    assert float(rows[3]["missing"]) == pytest.approx(0.7 * float(rows[3]["truth"]), abs=1)
    assert rows[0]["missing"] == rows[0]["truth"]
    assert (tmp_path / "growth.png").read_bytes()[:4] == b"\x89PNG"
