"""What an at-least-once read costs over a plain one, in one process, and where it goes.

    .venv/bin/python benchmarks/ack_profile.py [--messages N] [--repeat R] [--perf DIR]

Four loops over 64 B messages, each its own subscription of a named group of one
topic, the ring filled first (so the loop never waits and nothing else runs):

  plain        subscribe(),          get()
  ack          subscribe_with_ack(), get() + msg.ack()
  bulk plain   subscribe(),          get_batch(1024)
  bulk ack     subscribe_with_ack(), get_batch(1024) + batch.ack()

The loops are interleaved, R rounds; each prints ns a message (min and median over the
rounds). Every message is checked once at the end of each loop: how many were read
(the group's delivered, and acked for an ack group, equal the messages; none pending).

With --perf DIR, each loop of the last round also runs under `perf record -g` (started
after the ring is filled, stopped as the loop ends) into DIR/<loop>.data, and the
loop's top symbols are printed (perf report --no-children): where its time goes.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

import pymq

SIZE = 64
BATCH = 1024
LOOPS = ("plain", "ack", "bulk plain", "bulk ack")


def run(loop: str, n: int, perf_dir: str | None) -> float:
    n = -(-n // BATCH) * BATCH  # published BATCH at a time
    name = f"ackprof{os.getpid()}"
    b = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=n * 128 + (8 << 20),  # all at once
                                      max_message_bytes=1024))
    try:
        ack = "ack" in loop
        s = b.subscribe_with_ack("t", "g") if ack else b.subscribe("t", "g")
        payloads = [b"x" * SIZE] * BATCH
        for _ in range(0, n, BATCH):
            b.publish_many("t", payloads)
        perf = None
        if perf_dir:
            out = os.path.join(perf_dir, loop.replace(" ", "_") + ".data")
            perf = subprocess.Popen(["perf", "record", "-q", "-g", "-p", str(os.getpid()),
                                     "-o", out], stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # perf attaches: nothing to wait on
        t0 = time.perf_counter()
        read = {"plain": _plain, "ack": _ack, "bulk plain": _bulk_plain,
                "bulk ack": _bulk_ack}[loop](s, n)
        t1 = time.perf_counter()
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        g = b.stats()["topics"]["t"]["groups"]["g"]
        assert read == n and g["delivered"] == n, (loop, read, g)
        assert not ack or (g["acked"] == n and g["pending"] == 0), (loop, g)
        return (t1 - t0) / n * 1e9
    finally:
        b.close()


def _plain(s, n):
    get = s.get
    for _ in range(n):
        get(1.0)
    return n


def _ack(s, n):
    get = s.get
    for _ in range(n):
        get(1.0).ack()
    return n


def _bulk_plain(s, n):
    gb, read = s.get_batch, 0
    while read < n:
        read += len(gb(BATCH, 1.0))
    return read


def _bulk_ack(s, n):
    gb, read = s.get_batch, 0
    while read < n:
        batch = gb(BATCH, 1.0)
        assert batch.ack() == len(batch)
        read += len(batch)
    return read


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--perf", metavar="DIR", help="perf record the last round's loops there")
    a = p.parse_args(argv)
    if a.perf:
        os.makedirs(a.perf, exist_ok=True)
    got: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    for r in range(a.repeat):
        for loop in LOOPS:
            n = a.messages * (4 if loop.startswith("bulk") else 1)
            got[loop].append(run(loop, n, a.perf if r == a.repeat - 1 else None))
    print(f"{'loop':<12} {'min ns/msg':>11} {'median':>8}   ({a.repeat} rounds, 64 B, one process)")
    for loop in LOOPS:
        print(f"{loop:<12} {min(got[loop]):>11.1f} {statistics.median(got[loop]):>8.1f}")
    for plain, ack in (("plain", "ack"), ("bulk plain", "bulk ack")):
        print(f"{ack} / {plain}: {min(got[plain]) / min(got[ack]):.2f} of the plain rate")
    if a.perf:
        for loop in LOOPS:
            data = os.path.join(a.perf, loop.replace(" ", "_") + ".data")
            rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort",
                                  "symbol", "--stdio", "-g", "none"],
                                 capture_output=True, text=True).stdout
            top = [ln.strip() for ln in rep.splitlines() if "%" in ln and not ln.startswith("#")]
            print(f"\n{loop}: top symbols (perf, share of the loop's samples)")
            print("\n".join("  " + ln for ln in top[:18]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
