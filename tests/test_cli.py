"""The command line (pymq/cli.py) and the demo it runs."""

import os
import re
import signal
import subprocess
import sys

import pytest

from pymq import segments


def pymq_cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "pymq", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_demo_balances_and_leaves_nothing(name):
    r = pymq_cli("demo", "--duration", "2", "--name", name, "--rate", "500")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: balanced" in r.stdout
    assert segments.namespace_entries(name) == []


def test_demo_balances_under_backpressure_with_refusals(name):
    env = {"PYMQ_RING_BYTES": "65536", "PYMQ_MAX_MESSAGE_BYTES": "4096",
           "PYMQ_PUBLISH_TIMEOUT": "0.0005"}
    r = pymq_cli("demo", "--duration", "2", "--name", name, "--rate", "0", "--batch", "8", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: balanced" in r.stdout


def test_demo_balances_when_every_first_delivery_is_nacked(name):
    # each message comes back once (delivery_attempt 2) and is processed then
    r = pymq_cli("demo", "--duration", "1", "--name", name, "--rate", "500",
                 "--nack-rate", "1", "--ack-batch", "7")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: balanced" in r.stdout
    groups = [line for line in r.stdout.splitlines() if line.startswith("  broker stats: acked")]
    assert len(groups) == 2
    for line in groups:
        figures = {k: int(v.replace(",", "")) for k, v in re.findall(r"(\w+) ([\d,]+)", line)}
        acked = figures["acked"]
        assert acked > 0 and figures["nacked"] == figures["redelivered"] == acked, line
        assert figures["dead_lettered"] == figures["pending"] == 0, line
    assert segments.namespace_entries(name) == []


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
