"""Persistence (pymq/persistence.py): the writer, its files, rotation, retention."""

import base64
import glob
import json
import os
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pymq
from helpers import sweeps, wait_for
from pymq import _core, persistence
from pymq.errors import MQError

KiB = 1024


@pytest.fixture
def pdir(tmp_path):
    return str(tmp_path / "mq")


def log_lines(pdir, topic):
    files = sorted(glob.glob(os.path.join(pdir, topic, "*.jsonl")))
    return files, [json.loads(line) for f in files for line in open(f, "rb")]


def persisted(broker, topic):
    g = broker.stats()["topics"][topic]["groups"]["~persist"]
    return g["acked"] if g["lag"] == 0 and g["pending"] == 0 else -1


def test_every_message_is_written_as_a_json_line(make_broker, pdir):
    broker = make_broker(persistence_enabled=True, persistence_dir=pdir)
    payloads = [os.urandom(i % 300) for i in range(500)] + [b"", b"\x00\xff" * 100]
    for p in payloads[:100]:
        broker.publish("t", p)
    broker.publish_many("t", payloads[100:])
    broker.close()  # drains persistence first
    files, lines = log_lines(pdir, "t")
    assert [r["seq"] for r in lines] == list(range(1, len(payloads) + 1))
    assert [base64.b64decode(r["payload"]) for r in lines] == payloads
    assert all(isinstance(r["ts"], float) and r["ts"] > 1.7e9 for r in lines)
    assert os.stat(os.path.join(pdir, "t")).st_mode & 0o777 == 0o700
    assert all(os.stat(f).st_mode & 0o777 == 0o600 for f in files)
    assert os.stat(pdir).st_mode & 0o777 == 0o700


def reference_line(seq, ts_ns, payload):
    """A log line as the seed's format defines it, built the slow, obvious way."""
    us = ts_ns // 1000
    return b'{"seq":%d,"ts":%d.%06d,"payload":"%s"}\n' % (
        seq, us // 10**6, us % 10**6, base64.b64encode(payload))


def fill(batch, records):
    off = 0
    for i, (seq, ts, p) in enumerate(records):
        batch.buf[off:off + len(p)] = p
        batch.offs[i], batch.lens[i], batch.seqs[i], batch.ts[i] = off, len(p), seq, ts
        off += len(p)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**63 - 1),
                          st.binary(max_size=300)), min_size=1, max_size=64))
def test_the_native_encoder_writes_exactly_the_reference_lines(records):
    batch = _core.Batch(64, 64 * 300)
    fill(batch, records)
    lines = _core.Lines(batch)
    ends = lines.encode(0, len(records), (batch.buf, batch.buflen))
    assert len(ends) == len(records)
    want = [reference_line(*r) for r in records]
    got = bytes(lines.view[:ends[-1]])
    assert got == b"".join(want)
    assert ends == [sum(map(len, want[:i + 1])) for i in range(len(records))]
    for line, (seq, _, payload) in zip(got.splitlines(), records):
        rec = json.loads(line)
        assert (rec["seq"], base64.b64decode(rec["payload"], validate=True)) == (seq, payload)


def test_the_native_encoder_refuses_a_record_outside_its_buffer():
    batch = _core.Batch(4, 1024)
    fill(batch, [(1, 0, b"ok"), (2, 0, b"x" * 10)])
    lines = _core.Lines(batch)
    batch.offs[1] = 1020  # 10 bytes from 1020 end past the 1024-byte buffer
    whole = (batch.buf, batch.buflen)
    with pytest.raises(MQError, match="seq 2"):
        lines.encode(1, 2, whole)
    assert len(lines.encode(0, 1, whole)) == 1  # the one before it is fine
    batch.offs[1], batch.lens[1] = 2**64 - 1, 4  # an offset that would wrap
    with pytest.raises(MQError):
        lines.encode(1, 2, whole)


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policies(tmp_path, monkeypatch, policy):
    """always: inline after every batch; interval: on a thread of its own (the
    writer goes on), each file's last one at rotation; never: only at close."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    cfg = pymq.BrokerConfig(persistence_fsync=policy, persistence_fsync_interval=1e-9,
                            persistence_segment_bytes=4 * KiB)
    log = persistence.TopicLog(str(tmp_path), "t", cfg)
    batch = _core.Batch(64, 64 * 1024)
    lines = _core.Lines(batch)
    seq = 1
    for _ in range(6):  # 6 batches of 20 lines of ~0.2 KiB: about 6 files
        fill(batch, [(seq + i, 10**18, b"p" * 100) for i in range(20)])
        persistence.write_lines(lines, log, 20, (batch.buf, batch.buflen))
        if policy == "interval":
            assert log._behind is not None and log._behind.name == "pymq-fsync"
        seq += 20
    log.close()
    files = [os.path.join(log.dir, f) for f in log.files()]
    assert len(files) >= 5
    assert sum(1 for f in files for _ in open(f, "rb")) == 120
    if policy == "always":  # after every batch, and a file's lines before it rotates mid-batch
        assert set(synced) == set(files) and len(synced) >= 6
    elif policy == "interval":
        assert set(synced) == set(files)  # every file, also those rotated away
        assert log.fsyncs == len(synced) and log._behind is None
    else:
        assert synced == [files[-1]]  # the open file, at close


def test_a_message_leaves_the_ring_only_once_on_disk(make_broker, pdir):
    broker = make_broker(ring_bytes=64 * KiB, max_message_bytes=4 * KiB,
                         persistence_enabled=True, persistence_dir=pdir)
    n = 3000  # about 3 MB through a 64 KiB ring with no subscriber at all
    for i in range(0, n, 10):
        broker.publish_many("t", [b"%06d" % (i + k) + b"x" * 994 for k in range(10)], timeout=30)
    wait_for(lambda: persisted(broker, "t") == n)
    broker.close()
    _, lines = log_lines(pdir, "t")
    assert [int(base64.b64decode(r["payload"])[:6]) for r in lines] == list(range(n))


def test_files_rotate_by_size_and_are_named_by_their_first_seq(make_broker, pdir):
    broker = make_broker(persistence_enabled=True, persistence_dir=pdir,
                         persistence_segment_bytes=8 * KiB)
    for i in range(400):
        broker.publish("t", b"y" * 100)
    broker.close()
    files, lines = log_lines(pdir, "t")
    assert len(files) > 3
    assert all(os.path.getsize(f) <= 8 * KiB for f in files)  # a line that does not fit starts a file
    assert [r["seq"] for r in lines] == list(range(1, 401))
    for f in files:
        first = json.loads(open(f, "rb").readline())["seq"]
        assert os.path.basename(f) == f"{first:020d}.jsonl"


def test_retention_by_size_and_age_removes_the_oldest_files(make_broker, pdir):
    broker = make_broker(persistence_enabled=True, persistence_dir=pdir,
                         persistence_segment_bytes=8 * KiB, persistence_retention_bytes=24 * KiB)
    broker.publish_many("t", [b"z" * 100] * 1000)
    wait_for(lambda: persisted(broker, "t") == 1000)
    files, lines = log_lines(pdir, "t")
    total = sum(os.path.getsize(f) for f in files)
    assert total <= 24 * KiB + 8 * KiB + 200  # the limit, plus the file being written
    assert lines[-1]["seq"] == 1000 and [r["seq"] for r in lines] == list(range(lines[0]["seq"], 1001))
    broker.close()


def test_retention_by_age(make_broker, pdir):
    broker = make_broker(persistence_enabled=True, persistence_dir=pdir,
                         persistence_segment_bytes=4 * KiB, persistence_retention_seconds=3600)
    broker.publish_many("t", [b"a" * 100] * 100)
    wait_for(lambda: persisted(broker, "t") == 100)
    old, _ = log_lines(pdir, "t")
    for f in old:
        os.utime(f, (1, 1))  # a day (and more) old
    broker.publish_many("t", [b"b" * 100] * 100)  # rotates: retention runs
    wait_for(lambda: persisted(broker, "t") == 200)
    broker.close()
    files, lines = log_lines(pdir, "t")
    assert not set(old[:-1]) & set(files)  # the old closed files went
    assert lines[-1]["seq"] == 200


def test_writer_killed_mid_batch_loses_nothing_and_writes_no_line_twice(make_broker, pdir):
    """The supervisor (and its writer) SIGKILLed at arbitrary instants while it
    writes: the next writer cuts a torn line, starts only once the dead one's
    member is reaped (its batch comes first) and skips what is on disk."""
    broker = make_broker(persistence_enabled=True, persistence_dir=pdir)
    n = 0
    for kill in range(1, 6):
        broker.publish_many("t", [b"%d" % i for i in range(n, n + 2000)], timeout=30)
        n += 2000
        wait_for(lambda: broker.stats()["topics"]["t"]["groups"]["~persist"]["acked"] > n - 2000,
                 interval=0.0005)  # it is writing this round's now
        os.kill(broker.supervisor_pid, signal.SIGKILL)
        wait_for(lambda: broker.stats()["supervisor"]["restarts"] == kill)
        sweeps(broker, 2)  # the next one serves (a kill at its start would be another case)
    # all on disk: nothing left for "~persist" (its acked figure may fall short by
    # the deliveries of an ack call killed part-way: the figure, not the work)
    wait_for(lambda: (lambda g: g["lag"] + g["pending"] == 0)(
        broker.stats()["topics"]["t"]["groups"]["~persist"]))
    broker.close()
    _, lines = log_lines(pdir, "t")
    assert [r["seq"] for r in lines] == list(range(1, n + 1))  # each once, in order
    assert [base64.b64decode(r["payload"]) for r in lines] == [b"%d" % i for i in range(n)]


def test_unusable_persistence_dir_is_a_clear_error_at_start(name, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(pymq.MQError, match="persistence_dir"):
        pymq.Broker(pymq.BrokerConfig(name=name, persistence_enabled=True,
                                      persistence_dir=str(blocker / "mq")))


def test_persistence_settings_are_validated():
    with pytest.raises(ValueError):
        pymq.BrokerConfig(persistence_fsync="sometimes")
    with pytest.raises(ValueError):
        pymq.BrokerConfig(persistence_segment_bytes=0)
    cfg = pymq.BrokerConfig.from_env({"PYMQ_PERSISTENCE_FSYNC": "always",
                                      "PYMQ_PERSISTENCE_SEGMENT_BYTES": "1048576"})
    assert (cfg.persistence_fsync, cfg.persistence_segment_bytes) == ("always", 1048576)


# -- restarts ------------------------------------------------------------------------

def cfg_for(name, pdir, **kw):
    kw.setdefault("ring_bytes", 1 << 20)
    return pymq.BrokerConfig(name=name, persistence_enabled=True, persistence_dir=pdir, **kw)


def drain_group(broker, topic, group, timeout=2.0):
    sub = broker.subscribe_with_ack(topic, group=group)
    got = []
    while True:
        try:
            got += sub.get_many(1024, timeout=timeout)
        except pymq.Timeout:
            return sub, got


def test_clean_restart_redelivers_exactly_what_was_not_acked(name, pdir):
    b = pymq.Broker(cfg_for(name, pdir))
    sub = b.subscribe_with_ack("t", group="g")
    b.subscribe("t", group="plain")  # a durable plain group that read nothing
    b.publish_many("t", [b"m%d" % i for i in range(100)])
    got = sub.get_many(60, timeout=5)
    sub.ack_many(got[:30] + got[40:50])  # 1-30 and 41-50 acked; 31-40 and 51-60 in flight
    b.close()
    b = pymq.Broker(cfg_for(name, pdir))
    try:
        _, again = drain_group(b, "t", "g")
        want = list(range(31, 41)) + list(range(51, 101))
        assert sorted(m.seq for m in again) == want
        assert all(m.payload == b"m%d" % (m.seq - 1) for m in again)
        plain = b.subscribe("t", group="plain")
        assert len(plain.get_many(1024, timeout=5)) == 100  # a plain group from where it was
        assert b.publish("t", b"next") == 101  # seqs go on
    finally:
        b.close()


def test_crash_of_every_process_then_restart_loses_nothing(name, pdir, ctx):
    ready = ctx.Event()
    p = ctx.Process(target=__import__("workers").persistent_broker_then_hang,
                    args=(name, pdir, 500, 200, ready))
    p.start()
    assert ready.wait(60)
    from pymq import segments
    sup = [int(open(f"/proc/{c}/stat").read().split()[0]) for c in os.listdir("/proc")
           if c.isdigit() and open(f"/proc/{c}/stat").read().split()[3] == str(p.pid)]
    for pid in [p.pid] + sup:
        os.kill(pid, signal.SIGKILL)  # every process of the broker, at once
    p.join(10)
    wait_for(lambda: all(not os.path.exists(f"/proc/{pid}") for pid in sup))
    assert segments.namespace_entries(name)  # shared memory survived the crash
    b = pymq.Broker(cfg_for(name, pdir))
    try:
        _, again = drain_group(b, "t", "g")
        assert sorted(m.seq for m in again) == list(range(201, 501))  # none lost, none acked twice
    finally:
        b.close()


def test_reboot_restart_from_disk_alone(name, pdir, ctx):
    ready = ctx.Event()
    p = ctx.Process(target=__import__("workers").persistent_broker_then_hang,
                    args=(name, pdir, 300, 120, ready))
    p.start()
    assert ready.wait(60)

    def checkpointed():
        try:
            state = json.load(open(os.path.join(pdir, "t", "groups.json")))
        except (OSError, ValueError):
            return False
        return state["groups"] and state["groups"][0]["position"] == 121
    wait_for(checkpointed)  # the acks reached the disk
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "pymq", "clean", "--name", name],
                       capture_output=True, text=True, timeout=60)  # a reboot: shm gone
    assert r.returncode == 0, r.stderr
    b = pymq.Broker(cfg_for(name, pdir))
    try:
        _, again = drain_group(b, "t", "g")
        assert sorted(m.seq for m in again) == list(range(121, 301))
    finally:
        b.close()


def test_torn_last_line_is_ignored_and_corrupt_lines_are_reported(name, pdir, caplog):
    b = pymq.Broker(cfg_for(name, pdir))
    b.subscribe_with_ack("t", group="g")
    b.publish_many("t", [b"m%d" % i for i in range(10)])
    b.close()
    files, _ = log_lines(pdir, "t")
    with open(files[-1], "rb") as f:
        lines = f.read().split(b"\n")
    lines[4] = b'{"seq": 5, "ts": oops'  # a corrupt line in the middle
    with open(files[-1], "wb") as f:
        f.write(b"\n".join(lines) + b'{"seq":11,"ts":1.0,"payl')  # and a torn last one
    b = pymq.Broker(cfg_for(name, pdir))
    try:
        assert b.restored[0]["corrupt"] == 1 and b.restored[0]["torn"] == 1
        _, again = drain_group(b, "t", "g")
        assert [m.seq for m in again] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    finally:
        b.close()
    reported = [r for r in caplog.records if r.name == "pymq.persistence"]
    assert len(reported) == 1 and "00000000000000000001.jsonl:5: corrupt line skipped" in \
        reported[0].getMessage() and reported[0].levelname == "WARNING"


def test_start_earliest_and_seq_replay_from_disk_what_the_ring_let_go(make_broker, pdir):
    broker = make_broker(ring_bytes=64 * KiB, max_message_bytes=4 * KiB,
                         persistence_enabled=True, persistence_dir=pdir)
    payloads = [b"%06d" % i + b"p" * 500 for i in range(1000)]  # ~500 KB through a 64 KiB ring
    for i in range(0, 1000, 50):
        broker.publish_many("t", payloads[i:i + 50], timeout=30)
    wait_for(lambda: persisted(broker, "t") == 1000)
    every = broker.subscribe("t", start="earliest")
    got = []
    while len(got) < 1000:
        got += every.get_many(100, timeout=5)
    assert got == payloads  # from disk, then from the ring, in order, once each
    bulk = broker.subscribe("t", start="earliest")  # the same in batches: with seqs and times
    seqs, data = [], []
    while len(seqs) < 1000:
        batch = bulk.get_batch(128, timeout=5)
        seqs += batch.seqs.tolist()
        data += batch.payloads()
        assert all(t > 1e9 for t in batch.publish_times)
    assert seqs == list(range(1, 1001)) and data == payloads
    from_seq = broker.subscribe_with_ack("t", group="late", start=300)
    msgs = []
    while len(msgs) < 701:
        msgs += from_seq.get_many(64, timeout=5)
    assert [m.seq for m in msgs] == list(range(300, 1001))
    assert [m.payload for m in msgs] == payloads[299:]
    from_seq.ack_many(msgs)  # replayed history acks as a no-op; the ring's part for real
    broker.publish("t", b"new")
    assert every.get(timeout=5) == b"new"


def test_a_backlog_larger_than_the_ring_is_streamed_in_at_restart(name, pdir):
    """Restarted with a smaller ring (or a checkpoint a sweep behind a fast
    stream): what the groups still need does not fit. It is not refused: the
    first part goes in at start, the rest as the groups make room, each group
    from where it was (one beyond the first part too); publishes wait until
    it is all in, then go on with the next seq."""
    payloads = [b"%06d" % i + b"x" * 994 for i in range(600)]  # 600 KB
    b = pymq.Broker(cfg_for(name, pdir))
    g, h = b.subscribe_with_ack("t", group="g"), b.subscribe_with_ack("t", group="h")
    p = b.subscribe("t", group="p")
    b.publish_many("t", payloads)
    taken = 0
    while taken < 500:  # h: 1-500 acked; g: nothing
        taken += h.ack_many(h.get_many(500 - taken, timeout=5))
    taken = 0
    while taken < 550:  # a plain group, at 551
        taken += len(p.get_many(550 - taken, timeout=5))
    b.close()

    b = pymq.Broker(cfg_for(name, pdir, ring_bytes=64 * KiB, max_message_bytes=4 * KiB,
                            publish_timeout=0.2))
    try:
        assert b.restored[0]["streamed"] and b.restored[0]["records"] < 600
        assert b.stats()["topics"]["t"]["restoring"] > 0
        with pytest.raises(pymq.Full):  # the backlog's seqs come first
            b.publish("t", b"new")
        h = b.subscribe_with_ack("t", group="h")
        p = b.subscribe("t", group="p")
        got = {"g": [], "h": [], "p": []}
        g = b.subscribe_with_ack("t", group="g")
        def some(sub):
            try:
                return sub.get_many(64, timeout=0.01)
            except pymq.Timeout:
                return []
        killed, deadline = False, time.monotonic() + 120  # a hang's bound, not a measure
        while len(got["g"]) < 600 or len(got["h"]) < 100 or len(got["p"]) < 50:
            assert time.monotonic() < deadline, {k: len(v) for k, v in got.items()}
            if len(got["g"]) >= 200 and not killed:  # mid-stream: the next one carries on
                assert b.stats()["topics"]["t"]["restoring"] > 0
                os.kill(b.supervisor_pid, signal.SIGKILL)
                killed = True
            for key, sub in (("g", g), ("h", h)):
                batch = some(sub)
                sub.ack_many(batch)
                got[key] += [(m.seq, m.payload) for m in batch]
            got["p"] += some(p)
        assert got["g"] == [(i + 1, payloads[i]) for i in range(600)]  # all, in order, once
        assert got["h"] == [(i + 1, payloads[i]) for i in range(500, 600)]  # not one acked
        assert got["p"] == payloads[550:]
        wait_for(lambda: b.stats()["topics"]["t"]["restoring"] == 0)
        assert b.stats()["supervisor"]["restarts"] == 1
        assert b.publish("t", b"new", timeout=5) == 601  # seqs go on
    finally:
        b.close()
