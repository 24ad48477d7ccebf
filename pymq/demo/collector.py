"""The demo's collector process: one member of a collector group.

Owns: reading with acks in bulk (subscribe_with_ack, get_batch: a batch is one
bytes object and arrays, no Message per message), nacking a share of first
deliveries (--nack-rate, AckBatch.nack of their indices) so that redelivery is
exercised, acking in batches (AckBatch.ack of the processed indices, once
--ack-batch are processed), and the member's own account: per streamer
the count, crc32 sum and a bitmap of the seqs processed (duplicates and gaps
show in it), invalid payloads, first deliveries out of order, latency. The
closing summary adds the members' accounts up.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import zlib
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import pymq

from ..cliutil import ignore_sigint
from .telemetry import TOPIC, valid

GROUPS = ("dashboard", "archiver")  # each gets every message; members split a group's share
READ_BATCH = 64        # most payloads a collector takes per read
STOP_POLL = 0.1        # seconds a collector waits for data before looking at its stop event
MAX_SEQ = 1 << 32      # a larger telemetry seq is invalid (it would size a bitmap)


def _mark(seen: dict[int, bytearray], streamer: int, seq: int) -> bool:
    """Set bit seq of the streamer's bitmap; False when it was set already (a duplicate)."""
    bm = seen.get(streamer)
    if bm is None:
        bm = seen[streamer] = bytearray(4096)
    i = seq >> 3
    if i >= len(bm):
        bm.extend(bytes(max(i + 1 - len(bm), len(bm))))
    bit = 1 << (seq & 7)
    if bm[i] & bit:
        return False
    bm[i] |= bit
    return True


def collector(group: str, member: int, name: str, nack_rate: float, ack_batch: int,
              ready: Event, stop: Event, abort: Event, results: Queue[dict[str, Any]]) -> None:
    """One member of a group (subscribe_with_ack): receive, validate, account
    and ack until told to stop (then it reads on until nothing is left) or to
    abort (it stops at once, after acking what it processed).

    A first delivery is nacked with probability nack_rate instead of being
    processed: it comes back (delivery_attempt 2) to some member of the group,
    which processes and acks it. Processed messages are acked with ack_many,
    ack_batch at a time (0: after each batch read), and before any wait."""
    ignore_sigint()

    per_streamer: dict[int, list[int]] = {}  # streamer -> [count, crc sum, last seq]
    seen: dict[int, bytearray] = {}           # streamer -> bitmap of the seqs processed
    dup_examples: list[tuple[int, int, int]] = []  # (streamer, seq, delivery_attempt)
    out: dict[str, Any] = {
        "role": "collector", "group": group, "member": member, "pid": os.getpid(), "count": 0,
        "acked": 0, "redelivered": 0, "nacked": 0, "duplicates": 0, "dup_examples": dup_examples,
        "crc": 0, "bytes": 0, "invalid": 0, "out_of_order": 0, "per_streamer": per_streamer,
        "seen": {}, "error": None, "latency_max": 0.0, "latency_sum": 0.0}
    parent = os.getppid()
    rng = random.Random(f"{group}/{member}/{os.getpid()}/{time.time_ns()}")
    read_size = min(READ_BATCH, ack_batch) if ack_batch else READ_BATCH
    count = acked = redelivered = nacked = dups = 0
    crc = nbytes = invalid = disorder = 0
    lat_max = lat_sum = 0.0
    todo: list[tuple[pymq.AckBatch, list[int]]] = []  # processed, waiting for their ack
    pending = 0  # messages in todo

    def flush(sub: pymq.AckSubscription) -> None:
        nonlocal acked, todo, pending
        if todo:
            batches, todo, pending = todo, [], 0
            for b, indices in batches:  # one native call a batch
                acked += b.ack(indices)  # counts the acks that took effect

    try:
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(pymq.connect(name))
            sub = client.subscribe_with_ack(TOPIC, group=group)  # an AckSubscription
            stack.enter_context(sub)
            ready.set()
            try:
                while True:
                    try:
                        batch = sub.get_batch(read_size, timeout=STOP_POLL)
                    except pymq.Timeout:
                        flush(sub)  # never sit on unacked messages while idle
                        if stop.is_set() or os.getppid() != parent:
                            break
                        continue
                    now = time.time()
                    nacks: list[int] = []
                    done: list[int] = []
                    attempts = batch.delivery_attempts
                    for i, view in enumerate(batch):  # memoryviews of batch.data
                        attempt = attempts[i]
                        if attempt == 1 and nack_rate and rng.random() < nack_rate:
                            nacks.append(i)  # not processed: it comes back
                            continue
                        payload = view.tobytes()  # for json
                        count += 1
                        if attempt > 1:
                            redelivered += 1
                        done.append(i)
                        c = zlib.crc32(payload)
                        crc += c
                        nbytes += len(payload)
                        try:
                            msg = json.loads(payload)
                        except ValueError:
                            invalid += 1
                            continue
                        if not valid(msg) or msg["seq"] > MAX_SEQ:
                            invalid += 1
                            continue
                        s, seq = msg["streamer"], msg["seq"]
                        if not _mark(seen, s, seq):
                            dups += 1
                            if len(dup_examples) < 3:
                                dup_examples.append((s, seq, attempt))
                        acc = per_streamer.get(s)
                        if acc is None:
                            acc = per_streamer[s] = [0, 0, 0]
                        acc[0] += 1
                        acc[1] += c
                        if attempt == 1:  # first deliveries reach a member in order
                            if seq <= acc[2]:
                                disorder += 1
                            else:
                                acc[2] = seq
                        lat = now - msg["ts"]
                        lat_sum += lat
                        if lat > lat_max:
                            lat_max = lat
                    if nacks:
                        nacked += batch.nack(nacks)
                    if done:
                        todo.append((batch, done))
                        pending += len(done)
                    if pending >= ack_batch:  # ack_batch 0: after every read
                        flush(sub)
                    if abort.is_set():
                        break
            finally:
                try:  # what was processed is acked, whatever happened
                    flush(sub)
                except Exception:
                    pass
    except (pymq.BrokerClosed, pymq.SubscriptionClosed) as e:
        if not stop.is_set():
            out["error"] = f"{type(e).__name__}: {e}"
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out.update(count=count, acked=acked, redelivered=redelivered, nacked=nacked,
                   duplicates=dups, crc=crc, bytes=nbytes, invalid=invalid,
                   out_of_order=disorder, latency_max=lat_max, latency_sum=lat_sum,
                   seen={s: bytes(bm) for s, bm in seen.items()})
        ready.set()
        results.put(out)
