"""Frozen processes (SIGSTOP: a container frozen by its runtime, a process in a
debugger), of a publisher, a member and the supervisor, including while they
hold a topic's or a group's lock (PYMQ_TEST_PAUSE stops a process at a named
point inside). Nothing else may stall: other topics not at all, the same
topic only within a call's own timeout and with a documented error; /health
and /stats answer, naming the holder; the supervisor goes on; a stopped
process is not reaped, and carries on when continued."""

import os
import signal

import pytest

import pymq
import workers
from pymq import _core
from helpers import get_json, join_all, stopped, sweeps, wait_for


def frozen_at(ctx, monkeypatch, point, target, *args):
    """A process started with PYMQ_TEST_PAUSE=point, once it has stopped there."""
    monkeypatch.setenv("PYMQ_TEST_PAUSE", point)  # read by the child's native library
    p = ctx.Process(target=target, args=args)
    p.start()
    monkeypatch.delenv("PYMQ_TEST_PAUSE")
    wait_for(lambda: stopped(p.pid))
    return p


def healthy(port):
    return get_json(port, "/health")[0] == 200


def test_a_publisher_frozen_holding_a_topics_lock_stalls_nothing_else(make_broker, name, ctx,
                                                                      monkeypatch):
    broker = make_broker(admin_port=0)
    port, sup = broker.admin_port, broker.supervisor_pid
    plain = broker.subscribe("t")
    acks = broker.subscribe_with_ack("t", group="g")
    other = broker.subscribe("other")
    broker.publish("t", b"before")
    p = frozen_at(ctx, monkeypatch, "publish.locked", workers.publish_one, name, "t", b"frozen")

    broker.publish("other", b"o")  # another topic: untouched
    assert other.get(timeout=5) == b"o"
    with pytest.raises(pymq.Full, match="0.2 s"):  # the same topic: within its own timeout
        broker.publish("t", b"x", timeout=0.2)
    assert plain.get(timeout=5) == b"before"  # reads take no segment lock
    with pytest.raises(pymq.Timeout):
        plain.get(timeout=0.2)
    m = acks.get(timeout=5)
    assert m.payload == b"before"
    m.ack()

    status, body = get_json(port, "/health")
    assert status == 503
    assert f"topic 't': its lock has been held for over 0.1 s by pid {p.pid} (stopped)" \
        in body["problems"]
    status, figures = get_json(port, "/stats/t")
    assert (status, figures["lock_held"]) == (200, {"pid": p.pid, "state": "stopped"})
    assert get_json(port, "/stats/other")[1]["lock_held"] is None
    sweeps(broker)  # the supervisor goes on sweeping, the same one
    assert broker.supervisor_pid == sup

    os.kill(p.pid, signal.SIGCONT)  # it carries on: its publish completes
    join_all([p])
    assert plain.get(timeout=5) == b"frozen"
    wait_for(lambda: healthy(port))
    broker.publish("t", b"after", timeout=0.2)
    assert plain.get(timeout=5) == b"after"


def test_a_member_frozen_holding_its_groups_lock_stalls_only_its_group(make_broker, name, ctx,
                                                                       monkeypatch):
    broker = make_broker(admin_port=0)
    port = broker.admin_port
    mine = broker.subscribe_with_ack("t", group="g")
    others = broker.subscribe_with_ack("t", group="h")  # another group of the same topic
    broker.publish_many("t", [b"a", b"b"])
    q = ctx.Queue()
    p = frozen_at(ctx, monkeypatch, "ack.locked", workers.ack_get_once, name, "t", "g", q)

    with pytest.raises(pymq.Timeout, match="0.2 s"):  # its group: within the read's timeout
        mine.get_many(10, timeout=0.2)
    broker.publish("t", b"c", timeout=0.2)  # publishers take no group lock
    assert [m.payload for m in others.get_many(10, timeout=5)] == [b"a", b"b", b"c"]
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get_json(port,
                                                                                   "/health")))
    assert any(f"topic 't': an ack group's lock has been held for" in x and
               f"by pid {p.pid} (stopped)" in x for x in body["problems"]), body
    sweeps(broker)  # redelivery sweeps pass it over and go on

    os.kill(p.pid, signal.SIGCONT)
    assert q.get(timeout=30) == [b"a", b"b", b"c"]  # it read and acked them all
    join_all([p])
    wait_for(lambda: healthy(port))
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    assert (g["acked"], g["pending"], g["lag"]) == (3, 0, 0)


def test_an_ack_takes_its_groups_lock_only_if_free_and_counts_each_delivery_once(make_broker, name,
                                                                                ctx, monkeypatch):
    """With the group's lock free an ack takes it and frees its entries (one
    exchange each); with it held, here by a member stopped inside its read, an
    ack changes them without it (a compare-and-swap each) and never waits.
    Either way a delivery acked twice, by the member it was redelivered to and
    by the one it was taken from, counts once."""
    broker = make_broker(ack_timeout=3600)
    a1 = broker.subscribe_with_ack("t", group="g")
    a2 = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"x", b"y", b"z"])
    first = a1.get(timeout=5)
    first.nack()
    again = a2.get(timeout=5)
    assert (first.payload, again.payload, again.delivery_attempt) == (b"x", b"x", 2)

    def raw_ack(sub, m):  # the native ack itself (Message.ack() of a nacked one does nothing)
        ffi, lib, r = _core.ffi, _core.lib, sub._reader
        return lib.pmq_ack_ack(sub._ring.h, r.group, r.group_gen, ffi.new("uint32_t[]", [m._slot]),
                               ffi.new("uint64_t[]", [m.seq]), 1, ffi.NULL)

    assert raw_ack(a1, first) == 1  # the earlier attempt's ack: the work was done
    assert a2.ack_many([again]) == 0  # the same delivery: counted once
    batch = a1.get_batch(10, timeout=5)
    assert batch.payloads() == [b"y", b"z"]

    q = ctx.Queue()
    p = frozen_at(ctx, monkeypatch, "ack.locked", workers.ack_get_once, name, "t", "g", q)
    broker.publish("t", b"w")  # what its read takes once it goes on
    try:
        held = batch.ack(), batch.ack(), raw_ack(a1, first)  # the lock held by a stopped process
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert held == (2, 0, 0)  # it did not wait for the lock
    assert q.get(timeout=30) == [b"w"]
    join_all([p])
    g = broker.stats()["topics"]["t"]["groups"]["g"]
    assert {k: g[k] for k in ("delivered", "acked", "nacked", "redelivered", "pending", "lag")} == \
        {"delivered": 5, "acked": 4, "nacked": 1, "redelivered": 1, "pending": 0, "lag": 0}


def test_a_dead_member_is_reaped_without_waiting_for_a_frozen_lock_holder(make_broker, name, ctx,
                                                                          monkeypatch):
    """The reaper never waits for a group's lock while holding the topic's:
    a member of a group whose lock a stopped process holds dies, and
    publishers go on; its deliveries go back to the group."""
    broker = make_broker()
    mine = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"a", b"b"])
    taken = ctx.Queue()
    doomed = ctx.Process(target=workers.take_and_hang, args=(name, "t", "g", 2, taken))
    doomed.start()
    assert taken.get(timeout=30) == "subscribed"
    assert taken.get(timeout=30) == [1, 2]  # it holds both deliveries
    q = ctx.Queue()
    p = frozen_at(ctx, monkeypatch, "ack.locked", workers.ack_get_once, name, "t", "g", q)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.join(30)
    wait_for(lambda: broker.stats()["reaped_processes"] == 1)
    for i in range(50):  # never stalled by the reaping
        broker.publish("t", b"%d" % i, timeout=0.2)
    os.kill(p.pid, signal.SIGCONT)
    got = q.get(timeout=30)
    join_all([p])
    while len(got) < 52:  # what the frozen one did not take comes here
        batch = mine.get_many(100, timeout=30)
        mine.ack_many(batch)
        got += [m.payload for m in batch]
    assert sorted(got) == sorted([b"a", b"b"] + [b"%d" % i for i in range(50)])


def test_a_stopped_process_is_not_reaped_and_carries_on_when_continued(make_broker, name, ctx):
    broker = make_broker()
    q, ready = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=workers.ack_get_after, args=(name, "t", "g", q, ready))
    p.start()
    assert ready.wait(30)  # it waits in a read now
    os.kill(p.pid, signal.SIGSTOP)
    wait_for(lambda: stopped(p.pid))
    broker.publish("t", b"x")
    sweeps(broker, 5)
    stats = broker.stats()
    assert (stats["reaped_processes"], stats["topics"]["t"]["groups"]["g"]["members"]) == (0, 1)
    os.kill(p.pid, signal.SIGCONT)
    assert q.get(timeout=30) == [b"x"]
    join_all([p])


def test_a_frozen_supervisor_stops_no_publisher_or_reader(make_broker):
    broker = make_broker(admin_port=0)
    sub = broker.subscribe_with_ack("t", group="g")
    os.kill(broker.supervisor_pid, signal.SIGSTOP)
    wait_for(lambda: stopped(broker.supervisor_pid))
    try:
        for i in range(100):
            broker.publish("t", b"%d" % i)
        got = []
        while len(got) < 100:
            batch = sub.get_many(100, timeout=5)
            sub.ack_many(batch)
            got += [m.payload for m in batch]
        assert got == [b"%d" % i for i in range(100)]
    finally:
        os.kill(broker.supervisor_pid, signal.SIGCONT)
    sweeps(broker)
    assert broker.stats()["supervisor"]["restarts"] == 0  # stopped is not dead


def test_close_with_a_frozen_lock_holder_removes_everything(make_broker, name, ctx, monkeypatch):
    broker = make_broker()
    broker.publish("t", b"x")
    p = frozen_at(ctx, monkeypatch, "publish.locked", workers.publish_one, name, "t", b"y")
    broker.close()  # the `name` fixture checks that nothing is left in /dev/shm
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)


def test_a_client_closed_while_a_topics_lock_is_held_leaves_it_to_the_supervisor(
        make_broker, name, ctx, monkeypatch):
    """close() does not wait 10 s per subscription for a frozen holder's lock:
    it leaves the other topics' groups at once and the held topic's members
    to the supervisor, which removes them once their client's token is gone."""
    broker = make_broker()
    client = pymq.connect(name)
    for _ in range(3):
        client.subscribe("t")
    client.subscribe("u")
    p = frozen_at(ctx, monkeypatch, "publish.locked", workers.publish_one, name, "t", b"x")
    client.close()
    stats = broker.stats()["topics"]
    assert (stats["t"]["anonymous"]["members"], stats["u"]["anonymous"]["members"]) == (3, 0)
    os.kill(p.pid, signal.SIGCONT)
    join_all([p])
    wait_for(lambda: broker.stats()["topics"]["t"]["anonymous"]["members"] == 0)
