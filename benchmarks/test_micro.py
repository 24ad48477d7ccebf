"""Micro-benchmarks of pymq's hot path: one operation per test, in one process.

    .venv/bin/python -m pytest benchmarks --benchmark-only     # measure
    .venv/bin/python -m pytest benchmarks --benchmark-disable  # smoke run: each op once

Each test uses benchmark.pedantic with a fixed number of rounds x iterations,
so the number of calls is known beforehand: reads are pre-filled with exactly
enough messages (plus a margin) that they never wait, and everything published
fits the 64 MiB ring, so publishers never wait for space either. After the
measurement every test checks what the operation did (seqs, counts, payloads
and their order). Payloads are 64 bytes; a pre-filled payload carries its index
in its first 8 bytes. The "ack" group measures at-least-once reads: an
AckSubscription, the only member of a named ack group, reads and acks. The
"bulk" group measures get_batch and publish_batch (issue 15), 1024 messages of
64 B a call, from or into one buffer; pytest-benchmark reports the time of a
call, and per message it is that / 1024 (extra_info messages_per_call).
"""

from __future__ import annotations

import pytest

import pymq

TOPIC = "bench"
SIZE = 64            # payload bytes
BATCH = 64           # messages per publish_many / get_many
PREFILL_BATCH = 1024
TIMEOUT = 10.0       # a read that found nothing fails after this instead of hanging
FILL = bytes((7 * k + 3) & 0xFF for k in range(SIZE))

# (rounds, iterations, warmup_rounds) per benchmark. At most ~450k messages of
# 88 ring bytes each (24-byte record header + 64) go through a test: ~40 MB,
# well within the 64 MiB ring, so nothing ever waits or wraps onto unread data.
SINGLE = (400, 1000, 40)
BATCHED = (200, 25, 20)


def payload(i: int) -> bytes:
    """The 64-byte payload number i: i in 8 little-endian bytes, then filler."""
    return i.to_bytes(8, "little") + FILL[8:]


def plan(benchmark, rounds: int, iterations: int, warmup: int) -> tuple[dict, int]:
    """pedantic() arguments, and how many calls of the target they make."""
    if benchmark.disabled:  # --benchmark-disable: pedantic calls the target once
        return {"rounds": 1, "iterations": 1, "warmup_rounds": 0}, 1
    calls = (warmup + rounds) * iterations + (1 if iterations > 1 else 0)  # +1: the result call
    return {"rounds": rounds, "iterations": iterations, "warmup_rounds": warmup}, calls


def prefill(client, count: int) -> None:
    """Publish payload(0) .. payload(count - 1) in batches."""
    for start in range(0, count, PREFILL_BATCH):
        client.publish_many(TOPIC, [payload(i) for i in range(start, min(count, start + PREFILL_BATCH))])


def drain(sub) -> list[bytes]:
    """Everything the subscription has not read yet."""
    out = []
    while True:
        try:
            out.extend(sub.get_many(PREFILL_BATCH, timeout=0))
        except pymq.Timeout:
            return out


def check_reads(sub, last: bytes, total: int, calls: int) -> None:
    """After single reads of the pre-filled payload(0) .. payload(total - 1):
    the last one read is the next in publish order (its index is the number
    read, less one), and the rest follow it, in order and intact."""
    rest = drain(sub)
    read = total - len(rest)
    assert rest, "the ring ran dry during the measurement"
    assert read >= calls
    assert last == payload(read - 1)
    assert rest == [payload(i) for i in range(read, total)]


def topic_stats(client) -> dict:
    return client.stats()["topics"][TOPIC]


@pytest.mark.benchmark(group="publish")
def test_publish_64B(benchmark, broker):
    """publish(): one 64-byte message per call, to a topic with one idle subscriber.

    Checked: the seq returned by the last call is the topic's publish count (one
    seq per call, in order), the publisher never waited for space, and the
    subscriber then reads every message, byte for byte."""
    sub = broker.subscribe(TOPIC)
    msg = payload(0)
    first = broker.publish(TOPIC, msg)  # creates the topic's segment, outside the measurement
    kwargs, calls = plan(benchmark, *SINGLE)
    benchmark.extra_info.update(messages_per_call=1, payload_bytes=SIZE)

    last = benchmark.pedantic(broker.publish, args=(TOPIC, msg), **kwargs)

    st = topic_stats(broker)
    assert first == 1
    assert last == st["published"] >= 1 + calls
    assert st["publish_waits"] == 0 and st["publish_refusals"] == 0
    got = drain(sub)
    assert len(got) == st["published"]
    assert all(p == msg for p in got)


@pytest.mark.benchmark(group="publish")
def test_publish_many_64x64B(benchmark, broker):
    """publish_many(): a batch of 64 messages of 64 bytes per call (one native
    call), to a topic with one idle subscriber.

    Checked: the seq returned (that of the batch's last message) is the topic's
    publish count, a multiple of 64; the publisher never waited for space; the
    subscriber then reads every message, byte for byte and in batch order."""
    sub = broker.subscribe(TOPIC)
    batch = [payload(i) for i in range(BATCH)]
    first = broker.publish_many(TOPIC, batch)  # creates the segment, outside the measurement
    kwargs, calls = plan(benchmark, *BATCHED)
    benchmark.extra_info.update(messages_per_call=BATCH, payload_bytes=SIZE)

    last = benchmark.pedantic(broker.publish_many, args=(TOPIC, batch), **kwargs)

    st = topic_stats(broker)
    assert first == BATCH
    assert last == st["published"] >= BATCH * (1 + calls)
    assert last % BATCH == 0
    assert st["publish_waits"] == 0 and st["publish_refusals"] == 0
    got = drain(sub)
    assert len(got) == st["published"]
    assert all(p == batch[k % BATCH] for k, p in enumerate(got))


@pytest.mark.benchmark(group="get")
def test_get_64B(benchmark, broker):
    """Subscription.get(): one 64-byte message per call, from a pre-filled ring
    (the read never waits).

    Checked: the payload returned by the last call is the next one in publish
    order (its index is the number read so far, less one) and the rest of the
    pre-filled messages follow it, in order and intact."""
    sub = broker.subscribe(TOPIC)
    kwargs, calls = plan(benchmark, *SINGLE)
    total = calls + BATCH  # a margin: the ring must never run dry
    prefill(broker, total)
    benchmark.extra_info.update(messages_per_call=1, payload_bytes=SIZE)

    last = benchmark.pedantic(sub.get, kwargs={"timeout": TIMEOUT}, **kwargs)

    check_reads(sub, last, total, calls)


@pytest.mark.benchmark(group="get")
def test_iterate_64B(benchmark, broker):
    """next() of a loop over an anonymous subscription (`for p in sub`): one
    64-byte message per call, from a pre-filled ring; the loop reads ahead
    1,024 at a time and hands them out one by one.

    Checked as test_get_64B: the last item is the next one in publish order,
    and the rest (what the loop read ahead first, then the ring) follow it."""
    sub = broker.subscribe(TOPIC)
    kwargs, calls = plan(benchmark, *SINGLE)
    total = calls + 2 * PREFILL_BATCH  # a margin: the loop reads ahead up to 1,024
    prefill(broker, total)
    benchmark.extra_info.update(messages_per_call=1, payload_bytes=SIZE)

    last = benchmark.pedantic(iter(sub).__next__, **kwargs)

    check_reads(sub, last, total, calls)


@pytest.mark.benchmark(group="get")
def test_get_many_64x64B(benchmark, broker):
    """Subscription.get_many(64): a batch of 64 messages of 64 bytes per call
    (one native call), from a pre-filled ring (the read never waits).

    Checked: every call returned a full batch (the last one is the 64 messages
    before the unread rest, in order and intact), and the rest follow."""
    sub = broker.subscribe(TOPIC)
    kwargs, calls = plan(benchmark, *BATCHED)
    total = (calls + 1) * BATCH  # a margin: the ring must never run dry
    prefill(broker, total)
    benchmark.extra_info.update(messages_per_call=BATCH, payload_bytes=SIZE)

    last = benchmark.pedantic(sub.get_many, args=(BATCH,), kwargs={"timeout": TIMEOUT}, **kwargs)

    rest = drain(sub)
    read = total - len(rest)
    assert rest, "the ring ran dry during the measurement"
    assert read >= calls * BATCH and read % BATCH == 0
    assert last == [payload(i) for i in range(read - BATCH, read)]
    assert rest == [payload(i) for i in range(read, total)]


# -- at-least-once: ack groups -------------------------------------------------

ACK_GROUP = "bench-ack"


def ack_drain(sub) -> list:
    """Every message the ack subscription has not read yet, each acked (the
    group's window holds at most 1024 unacked deliveries)."""
    out = []
    while True:
        try:
            msgs = sub.get_many(PREFILL_BATCH, timeout=0)
        except pymq.Timeout:
            return out
        sub.ack_many(msgs)
        out.extend(msgs)


def check_acked(broker, read: int) -> None:
    """The ack group delivered read messages, each once, and all are acked."""
    st = topic_stats(broker)
    g = st["groups"][ACK_GROUP]
    assert g["ack"] and g["delivered"] == g["acked"] == read
    assert g["pending"] == g["redelivered"] == g["nacked"] == g["timeouts"] == 0
    assert st["publish_waits"] == 0 and st["publish_refusals"] == 0


@pytest.mark.benchmark(group="ack")
def test_get_ack_64B(benchmark, broker):
    """AckSubscription.get() + Message.ack(): one 64-byte message per call, read
    and acked by the only member of an ack group, from a pre-filled ring (the
    read never waits; acked at once, the group's window never fills).

    Checked: the message returned by the last call is the next one in publish
    order (payload, seq, first delivery); the group's figures say that every
    message it delivered was acked, once, and none is pending or was
    redelivered; the rest of the pre-filled messages then follow, in order and
    intact."""
    sub = broker.subscribe_with_ack(TOPIC, ACK_GROUP)
    kwargs, calls = plan(benchmark, *SINGLE)
    total = calls + BATCH  # a margin: the ring must never run dry
    prefill(broker, total)
    get = sub.get
    benchmark.extra_info.update(messages_per_call=1, payload_bytes=SIZE)

    def get_ack():
        msg = get(TIMEOUT)
        msg.ack()
        return msg

    last = benchmark.pedantic(get_ack, **kwargs)

    read = topic_stats(broker)["groups"][ACK_GROUP]["delivered"]
    check_acked(broker, read)
    assert read >= calls
    assert (last.payload, last.seq, last.delivery_attempt) == (payload(read - 1), read, 1)
    rest = ack_drain(sub)
    assert rest, "the ring ran dry during the measurement"
    assert [m.payload for m in rest] == [payload(i) for i in range(read, total)]
    assert [m.seq for m in rest] == list(range(read + 1, total + 1))
    check_acked(broker, total)


@pytest.mark.benchmark(group="ack")
def test_get_many_ack_many_64x64B(benchmark, broker):
    """AckSubscription.get_many(64) + ack_many(): a batch of 64 messages of 64
    bytes per call, read in one native call and acked in one native call by the
    only member of an ack group, from a pre-filled ring (never waits).

    Checked: every call returned a full batch and ack_many() says all 64 acks
    took effect (the last batch is the 64 messages before the unread rest, in
    order, intact, first deliveries); the group's figures say that every
    message it delivered was acked, once, and none is pending or was
    redelivered; the rest then follow, in order and intact."""
    sub = broker.subscribe_with_ack(TOPIC, ACK_GROUP)
    kwargs, calls = plan(benchmark, *BATCHED)
    total = (calls + 1) * BATCH  # a margin: the ring must never run dry
    prefill(broker, total)
    get_many, ack_many = sub.get_many, sub.ack_many
    benchmark.extra_info.update(messages_per_call=BATCH, payload_bytes=SIZE)

    def get_many_ack_many():
        msgs = get_many(BATCH, TIMEOUT)
        return msgs, ack_many(msgs)

    last, acked = benchmark.pedantic(get_many_ack_many, **kwargs)

    read = topic_stats(broker)["groups"][ACK_GROUP]["delivered"]
    check_acked(broker, read)
    assert read >= calls * BATCH and read % BATCH == 0
    assert acked == BATCH
    assert [m.payload for m in last] == [payload(i) for i in range(read - BATCH, read)]
    assert [m.seq for m in last] == list(range(read - BATCH + 1, read + 1))
    assert all(m.delivery_attempt == 1 for m in last)
    rest = ack_drain(sub)
    assert rest, "the ring ran dry during the measurement"
    assert [m.payload for m in rest] == [payload(i) for i in range(read, total)]
    check_acked(broker, total)


# -- bulk: get_batch and publish_batch (issue 15) ------------------------------------

BULK = 1024          # records per publish_batch / get_batch call (64 KiB of 64 B payloads)
BULK_PLAN = (100, 4, 10)  # rounds, iterations, warm-up rounds: 1024 x 448 calls, 40 MB of ring


def bulk_data(start: int) -> bytes:
    """The payloads start .. start + BULK - 1, back to back (publish_batch's data)."""
    return b"".join(payload(i) for i in range(start, start + BULK))


@pytest.mark.benchmark(group="bulk")
def test_publish_batch_1024x64B(benchmark, broker):
    """Client.publish_batch(topic, data, record_size=64): 1024 messages of 64
    bytes from one buffer per call (one native call), to a topic with one idle
    subscriber. Per message: the time / 1024 (extra_info messages_per_call).

    Checked: the seq returned (that of the call's last message) is the topic's
    publish count, a multiple of 1024; the publisher never waited for space;
    the subscriber then reads every message, byte for byte and in order, with
    get_batch (its data is the published buffers, back to back)."""
    sub = broker.subscribe(TOPIC)
    data = bulk_data(0)
    first = broker.publish_batch(TOPIC, data, record_size=SIZE)  # creates the segment
    kwargs, calls = plan(benchmark, *BULK_PLAN)
    benchmark.extra_info.update(messages_per_call=BULK, payload_bytes=SIZE)

    last = benchmark.pedantic(broker.publish_batch, args=(TOPIC, data),
                              kwargs={"record_size": SIZE}, **kwargs)

    st = topic_stats(broker)
    assert first == BULK
    assert last == st["published"] >= BULK * (1 + calls) and last % BULK == 0
    assert st["publish_waits"] == 0 and st["publish_refusals"] == 0
    read = 0
    while read < st["published"]:
        b = sub.get_batch(BULK, timeout=0)
        assert len(b) == BULK and b.record_size == SIZE and bytes(b.data) == data
        assert b.seqs.tolist() == list(range(read + 1, read + 1 + BULK))
        read += len(b)
    assert read == st["published"]


@pytest.mark.benchmark(group="bulk")
def test_get_batch_1024x64B(benchmark, broker):
    """Subscription.get_batch(1024): 1024 messages of 64 bytes per call as one
    pymq.Batch (one native call, no Python object per message), from a
    pre-filled ring (the read never waits). Per message: the time / 1024.

    Checked: every call returned a full batch (the last one: 1024 records of 64
    bytes, the payloads before the unread rest, byte for byte, with contiguous
    seqs), and the rest follows in order, intact."""
    sub = broker.subscribe(TOPIC)
    kwargs, calls = plan(benchmark, *BULK_PLAN)
    total = (calls + 1) * BULK  # a margin: the ring must never run dry
    for start in range(0, total, BULK):
        broker.publish_batch(TOPIC, bulk_data(start), record_size=SIZE)
    benchmark.extra_info.update(messages_per_call=BULK, payload_bytes=SIZE)

    last = benchmark.pedantic(sub.get_batch, args=(BULK,), kwargs={"timeout": TIMEOUT}, **kwargs)

    rest = drain(sub)
    read = total - len(rest)
    assert rest, "the ring ran dry during the measurement"
    assert read >= calls * BULK and read % BULK == 0
    assert len(last) == BULK and last.record_size == SIZE
    assert bytes(last.data) == bulk_data(read - BULK)
    assert last.seqs.tolist() == list(range(read - BULK + 1, read + 1))
    assert rest == [payload(i) for i in range(read, total)]
