"""`pymq bench`: pymq measured on this machine, alone, across two real processes.
Part of the package, so that it runs wherever pymq is installed (a wheel too).

Owns the cases, their counts (full, and --quick), the two child processes
(a publisher; a ponger that echoes), the check of every payload, and the table:

  publish -> get    a publisher process sends N payloads of 64 B or 4 KiB to
                    a subscriber (this process), with single calls (publish,
                    get) or batched ones (publish_many / get_many of 64).
                    Payload i is i as 8 little-endian bytes, then a fixed
                    filler; every payload received is checked (its index in
                    order, its length, its filler byte for byte), nothing more
                    may arrive, and the broker must count N published.
                    msg/s = N / (last receive - the start signal).
  ping-pong         this process publishes a 64 B payload to "ping", the ponger
                    echoes it to "pong"; one-way latency = round trip / 2,
                    p50 and p99 over the measured round trips, after warm-up
                    ones; every echo compared with what was sent.

The broker is one of its own (--name, default bench-<pid>), configured from
the PYMQ_* environment like every command, with persistence and the admin
server off; it is closed at the end, and anything left in /dev/shm is a failure.

The side by side with other IPC transports (multiprocessing, faster-fifo,
pyzmq, posix_ipc) is benchmarks/compare.py of a source checkout:
`pymq bench --compare [ITS OPTIONS]` hands over to it when it is there.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import pathlib
import random
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any

import pymq

from . import segments
from .cliutil import (ArgumentParser, Failure, broker_name_arg, bytes_text, ignore_sigint,
                      join_processes, run_main, start_processes, table, wait_events)

INDEX = struct.Struct("<Q")  # payload i starts with i
BATCH = 64                   # messages per publish_many / get_many in the batched cases
TOPIC, PING, PONG = "bench", "ping", "pong"
START_TIMEOUT = 30.0         # seconds for a child to connect (and subscribe)
QUIET_TIMEOUT = 30.0         # seconds without a message before a run fails
POLL = 0.5                   # seconds a receive waits before it looks at the child


@dataclass(frozen=True)
class Case:
    """One publish -> get run: payload bytes, messages per call, messages (full, quick)."""
    size: int
    batch: int
    count: int
    quick: int

    @property
    def label(self) -> str:
        calls = f"batched ({self.batch})" if self.batch > 1 else "single"
        return f"{bytes_text(self.size).replace('.0 ', ' ')} {calls}"


# the counts of benchmarks/compare.py: a full run takes a few seconds, --quick about one
CASES = [Case(64, 1, 800_000, 20_000), Case(64, BATCH, 3_000_000, 64_000),
         Case(4096, 1, 300_000, 10_000), Case(4096, BATCH, 500_000, 12_800)]
PINGPONG_SIZE = 64
PINGPONG_ROUNDS = {False: (2_000, 20_000), True: (200, 2_000)}  # quick: (warm-up, measured)


def filler(size: int) -> bytes:
    """The fixed part of every payload of this size, after its index."""
    return random.Random(size).randbytes(size - INDEX.size)


# -- the child processes -----------------------------------------------------------------------

@contextlib.contextmanager
def _reporting(conn: Connection) -> Iterator[dict[str, Any]]:
    """A child's body: what it puts in the dict goes to the parent at the end;
    an exception goes as {"error": "Type: message"}. Ctrl-C is the parent's."""
    ignore_sigint()
    out: dict[str, Any] = {}
    try:
        yield out
    except BaseException as e:  # noqa: BLE001 - reported, the parent fails the run
        out = {"error": f"{type(e).__name__}: {e}"}
    finally:
        with contextlib.suppress(OSError):
            conn.send(out)
        conn.close()


def publisher(name: str, size: int, batch: int, count: int, go: Event, ready: Event,
              conn: Connection) -> None:
    """Publish payloads 0..count-1 of `size` bytes to TOPIC, `batch` per call."""
    with _reporting(conn) as out, pymq.connect(name) as client:
        fill, pack = filler(size), INDEX.pack
        ready.set()
        if not go.wait(START_TIMEOUT):
            raise Failure("no start signal")
        if batch == 1:
            for i in range(count):
                client.publish(TOPIC, pack(i) + fill)
        else:
            for first in range(0, count, batch):
                client.publish_many(TOPIC, [pack(i) + fill
                                            for i in range(first, min(first + batch, count))])
        out["sent"] = count


def ponger(name: str, rounds: int, ready: Event, conn: Connection) -> None:
    """Echo `rounds` payloads of PING to PONG."""
    with _reporting(conn) as out, pymq.connect(name) as client, client.subscribe(PING) as sub:
        ready.set()
        for _ in range(rounds):
            client.publish(PONG, sub.get(timeout=QUIET_TIMEOUT))
        out["echoed"] = rounds


# -- the runs ---------------------------------------------------------------------------------

class _Children:
    """The children of one run: started with Ctrl-C left to this process and
    waited for until ready, their reports read, joined (or killed) at the end.
    `go` is an Event to hand to the children that wait for a start signal."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.go = self.ctx.Event()
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        self.reports: dict[int, dict[str, Any]] = {}

    def start(self, target: Any, name: str, *args: Any) -> None:
        """Start target(*args, ready, conn) and wait until it set ready."""
        ready = self.ctx.Event()
        recv, send = self.ctx.Pipe(duplex=False)
        self.procs.append(self.ctx.Process(target=target, name=name, daemon=True,
                                           args=(*args, ready, send)))
        self.conns.append(recv)
        start_processes(self.procs[-1:])
        send.close()
        if not wait_events([ready], self.procs[-1:], START_TIMEOUT):
            self.report(-1, timeout=0)  # its error, if it sent one
            raise Failure(f"the {name} did not start in {START_TIMEOUT:g} s")

    def report(self, i: int, timeout: float = QUIET_TIMEOUT) -> dict[str, Any] | None:
        """Child i's report, waiting up to timeout for it; None if there is none
        yet. Failure if the child failed, or exited without one."""
        i %= len(self.procs)
        if i not in self.reports:
            conn, proc = self.conns[i], self.procs[i]
            if not conn.poll(timeout):
                if proc.is_alive() and timeout < QUIET_TIMEOUT:
                    return None
                raise Failure(f"the {proc.name} sent no report (exit status {proc.exitcode})")
            self.reports[i] = conn.recv()
        out = self.reports[i]
        if "error" in out:
            raise Failure(f"the {self.procs[i].name} failed: {out['error']}")
        return out

    def quiet(self, what: str, since: float) -> None:
        """Nothing arrived for POLL seconds: Failure if the child (the first)
        has failed, or finished (what it sent is not all there), or if it has
        been QUIET_TIMEOUT seconds; else it is just slow."""
        if self.report(0, timeout=0) is not None:
            raise Failure(f"{what}, and the {self.procs[0].name} has finished")
        if time.perf_counter() - since > QUIET_TIMEOUT:
            raise Failure(f"{what} for {QUIET_TIMEOUT:g} s")

    def close(self) -> None:
        join_processes(self.procs, 10.0)
        for conn in self.conns:
            conn.close()


def _check(items: Sequence[bytes], first: int, size: int, fill: bytes) -> int:
    """How many of these payloads are not payloads first, first + 1, ... of `size`."""
    unpack = INDEX.unpack_from
    return sum(1 for k, p in enumerate(items)
               if len(p) != size or unpack(p)[0] != first + k or not p.endswith(fill))


def throughput(broker: pymq.Broker, case: Case, count: int) -> dict[str, Any]:
    """One publish -> get run; its figures, or Failure if a payload is wrong."""
    name = broker.config.name
    fill = filler(case.size)
    published = broker.stats()["topics"].get(TOPIC, {}).get("published", 0)
    children = _Children()
    try:
        with broker.subscribe(TOPIC) as sub:
            children.start(publisher, "publisher", name, case.size, case.batch, count,
                           children.go)
            bad = got = 0
            t0 = last = time.perf_counter()
            children.go.set()
            while got < count:
                try:
                    items = sub.get_many(case.batch, timeout=POLL) if case.batch > 1 \
                        else [sub.get(timeout=POLL)]
                except pymq.Timeout:
                    children.quiet(f"{case.label}: received {got:,} of {count:,} messages, then "
                                   "nothing", last)
                    continue
                bad += _check(items, got, case.size, fill)
                got += len(items)
                last = time.perf_counter()
            elapsed = last - t0
            report = children.report(0)
            sent = report["sent"] if report else 0
            with contextlib.suppress(pymq.Timeout):
                got += len(sub.get_many(BATCH, timeout=0.05))  # nothing more may come
    finally:
        children.close()
    counted = broker.stats()["topics"][TOPIC]["published"] - published
    if bad or got != count or sent != count or counted != count:
        raise Failure(f"{case.label}: {bad:,} wrong payload(s); received {got:,}, sent {sent:,}, "
                      f"the broker counted {counted:,} published, of {count:,}")
    return {"case": case.label, "messages": count, "seconds": elapsed,
            "msg_per_s": count / elapsed, "mb_per_s": count * case.size / elapsed / 1e6}


def _percentile(ordered: Sequence[int], p: float) -> int:
    """The nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def pingpong(broker: pymq.Broker, warm: int, rounds: int) -> dict[str, Any]:
    """Ping-pong with the ponger; one-way latency percentiles in microseconds."""
    fill, pack = filler(PINGPONG_SIZE), INDEX.pack
    rtts: list[int] = []
    children = _Children()
    try:
        with broker.subscribe(PONG) as sub:
            children.start(ponger, "ponger", broker.config.name, warm + rounds)
            for i in range(warm + rounds):
                payload = pack(i) + fill
                t0 = time.perf_counter_ns()
                broker.publish(PING, payload)
                while True:
                    try:
                        echo = sub.get(timeout=POLL)
                        break
                    except pymq.Timeout:
                        children.quiet(f"ping-pong: no echo of round trip {i + 1:,}", t0 / 1e9)
                t1 = time.perf_counter_ns()
                if echo != payload:
                    raise Failure(f"ping-pong: round trip {i + 1:,} came back different")
                if i >= warm:
                    rtts.append(t1 - t0)
            children.report(0)
    finally:
        children.close()
    rtts.sort()
    return {"case": f"ping-pong {PINGPONG_SIZE} B", "round_trips": rounds, "warm_up": warm,
            "p50_us": _percentile(rtts, 50) / 2e3, "p99_us": _percentile(rtts, 99) / 2e3}


def run(args: argparse.Namespace) -> int:
    """`pymq bench` with parsed options (add_arguments); returns the exit status."""
    if args.compare is not None:
        return compare((["--quick"] if args.quick else []) + args.compare)
    name: str = args.name or f"bench-{os.getpid()}"
    cfg = pymq.BrokerConfig.from_env(name=name, persistence_enabled=False, admin_port=None)
    print(f"pymq bench: pymq {pymq.__version__} alone, publisher and subscriber in two "
          f"processes; broker {name!r}, rings of {bytes_text(cfg.ring_capacity)}"
          + ("; quick run (small counts)" if args.quick else ""), flush=True)
    rows, latency = [], None
    broker = pymq.Broker(cfg)
    try:
        for case in CASES:
            r = throughput(broker, case, case.quick if args.quick else case.count)
            rows.append([r["case"], r["messages"], round(r["msg_per_s"]),
                         f"{r['mb_per_s']:,.1f}"])
        latency = pingpong(broker, *PINGPONG_ROUNDS[args.quick])
    finally:
        broker.close()
    print()
    print("\n".join(table(["PUBLISH -> GET", "MESSAGES", "MSG/S", "MB/S"], rows)))
    print()
    print("\n".join(table(["LATENCY", "ROUND TRIPS", "ONE-WAY P50", "ONE-WAY P99"],
                          [[latency["case"], latency["round_trips"], f"{latency['p50_us']:.1f} us",
                            f"{latency['p99_us']:.1f} us"]])))
    left = segments.namespace_entries(name)
    if left:
        raise Failure(f"left in {segments.SHM_DIR}: {', '.join(left)}")
    checked = sum(row[1] for row in rows) + latency["round_trips"] + latency["warm_up"]
    print(f"\nevery payload checked ({checked:,}); nothing left in {segments.SHM_DIR}")
    return 0


# -- the side by side, from a source checkout ---------------------------------------------------

def compare_script() -> pathlib.Path | None:
    """benchmarks/compare.py of the source checkout this pymq runs from, if any."""
    root = pathlib.Path(__file__).resolve().parent.parent
    script = root / "benchmarks" / "compare.py"
    return script if script.is_file() and (root / "pyproject.toml").is_file() else None


def compare(argv: Sequence[str]) -> int:
    """Hand over to benchmarks/compare.py; its exit status."""
    script = compare_script()
    if script is None:
        raise Failure("--compare runs benchmarks/compare.py, the side by side with other IPC "
                      "transports, which comes with a source checkout of pymq (then: pip install "
                      f"-e '.[bench]'); this pymq is installed in {pathlib.Path(__file__).parent}, "
                      "without one. 'pymq bench' without --compare measures pymq alone")
    return subprocess.call([sys.executable, str(script), *argv])


# -- options --------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `pymq bench` (and python -m pymq.bench)."""
    p.add_argument("--quick", action="store_true",
                   help="small counts: a smoke run of a few seconds")
    p.add_argument("--name", type=broker_name_arg, default=None, metavar="NAME",
                   help="name of the benchmark's own broker (default: bench-<pid>)")
    p.add_argument("--compare", nargs=argparse.REMAINDER, default=None, metavar="...",
                   help="instead, run benchmarks/compare.py of a source checkout (pymq side by "
                        "side with multiprocessing, faster-fifo, pyzmq, posix_ipc): the "
                        "arguments after --compare are its own (e.g. --scenario A; --quick "
                        "given before --compare is passed on)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m pymq.bench [--quick]`."""
    args = add_arguments(ArgumentParser(prog="python -m pymq.bench",
                                        description=__doc__.split("\n\n")[0])).parse_args(argv)
    return run_main("pymq bench", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
