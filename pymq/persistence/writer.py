"""The writer: one thread per topic, in the supervisor, that moves the topic's
records from its ring to its log as a member of the "~persist" ack group.

A topic's ring is made with that group in it, so a record leaves the ring only
once the writer has put it on disk and acked it. The writer reads a batch
(zero-copy: an ack group's records stay in the ring until acked), encodes the
whole batch's JSON lines in one native call, appends them, fsyncs by policy,
then acks the batch in one native call: no Python object per record. A
writer that dies with a batch in hand leaves it pending: the next one writes
it again, so a seq may appear twice in the log (readers keep the first).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .. import _core
from ..errors import BrokerClosed, MQError, SubscriptionClosed, Timeout
from .log import TopicLog, write_lines

log = logging.getLogger("pymq.persistence")

BATCH = 1024          # records a writer takes per native read


class Writer(threading.Thread):
    """Moves one topic's records from its ring to its log, as a member of the
    topic's "~persist" ack group."""

    def __init__(self, client: Any, topic: str, cfg: Any):
        super().__init__(daemon=True, name=f"pymq-persist-{topic}")
        self.topic = topic
        self.log = TopicLog(cfg.persistence_dir, topic, cfg)
        ring = client._ring(topic)
        joined = ring.join(_core.PERSIST_GROUP, _core.GROUP_ACK, _core.START["earliest"], 0,
                           client._owner_token(), 0, 0)
        self.ring = ring
        self.group, self.group_gen = joined.group, joined.group_gen
        self.member, self.member_gen = joined.member, joined.member_gen
        # zero-copy: records of "~persist" stay in the ring until it acks them,
        # so it encodes them straight from shared memory
        self.batch = _core.Batch(BATCH, max(1 << 20, ring.max_msg), zero_copy=True)
        self.lines = _core.Lines(self.batch)
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
            n = self.ring.read(self.member, self.member_gen, self.batch, BATCH, timeout_ns)
        except Timeout:
            if self.log.unsynced and self.cfg_policy() == "interval":
                self.log.sync()
            return 0
        with self.ring.data() as payloads:
            write_lines(self.lines, self.log, n, payloads)
        self.ring.ack(self.group, self.group_gen, self.batch, n)
        return n

    def cfg_policy(self) -> str:
        return self.log.cfg.persistence_fsync

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)
