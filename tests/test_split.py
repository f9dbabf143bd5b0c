import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import yaml

from livecellseg.errors import DataError
from livecellseg.livecell import SPLITS
from livecellseg.split import (
    assign_groups,
    assign_splits,
    check_unique_names,
    official_splits,
    split_counts,
    stratified_order,
    well_of,
)
from tests.helpers import ROOT, make_livecell_root


def _stage(name, *args):
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def _strata(sizes):
    return [line for line, n in sizes.items() for _ in range(n)]


def test_split_counts():
    assert split_counts(100, FRACTIONS) == {"train": 70, "val": 15, "test": 15}
    assert sum(split_counts(41, FRACTIONS).values()) == 41
    with pytest.raises(DataError, match="too few"):
        split_counts(2, FRACTIONS)
    assert split_counts(3, FRACTIONS) == {"train": 1, "val": 1, "test": 1}


def test_splits_are_disjoint_complete_and_stratified():
    sizes = {"A172": 40, "BV2": 20, "MCF7": 20, "SHSY5Y": 20}
    strata = _strata(sizes)
    parts = assign_splits(strata, FRACTIONS, seed=3)
    all_idx = sorted(i for p in parts.values() for i in p)
    assert all_idx == list(range(len(strata)))
    assert {k: len(v) for k, v in parts.items()} == {"train": 70, "val": 15, "test": 15}
    for name, frac in FRACTIONS.items():
        per_line = Counter(strata[i] for i in parts[name])
        for line, n in sizes.items():
            assert abs(per_line[line] - frac * n) <= 1, (name, line, per_line)


def test_split_is_seeded():
    strata = _strata({"A": 13, "B": 7, "C": 9})
    assert assign_splits(strata, FRACTIONS, 1) == assign_splits(strata, FRACTIONS, 1)
    assert assign_splits(strata, FRACTIONS, 1) != assign_splits(strata, FRACTIONS, 2)


def test_every_prefix_is_proportional():
    strata = _strata({"A": 30, "B": 10})
    order = stratified_order(strata, np.random.default_rng(0))
    for k in (4, 8, 20):
        n_a = sum(strata[i] == "A" for i in order[:k])
        assert abs(n_a - 0.75 * k) <= 1


def _img(name, split):
    return {"file_name": name, "source_split": split, "cell_line": "A172"}


def test_official_keeps_livecells_membership():
    images = [_img("a", "train"), _img("b", "test"), _img("c", "val"), _img("d", "train")]
    assert official_splits(images) == {"train": [0, 3], "val": [2], "test": [1]}
    with pytest.raises(DataError, match="no image of LIVECell's val split"):
        official_splits([_img("a", "train"), _img("b", "test")])
    with pytest.raises(DataError, match="x.tif has no LIVECell split.*split.mode: stratified"):
        official_splits([_img("x.tif", None), *images])


def test_a_file_name_listed_twice_stops_the_split():
    check_unique_names([_img("a", "train"), _img("b", "train")], "s.json")
    with pytest.raises(DataError, match="s.json: a is listed twice"):
        check_unique_names([_img("a", "train"), _img("a", "val")], "s.json")


@pytest.mark.parametrize("mode", ["stratified", "official"])
def test_split_stage_puts_each_picture_in_one_split(mode, tmp_path, raw_params):
    """Subset of a root listing pictures twice (as LIVECell does), then the split stage in
    both modes: no file name in two splits; official keeps each file's LIVECell split."""
    root = make_livecell_root(tmp_path / "raw", n_images=9, width=140, height=100)
    r = _stage("subset", "--raw", root, "--out", tmp_path / "s", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr[-2000:]
    params = {**raw_params, "split": {**raw_params["split"], "mode": mode}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    r = _stage(
        "split", "--params", tmp_path / "params.yaml", "--subset",
        tmp_path / "s/annotations.json", "--out", tmp_path / "split",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    docs = {s: json.loads((tmp_path / f"split/{s}.json").read_text()) for s in SPLITS}
    names = [img["file_name"] for d in docs.values() for img in d["images"]]
    assert len(names) == len(set(names)) == 9
    for s, d in docs.items():
        ids = {img["id"] for img in d["images"]}
        assert all(a["image_id"] in ids for a in d["annotations"])
        if mode == "official":
            assert {img["source_split"] for img in d["images"]} == {s}
    if mode == "official":  # 9 images cycled over train/val/test; the picture in train and
        # val is kept in val
        assert {s: len(d["images"]) for s, d in docs.items()} == {"train": 2, "val": 4, "test": 3}


def test_whole_wells_go_to_one_split_stratified_by_cell_line():
    names = [
        f"{line}_Phase_{well}_1_00d{h:02d}h00m_1.tif"
        for line in ("A172", "BV2")
        for well in (f"B{k}" for k in range(1, 11))
        for h in (0, 12, 24)
    ]
    groups = [well_of(n) for n in names]
    strata = [n.split("_")[0] for n in names]
    parts = assign_groups(groups, strata, FRACTIONS, seed=0)
    assert sorted(i for idx in parts.values() for i in idx) == list(range(60))
    seen = {}
    for split, idx in parts.items():
        for i in idx:
            assert seen.setdefault(groups[i], split) == split  # a well in one split
    test_wells = {groups[i] for i in parts["test"]}
    assert len(test_wells) == 3 and {w.split()[0] for w in test_wells} == {"A172", "BV2"}
    assert parts == assign_groups(groups, strata, FRACTIONS, seed=0)
    assert well_of("A172_Phase_B2_1_00d12h00m_1.tif") == "A172 B2"
    assert well_of("plate3/x.tif") == "plate3/x.tif"  # not a LIVECell name: its own group
    with pytest.raises(DataError, match="2 wells are too few.*split.by: image"):
        assign_groups(["a", "a", "b"], ["x"] * 3, FRACTIONS, seed=0)


def test_split_stage_by_well_keeps_each_time_lapse_together(tmp_path, raw_params):
    root = make_livecell_root(
        tmp_path / "raw", n_images=24, empty=0, width=140, height=100, hours=(0, 24, 48)
    )
    r = _stage("subset", "--raw", root, "--out", tmp_path / "s", "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr[-2000:]
    r = _stage("split", "--subset", tmp_path / "s/annotations.json", "--out", tmp_path / "split")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "split.by well: 8 wells" in r.stderr
    where = {}
    for s in SPLITS:
        for img in json.loads((tmp_path / f"split/{s}.json").read_text())["images"]:
            where.setdefault(well_of(img["file_name"]), set()).add(s)
    assert len(where) == 8 and all(len(v) == 1 for v in where.values())
