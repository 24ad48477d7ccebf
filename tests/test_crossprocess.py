"""Cross-process claims, each with separate OS processes (spawn)."""

import collections
import os
import random
import signal
import time

import psutil
import pytest

import pymq
import workers
from helpers import join_all, wait_for

KiB = 1024


def run_collectors(ctx, name, topic, groups, total, **kw):
    """Start one collector process per entry of groups; wait until all subscribed."""
    q = ctx.Queue()
    procs, evts = [], []
    for g in groups:
        evt = ctx.Event()
        p = ctx.Process(target=workers.collector, args=(name, topic, g, total, q, evt), kwargs=kw)
        p.start()
        procs.append(p)
        evts.append(evt)
    for e in evts:
        assert e.wait(30)
    return procs, q


def check_per_publisher_order(got):
    last = {}
    for pub, i in got:
        assert i > last.get(pub, -1), f"publisher {pub}: {i} after {last.get(pub)}"
        last[pub] = i


def test_four_publishers_keep_order_and_integrity(make_broker, name, ctx):
    broker = make_broker(ring_bytes=64 * KiB, max_message_bytes=4 * KiB)  # small: waits happen
    pubs, per_pub = 4, 3000
    collectors, q = run_collectors(ctx, name, "t", [None], pubs * per_pub, batch=64)
    start = ctx.Event()
    producers = [ctx.Process(target=workers.publisher,
                             args=(name, "t", p, per_pub, 1 + p * 700, 1 + 7 * (p % 2), start))
                 for p in range(pubs)]
    for p in producers:
        p.start()
    start.set()
    join_all(producers)
    _, got = q.get(timeout=60)
    join_all(collectors)
    assert len(got) == pubs * per_pub
    assert collections.Counter(p for p, _ in got) == {p: per_pub for p in range(pubs)}
    check_per_publisher_order(got)  # and every payload's crc held (parse_payload)
    t = broker.stats()["topics"]["t"]
    assert t["published"] == pubs * per_pub


def test_fan_out_gives_every_subscriber_every_message(make_broker, name, ctx):
    make_broker()
    total = 2000
    collectors, q = run_collectors(ctx, name, "t", [None, None, None], total)
    join_all([_start(ctx.Process(target=workers.publisher, args=(name, "t", 0, total, 64, 16)))])
    results = [q.get(timeout=60) for _ in collectors]
    join_all(collectors)
    for _, got in results:
        assert got == [(0, i) for i in range(total)]


def _start(p):
    p.start()
    return p


def test_groups_split_exactly_once_and_fan_out_between_groups(make_broker, name, ctx):
    broker = make_broker()
    total = 6000
    q, first, hold = ctx.Queue(), ctx.Queue(), ctx.Event()
    stop = ctx.Event()
    members = []
    for group in ["dashboard", "dashboard", "dashboard", "archiver", "archiver"]:
        ready = ctx.Event()
        p = _start(ctx.Process(target=workers.group_member,
                               args=(name, "t", group, q, ready, stop, 16, False, first, hold)))
        assert ready.wait(30)
        members.append((group, p))
    pubs = [_start(ctx.Process(target=workers.publisher, args=(name, "t", k, total // 2, 48, 8)))
            for k in range(2)]
    # every member holds after its first read, so each group's others take the next
    # ones: each member gets a share, however the scheduler runs them
    assert sorted(first.get(timeout=60) for _ in members) == sorted(p.pid for _, p in members)
    hold.set()
    join_all(pubs)
    wait_for(lambda: all(g["lag"] == 0 for g in broker.stats()["topics"]["t"]["groups"].values()))
    stop.set()
    by_pid = dict(q.get(timeout=60) for _ in members)
    join_all([p for _, p in members])
    for group in ["dashboard", "archiver"]:
        parts = [by_pid[p.pid] for g, p in members if g == group]
        union = [m for part in parts for m in part]
        assert len(union) == total and set(union) == {(k, i) for k in range(2) for i in range(total // 2)}
        for part in parts:
            check_per_publisher_order(part)  # each member sees its share in publish order
        assert all(parts)  # the work was shared: every member got some


def test_racing_members_of_a_group_in_a_small_ring_get_each_message_once_and_whole(
        make_broker, name, ctx):
    """Three members of a group read (peek, copy, claim) while two publishers
    wrap a 64 KiB ring many times over: a member that loses a claim to another
    may have copied records the publisher overwrote meanwhile, and must drop
    them. Every payload arrives exactly once in the group, with its crc."""
    broker = make_broker(ring_bytes=64 * 1024, max_message_bytes=4096)
    total, q, stop, members = 4000, ctx.Queue(), ctx.Event(), []
    for _ in range(3):
        ready = ctx.Event()
        members.append(_start(ctx.Process(target=workers.group_member,
                                          args=(name, "t", "g", q, ready, stop, 3, True))))
        assert ready.wait(30)
    join_all([_start(ctx.Process(target=workers.publisher, args=(name, "t", k, total // 2, 1500, 4)))
              for k in range(2)])
    wait_for(lambda: broker.stats()["topics"]["t"]["groups"]["g"]["lag"] == 0)
    stop.set()
    parts = [got for _, got in (q.get(timeout=60) for _ in members)]
    join_all(members)
    union = [m for part in parts for m in part]
    assert len(union) == total and set(union) == {(k, i) for k in range(2) for i in range(total // 2)}
    for part in parts:
        check_per_publisher_order(part)
    assert broker.stats()["topics"]["t"]["groups"]["g"]["delivered"] == total


def test_publisher_killed_mid_publish_never_wedges_or_tears(make_broker, name, ctx):
    broker = make_broker(ring_bytes=64 * KiB, max_message_bytes=4 * KiB)
    sub = broker.subscribe("t")
    rng = random.Random(1)
    for round_ in range(25):
        ready = ctx.Event()
        p = _start(ctx.Process(target=workers.hammer_publisher, args=(name, "t", 200, ready)))
        assert ready.wait(30)
        deadline = time.monotonic() + rng.uniform(0.0, 0.05)
        while time.monotonic() < deadline:  # keep reading so the publisher keeps writing
            try:
                for payload in sub.get_many(256, timeout=0.01):
                    workers.parse_payload(payload)  # asserts the crc: no torn record
            except pymq.Timeout:
                pass
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)

    def drain():
        got = []
        while True:
            try:
                got += sub.get_many(1000, timeout=0.2)
            except pymq.Timeout:
                return got

    # What the last publisher left first: it may have filled the ring before it was
    # killed, and a full ring is no wedge (the publish below would wait for room).
    got = drain()
    seq = broker.publish("t", workers.make_payload(1, 1, 100), timeout=5)  # not wedged
    got += drain()
    for payload in got:
        workers.parse_payload(payload)
    assert workers.parse_payload(got[-1]) == (1, 1)
    t = broker.stats()["topics"]["t"]
    assert t["published"] == seq and t["corrupt"] == 0


def _wait_blocked(broker, topic):
    wait_for(lambda: broker.stats()["topics"][topic]["publish_waits"] > 0)


def test_killed_subscriber_is_reaped_and_stops_holding_publishers_back(make_broker, name, ctx):
    broker = make_broker(ring_bytes=64 * KiB, max_message_bytes=4 * KiB)
    ready = ctx.Event()
    p = _start(ctx.Process(target=workers.subscriber_then_hang, args=(name, "t", ready)))
    assert ready.wait(30)
    with pytest.raises(pymq.Full):  # the idle subscriber gates the ring
        for _ in range(1000):
            broker.publish("t", b"x" * 1000, timeout=0)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    broker.publish("t", b"x" * 1000, timeout=30)  # proceeds once the supervisor reaped it
    # the counters follow the reaping (the supervisor counts after each sweep of
    # the topics, the publisher may run first): wait for them
    wait_for(lambda: broker.stats()["reaped_processes"] >= 1)
    s = broker.stats()
    assert s["reaped_subscriptions"] == 1 and s["topics"]["t"]["groups"] == {}


def test_dead_member_leaves_its_named_group(make_broker, name, ctx):
    broker = make_broker()
    procs = []
    for _ in range(2):
        ready = ctx.Event()
        procs.append(_start(ctx.Process(target=workers.subscriber_then_hang,
                                        args=(name, "t", ready, "workers"))))
        assert ready.wait(30)
    members = lambda: broker.stats()["topics"]["t"]["groups"]["workers"]["members"]  # noqa: E731
    assert members() == 2
    os.kill(procs[0].pid, signal.SIGKILL)
    wait_for(lambda: members() == 1)
    os.kill(procs[1].pid, signal.SIGKILL)
    wait_for(lambda: members() == 0)
    broker.publish("t", b"waits for the durable group")
    assert broker.stats()["topics"]["t"]["groups"]["workers"]["lag"] == 1
    for p in procs:
        p.join(10)


def test_supervisor_killed_is_restarted_and_keeps_reaping(make_broker, name, ctx):
    broker = make_broker()
    sub = broker.subscribe("t")
    first = broker.supervisor_pid
    os.kill(first, signal.SIGKILL)
    broker.publish("t", b"publish goes on")  # the hot path never needs the supervisor
    assert sub.get(timeout=5) == b"publish goes on"
    wait_for(lambda: broker.supervisor_pid != first and broker.stats()["supervisor"]["restarts"] == 1)
    assert psutil.pid_exists(broker.supervisor_pid)
    ready = ctx.Event()
    p = _start(ctx.Process(target=workers.subscriber_then_hang, args=(name, "t", ready)))
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    wait_for(lambda: broker.stats()["reaped_subscriptions"] == 1)


def test_new_broker_removes_segments_of_a_dead_owner(name, ctx):
    ready = ctx.Event()
    p = _start(ctx.Process(target=workers.own_broker_then_hang, args=(name, "t", ready)))
    assert ready.wait(30)
    with pytest.raises(pymq.MQError, match="already running"):
        pymq.Broker(pymq.BrokerConfig(name=name))
    orphan = pymq.connect(name)  # a client of the broker that is about to die
    orphan_sub = orphan.subscribe("t")
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    b = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=65536, max_message_bytes=1024))
    try:
        with pytest.raises(pymq.BrokerClosed):  # told, not left talking into unlinked memory
            orphan.publish("t", b"into the void")
        with pytest.raises(pymq.BrokerClosed):
            orphan_sub.get(timeout=5)
        orphan.close()
        assert any(e.endswith(".t") for e in b.stale_removed)
        sub = b.subscribe("t", start="earliest")
        b.publish("t", b"fresh")
        assert sub.get_many(10, timeout=5) == [b"fresh"]  # the old ring is gone
    finally:
        b.close()


# -- iteration never loses or strands what it took (issue: a loop that breaks) ------------

def _iterating(ctx, name, topic, group, ack, take, then):
    q, ready = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=workers.iterate_then_break,
                    args=(name, topic, group, ack, take, q, ready, then))
    p.start()
    assert ready.wait(30)
    return p, q


def test_breaking_out_of_a_named_groups_loop_leaves_the_rest_to_the_group(make_broker, name, ctx):
    broker = make_broker()
    keeper = broker.subscribe("t", group="g")  # the group's other member, idle until the end
    p, q = _iterating(ctx, name, "t", "g", False, 1, "exit")
    broker.publish_many("t", [b"m%d" % i for i in range(10)])
    kind, first = q.get(timeout=30)
    join_all([p])
    assert kind == "first" and len(first) == 1
    rest = keeper.get_many(100, timeout=1)
    assert first + rest == [b"m%d" % i for i in range(10)]  # each once, in order


def test_a_member_killed_inside_its_loop_strands_nothing_it_did_not_hand_out(make_broker, name, ctx):
    broker = make_broker()
    keeper = broker.subscribe("t", group="g")
    p, q = _iterating(ctx, name, "t", "g", False, 3, "hang")
    broker.publish_many("t", [b"m%d" % i for i in range(10)])
    kind, first = q.get(timeout=30)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    rest = keeper.get_many(100, timeout=1)
    assert first + rest == [b"m%d" % i for i in range(10)]


def test_a_second_loop_over_an_anonymous_subscription_gets_what_the_first_read_ahead(
        make_broker, name, ctx):
    broker = make_broker()
    p, q = _iterating(ctx, name, "t", None, False, 1, "again")
    broker.publish_many("t", [b"m%d" % i for i in range(10)])
    assert q.get(timeout=30) == ("first", [b"m0"])
    assert q.get(timeout=30) == ("again", [b"m%d" % i for i in range(1, 10)])
    join_all([p])


def test_one_next_on_an_ack_subscription_leaves_one_delivery_pending(make_broker, name, ctx):
    broker = make_broker()
    broker.subscribe_with_ack("t", group="g").close()  # the group exists before the publish
    q, ready, go = ctx.Queue(), ctx.Event(), ctx.Event()
    p = ctx.Process(target=workers.ack_pending_after_next, args=(name, "t", q, ready, go))
    p.start()
    assert ready.wait(30)
    broker.publish_many("t", [b"m%d" % i for i in range(16)])
    assert q.get(timeout=30) == 1
    go.set()
    assert q.get(timeout=30) == 0
    join_all([p])
    again = broker.subscribe_with_ack("t", group="g")
    assert [m.seq for m in again.get_many(100, timeout=1)] == list(range(2, 17))


def test_breaking_out_of_an_ack_loop_leaves_the_rest_to_the_group(make_broker, name, ctx):
    broker = make_broker()
    keeper = broker.subscribe_with_ack("t", group="g")
    p, q = _iterating(ctx, name, "t", "g", True, 2, "exit")
    broker.publish_many("t", [b"m%d" % i for i in range(10)])
    kind, first = q.get(timeout=30)
    join_all([p])
    rest = keeper.get_many(100, timeout=1)
    # the two it was handed and did not ack come again (its process left); the
    # others were never taken: first deliveries, in order
    assert first == [b"m0", b"m1"]
    assert sorted((m.payload, m.delivery_attempt) for m in rest) == \
        [(b"m0", 2), (b"m1", 2)] + [(b"m%d" % i, 1) for i in range(2, 10)]
    assert [m.payload for m in rest if m.delivery_attempt == 1] == [b"m%d" % i for i in range(2, 10)]
