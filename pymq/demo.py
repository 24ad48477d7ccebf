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
accounts for every message:

    published (sum of the streamers' counts) == the topic's published figure
    for each group: processed (sum over its members) == published, and the
                    distinct (streamer, seq) processed == exactly what each
                    streamer published: no duplicate, nothing missing
                    (a nacked delivery is not processed; its redelivery is),
                    every processed message acked once (ack_many took effect),
                    per-streamer counts and crc32 sums == the streamers' own,
                    every payload valid JSON telemetry, first deliveries in
                    order per member,
                    broker stats: acked == published, dead_lettered == 0,
                    pending == 0, nacked and redelivered == the members' own.

Exit status 0 only when all of that balances (and nothing is left in
/dev/shm), 1 otherwise. Ctrl-C (or SIGTERM) stops early: the groups still
drain, the summary is printed and everything is removed; a second Ctrl-C
skips the drain.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import random
import signal
import sys
import threading
import time
import zlib

TOPIC = "gpu-telemetry"
GROUPS = ("dashboard", "archiver")
GPUS_PER_HOST = 8
MEM_TOTAL_MIB = 81920  # an 80 GB card
READ_BATCH = 64        # most payloads a collector takes per read
STOP_POLL = 0.1        # seconds a collector waits for data before looking at its stop event
START_TIMEOUT = 30.0   # seconds for every child to connect and subscribe
RESULT_TIMEOUT = 15.0  # seconds for a child to report after it was told to stop
MAX_PROCS = 64         # most streamers, and most members per group
MAX_SEQ = 1 << 32      # a larger telemetry seq is invalid (it would size a bitmap)
REQUIRED = {"host": str, "gpu": int, "util_pct": (int, float), "mem_used_mib": int,
            "mem_total_mib": int, "temp_c": (int, float), "power_w": (int, float),
            "streamer": int, "seq": int, "ts": (int, float)}


# -- child processes ------------------------------------------------------------

def _child_setup() -> None:
    """Children leave Ctrl-C to the parent, which stops them in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Gpu:
    """A random walk that looks like one GPU under a training job."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.util = rng.uniform(40, 95)
        self.mem = rng.randint(20_000, 70_000)
        self.temp = rng.uniform(45, 70)

    def sample(self) -> tuple[float, int, float, float]:
        rng = self.rng
        self.util = min(100.0, max(0.0, self.util + rng.uniform(-3, 3)))
        self.mem = min(MEM_TOTAL_MIB, max(1024, self.mem + rng.randint(-256, 256)))
        self.temp = min(95.0, max(30.0, self.temp + (self.util - 60) * 0.01 + rng.uniform(-0.5, 0.5)))
        power = 60 + self.util * 3.4 + rng.uniform(-5, 5)
        return round(self.util, 1), self.mem, round(self.temp, 1), round(power, 1)


def streamer(index: int, name: str, rate: float, batch: int, ready, go, stop, results) -> None:
    """Publish telemetry of one host until told to stop; report count and checksum."""
    _child_setup()
    import pymq

    out = {"role": "streamer", "index": index, "pid": os.getpid(), "count": 0, "crc": 0,
           "bytes": 0, "last_seq": 0, "full_retries": 0, "error": None}
    parent = os.getppid()
    seq = crc = nbytes = 0
    try:
        with pymq.connect(name) as client:
            rng = random.Random(index)
            gpus = [_Gpu(rng) for _ in range(GPUS_PER_HOST)]
            host = f"gpu-node-{index:02d}"
            ready.set()
            go.wait()
            t0 = time.monotonic()
            while True:
                if stop.is_set() or os.getppid() != parent:
                    break
                if rate > 0:  # pace: never ahead of t0 + sent / rate
                    ahead = t0 + (seq + batch) / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(min(ahead, 0.05))
                        continue
                payloads = []
                for k in range(batch):
                    s = seq + k + 1
                    gpu = s % GPUS_PER_HOST
                    util, mem, temp, power = gpus[gpu].sample()
                    payloads.append(json.dumps(
                        {"host": host, "gpu": gpu, "util_pct": util, "mem_used_mib": mem,
                         "mem_total_mib": MEM_TOTAL_MIB, "temp_c": temp, "power_w": power,
                         "streamer": index, "seq": s, "ts": time.time()},
                        separators=(",", ":")).encode())
                while True:  # a refused publish is retried, never dropped
                    try:
                        if batch == 1:
                            client.publish(TOPIC, payloads[0])
                        else:
                            client.publish_many(TOPIC, payloads)
                        break
                    except pymq.Full:
                        out["full_retries"] += 1
                        if stop.is_set():
                            payloads = None
                            break
                if payloads is None:
                    break
                # counted only once publish returned: the figures stay exact
                seq += len(payloads)
                for p in payloads:
                    crc += zlib.crc32(p)
                    nbytes += len(p)
    except pymq.BrokerClosed:
        if not stop.is_set():
            out["error"] = "the broker closed while publishing"
    except Exception as e:  # reported in the summary, never lost
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out.update(count=seq, crc=crc, bytes=nbytes, last_seq=seq)
        ready.set()  # never leave the parent waiting for a streamer that failed
        results.put(out)


def _valid(msg) -> bool:
    if not isinstance(msg, dict):
        return False
    for key, kind in REQUIRED.items():
        value = msg.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return False
    return (0 <= msg["gpu"] < GPUS_PER_HOST and 0 <= msg["util_pct"] <= 100
            and 0 <= msg["mem_used_mib"] <= msg["mem_total_mib"] and 0 < msg["temp_c"] < 130
            and msg["power_w"] >= 0 and msg["seq"] >= 1 and msg["streamer"] >= 0)


def _mark(seen: dict, streamer: int, seq: int) -> bool:
    """Set bit seq of the streamer's bitmap; False when it was set already (a duplicate)."""
    bm = seen.get(streamer)
    if bm is None:
        bm = seen[streamer] = bytearray(4096)
    i = seq >> 3
    if i >= len(bm):
        bm.extend(bytes(max(i + 1 - len(bm), len(bm))))
    bit = 1 << (seq & 7)
    if bm[i] & bit:
        return False
    bm[i] |= bit
    return True


def collector(group: str, member: int, name: str, nack_rate: float, ack_batch: int,
              ready, stop, abort, results) -> None:
    """One member of a group (subscribe_with_ack): receive, validate, account
    and ack until told to stop (then it reads on until nothing is left) or to
    abort (it stops at once, after acking what it processed).

    A first delivery is nacked with probability nack_rate instead of being
    processed: it comes back (delivery_attempt 2) to some member of the group,
    which processes and acks it. Processed messages are acked with ack_many,
    ack_batch at a time (0: after each batch read), and before any wait."""
    _child_setup()
    import pymq

    per_streamer: dict[int, list[int]] = {}  # streamer -> [count, crc sum, last seq]
    seen: dict[int, bytearray] = {}           # streamer -> bitmap of the seqs processed
    dup_examples: list[tuple[int, int, int]] = []  # (streamer, seq, delivery_attempt)
    out = {"role": "collector", "group": group, "member": member, "pid": os.getpid(),
           "count": 0, "acked": 0, "redelivered": 0, "nacked": 0, "duplicates": 0,
           "dup_examples": dup_examples, "crc": 0, "bytes": 0, "invalid": 0,
           "out_of_order": 0, "per_streamer": per_streamer, "seen": {}, "error": None,
           "latency_max": 0.0, "latency_sum": 0.0}
    parent = os.getppid()
    rng = random.Random(f"{group}/{member}/{os.getpid()}/{time.time_ns()}")
    read_size = min(READ_BATCH, ack_batch) if ack_batch else READ_BATCH
    count = acked = redelivered = nacked = dups = 0
    crc = nbytes = invalid = disorder = 0
    lat_max = lat_sum = 0.0
    todo: list = []  # processed, waiting for their ack

    def flush(sub) -> None:
        nonlocal acked, todo
        if todo:
            batch, todo = todo, []
            acked += sub.ack_many(batch)  # counts the acks that took effect

    try:
        with pymq.connect(name) as client, \
                client.subscribe_with_ack(TOPIC, group=group) as sub:
            ready.set()
            try:
                while True:
                    try:
                        batch = sub.get_many(read_size, timeout=STOP_POLL)
                    except pymq.Timeout:
                        flush(sub)  # never sit on unacked messages while idle
                        if stop.is_set() or os.getppid() != parent:
                            break
                        continue
                    now = time.time()
                    nacks = []
                    for m in batch:
                        attempt = m.delivery_attempt
                        if attempt == 1 and nack_rate and rng.random() < nack_rate:
                            nacks.append(m)  # not processed: it comes back
                            continue
                        payload = m.payload
                        count += 1
                        if attempt > 1:
                            redelivered += 1
                        todo.append(m)
                        c = zlib.crc32(payload)
                        crc += c
                        nbytes += len(payload)
                        try:
                            msg = json.loads(payload)
                        except ValueError:
                            invalid += 1
                            continue
                        if not _valid(msg) or msg["seq"] > MAX_SEQ:
                            invalid += 1
                            continue
                        s, seq = msg["streamer"], msg["seq"]
                        if not _mark(seen, s, seq):
                            dups += 1
                            if len(dup_examples) < 3:
                                dup_examples.append((s, seq, attempt))
                        acc = per_streamer.get(s)
                        if acc is None:
                            acc = per_streamer[s] = [0, 0, 0]
                        acc[0] += 1
                        acc[1] += c
                        if attempt == 1:  # first deliveries reach a member in order
                            if seq <= acc[2]:
                                disorder += 1
                            else:
                                acc[2] = seq
                        lat = now - msg["ts"]
                        lat_sum += lat
                        if lat > lat_max:
                            lat_max = lat
                    if nacks:
                        nacked += sub.nack_many(nacks)
                    if len(todo) >= ack_batch:  # ack_batch 0: after every read
                        flush(sub)
                    if abort.is_set():
                        break
            finally:
                try:  # what was processed is acked, whatever happened
                    flush(sub)
                except Exception:
                    pass
    except (pymq.BrokerClosed, pymq.SubscriptionClosed) as e:
        if not stop.is_set():
            out["error"] = f"{type(e).__name__}: {e}"
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out.update(count=count, acked=acked, redelivered=redelivered, nacked=nacked,
                   duplicates=dups, crc=crc, bytes=nbytes, invalid=invalid,
                   out_of_order=disorder, latency_max=lat_max, latency_sum=lat_sum,
                   seen={s: bytes(bm) for s, bm in seen.items()})
        ready.set()
        results.put(out)


# -- the parent ---------------------------------------------------------------------

class _Signals:
    """Ctrl-C and SIGTERM set flags instead of raising at a random place: the
    first asks for an early stop, the second skips the drain, the third raises."""

    def __init__(self):
        self.count = 0
        self.event = threading.Event()
        self.saved = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame):
        self.count += 1
        self.event.set()
        what = signal.Signals(signum).name
        if self.count >= 3:
            raise KeyboardInterrupt
        text = "stopping early (again to skip the drain)" if self.count == 1 else "skipping the drain"
        try:  # os.write: print() is not safe inside a signal handler
            os.write(2, f"\n{what}: {text}\n".encode())
        except OSError:
            pass

    @property
    def stop(self) -> bool:
        return self.count >= 1

    @property
    def abort(self) -> bool:
        return self.count >= 2


def _start(ctx_procs) -> None:
    """Start processes with SIGINT ignored, so that a Ctrl-C during their
    start-up cannot hit them before they ignore it themselves."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in ctx_procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, old)


def _wait_events(events, procs, timeout: float, sig: _Signals) -> bool:
    """Wait until every event is set, a process died, time ran out or Ctrl-C."""
    deadline = time.monotonic() + timeout
    for ev, p in zip(events, procs):
        while not ev.wait(0.05):
            if sig.stop or not p.is_alive() or time.monotonic() > deadline:
                return False
    return True


def _collect(results, got: list, role: str, procs, timeout: float) -> None:
    """Read result dicts into got until every process of `role` reported, they
    all ended or time ran out (before join: a queue feeder must drain)."""
    deadline = time.monotonic() + timeout
    while sum(r["role"] == role for r in got) < len(procs):
        try:
            got.append(results.get(timeout=0.1))
        except queue.Empty:
            if time.monotonic() > deadline:
                break
            if not any(p.is_alive() for p in procs) and results.empty():
                try:  # a last result may still be in the pipe
                    got.append(results.get(timeout=0.5))
                    continue
                except queue.Empty:
                    break


def _join(procs, timeout: float) -> list[str]:
    """Join children; terminate the ones that do not finish. Returns complaints."""
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


ACK_FIGURES = ("acked", "nacked", "redelivered", "dead_lettered", "timeouts", "pending")


def _topic(stats: dict) -> dict:
    return stats["topics"].get(TOPIC) or {"published": 0, "delivered": 0, "depth": 0,
                                          "ring_bytes_used": 0, "ring_bytes_capacity": 1,
                                          "publish_waits": 0, "publish_refusals": 0, "groups": {},
                                          **dict.fromkeys(ACK_FIGURES, 0)}


class _Live:
    """One line of figures about once a second."""

    def __init__(self, broker, t0: float):
        self.broker = broker
        self.t0 = t0
        self.last_t = t0
        self.last_pub = 0
        self.peak_rate = 0.0
        self.peak_used = 0

    def line(self, phase: str) -> dict:
        st = self.broker.stats()
        t = _topic(st)
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


def _live_group(name: str, g: dict | None) -> str:
    if g is None:
        return f"{name} (missing)"
    return (f"{name} acked {g['acked']:>9,} lag {g['lag']:>5,} nacked/redelivered/dlq "
            f"{g['nacked']:,}/{g['redelivered']:,}/{g['dead_lettered']:,}")


def _drained(stats: dict) -> bool:
    """Every group acked everything published."""
    t = _topic(stats)
    return all(g in t["groups"] and t["groups"][g]["acked"] >= t["published"] for g in GROUPS)


def _settled(stats: dict) -> bool:
    """Nothing more will happen: every group acked or dead-lettered everything
    published and has no delivery pending (dead-lettered ones never come back)."""
    t = _topic(stats)
    groups = [t["groups"].get(g) for g in GROUPS]
    return all(g is not None and g["pending"] == 0 and
               g["acked"] + g["dead_lettered"] >= t["published"] for g in groups)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo's options (shared with `pymq demo`)."""
    from pymq.cli import broker_name_arg
    p.add_argument("--duration", type=_positive_float, default=15.0, metavar="SECONDS",
                   help="how long the streamers publish (default 15)")
    p.add_argument("--streamers", type=_count, default=4, metavar="N",
                   help=f"streamer processes, 1 to {MAX_PROCS} (default 4)")
    p.add_argument("--members", type=_count, default=2, metavar="N",
                   help=f"member processes per collector group, 1 to {MAX_PROCS} (default 2)")
    p.add_argument("--rate", type=_nonneg_float, default=2000.0, metavar="MSG_PER_S",
                   help="messages per second per streamer; 0: as fast as possible (default 2000)")
    p.add_argument("--batch", type=_positive_int, default=1, metavar="N",
                   help="payloads per publish call (>1 uses publish_many; default 1)")
    p.add_argument("--name", type=broker_name_arg, default=None, metavar="NAME",
                   help="broker name (default: demo-<pid>)")
    p.add_argument("--ack-batch", type=_nonneg_int, default=0, metavar="N",
                   help="a collector acks (ack_many) once N processed messages are waiting; "
                        "0: after each batch it reads, up to 64 (default 0)")
    p.add_argument("--nack-rate", type=_probability, default=0.001, metavar="P",
                   help="probability that a collector nacks a first delivery instead of "
                        "processing it; it is redelivered and processed then (default 0.001)")
    p.add_argument("--drain-timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                   help="longest wait for the groups to catch up at the end (default 30)")
    p.add_argument("--persistence-dir", default=os.path.join("data", "demo"), metavar="DIR",
                   help="write every message to JSON-lines files under DIR/<broker name> "
                        "(default data/demo; the previous demo run's files there go)")
    p.add_argument("--no-persistence", action="store_true", help="run without persistence")
    p.add_argument("--admin-port", type=_admin_port, default=0, metavar="PORT",
                   help="port of the admin server and dashboard on 127.0.0.1: 0 picks a free "
                        "one (default), -1 runs without it")
    return p


def _admin_port(text: str) -> int:
    return _number(text, int, lambda v: -1 <= v <= 65535, "a port from 0 to 65535, or -1")


def _number(text: str, kind, ok, want: str):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value) or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be {want}, not {text!r}")
    return value


def _count(text: str) -> int:
    return _number(text, int, lambda v: 1 <= v <= MAX_PROCS, f"an integer from 1 to {MAX_PROCS}")


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "an integer >= 1")


def _nonneg_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "an integer >= 0")


def _probability(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def _positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a number > 0")


def _nonneg_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a number >= 0")


def _hex(n: int) -> str:
    return f"{n & 0xFFFFFFFFFFFFFFFF:016x}"


def run(args: argparse.Namespace) -> int:
    """Run the pipeline with parsed options; returns the exit status."""
    import pymq
    from pymq import segments
    from pymq.config import check_broker_name

    name = args.name or f"demo-{os.getpid()}"
    check_broker_name(name)
    persist_dir, published_total = None, None
    if not args.no_persistence:
        import glob
        import shutil
        for old in glob.glob(os.path.join(args.persistence_dir, "demo-*")):
            shutil.rmtree(old, ignore_errors=True)  # the previous runs' files
        persist_dir = os.path.join(args.persistence_dir, name)
    cfg = pymq.BrokerConfig.from_env(name=name, persistence_enabled=persist_dir is not None,
                                     persistence_dir=persist_dir or "/data/mq")
    sig = _Signals()
    sig.install()
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    streamer_stop, collector_stop, go, abort = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Event()
    collectors, streamers, problems = [], [], []
    broker = None
    try:
        broker = pymq.Broker(cfg)
        print(f"pymq demo: broker {name!r} (pid {os.getpid()}, supervisor pid "
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
        nack_rate = args.nack_rate
        if nack_rate and cfg.max_retries < 1:
            print("  max_retries is 0: a nacked message would be dead-lettered at once, "
                  "so the collectors do not nack (--nack-rate ignored)", flush=True)
            nack_rate = 0.0
        acks = f"ack_many every {args.ack_batch}" if args.ack_batch else "ack_many per read"
        print(f"  at-least-once: {acks}, nack rate {nack_rate:g}, ack timeout "
              f"{cfg.ack_timeout:g} s, max retries {cfg.max_retries}", flush=True)

        # 1. collectors subscribe before anything is published
        c_ready = []
        for group in GROUPS:
            for m in range(args.members):
                ev = ctx.Event()
                c_ready.append(ev)
                collectors.append(ctx.Process(
                    target=collector, name=f"collector-{group}-{m}", daemon=True,
                    args=(group, m, name, nack_rate, args.ack_batch, ev, collector_stop,
                          abort, results)))
        _start(collectors)
        if not _wait_events(c_ready, collectors, START_TIMEOUT, sig):
            if not sig.stop:
                problems.append("the collectors did not all subscribe in time")
        # 2. streamers connect, then start together
        s_ready = []
        if not problems and not sig.stop:
            for i in range(args.streamers):
                ev = ctx.Event()
                s_ready.append(ev)
                streamers.append(ctx.Process(
                    target=streamer, name=f"streamer-{i}", daemon=True,
                    args=(i, name, args.rate, args.batch, ev, go, streamer_stop, results)))
            _start(streamers)
            if not _wait_events(s_ready, streamers, START_TIMEOUT, sig) and not sig.stop:
                problems.append("the streamers did not all connect in time")
        if sig.stop and not streamers:
            problems.append("interrupted before the streamers started")
        t0 = time.monotonic()
        live = _Live(broker, t0)
        go.set()
        # 3. run, with live figures
        end = t0 + args.duration
        if streamers and not problems:
            while not sig.stop:
                left = end - time.monotonic()
                if left <= 0:
                    break
                sig.event.wait(min(1.0, left))
                if not sig.stop:
                    live.line("run")
        ran = time.monotonic() - t0
        # 4. streamers stop and report
        streamer_stop.set()
        got: list[dict] = []  # a child that failed early may have reported already
        _collect(results, got, "streamer", streamers, RESULT_TIMEOUT)
        problems += _join(streamers, RESULT_TIMEOUT)
        # 5. the groups drain: wait until each has acked everything published
        t_drain = time.monotonic()
        drain_end = t_drain + args.drain_timeout
        stats = broker.stats()
        next_line = time.monotonic() + 1.0
        while not _settled(stats) and not sig.abort and time.monotonic() < drain_end:
            if not any(p.is_alive() for p in collectors):
                break
            time.sleep(0.02)
            stats = broker.stats()
            if time.monotonic() >= next_line:
                live.line("drain")
                next_line += 1.0
        drain_time = time.monotonic() - t_drain
        if not _drained(stats):
            abort.set()  # skipped or timed out: the collectors report what they have now
        # 6. collectors stop (each finishes its batch, then sees no more data)
        collector_stop.set()
        _collect(results, got, "collector", collectors, RESULT_TIMEOUT)
        problems += _join(collectors, RESULT_TIMEOUT)
        stats = live.line("end")
        published_total = stats["topics"].get(TOPIC, {}).get("published", 0)
        if _drained(stats):
            drain_problem = None
        elif sig.abort:
            drain_problem = "(drain skipped)"
        elif _settled(stats):
            drain_problem = "(the rest was dead-lettered)"
        else:
            drain_problem = f"within {args.drain_timeout:g} s"
        s_results = [r for r in got if r["role"] == "streamer"]
        c_results = [r for r in got if r["role"] == "collector"]
        ok = _summary(args, name, stats, s_results, c_results, problems, ran, drain_time,
                      drain_problem, sig, live, len(streamers))
    finally:
        streamer_stop.set()
        collector_stop.set()
        abort.set()
        go.set()
        _join(streamers + collectors, 5.0)
        if broker is not None:
            broker.close()
        sig.restore()
    if persist_dir is not None and broker is not None:
        ok = _persistence_summary(persist_dir, published_total) and ok
    left = segments.namespace_entries(name)
    if left:
        print(f"NOT CLEAN: left in {segments.SHM_DIR}: {', '.join(left)}")
        ok = False
    else:
        print(f"clean: nothing of broker {name!r} left in {segments.SHM_DIR}")
    print("RESULT: " + ("balanced - each group processed and acked every published message "
                        "exactly once" if ok else "NOT balanced (see above)"))
    return 0 if ok else 1


def _persistence_summary(persist_dir: str, published: int | None) -> bool:
    """What the broker wrote to disk: every published message, once, in order."""
    import glob
    import json
    files = sorted(glob.glob(os.path.join(persist_dir, TOPIC, "*.jsonl")))
    seqs, size = [], 0
    for f in files:
        size += os.path.getsize(f)
        with open(f, "rb") as fh:
            seqs.extend(json.loads(line)["seq"] for line in fh)
    distinct = sorted(set(seqs))
    complete = published is not None and distinct == list(range(1, published + 1))
    print(f"persistence: {len(seqs):,} lines ({len(distinct):,} distinct seqs) in {len(files)} "
          f"file(s), {size / 1e6:.1f} MB under {os.path.join(persist_dir, TOPIC)}: "
          + ("every published message is on disk" if complete else
             f"NOT every published message ({published}) is on disk"))
    return complete


def _summary(args, name, stats, s_results, c_results, problems, ran, drain_time,
             drain_problem, sig, live, started) -> bool:
    """Print the closing accounting; True when everything balances."""
    t = _topic(stats)
    bad = list(problems)
    s_results.sort(key=lambda r: r["index"])
    published = sum(r["count"] for r in s_results)
    crc = sum(r["crc"] for r in s_results)
    nbytes = sum(r["bytes"] for r in s_results)
    print()
    print("=" * 78)
    how = "interrupted after" if sig.stop else "ran"
    print(f"summary: {how} {ran:.1f} s, drained in {drain_time:.2f} s; broker {name!r}")
    print(f"published  {published:>12,} messages ({nbytes / 1e6:,.1f} MB), "
          f"{published / max(ran, 1e-9):,.0f} msg/s; crc32 sum {_hex(crc)}")
    print(f"  broker stats: published {t['published']:,}, publish waits "
          f"{t['publish_waits']:,}, refusals {t['publish_refusals']:,}, "
          f"peak {live.peak_rate:,.0f} msg/s, ring peak {live.peak_used / 1024:,.0f} KiB used")
    if len(s_results) != started:
        bad.append(f"{started - len(s_results)} streamer(s) never reported")
    for r in s_results:
        err = f"  ERROR {r['error']}" if r["error"] else ""
        print(f"  streamer {r['index']} pid {r['pid']:>7}  {r['count']:>12,}  crc32 sum "
              f"{_hex(r['crc'])}  Full retries {r['full_retries']}{err}")
        if r["error"]:
            bad.append(f"streamer {r['index']}: {r['error']}")
    refused = sum(r["full_retries"] for r in s_results)
    if refused != t["publish_refusals"]:
        bad.append(f"streamers were refused (pymq.Full) {refused:,} times, the broker counted "
                   f"{t['publish_refusals']:,} refusals")
    if published != t["published"]:
        bad.append(f"streamers counted {published:,} published, the broker {t['published']:,}")
    by_streamer = {r["index"]: r for r in s_results}
    for group in GROUPS:
        members = sorted((r for r in c_results if r["group"] == group), key=lambda r: r["member"])
        bad += _group_summary(group, members, t["groups"].get(group), published, crc,
                              by_streamer, args.members)
    if drain_problem:
        bad.append(f"the groups did not ack every published message {drain_problem}")
    for line in bad:
        print(f"  does not balance: {line}")
    print("=" * 78)
    return not bad


def _bits(n: int) -> int:
    return bin(n).count("1")


def _lowest(n: int) -> int:
    return (n & -n).bit_length() - 1


def _distinct(members: list[dict], by_streamer: dict) -> tuple[list[str], set, int, int]:
    """Check the group's (streamer, seq) bitmaps against what each streamer
    published: returns (complaints, the streamers they name, distinct messages
    processed, duplicates across members). Duplicates inside one member are
    counted by that member."""
    bad, named, distinct, dups = [], set(), 0, 0
    streamers = set(by_streamer) | {s for r in members for s in r["seen"]}
    for idx in sorted(streamers):
        union = overlap = 0
        for r in members:
            bm = r["seen"].get(idx)
            if bm:
                b = int.from_bytes(bm, "little")
                overlap |= union & b
                union |= b
        before = len(bad)
        distinct += _bits(union)
        if overlap:
            dups += _bits(overlap)
            bad.append(f"from streamer {idx}: {_bits(overlap):,} message(s) processed by more "
                       f"than one member (duplicates), e.g. seq {_lowest(overlap)}")
        s = by_streamer.get(idx)
        if s is None:
            bad.append(f"{_bits(union):,} message(s) from streamer {idx}, which never reported")
            continue
        expected = (1 << (s["count"] + 1)) - 2  # seqs 1..count
        missing, extra = expected & ~union, union & ~expected
        if missing:
            bad.append(f"from streamer {idx}: {_bits(missing):,} published message(s) never "
                       f"processed, e.g. seq {_lowest(missing)}")
        if extra:
            bad.append(f"from streamer {idx}: {_bits(extra):,} message(s) processed that it "
                       f"never counted as published, e.g. seq {_lowest(extra)}")
        if len(bad) > before:
            named.add(idx)
    return bad, named, distinct, dups


def _group_summary(group: str, members: list[dict], g: dict | None, published: int, crc: int,
                   by_streamer: dict, want_members: int) -> list[str]:
    """Print one group's accounting; returns its complaints."""
    bad: list[str] = []
    g = g or {"delivered": 0, "lag": 0, "members": 0, **dict.fromkeys(ACK_FIGURES, 0)}
    processed = sum(r["count"] for r in members)
    acked = sum(r["acked"] for r in members)
    redelivered = sum(r["redelivered"] for r in members)
    nacked = sum(r["nacked"] for r in members)
    local_dups = sum(r["duplicates"] for r in members)
    gcrc = sum(r["crc"] for r in members)
    set_bad, named, distinct, cross_dups = _distinct(members, by_streamer)
    dups = local_dups + cross_dups
    balanced = (processed == published == distinct == acked and gcrc == crc and not set_bad
                and not dups)
    print(f"group {group:10} processed {processed:>10,} of {published:,}, distinct {distinct:,}, "
          f"acked {acked:,}, duplicates {dups:,}  crc32 sum {_hex(gcrc)} "
          f"{'==' if gcrc == crc else '!='} {_hex(crc)}  {'OK' if balanced else 'MISMATCH'}")
    print(f"  broker stats: acked {g['acked']:,}, delivered {g['delivered']:,}, nacked "
          f"{g['nacked']:,}, redelivered {g['redelivered']:,}, dead_lettered "
          f"{g['dead_lettered']:,}, timeouts {g['timeouts']:,}, pending {g['pending']:,}, "
          f"lag {g['lag']:,}, members now {g['members']}")
    for r in members:
        share = 100.0 * r["count"] / processed if processed else 0.0
        valid = r["count"] - r["invalid"]
        lat = (f"latency avg {1e3 * r['latency_sum'] / valid:.2f} ms max "
               f"{1e3 * r['latency_max']:.1f} ms") if valid > 0 else ""
        err = f"  ERROR {r['error']}" if r["error"] else ""
        print(f"  member {r['member']} pid {r['pid']:>7}  {r['count']:>10,} ({share:5.1f}%)  "
              f"redeliveries {r['redelivered']:,}  nacked {r['nacked']:,}  invalid {r['invalid']}  "
              f"out of order {r['out_of_order']}  {lat}{err}")
        who = f"{group} member {r['member']}"
        if r["error"]:
            bad.append(f"{who}: {r['error']}")
        if r["invalid"] or r["out_of_order"]:
            bad.append(f"{who}: {r['invalid']} invalid, {r['out_of_order']} out of order")
        if r["duplicates"]:
            ex = ", ".join(f"streamer {s} seq {q} (attempt {a})" for s, q, a in r["dup_examples"])
            bad.append(f"{who}: processed {r['duplicates']:,} message(s) a second time "
                       f"(duplicates), e.g. {ex}")
        if r["acked"] != r["count"]:
            bad.append(f"{who}: processed {r['count']:,} but {r['acked']:,} acks took effect "
                       "(a message acked twice, late or not at all)")
    bad += [f"{group}: {line}" for line in set_bad]
    if len(members) != want_members:
        bad.append(f"{group}: {want_members - len(members)} member(s) never reported")
    if processed != published:
        where = ""
        if processed + g["lag"] + g["pending"] == published and g["lag"] + g["pending"]:
            where = ": the rest is still unread or unacked"
        bad.append(f"{group}: processed {processed:,}, published {published:,} "
                   f"({processed - published:+,}){where}")
    if gcrc != crc:
        bad.append(f"{group}: crc32 sum {_hex(gcrc)} != published {_hex(crc)}")
    for idx, s in by_streamer.items():  # which streamer does not balance, if not said yet
        if idx in named or any(r["duplicates"] for r in members):
            continue
        per = [r["per_streamer"].get(idx, [0, 0, 0]) for r in members]
        n, c = sum(p[0] for p in per), sum(p[1] for p in per)
        if (n, c) != (s["count"], s["crc"]):
            bad.append(f"{group}: from streamer {idx} processed {n:,} (crc32 sum {_hex(c)}), "
                       f"it published {s['count']:,} ({_hex(s['crc'])})")
    # the broker's figures must tell the same story
    if g["acked"] != published:
        bad.append(f"{group}: the broker counted {g['acked']:,} acked, {published:,} published")
    if g["dead_lettered"]:
        bad.append(f"{group}: {g['dead_lettered']:,} message(s) dead-lettered to {TOPIC}.dlq")
    if g["pending"]:
        bad.append(f"{group}: {g['pending']:,} deliveries still pending (unacked) at the end")
    if g["nacked"] != nacked:
        bad.append(f"{group}: the members nacked {nacked:,}, the broker counted {g['nacked']:,}")
    if g["redelivered"] != redelivered:
        bad.append(f"{group}: the members processed {redelivered:,} redeliveries, the broker "
                   f"redelivered {g['redelivered']:,}")
    return bad


def build_parser() -> argparse.ArgumentParser:
    from pymq.cli import ArgumentParser  # usage errors on one line
    p = ArgumentParser(
        prog="python -m pymq.demo",
        description="The GPU-telemetry pipeline: streamers, two collector groups, live figures "
                    "and a closing account of every message.")
    return add_arguments(p)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("pymq demo: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # one readable line, never a traceback
        if os.environ.get("PYMQ_DEBUG"):
            raise
        print(f"pymq demo: error: {e or type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
