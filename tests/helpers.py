"""Helpers shared by the tests (not fixtures: those are in conftest.py)."""

import time


def wait_for(predicate, timeout=30.0, interval=0.01):
    """Poll a condition (for conditions that have nothing to block on)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def join_all(procs, timeout=60):
    for p in procs:
        p.join(timeout)
        assert not p.is_alive(), f"{p.name} did not finish"
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"



def get_json(port, path, timeout=5.0):
    """(status, JSON body) of GET path on the admin server at 127.0.0.1:port;
    the timeout only bounds a hang (a test's failure), it is not a measure."""
    import http.client
    import json
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def stopped(pid):
    """True once the process is stopped (SIGSTOP, or at a test point)."""
    import psutil
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def sweeps(broker, n=3):
    """Wait until the supervisor has swept n more times."""
    seen = [broker.stats()["supervisor"]["last_sweep"]]

    def swept():
        beat = broker.stats()["supervisor"]["last_sweep"]
        if beat != seen[-1]:
            seen.append(beat)
        return len(seen) > n
    wait_for(swept)


def require_or_skip(reason):
    """Skip with the reason; but under `make test` as root, where the Makefile
    installed the system packages (PYMQ_REQUIRE_SYSTEM_PACKAGES), fail: CI must
    not pass by skipping."""
    import os
    import pytest
    if os.environ.get("PYMQ_REQUIRE_SYSTEM_PACKAGES"):
        pytest.fail(f"required here: {reason}")
    pytest.skip(reason)
