"""sample: generate the embedded LIVECell-format data set (offline default)."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from livecellseg.images import write_gray
from livecellseg.io import atomic_dir
from livecellseg.livecell import image_dir, write_coco
from livecellseg.sample import generate, polygon_annotation
from stages.common import run_stage

log = logging.getLogger("stages.sample")
# LIVECell ships its own train/val/test files; the sample spreads its images over the same three.
LIVECELL_SPLIT_CYCLE = ("train",) * 5 + ("val", "test")


def main(params, args) -> None:
    cfg = params.sample
    docs = {s: ([], []) for s in ("train", "val", "test")}
    next_ann_id = 1
    with atomic_dir(args.out) as out:
        images = generate(
            n_images=cfg.n_images,
            empty_images=cfg.empty_images,
            cell_lines=cfg.cell_lines,
            width=cfg.width,
            height=cfg.height,
            seed=params.seed,
        )
        for i, (name, line, image, polygons) in enumerate(
            tqdm(images, total=cfg.n_images, desc="sample", unit="img")
        ):
            split = LIVECELL_SPLIT_CYCLE[i % len(LIVECELL_SPLIT_CYCLE)]
            path = out / image_dir(split) / line / name
            path.parent.mkdir(parents=True, exist_ok=True)
            write_gray(path, image)
            image_id = i + 1
            imgs, anns = docs[split]
            imgs.append(
                {"id": image_id, "file_name": name, "width": cfg.width, "height": cfg.height}
            )
            for poly in polygons:
                anns.append(polygon_annotation(next_ann_id, image_id, poly))
                next_ann_id += 1
        for split, (imgs, anns) in docs.items():
            write_coco(out / "annotations" / f"livecell_coco_{split}.json", imgs, anns)
    log.info("%d images, %d cells -> %s", cfg.n_images, next_ann_id - 1, args.out)


def add_args(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output data root")


if __name__ == "__main__":
    run_stage("sample", add_args, main)
