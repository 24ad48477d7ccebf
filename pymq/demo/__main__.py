"""`python -m pymq.demo [OPTIONS]` (what `make demo` runs): the demo's own
command line, the same options as `pymq demo`."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ..cliutil import ArgumentParser, run_main
from . import add_arguments, run


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="python -m pymq.demo",
        description="The GPU-telemetry pipeline: streamers, two collector groups, live figures "
                    "and a closing account of every message.")
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main("pymq demo", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
