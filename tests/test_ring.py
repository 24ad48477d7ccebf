"""The ring (native/ring.c) on plain memory and on shared memory."""

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pymq
from pymq import _core, segments

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


def reader(ring, group="", start=LATEST, buflen=64 * 1024):
    j = ring.join(group, 0, start, 0, owner=1)
    return _core.Reader(ring, j.member, j.member_gen, 256, buflen)


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


def test_a_plain_groups_zero_copy_read_is_a_peek_taken_only_by_its_claim():
    """Zero-copy (buf NULL), a plain group's read takes nothing: it says where
    the records are and which cursor move claims them; pmq_ring_claim makes
    the move, unless another member of the group took them first (0: the
    copy is void)."""
    ring, mem = plain_ring(capacity=8192, max_msg=1024)
    a = ring.join("w", 0, LATEST, 0, owner=1)
    b = ring.join("w", 0, LATEST, 0, owner=1)
    ra = _core.Reader(ring, a.member, a.member_gen, 16, 4096, zero_copy=True)
    rb = _core.Reader(ring, b.member, b.member_gen, 16, 4096)
    lib = _core.lib

    def peek():
        return lib.pmq_ring_read(ring.h, a.member, a.member_gen, ra.b, 16, 0)

    assert lib.pmq_ring_claim(ring.h, a.member, a.member_gen, ra.b) == lib.PMQ_EINVAL  # no peek
    ring.publish_list([b"one", b"two"], 0)
    with pytest.raises(ValueError):  # Reader.read does not peek: it would never move on
        ra.read(16, 0)
    for _ in range(2):  # a peek moves nothing: the same records again
        assert peek() == 2
        with ra.payloads() as (base, _):
            assert [bytes(_core.ffi.buffer(base + ra.offs[i], ra.lens[i])) for i in range(2)] == [
                b"one", b"two"]
        assert ra.b.claim_to > ra.b.claim_from
    assert lib.pmq_ring_claim(ring.h, a.member, a.member_gen, ra.b) == 2
    assert peek() == lib.PMQ_EMPTY
    ring.publish_list([b"three"], 0)
    assert peek() == 1  # a peeks; b takes it meanwhile; a's claim then fails
    assert rb.read(16, 0) == 1
    assert lib.pmq_ring_claim(ring.h, a.member, a.member_gen, ra.b) == 0
    g = [x for x in ring.stats()["groups_detail"] if x["name"] == "w"][0]
    assert (g["delivered"], g["lag"]) == (3, 0)
    k = ring.join("k", _core.GROUP_ACK, LATEST, 0, owner=1, ack_timeout_ns=10**12, max_retries=3)
    rk = _core.Reader(ring, k.member, k.member_gen, 16, 4096, zero_copy=True)
    ring.publish_list([b"four"], 0)
    assert rk.read(16, 0) == 1 and rk.b.claim_to == 0  # an ack group's read takes, no claim
    rk.b.claim_from, rk.b.claim_to = rk.pos[0], ring.stats()["tail"]  # a valid range, yet:
    assert rk.b.claim_from < rk.b.claim_to
    assert lib.pmq_ring_claim(ring.h, k.member, k.member_gen, rk.b) == lib.PMQ_EINVAL  # ack group


def test_zero_copy_reads_of_an_ack_group_point_into_the_ring():
    ring, mem = plain_ring(capacity=8192, max_msg=1024)
    j = ring.join("g", _core.GROUP_ACK, LATEST, 0, owner=1, ack_timeout_ns=10**12, max_retries=3)
    rd = _core.Reader(ring, j.member, j.member_gen, 64, 700, zero_copy=True)
    for round_ in range(8):  # about 12 KiB through the 8 KiB ring: across the wrap
        payloads = [bytes([round_ * 16 + i]) * (100 + i) for i in range(12)]
        ring.publish_list(payloads, 0)
        got = []
        while len(got) < len(payloads):
            n = rd.read(64, 0)  # the budget of 700 payload bytes splits the reads
            assert sum(rd.lens[i] for i in range(n)) <= 700
            with rd.payloads() as (base, length):
                assert length == ring.h.capacity
                got += [bytes(_core.ffi.buffer(base + rd.offs[i], rd.lens[i])) for i in range(n)]
            ring.settle("ack", j.group, j.group_gen, rd.slots, rd.seqs, n=n)
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
    assert [s for s, _ in read_all(_core.Reader(ring, j.member, j.member_gen, 16, 4096))] == [7, 8, 9, 10]
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


@pytest.mark.parametrize("head,tail", [(4088, 4088), (0, 1 << 50), (64, 8), (0, 12)])
def test_scribbled_positions_are_a_segment_mismatch_not_a_wild_write_or_a_hang(head, tail):
    ring, _ = plain_ring(capacity=4096, max_msg=1000)
    j = ring.join("", 0, _core.START_SEQ, 1, owner=1)
    ring.h.hdr.head, ring.h.hdr.tail, ring.h.hdr.gate = head, tail, head
    for call in (lambda: ring.publish1(b"x" * 10, 0), ring.stats,
                 lambda: ring.join("", 0, _core.START_SEQ, 5, owner=1)):
        with pytest.raises(pymq.SegmentMismatch):
            call()
    with pytest.raises(pymq.SegmentMismatch):
        _core.Reader(ring, j.member, j.member_gen, 16, 4096).read(16, 0)


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


@pytest.mark.parametrize("phase", [0, 1, 2])
def test_lock_holder_killed_mid_publish_is_recovered(shm_ring, ctx, phase):
    ring, shm_name = shm_ring
    rd = reader(ring)
    ring.publish1(b"before", 0)
    p = ctx.Process(target=__import__("ring_procs").die_in_publish, args=(shm_name, b"torn?", phase))
    p.start()
    p.join(30)
    assert p.exitcode == -9
    seq = ring.publish1(b"after", 2_000_000_000)  # would hang without recovery
    got = read_all(rd)
    if phase == 2:  # the commit happened before the death: the record is whole
        assert got == [(1, b"before"), (2, b"torn?"), (3, b"after")]
    else:           # it did not: nothing of it is visible, no seq is lost
        assert got == [(1, b"before"), (2, b"after")]
    assert seq == got[-1][0]
    assert ring.stats()["recoveries"] == 1
