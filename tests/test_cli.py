"""The command line (pymq/cli.py): every command in a process of its own."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import pymq
from clirun import CLEAN_ENV, Running, one_line_error, pymq_cli
from helpers import wait_for
from pymq import cli, segments


@pytest.fixture
def running():
    procs = []

    def start(*args, env=None):
        r = Running(*args, env=env)
        procs.append(r)
        return r

    yield start
    for r in procs:
        r.kill()


def connect_when_up(name, timeout=30):
    def attempt():
        try:
            return pymq.connect(name)
        except pymq.BrokerNotFound:
            return None
    return wait_for(attempt, timeout)


def group_figures(name, topic, group):
    with pymq.connect(name) as c:
        return c.stats()["topics"][topic]["groups"][group]


def group_count(name, topic):
    with pymq.connect(name) as c:
        return len(c.stats()["topics"].get(topic, {}).get("groups", {}))


def test_help_and_usage_errors():
    r = pymq_cli("--help")
    assert r.returncode == 0 and "demo" in r.stdout and "clean" in r.stdout
    r = pymq_cli()
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    for bad in (["demo", "--duration", "-1"], ["demo", "--nack-rate", "1.5"],
                ["demo", "--ack-batch", "-1"], ["clean", "--name", "bad/x"]):
        r = pymq_cli(*bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr, bad


def test_clean_removes_a_dead_brokers_segments_and_refuses_a_live_one(name, ctx):
    import workers
    ready = ctx.Event()
    p = ctx.Process(target=workers.own_broker_then_hang, args=(name, "t", ready))
    p.start()
    assert ready.wait(30)
    r = pymq_cli("clean", "--name", name)
    assert r.returncode == 1 and "already running" in r.stderr and "Traceback" not in r.stderr
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    r = pymq_cli("clean", "--name", name)
    assert r.returncode == 0 and f"pymq.{name}.t" in r.stdout
    assert segments.namespace_entries(name) == []
    r = pymq_cli("clean", "--name", name)
    assert r.returncode == 0 and "nothing to remove" in r.stdout


# -- help and usage -------------------------------------------------------------------

COMMANDS = ("serve", "stats", "groups", "delete-group", "delete-topic", "publish", "tail", "top",
            "demo", "bench", "clean")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_its_name_option(command):
    r = pymq_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: pymq {command}") and "--name" in r.stdout


def test_top_level_help_lists_every_command():
    r = pymq_cli("--help")
    assert r.returncode == 0
    for command in COMMANDS:
        assert command in r.stdout


@pytest.mark.parametrize("bad", [
    ["stats", "--admin", "127.0.0.1:1", "--name", "x"],   # two sources
    ["stats", "bad/topic"], ["publish", ".hidden", "m"], ["tail", "t", "--count", "0"],
    ["tail", "t", "--start", "0"], ["tail", "t", "--group", "a/b"],
    ["top", "--interval", "0"], ["top", "--iterations", "0"],
    ["serve", "--ring-bytes", "lots"], ["serve", "--admin-port", "70000"],
    ["serve", "--max-retries", "-1"], ["serve", "--name", "bad.name"],
])
def test_usage_errors_exit_2_on_one_line(bad):
    r = pymq_cli(*bad)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (bad, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_publish_without_a_message_from_a_terminal_is_a_usage_error():
    master, slave = os.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "pymq", "publish", "t", "--name", "nobody"],
                           stdin=slave, capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2 and "MESSAGE" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- a missing broker -----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["stats"], ["stats", "t", "--json"], ["publish", "t", "m"], ["tail", "t"],
    ["top", "--iterations", "1"],
])
def test_a_missing_broker_is_one_line_and_exit_1(name, args):
    r = pymq_cli(*args, "--name", name)
    one_line_error(r, f"pymq {args[0]}: error:", name, "running")
    r = pymq_cli(*args, env={"PYMQ_NAME": name})  # the name from the environment
    one_line_error(r, name)


@pytest.mark.parametrize("how", ["--admin", "MQ_SERVICE_ENDPOINT"])
def test_an_unreachable_admin_server_is_one_line_and_exit_1(how):
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for command in (["stats"], ["top", "--iterations", "1"]):
        if how == "--admin":
            r = pymq_cli(*command, "--admin", f"127.0.0.1:{port}")
        else:
            r = pymq_cli(*command, env={"MQ_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}/"})
        one_line_error(r, "cannot reach the admin server", f"http://127.0.0.1:{port}")


# -- serve ----------------------------------------------------------------------------

def test_serve_runs_a_broker_until_sigterm_then_removes_everything(name, running):
    serve = running("serve", "--name", name, "--ring-bytes", "64K", "--max-retries", "5")
    client = connect_when_up(name)
    assert client.config.ring_capacity == 65536 and client.config.max_retries == 5
    line = serve.line()
    assert f"broker {name!r} serving" in line and "admin" not in line
    with client.subscribe("t") as sub:
        r = pymq_cli("publish", "t", "through serve", "--name", name)
        assert r.returncode == 0, r.stderr
        assert sub.get(timeout=10) == b"through serve"
    client.close()
    rc, out, err = serve.stop(signal.SIGTERM)
    assert rc == 0, err
    assert "SIGTERM" in out and "closed" in out and "Traceback" not in err
    assert segments.namespace_entries(name) == []


def test_serve_with_persistence_flushes_on_sigterm(name, running, tmp_path):
    import glob
    import json
    pdir = str(tmp_path / "mq")
    serve = running("serve", "--name", name, "--persistence", "--persistence-dir", pdir)
    client = connect_when_up(name)
    client.subscribe("t", group="keeps")  # a durable group: recorded on disk
    client.publish_many("t", [b"%d" % i for i in range(500)])
    client.close()
    rc, out, err = serve.stop(signal.SIGTERM)
    assert rc == 0, err
    lines = [json.loads(x) for f in sorted(glob.glob(pdir + "/t/*.jsonl")) for x in open(f)]
    assert [r["seq"] for r in lines] == list(range(1, 501))  # flushed before exiting
    state = json.load(open(pdir + "/t/groups.json"))
    assert state["groups"] == [{"name": "keeps", "ack": False, "position": 1, "acked": []}]
    assert segments.namespace_entries(name) == []


def test_serve_stops_on_sigint_too(name, running):
    serve = running("serve", "--name", name)
    connect_when_up(name).close()
    serve.line()
    rc, out, err = serve.stop(signal.SIGINT)
    assert rc == 0 and "SIGINT" in out, err
    assert segments.namespace_entries(name) == []


def test_serve_stops_gracefully_on_sigterm_during_start_up(name, running):
    # the namespace exists while its supervisor is still starting: stop then
    serve = running("serve", "--name", name)
    wait_for(lambda: segments.namespace_entries(name), interval=0.001)
    rc, out, err = serve.stop(signal.SIGTERM)
    assert rc == 0, (out, err)
    assert "Traceback" not in err
    assert segments.namespace_entries(name) == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serve_with_an_admin_port_prints_its_url(name, running, how):
    if how == "flag":
        serve = running("serve", "--name", name, "--admin-port", "0")
    else:
        serve = running("serve", env={"PYMQ_NAME": name, "PYMQ_ADMIN_PORT": "0",
                                      "PYMQ_RING_BYTES": "131072"})
    line = serve.line()
    m = re.search(r"admin (http://127\.0\.0\.1:(\d+)/)", line)
    assert m and int(m.group(2)) > 0, line
    if how == "env":
        assert "128.0 KiB" in line
    r = pymq_cli("stats", "--json", "--admin", m.group(1))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["broker"] == name
    rc, out, err = serve.stop()
    assert rc == 0, err
    assert segments.namespace_entries(name) == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serve_log_format_json_writes_json_lines_on_stderr(name, running, how):
    if how == "flag":
        serve = running("serve", "--name", name, "--log-format", "json")
    else:
        serve = running("serve", "--name", name, env={"PYMQ_LOG_FORMAT": "json"})
    assert "serving" in serve.line()  # stdout keeps its status lines
    rc, out, err = serve.stop(signal.SIGTERM)
    assert rc == 0, err
    records = [json.loads(line) for line in err.splitlines()]  # every line: one object
    for r in records:
        assert {"time", "level", "logger", "message"} <= set(r), r
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("INFO", "pymq.cli", f"broker {name!r} serving"),
        ("INFO", "pymq.cli", f"SIGTERM: closing broker {name!r}"),
        ("INFO", "pymq.cli", f"broker {name!r} closed")]
    assert records[0]["broker"] == name and records[0]["pid"] == serve.proc.pid
    assert records[0]["supervisor_pid"] > 0 and records[1]["signal"] == "SIGTERM"
    assert segments.namespace_entries(name) == []


def test_serve_json_logs_carry_the_supervisors_records_and_its_restart(name, running):
    serve = running("serve", "--name", name, "--log-format", "json", "--admin-port", "0")
    first = int(re.search(r"supervisor pid (\d+)", serve.line()).group(1))
    os.kill(first, signal.SIGKILL)  # the broker restarts it, and says so

    def restarted():
        with pymq.connect(name) as c:
            sup = c.stats()["supervisor"]
            return sup["restarts"] >= 1 and sup["pid"] != first
    wait_for(restarted)
    rc, out, err = serve.stop(signal.SIGTERM)
    assert rc == 0, err
    records = [json.loads(line) for line in err.splitlines()]
    said = {(r["level"], r["logger"], r["message"].split(" on http")[0]) for r in records}
    assert ("INFO", "pymq.supervisor", "admin server") in said  # from the supervisor process
    restart = [r for r in records if r["logger"] == "pymq.broker" and "restarting" in r["message"]]
    assert len(restart) == 1 and restart[0]["level"] == "WARNING", records
    assert f"(pid {first})" in restart[0]["message"]


def test_serve_logs_text_at_info_by_default_and_as_little_as_asked(name, running):
    serve = running("serve", "--name", name)
    serve.line()
    rc, out, err = serve.stop(signal.SIGTERM)
    assert rc == 0 and re.search(r"Z INFO pymq\.cli: broker '\w+' serving broker=", err), err
    assert len(err.splitlines()) == 3
    serve = running("serve", "--name", name, "--log-level", "warning",
                    env={"PYMQ_LOG_FORMAT": "json"})
    serve.line()
    rc, out, err = serve.stop(signal.SIGTERM)
    assert rc == 0 and err == ""


def test_serve_says_which_log_setting_is_wrong(name):
    r = pymq_cli("serve", "--name", name, "--log-format", "xml")
    assert r.returncode == 2 and "'xml' is not a log format (text or json)" in r.stderr
    one_line_error(pymq_cli("serve", "--name", name, env={"PYMQ_LOG_LEVEL": "loud"}),
                   "PYMQ_LOG_LEVEL: 'loud' is not a log level")


def test_serve_refuses_a_name_that_a_live_broker_owns(name, make_broker):
    make_broker()
    r = pymq_cli("serve", "--name", name)
    one_line_error(r, "already running")


# -- stats ----------------------------------------------------------------------------

@pytest.fixture
def busy(make_broker):
    """A broker with topic 't': 5 published, group 'g' (ack) got 3 and acked 2,
    an anonymous subscription got all 5; topic 'u': 1 published, nobody reads."""
    broker = make_broker()
    g = broker.subscribe_with_ack("t", group="g")
    anon = broker.subscribe("t")
    broker.publish_many("t", [b"m%d" % i for i in range(5)])
    broker.publish("u", b"x")
    msgs = g.get_many(3, timeout=5)
    assert len(msgs) == 3
    g.ack_many(msgs[:2])
    got = []
    while len(got) < 5:
        got += anon.get_many(5, timeout=5)
    yield broker
    g.close()
    anon.close()


def check_busy_figures(stats):
    t = stats["topics"]["t"]
    assert (t["published"], t["delivered"], t["acked"], t["pending"]) == (5, 8, 2, 1)
    assert t["groups"]["g"]["acked"] == 2 and t["groups"]["g"]["delivered"] == 3
    assert t["groups"]["g"]["pending"] == 1 and t["groups"]["g"]["lag"] == 2
    assert stats["topics"]["u"]["published"] == 1


def test_stats_by_name_prints_a_table(name, busy):
    r = pymq_cli("stats", "--name", name)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"broker {name!r}") and "2 topics" in lines[0]
    assert max(map(len, lines)) <= 100
    header = next(line for line in lines if line.startswith("TOPIC  "))
    for column in ("PUBLISHED", "DELIVERED", "ACKED", "DEPTH", "RING USE", "WAITS", "REFUSALS"):
        assert column in header
    row = next(line for line in lines if line.split()[:1] == ["t"]).split()
    assert row[1:5] == ["5", "8", "2", "3"]  # ... depth: lag 2 + pending 1
    group = next(line for line in lines if line.split()[:2] == ["t", "g"]).split()
    assert group[2:] == ["1", "ack", "2", "1", "3", "2", "0", "0"]


def realistic_stats():
    """GET /stats of a busy broker: three topics (one a dead-letter topic), ack
    groups, a plain group and an anonymous one, seven- and eight-digit counts."""
    def group(members, ack, published, lag, pending, redelivered, dlq):
        acked = published - lag - pending if ack else 0
        return {"members": members, "anonymous": False, "ack": ack, "position": published + 1 - lag,
                "lag": lag, "delivered": published - lag + redelivered, "acked": acked,
                "nacked": redelivered // 2, "redelivered": redelivered, "dead_lettered": dlq,
                "timeouts": redelivered // 2, "pending": pending}

    def topic(published, groups, waits, refusals, used):
        def total(key):
            return sum(g[key] for g in groups.values())
        return {"published": published, "delivered": total("delivered"), "acked": total("acked"),
                "nacked": total("nacked"), "redelivered": total("redelivered"),
                "dead_lettered": total("dead_lettered"), "timeouts": total("timeouts"),
                "pending": total("pending"), "depth": 131_072, "ring_bytes_used": used,
                "ring_bytes_capacity": 8 << 20, "publish_waits": waits,
                "publish_refusals": refusals, "groups": groups}

    gpu = {"dashboard": group(12, True, 9_876_543, 1_441, 512, 123_456, 1_234),
           "archiver": group(4, True, 9_876_543, 99_999, 2_048, 45_678, 17),
           "anon-1042": {**group(1, False, 9_876_543, 0, 0, 0, 0), "anonymous": True}}
    topics = {"gpu-telemetry": topic(9_876_543, gpu, 1_234_567, 8_901, 7_900_000),
              "gpu-telemetry.dlq": topic(1_251, {"dlq-audit": group(1, True, 1_251, 0, 0, 0, 0)},
                                         0, 0, 100_000),
              "node-events": topic(2_345_678, {"alerts": group(3, False, 2_345_678, 12, 0, 0, 0)},
                                   45_678, 0, 1_000)}
    return {"broker": "telemetry-prod-01", "owner_pid": 4_194_301,
            "supervisor": {"pid": 4_194_302, "restarts": 12, "last_sweep": time.time()},
            "reaped_processes": 1_234, "topics": topics}


def test_stats_fits_100_columns_with_realistic_figures():
    stats = realistic_stats()
    for text in (cli.stats_text(stats, stats["topics"]),
                 cli.stats_text(None, {"gpu-telemetry": stats["topics"]["gpu-telemetry"]})):
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 100, "\n" + text
    lines = cli.stats_text(stats, stats["topics"]).splitlines()
    assert lines[0].startswith("broker 'telemetry-prod-01': 3 topics, rings of 8.0 MiB")
    row = next(line for line in lines if line.startswith("gpu-telemetry ")).split()
    # exact, every figure of it: realistic figures need no compact counts
    assert row[1:] == ["9,876,543", "29,697,323", "19,649,086", "131,072", "94.2%", "1,234,567",
                       "8,901"]
    dashboard = next(line for line in lines if line.split()[:2] == ["gpu-telemetry", "dashboard"])
    assert dashboard.split()[2:] == ["12", "ack", "1,441", "512", "9,998,558", "9,874,590",
                                     "123,456", "1,234"]
    assert any(line.split()[:3] == ["gpu-telemetry", "anon-1042", "1"] for line in lines)


def test_stats_json_has_the_exact_figures(name, busy):
    r = pymq_cli("stats", "--json", "--name", name)
    assert r.returncode == 0, r.stderr
    check_busy_figures(json.loads(r.stdout))
    r = pymq_cli("stats", "t", "--json", "--name", name)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == busy.stats()["topics"]["t"]


def test_stats_of_one_topic_shows_only_it(name, busy):
    r = pymq_cli("stats", "u", "--name", name)
    assert r.returncode == 0, r.stderr
    rows = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert rows == ["TOPIC", "u"]


def test_stats_through_the_admin_server(name, busy):
    port = busy.start_admin_server(0)
    for address in (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}/"):
        r = pymq_cli("stats", "--json", "--admin", address)
        assert r.returncode == 0, r.stderr
        check_busy_figures(json.loads(r.stdout))
    r = pymq_cli("stats", "t", "--json", "--admin", f"127.0.0.1:{port}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["published"] == 5
    # MQ_SERVICE_ENDPOINT is the address when no --name is given
    env = {"MQ_SERVICE_ENDPOINT": f"127.0.0.1:{port}"}
    r = pymq_cli("stats", env=env)
    assert r.returncode == 0, r.stderr
    assert f"broker {name!r}" in r.stdout
    assert next(line for line in r.stdout.splitlines() if line.startswith("t ")).split()[1] == "5"
    r = pymq_cli("stats", "--json", env=env)
    check_busy_figures(json.loads(r.stdout))
    # ... and --name reads shared memory instead
    r = pymq_cli("stats", "--name", name, env={"MQ_SERVICE_ENDPOINT": "127.0.0.1:1"})
    assert r.returncode == 0, r.stderr


def test_stats_sends_the_admin_token(name, make_broker, monkeypatch):
    monkeypatch.setenv("PYMQ_ADMIN_TOKEN", "s3cret")  # the supervisor's environment
    broker = make_broker()
    broker.publish("t", b"x")
    port = broker.start_admin_server(0)
    one_line_error(pymq_cli("stats", "--admin", str(port)), "401", "PYMQ_ADMIN_TOKEN")
    for args in (["stats", "--json"], ["stats", "t", "--json"]):
        r = pymq_cli(*args, "--admin", str(port), env={"PYMQ_ADMIN_TOKEN": "s3cret"})
        assert r.returncode == 0, r.stderr
        assert '"published": 1' in r.stdout


def test_stats_of_an_unknown_topic_is_exit_1(name, busy):
    one_line_error(pymq_cli("stats", "nope", "--name", name), "no topic 'nope'")
    port = busy.start_admin_server(0)
    one_line_error(pymq_cli("stats", "nope", "--admin", str(port)), "no topic 'nope'")
    one_line_error(pymq_cli("stats", "nope", "--json", env={"MQ_SERVICE_ENDPOINT": f":{port}"}),
                   "no topic 'nope'")


# -- publish ---------------------------------------------------------------------------

def test_publish_one_message(name, make_broker):
    broker = make_broker()
    sub = broker.subscribe("t")
    r = pymq_cli("publish", "t", "GPU utilization: 85% ✓", "--name", name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "published 1 message to 't' (seq 1)"
    assert sub.get(timeout=5) == "GPU utilization: 85% ✓".encode()


@pytest.mark.parametrize("args", [["-"], []])
def test_publish_the_lines_of_stdin(name, make_broker, args):
    broker = make_broker()
    sub = broker.subscribe("t")
    broker.publish("t", b"before")
    r = pymq_cli("publish", "t", *args, "--name", name, input="one\ntwo words\n\nlast")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "published 4 messages to 't' (last seq 5)"
    assert sub.get_many(10, timeout=5) == [b"before", b"one", b"two words", b"", b"last"]
    with pytest.raises(pymq.Timeout):
        sub.get(timeout=0.1)


def test_publish_many_lines_in_batches_that_fit_the_ring(name, make_broker):
    broker = make_broker(ring_bytes=65536, max_message_bytes=1024)
    sub = broker.subscribe("t", group="all", start="earliest")
    lines = [("%05d" % i) * 20 for i in range(3000)]  # 300 KB through a 64 KiB ring
    proc = subprocess.Popen([sys.executable, "-m", "pymq", "publish", "t", "-", "--name", name],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=CLEAN_ENV)
    feeder = threading.Thread(target=lambda: proc.communicate("\n".join(lines) + "\n", 60))
    feeder.start()
    got = []
    while len(got) < len(lines):  # read while the publisher waits for space
        got += [bytes(p) for p in sub.get_many(1000, timeout=30)]
    feeder.join()
    assert proc.returncode == 0
    assert got == [line.encode() for line in lines]


def test_publish_errors_are_one_line(name, make_broker):
    make_broker(ring_bytes=65536, max_message_bytes=1024)
    r = pymq_cli("publish", "t", "x" * 2000, "--name", name)
    one_line_error(r, "(2,000 bytes)", "max_message_bytes (1,024 bytes)")
    # the lines before a line too long are published, then it stops
    r = pymq_cli("publish", "t", "-", "--name", name, input="ok\nok\n" + "y" * 2000 + "\nno\n")
    one_line_error(r, "line 3 of stdin", "(after 2 messages, last seq 2)")
    r = pymq_cli("publish", "t", "-", "--name", name, input="z" * 200_000)
    one_line_error(r, "line 1 of stdin")
    # Full: nobody reads a durable group, the ring fills, publish gives up
    sub = pymq.connect(name)
    sub.subscribe("full", group="slow").close()
    r = pymq_cli("publish", "full", "-", "--name", name, "--timeout", "0.05",
                 input=("z" * 1000 + "\n") * 100)
    one_line_error(r, "after", "messages, last seq")
    sub.close()


# -- tail -------------------------------------------------------------------------------

def test_tail_count_receives_exactly_the_published_payloads(name, make_broker, running):
    broker = make_broker()
    payloads = [b"alpha", "\u00fcber".encode(), b"\x00\xffbinary", b"two\nlines", b""]
    broker.publish_many("t", payloads)
    r = pymq_cli("tail", "t", "--start", "earliest", "--count", "5", "--name", name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["alpha", "über", repr(b"\x00\xffbinary"),
                                     repr(b"two\nlines"), ""]
    # live: it sees what is published after it subscribed
    tail = running("tail", "t", "--count", "3", "--name", name)
    wait_for(lambda: group_count(name, "t") == 1)
    broker.publish_many("t", [b"x", b"y", b"z"])
    rc, out, err = tail.wait()
    assert rc == 0, err
    assert out.splitlines() == ["x", "y", "z"]


def test_tail_count_takes_no_more_than_count_from_a_group(name, make_broker):
    broker = make_broker()
    broker.publish_many("t", [b"%d" % i for i in range(5)])
    r = pymq_cli("tail", "t", "--group", "g", "--start", "earliest", "--count", "2",
                 "--name", name)
    assert r.returncode == 0 and r.stdout.splitlines() == ["0", "1"], r.stderr
    with broker.subscribe("t", group="g") as rest:
        assert rest.get_many(10, timeout=5) == [b"2", b"3", b"4"]


def test_tail_ack_prints_seq_and_attempt_and_acks(name, make_broker):
    broker = make_broker()
    broker.subscribe_with_ack("t", group="g").close()  # the group exists, durable
    broker.publish_many("t", [b"a", b"b", b"c"])
    r = pymq_cli("tail", "t", "--group", "g", "--ack", "--count", "3", "--name", name)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["seq=1 attempt=1 a", "seq=2 attempt=1 b",
                                     "seq=3 attempt=1 c"]
    g = group_figures(name, "t", "g")
    assert (g["delivered"], g["acked"], g["pending"], g["lag"]) == (3, 3, 0, 0)


def test_tail_says_when_a_group_is_of_the_other_kind(name, make_broker):
    broker = make_broker()
    broker.subscribe("t", group="plain").close()
    broker.subscribe_with_ack("t", group="acked").close()
    one_line_error(pymq_cli("tail", "t", "--group", "plain", "--ack", "--name", name),
                   "without acks")
    one_line_error(pymq_cli("tail", "t", "--group", "acked", "--name", name), "with --ack")


def test_tail_timeout_ends_it(name, make_broker):
    broker = make_broker()
    broker.publish("t", b"old")
    t0 = time.monotonic()
    r = pymq_cli("tail", "t", "--start", "earliest", "--timeout", "0.5", "--name", name)
    assert r.returncode == 0 and r.stdout.splitlines() == ["old"], r.stderr
    assert "no message for 0.5 s" in r.stderr and time.monotonic() - t0 < 30
    # fewer than --count messages in time: a failure
    r = pymq_cli("tail", "t", "--start", "earliest", "--count", "2", "--timeout", "0.3",
                 "--name", name)
    assert r.stdout.splitlines() == ["old"]
    one_line_error(r, "received 1 of 2 messages")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_tail_ends_with_exit_0_on_a_signal(name, make_broker, running, sig):
    broker = make_broker()
    tail = running("tail", "t", "--name", name)
    wait_for(lambda: group_count(name, "t") == 1)
    broker.publish("t", b"one")
    assert tail.line() == "one\n"
    rc, out, err = tail.stop(sig)
    assert rc == 0 and "Traceback" not in err, err
    assert err == f"pymq tail: {sig.name}; received 1 message\n"
    wait_for(lambda: group_count(name, "t") == 0)  # it unsubscribed


@pytest.fixture
def second_name(name):
    """Another broker name, for a broker a test runs besides; nothing of it is left."""
    yield name + "x"
    left = segments.namespace_entries(name + "x")
    segments.remove_namespace(name + "x")
    assert left == [], f"left in /dev/shm: {left}"


def test_ctrl_c_stops_tail_as_it_stops_serve_and_top(name, second_name, make_broker, running):
    """A real SIGINT to each long-running command while messages flow: each
    exits 0 without a traceback; tail acked every message it printed and took
    no more."""
    broker = make_broker()
    broker.subscribe_with_ack("t", group="g").close()  # durable: its figures outlive tail
    flowing = threading.Event()

    def publish():
        while not flowing.is_set():
            broker.publish_many("t", [b"m"] * 10)
            time.sleep(0.002)

    pump = threading.Thread(target=publish)
    pump.start()
    try:
        tail = running("tail", "t", "--group", "g", "--ack", "--name", name)
        top = running("top", "--interval", "0.2", "--name", name)
        serve = running("serve", "--name", second_name)
        for r in (tail, top, serve):
            r.line()  # running: a message printed, a screen shown, the broker serving
        results = {cmd: r.stop(signal.SIGINT) for cmd, r in
                   (("tail", tail), ("top", top), ("serve", serve))}
    finally:
        flowing.set()
        pump.join()
    for cmd, (rc, out, err) in results.items():
        assert rc == 0 and "Traceback" not in err, (cmd, rc, err)
    assert "SIGINT: closing broker" in results["serve"][1]
    printed = len(tail.out) + len(results["tail"][1].splitlines())
    assert results["tail"][2] == f"pymq tail: SIGINT; received {printed:,} messages\n"
    g = group_figures(name, "t", "g")
    assert g["members"] == 0 and g["delivered"] == g["acked"] == printed and g["pending"] == 0


def test_tail_ends_when_the_broker_closes(name, make_broker, running):
    broker = make_broker()
    tail = running("tail", "t", "--ack", "--name", name)
    wait_for(lambda: group_count(name, "t") == 1)
    broker.close()
    rc, out, err = tail.wait()
    assert rc == 0 and "closed" in err and "Traceback" not in err, err


# -- top ----------------------------------------------------------------------------------

def test_top_prints_a_block_per_refresh(name, busy):
    r = pymq_cli("top", "--iterations", "2", "--interval", "0.2", "--name", name)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout  # not a terminal: no screen control
    blocks = r.stdout.split("pymq top: ")[1:]
    assert len(blocks) == 2
    for i, block in enumerate(blocks):
        assert block.startswith(f"broker {name!r}")
        assert "PUBLISHED/S" in block and "ACKED/S" in block
        t = next(line for line in block.splitlines() if line.startswith("t ")).split()
        assert t[1:4] == (["-", "-", "3"] if i == 0 else ["0", "0", "3"])
        g = next(line for line in block.splitlines() if line.split()[:2] == ["t", "g"]).split()
        assert g[2:5] == ["1", "2", "1"]  # members, lag, pending
        assert any(line.startswith("u ") for line in block.splitlines())


def test_top_shows_rates(name, make_broker):
    broker = make_broker()
    sub = broker.subscribe("t", group="g")
    stop = threading.Event()

    def publish():
        while not stop.is_set():
            broker.publish("t", b"p")
            time.sleep(0.001)

    def consume():
        while not stop.is_set():
            try:
                sub.get_many(100, timeout=0.05)
            except pymq.Timeout:
                pass

    pumps = [threading.Thread(target=publish), threading.Thread(target=consume)]
    for p in pumps:
        p.start()
    try:
        r = pymq_cli("top", "--iterations", "2", "--interval", "0.5", "--name", name)
    finally:
        stop.set()
        for p in pumps:
            p.join()
    sub.close()
    assert r.returncode == 0, r.stderr
    last = r.stdout.split("pymq top: ")[-1]
    t = next(line for line in last.splitlines() if line.startswith("t ")).split()
    assert int(t[1].replace(",", "")) > 0 and int(t[2].replace(",", "")) > 0  # per second
    g = next(line for line in last.splitlines() if line.split()[:2] == ["t", "g"]).split()
    assert int(g[5].replace(",", "")) > 0 and g[6] == "-"  # delivered/s; no acks


def test_top_through_the_admin_server(name, busy):
    port = busy.start_admin_server(0)
    r = pymq_cli("top", "--iterations", "1", env={"MQ_SERVICE_ENDPOINT": f"127.0.0.1:{port}"})
    assert r.returncode == 0, r.stderr
    assert f"admin server http://127.0.0.1:{port}" in r.stdout
    assert any(line.startswith("t ") for line in r.stdout.splitlines())


# -- pieces ---------------------------------------------------------------------------

def test_payload_text():
    assert cli.payload_text(b"plain text\tand tab") == "plain text\tand tab"
    assert cli.payload_text("gr\u00fc\u00dfe".encode()) == "grüße"
    assert cli.payload_text(b"mostly text, one bad byte \xff") == "mostly text, one bad byte \ufffd"
    assert cli.payload_text(b"\x00\x01\x02") == repr(b"\x00\x01\x02")
    assert cli.payload_text(b"\xff\xfe\xfd") == repr(b"\xff\xfe\xfd")
    assert cli.payload_text(b"a\nb") == repr(b"a\nb")


def test_admin_addresses():
    assert cli._admin_url("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert cli._admin_url("http://mq:8080/") == "http://mq:8080"
    assert cli._admin_url(":8080") == cli._admin_url("8080") == "http://127.0.0.1:8080"


# -- groups, delete-group, delete-topic ----------------------------------------------------

def test_groups_lists_named_groups_with_idle_time_and_anonymous_ones_together(name, make_broker):
    broker = make_broker()
    keep = broker.subscribe("t", group="live")
    broker.subscribe_with_ack("t", group="forgotten").close()
    anon = [broker.subscribe("t") for _ in range(3)]
    broker.publish_many("t", [b"a", b"b"])
    r = pymq_cli("groups", "t", "--name", name)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["GROUP", "KIND", "MEMBERS", "POSITION", "LAG", "PENDING",
                                "DELIVERED", "ACKED", "IDLE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["forgotten"][1:6] == ["ack", "0", "1", "2", "0"] and rows["forgotten"][-1] == "s"
    assert rows["live"][1:6] == ["plain", "1", "1", "2", "0"] and rows["live"][-1] == "-"
    assert "(3" in rows and rows["(3"][1:4] == ["anonymous)", "-", "3"]
    assert max(map(len, lines)) <= 100
    j = json.loads(pymq_cli("groups", "t", "--name", name, "--json").stdout)
    assert j["forgotten"]["idle_seconds"] >= 0 and j["live"]["idle_seconds"] is None
    keep.close()
    for a in anon:
        a.close()


def test_delete_group_and_delete_topic_from_the_command_line(name, make_broker, tmp_path):
    broker = make_broker()
    broker.subscribe("t", group="g").close()
    broker.publish("t", b"held")
    r = pymq_cli("delete-group", "t", "g", "--name", name)
    assert (r.returncode, r.stdout.strip()) == (0, "deleted group 'g' of topic 't'"), r.stderr
    assert "g" not in broker.stats()["topics"]["t"]["groups"]
    r = pymq_cli("delete-group", "t", "g", "--name", name)
    one_line_error(r, "pymq delete-group: error:", "no group 'g'")
    r = pymq_cli("delete-group", "t", "bad/name", "--name", name)
    assert r.returncode == 2 and "invalid group name" in r.stderr
    r = pymq_cli("delete-topic", "t", "--name", name)
    assert (r.returncode, r.stdout.strip()) == (0, "deleted topic 't'"), r.stderr
    assert broker.topics() == []
    r = pymq_cli("delete-topic", "t", "--name", name)
    one_line_error(r, "pymq delete-topic: error:", "no topic 't'")
