"""Persistence: every published message appended to JSON-lines files on disk.

With persistence_enabled, each topic's ring is made with the writer's ack
group ("~persist"), so a record leaves the ring only once the writer has put it
on disk and acked it. The supervisor runs one Writer thread per topic: it reads
batches as a member of that group, encodes them as JSON lines (the seed's
format: {"seq": int, "ts": epoch seconds, "payload": base64}), appends them to
the topic's current segment file, fsyncs by policy, then acks the batch in one
native call. A writer that dies with a batch in hand leaves it pending: the
next supervisor rewrites it, so a seq may appear twice in the log (readers keep
the first).

Files: {persistence_dir}/{topic}/{first seq:020d}.jsonl, folders 0700, files
0600; a new file when the current one reaches persistence_segment_bytes;
retention removes the oldest closed files past persistence_retention_bytes in
total or older than persistence_retention_seconds.
"""

from __future__ import annotations

import binascii
import os
import threading
import time
from array import array

from . import _core
from .errors import BrokerClosed, MQError, SubscriptionClosed, Timeout

FSYNC_POLICIES = ("never", "interval", "always")
BATCH = 1024          # records a writer takes per native read
SUFFIX = ".jsonl"


def encode(batch: _core.Batch, n: int) -> tuple[list[int], list[bytes]]:
    """The seqs and JSON lines of n records of the batch."""
    unpack, b64, view = _core.ffi.unpack, binascii.b2a_base64, batch.view
    offs, lens, seqs = unpack(batch.offs, n), unpack(batch.lens, n), unpack(batch.seqs, n)
    data = view[0:offs[-1] + lens[-1]]
    return seqs, [b'{"seq":%d,"ts":%.6f,"payload":"%s"}\n' % (seq, ts / 1e9, b64(data[o:o + ln], newline=False))
                  for seq, ts, o, ln in zip(seqs, unpack(batch.ts, n), offs, lens)]


def topic_dir(root: str, topic: str) -> str:
    return os.path.join(root, topic)


def ensure_dir(path: str) -> None:
    """A folder, owner-only, with its parents."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class TopicLog:
    """The segment files of one topic: append, rotate, fsync, retain."""

    def __init__(self, root: str, topic: str, cfg):
        self.dir = topic_dir(root, topic)
        ensure_dir(self.dir)
        self.cfg = cfg
        self.fd = None
        self.size = 0
        self.path = None
        self.last_fsync = time.monotonic()
        self.unsynced = False
        self.written = self.files_removed = self.fsyncs = 0

    def files(self) -> list[str]:
        return sorted(e for e in os.listdir(self.dir) if e.endswith(SUFFIX))

    def _open(self, first_seq: int) -> None:
        self.close()
        self.path = os.path.join(self.dir, f"{first_seq:020d}{SUFFIX}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def append(self, seqs: list[int], lines: list[bytes]) -> None:
        """Append the lines, starting a new file whenever the current one is full."""
        limit, i = self.cfg.persistence_segment_bytes, 0
        while i < len(lines):
            if self.fd is None or self.size >= limit:
                self._open(seqs[i])
                self.retain()
            j, size = i, 0
            while j < len(lines) and (j == i or self.size + size + len(lines[j]) <= limit):
                size += len(lines[j])
                j += 1
            self._write(b"".join(lines[i:j]))
            i = j
        self.written += len(lines)
        self.unsynced = True
        policy = self.cfg.persistence_fsync
        if policy == "always" or (policy == "interval" and time.monotonic() - self.last_fsync
                                  >= self.cfg.persistence_fsync_interval):
            self.sync()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(data)

    def sync(self) -> None:
        if self.fd is not None and self.unsynced:
            os.fsync(self.fd)
            self.fsyncs += 1
        self.unsynced = False
        self.last_fsync = time.monotonic()

    def retain(self) -> None:
        """Remove the oldest closed files past the size or age limits."""
        cfg = self.cfg
        files = [f for f in self.files() if os.path.join(self.dir, f) != self.path]
        sizes = {f: os.path.getsize(os.path.join(self.dir, f)) for f in files}
        total = sum(sizes.values()) + self.size
        now = time.time()
        for f in files:  # oldest first (names are first seqs)
            path = os.path.join(self.dir, f)
            too_old = now - os.path.getmtime(path) > cfg.persistence_retention_seconds
            if total <= cfg.persistence_retention_bytes and not too_old:
                break
            os.unlink(path)
            total -= sizes[f]
            self.files_removed += 1

    def close(self) -> None:
        if self.fd is not None:
            self.sync()
            os.close(self.fd)
            self.fd = None


class Writer(threading.Thread):
    """Moves one topic's records from its ring to its log, as a member of the
    topic's "~persist" ack group."""

    def __init__(self, client, topic: str, cfg, log):
        super().__init__(daemon=True, name=f"pymq-persist-{topic}")
        self.topic = topic
        self.log_fn = log
        self.log = TopicLog(cfg.persistence_dir, topic, cfg)
        ring = client._ring(topic)
        joined = ring.join(_core.PERSIST_GROUP, _core.GROUP_ACK, _core.START["earliest"], 0,
                           client._owner_token(), 0, 0)
        self.ring = ring
        self.group, self.group_gen = joined.group, joined.group_gen
        self.batch = _core.Reader(ring, joined.member, joined.member_gen, BATCH,
                                  max(1 << 20, ring.max_msg + _core.REC_HDR))
        self.stopping = threading.Event()
        self.error = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.step(timeout_ns=200_000_000)
        except BrokerClosed:
            pass  # the broker drained persistence before closing
        except (SubscriptionClosed, MQError) as e:
            if not self.stopping.is_set():
                self.error = e
                self.log_fn(f"persistence of {self.topic!r} stopped: {e}")
        except OSError as e:
            self.error = e
            self.log_fn(f"persistence of {self.topic!r} stopped: cannot write "
                        f"{self.log.dir}: {e.strerror}")
        finally:
            self.log.close()

    def step(self, timeout_ns: int) -> int:
        """Write one batch to disk, then ack it. Returns how many records."""
        try:
            n = self.batch.read(BATCH, timeout_ns)
        except Timeout:
            if self.log.unsynced and self.cfg_policy() == "interval":
                self.log.sync()
            return 0
        b = self.batch
        self.log.append(*encode(b, n))
        slots = array("I", _core.ffi.unpack(b.slots, n))
        seqs = array("Q", _core.ffi.unpack(b.seqs, n))
        self.ring.settle("ack", self.group, self.group_gen, slots, seqs)
        return n

    def cfg_policy(self) -> str:
        return self.log.cfg.persistence_fsync

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
