"""The writer: one thread per topic, in the supervisor, that moves the topic's
records from its ring to its log as a member of the "~persist" ack group.

A topic's ring is made with that group in it, so a record leaves the ring only
once the writer has put it on disk and acked it. The writer reads a batch
(zero-copy: an ack group's records stay in the ring until acked), encodes the
whole batch's JSON lines in one native call, appends them, fsyncs by policy,
then acks the batch in one native call: no Python object per record.

Nothing is acked before it is written (and, under fsync "always", fsynced).
A write or fsync that fails (a full disk, EIO) leaves no partial line (see
TopicLog): the writer keeps its batch, reports the reason (`failing`, seen by
/health), and writes it again every RETRY_INTERVAL until it succeeds, so that
it recovers by itself once space is freed; meanwhile the ring fills and
publishers get Full. A writer that stops for any other reason leaves its
member, so that its batch goes at once to the next one, which skips the
seqs already on disk: the log holds each seq once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .. import _core
from ..errors import BrokerClosed, MQError, Timeout
from .log import TopicLog, write_lines

log = logging.getLogger("pymq.persistence")

BATCH = 1024          # records a writer takes per native read
RETRY_INTERVAL = 0.25  # seconds between attempts to write a batch that failed


class Writer(threading.Thread):
    """Moves one topic's records from its ring to its log, as a member of the
    topic's "~persist" ack group."""

    def __init__(self, ring: _core.Ring, owner: int, cfg: Any):
        """ring: the topic's; owner: the token of the process it runs in."""
        topic = ring.topic
        super().__init__(daemon=True, name=f"pymq-persist-{topic}")
        self.topic = topic
        self.log = TopicLog(cfg.persistence_dir, topic, cfg)
        joined = ring.join(_core.PERSIST_GROUP, _core.GROUP_ACK, _core.START["earliest"], 0,
                           owner, 0, 0)
        self.ring = ring
        self.group, self.group_gen = joined.group, joined.group_gen
        self.member, self.member_gen = joined.member, joined.member_gen  # gen None: left
        # zero-copy: records of "~persist" stay in the ring until it acks them,
        # so it encodes them straight from shared memory
        self.batch = _core.Batch(BATCH, max(1 << 20, ring.max_msg), zero_copy=True)
        self.lines = _core.Lines(self.batch)
        self.stopping = threading.Event()
        self.error: BaseException | None = None  # why it stopped, if not asked to
        self.failing: str | None = None  # why the batch in hand cannot be written now
        self.held = 0  # records read and not yet acked (written again after a failure)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                try:
                    self.step(timeout_ns=200_000_000)
                except OSError as e:  # a full disk, EIO: keep the batch, try again
                    if isinstance(e, MQError):
                        raise
                    self.fail(f"cannot write {self.log.dir}: {e.strerror or e}")
                    self.stopping.wait(RETRY_INTERVAL)
        except (BrokerClosed, _core.TopicDeleted):
            pass  # closed or deleted: what was left is the closer's to count
        except BaseException as e:
            self.error = e
            log.error("persistence of %r stopped: %s: %s", self.topic, type(e).__name__, e)
        finally:
            self.finish()

    def fail(self, why: str) -> None:
        if why != self.failing:
            log.error("persistence of %r: %s; %d record(s) wait, retrying every %g s",
                      self.topic, why, self.held, RETRY_INTERVAL)
        self.failing = why

    def step(self, timeout_ns: int) -> int:
        """Write one batch to disk, then ack it. Returns how many records."""
        if not self.held:
            try:
                self.held = self.ring.read(self.member, self.member_gen, self.batch, BATCH,
                                           timeout_ns)
            except Timeout:
                if self.log.unsynced and self.log.cfg.persistence_fsync == "interval":
                    self.log.sync_behind()
                return 0
        n = self.held
        with self.ring.data() as payloads:
            write_lines(self.lines, self.log, n, payloads)
        self.ring.ack(self.group, self.group_gen, self.batch, n)
        self.held = 0
        if self.failing:
            log.warning("persistence of %r writes again", self.topic)
            self.failing = None
        return n

    def finish(self) -> None:
        """Close the log; unless the topic is gone, leave the "~persist" group,
        so that a batch in hand goes at once to the next writer. Idempotent."""
        try:
            self.log.close()
        except OSError as e:
            log.error("persistence of %r: closing %s: %s", self.topic, self.log.dir, e.strerror)
        if self.member_gen is not None:
            try:
                self.ring.leave(self.member, self.member_gen)
                self.member_gen = None
            except MQError:
                pass  # its lock held for long (tried again by the next sweep), or corrupt

    def figures(self) -> dict[str, Any]:
        """The writer's counters, for /stats and /metrics."""
        lg = self.log
        return {"written": lg.written, "fsyncs": lg.fsyncs, "files_removed": lg.files_removed,
                "write_errors": lg.write_errors, "fsync_errors": lg.fsync_errors,
                "failing": self.failing or lg.sync_failure}

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
