"""The demo's streamer process: the telemetry of one host, published until told
to stop.

Owns: pacing (--rate), batching (--batch: publish_many), retrying a refused
publish (pymq.Full) instead of dropping it, and the streamer's own account
(count, crc32 sum, bytes, refusals) that the closing summary checks the
collectors and the broker against.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import pymq

from ..cliutil import ignore_sigint
from .telemetry import GPUS_PER_HOST, TOPIC, Gpu, record


def streamer(index: int, name: str, rate: float, batch: int, ready: Event, go: Event,
             stop: Event, results: Queue[dict[str, Any]]) -> None:
    """Publish telemetry of one host until told to stop; report count and checksum."""
    ignore_sigint()

    out: dict[str, Any] = {"role": "streamer", "index": index, "pid": os.getpid(), "count": 0,
                           "crc": 0, "bytes": 0, "last_seq": 0, "full_retries": 0, "error": None}
    parent = os.getppid()
    seq = crc = nbytes = 0
    try:
        with pymq.connect(name) as client:
            rng = random.Random(index)
            gpus = [Gpu(rng) for _ in range(GPUS_PER_HOST)]
            host = f"gpu-node-{index:02d}"
            ready.set()
            go.wait()
            t0 = time.monotonic()
            while True:
                if stop.is_set() or os.getppid() != parent:
                    break
                if rate > 0:  # pace: never ahead of t0 + sent / rate
                    ahead = t0 + (seq + batch) / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(min(ahead, 0.05))
                        continue
                payloads = []
                for k in range(batch):
                    s = seq + k + 1
                    gpu = s % GPUS_PER_HOST
                    payloads.append(record(host, gpu, gpus[gpu].sample(), index, s))
                published = False
                while True:  # a refused publish is retried, never dropped
                    try:
                        if batch == 1:
                            client.publish(TOPIC, payloads[0])
                        else:
                            client.publish_many(TOPIC, payloads)
                        published = True
                        break
                    except pymq.Full:
                        out["full_retries"] += 1
                        if stop.is_set():
                            break
                if not published:
                    break
                # counted only once publish returned: the figures stay exact
                seq += len(payloads)
                for p in payloads:
                    crc += zlib.crc32(p)
                    nbytes += len(p)
    except pymq.BrokerClosed:
        if not stop.is_set():
            out["error"] = "the broker closed while publishing"
    except Exception as e:  # reported in the summary, never lost
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out.update(count=seq, crc=crc, bytes=nbytes, last_seq=seq)
        ready.set()  # never leave the parent waiting for a streamer that failed
        results.put(out)
