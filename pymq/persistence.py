"""Persistence: every published message appended to JSON-lines files on disk.

With persistence_enabled, each topic's ring is made with the writer's ack
group ("~persist"), so a record leaves the ring only once the writer has put it
on disk and acked it. The supervisor runs one Writer thread per topic: it reads
batches as a member of that group, encodes them as JSON lines (the seed's
format: {"seq": int, "ts": epoch seconds, "payload": base64}), appends them to
the topic's current segment file, fsyncs by policy, then acks the batch in one
native call. The JSON lines of a whole batch are encoded in one native call too
(pymq._codec, codec/pmq_jsonl.c): no Python object per record on this path. A writer that dies with a batch in hand leaves it pending: the
next supervisor rewrites it, so a seq may appear twice in the log (readers keep
the first).

Files: {persistence_dir}/{topic}/{first seq:020d}.jsonl, folders 0700, files
0600; a new file when the current one reaches persistence_segment_bytes;
retention removes the oldest closed files past persistence_retention_bytes in
total or older than persistence_retention_seconds.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
import shutil
import threading
import time
from array import array
from bisect import bisect_right

from . import _codec, _core
from .errors import BrokerClosed, MQError, PersistenceError, SubscriptionClosed, Timeout

log = logging.getLogger(__name__)

BATCH = 1024          # records a writer takes per native read
SUFFIX = ".jsonl"


class Lines:
    """The JSON lines of a batch's records, encoded by one native call into a
    buffer reused from batch to batch:
    {"seq":<int>,"ts":<epoch seconds, 6 decimals>,"payload":"<base64>"}\n"""

    def __init__(self, batch: _core.Batch):
        self.batch = batch
        ffi = _codec.ffi
        # every line of a full batch fits: its frame, and base64 of at most the whole budget
        self.cap = batch.max_batch * (_codec.lib.PMQ_JSONL_FRAME + 4) + batch.buflen * 4 // 3 + 4
        self.out = ffi.new("char[]", self.cap)
        self.ends = ffi.new("uint64_t[]", batch.max_batch)
        self.view = memoryview(ffi.buffer(self.out))

    def encode(self, first: int, n: int, payloads) -> int:
        """Encode records first..n-1 (as many as fit) from payloads (the batch's
        (pointer, length)); returns how many. Line i of them ends at self.ends[i]."""
        b = self.batch
        buf, buflen = payloads
        got = _codec.lib.pmq_jsonl_encode(buf, buflen, b.offs + first, b.lens + first,
                                          b.seqs + first, b.ts + first, n - first, self.out,
                                          self.cap, self.ends)
        if got <= 0:  # a record outside the buffer, or one line bigger than the whole buffer
            raise PersistenceError(f"cannot encode record seq {b.seqs[first]} for the log")
        return got

    def write_to(self, log: "TopicLog", n: int) -> None:
        """Encode the batch's first n records and append them to the log."""
        i = 0
        with self.batch.payloads() as payloads:
            while i < n:
                k = self.encode(i, n, payloads)
                log.append(self.batch.seqs + i, _codec.ffi.unpack(self.ends, k), k, self.view)
                i += k
        log.appended()


RECORD_OVERHEAD = 64  # a record's header and padding in a ring, rounded up


def spans_within(lens, limit: int):
    """Split payloads of these lengths into consecutive (start, end) spans that
    take at most limit bytes of a ring each (a span has at least one)."""
    start, n = 0, len(lens)
    while start < n:
        end, size = start, 0
        while end < n and (end == start or size + lens[end] + RECORD_OVERHEAD <= limit):
            size += lens[end] + RECORD_OVERHEAD
            end += 1
        yield start, end
        start = end


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
        self._behind = None       # the background fsync in progress (policy "interval")
        self._behind_error = None

    def files(self) -> list[str]:
        return sorted(e for e in os.listdir(self.dir) if e.endswith(SUFFIX))

    def _open(self, first_seq: int) -> None:
        if self.fd is not None:  # rotation
            policy = self.cfg.persistence_fsync
            if policy == "always":
                self.sync()  # before the batch is acked
            elif policy == "interval" and self.unsynced:
                self.sync_behind(wait=True)  # the full file's last fsync, in the background too
            os.close(self.fd)  # "never": left to the OS
            self.fd = None
        self.path = os.path.join(self.dir, f"{first_seq:020d}{SUFFIX}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def append(self, seqs, ends: list[int], n: int, data: memoryview) -> None:
        """Append n lines of data (line i ends at ends[i], its seq is seqs[i]),
        starting a new file whenever the next line would take the current one
        past persistence_segment_bytes (a file holds at least one line)."""
        limit, i, start = self.cfg.persistence_segment_bytes, 0, 0
        while i < n:
            if self.fd is None or (self.size and self.size + ends[i] - start > limit):
                self._open(seqs[i])
                self.retain()
            # the lines that still fit in this file, and at least one
            j = max(i + 1, bisect_right(ends, start + limit - self.size, i, n))
            self._write(data[start:ends[j - 1]])
            start, i = ends[j - 1], j
        self.written += n

    def appended(self) -> None:
        """The end of a batch: fsync by policy ("interval": in the background)."""
        policy = self.cfg.persistence_fsync
        if policy == "always":
            self.sync()
        elif policy == "interval" and (time.monotonic() - self.last_fsync
                                       >= self.cfg.persistence_fsync_interval):
            self.sync_behind()

    def sync_behind(self, wait: bool = False) -> None:
        """Start an fsync of everything written so far on a thread of its own
        (of a duplicate of the file descriptor, so a rotation may close the
        file meanwhile), so that the writer goes on encoding and writing while
        the disk catches up. One at a time: while one runs, the next interval's
        is skipped (or, with wait, waits for it). An fsync that failed is raised
        here, at the next batch."""
        if self._behind is not None and (wait or not self._behind.is_alive()):
            self._join_behind()
        if self._behind is not None:
            return
        fd = os.dup(self.fd)
        self.unsynced = False
        self.last_fsync = time.monotonic()

        def fsync():
            try:
                os.fsync(fd)
                self.fsyncs += 1
            except OSError as e:
                self._behind_error = e
            finally:
                os.close(fd)
        self._behind = threading.Thread(target=fsync, name="pymq-fsync", daemon=True)
        self._behind.start()

    def _join_behind(self) -> None:
        """Wait for the background fsync, if any; raise the error it met."""
        if self._behind is not None:
            self._behind.join()
            self._behind = None
        if self._behind_error is not None:
            e, self._behind_error = self._behind_error, None
            raise e

    def _write(self, view: memoryview) -> None:
        size = len(view)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += size
        self.unsynced = True

    def sync(self) -> None:
        """fsync now (after the background one, if any, has finished)."""
        self._join_behind()
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

    def __init__(self, client, topic: str, cfg):
        super().__init__(daemon=True, name=f"pymq-persist-{topic}")
        self.topic = topic
        self.log = TopicLog(cfg.persistence_dir, topic, cfg)
        ring = client._ring(topic)
        joined = ring.join(_core.PERSIST_GROUP, _core.GROUP_ACK, _core.START["earliest"], 0,
                           client._owner_token(), 0, 0)
        self.ring = ring
        self.group, self.group_gen = joined.group, joined.group_gen
        # zero-copy: records of "~persist" stay in the ring until it acks them,
        # so it encodes them straight from shared memory
        self.batch = _core.Reader(ring, joined.member, joined.member_gen, BATCH,
                                  max(1 << 20, ring.max_msg + _core.REC_HDR), zero_copy=True)
        self.lines = Lines(self.batch)
        self.stopping = threading.Event()
        self.error = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.step(timeout_ns=200_000_000)
        except (BrokerClosed, _core.TopicDeleted):
            pass  # the broker drained persistence before closing; a deleted topic is done
        except (SubscriptionClosed, MQError) as e:
            if not self.stopping.is_set():
                self.error = e
                log.error("persistence of %r stopped: %s", self.topic, e)
        except OSError as e:
            self.error = e
            log.error("persistence of %r stopped: cannot write %s: %s", self.topic, self.log.dir,
                      e.strerror)
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
        self.lines.write_to(self.log, n)
        self.ring.settle("ack", self.group, self.group_gen, self.batch.slots, self.batch.seqs, n=n)
        return n

    def cfg_policy(self) -> str:
        return self.log.cfg.persistence_fsync

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


# -- durable group positions -------------------------------------------------------

CHECKPOINT = "groups.json"


def group_positions(ring: _core.Ring) -> dict:
    """The durable state of a topic's named groups (what a restart restores)."""
    figures = ring.stats()
    groups = []
    for g in figures["groups_detail"]:
        if g["anonymous"] or g["name"] == _core.PERSIST_GROUP:
            continue
        try:
            position, acked = ring.group_position(g["index"])
        except MQError:
            continue  # gone meanwhile
        groups.append({"name": g["name"], "ack": g["ack"], "position": position, "acked": acked})
    return {"version": 1, "next_seq": figures["next_seq"], "groups": groups}


def write_checkpoint(root: str, topic: str, state: dict, fsync: bool) -> None:
    """Atomically replace {topic}/groups.json (write, fsync, rename)."""
    d = topic_dir(root, topic)
    ensure_dir(d)
    tmp = os.path.join(d, CHECKPOINT + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(state, separators=(",", ":")).encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(d, CHECKPOINT))


def read_checkpoint(root: str, topic: str) -> dict | None:
    """groups.json, validated; None if absent or unusable (reported)."""
    path = os.path.join(topic_dir(root, topic), CHECKPOINT)
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read(4 << 20))
        groups = state["groups"]
        for g in groups:
            if not (isinstance(g["name"], str) and isinstance(g["ack"], bool)
                    and isinstance(g["position"], int) and g["position"] >= 1
                    and isinstance(g["acked"], list) and all(isinstance(s, int) for s in g["acked"])):
                raise ValueError("bad group entry")
        if not isinstance(state["next_seq"], int):
            raise ValueError("bad next_seq")
        return state
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PersistenceError(f"{path}: unreadable group positions: {e}") from None


# -- reading the log back ------------------------------------------------------------

class LogReport:
    """What reading a topic's log found: counts, and problems to report."""

    def __init__(self):
        self.records = self.duplicates = self.corrupt = self.torn = 0
        self.problems: list[str] = []
        self.last_seq = 0


def read_log(root: str, topic: str, from_seq: int = 1, report: LogReport | None = None):
    """Yield (seq, ts_ns, payload) of the topic's log from from_seq on, in seq
    order, each seq once. A torn last line (no newline at the end of the last
    file) is ignored; a corrupt line anywhere else is reported and skipped."""
    report = report if report is not None else LogReport()
    d = topic_dir(root, topic)
    try:
        files = sorted(e for e in os.listdir(d) if e.endswith(SUFFIX))
    except FileNotFoundError:
        return
    for k, name in enumerate(files):
        path = os.path.join(d, name)
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if tail:
            if k == len(files) - 1:
                report.torn += 1  # the writer died mid-line: never acked, rewritten
            else:
                lines.append(tail)
        for i, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
                seq, ts = rec["seq"], rec["ts"]
                if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or \
                        not isinstance(ts, (int, float)):
                    raise ValueError("bad seq or ts")
                payload = binascii.a2b_base64(rec["payload"].encode("ascii"), strict_mode=True)
            except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error) as e:
                report.corrupt += 1
                report.problems.append(f"{path}:{i}: corrupt line skipped ({e})")
                continue
            if seq <= report.last_seq:
                report.duplicates += 1  # rewritten after a writer's death
                continue
            report.last_seq = seq
            if seq >= from_seq:
                report.records += 1
                yield seq, int(ts * 1e9), payload


def replay(root: str, topic: str, from_seq: int, until_seq: int):
    """(seq, ts_ns, payload) of the log from from_seq up to (not including)
    until_seq: what a subscription with start= gets before the ring's records."""
    for rec in read_log(root, topic, from_seq):
        if rec[0] >= until_seq:
            return
        yield rec


# -- recovery at start -----------------------------------------------------------------

def topics_on_disk(root: str) -> list[str]:
    from .config import check_topic
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        try:
            if os.path.isdir(os.path.join(root, e)):
                out.append(check_topic(e))
        except ValueError:
            pass  # not one of ours
    return out


def flush_stale_ring(ring: _core.Ring, root: str, cfg) -> None:
    """A dead broker's ring (crash, shared memory intact): append what its
    writer had not yet put on disk, and record its groups' live positions,
    which are newer than the last checkpoint."""
    topic = ring.topic
    report = LogReport()
    for _ in read_log(root, topic, 1 << 62, report):
        pass
    state = group_positions(ring)
    # every record past the last on disk is still in the ring (the writer gates it)
    member = ring.join(_core.PERSIST_GROUP + "-flush", 0, _core.START_SEQ, report.last_seq + 1,
                       0, 0, 0)
    batch = _core.Reader(ring, member.member, member.member_gen, BATCH,
                         max(1 << 20, ring.max_msg + _core.REC_HDR))
    tl = TopicLog(root, topic, cfg)
    lines = Lines(batch)
    written = 0
    try:
        while True:
            try:
                n = batch.read(BATCH, 0)
            except Timeout:
                break
            lines.write_to(tl, n)
            written += n
    finally:
        tl.close()
    write_checkpoint(root, topic, state, fsync=True)
    if written:
        log.warning("recovered %d record(s) of %r from the dead broker's shared memory", written,
                    topic)


def restore_topic(name: str, topic: str, cfg) -> dict:
    """Make the topic's segment again from its log and group positions, before
    any client can attach: records from the oldest position any durable group
    still needs, with their old seqs; groups where they were. Returns figures."""
    from . import segments
    root = cfg.persistence_dir
    state = read_checkpoint(root, topic) or {"next_seq": 1, "groups": []}
    report = LogReport()
    positions = [g["position"] for g in state["groups"]]
    start = min(positions) if positions else 1 << 62
    records = list(read_log(root, topic, start, report))
    next_seq = max(report.last_seq, state["next_seq"] - 1) + 1
    first = records[0][0] if records else next_seq
    params = _core.ring_params(cfg.ring_capacity, cfg.max_message_bytes, os.getpid(),
                               segments.start_stamp(), False, first)
    seg = segments.Segment.create(segments.topic_shm_name(name, topic), _core.ring_size(params))
    _core.Ring.init(seg, params)
    ring = _core.Ring(seg, topic)
    try:
        for i, j in spans_within([len(r[2]) for r in records], cfg.ring_capacity // 4):
            chunk = records[i:j]
            try:
                ring.restore([r[2] for r in chunk], array("Q", (r[0] for r in chunk)),
                             array("q", (r[1] for r in chunk)))
            except MQError as e:
                raise PersistenceError(f"topic {topic!r}: {len(records) - i} unacked message(s) from "
                              f"disk do not fit the ring ({e}); raise ring_bytes") from None
        for g in state["groups"]:
            acked = sorted(s for s in g["acked"] if s > g["position"])
            ring.group_restore(g["name"], _core.GROUP_ACK if g["ack"] else 0, g["position"],
                               acked if g["ack"] else [], int(cfg.ack_timeout * 1e9),
                               cfg.max_retries)
        ring.group_restore(_core.PERSIST_GROUP, _core.GROUP_ACK, next_seq, [],
                           3600 * 10**9, 1000)
    finally:
        ring.release()
    for p in report.problems:
        log.warning("%s", p)
    return {"topic": topic, "records": len(records), "groups": len(state["groups"]),
            "next_seq": next_seq, "corrupt": report.corrupt, "torn": report.torn,
            "duplicates": report.duplicates}


DELETED_PREFIX = ".deleted."


def remove_topic_files(root: str, topic: str, keep: bool) -> str | None:
    """A deleted topic's log: kept (renamed to .deleted.<topic>.<ns>, which no
    restart restores, since no topic name starts with '.') or removed. Returns
    where it was kept, or None."""
    d = topic_dir(root, topic)
    if not os.path.isdir(d):
        return None
    if not keep:
        shutil.rmtree(d)
        return None
    kept = os.path.join(root, f"{DELETED_PREFIX}{topic}.{time.time_ns()}")
    os.rename(d, kept)
    return kept
