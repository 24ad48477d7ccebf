"""The soak, bounded for CI (issue 14): tools/soak.py for a few seconds, as
a subprocess, its exit code and its JSON (the tool says what it checks; the
hour-long run's figures are in docs/reliability.md)."""

import json
import os
import subprocess
import sys

SOAK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "tools", "soak.py")


def soak_env():
    """The environment of the soak: under AddressSanitizer (make test-sanitize)
    without ASan's quarantine, which keeps freed memory (up to 256 MiB) out of
    reuse by design and so grows every process's RSS for a while: a flat RSS
    could not be told from a leak."""
    env = dict(os.environ)
    if "asan" in env.get("LD_PRELOAD", ""):
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + \
            ":quarantine_size_mb=0:thread_local_quarantine_size_kb=0"
    return env


def test_a_short_soak_balances_its_accounts_and_stays_flat(name, tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, SOAK, "--duration", "5", "--interval", "1",
                        "--kill-every", "1.5", "--stop-every", "1", "--seed", "1403",
                        "--name", name, "--json", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=180, env=soak_env())
    assert r.returncode == 0, r.stdout + r.stderr
    fig = json.loads(out.read_text())
    assert fig["failures"] == []
    assert fig["published"] > 1000 and fig["log_records"] == fig["published"]
    assert fig["lost"]["archive"] == fig["lost"]["ledger"] == 0
    for g in ("archive", "ledger"):
        assert fig["groups"][g]["acked"] == fig["published"]
    plain = fig["groups"]["dashboard"]
    assert plain["reported"] == fig["published"] - fig["lost"]["dashboard"]
    assert sum(fig["kills"].values()) >= 1 and fig["stops"] >= 1
    assert all(v["flat"] for k, v in fig["flatness"].items() if k != "warm_up_s")
    t = [s["t"] for s in fig["samples"]]  # one at 0, each second, the last at the end
    assert len(t) == 6 and t[0] == 0.0 and t[-1] >= 5.0, (t, fig["harness_held_up"])
    assert all(b - a >= 0.5 for a, b in zip(t, t[1:])), (t, fig["harness_held_up"])
