"""The soak, bounded for CI (issue 14): tools/soak.py for a few seconds, as
a subprocess, its exit code and its JSON (the tool says what it checks; the
hour-long run's figures are in docs/reliability.md)."""

import json
import os
import subprocess
import sys

SOAK = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                    "tools", "soak.py")


def test_a_short_soak_balances_its_accounts_and_stays_flat(name, tmp_path):
    out = tmp_path / "soak.json"
    r = subprocess.run([sys.executable, SOAK, "--duration", "6", "--interval", "1",
                        "--kill-every", "1.5", "--stop-every", "1", "--seed", "1403",
                        "--name", name, "--json", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=180)
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
    assert len(fig["samples"]) >= 6
