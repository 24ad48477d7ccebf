"""`pymq bench` (pymq/bench.py): pymq measured alone, across two processes."""

import re
import subprocess
import sys

import pytest

from clirun import CLEAN_ENV, one_line_error, pymq_cli
from pymq import bench, cliutil, segments


def test_quick_run_checks_every_payload_prints_a_table_and_leaves_nothing(name):
    r = pymq_cli("bench", "--quick", "--name", name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"pymq bench: pymq {bench.pymq.__version__} alone")
    for case in bench.CASES:  # one row each: messages, msg/s, MB/s
        row = next(line for line in lines if line.startswith(case.label + "  "))
        messages, rate, mbs = row[len(case.label):].split()
        assert int(messages.replace(",", "")) == case.quick
        assert float(rate.replace(",", "")) > 0 and float(mbs.replace(",", "")) > 0
    m = re.search(r"^ping-pong 64 B +2,000 +([\d.]+) us +([\d.]+) us$", r.stdout, re.M)
    assert m and 0 < float(m.group(1)) <= float(m.group(2)), r.stdout
    checked = sum(c.quick for c in bench.CASES) + 200 + 2_000
    assert lines[-1] == f"every payload checked ({checked:,}); nothing left in /dev/shm"
    assert segments.namespace_entries(name) == []


def test_a_wrong_payload_is_counted():
    fill = bench.filler(64)
    good = [bench.INDEX.pack(i) + fill for i in range(5, 9)]
    assert bench._check(good, 5, 64, fill) == 0
    assert bench._check(good, 6, 64, fill) == 4                     # out of order
    assert bench._check(good[:1] + good[2:], 5, 64, fill) == 2      # one missing
    assert bench._check([good[0][:-1] + b"x"], 5, 64, fill) == 1    # the filler
    assert bench._check([good[0] + b"x"], 5, 64, fill) == 1         # the length


def test_percentiles_are_nearest_rank():
    values = list(range(1, 101))
    assert bench._percentile(values, 50) == 50 and bench._percentile(values, 99) == 99
    assert bench._percentile([7], 99) == 7


def test_compare_hands_over_to_the_checkout_or_says_it_needs_one(monkeypatch):
    r = pymq_cli("bench", "--compare", "--help")
    if bench.compare_script() is not None:  # pymq runs from its source checkout
        assert r.returncode == 0 and r.stdout.startswith("usage: compare.py"), r.stderr
    else:  # a copy of the package alone (the sanitizer's run): it says what it needs
        assert r.returncode == 1 and "source checkout of pymq" in r.stderr, r.stderr
    monkeypatch.setattr(bench, "compare_script", lambda: None)
    with pytest.raises(cliutil.Failure, match="source checkout of pymq"):
        bench.compare([])


def test_bench_options_are_its_own():
    r = pymq_cli("bench", "--scenario", "A")  # compare.py's, not bench's: a usage error
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "pymq.bench", "--help"], capture_output=True,
                       text=True, timeout=60, env=CLEAN_ENV)
    assert r.returncode == 0 and "--quick" in r.stdout


def test_a_failing_child_is_one_line(name, monkeypatch):
    # a broker whose messages cannot hold 4 KiB: the publisher's error, on one line
    r = pymq_cli("bench", "--quick", "--name", name, env={"PYMQ_MAX_MESSAGE_BYTES": "1024"})
    one_line_error(r, "pymq bench: error:", "publisher failed", "MessageTooLarge")
    assert segments.namespace_entries(name) == []
