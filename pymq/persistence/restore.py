"""Recovery at start, and replay: a dead broker's ring flushed to disk, each
topic made again from its log and group positions, history replayed from disk
for a group that starts before the ring's oldest record, a deleted topic's log
kept aside or removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from array import array
from collections.abc import Iterator
from typing import Any

from .. import _core
from ..errors import MQError, PersistenceError, Timeout
from .checkpoint import group_positions, read_checkpoint, write_checkpoint
from .log import LogReport, TopicLog, read_log, topic_dir, write_lines
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
    report = LogReport()
    for _ in read_log(root, topic, 1 << 62, report):
        pass
    state = group_positions(ring)
    # every record past the last on disk is still in the ring (the writer gates it)
    member = ring.join(_core.PERSIST_GROUP + "-flush", 0, _core.START_SEQ, report.last_seq + 1,
                       0, 0, 0)
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
    still needs, with their old seqs; groups where they were. Returns figures."""
    from .. import segments
    root = cfg.persistence_dir
    state = read_checkpoint(root, topic) or {"next_seq": 1, "groups": []}
    report = LogReport()
    positions = [g["position"] for g in state["groups"]]
    start = min(positions) if positions else 1 << 62
    records = list(read_log(root, topic, start, report))
    next_seq = max(report.last_seq, state["next_seq"] - 1) + 1
    first = records[0][0] if records else next_seq
    params = _core.ring_params(cfg.ring_capacity, cfg.max_message_bytes, os.getpid(),
                               segments.start_stamp(), first)
    seg = segments.Segment.create(segments.topic_shm_name(name, topic), _core.ring_size(params))
    _core.Ring.init(seg, params)
    ring = _core.Ring(seg, topic)
    try:
        for i, j in _core.spans_within([len(r[2]) for r in records], cfg.ring_capacity // 4):
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
                           _core.PERSIST_ACK_TIMEOUT_NS, _core.PERSIST_RETRIES)
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
