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

