"""Cross-process throughput of pymq with persistence on (fsync "interval") against off.

    .venv/bin/python benchmarks/persist_throughput.py [--messages N] [--repeat R] [--json PATH] [--quick]

Same scenarios and processes as benchmarks/throughput.py (whose publisher and
subscriber functions this script reuses): 1 publisher process -> 1 subscriber
process, payloads of 64 B and 4 KiB, single calls (publish / get) and batches
of 64 (publish_many / get_many), every payload checked by the subscriber
(index, order, crc32 of the stream against what was sent).

Each run gets a broker of its own (unique name, 64 MiB rings); with
persistence on, BrokerConfig(persistence_enabled=True, persistence_fsync=
"interval", persistence_fsync_interval=1.0, persistence_dir=<a fresh temp dir>).
Runs of one scenario alternate off/on, on/off, ... within the invocation, so
that both see the same machine load; the table gives medians of --repeat runs
of each and the ratio of the medians (on / off).

Measured span: from the publisher's start ("go") to
  - off: the subscriber's last message;
  - on: the later of the subscriber's last message and the moment the parent,
    polling broker.stats()["topics"][topic]["groups"]["~persist"] (every
    0.5 ms, from when the subscriber reported), first sees lag 0 and pending 0:
    every record written to the log and acked by the writer.
Before "go" the parent waits until the writer (a thread in the supervisor
process) is a member of "~persist".

After every persistence-on run the script reads DIR/{topic}/*.jsonl and checks
that the lines hold exactly the published seqs (each once, in order) and that
the crc32 of their base64-decoded payloads, in seq order, equals that of what
was sent. Supervisor CPU: psutil cpu_times (user + system, all threads) of
broker.supervisor_pid, from just before "go" to the end of the span; with
persistence on, that is mostly the writer thread.

Last, "writer breakdown": one process replays the writer's loop
(pymq.persistence.Writer.step: a zero-copy native batch read of up to 1024
records (_core.Ring.read into a _core.Batch), _core.Lines.encode (one native
call per batch), TopicLog.append with fsync "interval", the native ack
(_core.Ring.ack)) on records it published itself to a group of its own, and
times each part; it also times the Python reference encoder
(one b2a_base64 and one %-format per record, what the writer did before) and
checks that its lines equal the native encoder's byte for byte.
"""

from __future__ import annotations

import argparse
import binascii
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import zlib
from array import array

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
import throughput as tp  # noqa: E402  (publisher, subscriber and their start, reused as they are)

import pymq  # noqa: E402
from pymq import _core, persistence  # noqa: E402
from pymq.persistence import log as plog  # noqa: E402  (SUFFIX: the log files' suffix)

RING_BYTES = 64 * 1024 * 1024
BATCH = tp.BATCH
PERSIST = _core.PERSIST_GROUP
DRAIN_TIMEOUT = 300.0

# name, payload bytes, messages per call, default messages, --quick messages
SCENARIOS = [
    ("single 64 B", 64, 1, 300_000, 30_000),
    ("batch64 64 B", 64, BATCH, 1_000_000, 60_000),
    ("single 4 KiB", 4096, 1, 100_000, 10_000),
    ("batch64 4 KiB", 4096, BATCH, 100_000, 10_000),
]


def sup_cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def persist_group(broker, topic: str) -> dict:
    return broker.stats()["topics"][topic]["groups"][PERSIST]


def verify_log(root: str, topic: str, first_seq: int, count: int, want_crc: int) -> dict:
    """The log files hold exactly seqs first_seq .. first_seq+count-1, in order,
    once each, and the payloads' crc32 in that order is want_crc."""
    d = persistence.topic_dir(root, topic)
    files = sorted(f for f in os.listdir(d) if f.endswith(plog.SUFFIX))
    expect, crc, lines, size = first_seq, 0, 0, 0
    a2b, loads, crc32 = binascii.a2b_base64, json.loads, zlib.crc32
    for name in files:
        with open(os.path.join(d, name), "rb") as f:
            data = f.read()
        size += len(data)
        if not data.endswith(b"\n"):
            raise RuntimeError(f"{name}: does not end with a newline (torn line)")
        for line in data[:-1].split(b"\n"):
            rec = loads(line)
            if rec["seq"] != expect:
                raise RuntimeError(f"{name}: seq {rec['seq']} where {expect} was expected")
            crc = crc32(a2b(rec["payload"], strict_mode=True), crc)
            expect += 1
            lines += 1
    if lines != count or crc != want_crc:
        raise RuntimeError(f"log of {topic!r}: {lines} lines (want {count}), crc {crc} (want {want_crc})")
    return {"log_files": len(files), "log_bytes": size, "log_lines": lines}


def run_once(ctx, persist: bool, label_k: int, size: int, batch: int, count: int, crc_cache: dict) -> dict:
    name = f"ptput-{os.getpid()}-{label_k}-{'on' if persist else 'off'}-{time.monotonic_ns() % 10**9}"
    pdir = tempfile.mkdtemp(prefix="pymq-persist-bench-") if persist else None
    topic = "bench"
    cfg = pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES)
    if persist:
        cfg = pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES, persistence_enabled=True,
                                persistence_dir=pdir, persistence_fsync="interval",
                                persistence_fsync_interval=1.0)
    key = (size, count)
    if key not in crc_cache:
        crc_cache[key] = tp.expected_crc(size, count)
    broker = pymq.Broker(cfg)
    try:
        sup = psutil.Process(broker.supervisor_pid)
        procs = []
        try:
            go, (pub, pub_recv), (sub, sub_recv) = tp.start_pair(ctx, procs, name, topic,
                                                                 size, batch, count)
            before = broker.stats()["topics"][topic]
            if persist:  # the writer thread has joined "~persist" (it starts within a sweep)
                deadline = time.monotonic() + tp.START_TIMEOUT
                while persist_group(broker, topic)["members"] < 1:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the persistence writer did not join")
                    time.sleep(0.005)
            first_seq = broker.stats()["topics"][topic]["groups"][PERSIST]["position"] if persist else None
            cpu0 = sup_cpu_s(sup)
            go.set()
            budget = 120.0 + count * size / 20e6
            p = H.receive(pub_recv, pub, "publisher", budget)
            s = H.receive(sub_recv, sub, "subscriber", budget)
            caught_up_ns, polls = None, 0
            if persist:
                polls = H.wait_persisted(broker, topic, 0, DRAIN_TIMEOUT)
                caught_up_ns = H.clock_ns()
            end_ns = max(s["end_ns"], caught_up_ns or 0)
            cpu1 = sup_cpu_s(sup)
            H.finish(procs, tp.START_TIMEOUT)
        finally:
            H.reap(procs)
        after = broker.stats()["topics"][topic]
        tp.check("", s, count, crc_cache[key], after["published"] - before["published"])
        pg = after["groups"].get(PERSIST) if persist else None
    finally:
        broker.close()  # with persistence on: drains (already drained), closes the log
    try:
        log = verify_log(pdir, topic, first_seq, count, crc_cache[key]) if persist else {}
    finally:
        if pdir:
            shutil.rmtree(pdir)
    left = H.leftovers(name)
    if left:
        raise RuntimeError(f"left in {H.SHM_DIR}: {left}")
    elapsed = (end_ns - p["start_ns"]) / 1e9
    out = {
        "persistence": persist, "messages": count, "payload_bytes": size, "batch": batch,
        "elapsed_s": elapsed, "msg_per_s": count / elapsed, "MB_per_s": count * size / elapsed / 1e6,
        "publisher_s": (p["end_ns"] - p["start_ns"]) / 1e9,
        "subscriber_s": (s["end_ns"] - p["start_ns"]) / 1e9,
        "writer_after_sub_s": max(0, (caught_up_ns - s["end_ns"])) / 1e9 if persist else 0.0,
        "pub_cpu_us_per_msg": (p["user_ns"] + p["system_ns"]) / count / 1e3,
        "sub_cpu_us_per_msg": (s["user_ns"] + s["system_ns"]) / count / 1e3,
        "sup_cpu_us_per_msg": (cpu1 - cpu0) / count * 1e6,
        "publish_waits": after["publish_waits"] - before["publish_waits"],
        "persist_acked": pg["acked"] if pg else None, "drain_polls": polls,
        "verified": True,
    }
    out.update(log)
    return out


LINE = b'{"seq":%d,"ts":%d.%06d,"payload":"%s"}\n'  # the log's line, for the Python reference encoder


def python_lines(data, batch, n: int) -> bytes:
    """The same lines as _core.Lines, one Python expression per record
    (the writer's encoder before the native one): the reference and the baseline."""
    up, b64, view = _core.ffi.unpack, binascii.b2a_base64, memoryview(data)
    return b"".join(LINE % (q, ts // 10**9, ts // 1000 % 10**6, b64(view[o:o + ln], newline=False))
                    for q, ts, o, ln in zip(up(batch.seqs, n), up(batch.ts, n),
                                            up(batch.offs, n), up(batch.lens, n)))


def writer_breakdown(size: int, count: int) -> dict:
    """Replay Writer.step in this process, timing read / encode / append / ack;
    then encode each batch again with the Python reference encoder (checked
    byte for byte against the native one)."""
    name = f"ptput-prof-{os.getpid()}-{size}"
    pdir = tempfile.mkdtemp(prefix="pymq-persist-prof-")
    cfg = pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES, persistence_dir=pdir,
                            persistence_fsync="interval", persistence_fsync_interval=1.0)
    broker = pymq.Broker(cfg)
    t = {"read": 0, "encode": 0, "append": 0, "ack": 0}
    py_encode = 0
    try:
        ring = broker._ring("prof")
        joined = ring.join("profwriter", _core.GROUP_ACK, _core.START["earliest"], 0,
                           broker._owner_token(), 3600 * 10**9, 1000)  # like the writer's group
        # as the writer's: zero-copy (an ack group's records stay in the ring until acked)
        batch = _core.Batch(persistence.BATCH, max(1 << 20, ring.max_msg), zero_copy=True)
        lines = _core.Lines(batch)
        log = persistence.TopicLog(pdir, "prof", cfg)
        fill, pack = H.filler(size), H.INDEX.pack
        clock, done, chunk = time.perf_counter_ns, 0, persistence.BATCH
        while done < count:
            k = min(chunk, count - done)
            broker.publish_many("prof", [pack(i) + fill for i in range(done, done + k)])
            got = 0
            while got < k:
                a = clock()
                n = ring.read(joined.member, joined.member_gen, batch, persistence.BATCH,
                              1_000_000_000)
                b = clock()
                with ring.data() as payloads:
                    ends = lines.encode(0, n, payloads)
                c = clock()
                m = len(ends)
                log.append(lines.seqs(0), ends, m, lines.view)
                log.appended()
                d = clock()
                with ring.data() as (base, length):  # before the ack: records still there
                    ref = python_lines(_core.ffi.buffer(base, length), batch, n)
                e = clock()
                ring.ack(joined.group, joined.group_gen, batch, n)
                f = clock()
                if m != n or ref != lines.view[:ends[-1]]:
                    raise RuntimeError("the native encoder's lines differ from the Python reference")
                t["read"] += b - a
                t["encode"] += c - b
                t["append"] += d - c
                t["ack"] += f - e
                py_encode += e - d
                got += n
            done += k
        log.close()
        fsyncs = log.fsyncs
        on_disk = sum(os.path.getsize(os.path.join(log.dir, f)) for f in log.files())
    finally:
        broker.close()
        shutil.rmtree(pdir)
    total = sum(t.values())
    return {"payload_bytes": size, "messages": count,
            **{f"{k}_us_per_msg": v / count / 1e3 for k, v in t.items()},
            "total_us_per_msg": total / count / 1e3,
            **{f"{k}_share": v / total for k, v in t.items()},
            "python_encode_us_per_msg": py_encode / count / 1e3,
            "fsyncs": fsyncs, "log_bytes_per_msg": on_disk / count}


def summarise(label: str, persist: bool, runs: list[dict]) -> dict:
    med = lambda key: H.median(runs, key)  # noqa: E731
    return {"scenario": label, "persistence": persist, "runs": len(runs), "messages": runs[0]["messages"],
            **H.rate_summary(runs),
            "MB_per_s": med("MB_per_s"), "elapsed_s": med("elapsed_s"),
            "subscriber_s": med("subscriber_s"), "writer_after_sub_s": med("writer_after_sub_s"),
            "pub_cpu_us_per_msg": med("pub_cpu_us_per_msg"),
            "sub_cpu_us_per_msg": med("sub_cpu_us_per_msg"),
            "sup_cpu_us_per_msg": med("sup_cpu_us_per_msg"),
            "publish_waits": med("publish_waits")}


def print_table(rows: list[tuple[dict, dict]], prof: list[dict]) -> None:
    head = (f"{'scenario':<15}{'msgs':>10}{'off msg/s':>12}{'on msg/s':>12}{'on/off':>8}"
            f"{'on range':>20}{'writer tail s':>14}{'pub us':>12}{'sub us':>12}{'sup us':>12}{'waits':>14}")
    print(head)
    print(f"{'':<15}{'':>10}{'':>12}{'':>12}{'':>8}{'':>20}{'':>14}{'off/on':>12}{'off/on':>12}"
          f"{'off/on':>12}{'off/on':>14}")
    print("-" * len(head))
    for off, on in rows:
        rng = f"{on['msg_per_s_min']:,.0f}-{on['msg_per_s_max']:,.0f}"
        print(f"{off['scenario']:<15}{off['messages']:>10,}{off['msg_per_s']:>12,.0f}{on['msg_per_s']:>12,.0f}"
              f"{on['msg_per_s'] / off['msg_per_s']:>8.0%}{rng:>20}{on['writer_after_sub_s']:>14.3f}"
              f"{off['pub_cpu_us_per_msg']:>6.2f}/{on['pub_cpu_us_per_msg']:<5.2f}"
              f"{off['sub_cpu_us_per_msg']:>6.2f}/{on['sub_cpu_us_per_msg']:<5.2f}"
              f"{off['sup_cpu_us_per_msg']:>6.2f}/{on['sup_cpu_us_per_msg']:<5.2f}"
              f"{off['publish_waits']:>7,.0f}/{on['publish_waits']:<6,.0f}")
    print("\n(pub/sub/sup us = CPU us per message of the publisher, subscriber, supervisor process)")
    if prof:
        print("\nwriter breakdown (one process, Writer.step replayed), us per message:")
        for b in prof:
            print(f"  {b['payload_bytes']:>5} B x {b['messages']:,}: read {b['read_us_per_msg']:.3f}  "
                  f"encode {b['encode_us_per_msg']:.3f}  append {b['append_us_per_msg']:.3f}  "
                  f"ack {b['ack_us_per_msg']:.3f}  = {b['total_us_per_msg']:.3f}  "
                  f"(fsyncs {b['fsyncs']}, {b['log_bytes_per_msg']:.0f} B on disk per msg; "
                  f"Python reference encoder {b['python_encode_us_per_msg']:.3f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per run for every scenario (default per scenario: "
                         + ", ".join(f"{n} {c:,}" for n, _, _, c, _ in SCENARIOS) + ")")
    ap.add_argument("--repeat", type=int, default=3, help="runs per scenario and mode; medians (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small counts, --repeat 1 unless given, smaller breakdown")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the writer breakdown")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.messages is not None and args.messages < 1:
        ap.error("--messages must be >= 1")
    if args.quick and "--repeat" not in " ".join(argv if argv is not None else sys.argv):
        args.repeat = 1
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    ctx = mp.get_context("spawn")
    crc_cache, runs, rows = {}, [], []
    load_before = os.getloadavg()
    t_start = time.monotonic()
    for k, (label, size, batch, default_count, quick_count) in enumerate(SCENARIOS):
        count = args.messages or (quick_count if args.quick else default_count)
        mine = {False: [], True: []}
        for rep in range(args.repeat):
            order = (False, True) if rep % 2 == 0 else (True, False)
            for persist in order:
                r = run_once(ctx, persist, k, size, batch, count, crc_cache)
                r.update(scenario=label, repeat=rep)
                mine[persist].append(r)
                extra = (f"  writer tail {r['writer_after_sub_s']:.3f} s  log {r['log_bytes']:,} B "
                         f"in {r['log_files']} file(s), seqs+crc ok") if persist else ""
                print(f"# {label:<14} {'on ' if persist else 'off'} run {rep + 1}/{args.repeat}: "
                      f"{r['msg_per_s']:>11,.0f} msg/s  pub {r['pub_cpu_us_per_msg']:.2f} "
                      f"sub {r['sub_cpu_us_per_msg']:.2f} sup {r['sup_cpu_us_per_msg']:.2f} CPU us/msg  "
                      f"waits {r['publish_waits']}{extra}", file=sys.stderr, flush=True)
        runs.extend(mine[False] + mine[True])
        rows.append((summarise(label, False, mine[False]), summarise(label, True, mine[True])))
    prof = []
    if not args.no_breakdown:
        for size, n in ((64, 20_000 if args.quick else 300_000), (4096, 5_000 if args.quick else 60_000)):
            prof.append(writer_breakdown(size, n))
    load_after = os.getloadavg()
    print_table(rows, prof)
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{time.monotonic() - t_start:.0f} s")
    if args.json:
        H.write_json(args.json, {
            **H.run_info(), "ring_bytes": RING_BYTES, "batch": BATCH, "repeat": args.repeat,
            "fsync": "interval", "fsync_interval_s": 1.0, "tmpdir": tempfile.gettempdir(),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "summary": [{"off": off, "on": on, "ratio_on_off": on["msg_per_s"] / off["msg_per_s"]}
                        for off, on in rows],
            "runs": runs, "writer_breakdown": prof})
    return 0


if __name__ == "__main__":
    sys.exit(main())
