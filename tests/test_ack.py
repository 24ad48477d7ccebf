"""At-least-once delivery (native/ack.c, AckSubscription), across processes."""

import collections
import os
import signal
import time

import pytest

import pymq
import workers
from helpers import join_all, wait_for


def start(p):
    p.start()
    return p


def group_stats(broker, topic, group):
    return broker.stats()["topics"][topic]["groups"][group]


def sweeps_after(broker, t):
    """Wait until the supervisor has swept after wall-clock time t."""
    wait_for(lambda: broker.stats()["supervisor"]["last_sweep"] > t)


def test_message_fields_ack_and_view(make_broker):
    broker = make_broker()
    sub = broker.subscribe_with_ack("t")
    before = time.time()
    seq = broker.publish("t", b"payload-1")
    m = sub.get(timeout=5)
    assert (m.payload, m.topic, m.seq, m.delivery_attempt) == (b"payload-1", "t", seq, 1)
    assert before - 1 <= m.publish_time <= time.time() + 1
    v = m.view()
    assert v.readonly and bytes(v) == b"payload-1" and isinstance(v, memoryview)
    m.ack()
    m.ack()  # idempotent
    with pytest.raises(ValueError):
        v.tobytes()  # released at ack: the ring space may be reused
    with pytest.raises(ValueError):
        m.view()
    g = group_stats(broker, "t", "anon-%d" % sub._reader.group)
    assert (g["delivered"], g["acked"], g["pending"]) == (1, 1, 0)


def test_view_keeps_the_segment_alive_after_close(make_broker, name):
    broker = make_broker()
    c = pymq.connect(name)
    sub = c.subscribe_with_ack("t")
    broker.publish("t", b"x" * 1000)
    m = sub.get(timeout=5)
    v = m.view()
    c.close()
    broker.close()  # segments unlinked; the mapping stays while the view lives
    assert bytes(v) == b"x" * 1000


def test_unacked_message_is_redelivered_after_timeout_to_a_live_member(make_broker, name, ctx):
    broker = make_broker(ack_timeout=0.5)
    q = ctx.Queue()
    hung = start(ctx.Process(target=workers.take_and_hang, args=(name, "t", "g", 3, q)))
    assert q.get(timeout=30) == "subscribed"
    live = broker.subscribe_with_ack("t", group="g")
    seqs = [broker.publish("t", b"m%d" % i) for i in range(3)]
    taken = q.get(timeout=30)
    assert taken == seqs  # the other member took all three and hangs (alive, not acking)
    got = []
    while len(got) < 3:
        got += live.get_many(10, timeout=30)
    assert sorted(m.seq for m in got) == seqs and {m.delivery_attempt for m in got} == {2}
    live.ack_many(got)
    g = group_stats(broker, "t", "g")
    assert (g["timeouts"], g["redelivered"], g["acked"], g["pending"]) == (3, 3, 3, 0)
    os.kill(hung.pid, signal.SIGKILL)
    hung.join(10)


def test_acked_message_is_not_redelivered(make_broker):
    broker = make_broker(ack_timeout=0.2)
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish("t", b"once")
    sub.get(timeout=5).ack()
    sweeps_after(broker, time.time() + 0.5)  # well past the timeout
    with pytest.raises(pymq.Timeout):
        sub.get(timeout=0)
    g = group_stats(broker, "t", "g")
    assert (g["timeouts"], g["redelivered"], g["acked"]) == (0, 0, 1)


def test_out_of_retries_goes_to_the_dead_letter_topic(make_broker):
    broker = make_broker(ack_timeout=0.1, max_retries=2)
    dlq = broker.subscribe("t.dlq")
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish("t", b"poison")
    attempts = []
    while len(attempts) < 3:
        attempts += [m.delivery_attempt for m in sub.get_many(10, timeout=30)]  # never acked
    assert attempts == [1, 2, 3]  # the first delivery and max_retries redeliveries
    assert dlq.get(timeout=30) == b"poison"
    # the supervisor frees (and counts) a dead letter just after publishing it
    wait_for(lambda: group_stats(broker, "t", "g")["dead_lettered"] == 1)
    with pytest.raises(pymq.Timeout):
        sub.get(timeout=0.3)
    g = group_stats(broker, "t", "g")
    assert (g["dead_lettered"], g["pending"], g["redelivered"]) == (1, 0, 2)
    assert broker.stats()["dead_lettered"] == 1


def test_nack_redelivers_at_once_and_counts(make_broker):
    broker = make_broker(ack_timeout=3600)
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"a", b"b"])
    a, b = sub.get_many(2, timeout=5)
    a.nack()
    again = sub.get(timeout=5)  # well before an hour
    assert (again.seq, again.delivery_attempt, again.payload) == (a.seq, 2, b"a")
    sub.ack_many([again, b])
    g = group_stats(broker, "t", "g")
    assert (g["nacked"], g["redelivered"], g["acked"], g["pending"]) == (1, 1, 2, 0)


def test_dead_members_work_reaches_a_live_member_before_the_timeout(make_broker, name, ctx):
    broker = make_broker(ack_timeout=3600)  # an hour: only reaping can explain redelivery
    q = ctx.Queue()
    doomed = start(ctx.Process(target=workers.take_and_hang, args=(name, "t", "g", 50, q)))
    assert q.get(timeout=30) == "subscribed"
    live = broker.subscribe_with_ack("t", group="g")
    seqs = broker.publish_many("t", [b"%d" % i for i in range(50)])
    taken = q.get(timeout=30)
    assert taken == list(range(seqs - 49, seqs + 1))
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(10)
    got = []
    while len(got) < 50:
        got += live.get_many(64, timeout=30)
    assert sorted(m.seq for m in got) == taken and {m.delivery_attempt for m in got} == {2}
    assert live.ack_many(got) == 50
    wait_for(lambda: broker.stats()["reaped_subscriptions"] == 1)


def test_unsubscribing_member_hands_its_unacked_work_to_the_group(make_broker):
    broker = make_broker(ack_timeout=3600)
    leaving = broker.subscribe_with_ack("t", group="g")
    staying = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"1", b"2", b"3"])
    taken = leaving.get_many(10, timeout=5)
    leaving.unsubscribe()
    got = staying.get_many(10, timeout=5)
    assert [m.seq for m in got] == [m.seq for m in taken]


def test_ring_keeps_a_message_until_every_ack_group_acked_it(make_broker):
    broker = make_broker(ring_bytes=65536, max_message_bytes=1024)
    a = broker.subscribe_with_ack("t", group="a")
    b = broker.subscribe_with_ack("t", group="b")
    sent = 0
    with pytest.raises(pymq.Full):
        while True:
            broker.publish("t", b"x" * 1000, timeout=0)
            sent += 1
    msgs = []
    while len(msgs) < sent:
        msgs += a.get_many(1024, timeout=5)
    a.ack_many(msgs)
    with pytest.raises(pymq.Full):  # group b still holds every message
        broker.publish("t", b"x" * 1000, timeout=0)
    bm = b.get_many(1024, timeout=5)
    with pytest.raises(pymq.Full):  # delivered is not acked: still held
        broker.publish("t", b"x" * 1000, timeout=0)
    b.ack_many(bm)
    broker.publish("t", b"x" * 1000, timeout=0)  # now there is room


def test_window_of_unacked_deliveries_is_bounded_and_reopens_on_ack(make_broker):
    from pymq import _core
    broker = make_broker(ack_timeout=3600)
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"x"] * (_core.PENDING_CAP + 10))
    got = []
    with pytest.raises(pymq.Timeout):
        while True:
            got += sub.get_many(1024, timeout=0.05)
    assert len(got) == _core.PENDING_CAP  # at most this many in flight
    sub.ack_many(got[:10])
    assert len(sub.get_many(1024, timeout=5)) == 10


def test_supervisor_killed_mid_stream_nothing_lost_redelivery_resumes(make_broker, name, ctx):
    broker = make_broker(ack_timeout=0.5)
    q = ctx.Queue()
    hung = start(ctx.Process(target=workers.take_and_hang, args=(name, "t", "g", 5, q)))
    assert q.get(timeout=30) == "subscribed"
    live = broker.subscribe_with_ack("t", group="g")
    first = broker.supervisor_pid
    os.kill(first, signal.SIGKILL)
    seqs = [broker.publish("t", b"%d" % i) for i in range(5)]  # publish goes on
    assert q.get(timeout=30) == seqs
    more = broker.publish_many("t", [b"x"] * 20)
    direct = []
    while len(direct) < 20:
        direct += live.get_many(64, timeout=30)  # receive goes on
    live.ack_many(direct)  # ack goes on
    assert sorted(m.seq for m in direct) == list(range(more - 19, more + 1))
    wait_for(lambda: broker.supervisor_pid != first)
    redelivered = []
    while len(redelivered) < 5:
        redelivered += live.get_many(64, timeout=30)  # the new supervisor resumes
    assert sorted(m.seq for m in redelivered) == seqs
    live.ack_many(redelivered)
    os.kill(hung.pid, signal.SIGKILL)
    hung.join(10)
    assert broker.stats()["supervisor"]["restarts"] == 1


def test_load_six_publishers_five_members_every_message_acked(make_broker, name, ctx):
    broker = make_broker(ring_bytes=1 << 20, max_message_bytes=4096, ack_timeout=30.0)
    pubs, per_pub, members = 6, 6000, 5
    q, first, hold = ctx.Queue(), ctx.Queue(), ctx.Event()
    stop = ctx.Event()
    procs = []
    for k in range(members):
        ready = ctx.Event()
        procs.append(start(ctx.Process(target=workers.ack_member, args=(
            name, "t", "collectors", q, ready, stop), kwargs={
                "nack_every": 97 if k == 0 else 0, "first_q": first, "hold_evt": hold})))
        assert ready.wait(30)
    go = ctx.Event()
    producers = [start(ctx.Process(target=workers.publisher,
                                   args=(name, "t", p, per_pub, 64 + p * 100, 1 + 15 * (p % 2), go)))
                 for p in range(pubs)]
    go.set()
    # each member holds after its first read until all have read: the work is shared
    # however the scheduler runs them
    assert sorted(first.get(timeout=60) for _ in procs) == sorted(p.pid for p in procs)
    hold.set()
    join_all(producers, timeout=120)
    total = pubs * per_pub
    wait_for(lambda: group_stats(broker, "t", "collectors")["acked"] == total, timeout=120)
    stop.set()
    results = dict(q.get(timeout=60) for _ in procs)
    join_all(procs)
    got = [r for part in results.values() for r in part]
    keys = collections.Counter((pub, i) for pub, i, _, _ in got)
    assert set(keys) == {(p, i) for p in range(pubs) for i in range(per_pub)}  # none lost
    assert all(n == 1 for n in keys.values())  # acked once each: nacked ones came back once
    g = group_stats(broker, "t", "collectors")
    assert g["acked"] == total and g["pending"] == 0 and g["dead_lettered"] == 0
    assert g["nacked"] == g["redelivered"] > 0
    assert all(results.values())  # the work was shared: every member acked some


def test_ack_many_takes_messages_of_several_subscriptions(make_broker):
    broker = make_broker(ack_timeout=3600)
    a = broker.subscribe_with_ack("t", group="g")
    b = broker.subscribe_with_ack("u", group="g")
    broker.publish_many("t", [b"1", b"2"])
    broker.publish_many("u", [b"3"])
    msgs = a.get_many(10, timeout=5) + b.get_many(10, timeout=5)
    assert a.ack_many(msgs) == 3
    assert a.ack_many(msgs) == 0  # already acked
    assert group_stats(broker, "t", "g")["acked"] == 2 and group_stats(broker, "u", "g")["acked"] == 1


def test_messages_made_in_c_carry_every_field_and_ack_many_takes_the_general_path_when_needed(
        make_broker):
    """get/get_many of an ack subscription build Messages in C (pymq._fast);
    ack_many acks a list of the subscription's own in C, and anything else
    (a view held, a message acked already, another subscription's, a tuple)
    through the general path, with the same result."""
    broker = make_broker(ack_timeout=3600)
    sub = broker.subscribe_with_ack("t", group="g")
    payloads = [os.urandom(n) for n in (0, 1, 63, 64, 4000)] * 4
    first = broker.publish_many("t", payloads) - len(payloads) + 1
    before = time.time()
    msgs = sub.get_many(8, timeout=5) + [sub.get(timeout=5)] + sub.get_many(100, timeout=5)
    assert [type(m) for m in msgs] == [pymq.Message] * len(payloads)
    assert [m.payload for m in msgs] == payloads
    assert [m.seq for m in msgs] == list(range(first, first + len(payloads)))
    assert {(m.topic, m.delivery_attempt, m._settled, m._views, m._reader) for m in msgs} == {
        ("t", 1, False, None, sub._reader)}
    assert all(before - 5 <= m.publish_time <= time.time() for m in msgs)
    assert len({m._slot for m in msgs}) == len(msgs)
    assert bytes(msgs[3].view()) == payloads[3]  # a view: this list goes the general way
    assert sub.ack_many(msgs[:5]) == 5
    msgs[5].ack()
    assert sub.ack_many(msgs[5:10]) == 4  # the one acked already is skipped (in C)
    assert sub.ack_many(tuple(msgs[10:12])) == 2  # not a list: the general path
    assert sub.ack_many(msgs[12:]) == len(msgs) - 12
    assert sub.ack_many(msgs) == 0
    g = group_stats(broker, "t", "g")
    assert (g["delivered"], g["acked"], g["pending"]) == (len(msgs), len(msgs), 0)


def test_message_is_a_c_type_whose_ack_is_one_call_and_whose_fields_are_read_only(make_broker):
    """pymq.Message subclasses pymq._fast.Message (C): its fields are read-only
    members, ack and nack are C methods, one call into the ring each; ack acks
    once; a user's message calls the ack it was given."""
    from pymq import _core
    broker = make_broker(ack_timeout=3600)
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"a", b"b"])
    a, b = sub.get(timeout=5), sub.get(timeout=5)
    assert type(a) is pymq.Message is _core.Message  # all C: no Python subclass
    assert type(pymq.Message.ack).__name__ == "method_descriptor"
    assert repr(a) == "Message(topic='t', seq=1, delivery_attempt=1, payload=b'a')"
    long = pymq.Message(bytes(40), topic=None)
    assert repr(long) == f"Message(topic=None, seq=None, delivery_attempt=1, payload={bytes(32)!r}...)"
    for field in ("payload", "topic", "seq", "delivery_attempt", "publish_time"):
        with pytest.raises(AttributeError):
            setattr(a, field, None)
    a.ack()
    a.ack()  # idempotent: settled, no second native ack
    g = group_stats(broker, "t", "g")
    assert (g["acked"], g["pending"]) == (1, 1)
    b.view()  # viewed: the ack releases the view, then acks
    b.ack()
    g = group_stats(broker, "t", "g")
    assert (g["acked"], g["pending"]) == (2, 0)
    calls = []
    m = pymq.Message(b"x", lambda: calls.append(1), topic="t", seq=7)
    assert (m.payload, m.topic, m.seq, m.delivery_attempt, m.publish_time) == (b"x", "t", 7, 1, None)
    m.ack()
    assert calls == [1]
    m.nack()  # a user's message: nothing to redeliver
    with pytest.raises(TypeError):
        pymq.Message(b"x", ack=5)


def test_acks_and_nacks_never_wait_and_a_corrupt_window_is_reported_by_the_next_read(
        make_broker):
    """An ack and a nack never wait for a lock, whatever the window holds (an
    ack that finds the lock free but the window corrupt changes its entry
    without it, as when the lock is held); the next read, which takes the
    group's lock, checks the window and reports corruption."""
    broker = make_broker(ack_timeout=3600)
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"a", b"b"])
    a, b = sub.get(timeout=5), sub.get(timeout=5)
    group = sub._ring.h.groups[sub._reader.group]
    saved, group.pend_head = group.pend_head, 1 << 40  # its window's head past its tail
    a.nack()
    b.ack()
    with pytest.raises(pymq.SegmentMismatch, match="topic 't': corrupt segment"):
        sub.get(timeout=0)
    group.pend_head = saved
    again = sub.get(timeout=5)
    assert (again.payload, again.delivery_attempt) == (b"a", 2)
    again.ack()
    assert {k: group_stats(broker, "t", "g")[k] for k in ("acked", "nacked", "pending")} == \
        {"acked": 2, "nacked": 1, "pending": 0}


def test_stale_nack_does_not_take_a_delivery_from_its_new_holder(make_broker):
    from pymq import _core
    broker = make_broker(ack_timeout=3600)
    a1 = broker.subscribe_with_ack("t", group="g")
    a2 = broker.subscribe_with_ack("t", group="g")
    broker.publish("t", b"x")
    m = a1.get(timeout=5)
    m.nack()
    m2 = a2.get(timeout=5)
    assert (m2.seq, m2.delivery_attempt) == (m.seq, 2)
    ffi, lib, r = _core.ffi, _core.lib, a1._reader  # a nack naming the first attempt again
    stale = lib.pmq_ack_nack(a1._ring.h, r.group, r.group_gen, ffi.new("uint32_t[]", [m._slot]),
                             ffi.new("uint64_t[]", [m.seq]), ffi.new("uint32_t[]", [1]), 1,
                             ffi.NULL)
    assert stale == 0
    with pytest.raises(pymq.Timeout):
        a1.get(timeout=0.1)
    m2.ack()
    assert group_stats(broker, "t", "g")["pending"] == 0


def test_unsubscribing_an_anonymous_ack_group_from_another_thread_ends_cleanly(make_broker):
    import threading
    broker = make_broker()
    for _ in range(100):
        sub = broker.subscribe_with_ack("t")
        outcome = []

        def read():
            try:
                while True:
                    sub.ack_many(sub.get_many(16, timeout=None))
            except pymq.SubscriptionClosed:
                outcome.append("closed")
        t = threading.Thread(target=read)
        t.start()
        broker.publish_many("t", [b"x"] * 50)
        sub.unsubscribe()
        t.join(30)
        assert not t.is_alive() and outcome == ["closed"]
    assert broker.stats()["topics"]["t"]["corrupt"] == 0


def test_a_full_dead_letter_topic_does_not_stop_redelivery_elsewhere(make_broker):
    broker = make_broker(ring_bytes=65536, max_message_bytes=1024, ack_timeout=0.1, max_retries=0)
    blocker = broker.subscribe("a.dlq", group="never-reads")  # durable: fills a.dlq
    while True:
        try:
            broker.publish("a.dlq", b"x" * 1000, timeout=0)
        except pymq.Full:
            break
    a = broker.subscribe_with_ack("a", group="g")
    b = broker.subscribe_with_ack("b", group="g")
    broker.publish("a", b"dies")
    broker.publish("b", b"comes back")
    a.get(timeout=5)  # never acked: dead at once (max_retries=0), but a.dlq is full
    first = b.get(timeout=5)  # never acked either
    with pytest.raises(pymq.Timeout):
        b.get(timeout=0.5)  # max_retries=0: b's message dies too, and reaches b.dlq
    dlq = broker.subscribe("b.dlq", start="earliest")
    assert dlq.get(timeout=10) == b"comes back" and first.payload == b"comes back"
    blocker.unsubscribe()


def test_a_group_keeps_its_delivery_mode(make_broker):
    broker = make_broker()
    broker.subscribe("t", group="plain")
    with pytest.raises(ValueError, match="made by subscribe"):
        broker.subscribe_with_ack("t", group="plain")
    broker.subscribe_with_ack("t", group="acked")
    with pytest.raises(ValueError, match="made by subscribe_with_ack"):
        broker.subscribe("t", group="acked")
