"""Disks and memory running out: a full persistence disk mid-stream (ENOSPC),
a failing fsync (EIO), close() with messages not on disk, a full or small
/dev/shm at broker creation, topic creation and subscribe. The disk is a
tmpfs the test mounts (root only: skipped with the reason elsewhere); /dev/shm
is replaced by a small tmpfs in a private mount namespace (unshare -m)."""

import base64
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import pymq
import workers
from helpers import get_json, wait_for
from pymq.persistence import LogReport, TopicLog, read_log

KiB = 1024


def mount_tmpfs(path, size):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of the test's own."""
    d = str(tmp_path / "disk")
    mount_tmpfs(d, "1m")
    yield d
    subprocess.run(["umount", "-l", d], check=False)


def fill(path, leave):
    """Fill the filesystem of path but for `leave` bytes; returns the filler."""
    st = os.statvfs(path)
    filler = os.path.join(path, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def publish_until_full(broker, topic, size=1000):
    """Publish payloads until Full; returns them."""
    sent = []
    with pytest.raises(pymq.Full):
        for i in range(1_000_000):
            p = workers.make_payload(0, i, size)
            broker.publish(topic, p)
            sent.append(p)
    return sent


def log_files(pdir, topic):
    d = os.path.join(pdir, topic)
    return [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".jsonl")]


def unpersisted(broker, topic):
    g = broker.stats()["topics"][topic]["groups"]["~persist"]
    return g["lag"] + g["pending"]


def read_back(pdir, topic):
    report = LogReport()
    records = list(read_log(pdir, topic, 1, report))
    return records, report


def test_a_full_disk_is_backpressure_and_a_503_and_persistence_recovers_by_itself(make_broker,
                                                                                 small_disk):
    pdir = os.path.join(small_disk, "mq")
    broker = make_broker(persistence_enabled=True, persistence_dir=pdir, ring_bytes=256 * KiB,
                         max_message_bytes=4 * KiB, publish_timeout=0.3, admin_port=0)
    port = broker.admin_port
    filler = fill(small_disk, 64 * KiB)
    sent = publish_until_full(broker, "t")  # the disk took what it could, the ring holds the rest

    status, body = get_json(port, "/health")
    assert status == 503
    assert any("persistence of 't': cannot write" in p and "No space left on device" in p
               for p in body["problems"]), body
    figures = get_json(port, "/stats/t")[1]["persistence"]
    assert figures["write_errors"] >= 1 and "No space left on device" in figures["failing"]
    for f in log_files(pdir, "t"):  # no half-written line, even now
        with open(f, "rb") as fh:
            data = fh.read()
        assert data == b"" or data.endswith(b"\n"), f

    os.unlink(filler)  # space again: it recovers by itself
    wait_for(lambda: get_json(port, "/health")[0] == 200)
    wait_for(lambda: unpersisted(broker, "t") == 0)
    broker.publish("t", b"after")
    broker.close()
    records, report = read_back(pdir, "t")
    assert [r[0] for r in records] == list(range(1, len(sent) + 2))
    assert [r[2] for r in records] == sent + [b"after"]
    assert (report.duplicates, report.corrupt, report.torn) == (0, 0, 0)


def test_close_with_a_full_disk_says_how_many_messages_are_not_on_disk(make_broker, small_disk,
                                                                       name):
    pdir = os.path.join(small_disk, "mq")
    broker = make_broker(persistence_enabled=True, persistence_dir=pdir, ring_bytes=256 * KiB,
                         max_message_bytes=4 * KiB, publish_timeout=0.3,
                         persistence_close_timeout=0.5)
    filler = fill(small_disk, 64 * KiB)
    sent = publish_until_full(broker, "t")
    with pytest.raises(pymq.PersistenceError, match=r"closed with \d+ published message\(s\) "
                       r"not on disk \('t': \d+\).*persistence_close_timeout=0.5 s") as e:
        broker.close()
    missing = int(re.search(r"closed with (\d+)", str(e.value)).group(1))
    os.unlink(filler)
    records, report = read_back(pdir, "t")
    assert len(records) + missing == len(sent) and missing > 0
    assert [r[2] for r in records] == sent[:len(records)]
    assert (report.duplicates, report.corrupt, report.torn) == (0, 0, 0)
    # the `name` fixture checks that nothing is left in /dev/shm


def lines_of(seqs, payload=b"p"):
    """JSON lines of seqs and where each ends."""
    data, ends = b"", []
    for s in seqs:
        data += b'{"seq":%d,"ts":1.5,"payload":"%s"}\n' % (s, base64.b64encode(payload))
        ends.append(len(data))
    return memoryview(data), ends


def append(tl, seqs):
    i = tl.first_new(seqs, len(seqs))
    data, ends = lines_of(seqs[i:])
    if seqs[i:]:
        tl.append(seqs[i:], ends, len(ends), data)
    tl.appended()


def test_a_failed_fsync_under_always_cuts_back_to_the_last_good_one_and_is_written_again(
        tmp_path, monkeypatch):
    cfg = pymq.BrokerConfig(persistence_fsync="always", persistence_dir=str(tmp_path))
    tl = TopicLog(str(tmp_path), "t", cfg)
    append(tl, [1, 2])
    real = os.fsync

    def eio(fd):
        monkeypatch.setattr(os, "fsync", real)  # once
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError) as e:
        append(tl, [3, 4])
    assert e.value.errno == errno.EIO
    assert (tl.last_seq, tl.fsync_errors) == (2, 1)
    append(tl, [3, 4])  # the writer's retry: the same batch
    append(tl, [4, 5])  # a batch handed over part-written: 4 is on disk already
    tl.close()
    records, report = read_back(str(tmp_path), "t")
    assert [r[0] for r in records] == [1, 2, 3, 4, 5]
    assert (report.duplicates, report.corrupt, report.torn) == (0, 0, 0)


def test_a_failed_background_fsync_is_reported_until_one_succeeds(tmp_path, monkeypatch):
    cfg = pymq.BrokerConfig(persistence_fsync="interval", persistence_fsync_interval=1e-9,
                            persistence_dir=str(tmp_path))
    tl = TopicLog(str(tmp_path), "t", cfg)
    real = os.fsync

    def eio(fd):
        monkeypatch.setattr(os, "fsync", real)
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(os, "fsync", eio)
    append(tl, [1])
    tl.sync_behind(wait=True)  # waits for the failed one, starts another
    tl._join_behind()
    assert tl.fsync_errors == 1 and tl.sync_failure is None  # the next one succeeded
    monkeypatch.setattr(os, "fsync", eio)
    append(tl, [2])
    tl._join_behind()
    assert "records up to seq 2 may not be on disk" in tl.sync_failure
    tl.close()
    assert tl.sync_failure is None


def test_a_torn_last_line_is_cut_at_start_and_its_seq_written_again(tmp_path):
    cfg = pymq.BrokerConfig(persistence_dir=str(tmp_path))
    tl = TopicLog(str(tmp_path), "t", cfg)
    append(tl, [1, 2, 3])
    tl.close()
    path = log_files(str(tmp_path), "t")[0]
    with open(path, "ab") as f:
        f.write(b'{"seq":4,"ts":1.5,"pay')  # the writer died mid-line
    tl = TopicLog(str(tmp_path), "t", cfg)
    assert tl.last_seq == 3
    append(tl, [3, 4])  # its batch, handed over
    tl.close()
    records, report = read_back(str(tmp_path), "t")
    assert [r[0] for r in records] == [1, 2, 3, 4]
    assert (report.duplicates, report.corrupt, report.torn) == (0, 0, 0)


SHM_SCRIPT = textwrap.dedent("""
    import json, os
    import pymq
    out = {}
    def attempt(key, f):
        try:
            f()
            out[key] = "ok"
        except pymq.MQError as e:
            out[key] = [type(e).__name__, str(e)]
    def fill():
        with open("/dev/shm/filler", "wb") as f:
            try:
                f.write(bytes(4 << 20))
            except OSError:
                pass
    cfg = pymq.BrokerConfig(name="full", ring_bytes=4 << 20, max_message_bytes=1024)
    fill()
    attempt("broker_when_full", lambda: pymq.Broker(cfg))
    os.unlink("/dev/shm/filler")
    b = pymq.Broker(cfg)
    attempt("topic_too_big", lambda: b.publish("big", b"x"))
    small = pymq.BrokerConfig(name="small", ring_bytes=64 << 10, max_message_bytes=1024)
    s = pymq.Broker(small)
    attempt("topic_fits", lambda: s.publish("t", b"x"))
    fill()
    attempt("topic_when_full", lambda: s.publish("another", b"x"))
    c = pymq.connect("small")
    attempt("subscribe_when_full", lambda: c.subscribe("t"))
    os.unlink("/dev/shm/filler")
    attempt("subscribe_after", lambda: c.subscribe("t"))
    c.close()
    s.close()
    b.close()
    out["left"] = sorted(e for e in os.listdir("/dev/shm") if e.startswith("pymq."))
    print(json.dumps(out))
""")


def test_a_small_or_full_dev_shm_is_a_clear_storage_full_naming_path_and_size(tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a private /dev/shm needs root and unshare")
    shell = f"mount -t tmpfs -o size=2m tmpfs /dev/shm && exec {sys.executable} -c \"$0\""
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell,
                        SHM_SCRIPT], capture_output=True, text=True, timeout=120)
    if r.returncode and "unshare" in r.stderr and not r.stdout:
        pytest.skip(f"no private mount namespace here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    kind, text = out["broker_when_full"]
    assert kind == "StorageFull" and "/dev/shm" in text and "pymq.full." in text, text
    kind, text = out["topic_too_big"]
    assert kind == "StorageFull", text
    assert re.search(r"cannot reserve [\d,]+ bytes in /dev/shm for /pymq\.full\.big", text), text
    assert out["topic_fits"] == "ok"
    kind, text = out["topic_when_full"]
    assert kind == "StorageFull" and "/pymq.small.another" in text, text
    kind, text = out["subscribe_when_full"]
    assert kind == "StorageFull" and "liveness token /dev/shm/pymq.small." in text, text
    assert "4,096 bytes" in text
    assert out["subscribe_after"] == "ok"
    assert out["left"] == []
