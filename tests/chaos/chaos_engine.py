"""Chaos under load (issue 14): processes SIGKILLed at random instants, and
inside each critical section, while traffic flows; then exact accounting.
The engine behind tests/chaos/test_chaos.py (bounded) and tools/chaos.py (the
long run).

One broker (in this process), one topic, named plain groups and ack groups
of several members each, publishers with publish() and with publish_many(),
and, with persistence on, the writer in the supervisor. Every process is a
separate OS process (multiprocessing spawn) that reports each message as it
handles it (tests/chaos/chaos_roles.py). A run is rounds; in each round:

1. Publishers start; traffic flows. Kills follow at random gaps: a publisher,
   a plain member, an ack member, the supervisor (a SIGKILL at whatever it is
   doing; the Broker restarts the supervisor), or a process stopped by the
   native library at a named point (PYMQ_TEST_PAUSE: publish.locked,
   publish.written, publish.committed, member.locked, ack.locked,
   ack.claimed; and "writer": a new supervisor stopped at ack.claimed in its
   persistence writer, a batch in hand) and killed there. A killed publisher
   or member is replaced at once, so the load stays. Optionally, processes are
   SIGSTOPped for 10-300 ms and continued.
2. After each kill, the recovery: the time from the SIGKILL until a fresh
   round trip on the topic succeeds (a new subscription, a publish, the
   probe received).
3. The round ends: stopped processes continued, publishers stopped, every
   group caught up, every dead process reaped, every member's reports in
   (a flush barrier); then the accounting below. Any failure raises
   ChaosFailure naming the seed and the round.

The accounting of a round (P: the messages published, that is every call a
publisher confirmed, the probes, and each call in doubt (its publisher killed
inside it) that any group saw):
- seqs: the messages of P have exactly the seqs after the last round's, with
  no gap, the topic's `published` agrees, and each confirmed call's seqs are
  what it returned; a call in doubt is all or nothing; one killed at
  publish.locked or publish.written was not published, one killed at
  publish.committed was.
- every payload's crc holds (the members check each one), nothing arrives
  that was not published.
- a plain group: each message of P once, but for what a killed member had
  taken and not reported ("lost by design": a plain group is at most once).
  Their count must equal the group's `delivered` minus what its members
  reported, must be 0 if no member of the group was killed, and they lie in
  at most one run of consecutive seqs per killed member (one read each).
- an ack group: every message of P at least once, each delivery attempt at
  most once, redeliveries only when a member of the group was killed, acked
  exactly |P| times, nothing dead-lettered, nothing pending.
- order: each member's reads come in seq order (redeliveries aside).
- the persistence log holds each seq of the round once, with its payload.
- the supervisor was restarted exactly once per kill, and exactly the
  subscriptions of killed processes were reaped (a stopped process is not).
At the end every member leaves when asked, the broker closes, and nothing of
it is left in /dev/shm.
"""

import array
import base64
import collections
import dataclasses
import fcntl
import json
import multiprocessing
import multiprocessing.connection as mpc
import os
import random
import shutil
import signal
import struct
import tempfile
import threading
import time

import psutil

import chaos_roles as roles
import pymq
from pymq import segments
from workers import make_payload, parse_payload

TOPIC = "chaos"
POINTS = ("publish.locked", "publish.written", "publish.committed", "member.locked",
          "ack.locked", "ack.claimed", "writer")
KINDS = ("publisher", "plain", "ack", "supervisor") + POINTS
KiB = 1024
MiB = 1024 * KiB
F_SETPIPE_SZ = 1031  # fcntl: a report pipe of 1 MiB, so reports never wait for the harness
PIPE_BYTES = 1 << 20


class ChaosFailure(AssertionError):
    """A lost, torn, duplicated or misordered message, a wedge, a leak."""


@dataclasses.dataclass
class Settings:
    kills: int = 20                 # SIGKILLs in all ("writer" is two: a supervisor, its successor)
    seed: int = 1
    kills_per_round: int = 10       # kills between two accountings
    single_publishers: int = 1      # publish(), one payload a call
    batch_publishers: int = 2       # publish_many(), 1..publish_batch payloads a call
    plain_groups: int = 2
    ack_groups: int = 2
    members: int = 2                # per group
    ring_bytes: int = 256 * KiB
    max_size: int = 1024            # largest payload (bytes)
    publish_batch: int = 16
    read_batch: int = 32            # largest read of a member (at most chaos_roles.MAX_READ)
    rate: float = 2000.0            # payloads per second per publisher at most (0: no limit)
    work: float = 0.002             # seconds a member works on each read before reporting it
    persistence: bool = True
    point_share: float = 0.25       # share of random kills made inside a critical section
    supervisor_share: float = 0.1   # share of random kills that hit the supervisor
    stop_share: float = 0.0         # SIGSTOP/SIGCONT of a random process per kill (on average)
    gap: float = 0.1                # mean seconds between kills
    plan: tuple = ()                # the kinds of the kills, in order, instead of random ones
    timeout: float = 60.0           # longest wait for anything; past it a process is wedged
    deadline: float = 0.0           # time.monotonic() after which no new round starts (0: none)


class Stopper:
    """SIGSTOPs processes and SIGCONTs each when its time is up, from a thread
    of its own: the harness's main thread may meanwhile wait for a lock that a
    stopped process holds (a probe's subscribe), and must not be the one that
    would continue it."""

    def __init__(self):
        self.due = {}  # pid -> monotonic time to continue it
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-sigcont")
        self.thread.start()

    def stop(self, pid, seconds):
        with self.cond:
            os.kill(pid, signal.SIGSTOP)
            self.due[pid] = time.monotonic() + seconds
            self.cond.notify()

    def forget(self, pid):
        """pid is killed: nothing to continue."""
        with self.cond:
            self.due.pop(pid, None)

    def __contains__(self, pid):
        with self.cond:
            return pid in self.due

    def resume_all(self):
        with self.cond:
            for pid in list(self.due):
                self._cont(pid)

    def _cont(self, pid):
        del self.due[pid]
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def _run(self):
        with self.cond:
            while not self.closed:
                now = time.monotonic()
                for pid, at in list(self.due.items()):
                    if at <= now:
                        self._cont(pid)
                self.cond.wait(min(self.due.values(), default=now + 1) - now)

    def close(self):
        with self.cond:
            self.closed = True
            for pid in list(self.due):
                self._cont(pid)
            self.cond.notify()
        self.thread.join(5)

    def __repr__(self):
        with self.cond:
            return repr(self.due)


class Worker:
    """A worker process as the harness sees it, and what it reported."""

    def __init__(self, kind, group, pub, batch_max, proc, conn, point):
        self.kind, self.group, self.pub, self.batch_max = kind, group, pub, batch_max
        self.proc, self.conn, self.point = proc, conn, point
        self.joined = self.eof = self.left = self.done = self.killed = False
        self.flushed = 0
        self.frames = []   # a member's R or A frames since the last accounting
        self.batches = []  # a publisher's calls: [first index, count, seq returned (0: not known)]
        self.announced = 0  # a publisher's payloads announced so far (the next call's first index)

    @property
    def pid(self):
        return self.proc.pid

    def __repr__(self):
        what = f"publisher {self.pub}" if self.kind == "publisher" else \
            f"{self.kind} member of {self.group!r}"
        return f"{what} (pid {self.pid})"


def percentile(sorted_values, q):
    """The q-quantile (0..1) of sorted values, nearest rank; None if empty."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(-(-q * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def seq_runs(seqs):
    """Runs of consecutive ints in sorted seqs: [(first, length), ...]."""
    runs = []
    for s in seqs:
        if runs and runs[-1][0] + runs[-1][1] == s:
            runs[-1][1] += 1
        else:
            runs.append([s, 1])
    return runs


class Chaos:
    """One chaos run against a broker of the given name (see the module's
    docstring). run() returns the figures; a failure raises ChaosFailure."""

    def __init__(self, name, settings, progress=None):
        self.s = s = settings
        if s.ack_groups < 1:
            raise ValueError("a chaos run needs an ack group: it maps messages to seqs")
        if s.read_batch > roles.MAX_READ:
            raise ValueError(f"read_batch is at most {roles.MAX_READ}")
        self.name = name
        self.progress = progress or (lambda line: None)
        self.rng = random.Random(s.seed)
        self.ctx = multiprocessing.get_context("spawn")
        self.plain = [f"plain{k}" for k in range(s.plain_groups)]
        self.acks = [f"ack{k}" for k in range(s.ack_groups)]
        self.workers = []
        self.pubs = 0
        self.broker = None
        self.dir = None
        self.stopper = Stopper()  # SIGSTOPs and SIGCONTs
        self.round = 0
        self.kills = []      # {"kind", "pid", "group", "round", "recovery_s"}
        self.stops = 0
        self.planned = 0     # kills of the plan made
        self.lost_by_design = 0
        self.uncounted = 0   # plain deliveries claimed by a member killed before it counted them
        self.redelivered_reports = 0
        self.checked = collections.Counter()
        self.base_seq = 0    # the seqs of earlier rounds: 1..base_seq
        self.prev = {}       # per group: its figures at the last accounting
        self.expect_restarts = 0
        self.expect_reaped = 0
        self.sup_killed_at = 0.0  # wall clock of the last supervisor kill
        self.started = time.monotonic()

    # -- the run --------------------------------------------------------------------

    def run(self):
        s = self.s
        try:
            self._start()
            while len(self.kills) < s.kills and not (s.deadline and time.monotonic() > s.deadline):
                self._round(min(s.kills_per_round, s.kills - len(self.kills)))
            self._finish()
        except (ChaosFailure, pymq.MQError) as e:
            if "wedged" in str(e):
                self._stacks()
            what = str(e) if isinstance(e, ChaosFailure) else \
                f"the harness got {type(e).__name__}: {e}"
            failure = ChaosFailure(f"seed {s.seed}, round {self.round}: {what}\n{self._diagnose()}")
            failure.figures = self.figures()
            raise failure from (None if isinstance(e, ChaosFailure) else e)
        finally:
            self._cleanup()
        return self.figures()

    def _start(self):
        """The members and the first round's publishers are started first, so
        that their start-up (an interpreter, pymq) overlaps the broker's; the
        publishers go once every group is there (from seq 1 on)."""
        s = self.s
        self.pub_stop = roles.Flag(self.ctx)
        self.member_stop = roles.Flag(self.ctx)
        self.go = roles.Flag(self.ctx)
        self.flush_gen = self.ctx.RawValue("Q", 0)
        for g in self.plain + self.acks:
            for _ in range(s.members):
                self._spawn("plain" if g in self.plain else "ack", g)
        self._spawn_publishers()
        if s.persistence:
            self.dir = tempfile.mkdtemp(prefix="pymq-chaos-")
        self.broker = pymq.Broker(pymq.BrokerConfig(
            name=self.name, ring_bytes=s.ring_bytes, max_message_bytes=4 * KiB,
            publish_timeout=s.timeout, ack_timeout=10 * s.timeout, max_retries=1000,
            persistence_enabled=s.persistence, persistence_dir=self.dir or "/nonexistent",
            persistence_segment_bytes=4 * MiB, persistence_retention_bytes=256 * MiB))
        for g in self.plain:
            self.broker.subscribe(TOPIC, group=g).close()
        for g in self.acks:
            self.broker.subscribe_with_ack(TOPIC, group=g).close()
        self.go.set()
        self._wait(lambda: all(w.joined for w in self.workers), "the members to join")

    def _spawn_publishers(self):
        self.probe_pub = self._new_pub()
        self.probes = []  # [index, 1, seq]
        for _ in range(self.s.single_publishers):
            self._spawn("publisher", batch_max=1)
        for _ in range(self.s.batch_publishers):
            self._spawn("publisher", batch_max=self.s.publish_batch)

    def _round(self, kills):
        s = self.s
        self.round += 1
        self.round_began = len(self.kills)
        if self.round > 1:
            self.pub_stop.clear()
            self._spawn_publishers()
            self._wait(lambda: all(w.joined for w in self.workers), "the publishers to connect")
        target = len(self.kills) + kills
        while len(self.kills) < target:
            self._run_for(self.rng.expovariate(1 / s.gap) if s.gap else 0)
            while s.stop_share and self.rng.random() < s.stop_share / (1 + s.stop_share):
                self._stop_one()
                self._run_for(self.rng.expovariate(1 / s.gap) if s.gap else 0)
            if s.plan:
                kind = s.plan[self.planned % len(s.plan)]
                self.planned += 1
            else:
                kind = self._random_kind()
            self._kill(kind)
        self._run_for(0.1)
        self._quiesce()
        self._account()
        self.progress(self._round_line())

    def _random_kind(self):
        s, r = self.s, self.rng.random()
        if r < s.point_share:
            return self.rng.choice([p for p in POINTS if s.persistence or p != "writer"])
        if r < s.point_share + s.supervisor_share:
            return "supervisor"
        return self.rng.choice(("publisher", "plain", "ack"))

    def _finish(self):
        self.stopper.resume_all()
        self.member_stop.set()
        members = [w for w in self.workers if not w.killed]
        self._wait(lambda: all(w.eof for w in members), "the members to leave")
        for w in members:
            w.proc.join(self.s.timeout)
            if w.proc.exitcode != 0 or not w.left:
                raise ChaosFailure(f"{w} exited with {w.proc.exitcode} without leaving")
        self.broker.close()
        self.broker = None
        left = segments.namespace_entries(self.name)
        if left:
            raise ChaosFailure(f"left in /dev/shm after close: {left}")

    def _cleanup(self):
        self.stopper.close()
        for w in self.workers:
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(5)
        if self.broker is not None:
            try:
                self.broker.close()
            except pymq.MQError:
                pass
            self.broker = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- processes -----------------------------------------------------------------

    def _new_pub(self):
        self.pubs += 1
        return self.pubs

    def _spawn(self, kind, group=None, batch_max=1, point=None):
        s = self.s
        r, w = self.ctx.Pipe(duplex=False)
        fcntl.fcntl(w.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        seed = self.rng.getrandbits(32)
        pub = None
        if kind == "publisher":
            pub = self._new_pub()
            target, args = roles.publisher, (self.name, TOPIC, pub, batch_max, s.max_size, seed,
                                             w, self.pub_stop, s.rate, self.go)
        else:
            target = roles.plain_member if kind == "plain" else roles.ack_member
            args = (self.name, TOPIC, group, s.read_batch, seed, w, self.member_stop,
                    self.flush_gen, s.work)
        p = self.ctx.Process(target=target, args=args, daemon=True)
        if point:
            os.environ["PYMQ_TEST_PAUSE"] = point  # read by the child's native library at load
        try:
            p.start()
        finally:
            os.environ.pop("PYMQ_TEST_PAUSE", None)
        w.close()
        worker = Worker(kind, group, pub, batch_max, p, r, point)
        self.workers.append(worker)
        return worker

    def _pump(self, timeout):
        """Read every report that came (for at most timeout seconds)."""
        live = {w.conn: w for w in self.workers if not w.eof}
        if live:
            for c in mpc.wait(list(live), timeout):
                w = live[c]
                try:
                    for _ in range(256):  # then the others: a chatty pipe starves none
                        self._frame(w, c.recv_bytes())
                        if not c.poll():
                            break
                except (EOFError, OSError):
                    w.eof = True
                    c.close()
        elif timeout:
            time.sleep(timeout)

    def _frame(self, w, f):
        kind = f[:1]
        if kind in (b"R", b"A"):
            w.frames.append(f)
        elif kind == b"I":
            i, n, last = roles.INTENT.unpack_from(f, 1)
            self._confirm(w, last)
            if i != w.announced:  # (a sum over w.batches here made a long run quadratic)
                raise ChaosFailure(f"{w} announced index {i} out of turn")
            w.batches.append([i, n, 0])
            w.announced += n
        elif kind == b"D":
            i, last = roles.DONE.unpack_from(f, 1)
            self._confirm(w, last)
            w.done = True
        elif kind == b"F":
            w.flushed = roles.GEN.unpack_from(f, 1)[0]
        elif kind == b"J":
            w.joined = True
        elif kind == b"X":
            w.left = True
        elif kind == b"E":
            raise ChaosFailure(f"{w}: {f[1:].decode(errors='replace')}")
        else:
            raise ChaosFailure(f"{w}: a report of unknown kind {f[:16]!r}")

    def _confirm(self, w, last):
        if w.batches:
            if last <= 0:
                raise ChaosFailure(f"{w}: publish returned seq {last}")
            w.batches[-1][2] = last

    def _run_for(self, seconds):
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._pump(left)

    def _wait(self, cond, what):
        """Pump until cond() holds; past the timeout, something is wedged."""
        end = time.monotonic() + self.s.timeout
        while not cond():
            if time.monotonic() > end:
                raise ChaosFailure(f"wedged: waited {self.s.timeout:g} s for {what}")
            self._pump(0.01)

    # -- kills and stops --------------------------------------------------------------

    def _live(self, kind):
        return [w for w in self.workers
                if w.kind == kind and w.joined and not w.killed and not w.eof and not w.point]

    def _kill(self, kind):
        if kind in POINTS:
            return self._kill_at(kind)
        if kind == "supervisor":
            self._wait(self._supervisor_up, "the supervisor to be up")
            pid = self.broker.supervisor_pid
            t0 = self._sigkill(pid)
            self._supervisor_killed()
            return self._record("supervisor", pid, None, t0)
        self._wait(lambda: self._live(kind), f"a {kind} to kill")
        w = self.rng.choice(self._live(kind))
        t0 = self._kill_worker(w)
        self._record(kind, w.pid, w.group, t0)
        if kind == "publisher":
            self._spawn("publisher", batch_max=w.batch_max)
        else:
            self.expect_reaped += 1
            self._spawn(kind, w.group)

    def _kill_at(self, point):
        """Start a process that stops itself at point, then kill it there."""
        if point == "writer":
            return self._kill_writer()
        # The point goes to the child through os.environ, which a supervisor the
        # Broker restarts meanwhile (after a kill of it just before) would inherit
        # too, and stop itself there holding the topic's lock for good.
        self._wait(self._supervisor_up, "the supervisor to be up")
        if point.startswith("publish."):
            w = self._spawn("publisher", batch_max=self.rng.choice((1, self.s.publish_batch)),
                            point=point)
        else:
            kind = "ack" if point.startswith("ack.") else self.rng.choice(("plain", "ack"))
            w = self._spawn(kind, self.rng.choice(self.plain if kind == "plain" else self.acks),
                            point=point)
        self._wait(lambda: self._stopped(w.pid), f"{w} to stop at {point}")
        t0 = self._kill_worker(w)
        if point.startswith("ack."):
            self.expect_reaped += 1  # it joined before its first read
        elif point == "member.locked" and w.joined:
            raise ChaosFailure(f"{w} joined before it stopped at member.locked")
        self._record(point, w.pid, w.group, t0)

    def _kill_writer(self):
        """Kill the supervisor, have its successor stop in its persistence
        writer (at ack.claimed: a batch claimed, not yet on disk), kill that."""
        self._wait(self._supervisor_up, "the supervisor to be up")
        old = self.broker.supervisor_pid
        os.environ["PYMQ_TEST_PAUSE"] = "ack.claimed"  # the Broker starts the next one with it
        try:
            t0 = self._sigkill(old)
            self._supervisor_killed()
            self._record("supervisor", old, None, t0, probe=False)
            self._wait(lambda: self.broker.supervisor_pid not in (old, None),
                       "the supervisor to be restarted")
        finally:
            os.environ.pop("PYMQ_TEST_PAUSE", None)
        new = self.broker.supervisor_pid
        self._wait(lambda: self._stopped(new),
                   f"the new supervisor (pid {new}) to stop in its writer")
        t0 = self._sigkill(new)
        self._supervisor_killed()
        self._record("writer", new, None, t0)

    def _supervisor_killed(self):
        self.expect_restarts += 1
        self.expect_reaped += 1 if self.s.persistence else 0  # its writer's subscription
        self.sup_killed_at = time.time()

    def _supervisor_up(self):
        pid = self.broker.supervisor_pid
        if not pid or pid in self.stopper or self._stopped(pid):
            return False
        return self.broker.stats()["supervisor"]["last_sweep"] > self.sup_killed_at

    @staticmethod
    def _stopped(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_STOPPED
        except psutil.NoSuchProcess:
            return False

    def _sigkill(self, pid):
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.stopper.forget(pid)
        return t0

    def _kill_worker(self, w):
        t0 = self._sigkill(w.pid)
        w.killed = True
        w.proc.join(self.s.timeout)
        if w.proc.exitcode != -signal.SIGKILL:
            raise ChaosFailure(f"{w} did not die of SIGKILL (exit code {w.proc.exitcode})")
        return t0

    def _record(self, kind, pid, group, t0, probe=True):
        rec = {"kind": kind, "pid": pid, "group": group, "round": self.round,
               "recovery_s": self._probe(t0) if probe else None}
        self.kills.append(rec)

    def _probe(self, t0):
        """A fresh round trip on the topic (a new subscription, a publish, the
        probe received): seconds since t0, the kill. Reports are pumped
        between tries, so that nobody waits for the harness meanwhile, and the
        probe's subscription reads all along (else it would hold the ring)."""
        end = t0 + self.s.timeout
        sub = self.broker.subscribe(TOPIC)
        try:
            k = len(self.probes)
            payload = make_payload(self.probe_pub, k, 64)
            seq = None
            while True:
                if seq is None:
                    try:
                        seq = self.broker.publish(TOPIC, payload, timeout=0.01)
                        self.probes.append([k, 1, seq])
                    except pymq.Full:
                        pass
                try:
                    got = sub.get_many(1024, timeout=0 if seq is None else 0.01)
                except pymq.Timeout:
                    got = []
                for p in got:
                    try:
                        parse_payload(p)
                    except AssertionError:
                        raise ChaosFailure(f"torn payload read by a probe: {bytes(p[:32]).hex()}")
                if payload in got:
                    return time.monotonic() - t0
                if time.monotonic() > end:
                    raise ChaosFailure("wedged: a probe was not " +
                                       ("published" if seq is None else "received"))
                self._pump(0)
        finally:
            sub.close()

    def _stop_one(self):
        """SIGSTOP a random running process (a worker or the supervisor) for
        10 to 300 ms (the Stopper continues it)."""
        pids = [w.pid for w in self.workers
                if w.joined and not w.killed and not w.eof and not w.point]
        if self._supervisor_up():
            pids.append(self.broker.supervisor_pid)
        pids = [p for p in pids if p not in self.stopper]
        if not pids:
            return
        pid = self.rng.choice(pids)
        self.stopper.stop(pid, self.rng.uniform(0.01, 0.3))
        self.stops += 1

    # -- the end of a round ----------------------------------------------------------

    def _topic(self):
        return self.broker.stats()["topics"].get(TOPIC, {"groups": {}, "published": 0})

    def _quiesce(self):
        """Continue what is stopped, stop the publishers, and wait until
        everything is settled and reported (any wait too long: wedged)."""
        self.stopper.resume_all()
        self.pub_stop.set()
        pubs = [w for w in self.workers if w.kind == "publisher"]
        self._wait(lambda: all(w.eof for w in pubs), "the publishers to stop")
        for w in pubs:
            w.proc.join(self.s.timeout)
            if not w.killed and (w.proc.exitcode != 0 or not w.done):
                raise ChaosFailure(f"{w} exited with {w.proc.exitcode}")
        dead = [w for w in self.workers if w.killed]
        self._wait(lambda: all(w.eof for w in dead), "the reports of killed processes")
        members = [w for w in self.workers if w.kind != "publisher" and not w.killed]
        self._wait(lambda: all(w.joined for w in members), "the new members to join")

        def settled():
            st = self.broker.stats()
            if st["supervisor"]["restarts"] > self.expect_restarts or \
                    st["reaped_subscriptions"] > self.expect_reaped:
                raise ChaosFailure(
                    f"{st['supervisor']['restarts']} supervisor restarts for "
                    f"{self.expect_restarts} kills, {st['reaped_subscriptions']} subscriptions "
                    f"reaped for {self.expect_reaped} killed: a live (or stopped) process was "
                    f"taken for dead")
            return st["supervisor"]["restarts"] == self.expect_restarts and \
                st["reaped_subscriptions"] == self.expect_reaped and self._supervisor_up()
        self._wait(settled, "the supervisor to restart and reap every killed process")

        def drained():
            t = self._topic()
            live = collections.Counter(w.group for w in members)
            return all(g["lag"] == 0 and g["pending"] == 0 for g in t["groups"].values()) and \
                all(t["groups"][g]["members"] == live[g] for g in self.plain + self.acks)
        self._wait(drained, "every group to catch up (lag and pending 0, members all there)")
        self.flush_gen.value += 1
        gen = self.flush_gen.value
        self._wait(lambda: all(w.flushed == gen for w in members),
                   "every member to report what it took")

    def _account(self):
        s = self.s
        t = self._topic()
        pubs = [w for w in self.workers if w.kind == "publisher"]
        members = [w for w in self.workers if w.kind != "publisher"]
        killed = collections.Counter(k["group"] for k in self.kills[self.round_began:]
                                     if k["kind"] in ("plain", "ack", "ack.claimed"))

        # what was published: confirmed calls, probes, and calls in doubt
        confirmed, doubt = [], []  # (pub, first, n, seq) / (worker, first, n)
        for w in pubs:
            for j, (i, n, last) in enumerate(w.batches):
                if last:
                    confirmed.append((w.pub, i, n, last))
                elif w.killed and j == len(w.batches) - 1:
                    doubt.append((w, i, n))
                else:
                    raise ChaosFailure(f"{w}: call {j} never confirmed, yet it went on")
            if w.point and w.point.startswith("publish.") and len(w.batches) != 1:
                raise ChaosFailure(f"{w}: {len(w.batches)} calls before {w.point}")
        confirmed += [(self.probe_pub, k, 1, seq) for k, _, seq in self.probes]

        plain = {g: [] for g in self.plain}  # group -> [(worker, [(pub, i), ...])]
        acked = {g: [] for g in self.acks}   # group -> [(worker, [(pub, i, seq, attempt), ...])]
        for w in members:
            if not w.frames:
                continue
            data = b"".join(f[1:] for f in w.frames)
            if w.kind == "plain":
                a = array.array("I", data)
                plain[w.group].append((w, list(zip(a[0::2], a[1::2]))))
            else:
                acked[w.group].append((w, list(roles.ACKED.iter_unpack(data))))
            w.frames = []
        seen = set()
        for parts in list(plain.values()) + list(acked.values()):
            for _, got in parts:
                seen.update((r[0], r[1]) for r in got)

        P = set()
        for pub, i, n, _ in confirmed:
            P.update((pub, i + k) for k in range(n))
        for w, i, n in doubt:
            batch = [(w.pub, i + k) for k in range(n)]
            published = any(m in seen for m in batch)
            if w.point in ("publish.locked", "publish.written") and published:
                raise ChaosFailure(f"{w} killed at {w.point}, before its commit: its call "
                                   f"was delivered")
            if w.point == "publish.committed" and not published:
                raise ChaosFailure(f"{w} killed at publish.committed: its call was lost")
            if published:
                P.update(batch)
        phantom = seen - P
        if phantom:
            raise ChaosFailure(f"{len(phantom)} message(s) delivered that were never published, "
                               f"e.g. {sorted(phantom)[:5]}")

        # ack groups: every message at least once; they give the seqs
        seq_of = {}
        for g, parts in acked.items():
            attempts = collections.defaultdict(list)
            for w, got in parts:
                last = 0
                for pub, i, seq, attempt in got:
                    if seq_of.setdefault((pub, i), seq) != seq:
                        raise ChaosFailure(f"message {(pub, i)} came as seq {seq} and "
                                           f"{seq_of[(pub, i)]}")
                    attempts[(pub, i)].append(attempt)
                    if attempt == 1:
                        if seq <= last:
                            raise ChaosFailure(f"{w}: seq {seq} after {last}")
                        last = seq
            missing = P - attempts.keys()
            if missing:
                raise ChaosFailure(f"ack group {g!r}: {len(missing)} message(s) never delivered, "
                                   f"e.g. {sorted(missing)[:5]}")
            again = 0
            for m, atts in attempts.items():
                if len(set(atts)) != len(atts):
                    raise ChaosFailure(f"ack group {g!r}: message {m} delivered with attempts "
                                       f"{sorted(atts)}")
                again += len(atts) - 1
            gs, prev = t["groups"][g], self.prev.get(g, collections.Counter())
            redelivered = gs["redelivered"] - prev["redelivered"]
            if not killed[g] and (again or redelivered or
                                  any(max(a) > 1 for a in attempts.values())):
                raise ChaosFailure(f"ack group {g!r}: {redelivered} redelivered, {again} reported "
                                   f"again, with no member killed")
            if gs["acked"] - prev["acked"] != len(P) or gs["dead_lettered"] != 0 or gs["pending"]:
                raise ChaosFailure(f"ack group {g!r}: acked {gs['acked'] - prev['acked']} of "
                                   f"{len(P)}, dead-lettered {gs['dead_lettered']}, pending "
                                   f"{gs['pending']}")
            self.redelivered_reports += again
            self.checked["ack"] += sum(len(atts) for atts in attempts.values())

        # seqs: exactly the next ones, as the calls returned them
        seqs = sorted(seq_of[m] for m in P)
        if seqs != list(range(self.base_seq + 1, self.base_seq + len(P) + 1)) or \
                t["published"] != self.base_seq + len(P):
            gaps = sorted(set(range(self.base_seq + 1, t["published"] + 1)) - set(seqs))
            raise ChaosFailure(f"{len(P)} messages published after seq {self.base_seq}, the topic "
                               f"says {t['published'] - self.base_seq}; seqs not accounted for: "
                               f"{gaps[:10]}")
        for pub, i, n, last in confirmed:
            for k in range(n):
                if seq_of[(pub, i + k)] != last - n + 1 + k:
                    raise ChaosFailure(f"publisher {pub}: payload {i + k} has seq "
                                       f"{seq_of[(pub, i + k)]}, its call returned {last} for {n}")

        # plain groups: each message once, but for what a killed member took
        for g, parts in plain.items():
            got = collections.Counter(m for _, part in parts for m in part)
            twice = [m for m, c in got.items() if c > 1]
            if twice:
                raise ChaosFailure(f"plain group {g!r}: {len(twice)} message(s) delivered twice, "
                                   f"e.g. {twice[:5]}")
            for w, part in parts:
                order = [seq_of[m] for m in part]
                if any(b <= a for a, b in zip(order, order[1:])):
                    raise ChaosFailure(f"{w}: its reads are out of seq order")
            missing = sorted(seq_of[m] for m in P - got.keys())
            gs, prev = t["groups"][g], self.prev.get(g, collections.Counter())
            # What the group's members took is how far its position moved (the
            # cursor: claimed with one CAS). Its `delivered` counter is added just
            # after the claim, so a member killed between the two leaves its batch
            # out of it: at most a read per killed member.
            taken = gs["position"] - prev["position"] if g in self.prev else \
                gs["position"] - 1 - self.base_seq
            counted = gs["delivered"] - prev["delivered"]
            runs = seq_runs(missing)
            if taken - sum(got.values()) != len(missing):
                raise ChaosFailure(f"plain group {g!r}: {len(missing)} message(s) missing, but "
                                   f"its members took {taken} and reported {sum(got.values())}")
            if not 0 <= taken - counted <= killed[g] * s.read_batch:
                raise ChaosFailure(f"plain group {g!r}: its position moved by {taken}, its "
                                   f"delivered counter by {counted}, {killed[g]} member(s) killed")
            self.uncounted += taken - counted
            if len(missing) > killed[g] * s.read_batch or len(runs) > killed[g]:
                raise ChaosFailure(f"plain group {g!r}: {len(missing)} message(s) missing in "
                                   f"{len(runs)} run(s) (seqs {[tuple(r) for r in runs[:5]]}), "
                                   f"{killed[g]} member(s) killed")
            self.lost_by_design += len(missing)
            self.checked["plain"] += sum(got.values())

        if s.persistence:
            self._check_log(P, seq_of, t)
        if t["corrupt"]:
            raise ChaosFailure(f"the topic counted {t['corrupt']} corrupt record(s)")

        self.base_seq += len(P)
        self.published = self.base_seq
        self.prev = {g: collections.Counter(v) for g, v in t["groups"].items()}
        self.lock_recoveries = t["lock_recoveries"]
        self.workers = [w for w in self.workers if w.kind != "publisher" and not w.killed]

    def _check_log(self, P, seq_of, t):
        """The round's seqs are on disk, each once, each with its payload."""
        first, last = self.base_seq + 1, self.base_seq + len(P)
        msg_of = {seq_of[m]: m for m in P}
        d = os.path.join(self.dir, TOPIC)
        files = sorted(f for f in os.listdir(d) if f.endswith(".jsonl"))
        starts = [int(f.split(".")[0]) for f in files]
        count = collections.Counter()
        for k, f in enumerate(files):
            if k + 1 < len(starts) and starts[k + 1] <= first:
                continue  # wholly before this round
            with open(os.path.join(d, f), "rb") as fh:
                data = fh.read()
            if data and not data.endswith(b"\n"):
                raise ChaosFailure(f"log file {f}: a torn last line once the writer caught up")
            for line in data.splitlines():
                try:
                    rec = json.loads(line)
                    seq = rec["seq"]
                    payload = base64.b64decode(rec["payload"], validate=True)
                except (ValueError, KeyError, TypeError) as e:
                    raise ChaosFailure(f"log file {f}: a corrupt line ({e}): {line[:80]!r}")
                if first <= seq <= last:
                    count[seq] += 1
                    try:
                        got = parse_payload(payload)
                    except (AssertionError, struct.error):
                        raise ChaosFailure(f"log file {f}: seq {seq} has a torn payload") from None
                    if got != msg_of.get(seq):
                        raise ChaosFailure(f"log file {f}: seq {seq} holds {got}, not "
                                           f"{msg_of.get(seq)}")
        absent = [q for q in range(first, last + 1) if not count[q]]
        twice = [q for q, c in count.items() if c > 1]
        if absent or twice:
            raise ChaosFailure(f"the log lacks {len(absent)} seq(s) of this round (e.g. "
                               f"{absent[:5]}) and holds {len(twice)} twice (e.g. {twice[:5]})")
        self.checked["log"] += len(P)

    # -- figures ---------------------------------------------------------------------

    def _stacks(self):
        """Have every live worker write its Python stacks to stderr (chaos_roles
        registers faulthandler on SIGUSR1): where a wedged process waits."""
        for w in self.workers:
            if not w.eof and not w.killed:
                try:
                    os.kill(w.pid, signal.SIGCONT)
                    os.kill(w.pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    def _diagnose(self):
        """What the broker and the processes look like (for a failure's message)."""
        lines = []
        try:
            st = self.broker.stats()
            t = st["topics"].get(TOPIC, {})
            lines.append(f"supervisor {st['supervisor']}, reaped {st['reaped_subscriptions']}, "
                         f"published {t.get('published')}, lock_held {t.get('lock_held')}, "
                         f"ring used {t.get('ring_bytes_used')}")
            detail = {g["name"]: g for g in self.broker._topics[TOPIC].stats()["groups_detail"]}
            for g, v in t.get("groups", {}).items():
                d = detail.get(g, {})
                lines.append(f"  group {g}: members {v['members']} position {v['position']} lag "
                             f"{v['lag']} pending {v['pending']} ready {d.get('ready')} dead "
                             f"{d.get('dead')} lock_pid {d.get('lock_pid')} delivered "
                             f"{v['delivered']} acked {v['acked']} redelivered {v['redelivered']}")
        except Exception as e:  # noqa: BLE001 - a diagnosis must not hide the failure
            lines.append(f"no stats: {type(e).__name__}: {e}")
        for w in self.workers:
            try:
                state = psutil.Process(w.pid).status() if w.pid else "?"
            except psutil.Error:
                state = "gone"
            lines.append(f"  {w}: {state}, joined {w.joined}, killed {w.killed}, eof {w.eof}, "
                         f"point {w.point}")
        lines.append(f"  to be continued: {self.stopper}")
        lines.append(f"  expected: restarts {self.expect_restarts}, reaped {self.expect_reaped}")
        for k in self.kills[-12:]:
            lines.append(f"  kill: {k}")
        for p in psutil.Process().children(recursive=True):
            try:
                lines.append(f"  child {p.pid} {p.status()}: {' '.join(p.cmdline())[:100]}")
            except psutil.Error:
                pass
        return "\n".join(lines)

    @staticmethod
    def distribution(values):
        v = sorted(values)
        return {"n": len(v), "p50": percentile(v, 0.5), "p99": percentile(v, 0.99),
                "max": v[-1] if v else None}

    def figures(self):
        by_kind = collections.defaultdict(list)
        for k in self.kills:
            if k["recovery_s"] is not None:
                by_kind[k["kind"]].append(k["recovery_s"])
        return {
            "seed": self.s.seed,
            "rounds": self.round,
            "kills": len(self.kills),
            "kills_by_kind": dict(sorted(collections.Counter(k["kind"]
                                                             for k in self.kills).items())),
            "stops": self.stops,
            "published": self.base_seq,
            "checked": dict(self.checked),
            "lost_by_design": self.lost_by_design,
            "uncounted_deliveries": self.uncounted,
            "redelivered_reports": self.redelivered_reports,
            "lock_recoveries": getattr(self, "lock_recoveries", 0),
            "supervisor_restarts": self.expect_restarts,
            "reaped_subscriptions": self.expect_reaped,
            "recovery_s": self.distribution(r for v in by_kind.values() for r in v),
            "recovery_s_by_kind": {k: self.distribution(v) for k, v in sorted(by_kind.items())},
            "duration_s": round(time.monotonic() - self.started, 3),
        }

    def _round_line(self):
        f = self.figures()
        r = f["recovery_s"]
        return (f"round {self.round}: {f['kills']} kills, {f['stops']} stops, {f['published']:,} "
                f"published, {sum(f['checked'].values()):,} checked, {f['lost_by_design']} lost "
                f"by design, recovery p50 {r['p50'] or 0:.4f} s max {r['max'] or 0:.4f} s, "
                f"{f['duration_s']:.0f} s")


def run(name, settings, progress=None):
    """A chaos run (Chaos.run): its figures, or ChaosFailure."""
    return Chaos(name, settings, progress).run()
