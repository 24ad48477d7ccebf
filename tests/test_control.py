"""Requests to the supervisor (pymq/control.py): deleting topics and groups,
the admin server, and what a bad or foreign request gets."""

import json
import os
import signal
import socket

import psutil
import pytest

import pymq
import workers
from pymq import control, segments
from helpers import join_all, wait_for

MiB = 1024 * 1024


def test_a_named_group_without_members_holds_messages_until_deleted(make_broker, name):
    broker = make_broker(ring_bytes=4096, max_message_bytes=64, publish_timeout=0.05)
    broker.subscribe("t", group="forgotten").close()  # `pymq tail --group x`, then Ctrl-C
    n = 0
    with pytest.raises(pymq.Full):
        while True:
            broker.publish("t", b"x" * 32)
            n += 1
    assert n == 4096 // 56  # 56 bytes a record: the ring is full of what the group holds
    assert broker.stats()["topics"]["t"]["groups"]["forgotten"]["lag"] == n
    broker.delete_group("t", "forgotten")
    assert "forgotten" not in broker.stats()["topics"]["t"]["groups"]
    for _ in range(3 * n):  # nobody holds them now
        broker.publish("t", b"x" * 32)


def test_deleting_a_group_closes_its_members_in_other_processes(make_broker, name, ctx):
    broker = make_broker()
    q, ready, go = ctx.Queue(), ctx.Event(), ctx.Event()
    p = ctx.Process(target=workers.iterate_then_break,
                    args=(name, "t", "g", True, 1000, q, ready, "exit"))
    p.start()
    assert ready.wait(30)
    broker.publish_many("t", [b"a", b"b"])
    wait_for(lambda: broker.stats()["topics"]["t"]["groups"]["g"]["pending"] == 2)
    broker.delete_group("t", "g")
    kind, got = q.get(timeout=30)  # its loop ended: SubscriptionClosed
    assert (kind, got) == ("first", [b"a", b"b"])
    join_all([p])
    assert "g" not in broker.stats()["topics"]["t"]["groups"]
    fresh = broker.subscribe_with_ack("t", group="g", start="earliest")  # a new group, anew
    assert [m.payload for m in fresh.get_many(10, timeout=1)] == [b"a", b"b"]


def test_delete_group_of_a_missing_group_or_topic_is_an_error(broker):
    broker.publish("t", b"x")
    with pytest.raises(pymq.GroupNotFound, match="'nope'"):
        broker.delete_group("t", "nope")
    with pytest.raises(pymq.TopicNotFound, match="'none'"):
        broker.delete_group("none", "g")
    with pytest.raises(pymq.InvalidName):
        broker.delete_group("t", "bad/name")
    with pytest.raises(pymq.InvalidTopic):
        broker.delete_topic(".hidden")
    with pytest.raises(pymq.TopicNotFound):
        broker.delete_topic("none")
    assert issubclass(pymq.GroupNotFound, LookupError) and issubclass(pymq.TopicNotFound, LookupError)
    assert broker.topics() == ["t"]  # nothing was made


def test_deleting_a_topic_closes_its_subscribers_and_a_publish_makes_it_anew(make_broker, name, ctx):
    broker = make_broker()
    q = ctx.Queue()
    readers = []
    for group in (None, "g"):
        ready = ctx.Event()
        p = ctx.Process(target=workers.iterate_then_break,
                        args=(name, "t", group, False, 1000, q, ready, "exit"))
        p.start()
        assert ready.wait(30)
        readers.append(p)
    client = pymq.connect(name)
    assert client.publish("t", b"old") == 1
    shm_file = os.path.join(segments.SHM_DIR, segments.topic_shm_name(name, "t").lstrip("/"))
    assert os.path.exists(shm_file)
    broker.delete_topic("t")
    assert sorted(q.get(timeout=30) for _ in readers) == [("first", [b"old"])] * 2
    join_all(readers)
    assert not os.path.exists(shm_file) and broker.topics() == []
    # the client still has the old segment mapped: its next publish goes to a new topic
    assert client.publish("t", b"new") == 1
    assert client.publish_many("t", [b"n2", b"n3"]) == 3
    assert broker.subscribe("t", start="earliest").get_many(10, timeout=1) == [b"new", b"n2", b"n3"]
    client.close()


@pytest.fixture
def pdir(tmp_path):
    return str(tmp_path / "mq")


@pytest.mark.parametrize("keep", [True, False])
def test_a_deleted_topics_log_is_kept_aside_or_removed_and_not_restored(name, pdir, keep):
    cfg = pymq.BrokerConfig(name=name, ring_bytes=1 * MiB, persistence_enabled=True,
                            persistence_dir=pdir, persistence_fsync_interval=0.05)
    b = pymq.Broker(cfg)
    try:
        b.subscribe("t", group="g")
        b.publish_many("t", [b"a", b"b"])
        wait_for(lambda: b.stats()["topics"]["t"]["groups"]["~persist"]["lag"] == 0 and
                 b.stats()["topics"]["t"]["groups"]["~persist"]["pending"] == 0)
        b.delete_topic("t", keep_files=keep)
        kept = [e for e in os.listdir(pdir) if e.startswith(".deleted.t.")]
        assert not os.path.exists(os.path.join(pdir, "t"))
        assert len(kept) == (1 if keep else 0)
        if keep:
            lines = open(os.path.join(pdir, kept[0], "00000000000000000001.jsonl")).read().splitlines()
            assert [json.loads(line)["seq"] for line in lines] == [1, 2]
    finally:
        b.close()
    b = pymq.Broker(cfg)  # a restart does not bring it back
    try:
        assert b.topics() == [] and b.restored == []
    finally:
        b.close()


def test_requests_from_a_broken_peer_get_an_error_and_the_supervisor_goes_on(broker, name):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(control.path(name))
        s.sendall(b"this is not json\n")
        answer = json.loads(s.makefile().readline())
    assert answer["ok"] is False and "bad request" in answer["message"]
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(control.path(name))
        s.sendall(json.dumps({"op": "no-such-op"}).encode() + b"\n")
        answer = json.loads(s.makefile().readline())
    assert answer["ok"] is False and "no-such-op" in answer["message"]
    assert control.request(name, "ping")["pid"] == broker.supervisor_pid
    assert oct(os.stat(control.path(name)).st_mode & 0o777) == "0o600"


def test_a_request_with_no_supervisor_is_broker_unavailable_in_its_timeout(broker, name):
    os.kill(broker.supervisor_pid, signal.SIGSTOP)  # frozen: it accepts nothing
    wait_for(lambda: psutil.Process(broker.supervisor_pid).status() == psutil.STATUS_STOPPED)
    try:
        with pytest.raises(pymq.BrokerUnavailable, match="delete_group"):
            control.request(name, "delete_group", timeout=0.3, topic="t", group="g")
    finally:
        os.kill(broker.supervisor_pid, signal.SIGCONT)
    broker.publish("t", b"x")
    broker.subscribe("t", group="g")
    broker.delete_group("t", "g")
