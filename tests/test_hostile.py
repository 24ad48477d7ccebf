"""Hostile memory: segments scribbled on while live. Every outcome is correct
operation or a pymq.MQError, and the owner can always let go: close()
removes everything it created, whatever the segments contain. Also what such
a writer can do (forge and drop messages), and the known limit: glibc's
robust-list links inside the mutex, which a writer can use against the
process that holds the lock (docs/security.md)."""

import os
import platform
import random
import signal
import struct
import time

import pytest

import pymq
import workers
from helpers import get_json, join_all, stopped, wait_for
from pymq import _core, segments


@pytest.mark.parametrize("seed", range(30))
def test_close_after_a_scribbled_topic_header_removes_everything(make_broker, name, seed):
    broker = make_broker()
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"a", b"b"])
    path = os.path.join(segments.SHM_DIR, segments.topic_shm_name(name, "t").lstrip("/"))
    rnd = random.Random(seed)
    with open(path, "r+b") as f:  # bytes 128-255 of the header: positions, counts, the lock
        f.seek(128)
        f.write(rnd.randbytes(128))
    for op in (lambda: broker.publish("t", b"c", timeout=0.2), lambda: sub.get(timeout=0.2),
               lambda: broker.stats()):
        try:
            op()
        except pymq.MQError:
            pass
    broker.close()  # no exception; the `name` fixture checks that nothing is left


# -- what a process that can write a segment can do ---------------------------------------

def segment_path(name, topic):
    return os.path.join(segments.SHM_DIR, segments.topic_shm_name(name, topic).lstrip("/"))


def test_a_writer_can_forge_a_message_payloads_carry_no_check(broker, name):
    broker.publish("t", b"genuine payload")
    with open(segment_path(name, "t"), "r+b") as f:
        at = f.read().index(b"genuine payload")
        f.seek(at)
        f.write(b"forged! payload")
    assert broker.subscribe("t", start="earliest").get(timeout=5) == b"forged! payload"


def test_a_writer_can_drop_a_message_by_moving_the_tail_back(broker, name):
    sub = broker.subscribe("t")
    broker.publish_many("t", [b"one", b"two"])
    ring = _core.Ring(segments.Segment.attach(segments.topic_shm_name(name, "t")), "t")
    ring.h.hdr.tail -= _core.REC_HDR + 8  # "two" and its padding to 8 bytes
    ring.release()
    broker.publish("t", b"three")  # takes the place of "two", with the next seq
    msgs = sub.get_many(10, timeout=5)
    assert msgs == [b"one", b"three"]


@pytest.mark.parametrize("ack", [False, True])
def test_a_reader_that_remembered_a_scribbled_tail_recovers_once_it_is_put_back(broker, name,
                                                                                  ack):
    """Readers remember the tail they last loaded (ring_seen_tail). One that
    loaded a scribbled tail reports the garbage beyond the real one as
    SegmentMismatch while the scribble lasts, and once tail is put back it
    forgets what it remembered and reads on from the real tail: a plain
    group's reader and an ack group's."""
    sub = broker.subscribe_with_ack("t", "g") if ack else broker.subscribe("t")
    broker.publish("t", b"a")
    got = sub.get(timeout=5)  # the reader's cursor is at tail
    assert (got.payload if ack else got) == b"a"
    ring = _core.Ring(segments.Segment.attach(segments.topic_shm_name(name, "t")), "t")
    real = ring.h.hdr.tail
    ring.h.hdr.tail = real + 4096  # zeros beyond: no record there
    with pytest.raises(pymq.SegmentMismatch):
        sub.get(timeout=0)  # reads up to the scribbled tail, and remembers it
    ring.h.hdr.tail = real
    ring.release()
    with pytest.raises(pymq.Timeout):
        sub.get(timeout=0)  # below the remembered tail: wrong, so it looks at tail itself
    broker.publish("t", b"b")
    got = sub.get(timeout=5)
    assert (got.payload if ack else got) == b"b"


# -- the known limit: glibc's robust-list links live in the mutex, in shared memory --------

def robust_links():
    """Offsets, in a topic segment, of the topic lock's robust-list links
    (__list.__prev, __list.__next): the last 16 of the 40 bytes of a
    pthread_mutex_t on glibc x86_64, which end where lock_pid begins
    (pmq_ring.h). glibc writes them at lock and follows them at unlock."""
    if platform.machine() != "x86_64" or platform.libc_ver()[0] != "glibc":
        pytest.skip("the mutex layout used here is glibc's on x86_64")
    end = _core.ffi.offsetof("pmq_ring_hdr_t", "lock_pid")
    return end - 16, end - 8


def held_by_a_stopped_publisher(ctx, monkeypatch, name):
    """A process stopped inside its publish to "t", holding the topic's lock."""
    monkeypatch.setenv("PYMQ_TEST_PAUSE", "publish.locked")  # read by the child's library
    p = ctx.Process(target=workers.publish_one, args=(name, "t", b"held"))
    p.start()
    monkeypatch.delenv("PYMQ_TEST_PAUSE")
    wait_for(lambda: stopped(p.pid))
    return p


def test_a_held_topic_lock_shows_an_address_in_its_holders_memory(broker, name, ctx, monkeypatch):
    """__list.__prev of a held lock is the address of the holder thread's
    robust-list head: whoever can read the segment learns where the holder's
    thread lives (its ASLR)."""
    prev_at, _ = robust_links()
    broker.publish("t", b"before")
    p = held_by_a_stopped_publisher(ctx, monkeypatch, name)
    with open(segment_path(name, "t"), "rb") as f:
        f.seek(prev_at)
        (prev,) = struct.unpack("<Q", f.read(8))
    with open(f"/proc/{p.pid}/maps") as f:
        spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in f]
    os.kill(p.pid, signal.SIGCONT)
    join_all([p])
    assert any(lo <= prev < hi for lo, hi in spans)


@pytest.mark.parametrize("links, recovered", [("prev", True), ("both", False)])
def test_rewriting_a_held_locks_links_crashes_the_holder_at_unlock(make_broker, name, ctx,
                                                                   monkeypatch, links, recovered):
    """glibc's unlock unlinks the mutex from its holder's robust list through
    __prev and __next (next->prev = prev; prev->next = next): written by
    another process meanwhile, they make the holder write where they point.
    Here, to address 0x10 and on: SIGSEGV in the holder, at unlock, after its
    commit. With __next intact the kernel still finds the lock at the holder's
    death, and the next locker recovers it; with __next rewritten too, the
    kernel's walk of the list stops first, the lock stays held by a dead
    process, and the topic is stopped: publishes are refused within their
    timeout. Other topics go on, and close() removes everything."""
    prev_at, next_at = robust_links()
    broker = make_broker(admin_port=0)
    other = broker.subscribe("other")
    broker.publish("t", b"before")
    p = held_by_a_stopped_publisher(ctx, monkeypatch, name)
    with open(segment_path(name, "t"), "r+b") as f:
        f.seek(prev_at)
        f.write(struct.pack("<Q", 0x10))
        if links == "both":
            f.seek(next_at)
            f.write(struct.pack("<Q", 0x10))
    os.kill(p.pid, signal.SIGCONT)
    p.join(30)
    # Under make test-sanitize, ASan catches the SIGSEGV, reports it and aborts.
    crashed = signal.SIGABRT if os.environ.get("PYMQ_EXPECT_SANITIZED") else signal.SIGSEGV
    assert p.exitcode == -crashed
    assert broker.stats()["topics"]["t"]["published"] == 2  # it had committed
    broker.publish("other", b"o")
    assert other.get(timeout=5) == b"o"
    if recovered:
        assert broker.publish("t", b"after", timeout=5) == 3
        assert broker.stats()["topics"]["t"]["lock_recoveries"] == 1
        assert broker.subscribe("t", start="earliest").get_many(10, timeout=5) == \
            [b"before", b"held", b"after"]
    else:
        t0 = time.monotonic()
        with pytest.raises(pymq.Full, match="0.2 s"):
            broker.publish("t", b"after", timeout=0.2)
        assert 0.2 <= time.monotonic() - t0 < 1.0  # its own timeout (and scheduling)
        status, body = get_json(broker.admin_port, "/health")
        assert status == 503
        # the holder cleared lock_pid before it unlocked: no pid to name
        assert "topic 't': its lock has been held for over 0.1 s by a process" in body["problems"]
    broker.close()  # the `name` fixture checks that nothing is left
