"""Cross-process throughput of pymq: 1 publisher process -> 1 subscriber process.

    .venv/bin/python benchmarks/throughput.py [--messages N] [--repeat R] [--json PATH]

Scenarios: payloads of 64 B and 4 KiB, sent with single calls (publish / get)
and with batched calls (publish_many / get_many, batches of 64).

Each run: the parent creates nothing but the Broker (unique name, 64 MiB
rings). It starts the subscriber (a spawned process) and waits for its Event
"subscribed"; then starts the publisher and waits for its Event "ready"; then
sets the Event "go" that both wait on. The publisher measures from "go" to its
last publish; the subscriber from "go" to its last message. Throughput is
messages / (subscriber's end - publisher's start), on CLOCK_MONOTONIC, which
all processes share. CPU per message is getrusage(RUSAGE_SELF) user + system
time of each process over the same span, divided by the number of messages.

Payload i is i as 8 little-endian bytes followed by fixed pseudo-random filler;
the publisher builds each payload in its loop (that cost is counted on its
side; the "baseline" lines show it alone). The subscriber checks that payload i
arrives i-th (no loss, duplicate or reordering) and computes crc32 over the
whole stream, which the parent compares with the crc32 of what was sent.

Every scenario runs --repeat times (default 5); the table shows the median of
each figure and the range of msg/s. Nothing is left in /dev/shm: the Broker is
closed at the end, and the script fails if any segment of its name remains.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import zlib

import harness as H
import pymq

RING_BYTES = 64 * 1024 * 1024
BATCH = 64
READ_TIMEOUT = 30.0      # a subscriber waiting longer than this for a message fails the run
START_TIMEOUT = 60.0     # seconds to wait for a child to be ready
SHM_DIR = "/dev/shm"

# name, payload bytes, messages per call, default messages (about 2-3 s a run
# on the 2-core machine of docs/benchmarks.md)
SCENARIOS = [
    ("single 64 B", 64, 1, 1_500_000),
    ("batch64 64 B", 64, BATCH, 6_000_000),
    ("single 4 KiB", 4096, 1, 800_000),
    ("batch64 4 KiB", 4096, BATCH, 1_000_000),
]

INDEX = H.INDEX
SHM_DIR = H.SHM_DIR
filler, clock_ns, cpu_ns, ctx_switches = H.filler, H.clock_ns, H.cpu_ns, H.ctx_switches


def expected_crc(size: int, count: int) -> int:
    return H.payloads_crc(size, range(count))


# -- the child processes ------------------------------------------------------


def publisher(name, topic, size, batch, count, ready, go, conn) -> None:
    with H.child(conn):
        client = pymq.connect(name)
        try:
            # stats() attaches every existing topic (the subscriber created this
            # one), so the first publish inside the measurement does not map it.
            if topic not in client.stats()["topics"]:
                raise RuntimeError(f"topic {topic!r} does not exist: the subscriber creates it")
            fill, pack = filler(size), INDEX.pack
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            cs, cpu, t0 = ctx_switches(), cpu_ns(), clock_ns()
            if batch == 1:
                publish = client.publish
                for i in range(count):
                    publish(topic, pack(i) + fill)
            else:
                publish_many = client.publish_many
                for base in range(0, count, batch):
                    publish_many(topic, [pack(i) + fill for i in range(base, min(count, base + batch))])
            t1 = clock_ns()
            conn.send(H.measured(cpu, cs, t0, t1))
        finally:
            client.close()


def subscriber(name, topic, size, batch, count, ready, go, conn) -> None:
    with H.child(conn):
        client = pymq.connect(name)
        try:
            sub = client.subscribe(topic)  # "latest": exactly what is published after this
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            unpack, crc32 = INDEX.unpack_from, zlib.crc32
            small = size * batch <= H.JOIN_MAX
            crc, got, disorder, first_bad = 0, 0, 0, None
            cs, cpu, t0 = ctx_switches(), cpu_ns(), clock_ns()
            if batch == 1:
                get = sub.get
                for i in range(count):
                    p = get(READ_TIMEOUT)
                    if unpack(p)[0] != i:
                        disorder += 1
                        first_bad = (i, unpack(p)[0]) if first_bad is None else first_bad
                    crc = crc32(p, crc)
                got = count
            else:
                get_many = sub.get_many
                while got < count:
                    items = get_many(min(batch, count - got), READ_TIMEOUT)
                    idx = [unpack(p)[0] for p in items]
                    if idx != list(range(got, got + len(items))):
                        disorder += 1
                        first_bad = (got, idx) if first_bad is None else first_bad
                    crc = H.crc_batch(items, crc, small)
                    got += len(items)
            t1 = clock_ns()
            out = H.measured(cpu, cs, t0, t1)
            out.update(received=got, crc=crc, disorder=disorder, first_bad=repr(first_bad))
            try:  # nothing beyond count may arrive
                extra = len(sub.get_many(1024, timeout=0))
            except pymq.Timeout:
                extra = 0
            out["extra"] = extra
            sub.unsubscribe()
            conn.send(out)
        finally:
            client.close()


# -- the parent -----------------------------------------------------------------


def start_pair(ctx, procs: list, name: str, topic: str, size: int, batch: int, count: int):
    """Start the subscriber, wait until it is subscribed, then the publisher,
    wait until it is ready. Returns (go, (publisher, its conn), (subscriber, its conn));
    "go" is not set yet. Both processes are appended to procs."""
    sub_ready, pub_ready, go = ctx.Event(), ctx.Event(), ctx.Event()
    args = (name, topic, size, batch, count)
    sub, sub_recv = H.start_child(ctx, procs, subscriber, "pymq-bench-sub", args + (sub_ready, go))
    H.wait_event(sub_ready, sub, "subscriber", START_TIMEOUT)
    pub, pub_recv = H.start_child(ctx, procs, publisher, "pymq-bench-pub", args + (pub_ready, go))
    H.wait_event(pub_ready, pub, "publisher", START_TIMEOUT)
    return go, (pub, pub_recv), (sub, sub_recv)


def check(what: str, s: dict, count: int, want_crc: int, published: int) -> bool:
    """Raise unless the subscriber got payloads 0..count-1 in order, nothing more,
    with the crc32 of what was sent, and the topic counted count publishes."""
    ok = (s["received"] == count and s["disorder"] == 0 and s["extra"] == 0
          and s["crc"] == want_crc and published == count)
    if not ok:
        raise RuntimeError(f"{what}verification failed: sent {count}, subscriber {s}, "
                           f"expected crc {want_crc}")
    return ok


def run_once(ctx, broker, topic: str, size: int, batch: int, count: int, crc_cache: dict) -> dict:
    before = broker.stats()["topics"].get(topic, {})
    procs = []
    try:
        go, (pub, pub_recv), (sub, sub_recv) = start_pair(ctx, procs, broker.name, topic,
                                                          size, batch, count)
        go.set()
        budget = 120.0 + count * size / 20e6  # generous: a failed run must end, not hang
        p = H.receive(pub_recv, pub, "publisher", budget)
        s = H.receive(sub_recv, sub, "subscriber", budget)
        H.finish(procs, START_TIMEOUT)
    finally:
        H.reap(procs)
    after = broker.stats()["topics"][topic]

    key = (size, count)
    if key not in crc_cache:
        crc_cache[key] = expected_crc(size, count)
    ok = check(f"{topic}: ", s, count, crc_cache[key],
               after["published"] - before.get("published", 0))
    elapsed = (s["end_ns"] - p["start_ns"]) / 1e9
    return {
        "messages": count, "payload_bytes": size, "batch": batch, "elapsed_s": elapsed,
        "msg_per_s": count / elapsed, "MB_per_s": count * size / elapsed / 1e6,
        "publisher_s": (p["end_ns"] - p["start_ns"]) / 1e9,
        "pub_cpu_us_per_msg": (p["user_ns"] + p["system_ns"]) / count / 1e3,
        "sub_cpu_us_per_msg": (s["user_ns"] + s["system_ns"]) / count / 1e3,
        "pub_sys_us_per_msg": p["system_ns"] / count / 1e3,
        "sub_sys_us_per_msg": s["system_ns"] / count / 1e3,
        "pub_voluntary_switches": p["voluntary_switches"],
        "sub_voluntary_switches": s["voluntary_switches"],
        "publish_waits": after["publish_waits"] - before.get("publish_waits", 0),
        "publish_refusals": after["publish_refusals"] - before.get("publish_refusals", 0),
        "crc32": s["crc"], "verified": ok,
    }


def baselines(count: int = 200_000) -> list[dict]:
    """What building and verifying payloads cost alone, in this process: part of
    each side's CPU per message in the table, not pymq's."""
    return H.baselines(count)


def summarise(name: str, runs: list[dict]) -> dict:
    med = lambda key: H.median(runs, key)  # noqa: E731
    return {"scenario": name, "runs": len(runs), "messages": runs[0]["messages"],
            **H.rate_summary(runs),
            "MB_per_s": med("MB_per_s"), "elapsed_s": med("elapsed_s"),
            "pub_cpu_us_per_msg": med("pub_cpu_us_per_msg"),
            "sub_cpu_us_per_msg": med("sub_cpu_us_per_msg"),
            "publish_waits": med("publish_waits")}


def print_table(summary: list[dict], base: list[dict]) -> None:
    head = (f"{'scenario':<15}{'msgs':>10}{'runs':>6}{'msg/s':>12}{'msg/s range':>22}{'MB/s':>9}"
            f"{'pub CPU us/msg':>16}{'sub CPU us/msg':>16}{'pub waits':>11}")
    print(head)
    print("-" * len(head))
    for r in summary:
        rng = f"{r['msg_per_s_min']:,.0f}-{r['msg_per_s_max']:,.0f}"
        print(f"{r['scenario']:<15}{r['messages']:>10,}{r['runs']:>6}{r['msg_per_s']:>12,.0f}"
              f"{rng:>22}{r['MB_per_s']:>9.1f}{r['pub_cpu_us_per_msg']:>16.3f}"
              f"{r['sub_cpu_us_per_msg']:>16.3f}{r['publish_waits']:>11,.0f}")
    print()
    print("baseline, no pymq (one process): build a payload / check index + crc32, us per message")
    for b in base:
        print(f"  {b['payload_bytes']:>5} B: build {b['build_us_per_msg']:.3f}, "
              f"verify {b['verify_us_per_msg']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per run for every scenario (default: per scenario, "
                         "about 2-3 s a run: " + ", ".join(f"{n} {c:,}" for n, _, _, c in SCENARIOS) + ")")
    ap.add_argument("--repeat", type=int, default=5, help="runs per scenario; medians reported (default 5)")
    ap.add_argument("--scenario", action="append", choices=[s[0] for s in SCENARIOS],
                    help="run only this scenario (repeatable)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.messages is not None and args.messages < 1:
        ap.error("--messages must be >= 1")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    ctx = mp.get_context("spawn")
    name = f"tput-{os.getpid()}"
    scenarios = [s for s in SCENARIOS if not args.scenario or s[0] in args.scenario]
    runs, summary, crc_cache = [], [], {}
    load_before = os.getloadavg()
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES))
    try:
        for k, (label, size, batch, default_count) in enumerate(scenarios):
            count = args.messages or default_count
            topic = f"tput-{k}"
            mine = []
            for rep in range(args.repeat):
                r = run_once(ctx, broker, topic, size, batch, count, crc_cache)
                r.update(scenario=label, repeat=rep)
                mine.append(r)
                print(f"# {label:<14} run {rep + 1}/{args.repeat}: {r['msg_per_s']:>12,.0f} msg/s "
                      f"{r['MB_per_s']:>8.1f} MB/s  pub {r['pub_cpu_us_per_msg']:.3f} "
                      f"sub {r['sub_cpu_us_per_msg']:.3f} CPU us/msg  "
                      f"waits {r['publish_waits']}  ok", file=sys.stderr, flush=True)
            runs.extend(mine)
            summary.append(summarise(label, mine))
    finally:
        broker.close()
    left = H.leftovers(name)
    if left:
        print(f"error: left in {SHM_DIR}: {left}", file=sys.stderr)
        return 1

    load_after = os.getloadavg()
    base = baselines()
    print_table(summary, base)
    if args.json:
        H.write_json(args.json, {
            **H.run_info(), "ring_bytes": RING_BYTES, "batch": BATCH, "repeat": args.repeat,
            "loadavg_before": load_before, "loadavg_after": load_after,
            "summary": summary, "runs": runs, "baselines": base})
    return 0


if __name__ == "__main__":
    sys.exit(main())
