"""The client API (pymq/client.py) as DESIGN.md fixes it."""

import inspect
import re
import threading
import time

import pytest

import pymq
import workers
from pymq import segments
from helpers import wait_for


def test_publish_returns_seq_and_subscriber_gets_payload(broker):
    sub = broker.subscribe("gpu-telemetry")
    assert broker.publish("gpu-telemetry", b"GPU utilization: 85%") == 1
    assert broker.publish("gpu-telemetry", bytearray(b"b")) == 2
    assert broker.publish("gpu-telemetry", memoryview(b"xcx")[1:2]) == 3
    assert broker.publish("gpu-telemetry", pymq.Message(b"m")) == 4
    assert [sub.get(timeout=5) for _ in range(4)] == [b"GPU utilization: 85%", b"b", b"c", b"m"]


def test_publish_in_c_and_in_python_is_one_method(make_broker, name):
    """Client.publish's usual case (a mapped topic, bytes, the default timeout)
    runs in C (pymq._fast.Publisher); every other call goes to the Python
    function it wraps: the same seqs, order and errors either way."""
    broker = make_broker()
    sub = broker.subscribe("t")
    client = pymq.connect(name)
    calls = [lambda: client.publish("t", b"c1"),                 # maps the topic (Python)
             lambda: client.publish("t", b"c2"),                 # C
             lambda: client.publish("t", b"c3", None),           # C
             lambda: client.publish("t", b"p4", timeout=1),      # a keyword: Python
             lambda: client.publish("t", b"p5", 1),              # a timeout: Python
             lambda: client.publish("t", bytearray(b"p6")),      # not bytes: Python
             lambda: pymq.connect(name).publish("t", b"c7")]     # a client used once
    assert [call() for call in calls] == list(range(1, 8))
    assert [sub.get(timeout=5) for _ in calls] == [b"c1", b"c2", b"c3", b"p4", b"p5", b"p6", b"c7"]
    assert pymq.Client.publish.__name__ == "publish" and "Publish one message" in client.publish.__doc__
    assert list(inspect.signature(client.publish).parameters) == ["topic", "payload", "timeout"]
    with pytest.raises(pymq.MessageTooLarge):
        client.publish("t", b"x" * (broker.config.max_message_bytes + 1))
    with pytest.raises(pymq.InvalidTopic):
        client.publish("no/such topic", b"x")
    with pytest.raises(TypeError):
        client.publish("t", 42)
    with pytest.raises(TypeError):
        client.publish("t")
    with pytest.raises(AttributeError):
        pymq.Client.publish(object(), "t", b"x")  # not a client
    client.close()
    with pytest.raises(pymq.BrokerClosed):
        client.publish("t", b"after")
    assert broker.stats()["topics"]["t"]["published"] == 7


def test_publish_many_is_one_batch_and_returns_the_last_seq(broker):
    sub = broker.subscribe("t")
    assert broker.publish_many("t", [b"a", b"b", b"c"]) == 3
    assert broker.publish_many("t", (bytes([i]) for i in range(100))) == 103
    got = []
    while len(got) < 103:
        got += sub.get_many(1000, timeout=5)
    assert got == [b"a", b"b", b"c"] + [bytes([i]) for i in range(100)]


def test_get_times_out_with_timeout(broker):
    sub = broker.subscribe("t")
    with pytest.raises(pymq.Timeout):
        sub.get(timeout=0.05)
    with pytest.raises(pymq.Timeout):
        sub.get_many(10, timeout=0)


def test_timeouts_are_converted_once_in_c(broker):
    """Seconds become ns in one place, pymq._fast (get() is the reader's C
    method itself): None is for ever, past 2**63 ns is for ever too, and
    anything but a number >= 0 is a ValueError (bool included)."""
    conv = pymq._core.timeout_ns
    assert [conv(t) for t in (None, 0, 1.5, 2, 10**30, float("inf"))] == \
        [-1, 0, 1_500_000_000, 2_000_000_000, 2**63 - 1, 2**63 - 1]
    sub = broker.subscribe("t")
    for bad in (-1, -0.5, float("nan"), True, "1", -(10**30)):
        with pytest.raises(ValueError, match="timeout must be a number >= 0 or None"):
            conv(bad)
        for read in (sub.get, lambda t: sub.get_many(2, t), lambda t: sub.get_batch(2, t)):
            with pytest.raises(ValueError, match="timeout must be a number >= 0 or None"):
                read(bad)
    with pytest.raises(TypeError):
        sub.get(1, 2)
    with pytest.raises(TypeError):
        sub.get(tmo=1)
    broker.publish_many("t", [b"x", b"y", b"z", b"w"])
    assert (sub.get(timeout=float("inf")), sub.get(None)) == (b"x", b"y")
    assert sub.get_many(1, float("inf")) == [b"z"]
    assert bytes(sub.get_batch(1, 10**30).data) == b"w"


def test_subscribe_sees_only_later_messages_unless_earliest(broker):
    broker.publish("t", b"old")
    late = broker.subscribe("t")
    early = broker.subscribe("t", start="earliest")
    from_seq = broker.subscribe("t", start=2)
    broker.publish("t", b"new")
    assert late.get_many(10, timeout=1) == [b"new"]
    assert early.get_many(10, timeout=1) == [b"old", b"new"]
    assert from_seq.get_many(10, timeout=1) == [b"new"]


def test_bad_inputs_raise_documented_errors_and_broker_keeps_working(broker):
    for topic in ["", ".hidden", "a/b", "x" * 201, "sp ace", None, 5]:
        with pytest.raises(pymq.InvalidTopic):
            broker.publish(topic, b"x")
    with pytest.raises(ValueError):  # InvalidTopic is a ValueError too
        broker.subscribe("bad/topic")
    for payload in ["text", 12, None, object()]:
        with pytest.raises(TypeError):
            broker.publish("t", payload)
    with pytest.raises(pymq.MessageTooLarge):
        broker.publish("t", b"x" * (broker.config.max_message_bytes + 1))
    with pytest.raises(ValueError):
        broker.publish_many("t", [])
    with pytest.raises(ValueError):
        broker.subscribe("t", start="middle")
    with pytest.raises(ValueError):
        broker.subscribe("t", start=0)
    with pytest.raises(pymq.InvalidName) as bad_group:
        broker.subscribe("t", group="no/slash")
    assert not isinstance(bad_group.value, pymq.InvalidTopic)
    sub = broker.subscribe("t")
    with pytest.raises(ValueError):
        sub.get(timeout=-1)
    with pytest.raises(ValueError):
        sub.get_many(0)
    assert issubclass(pymq.MessageTooLarge, ValueError) and issubclass(pymq.InvalidTopic, ValueError)
    broker.publish("t", b"still works")
    assert sub.get(timeout=1) == b"still works"


def test_topic_name_rules(broker):
    for ok in ["a", "A-Z_0.9", "x" * 200, "gpu-telemetry.dlq", "_x", "x" * 200 + ".dlq",
               "x" * 200 + ".dlq.dlq"]:
        broker.publish(ok, b"x")
    for bad in ["x" * 201 + ".dlq", "x" * 200 + ".dlx", "x" * 200 + ".dlq" * 5]:
        with pytest.raises(pymq.InvalidTopic):
            broker.publish(bad, b"x")
    assert set(broker.topics()) >= {"a", "gpu-telemetry.dlq"}


def test_connect_to_missing_broker_raises_broker_not_found():
    with pytest.raises(pymq.BrokerNotFound):
        pymq.connect("no-such-broker-here")
    with pytest.raises(pymq.InvalidName) as bad:
        pymq.connect("bad name")
    assert not isinstance(bad.value, pymq.InvalidTopic)


def test_second_broker_of_a_live_name_is_refused(broker, name):
    with pytest.raises(pymq.BrokerExists, match="already running"):
        pymq.Broker(pymq.BrokerConfig(name=name))
    broker.publish("t", b"still serving")


def test_client_reads_config_from_shared_memory(broker, name):
    c = pymq.connect(name)
    assert c.config == broker.config
    c.close()


def test_close_ends_iteration_and_publish_raises_broker_closed(make_broker, name):
    broker = make_broker()
    c = pymq.connect(name)
    sub = c.subscribe("t")
    got = []
    t = threading.Thread(target=lambda: got.extend(sub))
    t.start()
    broker.publish("t", b"one")
    wait_for(lambda: got)
    broker.close()
    t.join(10)
    assert not t.is_alive() and got == [b"one"]
    with pytest.raises(pymq.BrokerClosed):
        c.publish("t", b"x")
    with pytest.raises(pymq.BrokerClosed):
        broker.publish("new-topic", b"x")
    broker.close()  # idempotent
    c.close()
    c.close()


def test_what_an_anonymous_loop_read_ahead_goes_to_the_next_call_of_each_kind(broker):
    """An anonymous subscription's loop reads ahead (1,024 at a time) and hands
    its items out one by one; whatever it read and did not hand out goes, in
    order and once, to the next get, get_many, get_batch (with the messages'
    seqs and publish times), async loop or loop, across read-aheads, sync and
    async."""
    import asyncio
    sub = broker.subscribe("t")
    want = [b"m%d" % i for i in range(3000)]
    broker.publish_many("t", want)

    def take(it, n):  # n items and not one more (zip asks range first)
        return [item for _, item in zip(range(n), it)]

    async def atake(n):
        got = []
        async for item in sub:
            got.append(item)
            if len(got) == n:
                break
        return got

    def batch(n):  # its payloads; its seqs and publish times those of the messages
        b = sub.get_batch(n, timeout=5)
        assert b.seqs.tolist() == list(range(len(got) + 1, len(got) + n + 1))
        assert all(t > 1e9 for t in b.publish_times)
        return b.payloads()

    got = take(iter(sub), 10)
    got.append(sub.get(timeout=5))
    got += sub.get_many(5, timeout=5)
    got += batch(3)
    got += asyncio.run(atake(7))
    got += take(iter(sub), 1024 - len(got))  # the first read-ahead, to its end
    got += asyncio.run(atake(7))             # an async one
    got += batch(3)
    got += take(iter(sub), 1000)             # to the next (sync) read-ahead
    got += batch(5)
    got += take(iter(sub), 3000 - len(got))
    assert got == want
    with pytest.raises(pymq.Timeout):
        sub.get(timeout=0.05)


def test_unsubscribe_ends_iteration_and_get_raises(broker):
    sub = broker.subscribe("t")
    got = []
    t = threading.Thread(target=lambda: got.extend(sub))
    t.start()
    broker.publish("t", b"a")
    wait_for(lambda: got)
    sub.unsubscribe()
    t.join(10)
    assert not t.is_alive() and got == [b"a"]
    with pytest.raises(pymq.SubscriptionClosed):
        sub.get(timeout=0)
    sub.unsubscribe()  # idempotent


def test_subscription_and_client_are_context_managers(broker, name):
    with pymq.connect(name) as c:
        with c.subscribe("t") as sub:
            broker.publish("t", b"x")
            assert sub.get(timeout=1) == b"x"
        assert broker.stats()["topics"]["t"]["groups"] == {}


def test_stats_count_published_and_delivered_per_group(broker):
    a = broker.subscribe("t", group="ga")
    broker.subscribe("t", group="gb")
    broker.publish_many("t", [b"x" * 10] * 7)
    assert len(a.get_many(100, timeout=1)) == 7
    s = broker.stats()
    t = s["topics"]["t"]
    assert (s["published"], t["published"], t["published_bytes"]) == (7, 7, 70)
    assert t["groups"]["ga"]["delivered"] == 7 and t["groups"]["ga"]["lag"] == 0
    assert t["groups"]["gb"]["delivered"] == 0 and t["groups"]["gb"]["lag"] == 7
    assert t["depth"] == 7 and t["ring_bytes_used"] > 0
    assert t["ring_bytes_capacity"] == broker.config.ring_capacity
    assert s["supervisor"]["pid"] == broker.supervisor_pid


def test_full_ring_refuses_after_timeout_and_counts(make_broker):
    broker = make_broker(ring_bytes=65536, max_message_bytes=1024)
    sub = broker.subscribe("t")
    sent = 0
    with pytest.raises(pymq.Full):
        while True:
            broker.publish("t", b"%08d" % sent + b"x" * 500, timeout=0.01)
            sent += 1
    t = broker.stats()["topics"]["t"]
    assert t["publish_refusals"] == 1 and t["publish_waits"] == 1
    got = []
    while len(got) < sent:
        got += sub.get_many(1000, timeout=1)
    assert [int(p[:8]) for p in got] == list(range(sent))  # nothing lost


def test_publisher_blocked_on_full_ring_proceeds_when_space_frees(make_broker):
    broker = make_broker(ring_bytes=65536, max_message_bytes=1024)
    sub = broker.subscribe("t")
    while True:
        try:
            broker.publish("t", b"x" * 500, timeout=0)
        except pymq.Full:
            break
    done = threading.Event()

    def blocked():
        broker.publish("t", b"last".ljust(500), timeout=30)
        done.set()
    t = threading.Thread(target=blocked)
    t.start()
    assert not done.wait(0.1)
    got = []
    while not got or got[-1] != b"last".ljust(500):
        got += sub.get_many(1000, timeout=5)
    t.join(5)
    assert done.is_set()


def test_message_ack_is_a_no_op_without_ack_and_calls_it_otherwise():
    pymq.Message(b"x").ack()
    called = []
    pymq.Message(b"x", lambda: called.append(1)).ack()
    assert called == [1]


def test_default_config_mirrors_the_seed():
    cfg = pymq.default_broker_config()
    assert cfg == pymq.BrokerConfig()
    assert (cfg.ack_timeout, cfg.max_retries, cfg.persistence_dir) == (30.0, 3, "/data/mq")
    assert (cfg.admin_host, cfg.admin_port, cfg.persistence_enabled) == ("127.0.0.1", None, False)


def test_config_from_env():
    env = {"PYMQ_NAME": "k8s", "PYMQ_PERSISTENCE_ENABLED": "true", "PYMQ_ACK_TIMEOUT": "2.5",
           "PYMQ_MAX_RETRIES": "5", "PYMQ_RING_BYTES": "65536", "PYMQ_MAX_MESSAGE_BYTES": "1000",
           "PYMQ_ADMIN_PORT": "8080", "PYMQ_PUBLISH_TIMEOUT": "0.5"}
    cfg = pymq.BrokerConfig.from_env(env)
    assert (cfg.name, cfg.persistence_enabled, cfg.ack_timeout, cfg.max_retries) == ("k8s", True, 2.5, 5)
    assert (cfg.ring_bytes, cfg.max_message_bytes, cfg.admin_port, cfg.publish_timeout) == (65536, 1000, 8080, 0.5)
    with pytest.raises(ValueError, match="PYMQ_MAX_RETRIES"):
        pymq.BrokerConfig.from_env({"PYMQ_MAX_RETRIES": "many"})
    with pytest.raises(ValueError):
        pymq.BrokerConfig(ring_bytes=4096, max_message_bytes=4096)
    with pytest.raises(pymq.InvalidName):
        pymq.BrokerConfig(name="x" * 33)
    assert pymq.BrokerConfig(ring_bytes=5000, max_message_bytes=100).ring_capacity == 8192
    assert pymq.BrokerConfig().max_message_bytes == 1024 * 1024
    assert pymq.BrokerConfig(ring_bytes=65536).max_message_bytes == 32768 - 32  # fits the ring


def test_segments_are_owner_only(broker, name):
    import os
    broker.publish("t", b"x")
    from pymq import segments
    for e in segments.namespace_entries(name):
        assert os.stat("/dev/shm/" + e).st_mode & 0o777 == 0o600, e


def test_publish_many_takes_any_bytes_like_list_tuple_or_iterable(broker):
    """publish_many copies a list or tuple of bytes once in C (pymq._fast) and
    converts anything else first; every form publishes the same bytes."""
    class Sub(bytes):
        pass
    sub = broker.subscribe("t")
    forms = [[b"a", b"", b"bc"], (b"d", b"e"), [bytearray(b"f"), memoryview(b"xgx")[1:2], Sub(b"h")],
             [pymq.Message(b"i")], (p for p in [b"j", b"k"])]
    for form in forms:
        broker.publish_many("t", form)
    assert sub.get_many(100, timeout=5) == [b"a", b"", b"bc", b"d", b"e", b"f", b"g", b"h", b"i",
                                             b"j", b"k"]
    with pytest.raises(TypeError):
        broker.publish_many("t", [b"ok", 3])
    with pytest.raises(ValueError):
        broker.publish_many("t", iter([]))


def test_publish_many_of_any_batch_size_arrives_whole_and_in_order(broker):
    """pymq._fast.publish hands the ring each bytes object's own buffer (no
    copy): up to 64 from the stack, more from the heap; sizes 0 to 5000."""
    import random
    rnd = random.Random(6)
    sub = broker.subscribe("t")
    batches = [[rnd.randbytes(rnd.choice((0, 1, 7, 64, 5000))) for _ in range(n)]
               for n in (1, 63, 64, 65, 300)]
    seqs = [broker.publish_many("t", tuple(b) if len(b) == 65 else b) for b in batches]
    want = [p for b in batches for p in b]
    got = []
    while len(got) < len(want):
        got += sub.get_many(1000, timeout=5)
    assert got == want
    assert [s2 - s1 for s1, s2 in zip(seqs, seqs[1:])] == [len(b) for b in batches[1:]]


def test_the_fast_path_refuses_what_it_cannot_take():
    from pymq import _core, _fast
    api = int(_core.ffi.cast("uintptr_t", _core.lib.pmq_api()))
    _fast.bind(api, _core.error_from_c)  # the same again: a no-op
    with pytest.raises(TypeError):  # not callable
        _fast.bind(api, None)
    with pytest.raises(RuntimeError, match="bound already"):  # one for the process
        _fast.bind(api, lambda *a: None)
    with pytest.raises(ImportError, match="make clean"):  # a table of another build
        table = _core.ffi.new("pmq_api_t *")
        table.version, table.size, table.layout = 1, 0, 0
        _fast.bind(int(_core.ffi.cast("uintptr_t", table)), _core.error_from_c)
    with pytest.raises(TypeError):
        _fast.publish1(1, "t", "not bytes", 0)
    with pytest.raises(TypeError):
        _fast.publish1(1, "t")  # too few arguments
    with pytest.raises(TypeError):
        _fast.Reader(1, 2, 3)
    with pytest.raises(OverflowError):
        _fast.Reader(1, 2**40, 0, 0, 0, False, 16, 4096, None, "t")  # a member above 32 bits


def test_only_core_imports_compiled_code():
    """pymq._native and pymq._fast are _core's alone (Trio's test_exports)."""
    import ast
    import pathlib
    root = pathlib.Path(pymq.__file__).parent
    users = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) \
                else []
            module = getattr(node, "module", None) or ""
            if any(n.lstrip(".").split(".")[-1] in ("_native", "_fast", "_codec") for n in names) or \
                    module.split(".")[-1] in ("_native", "_fast", "_codec"):
                users.append(path.relative_to(root).as_posix())
    assert users == ["_core.py"]


def test_a_stale_build_is_an_import_error_that_says_make_clean(tmp_path):
    """The build id compiled into both modules is a hash of native/: a source
    changed since the build makes the import fail, naming make clean."""
    import shutil
    import subprocess
    import sys
    root = pathlib_root()
    copy = tmp_path / "src"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".venv", "build", ".git", "data",
                                                                "*.egg-info", "__pycache__"))
    run = [sys.executable, "-c", "import pymq"]
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("PYMQ_SKIP_BUILD_CHECK", "PYTHONPATH")}  # the copy, not the package under test
    assert subprocess.run(run, cwd=copy, env=env, capture_output=True).returncode == 0
    ring_c = copy / "native" / "ring" / "ring.c"
    ring_c.write_text(ring_c.read_text() + "\n/* an edit */\n")
    r = subprocess.run(run, cwd=copy, env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "were built from other sources" in r.stderr and "make clean" in r.stderr


def pathlib_root():
    """The source checkout these tests belong to (not where pymq was imported
    from: the sanitizer's run imports a copy of the package alone)."""
    import pathlib
    return pathlib.Path(__file__).resolve().parent.parent


def test_stale_removal_spares_a_broker_that_is_starting_and_removes_an_abandoned_one(name):
    import os
    import posix_ipc
    from pymq import broker as broker_mod, segments
    shm = posix_ipc.SharedMemory(segments.ns_shm_name(name), posix_ipc.O_CREX, mode=0o600, size=0)
    shm.close_fd()
    with pytest.raises(pymq.MQError, match="starting"):
        broker_mod.remove_stale(name)
    old = os.path.getmtime("/dev/shm" + segments.ns_shm_name(name)) - 60
    os.utime("/dev/shm" + segments.ns_shm_name(name), (old, old))
    assert broker_mod.remove_stale(name) == [segments.ns_shm_name(name).lstrip("/")]


def test_unsubscribe_from_another_thread_always_ends_a_blocked_get(broker):
    """The leave and the reader's sleep race; every round must end the get."""
    for _ in range(200):
        sub = broker.subscribe("t")
        outcome = []

        def read():
            try:
                sub.get(timeout=None)
            except pymq.SubscriptionClosed:
                outcome.append("closed")
        t = threading.Thread(target=read)
        t.start()
        sub.unsubscribe()
        t.join(30)
        assert not t.is_alive() and outcome == ["closed"]


def test_a_corrupt_topic_segment_is_a_segment_mismatch_and_others_go_on(broker, name):
    broker.publish("bad", b"x")
    broker.publish("good", b"x")
    with open(f"/dev/shm/pymq.{name}.bad", "r+b") as f:
        f.write(b"GARBAGE!")  # the magic
    c = pymq.connect(name)  # a fresh process's view: it attaches anew
    with pytest.raises(pymq.SegmentMismatch):
        c.publish("bad", b"y")
    with pytest.raises(pymq.SegmentMismatch):
        c.subscribe("bad")
    assert c.publish("good", b"y") == 2  # the broker keeps working
    c.close()


# -- a failed call creates nothing --------------------------------------------------------

@pytest.mark.parametrize("call, exc", [
    (lambda b: b.publish("t", "text"), TypeError),
    (lambda b: b.publish("t", b"x" * (b.config.max_message_bytes + 1)), pymq.MessageTooLarge),
    (lambda b: b.publish("t", b"x", timeout=-1), ValueError),
    (lambda b: b.publish_many("t", [b"ok", 5]), TypeError),
    (lambda b: b.publish_many("t", []), ValueError),
    (lambda b: b.publish_many("t", [b"ok", b"x" * (b.config.max_message_bytes + 1)]),
     pymq.MessageTooLarge),
    (lambda b: b.subscribe("t", group="bad/name"), pymq.InvalidName),
    (lambda b: b.subscribe("t", start="middle"), ValueError),
    (lambda b: b.subscribe_with_ack("t", start=0), ValueError),
    (lambda b: b.subscribe_with_ack("t", start=True), ValueError),
])
def test_a_call_that_fails_creates_no_topic(broker, name, call, exc):
    with pytest.raises(exc):
        call(broker)
    assert broker.topics() == []
    assert [e for e in segments.namespace_entries(name) if ".." not in e] == []


# -- the environment, as Kubernetes users set it -------------------------------------------

def test_connect_and_broker_without_a_name_take_pymq_name(name, ctx, monkeypatch):
    ready = ctx.Event()
    p = ctx.Process(target=workers.broker_in_a_process, args=(name, ready, True))
    p.start()
    try:
        assert ready.wait(30)
        monkeypatch.setenv("PYMQ_NAME", name)
        with pymq.connect() as client:  # no name: $PYMQ_NAME
            assert client.name == name
            assert client.subscribe("t", start="earliest").get(timeout=5) == b"first"
    finally:
        p.kill()
        p.join()
        pymq.broker.remove_stale(name)  # what `pymq clean` does after a dead broker
    assert pymq.Broker.__init__.__doc__ and "from_env" in pymq.Broker.__init__.__doc__


def test_connect_waits_for_a_broker_that_is_starting(name, ctx):
    with pytest.raises(pymq.BrokerNotFound):
        pymq.connect(name)
    got = []
    t = threading.Thread(target=lambda: got.append(pymq.connect(name, wait=60)))
    t.start()
    ready = ctx.Event()
    p = ctx.Process(target=workers.broker_in_a_process, args=(name, ready))
    p.start()
    try:
        t.join(90)
        assert got and got[0].name == name
        assert got[0].subscribe("t", start="earliest").get(timeout=5) == b"first"
        got[0].close()
    finally:
        p.kill()
        p.join()
        pymq.broker.remove_stale(name)
    with pytest.raises(pymq.BrokerNotFound, match="within 0.1 s"):
        pymq.connect("not-there", wait=0.1)
    with pytest.raises(ValueError):
        pymq.connect(name, wait=-1)


def test_a_client_whose_broker_was_replaced_gets_broker_closed(name, ctx):
    ready = ctx.Event()
    p = ctx.Process(target=workers.broker_in_a_process, args=(name, ready))
    p.start()
    assert ready.wait(30)
    old = pymq.connect(name)
    sub = old.subscribe("t", start="earliest")
    assert sub.get(timeout=5) == b"first"
    p.kill()  # the broker's container was restarted ...
    p.join()
    new = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=65536, max_message_bytes=1024))
    try:  # ... and a new broker stands where it stood: the old client never goes on silently
        with pytest.raises(pymq.BrokerClosed):
            old.publish("t", b"lost?")
        with pytest.raises(pymq.BrokerClosed):
            sub.get(timeout=0)
        with pytest.raises(pymq.BrokerClosed):
            old.subscribe("other")
        with pytest.raises(pymq.BrokerClosed):
            old.stats()
        with pymq.connect(name) as fresh:  # reconnecting is the answer
            fresh.publish("t", b"after")
        assert new.stats()["topics"]["t"]["published"] == 1
    finally:
        old.close()
        new.close()


# -- errors that say what happened ----------------------------------------------------------

def test_errors_name_the_time_size_and_limit(make_broker):
    b = make_broker(ring_bytes=4096, max_message_bytes=1000, publish_timeout=0.05)
    sub = b.subscribe("t", group="g")
    with pytest.raises(pymq.Timeout, match=r"within 0\.05 s") as e:
        sub.get(timeout=0.05)
    assert isinstance(e.value, TimeoutError) and isinstance(e.value, pymq.MQError)
    with pytest.raises(pymq.MessageTooLarge, match=r"1,001 bytes is over max_message_bytes \(1,000\)"):
        b.publish("t", b"x" * 1001)
    with pytest.raises(pymq.MessageTooLarge, match=r"batch .* does not fit the ring \(4,096 bytes\)"):
        b.publish_many("t", [b"x" * 1000] * 5)
    while True:
        try:
            b.publish("t", b"x" * 900, timeout=0.05)
        except pymq.Full as full:
            assert "no ring space for 900 bytes within 0.05 s (ring capacity 4,096 bytes)" in str(full)
            break
    with pytest.raises(pymq.GroupKindMismatch, match="made by subscribe") as kind:
        b.subscribe_with_ack("t", group="g")
    assert isinstance(kind.value, ValueError)


def test_out_of_group_slots_is_limit_exceeded(broker):
    subs = [broker.subscribe("t", group=f"g{i}") for i in range(64)]
    with pytest.raises(pymq.LimitExceeded, match="64 groups"):
        broker.subscribe("t", group="one-more")
    subs[0].close()
    broker.delete_group("t", "g0")
    broker.subscribe("t", group="one-more")


def test_no_module_raises_mqerror_itself():
    import pathlib
    root = pathlib.Path(pymq.__file__).parent
    bare = [f"{p.name}:{i}" for p in root.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"raise (errors\.)?MQError\(", line)]
    assert bare == []


PUBLIC = [pymq.Client, pymq.Broker, pymq.Subscription, pymq.AckSubscription]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_public_method_says_what_it_raises(cls):
    quiet = {"close", "unsubscribe"}  # idempotent; they raise nothing
    missing = [n for n, f in vars(cls).items() if callable(f) and not n.startswith("_")
               and n not in quiet and "aises" not in (f.__doc__ or "")]
    assert missing == []
    assert "aises" in (pymq.connect.__doc__ or "")


def test_elsewhere_than_linux_the_import_says_why():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import sys; sys.platform = 'darwin'; import pymq"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "ImportError: pymq runs on Linux only, not darwin: it needs futexes, robust " \
           "process-shared mutexes and a /dev/shm tmpfs" in r.stderr
