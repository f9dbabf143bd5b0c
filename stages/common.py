"""What every stage shares: argument parsing, logging, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from livecellseg.config import Params, load_params
from livecellseg.errors import LivecellsegError


def run_stage(
    name: str,
    add_args: Callable[[argparse.ArgumentParser], None],
    main: Callable[[Params, argparse.Namespace], None],
) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}")
    parser.add_argument("--params", default="params.yaml", help="parameters file")
    add_args(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[{name}] %(message)s")
    try:
        main(load_params(args.params), args)
    except LivecellsegError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
