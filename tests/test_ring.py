"""The ring (native/ring.c) on plain memory and on shared memory."""

import os
import random
import signal
import struct

import psutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pymq
from pymq import _core, segments
from helpers import wait_for

LATEST, EARLIEST = _core.START["latest"], _core.START["earliest"]


class PlainMemory:
    """A 'segment' over a bytearray: the ring never maps memory itself."""

    def __init__(self, size):
        self.mm = bytearray(size)

    def close(self):
        pass


def plain_ring(capacity=4096, max_msg=1024):
    params = _core.ring_params(capacity, max_msg)
    mem = PlainMemory(_core.ring_size(params))
    _core.Ring.init(mem, params)
    return _core.Ring(mem, "t"), mem


class Reader:
    """A member's cold-path reads into a Batch (as the supervisor and the
    persistence writer read)."""

    def __init__(self, ring, joined, max_batch=256, buflen=64 * 1024, zero_copy=False):
        self.ring, self.joined = ring, joined
        self.member, self.gen = joined.member, joined.member_gen
        self.batch = _core.Batch(max_batch, buflen, zero_copy)
        self.seqs, self.lens, self.slots = self.batch.seqs, self.batch.lens, self.batch.slots

    def read(self, max_count, timeout_ns):
        return self.ring.read(self.member, self.gen, self.batch, max_count, timeout_ns)

    def payload(self, i):
        return self.batch.payload(i)


def reader(ring, group="", start=LATEST, buflen=64 * 1024):
    return Reader(ring, ring.join(group, 0, start, 0, owner=1), buflen=buflen)


def read_all(rd, max_count=256):
    out = []
    while True:
        try:
            n = rd.read(max_count, 0)
        except pymq.Timeout:
            return out
        out.extend((rd.seqs[i], rd.payload(i)) for i in range(n))


def test_round_trips_one_record():
    ring, _ = plain_ring()
    rd = reader(ring)
    assert ring.publish1(b"hello", 0) == 1
    assert read_all(rd) == [(1, b"hello")]


def test_a_plain_groups_read_keeps_its_copies_only_if_its_claim_succeeds():
    """The one read of a plain group: the records are handed to the caller's
    sink (which copies them out), then claimed by a CAS of the group's cursor;
    if another member took them meanwhile, the sink's copies are dropped (the
    space may have been reused under them) and the read looks again."""
    ring, mem = plain_ring(capacity=8192, max_msg=1024)
    a, b = ring.join("w", 0, LATEST, 0, owner=1), ring.join("w", 0, LATEST, 0, owner=1)
    ra, rb = Reader(ring, a), Reader(ring, b)
    ffi, lib = _core.ffi, _core.lib
    calls = []

    @ffi.callback("int(void *, const pmq_batch_t *, const uint8_t *)")
    def copy(ctx, batch, data):
        calls.append(("copy", [bytes(ffi.buffer(data + batch.offs[i], batch.lens[i]))
                               for i in range(batch.n)]))
        if len(calls) == 1:  # the group's other member takes them first
            assert rb.read(16, 0) == 2
            ring.publish_list([b"three"], 0)
        return 0

    @ffi.callback("void(void *)")
    def drop(ctx):
        calls.append(("drop",))

    sink = ffi.new("pmq_sink_t *", {"copy": copy, "drop": drop, "ctx": ffi.NULL})
    ring.publish_list([b"one", b"two"], 0)
    n = lib.pmq_member_read(ring.h, a.member, a.member_gen, ra.batch.b, 16, _core.deadline(0),
                            sink, ffi.NULL)
    assert n == 1
    assert calls == [("copy", [b"one", b"two"]), ("drop",), ("copy", [b"three"])]
    g = [x for x in ring.stats()["groups_detail"] if x["name"] == "w"][0]
    assert (g["delivered"], g["lag"]) == (3, 0)


def test_a_plain_groups_read_must_copy_out():
    """Zero-copy reads are for ack groups, whose records stay until acked: a
    plain group's may be overwritten as soon as they are claimed."""
    ring, mem = plain_ring(capacity=8192, max_msg=1024)
    rd = Reader(ring, ring.join("w", 0, LATEST, 0, owner=1), zero_copy=True)
    ring.publish_list([b"one"], 0)
    with pytest.raises(ValueError):
        rd.read(16, 0)


def test_zero_copy_reads_of_an_ack_group_point_into_the_ring():
    ring, mem = plain_ring(capacity=8192, max_msg=1024)
    j = ring.join("g", _core.GROUP_ACK, LATEST, 0, owner=1, ack_timeout_ns=10**12, max_retries=3)
    rd = Reader(ring, j, 64, 700, zero_copy=True)
    for round_ in range(8):  # about 12 KiB through the 8 KiB ring: across the wrap
        payloads = [bytes([round_ * 16 + i]) * (100 + i) for i in range(12)]
        ring.publish_list(payloads, 0)
        got = []
        while len(got) < len(payloads):
            n = rd.read(64, 0)  # the budget of 700 payload bytes splits the reads
            assert sum(rd.lens[i] for i in range(n)) <= 700
            with ring.data() as (base, length):
                assert length == ring.h.capacity
                got += [bytes(_core.ffi.buffer(base + rd.batch.offs[i], rd.lens[i]))
                        for i in range(n)]
            ring.ack(j.group, j.group_gen, rd.batch, n)
        assert got == payloads


def test_rejects_write_when_full():
    ring, _ = plain_ring(capacity=4096, max_msg=1000)
    reader(ring)  # a group that never reads gates the ring
    n = 0
    with pytest.raises(pymq.Full):
        while True:
            ring.publish1(b"x" * 100, 0)
            n += 1
    assert 4096 // 128 - 1 <= n <= 4096 // 128
    assert ring.stats()["publish_full"] == 1


def test_overwrites_history_when_no_group_needs_it():
    ring, _ = plain_ring()
    for i in range(1000):
        ring.publish1(b"%d" % i, 0)
    rd = reader(ring, start=EARLIEST)
    got = read_all(rd)
    assert got[-1] == (1000, b"999")
    assert [s for s, _ in got] == list(range(got[0][0], 1001))  # contiguous history
    assert ring.stats()["expired"] == 1000 - len(got)


def test_rejects_payload_above_max_msg():
    ring, _ = plain_ring(max_msg=1000)
    with pytest.raises(pymq.MessageTooLarge):
        ring.publish1(b"x" * 1001, 0)
    assert ring.publish1(b"x" * 1000, 0) == 1


def test_rejects_batch_larger_than_ring():
    ring, _ = plain_ring(capacity=4096, max_msg=1000)
    with pytest.raises(pymq.MessageTooLarge):
        ring.publish_list([b"x" * 1000] * 8, 0)
    assert ring.publish1(b"ok", 0) == 1  # the ring still works


def test_start_earliest_and_seq_and_latest():
    ring, _ = plain_ring()
    for i in range(1, 11):
        ring.publish1(b"m%d" % i, 0)
    assert [s for s, _ in read_all(reader(ring, start=EARLIEST))] == list(range(1, 11))
    j = ring.join("", 0, _core.START_SEQ, 7, owner=1)
    assert [s for s, _ in read_all(Reader(ring, j, 16, 4096))] == [7, 8, 9, 10]
    assert read_all(reader(ring)) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=10), min_size=1, max_size=40),
       st.integers(1, 64))
def test_batches_round_trip_across_the_wrap(batches, read_batch):
    ring, _ = plain_ring(capacity=4096, max_msg=1000)
    rd = reader(ring)
    sent, got, k = [], [], 0
    for lens in batches:
        items = [bytes([(k + j) % 251]) * n for j, n in enumerate(lens)]
        k += len(lens)
        ring.publish_list(items, 0)
        sent.extend(items)
        got.extend(p for _, p in read_all(rd, read_batch))  # keep up: the group gates
    assert got == sent
    s = ring.stats()
    assert s["published"] == len(sent) and s["tail"] > 4096 * 0 and s["corrupt"] == 0


def test_group_members_split_records_exactly_once():
    ring, _ = plain_ring(capacity=65536)
    a, b = reader(ring, "g"), reader(ring, "g")
    for i in range(500):
        ring.publish1(b"%d" % i, 0)
    got = []
    while True:
        ga, gb = read_all(a, 7), read_all(b, 5)
        if not ga and not gb:
            break
        got += ga + gb
    assert sorted(s for s, _ in got) == list(range(1, 501))


def test_leaving_removes_an_anonymous_group_and_frees_the_ring():
    ring, _ = plain_ring(capacity=4096, max_msg=1000)
    rd = reader(ring)
    with pytest.raises(pymq.Full):
        for _ in range(100):
            ring.publish1(b"x" * 200, 0)
    assert ring.leave(rd.member, rd.gen)
    assert not ring.leave(rd.member, rd.gen)  # idempotent
    with pytest.raises(pymq.SubscriptionClosed):
        rd.read(1, 0)
    ring.publish1(b"x" * 200, 0)
    assert ring.stats()["groups"] == 0


def test_named_group_is_durable_without_members():
    ring, _ = plain_ring()
    rd = reader(ring, "durable")
    ring.leave(rd.member, rd.gen)
    ring.publish1(b"kept", 0)
    assert read_all(reader(ring, "durable")) == [(1, b"kept")]


def test_reap_removes_members_of_an_owner():
    ring, _ = plain_ring()
    ring.join("", 0, LATEST, 0, owner=77)
    ring.join("g", 0, LATEST, 0, owner=77)
    ring.join("g", 0, LATEST, 0, owner=78)
    assert ring.reap(77) == 2
    assert [o for _, o, _, _ in ring.member_owners()] == [78]
    assert ring.stats()["groups"] == 1


def test_corrupt_header_is_a_segment_mismatch():
    ring, mem = plain_ring()
    ring.release()
    mem.mm[0:8] = b"NOTPYMQ!"
    with pytest.raises(pymq.SegmentMismatch):
        _core.Ring(mem, "t")


@pytest.mark.parametrize("field", ["capacity", "data_off", "max_groups", "seg_len"])
def test_header_fields_out_of_bounds_are_a_segment_mismatch(field):
    ring, mem = plain_ring()
    ring.release()
    struct.pack_into("<I", mem.mm, _core.ffi.offsetof("pmq_ring_hdr_t", field), 0xFFFFFFF)
    with pytest.raises(pymq.SegmentMismatch):
        _core.Ring(mem, "t")


@pytest.mark.parametrize("head,tail", [(4092, 4092), (0, 1 << 50), (64, 8), (0, 12)])
def test_scribbled_positions_are_a_segment_mismatch_not_a_wild_write_or_a_hang(head, tail):
    ring, _ = plain_ring(capacity=4096, max_msg=1000)
    j = ring.join("", 0, _core.START_SEQ, 1, owner=1)
    ring.h.hdr.head, ring.h.hdr.tail, ring.h.hdr.gate = head, tail, head
    for call in (lambda: ring.publish1(b"x" * 10, 0), ring.stats,
                 lambda: ring.join("", 0, _core.START_SEQ, 5, owner=1)):
        with pytest.raises(pymq.SegmentMismatch):
            call()
    with pytest.raises(pymq.SegmentMismatch):
        Reader(ring, j, 16, 4096).read(16, 0)


def test_corrupt_record_length_is_a_segment_mismatch_not_a_crash():
    ring, mem = plain_ring()
    rd = reader(ring)
    ring.publish1(b"abc", 0)
    data_off = len(mem.mm) - 4096
    struct.pack_into("<I", mem.mm, data_off, 0x7FFFFFFF)  # the record's len
    with pytest.raises(pymq.SegmentMismatch):
        rd.read(1, 0)
    assert ring.stats()["corrupt"] == 1


def test_random_garbage_in_the_data_area_never_crashes_a_reader():
    rng = random.Random(7)
    for _ in range(200):
        ring, mem = plain_ring(capacity=16384)
        rd = reader(ring)
        for i in range(rng.randrange(1, 30)):
            ring.publish1(os.urandom(rng.randrange(0, 300)), 0)
        data_off = len(mem.mm) - 16384
        for _ in range(rng.randrange(1, 8)):
            pos = data_off + rng.randrange(16384)
            mem.mm[pos] = rng.randrange(256)
        try:
            read_all(rd)
        except pymq.SegmentMismatch:
            pass


def test_not_ready_segment_is_reported_as_such():
    mem = PlainMemory(_core.ring_size(_core.ring_params(4096, 1000)))
    with pytest.raises(_core.SegmentNotReady):
        _core.Ring(mem, "t")


# -- on shared memory, across processes ----------------------------------------

@pytest.fixture
def shm_ring(name):
    params = _core.ring_params(65536, 1000)
    shm_name = segments.topic_shm_name(name, "r")
    seg = segments.Segment.create(shm_name, _core.ring_size(params))
    _core.Ring.init(seg, params)
    ring = _core.Ring(seg, "r")
    yield ring, shm_name
    ring.release()
    segments.unlink(shm_name)


def test_segment_is_owner_only(shm_ring):
    _, shm_name = shm_ring
    assert os.stat("/dev/shm" + shm_name).st_mode & 0o777 == 0o600


def test_full_dev_shm_is_a_clear_error_at_create(name):
    with pytest.raises(pymq.MQError, match="cannot reserve"):
        segments.Segment.create(segments.topic_shm_name(name, "huge"), 1 << 50)
    assert segments.namespace_entries(name) == []


@pytest.mark.parametrize("point", ["publish.locked", "publish.written", "publish.committed"])
def test_lock_holder_killed_mid_publish_is_recovered(shm_ring, ctx, point, monkeypatch):
    ring, shm_name = shm_ring
    rd = reader(ring)
    ring.publish1(b"before", 0)
    monkeypatch.setenv("PYMQ_TEST_PAUSE", point)  # the child stops itself there
    p = ctx.Process(target=__import__("ring_procs").publish_and_stop, args=(shm_name, b"torn?"))
    p.start()
    wait_for(lambda: psutil.Process(p.pid).status() == psutil.STATUS_STOPPED)
    assert ring.stats(lock_timeout_ns=10**8)["lock_pid"] == p.pid  # it holds the mutex
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -9
    seq = ring.publish1(b"after", 2_000_000_000)  # would hang without recovery
    got = read_all(rd)
    if point == "publish.committed":  # the commit happened before the death: the record is whole
        assert got == [(1, b"before"), (2, b"torn?"), (3, b"after")]
    else:  # it did not: nothing of it is visible, no seq is lost
        assert got == [(1, b"before"), (2, b"after")]
    assert seq == got[-1][0]
    assert ring.stats()["recoveries"] == 1


def test_reaper_killed_mid_reap_counts_each_member_once(shm_ring, ctx, monkeypatch):
    """The reaped count is kept under the topic's lock with the removal: a
    reaper (the supervisor) killed between the two is repaired to count the
    member it removed exactly once."""
    ring, shm_name = shm_ring
    ring.join("g", 0, LATEST, 0, owner=77)
    ring.join("g", 0, LATEST, 0, owner=77)
    monkeypatch.setenv("PYMQ_TEST_PAUSE", "member.reaping")
    p = ctx.Process(target=__import__("ring_procs").reap_and_stop, args=(shm_name, 77))
    p.start()
    wait_for(lambda: psutil.Process(p.pid).status() == psutil.STATUS_STOPPED)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -9
    s = ring.stats()  # repairs: it stopped after removing the first, before counting it
    assert (s["reaped_members"], s["members"], s["recoveries"]) == (1, 1, 1)
    assert ring.reap(77) == 1
    assert (ring.stats()["reaped_members"], ring.stats()["members"]) == (2, 0)
