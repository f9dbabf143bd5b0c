"""sample: generate the embedded LIVECell-format data set (offline default)."""

from __future__ import annotations

import logging
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
        )
        counts = write_livecell_root(out, samples, total=cfg.n_images, progress=True)
    log.info("%d images, %d cells -> %s", counts["images"], counts["cells"], args.out)


def add_args(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output data root")


if __name__ == "__main__":
    run_stage("sample", add_args, main)
