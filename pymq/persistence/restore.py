"""Recovery at start, and replay: a dead broker's ring flushed to disk, each
topic made again from its log and group positions (a backlog larger than the
ring streamed in by the supervisor's Restorer), history replayed from disk for
a group that starts before the ring's oldest record, a deleted topic's log
kept aside or removed.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

from .. import _core
from ..errors import BrokerClosed, Full, MQError, Timeout
from .checkpoint import group_positions, read_checkpoint, write_checkpoint
from .log import LogReport, TopicLog, last_seq_on_disk, read_log, topic_dir, write_lines
from .writer import BATCH

log = logging.getLogger("pymq.persistence")


def topics_on_disk(root: str) -> list[str]:
    from ..config import check_topic
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


def flush_stale_ring(ring: _core.Ring, root: str, cfg: Any) -> None:
    """A dead broker's ring (crash, shared memory intact): append what its
    writer had not yet put on disk, and record its groups' live positions,
    which are newer than the last checkpoint."""
    topic = ring.topic
    last = last_seq_on_disk(topic_dir(root, topic))
    state = group_positions(ring)
    # every record past the last on disk is still in the ring (the writer gates it)
    member = ring.join(_core.PERSIST_GROUP + "-flush", 0, _core.START_SEQ, last + 1, 0, 0, 0)
    batch = _core.Batch(BATCH, max(1 << 20, ring.max_msg))
    tl = TopicLog(root, topic, cfg)
    lines = _core.Lines(batch)
    written = 0
    try:
        while True:
            try:
                n = ring.read(member.member, member.member_gen, batch, BATCH, 0)
            except Timeout:
                break
            write_lines(lines, tl, n, (batch.buf, batch.buflen))
            written += n
    finally:
        tl.close()
    write_checkpoint(root, topic, state, fsync=True)
    if written:
        log.warning("recovered %d record(s) of %r from the dead broker's shared memory", written,
                    topic)


def restore_topic(name: str, topic: str, cfg: Any) -> dict[str, Any]:
    """Make the topic's segment again from its log and group positions, before
    any client can attach: records from the oldest position any durable group
    still needs, with their old seqs, as many as the ring takes; groups where
    they were. A backlog larger than the ring is not refused: the rest is
    streamed in by the supervisor (Restorer) as the groups make room, and
    publishes wait until it is in (their seqs come after). Returns figures."""
    from .. import segments
    root = cfg.persistence_dir
    state = read_checkpoint(root, topic) or {"next_seq": 1, "groups": []}
    report = LogReport()
    positions = [g["position"] for g in state["groups"]]
    start = min(positions) if positions else 1 << 62
    records = read_log(root, topic, start, report)
    first = next(records, None)
    next_seq = max(last_seq_on_disk(topic_dir(root, topic)), state["next_seq"] - 1) + 1
    params = _core.ring_params(cfg.ring_capacity, cfg.max_message_bytes, os.getpid(),
                               segments.start_stamp(), first[0] if first else next_seq)
    seg = segments.Segment.create(segments.topic_shm_name(name, topic), _core.ring_size(params))
    _core.Ring.init(seg, params)
    ring = _core.Ring(seg, topic)
    restored, used, streamed = 0, 0, False
    try:
        # No group exists yet to keep a record in: the first part is what fits
        # the empty ring without wrapping (nothing reclaimed), the rest waits
        # for the groups made below.
        chunks = _chunks(itertools.chain([first] if first else [], records),
                         cfg.ring_capacity // 4)
        for chunk in chunks:
            size = sum(_core.record_size(len(r[2])) for r in chunk)
            if used + size > cfg.ring_capacity:
                streamed = True  # the supervisor streams the rest in
                break
            _restore(ring, chunk, 0)
            restored += len(chunk)
            used += size
        if streamed:
            ring.restoring(next_seq)
        for g in state["groups"]:
            acked = sorted({s for s in g["acked"] if s > g["position"]})  # each once
            ring.group_restore(g["name"], _core.GROUP_ACK if g["ack"] else 0, g["position"],
                               acked if g["ack"] else [], int(cfg.ack_timeout * 1e9),
                               cfg.max_retries)
        ring.group_restore(_core.PERSIST_GROUP, _core.GROUP_ACK, next_seq, [],
                           _core.PERSIST_ACK_TIMEOUT_NS, _core.PERSIST_RETRIES)
    finally:
        ring.release()
    for p in report.problems:
        log.warning("%s", p)
    if streamed:
        log.info("topic %r: %d message(s) restored from disk; the rest of its backlog (up to "
                 "seq %d) is streamed in as its groups make room", topic, restored, next_seq - 1)
    return {"topic": topic, "records": restored, "streamed": streamed,
            "groups": len(state["groups"]), "next_seq": next_seq, "corrupt": report.corrupt,
            "torn": report.torn, "duplicates": report.duplicates}


Record = tuple[int, int, bytes]


def _chunks(records: Iterable[Record], limit: int) -> Iterator[list[Record]]:
    """Consecutive lists of records taking at most limit bytes of a ring each
    (at least one record each)."""
    chunk: list[Record] = []
    size = 0
    for rec in records:
        need = _core.record_size(len(rec[2]))
        if chunk and size + need > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(rec)
        size += need
    if chunk:
        yield chunk


def _restore(ring: _core.Ring, chunk: list[Record], timeout_ns: int) -> None:
    ring.restore([r[2] for r in chunk], array("Q", (r[0] for r in chunk)),
                 array("q", (r[1] for r in chunk)), timeout_ns)


class Restorer(threading.Thread):
    """In the supervisor: streams the rest of a topic's backlog from its log
    into its ring (from the ring's next_seq up to restore_end), waiting for
    room as the groups read and ack, then lets publishers go on. A restarted
    supervisor starts another, which carries on where the ring stands."""

    def __init__(self, ring: _core.Ring, cfg: Any):
        super().__init__(daemon=True, name=f"pymq-restore-{ring.topic}")
        self.ring, self.cfg = ring, cfg
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.restored = 0

    def run(self) -> None:
        ring, topic = self.ring, self.ring.topic
        try:
            end = ring.h.hdr.restore_end
            start = ring.h.hdr.next_seq
            records = read_log(self.cfg.persistence_dir, topic, start)
            for chunk in _chunks((r for r in records if r[0] < end), self.cfg.ring_capacity // 4):
                while True:
                    if self.stopping.is_set():
                        return
                    try:
                        _restore(ring, chunk, 200_000_000)
                        break
                    except Full:
                        continue  # no room yet: the groups have not read that far
                self.restored += len(chunk)
            ring.restoring(0)
            log.info("topic %r: its backlog from disk is in (%d message(s) streamed, up to seq "
                     "%d); publishes go on", topic, self.restored, end - 1)
        except (BrokerClosed, _core.TopicDeleted):
            pass  # closed or deleted meanwhile: nothing to restore into
        except BaseException as e:  # noqa: BLE001 - reported; the next sweep starts another
            self.error = e
            log.error("topic %r: restoring its backlog from disk: %s: %s", topic,
                      type(e).__name__, e)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


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
