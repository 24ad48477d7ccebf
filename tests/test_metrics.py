"""pymq.metrics: pymq's figures in an application's own prometheus_client
registry, the same families as the admin server's /metrics."""

import importlib
import sys

import pytest

import pymq

prometheus_client = pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest  # noqa: E402
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families as parse  # noqa: E402

import pymq.metrics  # noqa: E402
from helpers import wait_for  # noqa: E402

TOPIC = "gpu-telemetry"


def samples(text, parser=parse):
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in parser(text) for s in fam.samples}


def families(text, parser=parse):
    return {fam.name: (fam.type, fam.unit) for fam in parser(text)}


def test_collector_yields_what_was_published_and_acked(make_broker):
    broker = make_broker()
    acker = broker.subscribe_with_ack(TOPIC, group="archiver")
    anonymous = broker.subscribe(TOPIC)
    n, m = 30, 12
    broker.publish_many(TOPIC, [b"x" * 10] * n)
    got = []
    while len(got) < n:
        got += acker.get_many(n - len(got), timeout=5)
    acker.ack_many(got[:m])
    assert len(anonymous.get_many(n, timeout=5)) == n

    registry = CollectorRegistry()
    registry.register(pymq.metrics.Collector(broker))
    text = generate_latest(registry).decode()
    values = samples(text)

    def value(name, **labels):
        return values.get((name, frozenset(labels.items())))

    assert value("pymq_build_info", version=pymq.__version__) == 1
    assert value("pymq_published_total", topic=TOPIC) == n
    assert value("pymq_published_bytes_total", topic=TOPIC) == 10 * n
    assert value("pymq_delivered_total", topic=TOPIC, group="archiver") == n
    assert value("pymq_acked_total", topic=TOPIC, group="archiver") == m
    assert value("pymq_group_pending", topic=TOPIC, group="archiver") == n - m
    assert value("pymq_delivered_total", topic=TOPIC, group="~anonymous") == n
    assert value("pymq_ring_capacity_bytes", topic=TOPIC) == 1024 * 1024
    assert value("pymq_healthy") is None  # only the supervisor knows
    om_text = openmetrics_latest(registry).decode()
    assert om_text.endswith("# EOF\n")
    moving = "pymq_supervisor_last_sweep_timestamp_seconds"  # a sweep may come between
    assert {k: v for k, v in samples(om_text, om_parse).items() if k[0] != moving} == \
        {k: v for k, v in values.items() if not k[0].endswith("_created") and k[0] != moving}
    fams = families(om_text, om_parse)
    assert fams["pymq_published"] == ("counter", "")
    assert fams["pymq_ring_used_bytes"] == ("gauge", "bytes")
    assert fams["pymq_build"] == ("info", "")


def test_collector_and_admin_metrics_come_from_one_table(make_broker):
    """The same families, types and values as GET /metrics of the same broker
    at rest (but pymq_healthy, and the sweep's time, which moves)."""
    import http.client
    broker = make_broker()
    port = broker.start_admin_server(0)
    sub = broker.subscribe_with_ack(TOPIC, group="g")
    broker.publish_many(TOPIC, [b"abc"] * 5)
    for msg in sub.get_many(5, timeout=5)[:3]:
        msg.ack()

    def scrape():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    wait_for(lambda: samples(scrape()).get(
        ("pymq_acked_total", frozenset({"topic": TOPIC, "group": "g"}.items()))) == 3)
    registry = CollectorRegistry()
    registry.register(pymq.metrics.Collector(broker))
    served, collected = scrape(), generate_latest(registry).decode()
    moving = ("pymq_healthy", "pymq_supervisor_last_sweep_timestamp_seconds")
    assert {k: v for k, v in samples(served).items() if k[0] not in moving} == \
        {k: v for k, v in samples(collected).items() if k[0] not in moving}
    assert {k: v for k, v in families(served).items() if k != "pymq_healthy"} == \
        families(collected)


def test_collector_by_broker_name_connects_once_the_broker_runs(make_broker, name, caplog):
    collector = pymq.metrics.Collector(name)
    registry = CollectorRegistry()
    registry.register(collector)
    # no broker yet: the build info alone, and one warning
    for _ in range(2):
        assert set(samples(generate_latest(registry).decode())) == \
            {("pymq_build_info", frozenset({"version": pymq.__version__}.items()))}
    assert [r.name for r in caplog.records] == ["pymq.metrics"]
    broker = make_broker()
    broker.publish(TOPIC, b"x")
    values = samples(generate_latest(registry).decode())
    assert values[("pymq_published_total", frozenset({"topic": TOPIC}.items()))] == 1
    collector.close()
    collector.close()  # idempotent


def test_a_second_collector_of_the_same_names_is_refused():
    registry = CollectorRegistry()
    registry.register(pymq.metrics.Collector("a"))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(pymq.metrics.Collector("b"))


def test_collector_wants_a_name_or_a_client():
    with pytest.raises(TypeError, match="broker name, a Client or a Broker"):
        pymq.metrics.Collector(42)


def test_without_prometheus_client_the_import_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    for mod in [m for m in sys.modules if m.startswith("prometheus_client.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.delitem(sys.modules, "pymq.metrics")
    with pytest.raises(ImportError, match=r"pip install 'pymq-shm\[metrics\]'"):
        importlib.import_module("pymq.metrics")
    # the admin server (standard library only) does not need it: imported afresh
    monkeypatch.setattr(pymq, "admin", importlib.import_module("pymq.admin"))
    for mod in [m for m in sys.modules if m == "pymq.admin" or m.startswith("pymq.admin.")]:
        monkeypatch.delitem(sys.modules, mod)
    fresh = importlib.import_module("pymq.admin")
    assert fresh.metrics_text({"topics": {}}).startswith("# HELP pymq_build_info")
    assert "prometheus_client" not in {m.split(".")[0] for m in sys.modules if sys.modules[m]}
