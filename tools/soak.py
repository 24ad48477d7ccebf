#!/usr/bin/env python3
"""Soak (issue 14): a broker under steady load for a long time, with
periodic SIGKILLs and SIGSTOPs, that must account for every message and keep
its memory, /dev/shm and open files flat.

The broker is `pymq serve` in a process of its own (persistence on, into a
temporary folder); 10 publishers (publish() and publish_many(), rate-limited)
and 10 collectors in three named groups: "dashboard", plain (at most once),
"archive", an ack group (at least once), and "ledger", an ack group checked
against the log on disk and against a restart from it (the durable one). The
processes are tests/chaos/chaos_roles.py's: each reports every message as it
handles it. Every --kill-every seconds (on average) one publisher or
collector is SIGKILLed and a new one started in its place (with
--kill-supervisor, the supervisor too: the broker restarts it); every
--stop-every seconds one process (or the supervisor) is SIGSTOPped for 10 to
300 ms.

While it runs: a line every --interval seconds (published, delivered, acked,
redelivered, what plain members hold unreported (in hand, or lost with a
killed member), the RSS and open files of the broker process and the
supervisor, /dev/shm bytes of this broker). At the end: publishers stopped,
everything drained and reported, then
- every message published (every confirmed call, and a call in doubt, its
  publisher killed inside it, if anyone saw it) reached the ack groups at
  least once, each delivery attempt once; the plain group once, but for what
  killed members held (their count is exactly the group's `delivered` minus
  what its members reported); nothing else arrived; every crc held; each
  member's reads in publish order per publisher;
- the broker stops on SIGTERM (exit 0) and leaves nothing in /dev/shm;
- the log on disk holds every seq 1..published once, each with a payload that
  was published, each published payload once;
- a broker started again from that folder delivers nothing again to any
  group, and a new message to each (with the next seq);
- RSS, /dev/shm bytes and open files are flat: the last sample after warm-up
  exceeds the first by no more than the margins (RSS_MARGIN, SHM_MARGIN,
  FD_MARGIN below).
Exit 0 only when all of that holds; the figures as JSON with --json (with
the longest the harness itself was held up by one of its steps: a sampling,
a kill, a stop or reading its processes' reports).

    nice -n 19 .venv/bin/python tools/soak.py --duration 3600 --json build/soak.json
"""

import argparse
import array
import collections
import json
import math
import multiprocessing
import multiprocessing.connection as mpc
import os
import platform
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "chaos")]

import psutil  # noqa: E402

import chaos_roles as roles  # noqa: E402
import pymq  # noqa: E402
from chaos_engine import F_SETPIPE_SZ, PIPE_BYTES, Stopper, Worker  # noqa: E402
from pymq import segments  # noqa: E402
from pymq.persistence import LogReport, read_log  # noqa: E402
from workers import parse_payload  # noqa: E402

TOPIC = "soak"
GROUPS = {"dashboard": "plain", "archive": "ack", "ledger": "ack"}  # name -> kind
MEMBERS = {"dashboard": 3, "archive": 3, "ledger": 4}                # 10 collectors
MiB = 1024 * 1024
# Flat means: the last sample after warm-up is at most the first plus this.
RSS_MARGIN = 8 * MiB       # per process (allocator noise, caches that settle)
SHM_MARGIN = 64 * 1024     # a few token files of processes being replaced
FD_MARGIN = 4              # per process
READ_BATCH = 32
WORK = 0.002               # seconds a collector works on a read


class SoakFailure(Exception):
    pass


class Counts:
    """A count per (publisher, index), one bytearray per publisher."""

    def __init__(self):
        self.by_pub = {}

    def add(self, pub, i):
        a = self.by_pub.get(pub)
        if a is None:
            a = self.by_pub[pub] = bytearray(max(1024, i + 1))
        elif i >= len(a):
            a.extend(bytes(max(len(a), i + 1 - len(a))))
        if a[i] < 255:
            a[i] += 1
        return a[i]

    def get(self, pub, i):
        a = self.by_pub.get(pub)
        return a[i] if a is not None and i < len(a) else 0

    def missing(self, pub, n):
        """How many of indices 0..n-1 have a count of 0."""
        a = self.by_pub.get(pub, b"")
        return a[:n].count(0) + max(0, n - len(a))

    def total(self):
        return sum(sum(a) for a in self.by_pub.values())


class Proc(Worker):
    """A process of the soak: the chaos engine's Worker, with the soak's running
    account in place of the engine's per-round records."""

    def __init__(self, kind, group, pub, batch_max, proc, conn):
        super().__init__(kind, group, pub, batch_max, proc, conn, None)
        self.pending = None  # a publisher's call announced and not yet confirmed: (i, n)
        self.upto = 0        # a publisher's payloads 0..upto-1 are confirmed
        self.last = {}       # a member's last index per publisher (its order)
        self.last_seq = 0    # an ack member's last first-delivery seq


class Soak:
    def __init__(self, args):
        self.a = args
        self.name = args.name
        self.rng = random.Random(args.seed)
        self.ctx = multiprocessing.get_context("spawn")
        self.procs = []
        self.pubs = 0
        self.dir = tempfile.mkdtemp(prefix="pymq-soak-")
        self.server = None
        self.client = None
        self.stopper = Stopper()
        self.seen = {g: Counts() for g in GROUPS}
        self.first = {g: Counts() for g in GROUPS if GROUPS[g] == "ack"}  # attempt-1 deliveries
        self.reported = collections.Counter()  # per group
        self.again = 0       # ack reports of a delivery attempt > 1
        self.kills = collections.Counter()
        self.killed_plain = 0
        self.stops = 0
        self.samples = []
        self.held_up = {"s": 0.0, "in": None, "at_t": None}  # see timed()
        self.failures = []
        self.started = time.monotonic()

    # -- processes -----------------------------------------------------------------

    def spawn(self, kind, group=None, batch_max=1):
        r, w = self.ctx.Pipe(duplex=False)
        fcntl_pipe(w)
        seed = self.rng.getrandbits(32)
        pub = None
        if kind == "publisher":
            self.pubs += 1
            pub = self.pubs
            target = roles.publisher
            args = (self.name, TOPIC, pub, batch_max, self.a.max_size, seed, w, self.pub_stop,
                    self.a.rate, self.go)
        else:
            target = roles.plain_member if kind == "plain" else roles.ack_member
            args = (self.name, TOPIC, group, READ_BATCH, seed, w, self.member_stop,
                    self.flush_gen, WORK)
        p = self.ctx.Process(target=target, args=args, daemon=True)
        p.start()
        w.close()
        proc = Proc(kind, group, pub, batch_max, p, r)
        self.procs.append(proc)
        return proc

    def pump(self, timeout):
        live = {p.conn: p for p in self.procs if not p.eof}
        if not live:
            time.sleep(timeout)
            return
        for c in mpc.wait(list(live), timeout):
            p = live[c]
            try:
                for _ in range(256):
                    self.frame(p, c.recv_bytes())
                    if not c.poll():
                        break
            except (EOFError, OSError):
                p.eof = True
                c.close()

    def frame(self, p, f):
        kind = f[:1]
        if kind == b"R":
            seen = self.seen[p.group]
            a = array.array("I", f[1:])
            for pub, i in zip(a[0::2], a[1::2]):
                if seen.add(pub, i) > 1:
                    self.fail(f"plain group {p.group!r}: ({pub}, {i}) delivered twice")
                if i <= p.last.get(pub, -1):
                    self.fail(f"{p}: ({pub}, {i}) after index {p.last[pub]}")
                p.last[pub] = i
            self.reported[p.group] += len(a) // 2
        elif kind == b"A":
            seen, first = self.seen[p.group], self.first[p.group]
            for pub, i, seq, attempt in roles.ACKED.iter_unpack(f[1:]):
                seen.add(pub, i)
                self.reported[p.group] += 1
                if attempt == 1:
                    if first.add(pub, i) > 1:
                        self.fail(f"ack group {p.group!r}: ({pub}, {i}) first delivered twice")
                    if seq <= p.last_seq:
                        self.fail(f"{p}: seq {seq} after {p.last_seq}")
                    p.last_seq = seq
                else:
                    self.again += 1
        elif kind == b"I":
            i, n, last = roles.INTENT.unpack_from(f, 1)
            if p.pending:
                p.upto = p.pending[0] + p.pending[1]
            if i != p.upto:
                self.fail(f"{p} announced index {i}, not {p.upto}")
            p.pending = (i, n)
        elif kind == b"D":
            if p.pending:
                p.upto = p.pending[0] + p.pending[1]
            p.pending, p.done = None, True
        elif kind == b"F":
            p.flushed = roles.GEN.unpack_from(f, 1)[0]
        elif kind == b"J":
            p.joined = True
        elif kind == b"X":
            p.left = True
        elif kind == b"E":
            raise SoakFailure(f"{p}: {f[1:].decode(errors='replace')}")

    def fail(self, what):
        if len(self.failures) < 50:
            self.failures.append(what)

    def run_for(self, seconds):
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.pump(left)

    def wait(self, cond, what, timeout=60.0):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise SoakFailure(f"wedged: waited {timeout:g} s for {what}")
            self.pump(0.01)

    # -- the run -------------------------------------------------------------------

    def start(self):
        self.pub_stop = roles.Flag(self.ctx)
        self.member_stop = roles.Flag(self.ctx)
        self.go = roles.Flag(self.ctx)
        self.flush_gen = self.ctx.RawValue("Q", 0)
        for g, n in MEMBERS.items():
            for _ in range(n):
                self.spawn(GROUPS[g], g)
        for k in range(self.a.publishers):
            self.spawn("publisher", batch_max=1 if k % 2 == 0 else 16)
        env = dict(os.environ, PYMQ_NAME=self.name, PYMQ_PERSISTENCE_ENABLED="1",
                   PYMQ_PERSISTENCE_DIR=self.dir, PYMQ_RING_BYTES=str(1 * MiB),
                   PYMQ_MAX_MESSAGE_BYTES="4096", PYMQ_PUBLISH_TIMEOUT="60",
                   PYMQ_ACK_TIMEOUT="600", PYMQ_MAX_RETRIES="1000",
                   PYMQ_PERSISTENCE_SEGMENT_BYTES=str(16 * MiB),
                   PYMQ_PERSISTENCE_RETENTION_BYTES=str(64 * 1024 * MiB))
        self.server_log = open(os.path.join(self.dir, "serve.log"), "wb")
        self.server = subprocess.Popen([sys.executable, "-m", "pymq", "serve", "--log-level",
                                        "WARNING"], env=env, stdout=self.server_log,
                                       stderr=subprocess.STDOUT)
        self.client = pymq.connect(self.name, wait=60)
        for g, kind in GROUPS.items():  # every group from seq 1 on
            (self.client.subscribe if kind == "plain" else self.client.subscribe_with_ack)(
                TOPIC, group=g).close()
        self.go.set()
        self.wait(lambda: all(p.joined for p in self.procs), "every process to start")

    def loop(self):
        """The load: --duration seconds and a sample every --interval, the
        last at the end. A harness held up past a sample's time (starved of
        CPU, its VM paused) takes it late, the next one --interval after
        that, and keeps the load on until it has taken them all: the samples
        are as many, and as far apart, however busy the machine."""
        a = self.a
        self.load_started = time.monotonic()
        end = self.load_started + a.duration
        samples = math.ceil(a.duration / a.interval) + 1  # the last at the end
        next_kill = time.monotonic() + self.rng.uniform(0.5, 1.5) * a.kill_every
        next_stop = time.monotonic() + self.rng.uniform(0.5, 1.5) * a.stop_every
        next_sample = time.monotonic()
        while (now := time.monotonic()) < end or len(self.samples) < samples:
            if now >= next_sample:
                self.timed("sample", self.sample)
                late = now > next_sample + a.interval / 2
                next_sample = (now if late else next_sample) + a.interval
            if a.kill_every and now >= next_kill:
                self.timed("kill", self.kill_one)
                next_kill = now + self.rng.uniform(0.5, 1.5) * a.kill_every
            if a.stop_every and now >= next_stop:
                self.timed("stop", self.stop_one)
                next_stop = now + self.rng.uniform(0.5, 1.5) * a.stop_every
            wake = min(next_sample, next_kill if a.kill_every else math.inf,
                       next_stop if a.stop_every else math.inf, end if now < end else math.inf)
            timeout = max(0.0, wake - time.monotonic())
            self.timed("pump", self.pump, timeout, allowed=timeout)

    def timed(self, step, fn, *args, allowed=0.0):
        """fn(*args), keeping the longest the harness was held up by one step
        (beyond the wait it asked for) in `held_up`: what made a sample late."""
        t0 = time.monotonic()
        fn(*args)
        over = time.monotonic() - t0 - allowed
        if over > self.held_up["s"]:
            self.held_up = {"s": round(over, 3), "in": step,
                            "at_t": round(t0 - self.load_started, 1)}

    def running(self, kind=None):
        return [p for p in self.procs if p.joined and not p.killed and not p.eof and
                (kind is None or p.kind == kind)]

    def kill_one(self):
        choices = ["publisher", "plain", "ack"] + (["supervisor"] if self.a.kill_supervisor else [])
        kind = self.rng.choice(choices)
        if kind == "supervisor":
            pid = self.client.stats()["supervisor"]["pid"]
            if pid and pid not in self.stopper and psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
                self.stopper.forget(pid)
                self.kills[kind] += 1
            return
        victims = self.running(kind)
        if not victims:
            return
        p = self.rng.choice(victims)
        os.kill(p.pid, signal.SIGKILL)
        self.stopper.forget(p.pid)
        p.killed = True
        p.proc.join(30)
        self.kills[kind] += 1
        if kind == "plain":
            self.killed_plain += 1
        if kind == "publisher":
            self.spawn("publisher", batch_max=p.batch_max)
        else:
            self.spawn(kind, p.group)

    def stop_one(self):
        pids = [p.pid for p in self.running()]
        sup = self.client.stats()["supervisor"]["pid"]
        if sup:
            pids.append(sup)
        pids = [pid for pid in pids if pid not in self.stopper]
        if pids:
            self.stopper.stop(self.rng.choice(pids), self.rng.uniform(0.01, 0.3))
            self.stops += 1

    # -- live figures --------------------------------------------------------------

    def sample(self):
        st = self.client.stats()
        t = st["topics"].get(TOPIC, {"groups": {}, "published": 0})
        groups = {g: v for g, v in t["groups"].items() if g in GROUPS}
        plain_taken = sum(v["delivered"] for g, v in groups.items() if GROUPS[g] == "plain")
        plain_reported = sum(self.reported[g] for g in GROUPS if GROUPS[g] == "plain")
        s = {
            "t": round(time.monotonic() - self.load_started, 1),
            "published": t["published"],
            "delivered": sum(v["delivered"] for v in groups.values()),
            "acked": sum(v["acked"] for v in groups.values()),
            "redelivered": sum(v["redelivered"] for v in groups.values()),
            "plain_unreported": plain_taken - plain_reported,
            "kills": sum(self.kills.values()),
            "stops": self.stops,
        }
        for role, pid in (("broker", self.server.pid), ("supervisor", st["supervisor"]["pid"])):
            s[f"rss_{role}"] = s[f"fds_{role}"] = None
            try:
                proc = psutil.Process(pid)
                # A supervisor is sampled once it has swept since it started (its rings
                # mapped, its files open): one still starting, or just restarted, is
                # not a baseline (under ASan its start takes seconds).
                if role == "supervisor" and \
                        not (st["supervisor"]["last_sweep"] or 0) > proc.create_time():
                    continue
                s[f"rss_{role}"] = proc.memory_info().rss
                s[f"fds_{role}"] = proc.num_fds()
            except (psutil.Error, ValueError):
                pass
        s["shm"] = shm_bytes(self.name)
        self.samples.append(s)
        if not self.a.quiet:
            print(f"{s['t']:>7.0f} s  published {s['published']:>11,}  delivered "
                  f"{s['delivered']:>11,}  acked {s['acked']:>11,}  redelivered "
                  f"{s['redelivered']:>6,}  lost<= {s['plain_unreported']:>4,}  kills "
                  f"{s['kills']:>4}  stops {s['stops']:>4} | RSS broker {mib(s['rss_broker'])} "
                  f"supervisor {mib(s['rss_supervisor'])} | shm {mib(s['shm'])} | fds "
                  f"{s['fds_broker']}/{s['fds_supervisor']}", flush=True)

    # -- the end -------------------------------------------------------------------

    def drain(self):
        """Publishers stopped, every group caught up, every report in."""
        self.stopper.resume_all()
        self.pub_stop.set()
        pubs = [p for p in self.procs if p.kind == "publisher"]
        self.wait(lambda: all(p.eof for p in pubs), "the publishers to stop")
        for p in pubs:
            p.proc.join(30)
            if not p.killed and (p.proc.exitcode != 0 or not p.done):
                self.fail(f"{p} exited with {p.proc.exitcode}")
        self.wait(lambda: all(p.eof for p in self.procs if p.killed), "reports of the killed")
        members = [p for p in self.procs if p.kind != "publisher" and not p.killed]
        self.wait(lambda: all(p.joined for p in members), "new members to join")

        def drained():
            t = self.client.stats()["topics"][TOPIC]
            return all(g["lag"] == 0 and g["pending"] == 0 for g in t["groups"].values())
        self.wait(drained, "every group to catch up")
        self.flush_gen.value += 1
        gen = self.flush_gen.value
        self.wait(lambda: all(p.flushed == gen for p in members), "every member to report")
        self.final = self.client.stats()["topics"][TOPIC]
        self.member_stop.set()
        self.wait(lambda: all(p.eof for p in members), "the members to leave")
        for p in members:
            p.proc.join(30)
            if p.proc.exitcode != 0 or not p.left:
                self.fail(f"{p} exited with {p.proc.exitcode} without leaving")

    def account(self):
        """Exact accounting of every message (the module's docstring)."""
        published = {}  # pub -> number of payloads 0..n-1 published
        for p in self.procs:
            if p.kind != "publisher":
                continue
            n = p.upto
            if p.pending:  # killed inside a call: published if anyone saw it
                i, k = p.pending
                seen = [any(c.get(p.pub, i + j) for c in self.seen.values()) for j in range(k)]
                if any(seen):
                    n = i + k
            published[p.pub] = n
        total = sum(published.values())
        t = self.final
        if t["published"] != total:
            self.fail(f"the topic says {t['published']:,} published, the publishers "
                      f"{total:,} (confirmed, or in doubt and seen)")
        self.lost = {}
        for g, kind in GROUPS.items():
            seen = self.seen[g]
            for pub, a in seen.by_pub.items():
                if pub not in published or any(a[published[pub]:]):
                    self.fail(f"group {g!r}: a message of publisher {pub} that was never published")
            missing = sum(seen.missing(pub, n) for pub, n in published.items())
            if kind == "plain":
                taken, reported = t["groups"][g]["delivered"], self.reported[g]
                if taken - reported != missing:
                    self.fail(f"plain group {g!r}: {missing} missing, its members took {taken:,} "
                              f"and reported {reported:,}")
                if missing > self.killed_plain * READ_BATCH:
                    self.fail(f"plain group {g!r}: {missing} missing, {self.killed_plain} "
                              f"members killed")
            else:
                gs = t["groups"][g]
                if missing:
                    self.fail(f"ack group {g!r}: {missing} message(s) never delivered")
                if gs["acked"] != total or gs["dead_lettered"] or gs["pending"]:
                    self.fail(f"ack group {g!r}: acked {gs['acked']:,} of {total:,}, "
                              f"dead-lettered {gs['dead_lettered']}, pending {gs['pending']}")
            self.lost[g] = missing
        if t["corrupt"]:
            self.fail(f"the topic counted {t['corrupt']} corrupt record(s)")
        self.published = published
        self.total = total

    def stop_broker(self):
        self.client.close()
        self.client = None
        self.server.send_signal(signal.SIGTERM)
        try:
            code = self.server.wait(60)
        except subprocess.TimeoutExpired:
            self.server.kill()
            code = "killed after 60 s"
        if code != 0:
            self.fail(f"pymq serve exited with {code} on SIGTERM")
        left = segments.namespace_entries(self.name)
        if left:
            self.fail(f"left in /dev/shm after the broker stopped: {left}")

    def check_log(self):
        """Every seq 1..total once, each payload published once."""
        report = LogReport()
        on_disk = Counts()
        expect = 1
        for seq, _, payload in read_log(self.dir, TOPIC, 1, report):
            if seq != expect:
                self.fail(f"the log: seq {seq} after {expect - 1}")
                expect = seq
            expect += 1
            try:
                pub, i = parse_payload(payload)
            except (AssertionError, struct.error):
                self.fail(f"the log: seq {seq} has a torn payload")
                continue
            if i >= self.published.get(pub, 0) or on_disk.add(pub, i) > 1:
                self.fail(f"the log: seq {seq} holds ({pub}, {i}), unpublished or twice")
        if expect - 1 != self.total or report.corrupt or report.torn or report.duplicates:
            self.fail(f"the log: {expect - 1:,} seqs of {self.total:,}, {report.corrupt} corrupt, "
                      f"{report.torn} torn, {report.duplicates} duplicate line(s)")
        self.log_records = report.records

    def check_restart(self):
        """A broker started again from the folder delivers nothing again, and
        a new message to every group, with the next seq."""
        b = pymq.Broker(pymq.BrokerConfig(name=self.name, persistence_enabled=True,
                                          persistence_dir=self.dir, ring_bytes=1 * MiB))
        try:
            subs = {g: (b.subscribe if k == "plain" else b.subscribe_with_ack)(TOPIC, group=g)
                    for g, k in GROUPS.items()}
            for g, sub in subs.items():
                try:
                    again = sub.get_many(100, timeout=0.3)
                    self.fail(f"after a restart, group {g!r} got {len(again)} message(s) again")
                except pymq.Timeout:
                    pass
            seq = b.publish(TOPIC, b"after the restart")
            if seq != self.total + 1:
                self.fail(f"after a restart the next seq is {seq}, not {self.total + 1}")
            for g, sub in subs.items():
                got = sub.get(timeout=5)
                if (got if GROUPS[g] == "plain" else got.payload) != b"after the restart":
                    self.fail(f"after a restart, group {g!r} got {got!r}")
                if GROUPS[g] != "plain":
                    got.ack()
        finally:
            b.close()
        left = segments.namespace_entries(self.name)
        if left:
            self.fail(f"left in /dev/shm after the restarted broker closed: {left}")

    def flatness(self):
        """first (after warm-up: the first quarter of the load, at most a
        minute), max and last of each series, and whether flat."""
        warm = min(60.0, 0.25 * self.a.duration)
        after = [s for s in self.samples if s["t"] >= warm] or self.samples[-1:]
        out = {}
        for key, margin in (("rss_broker", RSS_MARGIN), ("rss_supervisor", RSS_MARGIN),
                            ("shm", SHM_MARGIN), ("fds_broker", FD_MARGIN),
                            ("fds_supervisor", FD_MARGIN)):
            series = [s[key] for s in after if s[key] is not None]
            if not series:
                continue
            first, last = series[0], series[-1]
            flat = last <= first + margin
            out[key] = {"first": first, "max": max(series), "last": last, "margin": margin,
                        "flat": flat}
            if not flat:
                self.fail(f"{key} grew from {first:,} to {last:,} (margin {margin:,}) after "
                          f"{warm:g} s of warm-up")
        out["warm_up_s"] = warm
        return out

    def cleanup(self):
        self.stopper.close()
        for p in self.procs:
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(5)
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        segments.remove_namespace(self.name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def figures(self, flat):
        t = getattr(self, "final", None) or {"groups": {}}
        return {
            "duration_s": round(time.monotonic() - self.started, 1),
            "published": getattr(self, "total", None),
            "groups": {g: {"kind": GROUPS[g], "members": MEMBERS[g],
                           "reported": self.reported[g],
                           **{k: t["groups"].get(g, {}).get(k) for k in
                              ("delivered", "acked", "redelivered", "dead_lettered")}}
                       for g in GROUPS},
            "lost": getattr(self, "lost", None),  # per group: plain ones by design only
            "reported_again": self.again,
            "log_records": getattr(self, "log_records", None),
            "kills": dict(self.kills),
            "stops": self.stops,
            "flatness": flat,
            "samples": self.samples,
            "harness_held_up": self.held_up,
            "failures": self.failures,
        }


def fcntl_pipe(conn):
    import fcntl
    fcntl.fcntl(conn.fileno(), F_SETPIPE_SZ, PIPE_BYTES)


def shm_bytes(name):
    total = 0
    for e in segments.namespace_entries(name):
        try:
            total += os.stat(os.path.join(segments.SHM_DIR, e)).st_blocks * 512
        except FileNotFoundError:
            pass
    return total


def mib(n):
    return "-" if n is None else f"{n / MiB:6.1f} MiB"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="tools/soak.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds of load, more if the harness is held up past a sample's "
                        "time (default 60)")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between live lines (and samples) (default 5)")
    p.add_argument("--json", metavar="OUT", help="write the figures and samples there")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--publishers", type=int, default=10, help="(default 10)")
    p.add_argument("--rate", type=float, default=200.0,
                   help="payloads per second per publisher (default 200)")
    p.add_argument("--max-size", type=int, default=1024, help="largest payload (default 1024)")
    p.add_argument("--kill-every", type=float, default=3.0,
                   help="mean seconds between SIGKILLs, 0: none (default 3)")
    p.add_argument("--stop-every", type=float, default=2.0,
                   help="mean seconds between SIGSTOPs, 0: none (default 2)")
    p.add_argument("--kill-supervisor", action="store_true",
                   help="kill the supervisor too (its RSS then restarts with each new one)")
    p.add_argument("--name", default=f"soak{os.getpid():x}", help="broker name")
    p.add_argument("--quiet", action="store_true", help="no live lines")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    roles.sigterm_as_interrupt()  # cleanup() then stops `pymq serve` and every process
    soak = Soak(args)
    out = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": platform.machine(),
           "cpus": os.cpu_count(), "settings": vars(args),
           "margins": {"rss": RSS_MARGIN, "shm": SHM_MARGIN, "fds": FD_MARGIN}}
    flat = None
    try:
        soak.start()
        soak.loop()
        flat = soak.flatness()
        soak.drain()
        soak.account()
        soak.stop_broker()
        soak.check_log()
        soak.check_restart()
    except SoakFailure as e:
        soak.fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130  # cleaned up below
    finally:
        soak.cleanup()
    fig = soak.figures(flat)
    out.update(fig)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    print(summary(fig))
    if fig["failures"]:
        for line in fig["failures"]:
            print(f"FAILED: {line}", file=sys.stderr)
        return 1
    return 0


def summary(fig):
    held = fig["harness_held_up"]
    lines = [f"soak: {fig['duration_s']:.0f} s, {sum(fig['kills'].values())} kills "
             f"{dict(fig['kills'])}, {fig['stops']} stops; the harness held up at most "
             f"{held['s']:.2f} s (by its {held['in']} at {held['at_t']} s)", ""]
    lines.append(f"{'GROUP':<12}{'KIND':<6}{'DELIVERED':>14}{'REPORTED':>14}{'ACKED':>14}"
                 f"{'REDELIVERED':>13}{'LOST':>8}")
    for g, v in fig["groups"].items():
        lost = (fig["lost"] or {}).get(g, "?")
        lines.append(f"{g:<12}{v['kind']:<6}{v['delivered'] or 0:>14,}{v['reported']:>14,}"
                     f"{v['acked'] or 0:>14,}{v['redelivered'] or 0:>13,}{lost:>8}")
    lines.append(f"published {fig['published'] or 0:,}; log on disk {fig['log_records'] or 0:,} "
                 f"records; plain 'lost' is by design (taken by a killed member, not reported)")
    flat = fig["flatness"] or {}
    if flat:
        lines += ["", f"{'SERIES':<16}{'FIRST':>14}{'MAX':>14}{'LAST':>14}{'MARGIN':>12}  "
                  f"(after {flat['warm_up_s']:g} s of warm-up)"]
        for key, v in flat.items():
            if key == "warm_up_s":
                continue
            lines.append(f"{key:<16}{v['first']:>14,}{v['max']:>14,}{v['last']:>14,}"
                         f"{v['margin']:>12,}  {'flat' if v['flat'] else 'GREW'}")
    lines.append("")
    lines.append("OK: the accounting balances" if not fig["failures"] else
                 f"FAILED: {len(fig['failures'])} problem(s)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
