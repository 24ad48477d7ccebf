"""The supervisor process (pymq/supervisor.py): idle groups, and how it logs."""

import http.client
import json
import logging
import os
import signal

import pytest

import pymq
import workers
from helpers import wait_for


def health(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_a_group_idle_past_group_idle_timeout_is_reported_on_health(make_broker):
    broker = make_broker(group_idle_timeout=0.3)
    port = broker.start_admin_server(0)
    busy = broker.subscribe("t", group="busy")
    broker.subscribe("t", group="gone").close()
    broker.subscribe("t")  # anonymous groups are never idle: they go with their member
    broker.publish_many("t", [b"a", b"b", b"c"])
    status, body = wait_for(lambda: (lambda r: r if r[1].get("idle_groups") else None)(health(port)))
    assert status == 200 and body["status"] == "ok"  # it works: a warning, not a failure
    assert [(g["topic"], g["group"], g["lag"]) for g in body["idle_groups"]] == [("t", "gone", 3)]
    assert body["idle_groups"][0]["idle_seconds"] > 0.3
    assert "'gone' of topic 't' has had no member" in body["warnings"][0]
    assert broker.stats()["topics"]["t"]["groups"]["gone"]["idle_seconds"] > 0.3
    assert broker.stats()["topics"]["t"]["groups"]["busy"]["idle_seconds"] is None
    busy.close()


def test_idle_groups_expire_when_configured(make_broker, caplog):
    caplog.set_level(logging.INFO, logger="pymq")
    broker = make_broker(group_idle_timeout=0.2, group_idle_expire=True, ring_bytes=4096,
                         max_message_bytes=64, publish_timeout=0.05)
    keep = broker.subscribe("t", group="kept")
    broker.subscribe("t", group="gone").close()
    expired = wait_for(lambda: [r for r in caplog.records
                                if r.name == "pymq.supervisor" and "expired" in r.getMessage()])
    assert len(expired) == 1 and "'gone'" in expired[0].getMessage()
    assert set(broker.stats()["topics"]["t"]["groups"]) == {"kept"}
    keep.close()


def test_group_idle_expire_needs_a_timeout():
    with pytest.raises(ValueError, match="group_idle_timeout"):
        pymq.BrokerConfig(group_idle_expire=True)
    with pytest.raises(ValueError):
        pymq.BrokerConfig(group_idle_timeout=0)


def test_the_library_prints_nothing_and_the_supervisors_records_reach_the_owners_loggers(
        make_broker, name, ctx, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="pymq")
    broker = make_broker()
    ready = ctx.Event()
    p = ctx.Process(target=workers.subscriber_then_hang, args=(name, "t", ready))
    p.start()
    assert ready.wait(30)
    os.kill(p.pid, signal.SIGKILL)  # the supervisor reaps it, and says so
    p.join()
    wait_for(lambda: any(r.name == "pymq.supervisor" and "reaped 1 subscription" in r.getMessage()
                         for r in caplog.records))
    old = broker.supervisor_pid
    os.kill(old, signal.SIGKILL)  # the Broker restarts it, and says so
    wait_for(lambda: broker.supervisor_pid != old and broker.stats()["supervisor"]["pid"] != old)
    broker.start_admin_server(0)  # answered by the new one: it serves requests
    broker.close()
    restarted = [r for r in caplog.records if r.name == "pymq.broker" and "restarting" in r.getMessage()]
    assert len(restarted) == 1 and restarted[0].levelno == logging.WARNING
    reaped = [r for r in caplog.records if r.name == "pymq.supervisor" and "reaped" in r.getMessage()]
    assert reaped[0].process == old  # made in the supervisor's process
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
