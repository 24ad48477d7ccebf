"""pymq bridge against a real `nats-server -js` (the nats_server fixture): two
brokers on one machine stand for two nodes, each with its bridge process.
Everything published on one arrives on the other, exactly the published set,
in order per publisher; nothing is lost when a bridge is SIGKILLed mid-stream
and restarted, nor when nats-server restarts mid-stream; no echo with both
directions on; SIGTERM settles what is in flight and exits 0; the bridges'
figures are in stats(), /stats and /metrics."""

import os
import re
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

import pymq
import workers
from helpers import get_json, join_all, require_or_skip, wait_for
from pymq import segments

pytest.importorskip("nats", reason="the bridge needs nats-py (the 'nats' extra)")


@pytest.fixture
def two_nodes():
    """Brokers "a" and "b": two nodes on one machine."""
    names = {node: "t" + uuid.uuid4().hex[:12] for node in ("a", "b")}
    brokers = {node: pymq.Broker(pymq.BrokerConfig(name=n, ring_bytes=1 << 20,
                                                   max_message_bytes=4096))
               for node, n in names.items()}
    yield brokers
    for b in brokers.values():
        b.close()
    for n in names.values():
        left = segments.namespace_entries(n)
        segments.remove_namespace(n)
        assert left == [], f"left in /dev/shm: {left}"


class Bridges:
    """The bridge processes of a test, stopped at its end."""

    def __init__(self, nats, tmp_path):
        self.nats, self.tmp_path, self.procs = nats, tmp_path, {}

    def start(self, broker, node, outs=(), ins=(), *extra):
        args = [sys.executable, "-m", "pymq", "bridge", "--name", broker.name, "--nats",
                self.nats.url, "--node", node, "--ack-wait", "1", "--publish-timeout", "2",
                *extra]
        for t in outs:
            args += ["--out", t]
        for t in ins:
            args += ["--in", t]
        log = open(self.tmp_path / f"bridge-{node}.log", "ab")
        p = self.procs[node] = subprocess.Popen(args, stdout=log, stderr=log)
        wait_for(lambda: (lambda f: f and f["nats"]["connected"] and f["alive"]
                          and len(f["out"]) == len(outs) and len(f["in"]) == len(ins))(
            broker.stats()["bridges"].get(node)) or p.poll() is not None)
        assert p.poll() is None, (self.tmp_path / f"bridge-{node}.log").read_text()
        return p

    def stop(self, node, sig=signal.SIGTERM):
        p = self.procs.pop(node)
        p.send_signal(sig)
        return p.wait(60)

    def close(self):
        for node in list(self.procs):
            self.stop(node, signal.SIGKILL)


@pytest.fixture
def bridges(nats_server, tmp_path):
    b = Bridges(nats_server, tmp_path)
    yield b
    b.close()


def collect(sub, want, got=None):
    """Read until `want` distinct payloads arrived; returns everything read."""
    got = [] if got is None else got
    seen = set(got)
    while len(seen) < want:
        for p in sub.get_many(1024, timeout=60):
            got.append(p)
            seen.add(p)
    return got


def per_publisher(payloads):
    out = {}
    for p in payloads:
        pub, i = workers.parse_payload(p)
        out.setdefault(pub, []).append(i)
    return out


def test_what_one_node_publishes_arrives_on_the_other_in_order(two_nodes, bridges, ctx):
    a, b = two_nodes["a"], two_nodes["b"]
    got_b = b.subscribe("t")
    acks_b = b.subscribe_with_ack("t", group="collectors")
    bridges.start(a, "a", outs=["t"])
    bridges.start(b, "b", ins=["t"])
    pubs = [ctx.Process(target=workers.publisher, args=(a.name, "t", k, 3000, 100, batch))
            for k, batch in ((1, 1), (2, 16))]
    for p in pubs:
        p.start()
    got = collect(got_b, 6000)
    join_all(pubs)
    assert len(got) == 6000  # each once
    assert per_publisher(got) == {1: list(range(3000)), 2: list(range(3000))}  # in order
    acked = []
    while len(acked) < 6000:
        batch = acks_b.get_many(1024, timeout=30)
        acks_b.ack_many(batch)
        acked += [m.payload for m in batch]
    assert acked == got  # the same order for every group of the node
    wait_for(lambda: b.stats()["bridges"]["b"]["in"]["t"]["forwarded"] == 6000 and
             a.stats()["bridges"]["a"]["out"]["t"]["forwarded"] == 6000)
    g = a.stats()["topics"]["t"]["groups"]["~bridge"]
    assert (g["pending"], g["lag"]) == (0, 0)  # every local message acked once JetStream had it


def test_both_ways_on_both_nodes_echo_nothing(two_nodes, bridges, ctx):
    a, b = two_nodes["a"], two_nodes["b"]
    subs = {n: two_nodes[n].subscribe("t") for n in "ab"}
    for n in "ab":
        bridges.start(two_nodes[n], n, outs=["t"], ins=["t"])
    pubs = [ctx.Process(target=workers.publisher, args=(two_nodes[n].name, "t", k, 1000, 64, 8))
            for k, n in ((1, "a"), (2, "b"))]
    for p in pubs:
        p.start()
    got = {n: collect(subs[n], 2000) for n in "ab"}
    join_all(pubs)
    for n in "ab":  # its own and the other's, each once, each publisher in order
        assert per_publisher(got[n]) == {1: list(range(1000)), 2: list(range(1000))}
    for n, other in (("a", "b"), ("b", "a")):
        f = two_nodes[n].stats()["bridges"][n]
        wait_for(lambda: two_nodes[n].stats()["bridges"][n]["out"]["t"]["echo_skipped"] == 1000
                 and two_nodes[n].stats()["bridges"][n]["in"]["t"]["own_dropped"] == 1000)
        f = two_nodes[n].stats()["bridges"][n]
        assert f["out"]["t"]["forwarded"] == 1000 and f["in"]["t"]["forwarded"] == 1000
    for n in "ab":  # nothing more came round
        assert two_nodes[n].stats()["topics"]["t"]["published"] == 2000
        with pytest.raises(pymq.Timeout):
            subs[n].get(timeout=0.5)


def mid_stream(two_nodes, bridges, ctx):
    """Node a bridged out to node b, a publisher of 10,000 on a, and what b
    has received once it has 2,000: (a, b, b's subscription, publisher, got)."""
    a, b = two_nodes["a"], two_nodes["b"]
    got_b = b.subscribe("t")
    bridges.start(a, "a", outs=["t"])
    bridges.start(b, "b", ins=["t"])
    p = ctx.Process(target=workers.publisher, args=(a.name, "t", 1, 10000, 200, 16))
    p.start()
    got = []
    while len(got) < 2000:
        got += got_b.get_many(1024, timeout=60)
    return a, b, got_b, p, got


def test_a_bridge_killed_mid_stream_and_restarted_loses_nothing(two_nodes, bridges, ctx):
    a, b, got_b, p, got = mid_stream(two_nodes, bridges, ctx)
    assert bridges.stop("a", signal.SIGKILL) == -9  # out, mid-stream
    bridges.start(a, "a", outs=["t"])
    while len(set(got)) < 5000:
        got += got_b.get_many(1024, timeout=60)
    assert bridges.stop("b", signal.SIGKILL) == -9  # in, mid-stream
    bridges.start(b, "b", ins=["t"])
    got = collect(got_b, 10000, got)
    join_all([p])
    assert sorted(set(per_publisher(got)[1])) == list(range(10000))  # none lost
    for payload in got:
        workers.parse_payload(payload)  # none torn


def test_nats_restarted_mid_stream_loses_nothing(two_nodes, bridges, nats_server, ctx):
    a, b, got_b, p, got = mid_stream(two_nodes, bridges, ctx)
    nats_server.restart()  # SIGKILLed, then started again on its store
    got = collect(got_b, 10000, got)
    join_all([p])
    assert sorted(set(per_publisher(got)[1])) == list(range(10000))
    f = a.stats()["bridges"]["a"]
    assert f["nats"]["reconnects"] >= 1


def test_sigterm_settles_what_is_in_flight_and_exits_0(two_nodes, bridges, ctx):
    a, b = two_nodes["a"], two_nodes["b"]
    got_b = b.subscribe("t")
    bridges.start(b, "b", ins=["t"])
    bridges.start(a, "a", outs=["t"])
    a.publish_many("t", [workers.make_payload(1, i, 100) for i in range(5000)])
    wait_for(lambda: a.stats()["bridges"]["a"]["out"]["t"]["forwarded"] > 0)
    assert bridges.stop("a") == 0
    g = a.stats()["topics"]["t"]["groups"]["~bridge"]
    assert g["pending"] == 0  # in flight when it stopped: acked by JetStream, then locally
    bridges.start(a, "a", outs=["t"])  # the rest waited in the durable group
    got = collect(got_b, 5000)
    assert per_publisher(got) == {1: list(range(5000))}


def test_the_bridges_figures_are_in_stats_metrics_and_the_dashboard(two_nodes, bridges,
                                                                     tmp_path):
    a = two_nodes["a"]
    port = a.start_admin_server(0)
    bridges.start(a, "a", outs=["t"], ins=["u"])
    a.publish_many("t", [b"x"] * 10)
    wait_for(lambda: a.stats()["bridges"]["a"]["out"]["t"]["forwarded"] == 10)
    status, stats = get_json(port, "/stats")
    f = stats["bridges"]["a"]
    assert status == 200 and f["alive"] and f["nats"]["connected"]
    assert f["out"]["t"]["forwarded"] == 10 and f["in"]["u"]["forwarded"] == 0
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    assert 'pymq_bridge_forwarded_total{node="a",direction="out",topic="t"} 10' in text
    assert 'pymq_bridge_up{node="a"} 1' in text
    assert 'pymq_bridge_connected{node="a"} 1' in text
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        require_or_skip("Chromium not installed: `make system-packages` (as root)")
    env = {k: v for k, v in os.environ.items()
           if k != "LD_PRELOAD" and not k.startswith(("ASAN_", "UBSAN_"))}
    page = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=3000", f"--user-data-dir={tmp_path / 'p'}",
                           "--dump-dom", f"http://127.0.0.1:{port}/"], capture_output=True,
                          text=True, timeout=90, stdin=subprocess.DEVNULL, env=env)
    assert page.returncode == 0, page.stderr[-2000:]
    row = re.search(r'<tr class="bridge">(.*?)</tr>', page.stdout)
    assert row is not None, page.stdout[-3000:]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
    assert cells[:5] == ["a", "connected", "out", "t", "10"], cells
    assert bridges.stop("a", signal.SIGKILL) == -9
    wait_for(lambda: not a.stats()["bridges"]["a"]["alive"])  # its token died with it


def test_bridge_needs_something_to_do_and_a_valid_node(two_nodes, nats_server):
    base = [sys.executable, "-m", "pymq", "bridge", "--name", two_nodes["a"].name,
            "--nats", nats_server.url]
    r = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "nothing to do" in r.stderr
    r = subprocess.run(base + ["--out", "t", "--node", "no.dots"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "invalid node name" in r.stderr


def test_the_echo_ranges_pass_over_what_came_in_and_stay_small(tmp_path):
    """What --in put into the ring is noted as seq ranges (a batch is
    consecutive), found by bisection, forgotten once --out passed it, and the
    file that keeps them for a restart is rewritten once mostly stale."""
    from pymq.bridge import Echo
    path = str(tmp_path / "echo")
    echo = Echo(path, {"t"})
    echo.add("u", 1, 5)  # not bridged both ways: not kept
    for k in range(3000):
        echo.add("t", 10 * k + 1, 10 * k + 4)
    echo.add("t", 30001, 30003)  # after a gap: a range of its own
    echo.add("t", 30004, 30009)  # consecutive: one range
    assert echo.has("t", 11) and echo.has("t", 14) and not echo.has("t", 15)
    assert echo.has("t", 30005) and not echo.has("u", 3) and not echo.has("t", 0)
    assert echo.ranges["t"][-1] == (30001, 30009)
    echo.forget_below("t", 29995)
    assert echo.ranges["t"] == [(30001, 30009)] and os.path.getsize(path) < 100
    echo.close()
    again = Echo(path, {"t"})  # a restarted bridge reads what is left
    assert again.ranges == {"t": [(30001, 30009)]}
    assert os.stat(path).st_mode & 0o777 == 0o600
    again.close()
