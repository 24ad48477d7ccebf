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


class NatsServer:
    """A real `nats-server -js` on a free loopback port with its own store."""

    def __init__(self, binary, store):
        import socket
        self.binary, self.store = binary, str(store)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        import socket
        import subprocess
        from helpers import wait_for
        self.log = open(os.path.join(self.store + ".log"), "ab")
        self.proc = subprocess.Popen([self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                      "-sd", self.store], stdout=self.log, stderr=self.log)

        def serving():
            assert self.proc.poll() is None, "nats-server exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(serving)

    def stop(self, kill=False):
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(30)
        self.proc = None

    def restart(self):
        self.stop(kill=True)
        self.start()


@pytest.fixture
def nats_server(tmp_path):
    import shutil
    binary = shutil.which("nats-server")
    if binary is None:
        from helpers import require_or_skip
        require_or_skip("nats-server is not installed: `make system-packages` (as root) or "
                        "apt-get install nats-server")
    server = NatsServer(binary, tmp_path / "nats")
    server.start()
    yield server
    server.stop()
