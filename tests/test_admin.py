"""The HTTP admin server (pymq/admin/), served by the broker's supervisor
process: endpoints, figures, Prometheus format, token, robustness, restart,
and the dashboard in a real headless Chromium."""

import errno
import http.client
import html.parser
import json
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest

import pymq
from pymq import admin
from helpers import require_or_skip, wait_for

TOPIC = "gpu-telemetry"


# -- HTTP helpers ----------------------------------------------------------------------

def request(port, method, path, headers=None, body=None, timeout=10):
    """(status, headers, body bytes); the path goes out exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def get(port, path, **kw):
    return request(port, "GET", path, **kw)


def get_json(port, path, **kw):
    status, headers, body = get(port, path, **kw)
    assert headers["Content-Type"] == "application/json", (path, headers["Content-Type"])
    return status, json.loads(body)


def raw(port, data: bytes, timeout=10) -> bytes:
    """Send bytes over a raw socket; return everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def status_of(response: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", response)
    assert m, response[:200]
    return int(m.group(1))


def serving(port) -> bool:
    try:
        return get(port, "/health", timeout=2)[0] == 200
    except OSError:
        return False


# -- a Prometheus text format 0.0.4 parser (strict about what we write) -------------------

SAMPLE_RE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\\"n])", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_metrics(text: str):
    """({family: type}, {(name, frozenset of label items): value}); asserts that
    HELP and TYPE come once per family before its samples, samples of a family
    are contiguous, counters end in _total, no series repeats."""
    assert text.endswith("\n")
    types, helps, samples, finished = {}, set(), {}, set()
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in helps and help_text, line
            helps.add(name)
            if current != name:
                finished.add(current)
                current = name
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name not in types and kind in ("counter", "gauge"), line
            assert name == current, f"TYPE {name} not right after its HELP"
            types[name] = kind
        else:
            assert line and not line.startswith("#"), repr(line)
            m = SAMPLE_RE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            name, label_text, value = m.groups()
            assert name == current and name in types and name not in finished, line
            labels = {}
            pos = 0
            while label_text and pos < len(label_text):
                lm = LABEL_RE.match(label_text, pos)
                assert lm, f"bad labels in {line!r}"
                assert lm.group(1) not in labels
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
            key = (name, frozenset(labels.items()))
            assert key not in samples, f"repeated series {line!r}"
            samples[key] = float(value)
    for name, kind in types.items():
        assert name.startswith("pymq_") and name in helps
        assert name.endswith("_total") == (kind == "counter"), name
    return types, samples


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def scrape(port, **kw):
    status, headers, body = get(port, "/metrics", **kw)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_metrics(body.decode("utf-8"))


# -- endpoints -------------------------------------------------------------------------

def test_every_endpoint_status_and_content_type(make_broker, name):
    broker = make_broker()
    port = broker.start_admin_server(0)
    assert port == broker.admin_port and port > 0
    broker.publish(TOPIC, b"x")

    status, body = get_json(port, "/health")
    assert status == 200 and body["status"] == "ok"
    assert body["broker"] == name and body["supervisor_pid"] == broker.supervisor_pid
    assert "problems" not in body

    status, body = get_json(port, "/stats")
    assert status == 200 and body["broker"] == name and TOPIC in body["topics"]
    assert set(body) >= {"published", "delivered", "acked", "pending", "supervisor", "topics"}

    status, body = get_json(port, f"/stats/{TOPIC}")
    assert status == 200 and body["published"] == 1
    assert set(body) >= {"published", "delivered", "acked", "redelivered", "dead_lettered",
                         "depth", "ring_bytes_used", "ring_bytes_capacity", "publish_waits",
                         "publish_refusals", "groups"}

    status, headers, text = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert text.startswith(b"# HELP pymq_")

    status, headers, page = get(port, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'id="topic-rows"' in page and b'id="group-rows"' in page
    # self-contained: no external script, style sheet, image or font
    assert not re.search(rb"<(script|link|img|iframe)[^>]*\s(src|href)=\"(?!data:)", page)
    assert b"@import" not in page and b"url(" not in page
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp

    for path in ("/", "/health", "/stats", "/metrics"):  # HEAD: the headers of GET, no body
        g_status, g_headers, g_body = get(port, path)
        h_status, h_headers, h_body = request(port, "HEAD", path)
        assert (h_status, h_body) == (g_status, b"")
        assert h_headers["Content-Type"] == g_headers["Content-Type"]
        if path == "/":
            assert int(h_headers["Content-Length"]) == len(g_body)


def test_figures_match_what_was_published_and_acked(make_broker):
    broker = make_broker()
    port = broker.start_admin_server(0)
    acker = broker.subscribe_with_ack(TOPIC, group="archiver")
    plain = broker.subscribe(TOPIC, group="indexer")
    n, m = 50, 30
    payloads = [b"msg-%03d" % i for i in range(n)]
    broker.publish_many(TOPIC, payloads[:20])
    for p in payloads[20:]:
        broker.publish(TOPIC, p)
    got = []
    while len(got) < n:
        got += acker.get_many(n - len(got), timeout=5)
    acker.ack_many(got[:m])
    assert len(plain.get_many(n, timeout=5)) <= n

    def topic_figures():
        status, body = get_json(port, f"/stats/{TOPIC}")
        assert status == 200
        g = body["groups"]
        return body if g["indexer"]["delivered"] == n and g["archiver"]["acked"] == m else None

    t = wait_for(topic_figures, timeout=10)
    nbytes = sum(map(len, payloads))
    assert (t["published"], t["published_bytes"], t["delivered"], t["acked"], t["pending"]) == \
        (n, nbytes, 2 * n, m, n - m)
    assert (t["redelivered"], t["dead_lettered"], t["publish_refusals"]) == (0, 0, 0)
    assert t["depth"] == n - m  # the archiver has n - m unacked
    a, i = t["groups"]["archiver"], t["groups"]["indexer"]
    assert (a["members"], a["delivered"], a["acked"], a["pending"], a["lag"], a["ack"]) == \
        (1, n, m, n - m, 0, True)
    assert (i["members"], i["delivered"], i["acked"], i["pending"], i["lag"], i["ack"]) == \
        (1, n, 0, 0, 0, False)
    assert 0 < t["ring_bytes_used"] <= t["ring_bytes_capacity"] == 1024 * 1024

    status, whole = get_json(port, "/stats")
    assert whole["topics"][TOPIC] == t
    assert (whole["published"], whole["acked"], whole["pending"]) == (n, m, n - m)

    types, samples = scrape(port)
    assert types["pymq_published_total"] == "counter" and types["pymq_depth"] == "gauge"
    assert metric(samples, "pymq_published_total", topic=TOPIC) == n
    assert metric(samples, "pymq_published_bytes_total", topic=TOPIC) == nbytes
    assert metric(samples, "pymq_depth", topic=TOPIC) == n - m
    assert metric(samples, "pymq_ring_capacity_bytes", topic=TOPIC) == 1024 * 1024
    assert metric(samples, "pymq_ring_used_bytes", topic=TOPIC) == t["ring_bytes_used"]
    assert metric(samples, "pymq_publish_waits_total", topic=TOPIC) == 0
    assert metric(samples, "pymq_publish_refusals_total", topic=TOPIC) == 0
    for group, delivered, acked, pending in (("archiver", n, m, n - m), ("indexer", n, 0, 0)):
        assert metric(samples, "pymq_delivered_total", topic=TOPIC, group=group) == delivered
        assert metric(samples, "pymq_acked_total", topic=TOPIC, group=group) == acked
        assert metric(samples, "pymq_group_pending", topic=TOPIC, group=group) == pending
        assert metric(samples, "pymq_group_lag", topic=TOPIC, group=group) == 0
        assert metric(samples, "pymq_group_members", topic=TOPIC, group=group) == 1
        for counter in ("nacked", "redelivered", "dead_lettered", "timeouts"):
            assert metric(samples, f"pymq_{counter}_total", topic=TOPIC, group=group) == 0
    assert metric(samples, "pymq_supervisor_restarts_total") == 0
    assert metric(samples, "pymq_reaped_processes_total") == 0
    assert metric(samples, "pymq_healthy") == 1
    assert sum(v for (k, _), v in samples.items() if k == "pymq_delivered_total") == 2 * n


def test_metrics_label_values_are_escaped():
    weird = 'a"b\\c\nd'
    stats = {"broker": "b", "supervisor": {"pid": 1, "restarts": 2, "last_sweep": 1.5},
             "reaped_processes": 3, "reaped_subscriptions": 4,
             "topics": {"t": {"published": 5, "depth": 1.0, "ring_bytes_capacity": 4096,
                              "groups": {weird: {"members": 1, "acked": 7, "lag": float("nan"),
                                                 "pending": float("inf"), "ack": True}}}}}
    text = admin.metrics_text(stats, healthy=False)
    assert 'group="a\\"b\\\\c\\nd"' in text
    types, samples = parse_metrics(text)
    assert metric(samples, "pymq_acked_total", topic="t", group=weird) == 7
    assert math.isnan(metric(samples, "pymq_group_lag", topic="t", group=weird))
    assert metric(samples, "pymq_group_pending", topic="t", group=weird) == math.inf
    assert metric(samples, "pymq_published_total", topic="t") == 5
    assert metric(samples, "pymq_supervisor_restarts_total") == 2
    assert metric(samples, "pymq_healthy") == 0
    assert "pymq_delivered_total" not in types  # no figure, no sample (never a made-up 0)
    assert admin.escape_label_value('x\\"\n') == 'x\\\\\\"\\n'


def test_unknown_or_invalid_topic_is_404(make_broker):
    broker = make_broker()
    port = broker.start_admin_server(0)
    broker.publish(TOPIC, b"x")
    for path in ("/stats/nope", "/stats/.hidden", "/stats/" + "a" * 300, "/stats/a%20b",
                 "/stats/%ff", f"/stats/{TOPIC}/extra"):
        status, body = get_json(port, path)
        assert status == 404 and "error" in body, path
    assert get_json(port, f"/stats/{TOPIC}")[0] == 200
    assert get_json(port, f"/stats/{TOPIC}.dlq")[0] == 404  # valid name, no such topic yet


# -- Prometheus and OpenMetrics, read by the reference parsers ---------------------------------

def reference_parse(text, openmetrics=False):
    """({family: (type, unit)}, {(sample name, frozenset of labels): value})
    as prometheus_client's own parser reads the text."""
    if openmetrics:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    families, values = {}, {}
    for fam in text_string_to_metric_families(text):
        assert fam.name not in families, fam.name
        families[fam.name] = (fam.type, fam.unit)
        for smp in fam.samples:
            key = (smp.name, frozenset(smp.labels.items()))
            assert key not in values, key
            values[key] = smp.value
    return families, values


def test_metrics_parse_with_the_reference_parsers_and_match_what_was_done(make_broker):
    pytest.importorskip("prometheus_client")
    broker = make_broker()
    port = broker.start_admin_server(0)
    acker = broker.subscribe_with_ack(TOPIC, group="archiver")
    anonymous = [broker.subscribe(TOPIC) for _ in range(3)]
    n, m = 40, 25
    payloads = [b"m-%04d" % i for i in range(n)]
    broker.publish_many(TOPIC, payloads)
    got = []
    while len(got) < n:
        got += acker.get_many(n - len(got), timeout=5)
    acker.ack_many(got[:m])
    for sub in anonymous:
        assert len(sub.get_many(n, timeout=5)) == n
    nbytes = sum(map(len, payloads))

    def settled():
        g = get_json(port, f"/stats/{TOPIC}")[1]["groups"]
        return g["archiver"]["acked"] == m and \
            sum(x["delivered"] for x in g.values() if x["anonymous"]) == 3 * n

    wait_for(settled, timeout=10)
    status, headers, body = get(port, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert headers["Vary"] == "Accept"
    prom_families, prom = reference_parse(body.decode())
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")  # Prometheus 2's
    status, headers, body = get(port, "/metrics", headers={"Accept": accept})
    assert status == 200
    assert headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    text = body.decode()
    assert text.endswith("\n# EOF\n") and text.count("# EOF") == 1
    om_families, om = reference_parse(text, openmetrics=True)
    assert "# TYPE pymq_published counter" in text and "# TYPE pymq_published_total" not in text
    assert "\npymq_published_total{" in text

    def value(name, **labels):
        key = (name, frozenset(labels.items()))
        assert prom.get(key) == om.get(key), key  # both formats say the same
        return prom.get(key)

    assert value("pymq_build_info", version=pymq.__version__) == 1
    assert om_families["pymq_build"] == ("info", "")
    assert value("pymq_healthy") == 1 and value("pymq_topics") == 1
    assert value("pymq_published_total", topic=TOPIC) == n
    assert value("pymq_published_bytes_total", topic=TOPIC) == nbytes
    assert value("pymq_delivered_total", topic=TOPIC, group="archiver") == n
    assert value("pymq_delivered_bytes_total", topic=TOPIC, group="archiver") == nbytes
    assert value("pymq_acked_total", topic=TOPIC, group="archiver") == m
    assert value("pymq_group_pending", topic=TOPIC, group="archiver") == n - m
    assert value("pymq_group_lag", topic=TOPIC, group="archiver") == 0
    assert value("pymq_depth", topic=TOPIC) == n - m
    assert value("pymq_ring_capacity_bytes", topic=TOPIC) == 1024 * 1024
    assert value("pymq_ring_used_bytes", topic=TOPIC) > 0
    assert value("pymq_supervisor_restarts_total") == 0
    assert value("pymq_reaped_processes_total") == 0
    assert value("pymq_reaped_subscriptions_total") == 0
    # anonymous subscriptions: one label set for the three of them
    assert value("pymq_delivered_total", topic=TOPIC, group="~anonymous") == 3 * n
    assert value("pymq_delivered_bytes_total", topic=TOPIC, group="~anonymous") == 3 * nbytes
    assert value("pymq_group_members", topic=TOPIC, group="~anonymous") == 3
    assert value("pymq_group_lag", topic=TOPIC, group="~anonymous") == 0
    groups = {dict(labels).get("group") for (name, labels) in prom if name == "pymq_delivered_total"}
    assert groups == {"archiver", "~anonymous"}
    assert set(prom) == set(om)
    # Prometheus conventions: counters end in _total (a family of the parser
    # drops it), units are suffixes and, in OpenMetrics, declared
    for name, (kind, unit) in om_families.items():
        assert name.startswith("pymq_") and kind in ("counter", "gauge", "info"), name
        if name.endswith(("_bytes", "_seconds")):
            assert unit == name.rsplit("_", 1)[1], name
    assert prom_families.pop("pymq_build_info") == ("gauge", "")  # no info type in 0.0.4
    assert {name: kind for name, (kind, _) in prom_families.items()} == \
        {name: kind for name, (kind, _) in om_families.items() if name != "pymq_build"}
    assert om_families["pymq_ring_used_bytes"] == ("gauge", "bytes")
    assert om_families["pymq_published_bytes"] == ("counter", "bytes")
    assert om_families["pymq_supervisor_last_sweep_timestamp_seconds"] == ("gauge", "seconds")
    assert not any(name.startswith("pymq_ring_bytes") for name, _ in prom)

    # anonymous churn adds no series: three leave, three others come
    for sub in anonymous:
        sub.unsubscribe()
    anonymous = [broker.subscribe(TOPIC) for _ in range(3)]
    k = 7
    broker.publish_many(TOPIC, payloads[:k])
    for sub in anonymous:
        assert len(sub.get_many(k, timeout=5)) == k
    monotonic = "anonymous" in get_json(port, f"/stats/{TOPIC}")[1]
    want = 3 * n + 3 * k if monotonic else 3 * k  # the broker's own count includes departed ones

    def scraped():
        _, values = reference_parse(get(port, "/metrics")[2].decode())
        got = values.get(("pymq_delivered_total",
                          frozenset({"topic": TOPIC, "group": "~anonymous"}.items())))
        return values if got == want else None

    prom = wait_for(scraped, timeout=10)
    groups = {dict(labels).get("group") for (name, labels) in prom if name == "pymq_delivered_total"}
    assert groups == {"archiver", "~anonymous"}
    assert prom[("pymq_group_members",
                 frozenset({"topic": TOPIC, "group": "~anonymous"}.items()))] == 3


def test_anonymous_groups_are_one_label_set_computed_or_given():
    pytest.importorskip("prometheus_client")
    groups = {
        "anon-0": {"anonymous": True, "members": 1, "delivered": 5, "delivered_bytes": 50,
                   "lag": 2, "pending": 0, "acked": 3, "position": 9},
        "anon-7": {"anonymous": True, "members": 1, "delivered": 4, "delivered_bytes": 40,
                   "lag": 7, "pending": 1, "acked": 1, "position": 4},
        "named": {"anonymous": False, "members": 2, "delivered": 11, "lag": 1, "acked": 6},
    }
    anon = frozenset({"topic": "t", "group": "~anonymous"}.items())
    named = frozenset({"topic": "t", "group": "named"}.items())

    def parsed(topic):
        stats = {"topics": {"t": topic}}
        _, prom = reference_parse(admin.metrics_text(stats))
        _, om = reference_parse(admin.openmetrics_text(stats), openmetrics=True)
        assert prom == om
        return {name: v for (name, labels), v in prom.items() if labels == anon}, \
            {name: v for (name, labels), v in prom.items() if labels == named}

    # no "anonymous" entry from the broker: summed over the anonymous groups
    a, n = parsed({"groups": groups})
    assert a == {"pymq_delivered_total": 9, "pymq_delivered_bytes_total": 90,
                 "pymq_group_members": 2, "pymq_group_lag": 7, "pymq_group_pending": 1}
    assert n == {"pymq_delivered_total": 11, "pymq_group_members": 2, "pymq_group_lag": 1,
                 "pymq_acked_total": 6}
    # the broker's entry (monotonic: departed subscriptions included) wins for what it gives
    given = {"members": 2, "delivered": 100, "delivered_bytes": 1000}
    a, _ = parsed({"groups": groups, "anonymous": given})
    assert a == {"pymq_delivered_total": 100, "pymq_delivered_bytes_total": 1000,
                 "pymq_group_members": 2, "pymq_group_lag": 7, "pymq_group_pending": 1}
    # every anonymous subscription gone: the counters go on, no gauges of nobody
    a, _ = parsed({"groups": {}, "anonymous": {"members": 0, "delivered": 100,
                                               "delivered_bytes": 1000}})
    assert a == {"pymq_delivered_total": 100, "pymq_delivered_bytes_total": 1000,
                 "pymq_group_members": 0}
    a, _ = parsed({"groups": {}})
    assert a == {}


@pytest.mark.parametrize("accept, openmetrics", [
    (None, False), ("", False), ("*/*", False), ("text/plain;version=0.0.4", False),
    ("application/openmetrics-text", True),
    ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
    ("text/plain;q=0.5, Application/OpenMetrics-Text;version=0.0.1;q=0.75", True),
    ("application/openmetrics-text;q=0", False), ("application/openmetrics-text;q=x", False),
    ("application/json, text/html", False),
])
def test_openmetrics_is_served_when_accept_asks_for_it(accept, openmetrics):
    from pymq.admin import metrics
    assert metrics.wants_openmetrics(accept) is openmetrics


# -- the history behind /history ---------------------------------------------------------------

def _topic(published, groups, **extra):
    return {"published": published, "groups": groups, **extra}


def test_history_keeps_rates_and_gauges_for_its_span_only():
    from pymq.admin.history import History
    h = History(span=4, interval=1)
    anon = lambda delivered, lag, pending: {  # noqa: E731
        "anonymous": True, "delivered": delivered, "lag": lag, "pending": pending}
    h.add(100.0, {"topics": {"t": _topic(10, {
        "g": {"delivered": 10, "lag": 3, "pending": 1},
        "anon-0": anon(5, 2, 0), "anon-1": anon(1, 4, 2)})}})
    h.add(102.0, {"topics": {"t": _topic(30, {
        "g": {"delivered": 20, "lag": 5, "pending": 0},
        "anon-0": anon(9, 1, 1), "anon-1": anon(7, 0, 3)})}})
    # anon-0 leaves (its deliveries are not taken back), anon-2 comes
    h.add(103.0, {"topics": {"t": _topic(31, {
        "g": {"delivered": 21, "lag": 0, "pending": 0},
        "anon-1": anon(8, 0, 0), "anon-2": anon(50, 6, 0)})}})
    j = h.to_json()
    assert (j["interval"], j["span"], j["t"]) == (1.0, 4.0, [100.0, 102.0, 103.0])
    assert j["topics"] == {"t": {"published_per_s": [None, 10.0, 1.0],
                                 "delivered_per_s": [None, (10 + 4 + 6) / 2, 2.0]}}
    assert j["groups"] == {"t": {"g": {"lag": [3, 5, 0], "pending": [1, 0, 0]},
                                 "~anonymous": {"lag": [4, 1, 6], "pending": [2, 4, 0]}}}
    assert h.to_json(since=102.0)["t"] == [103.0]
    assert h.to_json(since=102.0)["topics"]["t"]["published_per_s"] == [1.0]
    # the broker's "anonymous" entry, when given, counts anonymous deliveries
    h.add(104.0, {"topics": {"t": _topic(31, {"anon-1": anon(8, 0, 0)},
                                         anonymous={"members": 1, "delivered": 500})}})
    h.add(105.0, {"topics": {"t": _topic(33, {"anon-1": anon(10, 0, 0)},
                                         anonymous={"members": 1, "delivered": 502})}})
    j = h.to_json()
    assert j["t"] == [102.0, 103.0, 104.0, 105.0]  # span: 4 samples
    assert j["topics"]["t"]["published_per_s"] == [10.0, 1.0, 0.0, 2.0]
    assert j["topics"]["t"]["delivered_per_s"][-1] == 2.0
    assert j["groups"]["t"]["g"] == {"lag": [5, 0, None, None], "pending": [0, 0, None, None]}
    # a topic gone for the whole span leaves nothing behind
    for t in (106.0, 107.0, 108.0, 109.0):
        h.add(t, {"topics": {}})
    assert h.to_json() == {"interval": 1.0, "span": 4.0, "t": [106.0, 107.0, 108.0, 109.0],
                           "topics": {}, "groups": {}}
    assert h.series == 0 and len(h) == 4


def test_history_keeps_at_most_max_series():
    from pymq.admin.history import History
    h = History(span=10, interval=1, max_series=3)
    groups = {f"g{i}": {"delivered": 0, "lag": i, "pending": 0} for i in range(5)}
    h.add(1.0, {"topics": {"t": _topic(0, groups)}})
    j = h.to_json()
    assert h.series == 3 and j["dropped_series"] > 0
    assert sum(len(g) for g in j["groups"].values()) <= 2


def test_history_endpoint_serves_what_the_broker_did(make_broker, monkeypatch):
    monkeypatch.setenv("PYMQ_ADMIN_TOKEN", "tok")
    broker = make_broker()
    port = broker.start_admin_server(0)
    auth = {"Authorization": "Bearer tok"}
    sub = broker.subscribe_with_ack(TOPIC, group="archiver")
    wait_for(lambda: TOPIC in get_json(port, "/history", headers=auth)[1]["groups"], timeout=15)
    t0 = time.time()  # sampled once with nothing published yet
    broker.publish_many(TOPIC, [b"x"] * 30)
    msgs = sub.get_many(30, timeout=5)

    def sampled_twice_after_publishing():
        j = get_json(port, "/history", headers=auth)[1]
        pend = j["groups"].get(TOPIC, {}).get("archiver", {}).get("pending", [])
        return j if pend.count(30) >= 2 else None

    j = wait_for(sampled_twice_after_publishing, timeout=15)
    assert j["interval"] == 1.0 and j["span"] == 600.0
    assert j["t"] == sorted(j["t"]) and len(set(j["t"])) == len(j["t"])
    n = len(j["t"])
    assert all(len(v) == n for v in j["topics"][TOPIC].values())
    assert j["groups"][TOPIC]["archiver"]["lag"][-1] == 0
    rates = j["topics"][TOPIC]["published_per_s"]
    assert rates[-1] == 0  # nothing published since
    # the rates add up to what was published: 30 messages
    assert sum(r * (t - t_before) for r, t, t_before in zip(rates[1:], j["t"][1:], j["t"])
               if r is not None) == pytest.approx(30, abs=0.05)
    for m in msgs:
        m.ack()
    newer = wait_for(lambda: (lambda k: k if k["t"] and k["groups"][TOPIC]["archiver"]["pending"]
                              [-1] == 0 else None)(
        get_json(port, f"/history?since={j['t'][-1]}", headers=auth)[1]), timeout=15)
    assert all(t > j["t"][-1] for t in newer["t"]) and newer["t"][0] > t0
    assert get_json(port, "/history")[0] == 401
    assert get_json(port, "/history?since=soon", headers=auth)[0] == 400
    assert request(port, "HEAD", "/history", headers=auth)[:3:2] == (200, b"")
    # /stats/history is the topic named "history", not this
    assert get_json(port, "/stats/history", headers=auth)[0] == 404
    broker.publish("history", b"x")
    status, body = get_json(port, "/stats/history", headers=auth)
    assert status == 200 and body["published"] == 1


def test_every_metric_is_documented():
    from pymq.admin.metrics import METRICS
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for doc in ("README.md", "docs/admin.md"):
        with open(os.path.join(root, doc), encoding="utf-8") as f:
            text = f.read()
        missing = [m.name for m in METRICS if f"`{m.name}" not in text]
        assert missing == [], (doc, missing)


# -- binding and token -------------------------------------------------------------------

def listening_address(pid, port):
    proc = psutil.Process(pid)
    conns = getattr(proc, "net_connections", None) or proc.connections
    conns = conns("tcp")
    found = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
    assert len(found) == 1, conns
    return found[0].ip


def non_loopback_address():
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return a.address
    return None


def test_binds_loopback_by_default(make_broker):
    broker = make_broker()
    assert broker.config.admin_host == "127.0.0.1"
    port = broker.start_admin_server(0)
    assert listening_address(broker.supervisor_pid, port) == "127.0.0.1"
    other = non_loopback_address()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(OSError):  # refused: nothing listens there
        socket.create_connection((other, port), timeout=2).close()
    assert serving(port)


def test_token_required_except_for_health(make_broker, monkeypatch):
    token = "s3cret-Tok3n"
    monkeypatch.setenv("PYMQ_ADMIN_TOKEN", token)  # the supervisor inherits it
    broker = make_broker()
    port = broker.start_admin_server(0)
    broker.publish(TOPIC, b"x")
    good = {"Authorization": f"Bearer {token}"}
    for path in ("/", "/stats", f"/stats/{TOPIC}", "/metrics", "/stats/nope"):
        status, headers, body = get(port, path)
        assert status == 401, path
        assert headers["Content-Type"] == "application/json" and "error" in json.loads(body)
        assert headers["WWW-Authenticate"].startswith("Bearer")
        for wrong in ("Bearer nope", f"Bearer {token}x", f"Basic {token}", token, "Bearer "):
            assert get(port, path, headers={"Authorization": wrong})[0] == 401, (path, wrong)
        assert get(port, path + "?token=nope")[0] == 401
        want = 404 if path == "/stats/nope" else 200
        assert get(port, path, headers=good)[0] == want, path
        assert get(port, path, headers={"Authorization": f"bearer {token}"})[0] == want
        assert get(port, f"{path}?token={token}")[0] == want, path
    status, body = get_json(port, "/health")
    assert status == 200 and body["status"] == "ok"
    assert request(port, "HEAD", "/health")[0] == 200
    assert request(port, "HEAD", "/stats")[0] == 401


# -- robustness -------------------------------------------------------------------------

def test_bad_requests_get_4xx_and_the_server_keeps_serving(make_broker):
    broker = make_broker()
    port = broker.start_admin_server(0)
    broker.publish(TOPIC, b"x")

    assert get_json(port, "/nope")[0] == 404
    assert get_json(port, "/stats/x/y/z")[0] == 404
    assert get_json(port, "/healthz")[0] == 404
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"):
        for path in ("/stats", "/health", "/"):
            status, headers, body = request(port, method, path, body=b'{"a": 1}')
            assert status == 405, (method, path)
            assert headers["Allow"] == "GET, HEAD" and "error" in json.loads(body)
    for path in ("/stats/../../etc/passwd", "/../../etc/passwd", "/stats/%2e%2e/%2e%2e/etc/passwd",
                 "/stats/%2E%2E", "/stats/..%2f..%2fetc%2fpasswd", "/stats/%2e", "/./stats",
                 "/stats/%00", "/%2e%2e/metrics"):
        status, body = get_json(port, path)
        assert status == 404, path
        assert b"root:" not in json.dumps(body).encode()
        assert status_of(raw(port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())) == 404
    status, headers, body = get(port, "/stats/" + "a" * 10240)
    assert status == 414 and "error" in json.loads(body)
    assert get(port, "/?" + "q=1&" * 3000)[0] == 414
    assert status_of(raw(port, b"GET / HTTP/1.1\r\nX-Big: " + b"y" * 20000 + b"\r\n\r\n")) == 431
    assert status_of(raw(port, b"GET / HTTP/1.1\r\n" + b"X-H: v\r\n" * 200 + b"\r\n")) == 431
    for garbage in (b"\x00\xff\xfe garbage \x01\r\n\r\n", b"HELLO\r\n\r\n",
                    b"GET / HTTP/9.9\r\n\r\n", b"GET / FTP/1.0\r\n\r\n", b"GET\r\n\r\n",
                    b"G E T / HTTP/1.1\r\n\r\n"):
        status = status_of(raw(port, garbage))
        assert 400 <= status < 500 or status == 505, (garbage, status)
    socket.create_connection(("127.0.0.1", port)).close()  # connect and go at once
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /stats HT")  # half a request, then gone
    # slow clients hold no worker: with many half-sent requests open, others are served
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        for s in slow:
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        assert all(get(port, "/stats")[0] == 200 for _ in range(5))
        assert time.monotonic() - t0 < 3
    finally:
        for s in slow:
            s.close()
    assert get_json(port, "/health")[0] == 200
    assert get_json(port, f"/stats/{TOPIC}")[1]["published"] == 1


def test_a_slowloris_client_is_dropped_with_408():
    class Source:
        def stats(self):
            return {"topics": {}}

        def health(self):
            return True, {}

    server = admin.AdminServer(Source(), "127.0.0.1", 0, None, request_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            t0 = time.monotonic()
            s.sendall(b"GET /st")
            time.sleep(0.2)
            s.sendall(b"ats HTTP/1.1\r\n")  # trickling does not extend the deadline
            data = s.recv(4096)
            assert status_of(data) == 408 and time.monotonic() - t0 < 3
        assert serving(server.port)
    finally:
        server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_handler_exceptions_are_500_and_do_not_kill_the_server(caplog):
    class Source:
        calls = 0

        def stats(self):
            Source.calls += 1
            raise RuntimeError("boom")

        def health(self):
            raise RuntimeError("health boom")

    # no history sampling here: it would call stats() too, and the calls are counted
    server = admin.AdminServer(Source(), "127.0.0.1", 0, None, history_interval=None)
    try:
        for _ in range(5):
            status, body = get_json(server.port, "/stats")
            assert status == 500 and body == {"error": "internal server error"}
        assert get_json(server.port, "/metrics")[0] == 500
        status, body = get_json(server.port, "/health")
        assert status == 503 and body["status"] == "unhealthy"
        assert "health boom" in body["problems"][0]
        assert Source.calls == 6
    finally:
        server.close()
    err = caplog.text  # logged through logging.getLogger("pymq.admin"), never printed
    assert {r.name for r in caplog.records} == {"pymq.admin"}
    assert "RuntimeError: boom" in err
    assert err.count("Traceback") <= 3  # logged, but not once per request


def test_a_burst_of_concurrent_requests_all_get_answers(make_broker):
    broker = make_broker()
    port = broker.start_admin_server(0)
    broker.publish(TOPIC, b"x")
    n = 200
    results = [None] * n
    barrier = threading.Barrier(n)
    paths = ["/stats", "/metrics", f"/stats/{TOPIC}", "/health", "/"]

    def one(i):
        barrier.wait()
        try:
            results[i] = get(port, paths[i % len(paths)], timeout=20)[0]
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r in (200, 503) for r in results), [r for r in results if r not in (200, 503)]
    assert results.count(200) > 0
    assert get_json(port, "/health")[0] == 200
    assert get_json(port, f"/stats/{TOPIC}")[1]["published"] == 1


def test_beyond_the_queue_requests_get_503_at_once():
    gate = threading.Event()

    class SlowSource:
        def stats(self):
            gate.wait(10)
            return {"topics": {}}

        def health(self):
            return True, {}

    server = admin.AdminServer(SlowSource(), "127.0.0.1", 0, None, workers=1, queue_size=2)
    try:
        results = []

        def one():
            results.append(get(server.port, "/stats", timeout=20))

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        # the one worker waits on the gate with two requests queued: the rest get 503 now
        wait_for(lambda: len(results) >= 9, timeout=10)
        assert [r[0] for r in results] == [503] * len(results)
        assert all(r[1]["Retry-After"] == "1" and "error" in json.loads(r[2]) for r in results)
        gate.set()
        for t in threads:
            t.join(20)
        assert sorted(r[0] for r in results) == [200] * 3 + [503] * 9
        assert get(server.port, "/stats")[0] == 200
    finally:
        gate.set()
        server.close()


def server_connections(pid, port):
    """Established TCP connections of process pid on its port `port`."""
    proc = psutil.Process(pid)
    conns = (getattr(proc, "net_connections", None) or proc.connections)("tcp")
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)


def readable(socks):
    """The sockets of `socks` that have something to read now, in order."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    ready = {fd for fd, _ in poller.poll(0)}
    return [s for s in socks if s.fileno() in ready]


@pytest.fixture
def open_files():
    """Make room for `n` more descriptors in this process (the soft limit is
    raised up to the hard one, and put back afterwards)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def need(n):
        want = len(os.listdir("/proc/self/fd")) + n + 64
        if soft != resource.RLIM_INFINITY and soft < want:
            if hard != resource.RLIM_INFINITY and hard < want:
                pytest.skip(f"needs {want} open files; the hard limit is {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    yield need
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("idle", [280, 1000])
def test_idle_connections_never_starve_health_probes(make_broker, open_files, idle):
    """Kubernetes' probes must answer, with their default timeoutSeconds (1 s),
    whatever idle connections are held open: over max_connections (256) the
    server closes the oldest idle ones first (with a 503), so a new one is read."""
    open_files(idle + 21)
    broker = make_broker()
    port = broker.start_admin_server(0)
    held = []
    try:
        for _ in range(idle):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        evicted = idle - 256
        for s in held[:evicted]:  # the oldest: answered 503 and closed, each in turn
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert status_of(data) == 503 and b"Retry-After: 1" in data, data[:300]
        # the newest 256 are open and were sent nothing
        assert readable(held[evicted:]) == []
        assert server_connections(broker.supervisor_pid, port) == 256
        for _ in range(21):
            status, body = get_json(port, "/health", timeout=1.0)  # Kubernetes' default
            assert status == 200 and body["status"] == "ok"
        # a probe makes room for itself by closing the oldest idle connection
        # (when the one before still lingers; else it takes the room that one left)
        closed = readable(held[evicted:])
        assert 1 <= len(closed) <= 21 and closed == held[evicted:evicted + len(closed)]
        assert all(status_of(s.recv(65536)) == 503 for s in closed)
    finally:
        for s in held:
            s.close()
    assert get_json(port, "/stats")[0] == 200


def test_a_slow_stats_never_delays_health():
    gate = threading.Event()
    calling = threading.Event()

    class SlowSource:
        def stats(self):
            calling.set()
            gate.wait(20)
            return {"topics": {}}

        def health(self):
            return True, {"broker": "slow"}

    server = admin.AdminServer(SlowSource(), "127.0.0.1", 0, None, history_interval=None)
    results = []
    threads = [threading.Thread(target=lambda: results.append(get(server.port, "/stats",
                                                                  timeout=30)[0]))
               for _ in range(8)]
    try:
        for t in threads:
            t.start()
        assert calling.wait(10)  # stats() is stuck in the broker
        for _ in range(5):
            t0 = time.monotonic()
            status, body = get_json(server.port, "/health", timeout=1.0)
            assert (status, body) == (200, {"status": "ok", "broker": "slow"})
            assert time.monotonic() - t0 < 1.0
        # nor the page and the history, which need nothing from the broker
        assert get(server.port, "/", timeout=1.0)[0] == 200
        assert get_json(server.port, "/history", timeout=1.0)[0] == 200
        assert results == []  # the stats requests still wait
        gate.set()
        for t in threads:
            t.join(20)
        assert results == [200] * 8
    finally:
        gate.set()
        server.close()


def test_concurrent_requests_share_one_stats_call():
    """Requests that arrive while stats() runs share the next call: 20
    concurrent requests make two calls, and each answer comes from a call
    that began after its request arrived."""
    gate = threading.Event()
    calls = []

    class CountingSource:
        def stats(self):
            calls.append(time.monotonic())
            gate.wait(20)
            return {"topics": {}, "call": len(calls)}

        def health(self):
            return True, {}

    server = admin.AdminServer(CountingSource(), "127.0.0.1", 0, None, workers=32,
                               history_interval=None)
    results = []
    try:
        first = threading.Thread(target=lambda: results.append(get_json(server.port, "/stats")))
        first.start()
        wait_for(lambda: len(calls) == 1, timeout=10)
        others = [threading.Thread(target=lambda: results.append(get_json(server.port, "/stats")))
                  for _ in range(19)]
        for t in others:
            t.start()
        wait_for(lambda: server._lanes["source"].busy == 20, timeout=10)
        gate.set()
        for t in [first] + others:
            t.join(20)
        assert len(calls) == 2
        assert sorted(body["call"] for _, body in results) == [1] + [2] * 19
        assert all(status == 200 for status, _ in results)
    finally:
        gate.set()
        server.close()


def test_a_stuck_source_is_a_503_not_a_hang():
    gate = threading.Event()

    class StuckSource:
        def stats(self):
            gate.wait(20)
            return {"topics": {}}

        def health(self):
            gate.wait(20)
            return True, {}

    server = admin.AdminServer(StuckSource(), "127.0.0.1", 0, None, history_interval=None,
                               stats_timeout=0.3, health_timeout=0.3)
    try:
        status, headers, body = get(server.port, "/stats")
        assert status == 503 and headers["Retry-After"] == "1"
        assert json.loads(body) == {"error": "the broker did not answer (stats) within 0.3 s"}
        status, body = get_json(server.port, "/health")
        assert status == 503 and body == {
            "status": "unhealthy",
            "problems": ["health check failed: the broker did not answer (health) within 0.3 s"]}
    finally:
        gate.set()
        server.close()


def test_a_low_open_files_limit_is_raised_to_the_hard_one(open_files):
    import resource

    class Source:
        def stats(self):
            return {"topics": {}}

        def health(self):
            return True, {}

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(os.listdir("/proc/self/fd")) + 64
    if hard != resource.RLIM_INFINITY and hard < 256 + 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # put back by open_files
    server = admin.AdminServer(Source(), "127.0.0.1", 0, None, history_interval=None)
    try:
        want = hard if hard != resource.RLIM_INFINITY else 256 + 256
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (want, hard)
        assert serving(server.port)
    finally:
        server.close()


# -- lifecycle --------------------------------------------------------------------------

def test_start_admin_server_takes_a_str_port(make_broker):
    broker = make_broker()
    port = broker.start_admin_server("0")
    assert isinstance(port, int) and port > 0 and broker.admin_port == port
    assert get_json(port, "/health")[0] == 200


def test_a_busy_port_is_an_oserror_and_a_moved_server_frees_its_port(make_broker):
    broker = make_broker()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as e:
            broker.start_admin_server(taken.getsockname()[1])
        assert e.value.errno == errno.EADDRINUSE
    first = broker.start_admin_server(0)
    assert serving(first)
    second = broker.start_admin_server(0)  # moves the server: the old port is closed
    assert second != first and serving(second) and broker.admin_port == second
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", first), timeout=2).close()
    assert broker.start_admin_server(first) == first and serving(first)


def test_restarted_supervisor_serves_on_the_same_port(make_broker):
    broker = make_broker()
    port = broker.start_admin_server(0)
    broker.publish(TOPIC, b"x")
    old = broker.supervisor_pid
    assert get_json(port, "/health")[1]["supervisor_pid"] == old
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: broker.supervisor_pid != old, timeout=15)

    def health_of_new():
        try:
            status, body = get_json(port, "/health", timeout=2)
        except OSError:
            return None
        return body if status == 200 and body["supervisor_pid"] != old else None

    body = wait_for(health_of_new, timeout=15)
    assert body["supervisor_pid"] == broker.supervisor_pid and body["supervisor_restarts"] == 1
    assert broker.admin_port == port
    assert get_json(port, f"/stats/{TOPIC}")[1]["published"] == 1
    _, samples = scrape(port)
    assert metric(samples, "pymq_supervisor_restarts_total") == 1


# -- the dashboard in headless Chromium -------------------------------------------------------

class _Rows(html.parser.HTMLParser):
    """Rows with a data-topic, their cells (class -> (data-value, text)), and svg data."""

    def __init__(self):
        super().__init__()
        self.rows, self.body = [], {}
        self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "tr" and "data-topic" in a:
            self._row = {"attrs": a, "cells": {}, "svg": {}}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = [a.get("class", "").split()[0], a.get("data-value"), ""]
            self._row["cells"][self._cell[0]] = self._cell
        elif tag == "svg" and self._row is not None:
            self._row["svg"] = a

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        elif tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def row(self, cls, **data):
        for r in self.rows:
            if cls in r["attrs"].get("class", "").split() and \
                    all(r["attrs"].get(f"data-{k}") == v for k, v in data.items()):
                return {k: (v, text.strip()) for k, (_, v, text) in r["cells"].items()}, r["svg"]
        return None, None


class _Charts(html.parser.HTMLParser):
    """The dashboard's charts: (kind, topic, group) -> the data-* of their svg."""

    def __init__(self):
        super().__init__()
        self.charts, self._key = {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure" and "chart" in a.get("class", "").split():
            self._key = (a.get("data-kind"), a.get("data-topic"), a.get("data-group"))
        elif tag == "svg" and self._key is not None and a.get("class") == "chart":
            self.charts[self._key] = {k[5:]: v for k, v in a.items() if k.startswith("data-")}
            self.charts[self._key]["paths"] = 0
        elif tag == "path" and self._key in self.charts:
            self.charts[self._key]["paths"] += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self._key = None


def browser_env():
    """Our environment without the sanitizer preloads of `make test-sanitize`."""
    return {k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith(("ASAN_", "UBSAN_"))}


def chromium_binary():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize("token", [None, "t0k-3n"])
def test_dashboard_in_headless_chromium(make_broker, tmp_path, monkeypatch, token):
    binary = chromium_binary()
    if binary is None:
        require_or_skip("Chromium not installed: run `make system-packages` (as root) or "
                        "`apt-get install chromium`")
    if token:  # the page takes ?token= from its URL and sends it as a bearer token
        monkeypatch.setenv("PYMQ_ADMIN_TOKEN", token)
    broker = make_broker()
    port = broker.start_admin_server(0)
    collector = broker.subscribe_with_ack(TOPIC, group="archiver")
    stop = threading.Event()
    published = [0]

    def stream():  # messages flow the whole time Chromium looks
        while not stop.is_set():
            broker.publish_many(TOPIC, [b'{"gpu": 0, "util": 85}'] * 10)
            published[0] += 10
            try:
                collector.ack_many(collector.get_many(100, timeout=0))
            except pymq.Timeout:
                pass
            time.sleep(0.001)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    auth = {"Authorization": f"Bearer {token}"} if token else {}

    def rates_in_history():  # the server has kept a few seconds of traffic
        rates = get_json(port, "/history", headers=auth)[1]["topics"].get(TOPIC, {})
        return sum(1 for r in rates.get("published_per_s", ()) if r) >= 3

    try:
        wait_for(lambda: published[0] >= 100, timeout=10)
        wait_for(rates_in_history, timeout=20)
        page_loaded_after = time.time()
        proc = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
             "--window-size=1280,1600",
             f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
             f"http://127.0.0.1:{port}/" + (f"?token={token}" if token else "")],
            capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
            env=browser_env())
    finally:
        stop.set()
        streamer.join(10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = _Rows()
    dom.feed(proc.stdout)
    assert int(dom.body.get("data-polls", 0)) >= 2, proc.stdout[-3000:]
    cells, svg = dom.row("topic", topic=TOPIC)
    assert cells is not None, f"no row for {TOPIC} in the DOM:\n{proc.stdout[-3000:]}"
    assert cells["name"][1] == TOPIC
    assert 0 < int(cells["published"][0]) <= published[0]
    assert cells["published"][1].replace(",", "").isdigit()
    rate = float(cells["rate"][0])  # messages/s between the last two polls
    assert math.isfinite(rate) and rate >= 0 and cells["rate"][1].endswith("/s")
    assert float(cells["delivery-rate"][0]) >= 0 and int(cells["depth"][0]) >= 0
    assert int(svg["data-samples"]) >= 2 and float(svg["data-max"]) > 0  # a rate > 0 was drawn
    gcells, gsvg = dom.row("group", topic=TOPIC, group="archiver")
    assert gcells is not None
    assert int(gcells["members"][0]) == 1 and int(gcells["acked"][0]) > 0
    assert int(gcells["lag"][0]) >= 0 and int(gcells["pending"][0]) >= 0
    assert float(gcells["acked-rate"][0]) >= 0
    assert 'id="error" hidden' in proc.stdout
    # the charts: drawn wide, from the server's history, so with points from
    # before the page loaded
    charts = _Charts()
    charts.feed(proc.stdout)
    assert set(charts.charts) == {("rates", TOPIC, None), ("groups", TOPIC, "archiver")}
    for key, chart in charts.charts.items():
        assert int(chart["width"]) >= 600 and int(chart["height"]) >= 200, (key, chart)
        assert int(chart["points"]) >= 3 and chart["paths"] == 2, (key, chart)
        assert float(chart["first"]) < page_loaded_after, (key, chart)
        assert float(chart["first"]) < float(chart["last"]), (key, chart)
    assert float(charts.charts[("rates", TOPIC, None)]["max"]) > 0  # messages/s drawn


def test_loopback_server_refuses_other_host_names(make_broker):
    import http.client
    broker = make_broker()
    port = broker.start_admin_server(0)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/stats", headers={"Host": "evil.example:%d" % port})
    assert conn.getresponse().status == 421
    for host in ("127.0.0.1:%d" % port, "localhost:%d" % port, "[::1]:%d" % port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/stats", headers={"Host": host})
        assert conn.getresponse().status == 200, host
