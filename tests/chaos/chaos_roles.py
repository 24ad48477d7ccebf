"""The processes of a chaos or soak run (tests/chaos/chaos_engine.py,
tools/chaos.py, tools/soak.py): publishers and group members that report
every message through a pipe as they handle it, so that the harness accounts
for each one exactly, whenever the process is killed.

Each report is one frame on a one-way pipe (multiprocessing.Pipe(duplex=False)):
one write of fewer than PIPE_BUF (4096) bytes, which the kernel makes atomic,
so a SIGKILL never leaves half a frame; what a killed process had written
before it died is read in full, then EOF. Frames (kind byte, then fields):

  J                     joined its group (member) or connected (publisher)
  I  <QQQ> i n last     publisher: about to publish its payloads i..i+n-1 in
                        one call; `last` is the seq the previous call returned
                        (0 before the first), which confirms that call
  D  <QQ> i last        publisher: stopped when asked; the call before returned
                        `last`; it published payloads 0..i-1
  R  <II>*              plain member: (pub, i) of each payload of one read,
                        every crc checked (workers.parse_payload)
  A  <IIQI>*            ack member: (pub, i, seq, delivery_attempt) of each
                        message of one read, sent before the read is acked
  F  <Q> gen            member: everything taken before it saw flush
                        generation `gen` is reported (the harness's barrier)
  X                     member: left its group when asked
  E  text               an error (a torn payload, an unexpected exception); the
                        process then exits 1

Payloads are tests/workers.py's (make_payload: publisher id, index, crc of
the body). A member that a test point (PYMQ_TEST_PAUSE) stops inside its
join or its first read reports nothing more; the harness kills it there.
"""

import faulthandler
import os
import random
import signal
import struct
import sys
import time
import traceback

import pymq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/
from workers import HDR, make_payload, parse_payload  # noqa: E402

INTENT = struct.Struct("<QQQ")
DONE = struct.Struct("<QQ")
PLAIN = struct.Struct("<II")
ACKED = struct.Struct("<IIQI")
GEN = struct.Struct("<Q")
MAX_READ = 64  # largest read of a member: an A frame of 64 is 1,281 bytes, under PIPE_BUF

MIN_SIZE = HDR.size  # a payload holds at least its header (publisher, index, crc)


class Flag:
    """A flag shared by processes that a SIGKILL cannot wedge: one byte of
    shared memory and no lock. (multiprocessing.Event takes a semaphore in
    is_set(): a process killed holding it left every other one blocked in
    is_set() for ever, which a chaos round of 100 kills met.)"""

    def __init__(self, ctx):
        self._v = ctx.RawValue("B", 0)

    def set(self):
        self._v.value = 1

    def clear(self):
        self._v.value = 0

    def is_set(self):
        return self._v.value == 1

    def wait(self, timeout):
        """True once set, False after timeout seconds (it is looked at every
        5 ms: a start signal, not a hot path)."""
        deadline = time.monotonic() + timeout
        while not self.is_set():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True


def sigterm_as_interrupt():
    """From now on SIGTERM (a timeout, a CI runner) ends this process as
    Ctrl-C does: a KeyboardInterrupt, so that a long run (tools/chaos.py,
    tools/soak.py) stops what it started on its way out."""
    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)


def _traceable():
    """A process's Python stacks go to stderr on SIGUSR1 (a failure's
    diagnosis: where a process that holds something waits)."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _error(conn, text):
    conn.send_bytes(b"E" + text.encode()[:3000])
    conn.close()
    os._exit(1)


def _parse(payload):
    """(pub, i) of a payload whose crc holds (workers.parse_payload); None if
    it is torn or corrupt."""
    try:
        return parse_payload(payload)
    except (AssertionError, struct.error):
        return None


def publisher(name, topic, pub, batch_max, max_size, seed, conn, stop_evt, rate=0.0, go_evt=None):
    """Publish payloads (pub, 0), (pub, 1), ... until stop_evt is set: one
    publish() per payload when batch_max is 1, else publish_many() of 1 to
    batch_max at a time (sizes and counts from seed). rate: payloads per
    second at most (0: as fast as the ring takes them). Every call is
    announced (I) before it is made, with the seq the previous one returned.
    go_evt: set once the broker and its groups are there (it may be started
    before them, so that its start-up overlaps theirs)."""
    _traceable()
    try:
        rng = random.Random(seed)
        if go_evt is not None and not go_evt.wait(60):
            raise RuntimeError("never told to go")
        c = pymq.connect(name, wait=60)
        conn.send_bytes(b"J")
        i = last = 0
        due = time.monotonic()
        while not stop_evt.is_set():
            n = 1 if batch_max == 1 else rng.randint(1, batch_max)
            payloads = [make_payload(pub, i + k, rng.randint(MIN_SIZE, max_size)) for k in range(n)]
            conn.send_bytes(b"I" + INTENT.pack(i, n, last))
            if batch_max == 1:
                last = c.publish(topic, payloads[0], timeout=60)
            else:
                last = c.publish_many(topic, payloads, timeout=60)
            i += n
            if rate:  # a rate limit (not a synchronisation); time lost waiting is not made up
                due = max(due, time.monotonic() - 0.05) + n / rate
                ahead = due - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        conn.send_bytes(b"D" + DONE.pack(i, last))
        c.close()
    except BaseException:  # noqa: BLE001 - reported to the harness, which fails the run
        _error(conn, f"publisher {pub} (pid {os.getpid()}): {traceback.format_exc()}")


def _member_loop(sub, conn, stop_evt, flush_gen, batch_max, seed, report):
    """Read, report (and ack), until stop_evt and idle; answer flushes."""
    rng = random.Random(seed)
    flushed = 0
    while True:
        n = rng.randint(1, batch_max)
        try:
            items = [sub.get(timeout=0.05)] if n == 1 else sub.get_many(n, timeout=0.05)
        except pymq.Timeout:
            items = None
        if items:
            report(items)
        if flush_gen is not None and flush_gen.value != flushed:
            flushed = flush_gen.value
            conn.send_bytes(b"F" + GEN.pack(flushed))
        if items is None and stop_evt.is_set():
            return


def plain_member(name, topic, group, batch_max, seed, conn, stop_evt, flush_gen, work=0.0):
    """A member of the plain group `group`: reads 1 to batch_max payloads at a
    time (get() for one, get_many() for more), checks every payload's crc,
    works on them for `work` seconds (a stand-in for real processing, during
    which a kill loses what it holds: at most once), then reports the read
    (R); at each new flush generation, F. Leaves when stop_evt is set and
    nothing came for 50 ms."""
    _traceable()
    try:
        c = pymq.connect(name, wait=60)  # it may be started before the broker
        sub = c.subscribe(topic, group=group)
        conn.send_bytes(b"J")

        def report(items):
            out = bytearray(b"R")
            for p in items:
                got = _parse(p)
                if got is None:
                    _error(conn, f"torn payload in group {group!r} (pid {os.getpid()}): "
                                 f"{len(p)} bytes, starting {bytes(p[:32]).hex()}")
                out += PLAIN.pack(*got)
            if work:
                time.sleep(work)
            conn.send_bytes(out)

        _member_loop(sub, conn, stop_evt, flush_gen, min(batch_max, MAX_READ), seed, report)
        sub.close()
        conn.send_bytes(b"X")
        c.close()
    except BaseException:  # noqa: BLE001
        _error(conn, f"plain member of {group!r} (pid {os.getpid()}): {traceback.format_exc()}")


def ack_member(name, topic, group, batch_max, seed, conn, stop_evt, flush_gen=None, work=0.0):
    """A member of the ack group `group`: reads 1 to batch_max messages at a
    time, works on them (`work` seconds, half before and half after it reports
    them: A, pub, i, seq, attempt; every crc checked), then acks them in one
    call. What it took and did not ack (killed in between) comes again with a
    higher attempt, and is reported twice if it was reported: at least once."""
    _traceable()
    try:
        c = pymq.connect(name, wait=60)
        sub = c.subscribe_with_ack(topic, group=group)
        conn.send_bytes(b"J")

        def report(msgs):
            out = bytearray(b"A")
            for m in msgs:
                got = _parse(m.payload)
                if got is None:
                    _error(conn, f"torn payload in ack group {group!r} (pid {os.getpid()}): "
                                 f"seq {m.seq}, {len(m.payload)} bytes, starting "
                                 f"{bytes(m.payload[:32]).hex()}")
                out += ACKED.pack(got[0], got[1], m.seq, m.delivery_attempt)
            if work:
                time.sleep(work / 2)
            conn.send_bytes(out)
            if work:
                time.sleep(work / 2)
            sub.ack_many(msgs)

        _member_loop(sub, conn, stop_evt, flush_gen, min(batch_max, MAX_READ), seed, report)
        sub.close()
        conn.send_bytes(b"X")
        c.close()
    except BaseException:  # noqa: BLE001
        _error(conn, f"ack member of {group!r} (pid {os.getpid()}): {traceback.format_exc()}")
