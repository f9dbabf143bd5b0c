"""Shared fixtures: a tiny LIVECell-format data root made by the sample generator."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from livecellseg.images import write_gray
from livecellseg.livecell import image_dir, write_coco
from livecellseg.sample import generate, polygon_annotation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params_dict(raw_params) -> dict:
    return copy.deepcopy(raw_params)


def make_livecell_root(
    root: Path,
    *,
    n_images: int = 8,
    empty: int = 1,
    width: int = 704,
    height: int = 520,
    seed: int = 0,
    lines: tuple[str, ...] = ("A172", "BV2", "MCF7", "SHSY5Y"),
) -> Path:
    """A LIVECell-format data root: images/<split dir>/<line>/*.tif + annotations/*.json."""
    docs = {s: ([], []) for s in ("train", "val", "test")}
    ann_id = 1
    for i, (name, line, image, polys) in enumerate(
        generate(
            n_images=n_images,
            empty_images=empty,
            cell_lines=lines,
            width=width,
            height=height,
            seed=seed,
        )
    ):
        split = ("train", "val", "test")[i % 3]
        path = root / image_dir(split) / line / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_gray(path, image)
        docs[split][0].append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for p in polys:
            docs[split][1].append(polygon_annotation(ann_id, i + 1, p))
            ann_id += 1
    for split, (imgs, anns) in docs.items():
        write_coco(root / "annotations" / f"livecell_coco_{split}.json", imgs, anns)
    return root


@pytest.fixture
def livecell_root(tmp_path) -> Path:
    return make_livecell_root(tmp_path / "raw")
