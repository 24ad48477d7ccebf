"""The command line: `pymq SUBCOMMAND ...`, also `python -m pymq SUBCOMMAND ...`.

For now: `demo` (the telemetry pipeline, pymq.demo) and `clean` (remove what a
dead broker left in /dev/shm). Exit status: 0 ok, 1 failure, 2 usage error.
Every error is one readable line on stderr, never a traceback (set
PYMQ_DEBUG=1 to see the traceback of an unexpected one).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _broker_name(text: str) -> str:
    from .config import check_broker_name
    try:
        return check_broker_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _default_name() -> str:
    return os.environ.get("PYMQ_NAME") or "pymq"


# -- subcommands --------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    return demo.run(args)


def cmd_clean(args: argparse.Namespace) -> int:
    from . import segments
    from .broker import remove_stale
    from .errors import MQError
    try:
        removed = remove_stale(args.name)
    except MQError as e:  # a live broker owns the name
        print(f"pymq clean: error: {e}", file=sys.stderr)
        return 1
    if not removed:
        print(f"nothing to remove: no segments of broker {args.name!r} in {segments.SHM_DIR}")
    for entry in removed:
        print(f"removed {os.path.join(segments.SHM_DIR, entry)}")
    return 0


def build_parser() -> ArgumentParser:
    from . import demo

    parser = ArgumentParser(
        prog="pymq",
        description="pymq: a message broker for processes on one machine, over shared memory.")
    parser.add_argument("--version", action="version", version=f"pymq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the GPU-telemetry pipeline demo",
                       description="The GPU-telemetry pipeline: a broker, streamer processes, "
                                   "two collector groups, live figures and a closing account of "
                                   "every message. Exits 0 only when the account balances.")
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("clean", help="remove what a dead broker left in /dev/shm",
                       description="Remove the shared-memory segments and token files of a "
                                   "broker that is no longer running. Refuses (exit 1) when a "
                                   "live broker owns the name.")
    p.add_argument("--name", type=_broker_name, default=_default_name(), metavar="NAME",
                   help="broker name (default: $PYMQ_NAME or 'pymq')")
    p.set_defaults(func=cmd_clean)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        print("pymq: error: a command is required (see 'pymq --help')", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"pymq {args.command}: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `pymq ... | head`: stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except Exception as e:  # one readable line, never a traceback
        if os.environ.get("PYMQ_DEBUG"):
            raise
        from .errors import MQError
        text = str(e) if isinstance(e, (MQError, OSError, ValueError)) and str(e) else \
            f"{type(e).__name__}: {e}"
        print(f"pymq {args.command}: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
