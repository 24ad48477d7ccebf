import multiprocessing
import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/workers.py for spawned processes

import pymq  # noqa: E402
from pymq import segments  # noqa: E402

MiB = 1024 * 1024


@pytest.fixture
def name():
    """A broker name of this test's own; nothing of it may be left in /dev/shm."""
    n = "t" + uuid.uuid4().hex[:12]
    yield n
    left = segments.namespace_entries(n)
    segments.remove_namespace(n)
    assert left == [], f"left in /dev/shm: {left}"


@pytest.fixture
def make_broker(name):
    brokers = []

    def make(**kw):
        kw.setdefault("ring_bytes", 1 * MiB)
        kw.setdefault("max_message_bytes", 64 * 1024)
        kw.setdefault("publish_timeout", 5.0)
        b = pymq.Broker(pymq.BrokerConfig(name=name, **kw))
        brokers.append(b)
        return b

    yield make
    for b in brokers:
        b.close()


@pytest.fixture
def broker(make_broker):
    return make_broker()


@pytest.fixture
def ctx():
    return multiprocessing.get_context("spawn")


if os.environ.get("PYMQ_EXPECT_SANITIZED"):  # make test-sanitize: be sure what runs
    assert "build/sanitize" in pymq.__file__, pymq.__file__
