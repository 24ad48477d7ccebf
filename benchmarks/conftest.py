"""Fixtures of the pymq micro-benchmarks (benchmarks/test_micro.py).

Every benchmark gets a broker of its own, with a unique name and a 64 MiB ring
per topic, so that the pre-filled messages and everything a benchmark publishes
fit without the publisher ever waiting for space. The broker is closed after
the test, and the test fails if it left anything in /dev/shm.
"""

from __future__ import annotations

import itertools
import os

import pytest

import pymq

RING_BYTES = 64 * 1024 * 1024
SHM_DIR = "/dev/shm"

_serial = itertools.count()


def _leftovers(name: str) -> list[str]:
    prefix = f"pymq.{name}."
    try:
        return sorted(f for f in os.listdir(SHM_DIR) if f.startswith(prefix))
    except FileNotFoundError:
        return []


@pytest.fixture
def broker_name() -> str:
    """A broker name no other process or test uses (at most 32 characters)."""
    return f"bench-{os.getpid()}-{next(_serial)}"


@pytest.fixture
def broker(broker_name):
    """A running pymq.Broker with 64 MiB rings; closed, and checked clean, after."""
    b = pymq.Broker(pymq.BrokerConfig(name=broker_name, ring_bytes=RING_BYTES))
    try:
        yield b
    finally:
        b.close()
    assert _leftovers(broker_name) == [], f"segments left in {SHM_DIR}"
