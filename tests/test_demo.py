"""The telemetry demo (pymq/demo/): the pipeline run end to end, its options,
and the closing account's checks on made-up reports."""

import re
import subprocess
import sys

import pytest

from clirun import CLEAN_ENV, pymq_cli
from pymq import segments
from pymq.demo import summary, telemetry
from pymq.demo.collector import GROUPS


def test_demo_balances_and_leaves_nothing(name):
    r = pymq_cli("demo", "--duration", "2", "--name", name, "--rate", "500")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT: balanced" in r.stdout
    assert "dashboard: http://127.0.0.1:" in r.stdout  # the admin server runs with it
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


def test_python_m_pymq_demo_checks_its_options_on_one_line():
    for bad in (["--duration", "0"], ["--streamers", "65"], ["--nack-rate", "nan"],
                ["--admin-port", "-2"], ["--name", "bad.name"]):
        r = subprocess.run([sys.executable, "-m", "pymq.demo", *bad], capture_output=True,
                           text=True, timeout=60, env=CLEAN_ENV)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (bad, r.stderr)
        assert r.stderr.startswith("python -m pymq.demo: error: ") and \
            len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_no_module_of_the_demo_imports_the_command_line():
    code = ("import sys, pymq.demo, pymq.demo.__main__; "
            "print(sorted(m for m in sys.modules if m in ('pymq.cli', 'pymq.bench')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=CLEAN_ENV)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


# -- the pieces: a message, and the account of made-up reports ------------------------------

def test_a_record_is_valid_telemetry_and_a_broken_one_is_not():
    import json
    import random
    rec = json.loads(telemetry.record("gpu-node-00", 3, telemetry.Gpu(random.Random(1)).sample(),
                                      0, 1))
    assert telemetry.valid(rec)
    for key, bad in (("gpu", 8), ("util_pct", 101), ("seq", 0), ("gpu", True), ("host", 1)):
        assert not telemetry.valid({**rec, key: bad}), key
    assert not telemetry.valid([rec])


def _streamer(index, count):
    return {"role": "streamer", "index": index, "pid": 100 + index, "count": count,
            "crc": 7 * count, "bytes": 100 * count, "last_seq": count, "full_retries": 0,
            "error": None}


def _member(group, member, seqs, streamer=0):
    bitmap = bytearray(16)
    for q in seqs:
        bitmap[q >> 3] |= 1 << (q & 7)
    return {"role": "collector", "group": group, "member": member, "pid": 200 + member,
            "count": len(seqs), "acked": len(seqs), "redelivered": 0, "nacked": 0,
            "duplicates": 0, "dup_examples": [], "crc": 7 * len(seqs), "bytes": 100 * len(seqs),
            "invalid": 0, "out_of_order": 0, "per_streamer": {streamer: [len(seqs), 7 * len(seqs),
                                                                          max(seqs, default=0)]},
            "seen": {streamer: bytes(bitmap)}, "error": None, "latency_max": 0.001,
            "latency_sum": 0.001 * len(seqs)}


def _stats(published, acked):
    groups = {g: {"members": 0, "ack": True, "position": published + 1, "lag": 0,
                  "delivered": acked, "acked": acked, "nacked": 0, "redelivered": 0,
                  "dead_lettered": 0, "timeouts": 0, "pending": 0} for g in GROUPS}
    return {"topics": {telemetry.TOPIC: {
        "published": published, "delivered": 2 * acked, "depth": 0, "ring_bytes_used": 0,
        "ring_bytes_capacity": 1 << 20, "publish_waits": 0, "publish_refusals": 0,
        "groups": groups}}}


def _report(members, published=10, acked=10):
    return summary.report("demo-test", _stats(published, acked), [_streamer(0, 10)], members,
                          started=1, members_per_group=2, problems=[], ran=1.0, drain_time=0.1,
                          drain_problem=None, interrupted=False, peak_rate=10.0, peak_used=0)


def test_the_account_balances_when_each_group_processed_each_message_once(capsys):
    members = [_member(g, m, range(1 + 5 * m, 6 + 5 * m)) for g in GROUPS for m in (0, 1)]
    assert _report(members)
    out = capsys.readouterr().out
    assert out.count(" OK") == 2 and "does not balance" not in out


def test_the_account_names_a_duplicate_and_a_message_never_processed(capsys):
    members = [_member(g, 0, range(1, 6)) for g in GROUPS]
    members += [_member(GROUPS[0], 1, [5, 6, 7, 8, 9, 10]), _member(GROUPS[1], 1, [6, 7, 8, 9])]
    assert not _report(members)
    out = capsys.readouterr().out
    assert re.search(r"dashboard: from streamer 0: 1 message\(s\) processed by more than one "
                     r"member \(duplicates\), e.g. seq 5", out), out
    assert re.search(r"archiver: from streamer 0: 1 published message\(s\) never processed, "
                     r"e.g. seq 10", out), out


def test_drained_and_settled():
    assert summary.drained(_stats(10, 10)) and summary.settled(_stats(10, 10))
    assert not summary.drained(_stats(10, 9)) and not summary.settled(_stats(10, 9))
    assert not summary.drained({"topics": {}})  # the groups do not even exist
