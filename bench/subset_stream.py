"""Benchmark: the streaming `subset` against a `json.load` baseline on a LIVECell-size JSON.

Makes a synthetic LIVECell-format data root (annotations as an id -> annotation map, the
Kaggle copy's form of livecell_coco_train.json; polygons of 20 points) with >= 500,000
annotations, then runs, each in a fresh process: (a) build_subset (ijson streaming), (b) the
naive way: json.load the file and filter. Prints JSON with peak RSS and wall time of each and
their ratios.
Target: peak RSS <= 10% of the baseline's, wall time <= the baseline's.

    python bench/subset_stream.py [--annotations 500000] [--images 3000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import livecellseg.subset  # the same imports in both runs
mode, root, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
t = time.perf_counter()
if mode == "stream":
    from livecellseg.subset import build_subset
    r = build_subset(root, ("livecell_coco_train.json",), n=100, cell_lines=(), seed=0, out=out)
    kept = r["annotations_kept"]
else:
    with open(root / "annotations" / "livecell_coco_train.json") as f:
        doc = json.load(f)
    from livecellseg.livecell import cell_line_of
    from livecellseg.subset import choose_images
    images = [{**i, "cell_line": cell_line_of(i["file_name"])} for i in doc["images"]]
    ids = {img["id"] for img in choose_images(images, 100, (), 0)}
    kept = sum(a["image_id"] in ids for a in doc["annotations"].values())
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall_s": wall, "peak_rss_bytes": peak, "annotations_kept": kept}))
"""

LINES = ("A172", "BT474", "BV2", "Huh7", "MCF7", "SHSY5Y", "SkBr3", "SKOV3")


def make_root(root: Path, n_ann: int, n_img: int, seed: int = 0) -> int:
    from livecellseg.images import write_gray

    rng = np.random.default_rng(seed)
    img_dir = root / "images" / "livecell_train_val_images"
    img_dir.mkdir(parents=True)
    template = root / "template.tif"
    write_gray(template, np.full((520, 704), 128, np.uint8))
    images = []
    for i in range(n_img):
        name = f"{LINES[i % 8]}_Phase_A{i // 8 % 12 + 1}_1_{i // 96:02d}d00h00m_{i % 4 + 1}.tif"
        os.link(template, img_dir / name)  # same bytes for every image: disk stays small
        images.append({"id": i + 1, "file_name": name, "width": 704, "height": 520})
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    path = root / "annotations" / "livecell_coco_train.json"
    path.parent.mkdir()
    with open(path, "w") as f:  # written piecewise: the generator must not need the RAM itself
        head = {
            "info": {"year": 2021},
            "licenses": [],
            "images": images,
            "categories": [{"supercategory": "cell", "id": 1, "name": "cell"}],
        }
        f.write(json.dumps(head)[:-1] + ', "annotations": {')
        for a in range(n_ann):
            cx, cy, r = rng.uniform(20, 680), rng.uniform(20, 500), rng.uniform(5, 15)
            poly = np.round(np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel(), 2)
            ann = {
                "id": a + 1,
                "image_id": int(rng.integers(1, n_img + 1)),
                "segmentation": [poly.tolist()],
                "area": round(np.pi * r * r, 2),
                "bbox": [round(cx - r, 2), round(cy - r, 2), round(2 * r, 2), round(2 * r, 2)],
                "iscrowd": 0,
                "category_id": 1,
            }
            f.write(("" if a == 0 else ", ") + f'"{a + 1}": ' + json.dumps(ann))
        f.write("}}")
    return path.stat().st_size


def run(mode: str, root: Path, out: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(root), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotations", type=int, default=500_000)
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--keep", type=Path, help="build the data here and keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "raw"
        if not (root / "annotations").exists():
            size = make_root(root, args.annotations, args.images)
        else:
            size = (root / "annotations" / "livecell_coco_train.json").stat().st_size
        stream = run("stream", root, Path(tmp) / "out")
        naive = run("json_load", root, Path(tmp) / "out2")
    assert stream["annotations_kept"] == naive["annotations_kept"], (stream, naive)
    print(
        json.dumps(
            {
                "benchmark": "subset_stream",
                "annotations": args.annotations,
                "images": args.images,
                "json_bytes": size,
                "stream": stream,
                "json_load_baseline": naive,
                "peak_rss_ratio": round(stream["peak_rss_bytes"] / naive["peak_rss_bytes"], 4),
                "wall_ratio": round(stream["wall_s"] / naive["wall_s"], 4),
                "targets": {"peak_rss_ratio_max": 0.10, "wall_ratio_max": 1.0},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
