"""The GPU-telemetry pipeline demo (`make demo`, `pymq demo`, `python -m pymq.demo`).

A Broker (and its supervisor process), N streamer processes publishing GPU
telemetry as JSON to one topic, and two collector groups ("dashboard" and
"archiver") of M member processes each, with at-least-once delivery
(subscribe_with_ack): a member processes what it reads and acks it in batches
with ack_many (--ack-batch). Now and then (--nack-rate) a member nacks a first
delivery instead of processing it: the broker redelivers it (delivery_attempt
2) to some member of the group, which processes and acks it. Every process is
a real OS process (multiprocessing, spawn). While it runs, it prints live
figures from broker.stats() about once a second (per group: acked, lag,
nacked, redelivered, dead-lettered); at the end the streamers stop, the groups
drain (until each has acked everything published), and a closing summary
accounts for every message (summary.py says what is checked). Exit status 0
only when all of it balances (and nothing is left in /dev/shm), 1 otherwise.
Ctrl-C (or SIGTERM) stops early: the groups still drain, the summary is
printed and everything is removed; a second Ctrl-C skips the drain.

The rooms: telemetry.py (the message), streamer.py and collector.py (the
child processes), summary.py (the closing account), and this file, which owns
the options (add_arguments) and the orchestration (run): start, live
figures, drain, stop. __main__.py is `python -m pymq.demo`.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import queue
import shutil
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

import pymq

from .. import segments
from ..cliutil import (StopSignals, broker_name_arg, join_processes, nonneg_float, nonneg_int,
                       number, positive_float, positive_int, start_processes, wait_events)
from ..config import check_broker_name
from .collector import GROUPS, collector
from .streamer import streamer
from .summary import Figures, drained, persistence_report, report, settled, topic_figures
from .telemetry import TOPIC

START_TIMEOUT = 30.0   # seconds for every child to connect and subscribe
RESULT_TIMEOUT = 15.0  # seconds for a child to report after it was told to stop
MAX_PROCS = 64         # most streamers, and most members per group

__all__ = ["add_arguments", "run"]


# -- options --------------------------------------------------------------------------------

_procs = number(int, f"an integer from 1 to {MAX_PROCS}", lambda v: 1 <= v <= MAX_PROCS)
_probability = number(float, "a number from 0 to 1", lambda v: 0 <= v <= 1)
_admin_port = number(int, "a port from 0 to 65535, or -1", lambda v: -1 <= v <= 65535)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (shared with `pymq demo`)."""
    p.add_argument("--duration", type=positive_float, default=15.0, metavar="SECONDS",
                   help="how long the streamers publish (default 15)")
    p.add_argument("--streamers", type=_procs, default=4, metavar="N",
                   help=f"streamer processes, 1 to {MAX_PROCS} (default 4)")
    p.add_argument("--members", type=_procs, default=2, metavar="N",
                   help=f"member processes per collector group, 1 to {MAX_PROCS} (default 2)")
    p.add_argument("--rate", type=nonneg_float, default=2000.0, metavar="MSG_PER_S",
                   help="messages per second per streamer; 0: as fast as possible (default 2000)")
    p.add_argument("--batch", type=positive_int, default=1, metavar="N",
                   help="payloads per publish call (>1 uses publish_many; default 1)")
    p.add_argument("--name", type=broker_name_arg, default=None, metavar="NAME",
                   help="broker name (default: demo-<pid>)")
    p.add_argument("--ack-batch", type=nonneg_int, default=0, metavar="N",
                   help="a collector acks (ack_many) once N processed messages are waiting; "
                        "0: after each batch it reads, up to 64 (default 0)")
    p.add_argument("--nack-rate", type=_probability, default=0.001, metavar="P",
                   help="probability that a collector nacks a first delivery instead of "
                        "processing it; it is redelivered and processed then (default 0.001)")
    p.add_argument("--drain-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="longest wait for the groups to catch up at the end (default 30)")
    p.add_argument("--persistence-dir", default=os.path.join("data", "demo"), metavar="DIR",
                   help="write every message to JSON-lines files under DIR/<broker name> "
                        "(default data/demo; the previous demo run's files there go)")
    p.add_argument("--no-persistence", action="store_true", help="run without persistence")
    p.add_argument("--admin-port", type=_admin_port, default=0, metavar="PORT",
                   help="port of the admin server and dashboard on 127.0.0.1: 0 picks a free "
                        "one (default), -1 runs without it")
    return p


# -- live figures ---------------------------------------------------------------------------

class _Live:
    """One line of figures about once a second; remembers the peaks."""

    def __init__(self, broker: pymq.Broker, t0: float) -> None:
        self.broker = broker
        self.t0 = t0
        self.last_t = t0
        self.last_pub = 0
        self.peak_rate = 0.0
        self.peak_used = 0

    def line(self, phase: str) -> Figures:
        """Print the line of this moment ("run", "drain" or "end"); returns the stats."""
        st: Figures = self.broker.stats()
        t = topic_figures(st)
        now = time.monotonic()
        pub = t["published"]
        rate = (pub - self.last_pub) / max(now - self.last_t, 1e-9)
        if phase != "end":
            self.peak_rate = max(self.peak_rate, rate)
        self.peak_used = max(self.peak_used, t["ring_bytes_used"])
        self.last_t, self.last_pub = now, pub
        groups = "  ".join(_live_group(g, t["groups"].get(g)) for g in GROUPS)
        used = 100.0 * t["ring_bytes_used"] / max(t["ring_bytes_capacity"], 1)
        shown = f"{rate:>9,.0f}/s" if phase != "end" else " " * 11
        print(f"{phase:5} {now - self.t0:6.1f}s  published {pub:>10,} {shown}  {groups}  "
              f"ring {used:5.1f}%  waits {t['publish_waits']:,} refused {t['publish_refusals']:,}",
              flush=True)
        return st


def _live_group(name: str, g: Figures | None) -> str:
    if g is None:
        return f"{name} (missing)"
    return (f"{name} acked {g['acked']:>9,} lag {g['lag']:>5,} nacked/redelivered/dlq "
            f"{g['nacked']:,}/{g['redelivered']:,}/{g['dead_lettered']:,}")


# -- the run ----------------------------------------------------------------------------------

def _collect(results: Queue[Figures], got: list[Figures], role: str,
             procs: Sequence[BaseProcess], timeout: float) -> None:
    """Read reports into got until every process of `role` reported, they
    all ended or time ran out (before join: a queue feeder must drain)."""
    deadline = time.monotonic() + timeout
    while sum(r["role"] == role for r in got) < len(procs):
        try:
            got.append(results.get(timeout=0.1))
        except queue.Empty:
            if time.monotonic() > deadline:
                break
            if not any(p.is_alive() for p in procs) and results.empty():
                try:  # a last report may still be in the pipe
                    got.append(results.get(timeout=0.5))
                    continue
                except queue.Empty:
                    break


def _announce(args: argparse.Namespace, cfg: pymq.BrokerConfig, broker: pymq.Broker) -> float:
    """Print what runs (and start the admin server); returns the nack rate in force."""
    print(f"pymq demo: broker {cfg.name!r} (pid {os.getpid()}, supervisor pid "
          f"{broker.supervisor_pid}), topic {TOPIC!r}, ring {cfg.ring_capacity // 1024:,} KiB",
          flush=True)
    if args.admin_port >= 0:
        try:
            port = broker.start_admin_server(args.admin_port)
            print(f"  dashboard: http://{cfg.admin_host}:{port}/   "
                  f"(also /health, /stats, /stats/{TOPIC}, /metrics)", flush=True)
        except OSError as e:  # the pipeline runs without it
            print(f"  admin server not started: {e}", flush=True)
    rate = "as fast as possible" if args.rate == 0 else f"{args.rate:,.0f} msg/s each"
    print(f"  {args.streamers} streamers ({rate}, batch {args.batch}), groups "
          f"{' and '.join(GROUPS)} x {args.members} members, {args.duration:g} s", flush=True)
    nack_rate: float = args.nack_rate
    if nack_rate and cfg.max_retries < 1:
        print("  max_retries is 0: a nacked message would be dead-lettered at once, "
              "so the collectors do not nack (--nack-rate ignored)", flush=True)
        nack_rate = 0.0
    acks = f"ack_many every {args.ack_batch}" if args.ack_batch else "ack_many per read"
    print(f"  at-least-once: {acks}, nack rate {nack_rate:g}, ack timeout "
          f"{cfg.ack_timeout:g} s, max retries {cfg.max_retries}", flush=True)
    return nack_rate


def _drain(broker: pymq.Broker, collectors: Sequence[BaseProcess], live: _Live,
           sig: StopSignals, timeout: float) -> tuple[float, Figures]:
    """Wait until every group acked (or dead-lettered) everything published, a
    second signal, every collector gone or timeout; returns the time it took
    and the last figures."""
    t_drain = time.monotonic()
    drain_end = t_drain + timeout
    stats = broker.stats()
    next_line = time.monotonic() + 1.0
    while not settled(stats) and sig.count < 2 and time.monotonic() < drain_end:
        if not any(p.is_alive() for p in collectors):
            break
        time.sleep(0.02)
        stats = broker.stats()
        if time.monotonic() >= next_line:
            live.line("drain")
            next_line += 1.0
    return time.monotonic() - t_drain, stats


def run(args: argparse.Namespace) -> int:
    """Run the pipeline with parsed options (add_arguments); returns the exit status."""
    name: str = args.name or f"demo-{os.getpid()}"
    check_broker_name(name)
    persist_dir: str | None = None
    published_total: int | None = None
    if not args.no_persistence:
        for old in glob.glob(os.path.join(args.persistence_dir, "demo-*")):
            shutil.rmtree(old, ignore_errors=True)  # the previous runs' files
        persist_dir = os.path.join(args.persistence_dir, name)
    cfg = pymq.BrokerConfig.from_env(name=name, persistence_enabled=persist_dir is not None,
                                     persistence_dir=persist_dir or "/data/mq")
    ctx = mp.get_context("spawn")
    results: Queue[Figures] = ctx.Queue()
    streamer_stop, collector_stop, go, abort = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    collectors: list[BaseProcess] = []
    streamers: list[BaseProcess] = []
    problems: list[str] = []
    broker: pymq.Broker | None = None
    # Ctrl-C and SIGTERM set flags: the first asks for an early stop, the
    # second skips the drain, the third raises
    with StopSignals(notes=("stopping early (again to skip the drain)", "skipping the drain"),
                     raise_at=3) as sig:
        try:
            broker = pymq.Broker(cfg)
            nack_rate = _announce(args, cfg, broker)

            # 1. collectors subscribe before anything is published
            c_ready: list[Event] = []
            for group in GROUPS:
                for m in range(args.members):
                    ev = ctx.Event()
                    c_ready.append(ev)
                    collectors.append(ctx.Process(
                        target=collector, name=f"collector-{group}-{m}", daemon=True,
                        args=(group, m, name, nack_rate, args.ack_batch, ev, collector_stop,
                              abort, results)))
            start_processes(collectors)
            if not wait_events(c_ready, collectors, START_TIMEOUT, stop=sig.__bool__):
                if not sig:
                    problems.append("the collectors did not all subscribe in time")
            # 2. streamers connect, then start together
            s_ready: list[Event] = []
            if not problems and not sig:
                for i in range(args.streamers):
                    ev = ctx.Event()
                    s_ready.append(ev)
                    streamers.append(ctx.Process(
                        target=streamer, name=f"streamer-{i}", daemon=True,
                        args=(i, name, args.rate, args.batch, ev, go, streamer_stop, results)))
                start_processes(streamers)
                if not wait_events(s_ready, streamers, START_TIMEOUT, stop=sig.__bool__) \
                        and not sig:
                    problems.append("the streamers did not all connect in time")
            if sig and not streamers:
                problems.append("interrupted before the streamers started")
            t0 = time.monotonic()
            live = _Live(broker, t0)
            go.set()
            # 3. run, with live figures
            end = t0 + args.duration
            if streamers and not problems:
                while not sig:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    sig.sleep(min(1.0, left))
                    if not sig:
                        live.line("run")
            ran = time.monotonic() - t0
            # 4. streamers stop and report
            streamer_stop.set()
            got: list[Figures] = []  # a child that failed early may have reported already
            _collect(results, got, "streamer", streamers, RESULT_TIMEOUT)
            problems += join_processes(streamers, RESULT_TIMEOUT)
            # 5. the groups drain: wait until each has acked everything published
            drain_time, stats = _drain(broker, collectors, live, sig, args.drain_timeout)
            if not drained(stats):
                abort.set()  # skipped or timed out: the collectors report what they have now
            # 6. collectors stop (each finishes its batch, then sees no more data)
            collector_stop.set()
            _collect(results, got, "collector", collectors, RESULT_TIMEOUT)
            problems += join_processes(collectors, RESULT_TIMEOUT)
            stats = live.line("end")
            published_total = topic_figures(stats)["published"]
            if drained(stats):
                drain_problem = None
            elif sig.count >= 2:
                drain_problem = "(drain skipped)"
            elif settled(stats):
                drain_problem = "(the rest was dead-lettered)"
            else:
                drain_problem = f"within {args.drain_timeout:g} s"
            ok = report(name, stats, [r for r in got if r["role"] == "streamer"],
                        [r for r in got if r["role"] == "collector"],
                        started=len(streamers), members_per_group=args.members,
                        problems=problems, ran=ran, drain_time=drain_time,
                        drain_problem=drain_problem, interrupted=bool(sig),
                        peak_rate=live.peak_rate, peak_used=live.peak_used)
        finally:
            streamer_stop.set()
            collector_stop.set()
            abort.set()
            go.set()
            join_processes(streamers + collectors, 5.0)
            if broker is not None:
                broker.close()
    if persist_dir is not None and broker is not None:
        ok = persistence_report(persist_dir, published_total) and ok
    left = segments.namespace_entries(name)
    if left:
        print(f"NOT CLEAN: left in {segments.SHM_DIR}: {', '.join(left)}")
        ok = False
    else:
        print(f"clean: nothing of broker {name!r} left in {segments.SHM_DIR}")
    print("RESULT: " + ("balanced - each group processed and acked every published message "
                        "exactly once" if ok else "NOT balanced (see above)"))
    return 0 if ok else 1
