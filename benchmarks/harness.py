"""The process harness shared by the cross-process benchmarks of this directory.

throughput.py, ack_throughput.py, scale.py, compare.py and persist_throughput.py
import it as `harness` (the scripts' directory is on sys.path, in spawned
children too). What is here:

- payloads: payload i is i as 8 little-endian bytes (INDEX) followed by fixed
  pseudo-random filler of its size (filler); payloads_crc gives the crc32 of a
  stream of them, which the parent compares with what a receiver computed;
  from EXACT_FROM bytes on, compare.py checks content by comparison instead
  (exact_bad: memcmp against the filler, ~10x cheaper than zlib's crc32);
- clocks: CLOCK_MONOTONIC (shared by all processes), getrusage CPU and context
  switches of this process, and measured(), a child's result over its span;
- processes: child() wraps a spawned child's body (an exception goes to the
  parent as {"error": traceback}); start_child, wait_event (a readiness Event),
  receive (a child's result), finish and reap (join, then kill what remains);
- the host: cross_cpu_ns(), a cache line's trip between two CPUs now (c2c.c);
- /dev/shm: leftovers(name), the segments of a broker that remain;
- results: median / rate_summary over repeats, baselines (building and checking
  payloads alone, in this process), run_info and write_json for --json.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import statistics
import struct
import subprocess
import sys
import time
import traceback
import zlib
from operator import methodcaller

INDEX = struct.Struct("<Q")
SHM_DIR = "/dev/shm"


# -- payloads -------------------------------------------------------------------


def filler(size: int) -> bytes:
    """The fixed part of every payload of this size (after its 8-byte index)."""
    return random.Random(size).randbytes(size - INDEX.size)


def payloads_crc(size: int, indices) -> int:
    """crc32 of the payloads of these indices, in this order."""
    fill, pack, crc32, crc = filler(size), INDEX.pack, zlib.crc32, 0
    for i in indices:
        crc = crc32(pack(i) + fill, crc)
    return crc


JOIN_MAX = 64 * 1024  # a larger b"".join would be an mmap, and page faults, per batch

# From this size on, a payload's content is checked by comparing it with what it
# must be (its length, and the filler after its index) rather than by crc32:
# zlib's crc32 runs at ~3.5 GB/s on the machine of docs/benchmarks.md (1.1 us per
# 4 KiB payload, more than pymq's whole transport of one), a comparison is a
# memcmp (~0.1 us). The comparison is the stronger check (no collisions) and,
# as the filler is the same in every payload, it checks everything the crc32
# of the stream did. Below it, crc32 is as cheap (64 B: ~50 ns, joined per
# batch ~30 ns a payload), and earlier runs stay comparable.
EXACT_FROM = 1024


def exact_bad(items, fill: bytes, size: int) -> int:
    """How many of these payloads are not INDEX + fill (size bytes in all)."""
    bad = len(items) - sum(map(methodcaller("startswith", fill, INDEX.size), items))
    if sum(map(len, items)) != len(items) * size:  # startswith: each is at least size long
        bad = sum(1 for p in items if len(p) != size or not p.startswith(fill, INDEX.size))
    return bad


def crc_batch(items, crc: int, joined: bool) -> int:
    """crc32 of a batch of payloads, in order, continuing crc: one call over
    their join if joined (batches of at most JOIN_MAX bytes), else one per payload."""
    if joined:
        return zlib.crc32(b"".join(items), crc)
    for p in items:
        crc = zlib.crc32(p, crc)
    return crc


# -- clocks -------------------------------------------------------------------------


def clock_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def cpu_ns() -> tuple[int, int]:
    """(user, system) CPU time of this process, in ns."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int(ru.ru_utime * 1e9), int(ru.ru_stime * 1e9)


def ctx_switches() -> tuple[int, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_nvcsw, ru.ru_nivcsw


def measured(start_cpu, start_cs, start_ns, end_ns) -> dict:
    """A child's span and its CPU time and context switches since start_cpu, start_cs."""
    user, system = cpu_ns()
    vol, invol = ctx_switches()
    return {"start_ns": start_ns, "end_ns": end_ns,
            "user_ns": user - start_cpu[0], "system_ns": system - start_cpu[1],
            "voluntary_switches": vol - start_cs[0], "involuntary_switches": invol - start_cs[1]}


# -- processes ------------------------------------------------------------------------


@contextlib.contextmanager
def child(conn):
    """The body of a spawned child: any exception is sent to the parent as
    {"error": traceback}; conn is closed at the end either way."""
    try:
        yield
    except BaseException:
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def start_child(ctx, procs: list, target, name: str, args: tuple):
    """Start target(*args, conn) in a process of its own (appended to procs);
    returns (process, the parent's end of conn)."""
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, name=name, args=args + (send,))
    proc.start()
    send.close()
    procs.append(proc)
    return proc, recv


def wait_event(event, proc, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not event.wait(0.2):
        if not proc.is_alive():
            raise RuntimeError(f"{what} exited ({proc.exitcode}) before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout} s")


def receive(conn, proc, what: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not conn.poll(0.2):
        if not proc.is_alive() and not conn.poll(0):
            raise RuntimeError(f"{what} exited ({proc.exitcode}) without a result")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no result after {timeout:.0f} s")
    out = conn.recv()
    if "error" in out:
        raise RuntimeError(f"{what} failed:\n{out['error']}")
    return out


def reap(procs) -> None:
    """Kill (and join) whatever of procs is still alive."""
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()


def finish(procs, timeout: float) -> None:
    """Join every process (up to timeout each), then reap the rest."""
    for proc in procs:
        proc.join(timeout)
    reap(procs)


# -- the host ---------------------------------------------------------------------------


_C2C = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c2c.c")


def cross_cpu_ns() -> float | None:
    """How long a cache line takes to move from CPU 0 to CPU 1 now, in ns
    (benchmarks/c2c.c, built with cc into build/ beside this checkout on the
    first call): on a VM it changes with where the host puts the vCPUs, and
    rates that move lines between CPUs follow it. None without two CPUs or a
    C compiler."""
    if (os.cpu_count() or 1) < 2:
        return None
    exe = os.path.join(os.path.dirname(os.path.dirname(_C2C)), "build", "c2c")
    try:
        if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(_C2C):
            os.makedirs(os.path.dirname(exe), exist_ok=True)
            subprocess.run([os.environ.get("CC", "cc"), "-O2", "-pthread", _C2C, "-o", exe],
                           check=True, capture_output=True, timeout=60)
        return float(subprocess.run([exe], check=True, capture_output=True, text=True,
                                    timeout=30).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


# -- /dev/shm -----------------------------------------------------------------------------


def leftovers(name: str) -> list[str]:
    """The files of broker `name` still in /dev/shm."""
    prefix = f"pymq.{name}."
    return sorted(f for f in os.listdir(SHM_DIR) if f.startswith(prefix))


# -- results ----------------------------------------------------------------------------------


PERSIST_POLL_S = 0.0005  # how often the parent polls a persistence writer's group
PERSIST_GROUP = "~persist"  # pymq._core.PERSIST_GROUP (harness does not import pymq at load)


def wait_persisted(broker, topic: str, acked: int, timeout: float) -> int:
    """Until the persistence writer of topic (its "~persist" group) has acked at
    least `acked` messages and has none pending or unread; returns the number of
    polls. Polling a figure another process moves: there is no event to wait on."""
    deadline, polls = time.monotonic() + timeout, 0
    while True:
        g = broker.stats()["topics"][topic]["groups"].get(PERSIST_GROUP)
        polls += 1
        if g is not None and g["acked"] >= acked and g["lag"] == 0 and g["pending"] == 0:
            return polls
        if time.monotonic() > deadline:
            raise RuntimeError(f"the persistence writer of {topic!r} did not catch up "
                               f"({acked} acked) in {timeout:g} s: {g}")
        time.sleep(PERSIST_POLL_S)


def median(runs: list[dict], key: str):
    return statistics.median(r[key] for r in runs)


def rate_summary(runs: list[dict]) -> dict:
    """Median msg/s of the runs and its range."""
    rates = [r["msg_per_s"] for r in runs]
    return {"msg_per_s": statistics.median(rates), "msg_per_s_min": min(rates),
            "msg_per_s_max": max(rates)}


def baselines(count: int, sizes=(64, 4096)) -> list[dict]:
    """What building and verifying (index, then crc32 or, from EXACT_FROM bytes,
    comparison) payloads one by one cost alone, in this process: part of each
    side's CPU per message, not the transport's."""
    out = []
    pack, unpack, crc32 = INDEX.pack, INDEX.unpack_from, zlib.crc32
    for size in sizes:
        fill, exact = filler(size), size >= EXACT_FROM
        t0 = time.process_time_ns()
        for i in range(count):
            p = pack(i) + fill
        t1 = time.process_time_ns()
        pool = [pack(i) + fill for i in range(1024)]  # verified cyclically: no page faults
        crc, bad = 0, 0
        t2 = time.process_time_ns()
        for i in range(count):
            p = pool[i & 1023]
            if unpack(p)[0] != i & 1023:
                raise AssertionError(i)
            if exact:
                if len(p) != size or not p.startswith(fill, 8):
                    bad += 1
            else:
                crc = crc32(p, crc)
        t3 = time.process_time_ns()
        if bad:
            raise AssertionError(bad)
        out.append({"payload_bytes": size, "build_us_per_msg": (t1 - t0) / count / 1e3,
                    "verify_us_per_msg": (t3 - t2) / count / 1e3})
    return out


def run_info() -> dict:
    """The head of a --json document: when, and on what."""
    import pymq
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": sys.version.split()[0],
            "platform": platform.platform(), "cpus": os.cpu_count(), "pymq": pymq.__version__}


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
