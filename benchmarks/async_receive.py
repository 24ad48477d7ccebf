"""Async receive against sync receive, across processes: 1 publisher process ->
1 subscriber process that reads with get / get_many (sync) or aget /
aget_many in an asyncio loop (async).

    .venv/bin/python benchmarks/async_receive.py [--messages N] [--repeat R] [--json PATH]

Scenarios: 64 B payloads; single reads (get / aget) and batched reads
(get_many / aget_many of up to 64), each with a publisher that publishes in
batches of 64 (so the reader is the bottleneck), and "paced": the publisher
sends one message at a time, so the reader often finds nothing and must wait
(sync: a futex sleep in C; async: the loop's waiter thread and its wake-up).

Method as throughput.py (harness.py): the subscriber subscribes, the publisher
gets ready, both start on one Event; msg/s is messages / (subscriber's end -
publisher's start); CPU per message is the subscriber's getrusage user+system
time (the async side's waiter thread included: it is the same process) over
its span. The subscriber checks that payload i arrives i-th and computes
crc32 over the stream, compared with what was sent. Median of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import zlib

import harness as H
import pymq

RING_BYTES = 64 * 1024 * 1024
BATCH = 64
READ_TIMEOUT = 30.0
START_TIMEOUT = 60.0

# name, reader (sync|async), messages per read, publisher's batch, default messages
SCENARIOS = [
    ("sync get", "sync", 1, BATCH, 1_000_000),
    ("async aget", "async", 1, BATCH, 1_000_000),
    ("sync get_many", "sync", BATCH, BATCH, 4_000_000),
    ("async aget_many", "async", BATCH, BATCH, 4_000_000),
    ("sync get, paced", "sync", 1, 1, 300_000),
    ("async aget, paced", "async", 1, 1, 300_000),
]
SIZE = 64


def publisher(name, topic, batch, count, ready, go, conn) -> None:
    with H.child(conn):
        client = pymq.connect(name)
        try:
            client.stats()  # attach the topic before the clock starts
            fill, pack = H.filler(SIZE), H.INDEX.pack
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            cs, cpu, t0 = H.ctx_switches(), H.cpu_ns(), H.clock_ns()
            if batch == 1:
                publish = client.publish
                for i in range(count):
                    publish(topic, pack(i) + fill)
            else:
                for base in range(0, count, batch):
                    client.publish_many(topic, [pack(i) + fill
                                                for i in range(base, min(count, base + batch))])
            conn.send(H.measured(cpu, cs, t0, H.clock_ns()))
        finally:
            client.close()


def subscriber(name, topic, mode, per_read, count, ready, go, conn) -> None:
    with H.child(conn):
        client = pymq.connect(name)
        try:
            sub = client.subscribe(topic)
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            unpack, crc32 = H.INDEX.unpack_from, zlib.crc32
            state = {"crc": 0, "got": 0, "disorder": 0}

            def take(items):
                got = state["got"]
                for p in items:
                    if unpack(p)[0] != got:
                        state["disorder"] += 1
                    state["crc"] = crc32(p, state["crc"])
                    got += 1
                state["got"] = got

            cs, cpu, t0 = H.ctx_switches(), H.cpu_ns(), H.clock_ns()
            if mode == "sync":
                while state["got"] < count:
                    if per_read == 1:
                        take((sub.get(READ_TIMEOUT),))
                    else:
                        take(sub.get_many(min(per_read, count - state["got"]), READ_TIMEOUT))
            else:
                async def main():
                    while state["got"] < count:
                        if per_read == 1:
                            take((await sub.aget(READ_TIMEOUT),))
                        else:
                            take(await sub.aget_many(min(per_read, count - state["got"]),
                                                     READ_TIMEOUT))
                asyncio.run(main())
            out = H.measured(cpu, cs, t0, H.clock_ns())
            out.update(received=state["got"], crc=state["crc"], disorder=state["disorder"])
            sub.unsubscribe()
            conn.send(out)
        finally:
            client.close()


def run_once(ctx, broker, topic, mode, per_read, pub_batch, count) -> dict:
    procs = []
    try:
        sub_ready, pub_ready, go = ctx.Event(), ctx.Event(), ctx.Event()
        sub, sub_recv = H.start_child(ctx, procs, subscriber, "pymq-bench-sub",
                                      (broker.name, topic, mode, per_read, count, sub_ready, go))
        H.wait_event(sub_ready, sub, "subscriber", START_TIMEOUT)
        pub, pub_recv = H.start_child(ctx, procs, publisher, "pymq-bench-pub",
                                      (broker.name, topic, pub_batch, count, pub_ready, go))
        H.wait_event(pub_ready, pub, "publisher", START_TIMEOUT)
        go.set()
        p = H.receive(pub_recv, pub, "publisher", 300)
        s = H.receive(sub_recv, sub, "subscriber", 300)
        H.finish(procs, START_TIMEOUT)
    finally:
        H.reap(procs)
    want = H.payloads_crc(SIZE, range(count))
    if s["received"] != count or s["disorder"] or s["crc"] != want:
        raise RuntimeError(f"{topic}: verification failed: sent {count}, subscriber {s}")
    elapsed = (s["end_ns"] - p["start_ns"]) / 1e9
    return {"messages": count, "msg_per_s": count / elapsed, "elapsed_s": elapsed,
            "sub_cpu_us_per_msg": (s["user_ns"] + s["system_ns"]) / count / 1e3,
            "sub_sys_us_per_msg": s["system_ns"] / count / 1e3,
            "sub_voluntary_switches": s["voluntary_switches"], "verified": True}


def idle_cost(name: str, topics: int = 16, per_topic: int = 63, seconds: float = 5.0) -> dict:
    """CPU that `topics * per_topic` subscriptions awaiting in one loop cost
    while nothing arrives (the waiter's slices: it looks again every second),
    and the threads it took."""
    broker = pymq.Broker(pymq.BrokerConfig(name=name + "-idle", ring_bytes=64 * 1024,
                                           max_message_bytes=1024))
    try:
        subs = [broker.subscribe(f"idle{t}") for t in range(topics) for _ in range(per_topic)]

        async def main():
            from pymq import aio
            tasks = [asyncio.ensure_future(s.aget(timeout=seconds + 10)) for s in subs]
            waiter = aio.waiter()
            while sum(len(t.words) for t in waiter.sleepers.values()) < topics:
                await asyncio.sleep(0.01)
            cpu0, t0 = H.cpu_ns(), H.clock_ns()
            await asyncio.sleep(seconds)
            cpu1, t1 = H.cpu_ns(), H.clock_ns()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return (sum(cpu1) - sum(cpu0)) / (t1 - t0), len(waiter.sleepers)
        share, threads = asyncio.run(main())
        for s in subs:
            s.unsubscribe()
    finally:
        broker.close()
    return {"subscriptions": len(subs), "topics": topics, "cpu_share": share,
            "threads": threads}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per run (default: per scenario)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per scenario (default 5)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    name = f"async-{os.getpid()}"
    summary = []
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES))
    try:
        for k, (label, mode, per_read, pub_batch, default) in enumerate(SCENARIOS):
            count = args.messages or default
            runs = [run_once(ctx, broker, f"a{k}-{r}", mode, per_read, pub_batch, count)
                    for r in range(args.repeat)]
            med = lambda key: H.median(runs, key)  # noqa: E731
            summary.append({"scenario": label, "runs": len(runs), "messages": count,
                            **H.rate_summary(runs),
                            "sub_cpu_us_per_msg": med("sub_cpu_us_per_msg"),
                            "sub_sys_us_per_msg": med("sub_sys_us_per_msg"),
                            "sub_voluntary_switches": med("sub_voluntary_switches")})
            r = summary[-1]
            print(f"{label:<20}{r['msg_per_s']:>12,.0f} msg/s  ({r['msg_per_s_min']:,.0f}-"
                  f"{r['msg_per_s_max']:,.0f})  sub CPU {r['sub_cpu_us_per_msg']:.3f} us/msg "
                  f"(sys {r['sub_sys_us_per_msg']:.3f})  switches "
                  f"{r['sub_voluntary_switches']:,.0f}", flush=True)
    finally:
        broker.close()
    idle = idle_cost(name)
    print(f"idle: {idle['subscriptions']:,} subscriptions on {idle['topics']} topics awaited in "
          f"one loop: {idle['cpu_share'] * 100:.2f} % of a CPU, {idle['threads']} waiter "
          f"thread(s)", flush=True)
    left = H.leftovers(name) + H.leftovers(name + "-idle")
    if left:
        print(f"left in /dev/shm: {left}", file=sys.stderr)
        return 1
    if args.json:
        H.write_json(args.json, {"summary": summary, "idle": idle})
    return 0


if __name__ == "__main__":
    sys.exit(main())
