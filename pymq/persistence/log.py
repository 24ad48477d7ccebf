"""The log of one topic on disk: its files (append, rotate, fsync, retain),
and reading them back.

Files: {persistence_dir}/{topic}/{first seq:020d}.jsonl, folders 0700, files
0600; one JSON object per line, the seed's format ({"seq": int, "ts": epoch
seconds, "payload": base64}); a new file when the current one would pass
persistence_segment_bytes; retention removes the oldest closed files past
persistence_retention_bytes in total or older than
persistence_retention_seconds. Reading takes the files in seq order and each
seq once: a torn last line is ignored, a corrupt line elsewhere is reported
and skipped.
"""

from __future__ import annotations

import binascii
import json
import os
import threading
import time
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

from .. import _core

SUFFIX = ".jsonl"


def topic_dir(root: str, topic: str) -> str:
    return os.path.join(root, topic)


def ensure_dir(path: str) -> None:
    """A folder, owner-only (0700, whatever the umask), with its parents: those
    it makes are owner-only too (os.makedirs would make them 0777 less the
    umask: world-writable under umask 0)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        ensure_dir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    os.chmod(path, 0o700)


def write_lines(lines: _core.Lines, log: "TopicLog", n: int, payloads: tuple[Any, int]) -> None:
    """Encode a batch's first n records (payloads: where its offsets point)
    and append them to the log, but for those already on it (seq up to
    log.last_seq: a batch written again after a failure, or handed over from
    a writer that died part-way), so that the log holds each seq once."""
    i = log.first_new(lines.seqs(0), n)
    while i < n:
        ends = lines.encode(i, n, payloads)
        log.append(lines.seqs(i), ends, len(ends), lines.view)
        i += len(ends)
    log.appended()


def last_seq_on_disk(d: str, cut: bool = False) -> int:
    """The seq of the last whole line of the log in folder d (0: none),
    reading only the end of the last file; with cut, that file is first cut
    back to its last whole line (a writer died, or the disk filled, mid-line)."""
    try:
        names = sorted((e for e in os.listdir(d) if e.endswith(SUFFIX)), reverse=True)
    except FileNotFoundError:
        return 0
    for name in names:
        with open(os.path.join(d, name), "rb+" if cut else "rb") as f:
            size = end = f.seek(0, os.SEEK_END)
            tail = b""
            while end > 0 and tail.count(b"\n") < 2:  # the last whole line, and its start
                step = min(end, 1 << 16)
                f.seek(end - step)
                tail = f.read(step) + tail
                end -= step
            whole = tail.rfind(b"\n") + 1
            if cut and end + whole < size:
                f.truncate(end + whole)
        for line in reversed(tail[:whole].split(b"\n")):
            try:
                seq = json.loads(line)["seq"]
            except (ValueError, KeyError, TypeError, RecursionError):
                continue
            if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0:
                return seq
    return 0


class TopicLog:
    """The segment files of one topic: append, rotate, fsync, retain.

    A failed write or fsync leaves no partial line: the file is cut back to
    its last whole line (a failed fsync under "always": to what the last one
    made durable) and closed, and the error raised; the caller writes the
    batch again, and lines already whole are not written twice (last_seq)."""

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
        self.write_errors = self.fsync_errors = 0
        self._behind = None       # the background fsync in progress (policy "interval")
        self.sync_failure: str | None = None  # the last background fsync failed: why
        self.last_seq = self._recover()   # the last seq whole on disk
        self._synced = (None, 0, self.last_seq)  # (path, size, last seq) the last fsync covered

    def files(self) -> list[str]:
        return sorted(e for e in os.listdir(self.dir) if e.endswith(SUFFIX))

    def _recover(self) -> int:
        """The last seq on disk, once the last file is cut back to its last
        whole line (a writer died, or the disk filled, mid-line)."""
        return last_seq_on_disk(self.dir, cut=True)

    def first_new(self, seqs, n: int) -> int:
        """The index of the first of n ascending seqs past last_seq (n if none)."""
        if n == 0 or seqs[0] > self.last_seq:
            return 0
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if seqs[mid] > self.last_seq:
                hi = mid
            else:
                lo = mid + 1
        return lo

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
        os.fchmod(self.fd, 0o600)  # whatever the umask
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
            self.last_seq = seqs[j - 1]
            self.written += j - i
            start, i = ends[j - 1], j

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
        is skipped (or, with wait, waits for it). The batches it covers were
        acked already: a failure is counted and kept in sync_failure (seen by
        /health) until an fsync succeeds again, not raised."""
        if self._behind is not None and (wait or not self._behind.is_alive()):
            self._join_behind()
        if self._behind is not None:
            return
        fd = os.dup(self.fd)
        self.unsynced = False
        self.last_fsync = time.monotonic()
        covered = (self.path, self.size, self.last_seq)

        def fsync():
            try:
                os.fsync(fd)
                self.fsyncs += 1
                self._synced = covered
                self.sync_failure = None
            except OSError as e:
                self.fsync_errors += 1
                self.sync_failure = (f"fsync of {covered[0]} failed ({e.strerror}): records up "
                                     f"to seq {covered[2]} may not be on disk")
            finally:
                os.close(fd)
        self._behind = threading.Thread(target=fsync, name="pymq-fsync", daemon=True)
        self._behind.start()

    def _join_behind(self) -> None:
        """Wait for the background fsync, if any."""
        if self._behind is not None:
            self._behind.join()
            self._behind = None

    def _write(self, view: memoryview) -> None:
        size = len(view)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError:
            self.write_errors += 1
            self._cut(self.size)  # no partial line: back to the last whole one
            raise
        self.size += size
        self.unsynced = True

    def _cut(self, size: int) -> None:
        """Truncate the current file to size and close it (the next append
        opens a new one); errors of the cut itself are left to readers, which
        skip a partial line."""
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, size)
        except OSError:
            pass
        finally:
            os.close(fd)
        self.unsynced = False

    def sync(self) -> None:
        """fsync now (after the background one, if any, has finished). A
        failed fsync (EIO: the kernel may have dropped the pages) raises;
        under "always" it first cuts the file back to what the last good
        fsync covered, since the batch is not acked and is written again."""
        self._join_behind()
        if self.fd is not None and (self.unsynced or self.sync_failure):
            try:
                os.fsync(self.fd)
            except OSError:
                self.fsync_errors += 1
                if self.cfg.persistence_fsync == "always":
                    path, size, seq = self._synced
                    self._cut(size if path == self.path else 0)
                    self.last_seq = seq
                raise
            self.fsyncs += 1
            self._synced = (self.path, self.size, self.last_seq)
            self.sync_failure = None
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
            try:
                self.sync()
            finally:
                if self.fd is not None:
                    os.close(self.fd)
                    self.fd = None


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
    firsts = [_first_seq(name) for name in files]
    for k, name in enumerate(files):
        if k + 1 < len(files) and firsts[k + 1] is not None and firsts[k + 1] <= from_seq:
            continue  # every seq of this file is below from_seq: not even read
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
                if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**63 or \
                        not isinstance(ts, (int, float)):
                    raise ValueError("bad seq or ts")
                ts_ns = int(ts * 1e9)  # NaN: ValueError; inf or 1e300: OverflowError
                if not -2**63 <= ts_ns < 2**63:  # what a record's int64 holds
                    raise ValueError("ts out of range")
                payload = binascii.a2b_base64(rec["payload"].encode("ascii"), strict_mode=True)
            except (ValueError, KeyError, TypeError, UnicodeEncodeError, OverflowError,
                    RecursionError, binascii.Error) as e:
                report.corrupt += 1
                report.problems.append(f"{path}:{i}: corrupt line skipped ({e})")
                continue
            if seq <= report.last_seq:
                report.duplicates += 1  # rewritten after a writer's death
                continue
            report.last_seq = seq
            if seq >= from_seq:
                report.records += 1
                yield seq, ts_ns, payload


def _first_seq(name: str) -> int | None:
    """The first seq of a log file, from its name ({seq:020d}.jsonl), if it has one."""
    stem = name[:-len(SUFFIX)]
    return int(stem) if stem.isdigit() else None


def replay(root: str, topic: str, from_seq: int, until_seq: int):
    """(seq, ts_ns, payload) of the log from from_seq up to (not including)
    until_seq: what a subscription with start= gets before the ring's records."""
    for rec in read_log(root, topic, from_seq):
        if rec[0] >= until_seq:
            return
        yield rec
