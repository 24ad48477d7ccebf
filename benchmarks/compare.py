"""pymq side by side with Python IPC peers, in one command.

    .venv/bin/python benchmarks/compare.py [--quick] [--repeat R] [--scenario X]...
                                           [--json PATH] [--chart PATH]
                                           [--pymq-from LABEL=PATH]... [--pin]

Transports (benchmarks/peers.py says how each is used): pymq, multiprocessing.Queue,
multiprocessing.Pipe, faster-fifo, pyzmq PUSH/PULL over ipc://, posix_ipc.MessageQueue.

Scenarios:
  A  1 producer process -> 1 consumer process; 64 B and 4 KiB payloads; single
     calls, and batched calls (pymq publish_many / get_many(64); each peer's own
     batching, see peers.py; posix_ipc has none: n/a). msg/s, MB/s, CPU per
     message on each side.
  B  ping-pong between two processes, 64 B: one-way latency (round trip / 2),
     p50, p99 and p99.9 over the measured round trips, after warm-up round trips.
  C  4 producer processes -> 1 consumer, 64 B, single and batched: aggregate msg/s.
  D  at-least-once, pymq only: 1 producer -> 1 member of an ack group
     (subscribe_with_ack): get + msg.ack(), get_many(64) + ack_many, and
     get_batch + batch.ack(), against the same runs with a plain member
     (subscribe(topic, group)), the producer calling as in the row (publish /
     publish_many / publish_batch).
  bulk rows (issue 15), pymq only, in A (64 B, 4 KiB), C (4 producers) and D:
     each producer calls Client.publish_batch(topic, rows, record_size=size)
     with the payloads as the rows of one numpy array (min(1024, 256 KiB /
     size) of them a call; the index column written by one ufunc a call), the
     consumer Subscription.get_batch(the same count) -> pymq.Batch, with no
     Python object per message. Their targets compare them with each peer's
     best mode of the same case (single or batched, whichever is faster).
  E  persistence, pymq only: 1 producer -> 1 consumer (a group of its own), 64 B
     and 4 KiB, batched, with persistence on (fsync "interval", 1 s, into a new
     temp folder) against the same runs with it off. With it on, the run ends
     when the consumer has everything and the writer has put everything on disk
     (the parent polls the "~persist" group until lag and pending are 0); the
     parent then checks that the "~persist" group acked every message and that
     the log holds exactly that many lines.

Method (as benchmarks/throughput.py): every run has channels of its own (a pymq
broker with a unique name and 64 MiB rings, a queue, pipes, a socket path),
removed after the run; the script fails if anything is left. The consumer
opens its end and signals an Event; then each producer opens its end, sends one
warm-up message (or batch of one) and signals; the consumer receives the
warm-up messages and signals; then one "go" Event starts them all (no sleeps).
msg/s = messages / (consumer's last receive - first producer's start), on
CLOCK_MONOTONIC. CPU per message is getrusage(RUSAGE_SELF) user + system time:
the consumer's from "go" to its last receive; each producer's from "go" until
the consumer has everything (a producer waits for that on an Event before it
reads its CPU time, so background threads, such as multiprocessing.Queue's
feeder thread or zmq's I/O thread, are counted), summed over producers.

Verification of every run: payload i of producer k starts with (k << 40 | i) as
8 little-endian bytes, then fixed filler. The consumer checks that each
producer's messages arrive in its order, none missing or repeated, checks their
content, and checks that nothing more is there after the count. Content: under
1 KiB (harness.EXACT_FROM), a crc32 per producer stream that the parent compares
with that of what was sent; from 1 KiB, each payload compared with what it must
be (length, and the filler after the index: a memcmp), since zlib's crc32 here
costs more per 4 KiB payload than pymq's transport and would hide the
transports' differences behind the check (see harness.EXACT_FROM). A bulk
consumer checks every batch: its seqs equal to the next ones expected (one
memoryview comparison in C), every record of the size, the index of the first
and last record of each run of one producer's records (publish_batch puts a
call's records back to back), and the content, under 1 KiB by a crc32 of each
run's bytes into its producer's stream crc (ISA-L's crc32 from the isal
package when it is installed, the same values as zlib's, about 3x faster over
a batch's 64 KiB; zlib's otherwise), from 1 KiB by one memcmp of the run
against the records expected, built as the producer builds them. In ping-pong the pinger
compares every echo with what it sent, byte for byte, and the ponger checks the
order and crc32. pymq runs are checked against the broker's figures too.

Before every run, harness.cross_cpu_ns measures how long a cache line takes to
move from CPU 0 to CPU 1 (benchmarks/c2c.c), printed beside the run and kept in
its JSON: on the 2-vCPU VM of docs/benchmarks.md it reads about 50 ns or about
230 ns, for minutes at a time, as the host places the vCPUs, and fan-in (C)
follows it.

Runs are interleaved within each scenario: repeat 1 of every (case, transport),
then repeat 2, ..., the transports' order rotated each repeat, so that ratios
compare runs minutes apart at most on a noisy machine. The tables give medians
over --repeat runs (default 3). Each target's ratio is pymq's median / the best
peer's median (the best of the five peers in that case, or across the cases the
target names); the same ratio taken within each repeat gives its range, printed
in brackets, which shows how far the noise moves it. Targets print PASS or FAIL;
a FAIL is a finding (exit status 0), a run that fails its verification or leaves
anything behind is an error (non-zero).

pymq from other checkouts (--pymq-from LABEL=PATH, repeatable): each adds a
transport named LABEL, pymq as imported from the checkout at PATH (built in
place there: `python build.py`), run in every case pymq runs in, interleaved
and rotated with the others like any transport. Its runs are made by a helper
process, this script started in PATH with PYTHONPATH=PATH (`--run-one`): it
sets up the broker with that pymq and spawns the run's children, which import
pymq from PATH too, does the same run, checks and measurements as for pymq,
and hands the run's figures back. (The Broker starts its supervisor with
`python -m pymq.supervisor`, which puts the working folder first on sys.path:
so the helper works in PATH, and this checkout's own pymq is that of the
working folder's, if it has one.) So a change is measured before and after,
side by side with the peers, in one invocation, for example with
`--pymq-from before=/tmp/before --pymq-from after=/tmp/after`; a table per case
then gives each pymq's medians and ranges and its ratio to the first LABEL's
(of the medians, and the same ratio within each repeat), and the targets are
evaluated for each pymq against the same peers' runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from array import array

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py, peers.py (children too)

import harness as H  # noqa: E402  (same method as throughput.py: clocks, CPU, Events, payloads)
import pymq  # noqa: E402
import peers  # noqa: E402
import throughput as tp  # noqa: E402

INDEX = H.INDEX
SHIFT = 40                          # payload index = producer << SHIFT | i
MASK = (1 << SHIFT) - 1
WARM = 1 << 63                      # index of a warm-up message: WARM | producer
BATCH = 64
# Bulk rows (issue 15), pymq only: the producer publishes records of one buffer
# with Client.publish_batch(record_size=size), BULK_BYTES of them a call (at most
# BULK_MAX records), and the consumer reads pymq.Batch objects with
# Subscription.get_batch(BULK_MAX) (a subscription reads at most 1024 records and
# 256 KiB a call: pymq.client.READ_BATCH, READ_BUFFER). In a case tuple, the
# batch field BULK marks them.
BULK = 0
BULK_MAX = 1024
BULK_BYTES = 256 * 1024
PRODUCERS_C = 4
GROUP = "workers"                   # scenario D's group
START_TIMEOUT = tp.START_TIMEOUT
KIB = 1024

# Cases: key, scenario, payload bytes, producers, batch, ack, transports,
# messages (full run), messages (--quick). A full run's counts take pymq about
# 0.5-4 s a run and the slowest peer up to about 10 s on the 2-core machine of
# docs/benchmarks.md (the whole run, 3 repeats: about 10 minutes).
STREAM_CASES = [
    ("A 64 B single", "A", 64, 1, 1, False, peers.ALL, 800_000, 20_000),
    ("A 64 B batched", "A", 64, 1, BATCH, False, peers.ALL, 3_000_000, 64_000),
    ("A 4 KiB single", "A", 4 * KIB, 1, 1, False, peers.ALL, 300_000, 10_000),
    ("A 4 KiB batched", "A", 4 * KIB, 1, BATCH, False, peers.ALL, 500_000, 12_800),
    ("C 64 B single x4", "C", 64, PRODUCERS_C, 1, False, peers.ALL, 800_000, 20_000),
    ("C 64 B batched x4", "C", 64, PRODUCERS_C, BATCH, False, peers.ALL, 3_000_000, 64_000),
    ("A 64 B bulk", "A", 64, 1, BULK, False, ["pymq"], 30_000_000, 256_000),
    ("A 4 KiB bulk", "A", 4 * KIB, 1, BULK, False, ["pymq"], 2_000_000, 25_600),
    ("C 64 B bulk x4", "C", 64, PRODUCERS_C, BULK, False, ["pymq"], 30_000_000, 256_000),
    ("D plain single", "D", 64, 1, 1, False, ["pymq"], 800_000, 20_000),
    ("D ack single", "D", 64, 1, 1, True, ["pymq"], 800_000, 20_000),
    ("D plain batched", "D", 64, 1, BATCH, False, ["pymq"], 3_000_000, 64_000),
    ("D ack batched", "D", 64, 1, BATCH, True, ["pymq"], 3_000_000, 64_000),
    ("D plain bulk", "D", 64, 1, BULK, False, ["pymq"], 20_000_000, 256_000),
    ("D ack bulk", "D", 64, 1, BULK, True, ["pymq"], 20_000_000, 256_000),
    ("E off 64 B batched", "E", 64, 1, BATCH, False, ["pymq"], 3_000_000, 64_000),
    ("E on 64 B batched", "E", 64, 1, BATCH, False, ["pymq"], 3_000_000, 64_000),
    ("E off 4 KiB batched", "E", 4 * KIB, 1, BATCH, False, ["pymq"], 500_000, 12_800),
    ("E on 4 KiB batched", "E", 4 * KIB, 1, BATCH, False, ["pymq"], 500_000, 12_800),
]
# ping-pong: payload bytes, warm-up round trips, measured round trips (full, quick)
PINGPONG = ("B ping-pong 64 B", 64, (2_000, 20_000), (200, 2_000))
SCENARIOS = ["A", "B", "C", "D", "E"]

# pymq from other checkouts (--pymq-from LABEL=PATH): label -> checkout folder,
# in the order given (the first is the reference of the before/after ratios)
FROM: dict[str, str] = {}

# --pin: each stream run's consumer on the last CPU, its producers on the others
# (an experiment, to take the scheduler's placement out of a comparison; the
# published runs are not pinned, as no peer is)
PIN = False


def pin(proc, consumer: bool) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(proc.pid, cpus[-1:] if consumer else cpus[:-1])


def pymq_like(impl: str) -> bool:
    """pymq, from this checkout or from another (--pymq-from)."""
    return impl == "pymq" or impl in FROM


def transports(case) -> list[str]:
    """The transports of a case: its own, and the --pymq-from ones wherever pymq
    runs (but the bulk rows: a checkout from before issue 15 has no bulk API)."""
    return list(case[6]) + (list(FROM) if "pymq" in case[6] and case[4] != BULK else [])


def persisted(case_key: str) -> bool:
    return case_key.startswith("E on")


def bulk_records(size: int) -> int:
    """Records per publish_batch call of a bulk row."""
    return max(1, min(BULK_MAX, BULK_BYTES // size))


def mode_of(batch: int) -> str:
    return "single" if batch == 1 else "bulk" if batch == BULK else "batched"


def targets_spec():
    """(label, kind, case(s), mode, threshold): what the issue asks of pymq."""
    return [
        ("A 64 B single >= 2x best single-message peer", "tput", ["A 64 B single"], ">=", 2.0),
        ("A 64 B batched >= 6x best peer in any mode", "tput",
         ["A 64 B batched", "A 64 B single"], ">=", 6.0),
        ("A 4 KiB single >= 2x best peer", "tput", ["A 4 KiB single"], ">=", 2.0),
        ("A 4 KiB batched >= 2x best peer", "tput", ["A 4 KiB batched"], ">=", 2.0),
        ("B p50 <= 0.7x best peer's", "lat", "p50", "<=", 0.7),
        ("B p99 <= 1x best peer's", "lat", "p99", "<=", 1.0),
        ("C single x4 >= 2x best peer", "tput", ["C 64 B single x4"], ">=", 2.0),
        ("C batched x4 >= 2x best peer", "tput", ["C 64 B batched x4"], ">=", 2.0),
        ("D ack single >= 50% of plain single", "ack", ("D ack single", "D plain single"), ">=", 0.5),
        ("D ack batched >= 50% of plain batched", "ack", ("D ack batched", "D plain batched"), ">=", 0.5),
        ("E 64 B on >= 50% of off", "persist", ("E on 64 B batched", "E off 64 B batched"), ">=", 0.5),
        ("E 4 KiB on >= 50% of off", "persist", ("E on 4 KiB batched", "E off 4 KiB batched"), ">=", 0.5),
        # issue 15: bulk messaging (get_batch, publish_batch) and fan-in
        ("A 64 B bulk >= 10x best peer's best 64 B mode", "tput",
         ["A 64 B bulk", "A 64 B single", "A 64 B batched"], ">=", 10.0),
        ("A 4 KiB bulk >= 3x best peer's best 4 KiB mode", "tput",
         ["A 4 KiB bulk", "A 4 KiB single", "A 4 KiB batched"], ">=", 3.0),
        ("C single x4 >= 1.5x best peer", "tput", ["C 64 B single x4"], ">=", 1.5),
        ("C bulk x4 >= 10x best peer's best mode", "tput",
         ["C 64 B bulk x4", "C 64 B single x4", "C 64 B batched x4"], ">=", 10.0),
        ("D ack single >= 75% of plain single", "ack", ("D ack single", "D plain single"), ">=", 0.75),
        ("D ack bulk >= 75% of plain bulk", "ack", ("D ack bulk", "D plain bulk"), ">=", 0.75),
    ]


now_ns = H.clock_ns


def minflt() -> int:
    """Minor page faults of this process so far (first touches of shared memory, say)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def payload_of(k: int, i: int, fill: bytes) -> bytes:
    return INDEX.pack(k << SHIFT | i) + fill


def expected_crc(size: int, k: int, count: int) -> int:
    """crc32 of producer k's stream of count payloads (as H.payloads_crc, in
    chunks of records built with numpy when it is there: tens of millions of
    payloads for the bulk rows)."""
    base = k << SHIFT  # base | i == base + i: i < 2 ** SHIFT
    try:
        import numpy as np
    except ImportError:
        return H.payloads_crc(size, range(base, base + count))
    if size % 8 or size < 8:
        return H.payloads_crc(size, range(base, base + count))
    chunk = max(1, (1 << 20) // size)
    rows = bulk_rows(np, size, chunk)
    ramp, crc = np.arange(chunk, dtype=np.uint64), 0
    for b in range(0, count, chunk):
        n = min(chunk, count - b)
        np.add(ramp[:n], base | b, out=rows[:n, 0])
        crc = zlib.crc32(rows[:n], crc)
    return crc


def bulk_rows(np, size: int, n: int):
    """n payloads of size bytes as rows of a (n, size / 8) uint64 array: the
    filler in place, column 0 (the index) to be set."""
    rows = np.empty((n, size // 8), dtype="<u8")
    rows[:] = np.frombuffer(INDEX.pack(0) + H.filler(size), dtype="<u8")
    return rows


def bulk_crc32():
    """The crc32 a bulk consumer runs over each batch's data: ISA-L's (isal,
    PCLMUL folding: the same values as zlib's, about 3x faster on the large
    buffers of a batch), else zlib's; and its name."""
    try:
        from isal import isal_zlib
        return isal_zlib.crc32, "isal"
    except ImportError:
        return zlib.crc32, "zlib"


# -- the child processes: streams (A, C, D) -------------------------------------------


def producer(impl, handle, k, size, batch, count, ready, go, done, conn) -> None:
    """Send `count` payloads of producer k, then wait until the consumer has all."""
    with H.child(conn):
        s = peers.open_sender(impl, handle, k)
        try:
            fill, pack, base, topic = H.filler(size), INDEX.pack, k << SHIFT, s.topic
            warm = pack(WARM | k) + fill
            if batch == BULK:
                return _bulk_producer(s, k, size, count, warm, ready, go, done, conn)
            if batch == 1:
                s.send(topic, warm) if topic is not None else s.send(warm)
            else:
                s.send_many(topic, [warm]) if topic is not None else s.send_many([warm])
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            flt, cs, cpu, t0 = minflt(), H.ctx_switches(), H.cpu_ns(), now_ns()
            if batch == 1:
                send = s.send
                if topic is not None:
                    for i in range(count):
                        send(topic, pack(base | i) + fill)
                else:
                    for i in range(count):
                        send(pack(base | i) + fill)
            else:
                send_many = s.send_many
                if topic is not None:
                    for b in range(0, count, batch):
                        send_many(topic, [pack(base | i) + fill for i in range(b, min(count, b + batch))])
                else:
                    for b in range(0, count, batch):
                        send_many([pack(base | i) + fill for i in range(b, min(count, b + batch))])
            t1 = now_ns()
            # Everything this process does for the run (feeder and I/O threads
            # included) is over when the consumer has the last message.
            if not done.wait(budget_s(count * PRODUCERS_C, size)):
                raise RuntimeError("the consumer never finished")
            out = H.measured(cpu, cs, t0, t1)
            out["minflt"] = minflt() - flt
        finally:
            s.close()
        conn.send(out)


def _bulk_producer(s, k, size, count, warm, ready, go, done, conn) -> None:
    """Producer k of a bulk row (pymq): publish_batch of bulk_records(size)
    records a call, from one numpy array whose rows are the payloads (their
    filler set once, the index column written per call by one ufunc)."""
    import numpy as np
    publish_batch, topic = s.client.publish_batch, s.topic
    per = bulk_records(size)
    rows, ramp, base = bulk_rows(np, size, per), np.arange(per, dtype=np.uint64), k << SHIFT
    col = rows[:, 0]
    publish_batch(topic, warm, record_size=size)
    ready.set()
    if not go.wait(START_TIMEOUT):
        raise RuntimeError("no go signal")
    flt, cs, cpu, t0 = minflt(), H.ctx_switches(), H.cpu_ns(), now_ns()
    for b in range(0, count, per):
        n = min(per, count - b)
        np.add(ramp[:n], base | b, out=col[:n])
        publish_batch(topic, rows[:n], record_size=size)
    t1 = now_ns()
    if not done.wait(budget_s(count * PRODUCERS_C, size)):
        raise RuntimeError("the consumer never finished")
    out = H.measured(cpu, cs, t0, t1)
    out["minflt"] = minflt() - flt
    conn.send(out)


def _bulk_loop(get_batch, ack, count, producers, size, nxt, crcs, first_seq):
    """Bulk receives (pymq's get_batch) until count messages; returns
    (received, disorder, first_bad, acked, bad). Every batch is checked: its
    seqs contiguous with the previous batch's; every record size bytes; each
    producer's records in its order (the index of the first and the last
    record of every run of one producer's records, which publish_batch put
    back to back); content: under H.EXACT_FROM bytes a crc32 of the batch's
    data per producer run (into crcs, compared by the parent with that of what
    was sent: it covers every byte of every payload, the indices included),
    from it the data compared with what it must be (one memcmp of the batch
    against the records expected, built as the producer builds them). An ack
    subscription's batch is then acked in one call (batch.ack()). Also returns
    where the loop's time went: ns in get_batch, in batch.ack() and in the rest
    (the checks), a clock read on each side of each call (about 1024 messages)."""
    import numpy as np
    unpack, crc32 = INDEX.unpack_from, bulk_crc32()[0]
    per_call, exact = bulk_records(size), size >= H.EXACT_FROM
    per = count // producers
    if exact:  # the records expected, as the producer builds them; compared by one memcmp
        want_bytes = bytearray(per_call * size)
        want = np.frombuffer(want_bytes, dtype="<u8").reshape(per_call, size // 8)
        want[:] = bulk_rows(np, size, 1)
        want_col, ramp = want[:, 0], np.arange(per_call, dtype=np.uint64)
    # the seqs expected, a window of them at a time (a memoryview of format Q, as
    # batch.seqs: compared item by item in C, about 1 ns a seq)
    window, at = min(1 << 16, count + per_call), 0
    expect = memoryview(np.arange(first_seq, first_seq + window, dtype=np.uint64)).cast("B").cast("Q")
    got, disorder, first_bad, acked, bad = 0, 0, None, 0, 0
    clock, in_get, in_ack, start = time.perf_counter_ns, 0, 0, time.perf_counter_ns()
    while got < count:
        t = clock()
        b = get_batch(per_call)
        in_get += clock() - t
        n, data = len(b), b.data
        if at + n > window:  # the next window, from the next seq expected
            seq0 = expect[at] if at < window else expect[window - 1] + 1
            expect = memoryview(np.arange(seq0, seq0 + window, dtype=np.uint64)).cast("B").cast("Q")
            at = 0
        if b.seqs != expect[at:at + n]:
            disorder += 1
            first_bad = ("seqs", expect[at], b.seqs[0]) if first_bad is None else first_bad
        at += n
        if b.record_size != size or len(data) != n * size:
            bad += n
        else:
            j = 0
            while j < n:  # one run of one producer's records at a time
                v = unpack(data, j * size)[0]
                k, i = v >> SHIFT, v & MASK
                if k >= producers:
                    disorder += 1
                    first_bad = ("producer", v) if first_bad is None else first_bad
                    j += 1
                    continue
                run = max(1, min(n - j, per_call - i % per_call, per - i))
                if i != nxt[k] or unpack(data, (j + run - 1) * size)[0] != v + run - 1:
                    disorder += 1
                    first_bad = (k, nxt[k], i) if first_bad is None else first_bad
                    run = 1
                part = data[j * size:(j + run) * size]
                if exact:
                    np.add(ramp[:run], v, out=want_col[:run])
                    if not want_bytes.startswith(part):  # memcmp of the run's bytes
                        bad += run
                else:
                    crcs[k] = crc32(part, crcs[k])
                nxt[k] = i + run
                j += run
        if ack:
            t = clock()
            acked += b.ack()
            in_ack += clock() - t
        got += n
    split = {"get": in_get, "ack": in_ack, "rest": clock() - start - in_get - in_ack}
    return got, disorder, first_bad, acked, bad, split


def _single_loop(recv, tup, ack, count, producers, size, nxt, crcs):
    """count single receives; returns (disorder, first_bad, bad). Content by
    crc32 into crcs, or from H.EXACT_FROM bytes by comparison (bad counts it)."""
    unpack, crc32 = INDEX.unpack_from, zlib.crc32
    fill, exact = H.filler(size), size >= H.EXACT_FROM
    disorder, first_bad, bad = 0, None, 0
    if producers == 1 and not tup:  # A and D single: the common case, lean; ack or not, the same checks
        i0, crc = nxt[0], crcs[0]
        for i in range(i0, i0 + count):
            m = recv()
            p = m.payload if ack else m
            if unpack(p)[0] != i:
                disorder += 1
                first_bad = (i, unpack(p)[0]) if first_bad is None else first_bad
            if exact:
                if len(p) != size or not p.startswith(fill, 8):
                    bad += 1
            else:
                crc = crc32(p, crc)
            if ack:
                m.ack()
        nxt[0], crcs[0] = i0 + count, crc
        return disorder, first_bad, bad
    for _ in range(count):
        if ack:
            m = recv()
            p = m.payload
        else:
            p = recv()
            if tup:
                p = p[0]
        v = unpack(p)[0]
        k, i = v >> SHIFT, v & MASK
        if i != nxt[k]:
            disorder += 1
            first_bad = (k, nxt[k], i) if first_bad is None else first_bad
        nxt[k] = i + 1
        if exact:
            if len(p) != size or not p.startswith(fill, 8):
                bad += 1
        else:
            crcs[k] = crc32(p, crcs[k])
        if ack:
            m.ack()
    return disorder, first_bad, bad


def _batch_loop(recv_many, ack_many, count, size, nxt, crcs):
    """Batched receives until count messages; returns (received, disorder,
    first_bad, acked, bad). Content as in _single_loop, crc32 joined per batch."""
    unpack, crc32 = INDEX.unpack_from, zlib.crc32
    small = size * BATCH <= H.JOIN_MAX
    fill, exact = H.filler(size), size >= H.EXACT_FROM
    got, disorder, first_bad, acked, bad = 0, 0, None, 0, 0
    while got < count:
        msgs = recv_many()
        items = [m.payload for m in msgs] if ack_many is not None else msgs
        n = len(items)
        first = unpack(items[0])[0]
        k, i0 = first >> SHIFT, first & MASK
        if exact:
            bad += H.exact_bad(items, fill, size)
        if i0 == nxt[k] and [unpack(p)[0] for p in items] == list(range(first, first + n)):
            if not exact:
                crcs[k] = H.crc_batch(items, crcs[k], small)
            nxt[k] = i0 + n
        else:  # several producers' messages in one batch, or out of order
            for p in items:
                v = unpack(p)[0]
                k, i = v >> SHIFT, v & MASK
                if i != nxt[k]:
                    disorder += 1
                    first_bad = (k, nxt[k], i) if first_bad is None else first_bad
                nxt[k] = i + 1
                if not exact:
                    crcs[k] = crc32(p, crcs[k])
        if ack_many is not None:
            acked += ack_many(msgs)
        got += n
    return got, disorder, first_bad, acked, bad


def consumer(impl, handle, size, producers, batch, count, ack, group,
             ready, warm, go, done, conn) -> None:
    """Receive count messages from `producers` producers (after their warm-up ones)."""
    with H.child(conn):
        r = peers.open_receiver(impl, handle, batch, group=group, ack=ack)
        if batch == BULK:  # the bulk loop's numpy, imported before the clock starts (~0.1 s)
            import numpy  # noqa: F401
        try:
            ready.set()
            warmed, first_seq = 0, None
            while warmed < producers:
                if batch == BULK:
                    b = r.sub.get_batch(bulk_records(size))
                    for m in b:
                        if unpack_index(m) & ~WARM >= producers or not unpack_index(m) & WARM:
                            raise RuntimeError(f"expected a warm-up message, got index "
                                               f"{unpack_index(m):#x}")
                    if ack:
                        b.ack()
                    warmed += len(b)
                    first_seq = b.seqs[len(b) - 1] + 1
                    continue
                if batch == 1:
                    x = r.recv()
                    msgs = [x[0] if r.recv_tuple else x]
                else:
                    msgs = r.recv_many()
                for m in msgs:
                    v = unpack_index(m.payload if ack else m)
                    if not v & WARM or v & ~WARM >= producers:
                        raise RuntimeError(f"expected a warm-up message, got index {v:#x}")
                    if ack:
                        m.ack()
                warmed += len(msgs)
            warm.set()
            nxt, crcs = [0] * producers, [0] * producers
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            flt, cs, cpu, t0 = minflt(), H.ctx_switches(), H.cpu_ns(), now_ns()
            acked, split = 0, None
            if batch == 1:
                disorder, first_bad, bad = _single_loop(r.recv, r.recv_tuple, ack, count, producers,
                                                        size, nxt, crcs)
                got = count
            elif batch == BULK:
                got, disorder, first_bad, acked, bad, split = _bulk_loop(
                    r.sub.get_batch, ack, count, producers, size, nxt, crcs, first_seq)
            else:
                got, disorder, first_bad, acked, bad = _batch_loop(
                    r.recv_many, r.sub.ack_many if ack else None, count, size, nxt, crcs)
            t1 = now_ns()
            done.set()
            out = H.measured(cpu, cs, t0, t1)
            out.update(received=got, per_producer=nxt, crcs=crcs, bad=bad, disorder=disorder,
                       first_bad=repr(first_bad), acked=acked, minflt=minflt() - flt,
                       extra=r.extra(), split=split)
        finally:
            r.close()
        conn.send(out)


def unpack_index(p) -> int:
    return INDEX.unpack_from(p)[0]


# -- the child processes: ping-pong (B) -------------------------------------------------


@contextlib.contextmanager
def _pingpong_ends(impl, recv_handle, send_handle, bound, connect, ready, go):
    """One side of ping-pong: open its receiving end and signal `bound`; once
    the other side's is there too (`connect`), open the sending end, signal
    `ready` and wait for `go`. Yields (receiver, sender); closes both after."""
    r = peers.open_receiver(impl, recv_handle, 1)
    try:
        bound.set()
        if not connect.wait(START_TIMEOUT):
            raise RuntimeError("no connect signal")
        s = peers.open_sender(impl, send_handle, 0)
        try:
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            yield r, s
        finally:
            s.close()
    finally:
        r.close()


def pinger(impl, handles, size, warmup, rounds, bound, connect, ready, go, conn) -> None:
    """Send payload j, wait for its echo; time each round trip."""
    with H.child(conn):
        with _pingpong_ends(impl, handles[1], handles[0], bound, connect, ready, go) as (r, s):
            fill, pack, topic, tup = H.filler(size), INDEX.pack, s.topic, r.recv_tuple
            send, recv = s.send, r.recv
            lat = array("q", bytes(8 * rounds))
            bad, first_bad = 0, None
            flt, cs, cpu = minflt(), H.ctx_switches(), H.cpu_ns()
            t_start = now_ns()
            for j in range(warmup + rounds):
                p = pack(j) + fill
                if topic is not None:
                    t0 = now_ns()
                    send(topic, p)
                    q = recv()
                    t1 = now_ns()
                else:
                    t0 = now_ns()
                    send(p)
                    q = recv()
                    t1 = now_ns()
                    if tup:
                        q = q[0]
                if q != p:
                    bad += 1
                    first_bad = (j, q[:8]) if first_bad is None else first_bad
                if j >= warmup:
                    lat[j - warmup] = t1 - t0
            t_end = now_ns()
            out = H.measured(cpu, cs, t_start, t_end)
            out.update(rtt_ns=lat.tobytes(), bad=bad, first_bad=repr(first_bad),
                       minflt=minflt() - flt, extra=r.extra())
        conn.send(out)


def ponger(impl, handles, size, total, bound, connect, ready, go, conn) -> None:
    """Echo every payload back; check order and crc32 of the stream."""
    with H.child(conn):
        with _pingpong_ends(impl, handles[0], handles[1], bound, connect, ready, go) as (r, s):
            unpack, crc32, topic, tup = INDEX.unpack_from, zlib.crc32, s.topic, r.recv_tuple
            send, recv = s.send, r.recv
            crc, disorder = 0, 0
            flt, cs, cpu, t0 = minflt(), H.ctx_switches(), H.cpu_ns(), now_ns()
            for j in range(total):
                p = recv()
                if tup:
                    p = p[0]
                if topic is not None:
                    send(topic, p)
                else:
                    send(p)
                if unpack(p)[0] != j:
                    disorder += 1
                crc = crc32(p, crc)
            out = H.measured(cpu, cs, t0, now_ns())
            out.update(crc=crc, disorder=disorder, minflt=minflt() - flt)
        conn.send(out)


# -- the parent ------------------------------------------------------------------------


def budget_s(count: int, size: int) -> float:
    """Generous: a failed run must end, not hang (the slowest peer does ~50 k msg/s)."""
    return 60.0 + count * 20e-6 + count * size / 50e6


def run_stream(ctx, case, impl: str, count: int, crc_cache: dict) -> dict:
    key, scen, size, producers, batch, ack, _, _, _ = case
    per = count // producers
    count = per * producers
    persist = persisted(key)
    ch = peers.make_channel(ctx, impl, producers, size, persist=persist)
    procs = []
    caught_up_ns = None
    try:
        sub_ready, sub_warm, go, done = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
        group = GROUP if scen == "D" else None
        cons, cons_conn = H.start_child(ctx, procs, consumer, "cmp-consumer",
                                        (impl, ch.handle, size, producers, batch, count, ack, group,
                                         sub_ready, sub_warm, go, done))
        if PIN:
            pin(cons, True)
        H.wait_event(sub_ready, cons, "consumer", START_TIMEOUT)
        prods = []
        for k in range(producers):
            ready = ctx.Event()
            proc, conn = H.start_child(ctx, procs, producer, f"cmp-producer-{k}",
                                       (impl, ch.handle, k, size, batch, per, ready, go, done))
            if PIN:
                pin(proc, False)
            prods.append((proc, conn, ready))
        for k, (proc, _, ready) in enumerate(prods):
            H.wait_event(ready, proc, f"producer {k}", START_TIMEOUT)
        H.wait_event(sub_warm, cons, "consumer (warm-up)", START_TIMEOUT)
        if persist:  # the writer has put the warm-up message on disk: it is running
            H.wait_persisted(ch.broker, "t", producers, START_TIMEOUT)
        go.set()
        budget = budget_s(count, size)
        c = H.receive(cons_conn, cons, "consumer", budget)
        if persist:
            H.wait_persisted(ch.broker, "t", count + producers, budget)
            caught_up_ns = now_ns()
        ps = [H.receive(conn, proc, f"producer {k}", budget) for k, (proc, conn, _) in enumerate(prods)]
        H.finish(procs, START_TIMEOUT)
        topic = ch.broker.stats()["topics"]["t"] if impl == "pymq" else None
        if persist:
            ch.broker.close()  # the log complete and closed before it is counted
            log_lines = count_log_lines(ch.persistence_dir, "t")
    finally:
        H.reap(procs)
        left = ch.close()
    if left:
        raise RuntimeError(f"{key} {impl}: left behind: {left}")

    problems = []
    if c["received"] != count or c["disorder"] or c["extra"] or c["bad"]:
        problems.append(f"received {c['received']} of {count}, {c['disorder']} out of order "
                        f"(first {c['first_bad']}), {c['extra']} extra, {c['bad']} with wrong content")
    for k in range(producers):
        if c["per_producer"][k] != per:
            problems.append(f"producer {k}: {c['per_producer'][k]} of {per} in order")
        if size >= H.EXACT_FROM:
            continue  # compared one by one instead of crc32 (c["bad"])
        if (size, k, per) not in crc_cache:
            crc_cache[(size, k, per)] = expected_crc(size, k, per)
        want = crc_cache[(size, k, per)]
        if c["crcs"][k] != want:
            problems.append(f"producer {k}: crc32 {c['crcs'][k]:#x}, expected {want:#x}")
    extra = {}
    if topic is not None:
        sent = count + producers  # the warm-up messages too
        g = topic["groups"].get(GROUP) if scen == "D" else None
        if topic["published"] != sent:
            problems.append(f"topic published {topic['published']}, expected {sent}")
        if scen == "D":
            want = {"delivered": sent, "lag": 0}
            if ack:
                want.update(acked=sent, pending=0, redelivered=0, nacked=0, timeouts=0, dead_lettered=0)
                if batch != 1 and c["acked"] != count:
                    problems.append(f"ack_many or batch.ack() took effect for {c['acked']} of {count}")
            for name, value in want.items():
                if g is None or g[name] != value:
                    problems.append(f"group {name} = {None if g is None else g[name]}, expected {value}")
        if persist:
            g = topic["groups"].get(pymq._core.PERSIST_GROUP)
            if g is None or g["acked"] != sent or log_lines != sent:
                problems.append(f"persistence: writer acked {None if g is None else g['acked']}, "
                                f"log has {log_lines} lines, expected {sent}")
        extra = {"publish_waits": topic["publish_waits"], "publish_refusals": topic["publish_refusals"]}
    if problems:
        raise RuntimeError(f"{key} {impl}: verification failed:\n  " + "\n  ".join(problems))

    start = min(p["start_ns"] for p in ps)
    end = max(c["end_ns"], caught_up_ns or 0)
    elapsed = (end - start) / 1e9
    pub_cpu = sum(p["user_ns"] + p["system_ns"] for p in ps)
    return {"case": key, "scenario": scen, "impl": impl, "messages": count, "payload_bytes": size,
            "producers": producers, "batch": batch, "ack": ack, "elapsed_s": elapsed,
            "msg_per_s": count / elapsed, "MB_per_s": count * size / elapsed / 1e6,
            "producers_s": (max(p["end_ns"] for p in ps) - start) / 1e9,
            "pub_cpu_us_per_msg": pub_cpu / count / 1e3,
            "sub_cpu_us_per_msg": (c["user_ns"] + c["system_ns"]) / count / 1e3,
            "pub_sys_us_per_msg": sum(p["system_ns"] for p in ps) / count / 1e3,
            "sub_sys_us_per_msg": c["system_ns"] / count / 1e3,
            "sub_voluntary_switches": c["voluntary_switches"],
            "pub_voluntary_switches": sum(p["voluntary_switches"] for p in ps),
            "pub_minflt_per_1k_msgs": sum(p["minflt"] for p in ps) / count * 1e3,
            "sub_minflt_per_1k_msgs": c["minflt"] / count * 1e3,
            "writer_after_consumer_s": (max(0, caught_up_ns - c["end_ns"]) / 1e9
                                        if caught_up_ns else None),
            **({f"sub_{k}_ns_per_msg": v / count for k, v in c["split"].items()}
               if c.get("split") else {}),
            "verified": True, **extra}


def count_log_lines(root: str, topic: str) -> int:
    d = os.path.join(root, topic)
    n = 0
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
    return n


def run_elsewhere(label: str, scen: str, case, count, crc_cache: dict) -> dict:
    """One run of the --pymq-from transport `label`: this script, in a helper
    process with PYTHONPATH=its checkout (--run-one), does the run as pymq's
    (set-up, children, checks) and hands back its figures. The payloads'
    expected crc32s go with it (computed here once, as for the other runs)."""
    path = FROM[label]
    spec = {"scenario": scen, "case": list(case) if case else None, "count": count, "crcs": []}
    if case is not None and case[2] < H.EXACT_FROM:
        size, producers = case[2], case[3]
        per = count // producers
        for k in range(producers):
            if (size, k, per) not in crc_cache:
                crc_cache[(size, k, per)] = expected_crc(size, k, per)
            spec["crcs"].append([size, k, per, crc_cache[(size, k, per)]])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([path] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    total = (sum(count) * 10 if scen == "B" else count)
    size = PINGPONG[1] if scen == "B" else case[2]
    with tempfile.TemporaryDirectory(prefix="pymq-cmp-from-") as tmp:
        out = os.path.join(tmp, "run.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--run-one", json.dumps(spec),
               "--run-one-out", out, "--run-one-pymq", path] + (["--pin"] if PIN else [])
        # cwd: the Broker starts its supervisor as `python -m pymq.supervisor`,
        # which puts the working folder first on its sys.path
        p = subprocess.run(cmd, env=env, cwd=path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=budget_s(total * PRODUCERS_C, size) + 2 * START_TIMEOUT)
        if p.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"{case[0] if case else PINGPONG[0]} {label} (pymq from {path}): the "
                               f"helper failed ({p.returncode}):\n{p.stderr[-4000:]}")
        with open(out) as f:
            r = json.load(f)
    r["impl"] = label
    return r


def run_one(spec_json: str, out_path: str, path: str) -> int:
    """--run-one: inside the helper of run_elsewhere (PYTHONPATH=path), one run
    of pymq as imported from path; its figures as JSON into out_path."""
    where = os.path.realpath(os.path.dirname(pymq.__file__))
    if os.path.dirname(where) != os.path.realpath(path):
        raise SystemExit(f"--run-one: pymq was imported from {where}, not from {path}/pymq")
    spec = json.loads(spec_json)
    crc_cache = {(size, k, per): crc for size, k, per, crc in spec["crcs"]}
    ctx = mp.get_context("spawn")
    if spec["scenario"] == "B":
        r = run_pingpong(ctx, "pymq", *spec["count"])
    else:
        r = run_stream(ctx, tuple(spec["case"]), "pymq", spec["count"], crc_cache)
    H.write_json(out_path, r)
    return 0


def checkout_of(label: str, path: str) -> dict:
    """What --pymq-from LABEL=PATH names: that PYTHONPATH=PATH imports pymq
    from PATH (its native modules built and accepted), and its commit."""
    if not os.path.isfile(os.path.join(path, "pymq", "__init__.py")):
        raise SystemExit(f"--pymq-from {label}={path}: no pymq package in {path}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([path] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run([sys.executable, "-c", "import pymq; print(pymq.__file__); print(pymq.__version__)"],
                       env=env, capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
    lines = p.stdout.split()
    if p.returncode != 0 or len(lines) < 2 or not os.path.realpath(lines[0]).startswith(
            os.path.realpath(path) + os.sep):
        raise SystemExit(f"--pymq-from {label}={path}: PYTHONPATH={path} does not import pymq "
                         f"from there (build it in place: python build.py):\n{p.stdout}{p.stderr[-2000:]}")
    return {"path": path, "commit": git_commit(path), "pymq_file": lines[0], "pymq": lines[1]}


def run_pingpong(ctx, impl: str, warmup: int, rounds: int) -> dict:
    key, size = PINGPONG[0], PINGPONG[1]
    total = warmup + rounds
    ch = peers.make_channel(ctx, impl, 1, size, lanes=2)
    procs = []
    try:
        ev = {n: ctx.Event() for n in ("ping_bound", "pong_bound", "connect", "ping_ready",
                                       "pong_ready", "go")}
        pong, pong_conn = H.start_child(ctx, procs, ponger, "cmp-ponger",
                                        (impl, ch.handle, size, total, ev["pong_bound"], ev["connect"],
                                         ev["pong_ready"], ev["go"]))
        ping, ping_conn = H.start_child(ctx, procs, pinger, "cmp-pinger",
                                        (impl, ch.handle, size, warmup, rounds, ev["ping_bound"],
                                         ev["connect"], ev["ping_ready"], ev["go"]))
        H.wait_event(ev["pong_bound"], pong, "ponger", START_TIMEOUT)
        H.wait_event(ev["ping_bound"], ping, "pinger", START_TIMEOUT)
        ev["connect"].set()
        H.wait_event(ev["pong_ready"], pong, "ponger", START_TIMEOUT)
        H.wait_event(ev["ping_ready"], ping, "pinger", START_TIMEOUT)
        ev["go"].set()
        budget = budget_s(total * 10, size)
        a = H.receive(ping_conn, ping, "pinger", budget)
        b = H.receive(pong_conn, pong, "ponger", budget)
        H.finish(procs, START_TIMEOUT)
        topics = ch.broker.stats()["topics"] if impl == "pymq" else None
    finally:
        H.reap(procs)
        left = ch.close()
    if left:
        raise RuntimeError(f"{key} {impl}: left behind: {left}")
    problems = []
    if a["bad"] or a["extra"]:
        problems.append(f"pinger: {a['bad']} echoes differ (first {a['first_bad']}), {a['extra']} extra")
    want = expected_crc(size, 0, total)
    if b["disorder"] or b["crc"] != want:
        problems.append(f"ponger: {b['disorder']} out of order, crc32 {b['crc']:#x}, expected {want:#x}")
    if topics is not None and not (topics["ping"]["published"] == topics["pong"]["published"] == total):
        problems.append(f"published ping {topics['ping']['published']}, pong "
                        f"{topics['pong']['published']}, expected {total}")
    if problems:
        raise RuntimeError(f"{key} {impl}: verification failed:\n  " + "\n  ".join(problems))
    rtt = sorted(array("q", a["rtt_ns"]))
    one_way = lambda q: pct(rtt, q) / 2 / 1e3  # noqa: E731  (us)
    return {"case": key, "scenario": "B", "impl": impl, "round_trips": rounds, "warmup": warmup,
            "payload_bytes": size,
            "p50_us": one_way(50), "p99_us": one_way(99), "p999_us": one_way(99.9),
            "mean_us": sum(rtt) / len(rtt) / 2 / 1e3, "max_us": rtt[-1] / 2 / 1e3,
            "min_us": rtt[0] / 2 / 1e3,
            "ping_cpu_us_per_rt": (a["user_ns"] + a["system_ns"]) / total / 1e3,
            "pong_cpu_us_per_rt": (b["user_ns"] + b["system_ns"]) / total / 1e3,
            "ping_minflt_per_1k_rt": a["minflt"] / total * 1e3,
            "pong_minflt_per_1k_rt": b["minflt"] / total * 1e3,
            "ping_voluntary_switches_per_rt": a["voluntary_switches"] / total,
            "verified": True}


def pct(sorted_values, q: float):
    """Nearest-rank percentile."""
    n = len(sorted_values)
    rank = max(1, min(n, int(-(-q * n // 100))))
    return sorted_values[rank - 1]


# -- summaries, ratios, targets --------------------------------------------------------


med = H.median


def summarise_stream(runs: list[dict]) -> dict:
    out = {k: runs[0][k] for k in ("case", "scenario", "impl", "messages", "payload_bytes",
                                   "producers", "batch", "ack")}
    out.update(runs=len(runs), **H.rate_summary(runs), MB_per_s=med(runs, "MB_per_s"),
               elapsed_s=med(runs, "elapsed_s"),
               pub_cpu_us_per_msg=med(runs, "pub_cpu_us_per_msg"),
               sub_cpu_us_per_msg=med(runs, "sub_cpu_us_per_msg"),
               pub_minflt_per_1k_msgs=med(runs, "pub_minflt_per_1k_msgs"),
               sub_minflt_per_1k_msgs=med(runs, "sub_minflt_per_1k_msgs"))
    if "publish_waits" in runs[0]:
        out["publish_waits"] = med(runs, "publish_waits")
    return out


def summarise_pingpong(runs: list[dict]) -> dict:
    out = {k: runs[0][k] for k in ("case", "scenario", "impl", "round_trips", "warmup", "payload_bytes")}
    out["runs"] = len(runs)
    for k in ("p50_us", "p99_us", "p999_us", "mean_us", "max_us", "min_us",
              "ping_cpu_us_per_rt", "pong_cpu_us_per_rt", "ping_minflt_per_1k_rt",
              "pong_minflt_per_1k_rt", "ping_voluntary_switches_per_rt"):
        out[k] = med(runs, k)
    out["p50_us_min"] = min(r["p50_us"] for r in runs)
    out["p50_us_max"] = max(r["p50_us"] for r in runs)
    return out


def _median_of(runs: dict, case: str, impl: str, key: str):
    rr = runs.get((case, impl), [])
    return statistics.median(r[key] for r in rr) if rr else None


def _by_repeat(runs: dict, case: str, impl: str, key: str) -> dict:
    return {r["repeat"]: r[key] for r in runs.get((case, impl), [])}


def _compare(runs: dict, mine_case: str, cases: list[str], key: str, higher_better: bool,
             me: str = "pymq"):
    """pymq's (transport me's) median in mine_case / the best peer's median
    over `cases` (the verdict's ratio), and the same ratio within each repeat
    (its range: how much the noise moves it)."""
    mine = _median_of(runs, mine_case, me, key)
    if mine is None:
        return None
    cands = [(_median_of(runs, case, impl, key), impl, case) for case in cases for impl in peers.PEERS]
    cands = [c for c in cands if c[0] is not None]
    if not cands:
        return None
    best, impl, case = (max if higher_better else min)(cands, key=lambda c: c[0])
    per_rep = []
    for rep, v in sorted(_by_repeat(runs, mine_case, me, key).items()):
        others = [x for case_ in cases for i in peers.PEERS
                  if (x := _by_repeat(runs, case_, i, key).get(rep)) is not None]
        if others:
            per_rep.append(v / (max(others) if higher_better else min(others)))
    name = impl if len(cases) == 1 and key != "msg_per_s" else f"{impl} ({case_mode(case)})"
    return {"ratio": mine / best, "pymq": mine, "best": best, "best_peer": name,
            "ratio_min": min(per_rep), "ratio_max": max(per_rep), "repeats": len(per_rep)}


def tput_ratio(runs: dict, cases: list[str], me: str = "pymq") -> dict | None:
    """pymq in cases[0] / the best peer over all `cases` (msg/s)."""
    return _compare(runs, cases[0], cases, "msg_per_s", True, me)


def case_mode(case: str) -> str:
    return "batched" if "batched" in case else "bulk" if "bulk" in case else "single"


def mode_text(batch: int, size: int) -> str:
    if batch == BULK:
        return (f"bulk: publish_batch of {bulk_records(size)} records a call / "
                f"get_batch({BULK_MAX})")
    return f"batches of {batch}" if batch > 1 else "single calls"


def stream_text(r: dict) -> str:
    """One stream run's line: its rate and CPU, and for a bulk consumer where
    its loop's time went (ns a message in get_batch, in batch.ack(), in the rest)."""
    out = (f"{r['msg_per_s']:>11,.0f} msg/s {r['MB_per_s']:>8.1f} MB/s  "
           f"CPU us/msg pub {r['pub_cpu_us_per_msg']:.2f} sub {r['sub_cpu_us_per_msg']:.2f}")
    if "sub_get_ns_per_msg" in r:
        out += (f"  ns/msg get {r['sub_get_ns_per_msg']:.1f} ack {r['sub_ack_ns_per_msg']:.1f}"
                f" rest {r['sub_rest_ns_per_msg']:.1f}")
    return out


def lat_ratio(runs: dict, which: str, me: str = "pymq") -> dict | None:
    """pymq's percentile / the lowest peer's."""
    return _compare(runs, PINGPONG[0], [PINGPONG[0]], f"{which}_us", False, me)


def ack_ratio(runs: dict, ack_case: str, plain_case: str, me: str = "pymq") -> dict | None:
    """ack / plain msg/s (medians), and within each repeat."""
    a, p = _median_of(runs, ack_case, me, "msg_per_s"), _median_of(runs, plain_case, me, "msg_per_s")
    if a is None or p is None:
        return None
    ra, rp = (_by_repeat(runs, ack_case, me, "msg_per_s"),
              _by_repeat(runs, plain_case, me, "msg_per_s"))
    per_rep = [ra[k] / rp[k] for k in ra if k in rp]
    ca, cp = (_median_of(runs, ack_case, me, "sub_cpu_us_per_msg"),
              _median_of(runs, plain_case, me, "sub_cpu_us_per_msg"))
    out = {"ratio": a / p, "pymq": a, "best": p, "ratio_min": min(per_rep),
           "ratio_max": max(per_rep), "repeats": len(per_rep), "sub_cpu_ratio": ca / cp}
    for phase in ("get", "ack", "rest"):  # bulk consumers: where the loop's time went
        k = f"sub_{phase}_ns_per_msg"
        if all(k in r for c in (ack_case, plain_case) for r in runs.get((c, me), [{}])):
            out[f"{phase}_ns"] = [_median_of(runs, ack_case, me, k), _median_of(runs, plain_case, me, k)]
    return out


def evaluate(runs: dict, me: str = "pymq") -> list[dict]:
    """Every target, for the pymq transport me (pymq, or a --pymq-from label)."""
    out = []
    for label, kind, what, op, threshold in targets_spec():
        if kind == "tput":
            r = tput_ratio(runs, what, me)
        elif kind == "lat":
            r = lat_ratio(runs, what, me)
        else:  # "ack", "persist": pymq against itself
            r = ack_ratio(runs, *what, me)
        row = {"target": label, "kind": kind, "op": op, "threshold": threshold,
               "case": what[0] if kind == "tput" else None}
        if r is None:
            row["verdict"] = "not run"
        else:
            row.update(r)
            ok = r["ratio"] >= threshold if op == ">=" else r["ratio"] <= threshold
            row["verdict"] = "PASS" if ok else "FAIL"
        out.append(row)
    return out


# -- output ----------------------------------------------------------------------------


def si(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.0f} k"
    return f"{x:.0f}"


def print_tables(stream: list[dict], pingpong: list[dict], targets: list[dict], base: dict,
                 missing: dict, out=sys.stdout) -> None:
    w = lambda s="": print(s, file=out)  # noqa: E731
    cases = [c for c in STREAM_CASES if any(s["case"] == c[0] for s in stream)]
    for case in [c for c in cases if c[1] == "A"] + ["B"] + [c for c in cases if c[1] != "A"]:
        if case == "B":
            print_pingpong(pingpong, w)
            continue
        key = case[0]
        rows = [s for s in stream if s["case"] == key]
        first = rows[0]
        w(f"{key}: {first['producers']} producer(s) -> 1 consumer, {first['payload_bytes']} B, "
          f"{mode_text(first['batch'], first['payload_bytes'])}"
          f"{', acked' if first['ack'] else ''}; {first['messages']:,} messages, "
          f"{first['runs']} run(s)")
        head = (f"  {'transport':<13}{'msg/s':>10}{'range':>19}{'MB/s':>8}"
                f"{'pub CPU us/msg':>16}{'sub CPU us/msg':>16}{'pymq/this':>11}")
        w(head)
        mine = next((s for s in rows if s["impl"] == "pymq"), None)
        for s in sorted(rows, key=lambda s: -s["msg_per_s"]):
            rng = f"{si(s['msg_per_s_min'])}-{si(s['msg_per_s_max'])}"
            rel = f"{mine['msg_per_s'] / s['msg_per_s']:.2f}" if mine and s is not mine else ""
            w(f"  {s['impl']:<13}{si(s['msg_per_s']):>10}{rng:>19}{s['MB_per_s']:>8.1f}"
              f"{s['pub_cpu_us_per_msg']:>16.2f}{s['sub_cpu_us_per_msg']:>16.2f}{rel:>11}")
        na = [i for i in transports(case) if i not in {s["impl"] for s in rows}]
        if na:
            w(f"  {'n/a: ' + ', '.join(i + (' (' + missing[i] + ')' if i in missing else ' (no batched API)') for i in na)}")
        w()
    w("Targets: ratio of the medians [range of the same ratio within each repeat]:")
    for t in targets:
        if "ratio" in t:
            best = f"  best peer: {t['best_peer']}" if "best_peer" in t else ""
            extra = (f"  consumer CPU/msg {'on/off' if t['kind'] == 'persist' else 'ack/plain'} "
                     f"{t['sub_cpu_ratio']:.2f}" if "sub_cpu_ratio" in t else "")
            if "get_ns" in t:
                extra += "; ns/msg " + ", ".join(f"{p} {t[p + '_ns'][0]:.1f}/{t[p + '_ns'][1]:.1f}"
                                                 for p in ("get", "ack", "rest"))
            w(f"  {t['verdict']:<5} {t['target']:<46} {t['ratio']:6.2f} "
              f"[{t['ratio_min']:.2f}-{t['ratio_max']:.2f}]{best}{extra}")
        else:
            w(f"  {t['verdict']:<5} {t['target']}" if t["verdict"] in ("PASS", "FAIL")
              else f"  {t['target']}: {t['verdict']}")
    if missing:
        w(f"  (not run: {', '.join(f'{k} {v}' for k, v in missing.items())})")
    w()
    w("baseline, no transport (one process): build a payload / the consumer's checks, us per message: "
      + ", ".join(f"{b['payload_bytes']} B build {b['build_us_per_msg']:.2f} verify {b['verify_us_per_msg']:.2f}"
                  for b in base))
    if any("bulk_verify_us_per_msg" in b for b in base):
        w("  bulk rows, us per message: " + ", ".join(
            f"{b['payload_bytes']} B build {b['bulk_build_us_per_msg']:.3f} verify "
            f"{b['bulk_verify_us_per_msg']:.3f}" for b in base if "bulk_verify_us_per_msg" in b)
          + f" (crc32: {base[0].get('bulk_crc32', '?')})")


def print_pingpong(pingpong, w) -> None:
    if pingpong:
        n = pingpong[0]
        w(f"{n['case']}: one-way latency = round trip / 2, {n['round_trips']:,} round trips after "
          f"{n['warmup']:,} warm-up, {n['runs']} run(s), us")
        w(f"  {'transport':<13}{'p50':>8}{'p99':>8}{'p99.9':>8}{'mean':>8}{'max':>9}"
          f"{'ping CPU us/rt':>16}{'pong CPU us/rt':>16}{'page faults/1k rt':>19}")
        for s in sorted(pingpong, key=lambda s: s["p50_us"]):
            flt = f"{s['ping_minflt_per_1k_rt']:.0f} / {s['pong_minflt_per_1k_rt']:.0f}"
            w(f"  {s['impl']:<13}{s['p50_us']:>8.1f}{s['p99_us']:>8.1f}{s['p999_us']:>8.1f}"
              f"{s['mean_us']:>8.1f}{s['max_us']:>9.0f}{s['ping_cpu_us_per_rt']:>16.2f}"
              f"{s['pong_cpu_us_per_rt']:>16.2f}{flt:>19}")
        w()


def variant_rows(runs: dict, labels: list[str], with_pymq: bool) -> list[dict]:
    """Per case, each pymq transport (the --pymq-from labels, then this
    checkout's) with its medians and ranges, and its ratio to the first
    label's: of the medians, and within each repeat (min-max)."""
    out = []
    if not labels:
        return out
    ref = labels[0]
    mine = labels + (["pymq"] if with_pymq else [])
    for case in [c[0] for c in STREAM_CASES if c[1] == "A"] + [PINGPONG[0]] + \
            [c[0] for c in STREAM_CASES if c[1] != "A"]:
        pp = case == PINGPONG[0]
        keys = (["p50_us", "p99_us", "p999_us", "ping_cpu_us_per_rt", "pong_cpu_us_per_rt"] if pp
                else ["msg_per_s", "pub_cpu_us_per_msg", "sub_cpu_us_per_msg"])
        for impl in mine:
            rr = runs.get((case, impl))
            if not rr:
                continue
            row = {"case": case, "impl": impl, "runs": len(rr), "reference": ref}
            for k in keys:
                vals = [r[k] for r in rr]
                row[k] = statistics.median(vals)
                row[k + "_min"], row[k + "_max"] = min(vals), max(vals)
            if impl != ref and (case, ref) in runs:
                for k in keys:
                    a, b = _by_repeat(runs, case, impl, k), _by_repeat(runs, case, ref, k)
                    per = [a[j] / b[j] for j in a if j in b and b[j]]
                    row[k + "_ratio"] = row[k] / _median_of(runs, case, ref, k)
                    if per:
                        row[k + "_ratio_min"], row[k + "_ratio_max"] = min(per), max(per)
            out.append(row)
    return out


def print_variants(rows: list[dict], by_transport: dict, meta: dict, out=sys.stdout) -> None:
    """The side-by-side tables of the pymq transports (--pymq-from)."""
    w = lambda s="": print(s, file=out)  # noqa: E731
    info = meta.get("pymq_from", {})
    ref = rows[0]["reference"] if rows else next(iter(info), "")
    w("pymq side by side: " + "; ".join(f"{lab} = pymq from {i['path']} ({i.get('commit') or '?'})"
                                        for lab, i in info.items())
      + (f"; pymq = as this script imported it ({os.path.dirname(meta.get('pymq_file', '?'))})"
         if any(r["impl"] == "pymq" for r in rows) else ""))
    w(f"  medians [min-max over the repeats]; x {ref} = this / {ref}: of the medians "
      f"[min-max of the same ratio within each repeat]")
    tw = max([len(r["impl"]) for r in rows] + [9]) + 2
    rw = max(21, len(ref) + 4)
    w(f"  {'case':<20}{'transport':<{tw}}{'msg/s':>9}{'range':>17}{'x ' + ref:>{rw}}"
      f"{'pub/sub CPU us/msg':>20}{'sub CPU x ' + ref:>{len(ref) + 12}}")
    for r in rows:
        if "msg_per_s" not in r:
            continue
        rng = f"{si(r['msg_per_s_min'])}-{si(r['msg_per_s_max'])}"
        rel = (f"{r['msg_per_s_ratio']:.2f} [{r.get('msg_per_s_ratio_min', 0):.2f}-"
               f"{r.get('msg_per_s_ratio_max', 0):.2f}]" if "msg_per_s_ratio" in r else "")
        cpu = f"{r['pub_cpu_us_per_msg']:.2f} / {r['sub_cpu_us_per_msg']:.2f}"
        crel = f"{r['sub_cpu_us_per_msg_ratio']:.2f}" if "sub_cpu_us_per_msg_ratio" in r else ""
        w(f"  {r['case']:<20}{r['impl']:<{tw}}{si(r['msg_per_s']):>9}{rng:>17}{rel:>{rw}}{cpu:>20}"
          f"{crel:>{len(ref) + 12}}")
    pp = [r for r in rows if "p50_us" in r]
    if pp:
        w(f"  {PINGPONG[0]}, one-way us:")
        for r in pp:
            rel = "".join(f"  {k[:-3]} x {ref} {r[k + '_ratio']:.2f} [{r.get(k + '_ratio_min', 0):.2f}-"
                          f"{r.get(k + '_ratio_max', 0):.2f}]" for k in ("p50_us", "p99_us")
                          if k + "_ratio" in r)
            w(f"    {r['impl']:<{tw}} p50 {r['p50_us']:.2f} [{r['p50_us_min']:.2f}-{r['p50_us_max']:.2f}]"
              f"  p99 {r['p99_us']:.2f} [{r['p99_us_min']:.2f}-{r['p99_us_max']:.2f}]"
              f"  p99.9 {r['p999_us']:.2f}  CPU/rt {r['ping_cpu_us_per_rt']:.2f} / "
              f"{r['pong_cpu_us_per_rt']:.2f}{rel}")
    w()
    names = list(by_transport)
    w("Targets for each pymq: ratio of the medians [range within repeats] verdict")
    w(f"  {'target':<46}" + "".join(f"{n:>24}" for n in names))
    for j, (label, *_rest) in enumerate(targets_spec()):
        cells = []
        for n in names:
            t = by_transport[n][j]
            cells.append(f"{t['ratio']:.2f} [{t['ratio_min']:.2f}-{t['ratio_max']:.2f}] {t['verdict']}"
                         if "ratio" in t else t["verdict"])
        if any(c != "not run" for c in cells):
            w(f"  {label:<46}" + "".join(f"{c:>24}" for c in cells))
    w()


def chart(path: str, stream: list[dict], pingpong: list[dict], targets: list[dict], meta: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"pymq": "#d62728"}
    for n, label in enumerate(FROM):  # --pymq-from transports
        colors[label] = ["#ff7f0e", "#9467bd", "#e377c2", "#8c564b"][n % 4]
    grey = "#8c8c8c"
    # one row of panels per case (A 64 B, A 4 KiB, C), one column per mode
    # (single, batched, bulk); a bulk panel sets pymq's bulk rows beside each
    # peer's best mode of the same case
    grid = [[("A 64 B single", "A  1→1, 64 B, single calls"),
             ("A 64 B batched", "A  1→1, 64 B, batched"),
             ("A 64 B bulk", "A  1→1, 64 B, bulk (get_batch, publish_batch)")],
            [("A 4 KiB single", "A  1→1, 4 KiB, single calls"),
             ("A 4 KiB batched", "A  1→1, 4 KiB, batched"),
             ("A 4 KiB bulk", "A  1→1, 4 KiB, bulk")],
            [("C 64 B single x4", "C  4→1, 64 B, single calls"),
             ("C 64 B batched x4", "C  4→1, 64 B, batched"),
             ("C 64 B bulk x4", "C  4→1, 64 B, bulk")]]
    have = {s["case"] for s in stream}
    grid = [[p if p[0] in have else None for p in line] for line in grid]
    grid = [line for line in grid if any(line)]
    left = max([max((j + 1 for j, p in enumerate(line) if p), default=0) for line in grid] + [1])
    dimpl = next((i for i in ["pymq", *FROM] if any(s["impl"] == i and s["scenario"] in ("D", "E")
                                                      for s in stream)), "pymq")
    dpanel = [s for s in stream if s["scenario"] in ("D", "E") and s["impl"] == dimpl]
    n_right = (1 if pingpong else 0) + (1 if dpanel else 0)
    ncols = left + (1 if n_right else 0)
    nrows = max(len(grid), 2 * n_right if pingpong and dpanel else n_right, 1)
    fig = plt.figure(figsize=(5.2 * ncols, 2.6 * nrows + 1.2))
    gs = fig.add_gridspec(nrows, ncols, hspace=0.8, wspace=0.5)
    verdict = {t["target"]: t for t in targets}
    order = ["pymq", *FROM, *peers.PEERS]

    def tgts_for(case):
        return [t for t in targets if t.get("kind") == "tput" and t.get("case") == case and "ratio" in t]

    for r_, line in enumerate(grid):
        for c_, panel in enumerate(line):
            if panel is None:
                continue
            case, title = panel
            ax = fig.add_subplot(gs[r_, c_])
            rows = {s["impl"]: s for s in stream if s["case"] == case}
            names = [i for i in order if i in rows or (i == "posix_ipc" and "bulk" not in case)]
            labels = list(names)
            vals = [rows[i]["msg_per_s"] / 1e6 if i in rows else 0 for i in names]
            if "bulk" in case:  # each peer's best mode of this case, beside pymq's bulk
                for i in peers.PEERS:
                    best = max((s for s in stream if s["impl"] == i and s["scenario"] == case[0]
                                and s["payload_bytes"] == rows[next(iter(rows))]["payload_bytes"]
                                and s["batch"] != BULK), key=lambda s: s["msg_per_s"], default=None)
                    if best is not None:
                        names.append(i)
                        labels.append(f"{i} ({case_mode(best['case'])})")
                        vals.append(best["msg_per_s"] / 1e6)
            ys = range(len(names))[::-1]
            ax.barh(list(ys), vals, color=[colors.get(i, grey) for i in names], height=0.7)
            top = max(vals) if vals else 1
            for y, i, v in zip(ys, names, vals):
                label = f"{v:.2f} M" if v else "n/a"
                ax.text(v + top * 0.02, y, label, va="center", fontsize=8,
                        fontweight="bold" if pymq_like(i) else "normal")
            ax.set_yticks(list(ys))
            ax.set_yticklabels(labels, fontsize=8)
            ax.set_xlim(0, top * 1.32)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_xlabel("million messages/s (median)", fontsize=8)
            sub = "".join(f"\npymq = {t['ratio']:.2f}x best peer, {t['best_peer']} "
                          f"[{t['verdict']}: {t['op']} {t['threshold']:g}x]" for t in tgts_for(case))
            ax.set_title(title + sub, fontsize=8.5, loc="left")
            for sp in ("top", "right"):
                ax.spines[sp].set_visible(False)

    row = 0
    if pingpong:
        half = max(1, nrows // 2)
        ax = fig.add_subplot(gs[0:half, left]) if dpanel else fig.add_subplot(gs[:, left])
        rows = {s["impl"]: s for s in pingpong}
        names = [i for i in order if i in rows]
        ys = list(range(len(names)))[::-1]
        h = 0.27
        for off, key, alpha, lab in ((h, "p50_us", 1.0, "p50"), (0, "p99_us", 0.6, "p99"),
                                     (-h, "p999_us", 0.3, "p99.9")):
            vals = [rows[i][key] for i in names]
            ax.barh([y + off for y in ys], vals, height=h,
                    color=[colors.get(i, grey) for i in names], alpha=alpha, label=lab)
            for y, v in zip(ys, vals):
                ax.text(v * 1.03, y + off, f"{v:.1f}", va="center", fontsize=6.5)
        ax.set_yticks(ys)
        ax.set_yticklabels(names, fontsize=8)
        from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter
        ax.set_xscale("log")
        lo = min(rows[i]["p50_us"] for i in names)
        hi = max(rows[i]["p999_us"] for i in names)
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
                 if lo / 2 <= t <= hi * 2]
        ax.set_xlim(min(ticks[0], lo * 0.8), hi * 1.6)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("one-way latency, µs (log scale): p50 / p99 / p99.9", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        p50 = verdict.get("B p50 <= 0.7x best peer's", {})
        p99 = verdict.get("B p99 <= 1x best peer's", {})
        sub = ""
        if "ratio" in p50 and "ratio" in p99:
            sub = (f"\npymq p50 = {p50['ratio']:.2f}x best ({p50['best_peer']}) [{p50['verdict']}: ≤ 0.7x]"
                   f"\npymq p99 = {p99['ratio']:.2f}x best ({p99['best_peer']}) [{p99['verdict']}: ≤ 1x]")
        ax.set_title("B  ping-pong, 64 B (shorter is better)" + sub, fontsize=9, loc="left")
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(color=grey, alpha=a, label=l)
                           for a, l in ((1.0, "p50"), (0.6, "p99"), (0.3, "p99.9"))],
                  fontsize=7, loc="upper right", frameon=False)
        for sp in ("top", "right"):
            ax.spines[sp].set_visible(False)
        row = half
    if dpanel:
        ax = fig.add_subplot(gs[row:, left]) if row else fig.add_subplot(gs[:, left])
        by = {s["case"]: s for s in dpanel}
        labels = [("D plain single", "plain get"), ("D ack single", "get + ack"),
                  ("D plain batched", "plain get_many(64)"), ("D ack batched", "get_many + ack_many"),
                  ("D plain bulk", "plain get_batch"), ("D ack bulk", "get_batch + batch.ack()"),
                  ("E off 64 B batched", "64 B, persistence off"), ("E on 64 B batched", "64 B, persistence on"),
                  ("E off 4 KiB batched", "4 KiB, persistence off"),
                  ("E on 4 KiB batched", "4 KiB, persistence on")]
        labels = [(c, l) for c, l in labels if c in by]
        ys = list(range(len(labels)))[::-1]
        vals = [by[c]["msg_per_s"] / 1e6 for c, _ in labels]
        ax.barh(ys, vals, color=["#f4a6a6" if "plain" in c or " off " in c else colors[dimpl]
                                 for c, _ in labels],
                height=0.6)
        for y, v in zip(ys, vals):
            ax.text(v * 1.02, y, f"{v:.2f} M", va="center", fontsize=8)
        ax.set_yticks(ys)
        ax.set_yticklabels([l for _, l in labels], fontsize=8)
        ax.set_xlim(0, max(vals) * 1.35)
        ax.set_xlabel("million messages/s (median)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        def part(label, key):
            t = verdict.get(key, {})
            return f"{label} {t['ratio']:.0%} [{t['verdict']}]" if "ratio" in t else None
        lines = [", ".join(p for p in parts if p) for parts in (
            ("ack/plain:", part("single", "D ack single >= 75% of plain single")
             or part("single", "D ack single >= 50% of plain single"),
             part("batched", "D ack batched >= 50% of plain batched"),
             part("bulk", "D ack bulk >= 75% of plain bulk")),
            ("persistence on/off:", part("64 B", "E 64 B on >= 50% of off"),
             part("4 KiB", "E 4 KiB on >= 50% of off")))]
        sub = "".join("\n" + ln.replace(":,", ":") for ln in lines if "%" in ln)
        ax.set_title(f"D, E  {dimpl} against itself, 1→1 (targets: ack single and bulk ≥ 75%, "
                     f"others ≥ 50%)" + sub, fontsize=8.5, loc="left")
        for sp in ("top", "right"):
            ax.spines[sp].set_visible(False)

    label = f" ({meta['label']})" if meta.get("label") else ""
    fig.suptitle(f"pymq{label} vs Python IPC peers — {meta['date'][:10]}, {meta['cpus']} vCPUs (shared, noisy), "
                 f"Python {meta['python']}, "
                 f"{'medians of ' + str(meta['repeat']) + ' interleaved repeats' if meta['repeat'] > 1 else 'one run each'}"
                 f"{' (--quick: smoke-test counts)' if meta['quick'] else ''}",
                 fontsize=10, x=0.01, ha="left", y=1 + 0.35 / fig.get_figheight())
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def baselines(count: int = 100_000) -> list[dict]:
    """Build a payload / the consumer's single-call check, alone in this
    process; and the same for the bulk rows (bulk_baseline)."""
    out = H.baselines(count, (64, 4 * KIB))
    try:
        import numpy  # noqa: F401
    except ImportError:
        return out
    for b in out:
        b.update(bulk_baseline(b["payload_bytes"], count))
    return out


def bulk_baseline(size: int, count: int) -> dict:
    """What a bulk producer's build (the index column of a call's rows) and a
    bulk consumer's check (_bulk_loop over two pymq.Batch objects made
    beforehand, again and again: in cache, as a batch get_batch has just
    made; no get_batch) cost alone, in this process, us per message."""
    import numpy as np
    from pymq.batch import Batch
    per = bulk_records(size)
    rows, ramp = bulk_rows(np, size, per), np.arange(per, dtype=np.uint64)
    col = rows[:, 0]
    t0 = time.process_time_ns()
    for b in range(0, count, per):
        np.add(ramp, b, out=col)
    t1 = time.process_time_ns()
    pool, offs, times = [], array("Q", range(0, (per + 1) * size, size)).tobytes(), bytes(8 * per)
    for b in range(0, 2 * per, per):
        np.add(ramp, b, out=col)
        pool.append(Batch("t", rows.tobytes(), offs,
                          np.arange(b + 1, b + 1 + per, dtype=np.uint64).tobytes(), times, size))
    want, laps = expected_crc(size, 0, 2 * per), max(1, count // (2 * per))
    t2 = time.process_time_ns()
    for _ in range(laps):
        it, nxt, crcs = iter(pool), [0], [0]
        got, disorder, _, _, bad, _ = _bulk_loop(lambda n: next(it), False, 2 * per, 1, size, nxt, crcs, 1)
        if got != 2 * per or disorder or bad or (size < H.EXACT_FROM and crcs[0] != want):
            raise AssertionError(f"bulk baseline: {got} {disorder} {bad}")
    t3 = time.process_time_ns()
    return {"bulk_build_us_per_msg": (t1 - t0) / count / 1e3,
            "bulk_verify_us_per_msg": (t3 - t2) / (laps * 2 * per) / 1e3,
            "bulk_crc32": bulk_crc32()[1]}


def machine() -> dict:
    def cmd(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    model = next((ln.split(":", 1)[1].strip() for ln in cmd("lscpu").splitlines()
                  if ln.startswith("Model name")), "")
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": sys.version.split()[0], "platform": platform.platform()}


def git_commit(where: str | None = None) -> str:
    try:
        here = where or os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except OSError:
        return ""


# -- main --------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small counts and one repeat unless --repeat: a smoke test (< 30 s)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per case and transport; medians reported (default 3, 1 with --quick)")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS,
                    help="run only this scenario (repeatable)")
    ap.add_argument("--json", metavar="PATH", help="also write everything as JSON")
    ap.add_argument("--chart", metavar="PATH", help="also draw a chart (PNG, needs matplotlib)")
    ap.add_argument("--label", metavar="TEXT",
                    help="what was measured, for the chart's title and the JSON (default: "
                         "git describe of this checkout, if it is one)")
    ap.add_argument("--replot", metavar="JSON",
                    help="run nothing: print the tables and targets (and --chart) again from the "
                         "runs saved by an earlier --json")
    ap.add_argument("--pymq-from", action="append", default=[], metavar="LABEL=PATH",
                    help="also run pymq as imported from the checkout at PATH (built in place), "
                         "as a transport named LABEL, beside this one's (repeatable; the first "
                         "is the reference of the side-by-side ratios)")
    ap.add_argument("--pin", action="store_true",
                    help="an experiment: pin each stream run's consumer to the last CPU and its "
                         "producers to the others (the scheduler's placement out of the comparison)")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    ap.add_argument("--run-one-out", help=argparse.SUPPRESS)
    ap.add_argument("--run-one-pymq", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global PIN
    PIN = args.pin
    if PIN and len(os.sched_getaffinity(0)) < 2:
        ap.error("--pin needs two CPUs")
    if args.run_one:
        return run_one(args.run_one, args.run_one_out, args.run_one_pymq)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error("--chart needs matplotlib (pip install matplotlib)")
    if args.replot:
        if args.pymq_from:
            ap.error("--pymq-from runs pymq: not with --replot")
        return replot(args)
    chosen = args.scenario or SCENARIOS
    from_info = {}
    for item in args.pymq_from:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            ap.error(f"--pymq-from {item!r}: LABEL=PATH")
        if label in peers.ALL or label in FROM:
            ap.error(f"--pymq-from {item!r}: the label {label!r} is taken")
        path = os.path.abspath(path)
        from_info[label] = checkout_of(label, path)
        FROM[label] = path

    missing = {i: why for i in peers.ALL if (why := peers.missing(i))}
    for i, why in missing.items():
        print(f"# warning: {i} {why}: left out", file=sys.stderr)
    ctx = mp.get_context("spawn")

    # the plan: per scenario, repeat-major, transports rotated each repeat
    plan = []
    for scen in chosen:
        if scen == "B":
            warm, rounds = PINGPONG[3] if args.quick else PINGPONG[2]
            impls = [i for i in peers.ALL + list(FROM) if i not in missing]
            for rep in range(repeat):
                rot = impls[rep % len(impls):] + impls[:rep % len(impls)]
                plan += [("B", None, i, rep, (warm, rounds)) for i in rot]
            continue
        cases = [c for c in STREAM_CASES if c[1] == scen]
        for rep in range(repeat):
            for case in cases:
                impls = [i for i in transports(case)
                         if i not in missing and (case[4] == 1 or i in peers.BATCHED or i in FROM)]
                rot = impls[rep % len(impls):] + impls[:rep % len(impls)]
                count = case[8] if args.quick else case[7]
                plan += [(scen, case, i, rep, count) for i in rot]

    runs: dict = {}
    crc_cache: dict = {}
    loads = []
    load_before = os.getloadavg()
    t_start = time.monotonic()
    for n, (scen, case, impl, rep, count) in enumerate(plan, 1):
        t0 = time.monotonic()
        c2c = H.cross_cpu_ns()  # the host's state for this run (harness.cross_cpu_ns)
        if impl in FROM:
            r = run_elsewhere(impl, scen, case, count, crc_cache)
            key = case[0] if case else PINGPONG[0]
            if scen == "B":
                what = (f"p50 {r['p50_us']:6.1f} us  p99 {r['p99_us']:7.1f} us  "
                        f"p99.9 {r['p999_us']:7.1f} us")
            else:
                what = stream_text(r)
        elif scen == "B":
            r = run_pingpong(ctx, impl, *count)
            what = (f"p50 {r['p50_us']:6.1f} us  p99 {r['p99_us']:7.1f} us  "
                    f"p99.9 {r['p999_us']:7.1f} us")
            key = PINGPONG[0]
        else:
            r = run_stream(ctx, case, impl, count, crc_cache)
            key = case[0]
            what = stream_text(r)
        r["repeat"], r["cross_cpu_ns"] = rep, c2c
        runs.setdefault((key, impl), []).append(r)
        el = time.monotonic() - t_start
        loads.append(os.getloadavg()[0])
        print(f"# [{n:>3}/{len(plan)}] {key:<18} {impl:<12} run {rep + 1}/{repeat}: {what}  ok "
              f"({time.monotonic() - t0:.1f} s, {el:.0f} s so far, load {os.getloadavg()[0]:.1f}, "
              f"line CPU0->1 {c2c or 0:.0f} ns)", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    base = baselines(20_000 if args.quick else 100_000)
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **machine(), "repeat": repeat,
            "quick": args.quick, "scenarios": chosen, "commit": git_commit(),
            "label": args.label or git_commit(),
            "pymq": pymq.__version__, "pymq_file": pymq.__file__, "versions": peers.versions(),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "loadavg_1min_during": [min(loads, default=0), max(loads, default=0)],
            "wall_s": time.monotonic() - t_start, "mq_max_messages": peers.MQ_MAX_MESSAGES,
            "zmq_hwm": peers.ZMQ_HWM, "ring_bytes": peers.RING_BYTES, "batch": BATCH,
            "pymq_from": from_info, "pinned": PIN}
    return report(args, runs, meta, base, missing)


def replot(args) -> int:
    with open(args.replot) as f:
        doc = json.load(f)
    runs: dict = {}
    for r in doc["runs"]:
        runs.setdefault((r["case"], r["impl"]), []).append(r)
    meta = {k: v for k, v in doc.items() if k not in ("summary", "pingpong", "targets", "runs",
                                                     "baselines", "missing")}
    meta.setdefault("scenarios", sorted({r["scenario"] for r in doc["runs"]}))
    meta.setdefault("loadavg_1min_during", [meta["loadavg_before"][0], meta["loadavg_after"][0]])
    FROM.clear()
    FROM.update({label: info["path"] for label, info in meta.get("pymq_from", {}).items()})
    if args.label:
        meta["label"] = args.label
    if args.scenario:
        meta["scenarios"] = [s for s in meta["scenarios"] if s in args.scenario]
        runs = {k: v for k, v in runs.items() if v[0]["scenario"] in meta["scenarios"]}
    return report(args, runs, meta, doc["baselines"], doc.get("missing", {}))


def report(args, runs: dict, meta: dict, base: list[dict], missing: dict) -> int:
    chosen = meta["scenarios"]
    stream = [summarise_stream(v) for (k, i), v in runs.items() if k != PINGPONG[0]]
    pingpong = [summarise_pingpong(v) for (k, i), v in runs.items() if k == PINGPONG[0]]
    targets = [t for t in evaluate(runs) if t["verdict"] != "not run"]
    print_tables(stream, pingpong, targets, base, missing)
    mine = [i for i in ["pymq", *FROM] if any(k[1] == i for k in runs)]
    by_transport = {i: evaluate(runs, i) for i in mine}
    variants = variant_rows(runs, [i for i in FROM if i in mine], "pymq" in mine)
    if FROM:
        print_variants(variants, by_transport, meta)
    lb, la = meta["loadavg_before"], meta["loadavg_after"]
    print(f"({meta['date']}, {meta['wall_s']:.0f} s; load average {lb[0]:.1f} before, "
          f"{meta['loadavg_1min_during'][0]:.1f}-{meta['loadavg_1min_during'][1]:.1f} during, "
          f"{la[0]:.1f} after{'; pinned: consumers on the last CPU, producers on the others' if meta.get('pinned') else ''})")
    c2c = sorted(r["cross_cpu_ns"] for v in runs.values() for r in v if r.get("cross_cpu_ns"))
    if c2c:
        print(f"(a cache line from CPU 0 to CPU 1, before each run: {c2c[0]:.0f}-{c2c[-1]:.0f} ns, "
              f"median {statistics.median(c2c):.0f}; a run's own is in --json)")
    if args.chart and (stream or pingpong):
        chart(args.chart, stream, pingpong, targets, meta)
        print(f"chart: {args.chart}")
    if args.json:
        doc = {**meta, "summary": stream, "pingpong": pingpong, "targets": targets,
               "runs": [r for v in runs.values() for r in v], "baselines": base,
               "missing": missing}
        if FROM:
            doc.update(targets_by_transport=by_transport, side_by_side=variants)
        if args.replot:
            doc["replotted_from"] = args.replot
        H.write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
