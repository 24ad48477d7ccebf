"""The floor under one pymq message, and what waiting costs.

    .venv/bin/python benchmarks/floor.py [--quick] [--part floor|bulk|wait|all] [--json PATH]
                                         [--no-callgrind] [--no-strace]

Part "floor" (one process, 64 B payloads, timeit-style loops: each statement run
N times in a compiled loop with the GC off, the minimum of R rounds, in ns per
operation, the empty loop included; differences cancel it):

  - references: an empty loop, a Python function call, a C builtin call (id(x),
    the cost of a call into a CPython C-API extension), a no-op cffi call
    (pymq._native's pmq_ring_layout_version, and a no-op cffi function with the
    signature of pmq_ring_publish, built at run time in a temp dir), creating
    a 64 B bytes object three ways;
  - publish: the bare native call lib.pmq_ring_publish(ring.h, parts, lens, 1,
    deadline, NULL) (parts, lens and a deadline of timeout 0 made once, parts
    pointing at the payload), the fast path pymq._fast.publish1 (ring.put1),
    _core.Ring.publish1, Client.publish;
  - receive: the bare native lib.pmq_member_read(ring.h, member, gen, b, 1,
    deadline, NULL, NULL): with no sink the ring copies the record into the
    buffer of b (a _core.Batch), as pmq_ring_read1 did before 9752a6a; no bytes
    object is made (cffi releases the GIL around the call, so a C sink could
    not make one; a Python sink through ffi.callback would measure the
    callback instead); the fast path's Reader.get1 (the same read with
    pymq._fast's sink, which copies each payload from the ring straight into
    its bytes object); _core.Ring.read(member, gen, batch, 1, 0) (the cold
    path's Python wrapper over the same native read: its deadline and error
    check; since 9752a6a nothing of _core sits between Subscription.get and
    pymq._fast, so this replaces _core.Reader.read1); Subscription.get.
  Each round publishes N messages and reads them back, so the ring never fills
  or runs dry (checked with the ring's counters after every loop). Then, unless
  --no-callgrind, the same loops run once under valgrind --tool=callgrind with a
  dump at every call of pmq_ns_size (a marker between loops), which gives
  instructions per operation (`perf stat -e instructions` is not supported in
  this KVM guest: no PMU).
  The wake-up's system call is measured on its own with ctypes:
  syscall(SYS_futex, FUTEX_WAKE) on a word in a MAP_SHARED mapping with nobody
  waiting (what a publisher pays when it must wake a reader, minus the wake
  itself), against a ctypes call of libc abs() and os.getppid() / os.sched_yield().

Part "floor" also measures the bulk path (issue 15; alone: --part bulk), ns per
message, one process: the floor is a memcpy of a batch's payload bytes (1024
records of 64 B, 64 of 4 KiB: compare.py's bulk rows), from one buffer to
another, both in cache, through a cffi function of the run-time module
(copy(dst, src, n): memcpy); beside it Subscription.get_batch(n) and, under
it, the fast path's Reader.get_batch, and Client.publish_batch(record_size=)
and, under it, pymq._fast.publish_buffer. Each round publishes 4 MiB of
records (so that the reads find them in the last-level cache, as compare.py's
8 MiB rings do) and reads them back (checked with the ring's counters); then one more batch is
compared, data and seqs, with what was published. These loops are timed in
this process's CPU time (time.process_time), not wall time: a long loop on a
shared machine is preempted, and the preemption is not the bulk path's.

Part "wait" (separate processes, spawn):

  (a) idle: a subscriber blocked in sub.get(timeout=None) on an idle topic; its
      CPU time over the window from /proc/PID/task/*/schedstat (ns) and psutil
      (ticks), its context switches, and the ring's wakeups counter.
  (b) streams: a publisher process paced (busy-wait on CLOCK_MONOTONIC) at a
      fast rate (100 k msg/s: 10 us between messages, inside the reader's 20 us
      spin) and at slow rates (20 k/s, 1 k/s: the reader sleeps between
      messages); a subscriber process gets them one by one. Payload = its
      publish time (8 bytes) + index + filler (64 B): the subscriber computes the
      one-way latency of each. Window 1 (no tracer): CPU per message of each
      side (schedstat), voluntary context switches, the ring's wakeups (publishes
      that had to FUTEX_WAKE a reader), latency percentiles. Window 2: strace -c
      on each process (if strace exists; --no-strace skips) counts system calls.
  (c) the spin's cost is the subscriber's CPU per message at 1 k/s, against the
      bound of 20 us per wait (2 % of a core at 1 kHz).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import json
import mmap
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import traceback

import psutil

import pymq
from pymq import _core

SHM_DIR = "/dev/shm"
PAYLOAD = 64
TOPIC = "floor"


def clock_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def fmt_ns(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


# -- part 1: the floor ---------------------------------------------------------


BULK_FFI: list = []  # the no-op module's ffi, once built (the bulk floor's buffers)


def build_noop():
    """A cffi module with no-op functions, compiled into a temp dir; None on failure."""
    try:
        from cffi import FFI
        ffi = FFI()
        sig = ("int64_t noop6(void *r, const char *const *parts, const uint32_t *lens, "
               "uint32_t count, void *d, const void *hooks)")
        ffi.cdef("int noop(void);" + sig + ";"
                 "void copy(void *dst, const void *src, size_t n);")
        ffi.set_source("_pymq_floor_noop",
                       "#include <string.h>\n"
                       "static int noop(void) { return 0; }\n"
                       "static void copy(void *dst, const void *src, size_t n)"
                       " { memcpy(dst, src, n); }\n"
                       "static " + sig + "\n"
                       "{ (void)r; (void)parts; (void)lens; (void)count; (void)d; (void)hooks;"
                       " return 0; }\n")
        tmp = tempfile.mkdtemp(prefix="pymq_floor_", dir="/tmp")
        path = ffi.compile(tmpdir=tmp, verbose=False)
        spec = importlib.util.spec_from_file_location("_pymq_floor_noop", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        BULK_FFI.append(mod.ffi)  # for the bulk floor's buffers
        return mod.lib, tmp
    except Exception as exc:  # no compiler: the pmq_ring_layout_version figure remains
        print(f"  (no-op cffi module not built: {exc!r})", file=sys.stderr)
        return None, None


class Floor:
    """The objects every loop uses; one broker, one topic, one subscriber."""

    def __init__(self, ring_bytes: int):
        self.name = f"floor{os.getpid()}"
        self.broker = pymq.Broker(pymq.BrokerConfig(name=self.name, ring_bytes=ring_bytes))
        self.sub = self.broker.subscribe(TOPIC)
        self.ring = self.broker._ring(TOPIC)
        self.reader = self.sub._reader
        self.noop_lib, self.noop_dir = build_noop()
        big = bytes(range(128))
        lib, ffi, r = _core.lib, _core.ffi, self.reader
        payload = bytes(range(PAYLOAD))
        # the bare calls' arguments, made once: the payload's pointer and length,
        # a deadline of timeout 0 (a call that does not wait leaves it as it is),
        # and a batch with a buffer the read copies into (the subscription's own
        # member: the fast path and the client read the same member in turn)
        self.batch = _core.Batch(64, 1 << 16)
        keep = ffi.from_buffer(payload)
        self.ns = {
            "lib": lib, "lv": lib.pmq_ring_layout_version,
            "pub": lib.pmq_ring_publish, "rd": lib.pmq_member_read, "NULL": ffi.NULL,
            "parts": ffi.new("char *[]", [keep]), "keep": keep,
            "lens": ffi.new("uint32_t[]", [PAYLOAD]), "d0": _core.deadline(0),
            "h": self.ring.h, "m": r.member, "g": r.gen, "b": self.batch.b, "batch": self.batch,
            "payload": payload, "big": big, "mv": memoryview(big)[:PAYLOAD],
            "view": self.batch.view, "ring": self.ring, "reader": r, "client": self.broker,
            "sub": self.sub, "T": TOPIC, "x": 1, "put1": self.ring.put1, "get1": r.get1,
            "f0": lambda: None, "f2": lambda a, b: None,
        }
        if self.noop_lib is not None:
            self.ns["noop"], self.ns["noop6"] = self.noop_lib.noop, self.noop_lib.noop6

    def counts(self) -> tuple[int, int]:
        s = self.ring.stats()
        return s["published"], sum(g["delivered"] for g in s["groups_detail"])

    def close(self) -> None:
        self.sub.unsubscribe()
        self.broker.close()
        if self.noop_dir:
            shutil.rmtree(self.noop_dir, ignore_errors=True)
        left = glob.glob(os.path.join(SHM_DIR, f"*{self.name}*"))
        if left:
            raise RuntimeError(f"segments left in {SHM_DIR}: {left}")


# (key, label, statement); "publish"/"read" loops are checked against the counters.
REFERENCES = [
    ("empty", "empty loop (`pass`)", "pass"),
    ("pycall0", "Python function call `f()`", "f0()"),
    ("pycall2", "Python function call `f(a, b)`", "f2(payload, x)"),
    ("builtin", "C builtin call `id(x)` (C-API extension)", "id(payload)"),
    ("cffi0", "no-op cffi call `lib.pmq_ring_layout_version()`", "lv()"),
    ("cffi_noop", "no-op cffi call `noop()` (built here)", "noop()"),
    ("cffi_noop_pub", "no-op cffi call, publish's signature `noop6(h, parts, lens, 1, d0, NULL)`",
     "noop6(h, parts, lens, 1, d0, NULL)"),
    ("bytes_slice", "64 B bytes: `big[0:64]`", "big[0:64]"),
    ("bytes_mv", "64 B bytes: `bytes(mv)` (memoryview of 64)", "bytes(mv)"),
    ("bytes_cbuf", "64 B bytes: `view[0:64]` (ffi.buffer slice of a read buffer)", "view[0:64]"),
]
PAIRS = [  # (publish side, receive side), run back to back with the same N
    (("native_publish", "native `lib.pmq_ring_publish(h, parts, lens, 1, d0, NULL)`",
      "pub(h, parts, lens, 1, d0, NULL)"),
     ("native_read", "native `lib.pmq_member_read(h, m, g, b, 1, d0, NULL, NULL)` (into b's buffer)",
      "rd(h, m, g, b, 1, d0, NULL, NULL)")),
    (("fast_publish", "`pymq._fast.publish1`, bound (`ring.put1(payload, 0)`)", "put1(payload, 0)"),
     ("fast_read", "`pymq._fast.Reader.get1(0)` (native + the bytes)", "get1(0)")),
    (("ring_publish1", "`_core.Ring.publish1(payload, 0)`", "ring.publish1(payload, 0)"),
     ("ring_read", "`_core.Ring.read(m, g, batch, 1, 0)` (cold path: native into b's buffer)",
      "ring.read(m, g, batch, 1, 0)")),
    (("client_publish", "`Client.publish(topic, payload)`", "client.publish(T, payload)"),
     ("sub_get", "`Subscription.get(timeout=1.0)`", "sub.get(1.0)")),
]


def run_floor(n: int, rounds: int, ring_bytes: int) -> dict:
    fl = Floor(ring_bytes)
    try:
        ns = fl.ns
        refs = [r for r in REFERENCES if not r[2].startswith("noop") or fl.noop_lib is not None]
        timers = {key: timeit.Timer(stmt, globals=ns) for key, _, stmt in refs}
        for pub, rd in PAIRS:
            timers[pub[0]] = timeit.Timer(pub[2], globals=ns)
            timers[rd[0]] = timeit.Timer(rd[2], globals=ns)
        best: dict[str, float] = {}
        # warm-up: one small round of everything (and the ring's first lap)
        for key, t in timers.items():
            t.timeit(1000)
        p, d = fl.counts()
        if p != d:
            raise RuntimeError(f"warm-up: published {p}, delivered {d}")
        for _ in range(rounds):
            for key, _, _ in refs:
                best[key] = min(best.get(key, float("inf")), timers[key].timeit(n) / n * 1e9)
            for pub, rd in PAIRS:
                p0, d0 = fl.counts()
                dt = timers[pub[0]].timeit(n)
                p1, d1 = fl.counts()
                if p1 - p0 != n:
                    raise RuntimeError(f"{pub[0]}: published {p1 - p0} of {n}")
                best[pub[0]] = min(best.get(pub[0], float("inf")), dt / n * 1e9)
                dt = timers[rd[0]].timeit(n)
                p2, d2 = fl.counts()
                if d2 - d1 != n or p2 != d2:
                    raise RuntimeError(f"{rd[0]}: read {d2 - d1} of {n}, lag {p2 - d2}")
                best[rd[0]] = min(best.get(rd[0], float("inf")), dt / n * 1e9)
        # the last payload read is the one published
        fl.broker.publish(TOPIC, ns["payload"])
        if fl.sub.get(1.0) != ns["payload"]:
            raise RuntimeError("payload mismatch")
        labels = {k: lab for k, lab, _ in refs}
        for pub, rd in PAIRS:
            labels[pub[0]], labels[rd[0]] = pub[1], rd[1]
        return {"n": n, "rounds": rounds, "ns_per_op": best, "labels": labels}
    finally:
        fl.close()


# -- part 1b: the bulk path's floor -------------------------------------------------

BULK_SIZES = (64, 4096)
BULK_RECORDS = {64: 1024, 4096: 64}  # a call's records: as compare.py's bulk rows (256 KiB at most)
BULK_ROUND_BYTES = 4 << 20  # ring bytes a round publishes and reads back: within the L3, as in
                            # compare.py's 8 MiB ring, so the reads do not measure DRAM
BULK_RING_BYTES = 8 << 20   # the ring's size: compare.py's (the default). Rounds go round it, so
                            # a larger one (64 MiB, before 2026-12-07) is written from DRAM: a
                            # 4 KiB copy into it measured 327 ns against 129 into 8 MiB
# The memcpy's buffers are 64-byte aligned and not 1-63 bytes apart modulo 4 KiB: glibc
# 2.36 copies 4 KiB and more with `rep movsb` here (AMD EPYC, FSRM), which measured about
# 15x slower (2.7 against 43 GB/s) with the destination 8-24 bytes past the source modulo
# 4 KiB; memcpy8 is the copy with the destination 8 bytes off (not modulo 4 KiB: as fast).
ALIGN_NOTE = ("memcpy between 64-byte aligned buffers; destination 8 bytes off in brackets")


def run_bulk_floor(rounds: int, ring_bytes: int) -> dict:
    """ns per message of the bulk path, one process: a memcpy of a batch's
    payload bytes (n x size from one buffer to another, both in cache: the
    floor), against Subscription.get_batch(n) and the fast path's
    Reader.get_batch under it, and Client.publish_batch(record_size=size) and
    _fast.publish_buffer under it. Each round publishes `calls` batches and
    reads them back, checked with the ring's counters; the last batch read is
    compared with what was published, and its seqs must be contiguous."""
    lib, tmp = build_noop()  # its copy(): memcpy, a cffi call
    if lib is None:
        return {}
    shutil.rmtree(tmp, ignore_errors=True)  # loaded: the files are no longer needed
    ffi = BULK_FFI[-1]
    from pymq import _fast
    name = f"floorb{os.getpid()}"
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=ring_bytes))
    try:
        sub = broker.subscribe(TOPIC)
        ring, reader = broker._ring(TOPIC), sub._reader
        best: dict[str, float] = {}
        for size in BULK_SIZES:
            per = BULK_RECORDS[size]
            calls = max(4, BULK_ROUND_BYTES // (per * (size + 24)))
            fill = bytes((7 * k + 3) & 0xFF for k in range(size - 8))
            rows = bytearray(b"".join(i.to_bytes(8, "little") + fill for i in range(per)))
            # the memcpy's source and destination: 64-byte aligned (the best case; one
            # more figure with the destination 8 bytes off, see ALIGN_NOTE)
            arena = bytearray(rows) * 3 + bytes(256)
            a = ffi.from_buffer(arena)
            a0 = (-int(ffi.cast("uintptr_t", a))) % 64
            src, dst, dst8 = a + a0, a + a0 + len(rows) + 64, a + a0 + len(rows) + 64 + 8
            ns = {"pb": broker.publish_batch, "T": TOPIC, "rows": rows, "S": size, "N": per,
                  "fpub": _fast.publish_buffer, "addr": ring.addr, "gb": sub.get_batch,
                  "rgb": reader.get_batch, "cpy": lib.copy, "dst": dst, "src": src,
                  "dst8": dst8, "arena": arena, "L": len(rows)}
            pairs = [(f"publish_batch_{size}", "pb(T, rows, record_size=S)",
                      f"get_batch_{size}", "gb(N, 1.0)"),
                     (f"fast_publish_buffer_{size}", "fpub(addr, T, rows, S, None, 0)",
                      f"fast_get_batch_{size}", "rgb(N, 0)")]
            cpu = time.process_time  # this process's CPU time: a shared machine's preemptions
            memcpy = timeit.Timer("cpy(dst, src, L)", globals=ns, timer=cpu)  # do not count
            memcpy8 = timeit.Timer("cpy(dst8, src, L)", globals=ns, timer=cpu)
            timers = [(pk, timeit.Timer(ps, globals=ns, timer=cpu), rk,
                       timeit.Timer(rs, globals=ns, timer=cpu)) for pk, ps, rk, rs in pairs]
            for pk, pt, rk, rt in timers:  # warm-up
                pt.timeit(10)
                rt.timeit(10)
            memcpy.timeit(100)
            for _ in range(rounds):
                best[f"memcpy_{size}"] = min(best.get(f"memcpy_{size}", float("inf")),
                                             memcpy.timeit(calls) / calls / per * 1e9)
                best[f"memcpy8_{size}"] = min(best.get(f"memcpy8_{size}", float("inf")),
                                              memcpy8.timeit(calls) / calls / per * 1e9)
                for pk, pt, rk, rt in timers:
                    p0 = ring.stats()["published"]
                    dt = pt.timeit(calls)
                    st = ring.stats()
                    if st["published"] - p0 != calls * per:
                        raise RuntimeError(f"{pk}: published {st['published'] - p0} of {calls * per}")
                    best[pk] = min(best.get(pk, float("inf")), dt / calls / per * 1e9)
                    dt = rt.timeit(calls)
                    st = ring.stats()
                    d = sum(g["delivered"] for g in st["groups_detail"])
                    if d != st["published"]:
                        raise RuntimeError(f"{rk}: delivered {d} of {st['published']}")
                    best[rk] = min(best.get(rk, float("inf")), dt / calls / per * 1e9)
            last = st["published"]
            broker.publish_batch(TOPIC, rows, record_size=size)
            b = sub.get_batch(per, 1.0)
            if bytes(b.data) != bytes(rows) or b.seqs.tolist() != list(range(last + 1, last + 1 + per)):
                raise RuntimeError(f"bulk {size} B: the batch read is not the batch published")
        return {"rounds": rounds, "records": BULK_RECORDS, "round_bytes": BULK_ROUND_BYTES,
                "ns_per_msg": best, "note": ALIGN_NOTE}
    finally:
        broker.close()
        left = glob.glob(os.path.join(SHM_DIR, f"*{name}*"))
        if left:
            raise RuntimeError(f"segments left in {SHM_DIR}: {left}")


def derive(b: dict) -> dict:
    """The derived figures (ns per message); the empty loop cancels in differences."""
    noop = b.get("cffi_noop_pub", b["cffi0"])
    d = {
        "loop": b["empty"],
        "cffi_call": b["cffi0"] - b["empty"],
        "cffi_call_publish_signature": noop - b["empty"],
        "c_api_call": b["builtin"] - b["empty"],
        "bytes_64": b["bytes_cbuf"] - b["empty"],
        "publish_native_work": b["native_publish"] - noop,   # lock + copy + commit (+ wake check)
        "read_native_work": b["native_read"] - b["cffi0"],   # member/group checks + copy out
        "publish_core_wrapper": b["ring_publish1"] - b["fast_publish"],
        "publish_client_wrapper": b["client_publish"] - b["fast_publish"],  # it calls put1 itself
        "publish_python_total": b["client_publish"] - b["native_publish"],
        "read_core_wrapper": b["ring_read"] - b["native_read"],  # _core's Python over the cffi read
        "read_client_wrapper": b["sub_get"] - b["fast_read"],  # it is get1 itself (8a79afe)
        "read_python_total": b["sub_get"] - b["native_read"],
        "fast_publish_vs_cffi": b["fast_publish"] - b["native_publish"],  # C-API call + GIL vs cffi
        "fast_read_vs_cffi_and_bytes": b["fast_read"] - b["native_read"] - b["bytes_cbuf"] + b["empty"],
        "publish_floor": noop + b["bytes_cbuf"] - 2 * b["empty"],
        "read_floor": b["cffi0"] + b["bytes_cbuf"] - 2 * b["empty"],
        "client_publish": b["client_publish"] - b["empty"],
        "sub_get": b["sub_get"] - b["empty"],
    }
    return d


def syscall_costs(n: int, rounds: int) -> dict:
    """ns per call: ctypes overhead, FUTEX_WAKE with no waiter (shared and private
    word), FUTEX_WAIT on a changed value (returns EAGAIN at once), getppid, sched_yield."""
    libc = ctypes.CDLL(None, use_errno=True)
    sysc = libc.syscall
    sysc.restype = ctypes.c_long
    SYS_futex = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
    if SYS_futex is None:
        return {}
    mm = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
    word = ctypes.c_uint32.from_buffer(mm)
    addr = ctypes.addressof(word)
    private = ctypes.c_uint32(0)
    paddr = ctypes.addressof(private)
    ns = {"sysc": sysc, "F": SYS_futex, "a": ctypes.c_void_p(addr), "pa": ctypes.c_void_p(paddr),
          "abs": libc.abs, "os": os, "N": None}
    stmts = {
        "ctypes_abs": "abs(0)",
        "futex_wake_shared": "sysc(F, a, 1, 1, N, N, 0)",          # FUTEX_WAKE, shared word
        "futex_wake_private": "sysc(F, pa, 129, 1, N, N, 0)",      # FUTEX_WAKE|PRIVATE
        "futex_wait_eagain": "sysc(F, a, 0, 7, N, N, 0)",           # FUTEX_WAIT, value differs
        "getppid": "os.getppid()",
        "sched_yield": "os.sched_yield()",
        "empty": "pass",
    }
    timers = {k: timeit.Timer(s, globals=ns) for k, s in stmts.items()}
    best = {}
    for _ in range(rounds):
        for k, t in timers.items():
            best[k] = min(best.get(k, float("inf")), t.timeit(n) / n * 1e9)
    rc = sysc(SYS_futex, ns["a"], 1, 1, None, None, 0)
    del word
    mm.close()
    best["futex_wake_rc"] = rc
    best["futex_wake_shared_net"] = best["futex_wake_shared"] - best["ctypes_abs"]
    best["futex_wake_private_net"] = best["futex_wake_private"] - best["ctypes_abs"]
    best["futex_wait_eagain_net"] = best["futex_wait_eagain"] - best["ctypes_abs"]
    return best


CG_KEYS = ["empty", "pycall0", "builtin", "cffi0", "bytes_cbuf",
           "native_publish", "native_read", "client_publish", "sub_get"]


def callgrind_child(n: int) -> None:
    """Under callgrind: the loops once each, pmq_ns_size() between them
    (callgrind --dump-before=pmq_ns_size dumps the counters there)."""
    fl = Floor(4 * 1024 * 1024)
    try:
        ns = fl.ns
        stmts = {k: s for k, _, s in REFERENCES}
        for pub, rd in PAIRS:
            stmts[pub[0]], stmts[rd[0]] = pub[2], rd[2]
        timers = [timeit.Timer(stmts[k], globals=ns) for k in CG_KEYS]
        for t in timers:  # warm-up (pairs stay balanced: publish before read)
            t.timeit(200)
        mark = _core.lib.pmq_ns_size
        mark()
        for t in timers:
            t.timeit(n)
            mark()
        p, d = fl.counts()
        if p != d:
            raise RuntimeError(f"published {p}, delivered {d}")
    finally:
        fl.close()


def run_callgrind(n: int) -> dict | None:
    vg = shutil.which("valgrind")
    if vg is None:
        return None
    tmp = tempfile.mkdtemp(prefix="pymq_cg_", dir="/tmp")
    out = os.path.join(tmp, "cg.out")
    cmd = [vg, "--tool=callgrind", "--dump-before=pmq_ns_size",
           f"--callgrind-out-file={out}", sys.executable, os.path.abspath(__file__),
           "--callgrind-child", str(n)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            print(p.stderr[-2000:], file=sys.stderr)
            return None
        parts = []
        for f in glob.glob(out + ".*"):
            m = re.search(r"\.(\d+)$", f)
            if m:
                with open(f) as fh:
                    tot = next((int(line.split()[1]) for line in fh
                                if line.startswith(("totals:", "summary:"))), None)
                parts.append((int(m.group(1)), tot))
        parts.sort()
        last = [t for _, t in parts[-len(CG_KEYS):]]
        if len(last) != len(CG_KEYS):
            return None
        return {"n": n, "instructions_per_op": {k: t / n for k, t in zip(CG_KEYS, last)}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- part 2: waiting -----------------------------------------------------------


def task_cpu_ns(pid: int) -> int:
    """CPU time of every thread of pid, in ns (/proc/PID/task/*/schedstat)."""
    total = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(f) as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def snapshot(pid: int) -> dict:
    p = psutil.Process(pid)
    t = p.cpu_times()
    c = p.num_ctx_switches()
    return {"sched_ns": task_cpu_ns(pid), "psutil_s": t.user + t.system,
            "vol": c.voluntary, "invol": c.involuntary}


def delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


def idle_child(name, ready, conn) -> None:
    try:
        client = pymq.connect(name)
        sub = client.subscribe(TOPIC)
        ready.set()
        payload = sub.get(timeout=None)
        conn.send({"got": len(payload), "end_ns": clock_ns()})
        sub.unsubscribe()
        client.close()
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def stream_sub(name, count, ready, conn) -> None:
    try:
        client = pymq.connect(name)
        sub = client.subscribe(TOPIC)
        ready.set()
        get = sub.get
        recv = [0] * count
        lat = [0] * count
        for i in range(count):
            p = get(30.0)
            now = clock_ns()
            if int.from_bytes(p[8:16], "little") != i:
                raise RuntimeError(f"message {i}: got index {int.from_bytes(p[8:16], 'little')}")
            recv[i] = now
            lat[i] = now - int.from_bytes(p[0:8], "little")
        conn.send({"recv": recv, "lat": lat})
        sub.unsubscribe()
        client.close()
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def stream_pub(name, rate, count, ready, go, conn) -> None:
    try:
        client = pymq.connect(name)
        publish = client.publish
        fill = bytes(PAYLOAD - 16)
        ready.set()
        go.wait(60)
        period = 1e9 / rate
        start = clock_ns()
        spent = [0] * count
        for i in range(count):
            due = start + int(i * period)
            now = clock_ns()
            if due - now > 300_000:
                time.sleep((due - now - 200_000) / 1e9)
            while now < due:
                now = clock_ns()
            publish(TOPIC, now.to_bytes(8, "little") + i.to_bytes(8, "little") + fill)
            spent[i] = clock_ns() - now  # payload build + publish call
        conn.send({"start": start, "end": clock_ns(), "spent": spent})
        client.close()
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def recv_or_fail(conn, timeout: float):
    if not conn.poll(timeout):
        raise RuntimeError("child did not report")
    r = conn.recv()
    if "error" in r:
        raise RuntimeError(r["error"])
    return r


def pct(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def run_idle(ctx, seconds: float) -> dict:
    name = f"floorw{os.getpid()}"
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=1 << 20))
    try:
        ring = broker._ring(TOPIC)
        ready = ctx.Event()
        a, b = ctx.Pipe(duplex=False)
        child = ctx.Process(target=idle_child, args=(name, ready, b))
        child.start()
        if not ready.wait(60):
            raise RuntimeError("idle subscriber not ready")
        time.sleep(0.5)  # into its futex wait
        w0, s0, t0 = ring.stats()["wakeups"], snapshot(child.pid), clock_ns()
        time.sleep(seconds)
        s1, w1, t1 = snapshot(child.pid), ring.stats()["wakeups"], clock_ns()
        broker.publish(TOPIC, b"x" * PAYLOAD)
        r = recv_or_fail(a, 10)
        child.join(10)
        d = delta(s0, s1)
        return {"seconds": (t1 - t0) / 1e9, "cpu_ns": d["sched_ns"], "psutil_cpu_s": d["psutil_s"],
                "voluntary_switches": d["vol"], "involuntary_switches": d["invol"],
                "wakeups": w1 - w0, "woken_by_publish_ms": (r["end_ns"] - t1) / 1e6}
    finally:
        broker.close()


def strace_window(pids: list, seconds: float) -> dict:
    """strace -c -f on each pid for `seconds`: {pid: {syscall: calls}}."""
    st = shutil.which("strace")
    if st is None:
        return {}
    tmp = tempfile.mkdtemp(prefix="pymq_strace_", dir="/tmp")
    procs = []
    for pid in pids:
        out = os.path.join(tmp, f"{pid}.txt")
        procs.append((pid, out, subprocess.Popen([st, "-c", "-f", "-p", str(pid), "-o", out],
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    time.sleep(seconds)
    res = {}
    for pid, out, p in procs:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        calls = {}
        try:
            with open(out) as fh:
                for line in fh:
                    f = line.split()
                    # % time, seconds, usecs/call, calls, [errors], syscall
                    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                        calls[f[-1]] = int(f[3])
        except OSError:
            pass
        res[pid] = calls
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def run_stream(ctx, rate: int, w1: float, w2: float, use_strace: bool) -> dict:
    name = f"floors{os.getpid()}_{rate}"
    warm, tail = 0.5, 0.5
    count = int(rate * (warm + w1 + 0.3 + (w2 if use_strace else 0) + tail))
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=16 << 20))
    try:
        ring = broker._ring(TOPIC)
        ready_s, ready_p, go = ctx.Event(), ctx.Event(), ctx.Event()
        sa, sb = ctx.Pipe(duplex=False)
        pa, pb = ctx.Pipe(duplex=False)
        sub = ctx.Process(target=stream_sub, args=(name, count, ready_s, sb))
        sub.start()
        if not ready_s.wait(60):
            raise RuntimeError("subscriber not ready")
        pub = ctx.Process(target=stream_pub, args=(name, rate, count, ready_p, go, pb))
        pub.start()
        if not ready_p.wait(60):
            raise RuntimeError("publisher not ready")
        go.set()
        time.sleep(warm)
        st0 = ring.stats()
        a0, b0, t0 = snapshot(sub.pid), snapshot(pub.pid), clock_ns()
        time.sleep(w1)
        a1, b1, t1 = snapshot(sub.pid), snapshot(pub.pid), clock_ns()
        st1 = ring.stats()
        traced = {}
        if use_strace:
            time.sleep(0.3)
            traced = strace_window([sub.pid, pub.pid], w2)
        pr = recv_or_fail(pa, 120)
        sr = recv_or_fail(sa, 120)
        pub.join(10)
        sub.join(10)
        msgs = st1["published"] - st0["published"]
        ds, dp = delta(a0, a1), delta(b0, b1)
        lat = [l for r, l in zip(sr["recv"], sr["lat"]) if t0 <= r < t1]
        spent = pr["spent"]
        # which messages fell in window 1: those received in it (for the publish-call times)
        idx = [i for i, r in enumerate(sr["recv"]) if t0 <= r < t1]
        spent_w = [spent[i] for i in idx]
        s1 = st1["groups_detail"][0] if st1["groups_detail"] else {}
        return {
            "rate": rate, "window_s": (t1 - t0) / 1e9, "messages": msgs,
            "achieved_rate": msgs / ((t1 - t0) / 1e9),
            "wakeups": st1["wakeups"] - st0["wakeups"],
            "publish_waits": st1["publish_waits"] - st0["publish_waits"],
            "lag_end": s1.get("lag"),
            "sub_cpu_us_per_msg": ds["sched_ns"] / msgs / 1e3,
            "pub_cpu_us_per_msg": dp["sched_ns"] / msgs / 1e3,
            "sub_cpu_share": ds["sched_ns"] / (t1 - t0),
            "pub_cpu_share": dp["sched_ns"] / (t1 - t0),
            "sub_vol_switches": ds["vol"], "sub_invol_switches": ds["invol"],
            "pub_vol_switches": dp["vol"], "pub_invol_switches": dp["invol"],
            "latency_us": {"p50": pct(lat, .5) / 1e3, "p99": pct(lat, .99) / 1e3,
                           "p99.9": pct(lat, .999) / 1e3, "n": len(lat)},
            "publish_call_us": {"p50": pct(spent_w, .5) / 1e3, "p99": pct(spent_w, .99) / 1e3},
            "strace_seconds": w2 if traced else 0,
            "strace_sub": traced.get(sub.pid), "strace_pub": traced.get(pub.pid),
        }
    finally:
        broker.close()
        left = glob.glob(os.path.join(SHM_DIR, f"*{name}*"))
        if left:
            raise RuntimeError(f"segments left in {SHM_DIR}: {left}")


# -- reporting ---------------------------------------------------------------


def report_floor(fl: dict, sc: dict, cg: dict | None) -> None:
    b, lab = fl["ns_per_op"], fl["labels"]
    print(f"\n== floor: one process, 64 B, min of {fl['rounds']} rounds x {fl['n']:,} (ns/op, loop included)")
    for k, v in b.items():
        extra = f"   {cg['instructions_per_op'][k]:,.0f} instr" if cg and k in cg["instructions_per_op"] else ""
        print(f"  {lab[k]:<72} {fmt_ns(v):>8}{extra}")
    d = derive(b)
    print("\n  derived (ns per message, empty loop subtracted):")
    for k, v in d.items():
        print(f"    {k:<32} {fmt_ns(v):>8}")
    if sc:
        print("\n  system calls through ctypes (ns/call; *_net = minus a ctypes call of abs()):")
        for k, v in sc.items():
            print(f"    {k:<32} {fmt_ns(v) if isinstance(v, float) else v:>8}")
    if cg:
        i = cg["instructions_per_op"]
        print(f"\n  callgrind ({cg['n']:,} per loop), instructions per op minus the empty loop:")
        for k in CG_KEYS[1:]:
            print(f"    {k:<32} {i[k] - i['empty']:>8,.0f}")


def report_bulk(bk: dict) -> None:
    if not bk:
        print("\n== bulk floor: not measured (no compiler for the memcpy module)")
        return
    b = bk["ns_per_msg"]
    print(f"\n== bulk floor: one process, min of {bk['rounds']} rounds of "
          f"{bk['round_bytes'] >> 20} MiB of records (ns of CPU per message, loop included)")
    for size in BULK_SIZES:
        per, floor = bk["records"][size], b[f"memcpy_{size}"]
        print(f"  {size} B, {per} records a call: memcpy of the payload bytes {fmt_ns(floor)} "
              f"(destination 8 bytes off: {fmt_ns(b[f'memcpy8_{size}'])})")
        for key, label in ((f"fast_get_batch_{size}", "Reader.get_batch (fast path)"),
                           (f"get_batch_{size}", "Subscription.get_batch"),
                           (f"fast_publish_buffer_{size}", "_fast.publish_buffer (fast path)"),
                           (f"publish_batch_{size}", "Client.publish_batch")):
            print(f"    {label:<36} {fmt_ns(b[key]):>8}  {b[key] / floor:6.1f}x the memcpy")
    print(f"  ({bk['note']})")


def report_wait(idle: dict, streams: list) -> None:
    print(f"\n== idle subscriber blocked in get(timeout=None), {idle['seconds']:.1f} s:")
    print(f"  CPU {idle['cpu_ns'] / 1e3:,.0f} us (schedstat; psutil {idle['psutil_cpu_s'] * 1e3:.0f} ms) "
          f"= {idle['cpu_ns'] / (idle['seconds'] * 1e9) * 100:.4f} % of a core; "
          f"voluntary switches {idle['voluntary_switches']}, involuntary {idle['involuntary_switches']}; "
          f"ring wakeups {idle['wakeups']}; woken {idle['woken_by_publish_ms']:.2f} ms after the publish")
    print("\n== streams (window 1, no tracer): per message, us")
    for s in streams:
        print(f"  {s['rate']:>7,}/s: {s['messages']:,} msgs in {s['window_s']:.1f} s "
              f"({s['achieved_rate']:,.0f}/s); wakeups {s['wakeups']:,} "
              f"({s['wakeups'] / max(1, s['messages']):.3f}/msg); publish waits {s['publish_waits']}")
        print(f"      sub CPU {s['sub_cpu_us_per_msg']:.2f} us/msg ({s['sub_cpu_share'] * 100:.1f} % core), "
              f"vol/invol switches {s['sub_vol_switches']}/{s['sub_invol_switches']}; "
              f"pub CPU {s['pub_cpu_us_per_msg']:.2f} us/msg ({s['pub_cpu_share'] * 100:.1f} % core, "
              f"pacing included), switches {s['pub_vol_switches']}/{s['pub_invol_switches']}")
        l, pc = s["latency_us"], s["publish_call_us"]
        print(f"      latency p50 {l['p50']:.1f} p99 {l['p99']:.1f} p99.9 {l['p99.9']:.1f} us (n={l['n']:,}); "
              f"publish call p50 {pc['p50']:.2f} p99 {pc['p99']:.2f} us")
        if s["strace_seconds"]:
            for side in ("sub", "pub"):
                c = s[f"strace_{side}"] or {}
                print(f"      strace {s['strace_seconds']:.0f} s, {side}: {sum(c.values()):,} syscalls {c}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts and short windows (~30 s)")
    ap.add_argument("--part", choices=["floor", "bulk", "wait", "all"], default="all",
                    help="floor (with bulk), bulk (the bulk floor alone), wait, or all")
    ap.add_argument("--json")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--callgrind-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.callgrind_child:
        callgrind_child(args.callgrind_child)
        return 0
    q = args.quick
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "load_before": os.getloadavg(), "quick": q}
    if args.part in ("floor", "all"):
        n, rounds = (20_000, 3) if q else (200_000, 7)
        fl = run_floor(n, rounds, 64 << 20)
        sc = syscall_costs(n // 2, rounds)
        cg = None if args.no_callgrind else run_callgrind(2_000 if q else 20_000)
        bk = run_bulk_floor(3 if q else 15, BULK_RING_BYTES)
        out.update(floor=fl, derived=derive(fl["ns_per_op"]), syscalls=sc, callgrind=cg, bulk=bk)
        report_floor(fl, sc, cg)
        report_bulk(bk)
    if args.part == "bulk":
        bk = run_bulk_floor(3 if q else 15, BULK_RING_BYTES)
        out.update(bulk=bk)
        report_bulk(bk)
    if args.part in ("wait", "all"):
        ctx = mp.get_context("spawn")
        idle = run_idle(ctx, 3.0 if q else 10.0)
        w1, w2 = (1.0, 1.0) if q else (4.0, 3.0)
        streams = [run_stream(ctx, rate, w1, w2, not args.no_strace)
                   for rate in (100_000, 20_000, 1_000)]
        out.update(idle=idle, streams=streams)
        report_wait(idle, streams)
    out["load_after"] = os.getloadavg()
    print(f"\nload average before {out['load_before'][0]:.2f}, after {out['load_after'][0]:.2f} (1 min)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
