"""sample: generate the embedded LIVECell-format data set (offline default): time-lapse
series of each cell line's wells, named as LIVECell names its frames."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from livecellseg.io import atomic_dir
from livecellseg.sample import generate, write_livecell_root
from stages.common import run_stage

log = logging.getLogger("stages.sample")


def main(params, args) -> None:
    cfg = params.sample
    with atomic_dir(args.out) as out:
        samples = generate(
            n_images=cfg.n_images,
            empty_images=cfg.empty_images,
            cell_lines=cfg.cell_lines,
            width=cfg.width,
            height=cfg.height,
            seed=params.seed,
            hours=cfg.hours,
            positions=cfg.positions,
            workers=os.cpu_count() or 1,  # the same images for any number of workers
        )
        start = time.perf_counter()
        counts = write_livecell_root(out, samples, total=cfg.n_images, progress=True)
        seconds = time.perf_counter() - start
    for line, n in counts["cells_per_image"].items():
        log.info("%s: %d images, cells per image %s", line, len(n), n)
    log.info(
        "%d images, %d cells (%.0f per image) in %.1f s (%.2f s per image) -> %s",
        counts["images"],
        counts["cells"],
        counts["cells"] / max(counts["images"], 1),
        seconds,
        seconds / max(counts["images"], 1),
        args.out,
    )


def add_args(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output data root")


if __name__ == "__main__":
    run_stage("sample", add_args, main)
