"""Bulk messaging with no Python object per message: get_batch (pymq.Batch,
AckBatch) and publish_batch, across processes: wraps of a small ring, mixed
single and bulk publishers, ack batches and the redelivery of part of a batch,
bad buffers (nothing published, no topic made), and numpy records when numpy
is installed."""

import array
import zlib

import pytest

import pymq
import workers
from helpers import join_all

KiB = 1024


def test_a_batch_holds_its_messages_back_to_back(broker):
    sub = broker.subscribe("t")
    sizes = [0, 1, 7, 64, 300]
    payloads = [bytes([i]) * n for i, n in enumerate(sizes)]
    first = broker.publish_many("t", payloads) - len(payloads) + 1
    batch = sub.get_batch(100, timeout=5)
    assert isinstance(batch, pymq.Batch) and len(batch) == 5
    assert batch.data.readonly and bytes(batch.data) == b"".join(payloads)
    assert batch.offsets.tolist() == [0, 0, 1, 8, 72, 372]  # n + 1 of them
    assert batch.seqs.tolist() == list(range(first, first + 5))
    assert all(isinstance(t, float) and t > 1.7e9 for t in batch.publish_times)
    assert batch.record_size is None  # sizes differ
    assert [bytes(m) for m in batch] == payloads and bytes(batch[-1]) == payloads[-1]
    assert batch.payloads() == payloads
    with pytest.raises(IndexError):
        batch[5]
    broker.publish_batch("t", bytes(range(64)) * 3, record_size=64)
    same = sub.get_batch(100, timeout=5)
    assert (len(same), same.record_size) == (3, 64)


def test_publish_batch_takes_any_buffer_and_offsets(broker):
    sub = broker.subscribe("t")
    last = broker.publish_batch("t", bytearray(b"abcdef"), offsets=[0, 1, 3, 6])
    assert last == 3
    assert sub.get_batch(10, timeout=5).payloads() == [b"a", b"bc", b"def"]
    broker.publish_batch("t", memoryview(b"0123456789"), offsets=array.array("Q", [2, 2, 5]))
    assert sub.get_batch(10, timeout=5).payloads() == [b"", b"234"]
    broker.publish_batch("t", array.array("i", [1, 2, 3, 4]), record_size=8)  # its bytes
    got = sub.get_batch(10, timeout=5)
    assert [m.cast("i").tolist() for m in got] == [[1, 2], [3, 4]]


@pytest.mark.parametrize("data, kwargs, error, match", [
    (b"abcdef", {}, ValueError, "record_size"),
    (b"abcdef", {"record_size": 4}, ValueError, "not a whole number"),
    (b"abcdef", {"offsets": [3, 1]}, ValueError, "non-decreasing"),
    (b"abcdef", {"offsets": [0, 7]}, ValueError, "within the data"),
    (b"abcdef", {"offsets": [0]}, ValueError, "n >= 1"),
    (b"abcdef", {"record_size": 2, "offsets": [0, 2]}, ValueError, "not both"),
    (b"", {"record_size": 4}, ValueError, "no records"),
    (b"abcdef", {"offsets": [0, -1, 6]}, ValueError, "unsigned"),
    (b"abcdef", {"offsets": [0, 2.0, 6]}, ValueError, "unsigned"),
    (b"abcdef", {"offsets": memoryview(array.array("Q", [0, 9, 2, 9, 6]))[::2]}, ValueError,
     "offsets must be C-contiguous"),
    (b"abcdef", {"record_size": True}, ValueError, "record_size"),
    (memoryview(b"abcdefgh")[::2], {"record_size": 2}, BufferError, "contiguous"),
    ("text", {"record_size": 2}, TypeError, "bytes-like"),
    (b"x" * 2000, {"record_size": 2000}, pymq.MessageTooLarge, "max_message_bytes"),
], ids=["no-size", "size", "decreasing", "past-the-end", "no-record", "both", "empty",
        "negative-offset", "float-offset", "strided-offsets", "bool-size", "strided", "str",
        "too-large"])
def test_a_bad_batch_publishes_nothing_and_makes_no_topic(make_broker, data, kwargs, error,
                                                          match):
    broker = make_broker(max_message_bytes=1024)
    with pytest.raises(error, match=match):
        broker.publish_batch("t", data, **kwargs)
    assert broker.topics() == []  # the first publish failed: nothing made
    broker.publish("t", b"x")
    with pytest.raises(error, match=match):  # and on a topic that exists: nothing published
        broker.publish_batch("t", data, **kwargs)
    assert broker.stats()["topics"]["t"]["published"] == 1


def test_a_batch_larger_than_the_ring_is_too_large_and_makes_no_topic(make_broker):
    broker = make_broker(ring_bytes=4 * KiB, max_message_bytes=512)
    with pytest.raises(pymq.MessageTooLarge, match="does not fit the ring"):
        broker.publish_batch("t", bytes(64 * 100), record_size=64)
    with pytest.raises(pymq.MessageTooLarge, match="does not fit the ring"):
        broker.publish_batch("t", bytes(64 * 100), offsets=range(0, 64 * 101, 64))
    with pytest.raises(pymq.MessageTooLarge, match="does not fit the ring"):
        broker.publish_many("t", [bytes(64)] * 100)
    assert broker.topics() == []  # a first publish that fails makes nothing
    broker.publish("t", b"x")
    with pytest.raises(pymq.MessageTooLarge, match="does not fit the ring"):
        broker.publish_batch("t", bytes(64 * 100), record_size=64)
    assert broker.stats()["topics"]["t"]["published"] == 1


def test_record_size_may_be_any_integer_type(broker):
    class Four:  # as numpy's integers: an int by __index__
        def __index__(self):
            return 4

    sub = broker.subscribe("t")
    assert broker.publish_batch("t", b"abcdefgh", record_size=Four()) == 2
    assert sub.get_batch(10, timeout=5).payloads() == [b"abcd", b"efgh"]


def test_an_ack_batch_settles_each_message_named_once(broker):
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish_batch("t", b"abcd", record_size=1)
    batch = sub.get_batch(10, timeout=5)
    for bad in ([4], [-5], [0, 4]):  # out of range: IndexError, and nothing settled
        with pytest.raises(IndexError, match="out of range"):
            batch.ack(bad)
    assert batch.ack([-1, 3]) == 1  # the same message twice: acked once
    assert batch.ack([3]) == 0
    assert batch.ack() == 3
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    assert (g["acked"], g["pending"]) == (4, 0)


def test_mixed_single_and_bulk_publishers_through_a_small_ring(make_broker, name, ctx):
    """Two publishers of single messages and two of batches wrap a 64 KiB ring
    many times; a subscriber of each kind of read gets every payload once,
    whole (crc), in order per publisher."""
    broker = make_broker(ring_bytes=64 * KiB, max_message_bytes=4 * KiB)
    plain = broker.subscribe("t")
    acks = broker.subscribe_with_ack("t", group="g")
    procs = [ctx.Process(target=workers.publisher, args=(name, "t", 1, 3000, 100, 1)),
             ctx.Process(target=workers.publisher, args=(name, "t", 2, 3000, 60, 16)),
             ctx.Process(target=workers.bulk_publisher, args=(name, "t", 3, 6000, 64, 100)),
             ctx.Process(target=workers.bulk_publisher, args=(name, "t", 4, 6000, 48, 37))]
    for p in procs:
        p.start()
    got_plain, got_ack, seqs = [], [], []
    while len(got_plain) < 18000 or len(got_ack) < 18000:
        if len(got_plain) < 18000:
            b = plain.get_batch(1024, timeout=30)
            seqs += b.seqs.tolist()
            got_plain += b.payloads()
        if len(got_ack) < 18000:
            b = acks.get_batch(1024, timeout=30)
            assert b.ack() == len(b)
            got_ack += b.payloads()
    join_all(procs)
    assert seqs == list(range(1, 18001))  # contiguous: none lost, none twice
    for got in (got_plain, got_ack):
        by = {}
        for p in got:
            pub, i = workers.parse_payload(p)  # crc: none torn
            by.setdefault(pub, []).append(i)
        assert by == {1: list(range(3000)), 2: list(range(3000)), 3: list(range(6000)),
                      4: list(range(6000))}
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    assert (g["acked"], g["pending"]) == (18000, 0)


def test_part_of_an_ack_batch_is_redelivered(make_broker, name, ctx):
    broker = make_broker(ack_timeout=3600)
    acks = broker.subscribe_with_ack("t", group="g")
    broker.publish_batch("t", b"".join(b"%04d" % i for i in range(10)), record_size=4)
    batch = acks.get_batch(10, timeout=5)
    assert isinstance(batch, pymq.AckBatch) and batch.delivery_attempts.tolist() == [1] * 10
    assert batch.nack([2, -1]) == 2  # the 3rd and the last, now
    assert batch.ack([0, 1, 3, 4, 5, 6, 7, 8]) == 8
    again = acks.get_batch(10, timeout=5)
    assert again.payloads() == [b"0002", b"0009"] and again.delivery_attempts.tolist() == [2, 2]
    assert again.seqs.tolist() == [batch.seqs[2], batch.seqs[9]]
    # a member that dies with a batch in hand: its deliveries go to the others at once
    q = ctx.Queue()
    p = ctx.Process(target=workers.take_and_hang, args=(name, "t", "g", 2, q))
    broker.publish_many("t", [b"a", b"b"])
    again.ack()
    p.start()
    assert q.get(timeout=30) == "subscribed"
    q.get(timeout=30)
    p.kill()
    p.join(30)
    redelivered = acks.get_batch(10, timeout=30)
    assert redelivered.payloads() == [b"a", b"b"]
    assert redelivered.delivery_attempts.tolist() == [2, 2]
    assert redelivered.ack() == 2
    with pytest.raises(IndexError):
        redelivered.ack([7])
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    assert (g["acked"], g["nacked"], g["pending"]) == (12, 2, 0)


def test_numpy_records_in_and_out_without_a_python_object_each(broker):
    np = pytest.importorskip("numpy", reason="numpy is not installed (a test extra)")
    telemetry = np.dtype([("gpu", "<u2"), ("util", "u1"), ("temp", "<f4"), ("ts", "<u8")])
    records = np.zeros(1000, dtype=telemetry)
    records["gpu"] = np.arange(1000) % 8
    records["util"] = np.arange(1000) % 101
    records["temp"] = 40 + np.arange(1000) / 100
    records["ts"] = np.arange(1000) * 1_000_000
    sub = broker.subscribe("gpu")
    last = broker.publish_batch("gpu", records, record_size=records.itemsize)
    assert last == 1000
    got = []
    while sum(map(len, got)) < 1000:
        batch = sub.get_batch(1000, timeout=5)
        assert batch.record_size == telemetry.itemsize
        got.append(np.frombuffer(batch.data, dtype=telemetry))
    back = np.concatenate(got)
    assert back.tobytes() == records.tobytes()
    assert np.bincount(back["gpu"]).tolist() == [125] * 8  # aggregated in bulk
    with pytest.raises(BufferError):
        broker.publish_batch("gpu", records[::2], record_size=records.itemsize)


def test_a_batch_stays_valid_after_the_ring_moved_on(make_broker):
    broker = make_broker(ring_bytes=4 * KiB, max_message_bytes=512)
    sub = broker.subscribe("t")
    broker.publish_batch("t", b"A" * 640, record_size=64)
    batch = sub.get_batch(100, timeout=5)
    for _ in range(20):  # the ring is overwritten many times over
        broker.publish_batch("t", b"B" * 640, record_size=64)
        sub.get_batch(100, timeout=5)
    assert bytes(batch.data) == b"A" * 640 and zlib.crc32(batch.data) == zlib.crc32(b"A" * 640)
