"""Benchmark: throughput of the tile stage (cut 25 tiles, clip instances, write TIFF + RLE).

Generates N sample images (704x520, all cell lines), then times `tile_split` on them.
Prints JSON: tiles/s, seconds per image, instances/s.

    python bench/tile.py [--images 24]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from livecellseg.images import write_gray
from livecellseg.sample import LOOKS, generate, polygon_annotation
from livecellseg.tileset import tile_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=24)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images, anns = [], []
        for i, (name, line, img, polys) in enumerate(
            generate(
                n_images=args.images,
                empty_images=0,
                cell_lines=tuple(LOOKS),
                width=704,
                height=520,
                seed=0,
            )
        ):
            write_gray(tmp / name, img)
            images.append(
                {"id": i + 1, "file_name": name, "width": 704, "height": 520, "cell_line": line}
            )
            anns += [polygon_annotation(len(anns) + 1, i + 1, poly) for poly in polys]
        doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
        runs = {}
        for workers in sorted({1, os.cpu_count() or 1}):
            t = time.perf_counter()
            _, counts = tile_split(
                doc,
                tmp,
                tmp / f"tiles{workers}",
                grid=7,
                window=3,
                min_visible=0.3,
                workers=workers,
            )
            wall = time.perf_counter() - t
            runs[f"workers_{workers}"] = {
                "wall_s": round(wall, 3),
                "tiles_per_s": round(counts["tiles"] / wall, 1),
                "s_per_image": round(wall / args.images, 4),
                "instances_per_s": round(counts["instances"] / wall, 1),
            }
    print(
        json.dumps({"benchmark": "tile", "images": args.images, "counts": counts, **runs}, indent=2)
    )


if __name__ == "__main__":
    main()
