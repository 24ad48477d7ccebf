"""What the programs of the command line share: pymq.cli, pymq.demo, pymq.bench.

Owns:
  - usage errors on one line (ArgumentParser, exit status 2), a command's
    failure on one line (Failure, run_main: exit status 1, never a traceback);
  - argument types: names through pymq.config's checks, numbers, sizes, ports;
  - SIGINT and SIGTERM as flags (StopSignals);
  - figures as text: counts, byte sizes, tables that fit a width;
  - child processes of the demo and the benchmark: started with Ctrl-C left
    to the parent, waited for, joined.

It imports neither pymq.cli nor the demo nor the benchmark; they import it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from types import FrameType
from typing import Any, NoReturn, TypeVar

from .config import check_broker_name, check_group, check_topic

# -- one line for a usage error or a failure ----------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class Failure(Exception):
    """A command failed: its message is the one line printed (exit status 1)."""


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body and return its exit status: an exception becomes one
    line on stderr, 'PROG: error: ...', and exit status 1 (PYMQ_DEBUG=1 shows the
    traceback instead); Ctrl-C that the body does not handle, 'PROG: interrupted';
    a closed stdout (`... | head`) ends it quietly."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:
        try:  # nothing more reaches the reader; Python must not complain at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 1
    except Exception as e:  # one readable line, never a traceback
        if os.environ.get("PYMQ_DEBUG"):
            raise
        from .errors import MQError
        known = isinstance(e, (Failure, MQError, OSError, ValueError)) and str(e)
        print(f"{prog}: error: {e if known else f'{type(e).__name__}: {e}'}", file=sys.stderr)
        return 1


# -- argument types ---------------------------------------------------------------------------

def checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type from one of pymq.config's name checks: its ValueError
    is the one-line usage error."""
    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = check.__name__
    return parse


broker_name_arg = checked(check_broker_name)
topic_arg = checked(check_topic)
group_arg = checked(check_group)

N = TypeVar("N", int, float)


def number(kind: Callable[[str], N], want: str, ok: Callable[[N], bool]) -> Callable[[str], N]:
    """An argparse type for numbers of `kind` for which ok(value) holds (never
    NaN); `want` says which in the usage error ("'-1' is not an integer >= 0")."""
    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}") from None
        if value != value or not ok(value):  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text!r} is not {want}")
        return value
    return parse


positive_int = number(int, "an integer >= 1", lambda v: v >= 1)
nonneg_int = number(int, "an integer >= 0", lambda v: v >= 0)
nonneg_float = number(float, "a number >= 0", lambda v: v >= 0)
positive_float = number(float, "a number >= 0.001", lambda v: v >= 1e-3)  # seconds
port_arg = number(int, "a port (0..65535)", lambda v: 0 <= v <= 65535)

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size_arg(text: str) -> int:
    """Bytes: 65536, 64K, 64KiB, 8M, 8MiB, 1G (binary units)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(?:i?[bB])?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 65536, 64K, 8MiB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


# -- signals ------------------------------------------------------------------------------------

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class StopSignals:
    """SIGINT and SIGTERM set a flag instead of raising at a random place (in
    the middle of Broker() or between a read and its ack, say). A context
    manager: the previous handlers come back on exit.

    It counts the signals: `notes[k]` is written to stderr at signal k + 1
    ("SIGINT: stopping early"); at signal `raise_at` (None: never) it raises
    KeyboardInterrupt after all, for a user who insists."""

    def __init__(self, notes: Sequence[str] = (), raise_at: int | None = None) -> None:
        self.count = 0
        self.received: int | None = None  # the first signal
        self._notes = tuple(notes)
        self._raise_at = raise_at
        self._saved: dict[int, _Handler] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.received is None:
            self.received = signum
        if self._raise_at is not None and self.count >= self._raise_at:
            raise KeyboardInterrupt
        if self.count <= len(self._notes):
            text = f"\n{signal.Signals(signum).name}: {self._notes[self.count - 1]}\n"
            try:  # os.write: print() is not safe inside a signal handler
                os.write(2, text.encode())
            except OSError:
                pass

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def name(self) -> str:
        """The first signal's name ("SIGINT"), or "" before any."""
        return signal.Signals(self.received).name if self.received else ""

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake within 0.1 s of a signal. (Polling: an Event set
        inside the handler could deadlock with a wait in progress.)"""
        deadline = time.monotonic() + seconds
        while not self:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))


# -- figures as text ----------------------------------------------------------------------------

def count_text(n: int, what: str = "message", plural: str | None = None) -> str:
    """'1 message', '1,024 messages'."""
    return f"{n:,} {what if n == 1 else plural or what + 's'}"


def bytes_text(n: int) -> str:
    """'512 B', '64.0 KiB', '8.0 MiB'."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def compact(n: int) -> str:
    """A count in at most 5 characters: exact below 10,000, else three
    significant digits and k, M, G, T ('12.3k', '456k', '7.89M')."""
    if -10_000 < n < 10_000:
        return f"{n:,}"
    value = float(n)
    for unit in ("k", "M", "G", "T"):
        value /= 1000
        if abs(round(value, 2)) < 10:
            return f"{value:.2f}{unit}"
        if abs(round(value, 1)) < 100:
            return f"{value:.1f}{unit}"
        if abs(round(value)) < 1000:
            return f"{value:.0f}{unit}"
    return f"{value:.0f}T"


Cell = str | int | float


def table(header: Sequence[str], rows: Iterable[Sequence[Cell]], left: int = 1,
          width: int | None = None) -> list[str]:
    """Lines of a plain-text table: numbers with thousands separators, the first
    `left` columns left-aligned, two spaces between columns. With `width`: if
    a line would be wider, the widest columns of counts are shown compact
    ('1.23M') one at a time until the table fits (or none is left)."""
    rows = [list(r) for r in rows]
    ncols = len(header)
    compacted: set[int] = set()

    def text(c: Cell, i: int) -> str:
        if isinstance(c, str):
            return c
        if i in compacted and isinstance(c, int):
            return compact(c)
        return f"{c:,}"

    while True:
        cells = [list(header)] + [[text(c, i) for i, c in enumerate(r)] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(ncols)]
        if width is None or sum(widths) + 2 * (ncols - 1) <= width:
            break
        counts = [i for i in range(ncols) if i not in compacted
                  and any(isinstance(c, int) and abs(c) >= 10_000 for c in (r[i] for r in rows))]
        if not counts:
            break
        compacted.add(max(counts, key=lambda i: (widths[i], i)))
    return ["  ".join(c.ljust(w) if i < left else c.rjust(w)
                      for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells]


# -- child processes (the demo's, the benchmark's) ------------------------------------------------

def ignore_sigint() -> None:
    """In a child: leave Ctrl-C to the parent, which stops its children in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_processes(procs: Iterable[BaseProcess]) -> None:
    """Start processes with SIGINT ignored, so that a Ctrl-C during their
    start-up cannot hit them before they ignore it themselves."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, old)


def wait_events(events: Sequence[Event], procs: Sequence[BaseProcess], timeout: float,
                stop: Callable[[], bool] = lambda: False) -> bool:
    """Wait until events[i] is set for every i; False as soon as procs[i] died
    first, time ran out or stop() says so."""
    deadline = time.monotonic() + timeout
    for ev, p in zip(events, procs):
        while not ev.wait(0.05):
            if stop() or not p.is_alive() or time.monotonic() > deadline:
                return False
    return True


def join_processes(procs: Iterable[BaseProcess], timeout: float) -> list[str]:
    """Join children within timeout in all; terminate (then kill) the ones
    that do not finish. Returns complaints: who had to be terminated, who
    exited with a non-zero status."""
    procs = list(procs)
    problems = []
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            problems.append(f"{p.name} (pid {p.pid}) did not exit; terminated")
            p.terminate()
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join()
        elif p.exitcode not in (0, None):
            problems.append(f"{p.name} (pid {p.pid}) exited with {p.exitcode}")
    return problems
