"""How pymq's throughput and memory scale: topics, fan-out, message size, message count.

    .venv/bin/python benchmarks/scale.py [--quick] [--repeat R] [--part PART] [--json PATH]

Four parts (all of them by default; --part selects, repeatable):

- topics:  1, 10, 100, 1000 topics, 64 KiB rings, 64 B payloads. One publisher
           process publishes message i to topic i % T with single `publish` calls;
           one subscriber process, subscribed to all T topics, visits them round-robin
           with `get_many(64, timeout=0)` (an empty topic raises pymq.Timeout; it moves
           on). Reports msg/s, the bytes of the broker's files in /dev/shm
           (/dev/shm/pymq.<name>.*), the RSS of publisher and subscriber, and the
           supervisor's CPU over the run.
- fanout:  1, 4, 16 anonymous subscriber processes on one topic (8 MiB ring), 64 B,
           `publish_many` / `get_many` in batches of 64. Reports each subscriber's
           delivered msg/s and the aggregate (all deliveries / time to the last one).
- sizes:   16 B, 64 B, 1 KiB, 16 KiB, 256 KiB, 1 MiB, 1 publisher -> 1 subscriber,
           single `publish` / `get` calls, ring 8 MiB, max_message_bytes 1 MiB.
           Reports msg/s and MB/s (payload bytes, 10^6).
- memory:  1 publisher -> 1 subscriber, 64 B, 8 MiB ring, batches of 64, for N and
           10 N messages (fresh processes and broker each): RSS of both processes when
           ready and at the end, their peak RSS, and /dev/shm bytes at the end.

Method as in throughput.py: processes are spawned; each subscriber subscribes
and sets an Event, then the publisher attaches (stats() maps every topic) and
sets its Event; one "go" Event starts all. The publisher's clock starts at
"go"; each subscriber's ends at its last message (CLOCK_MONOTONIC). msg/s =
messages / (subscriber's end - publisher's start). Payload i carries i in its
first 8 bytes (little-endian), then fixed filler. Every subscriber checks, per
topic, that the messages arrive in order, none missing or repeated, computes a
crc32 per topic that the parent compares with that of what was sent, checks
that nothing more arrives, and the parent checks the topics' `published`
counters. Any failed check fails the script (exit 1).

Memory figures come from /proc/self/status in each child: VmRSS (= RssAnon +
RssFile + RssShmem), RssShmem (the mapped pages of the broker's segments, which
pymq maps with MAP_POPULATE, so a whole segment counts as soon as it is
mapped), and VmHWM (peak RSS). /dev/shm usage is the sum of st_size of the
broker's files (the segments are fully reserved with posix_fallocate, so size
and allocated blocks agree; both are in the JSON).

Each run uses a broker of its own (unique name), closed after the run; the
script fails if anything of that name is left in /dev/shm. --repeat defaults
to 1 (the tables then show single runs); with R > 1 they show medians and the
range of msg/s.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import zlib

import harness as H
import pymq

KiB, MiB = 1024, 1024 * 1024
BATCH = 64
READ_TIMEOUT = 30.0      # a subscriber without a message for this long fails the run
START_TIMEOUT = 120.0    # seconds to wait for a child to be ready (16 spawned on 2 CPUs)
SHM_DIR = H.SHM_DIR
INDEX = H.INDEX

# (topics, messages full, messages --quick)
TOPICS = [(1, 400_000, 20_000), (10, 400_000, 20_000), (100, 400_000, 20_000),
          (1000, 400_000, 20_000)]
TOPIC_RING = 64 * KiB
# (subscribers, messages full, messages --quick)
FANOUT = [(1, 400_000, 20_000), (4, 400_000, 20_000), (16, 400_000, 20_000)]
# (payload bytes, label, messages full, messages --quick)
SIZES = [(16, "16 B", 400_000, 20_000), (64, "64 B", 400_000, 20_000),
         (1 * KiB, "1 KiB", 300_000, 15_000), (16 * KiB, "16 KiB", 60_000, 3_000),
         (256 * KiB, "256 KiB", 4_000, 200), (1 * MiB, "1 MiB", 1_000, 50)]
BIG_RING = 8 * MiB
MEMORY_N = (200_000, 20_000)   # N full, N --quick; the part runs N and 10 N


filler, clock_ns = H.filler, H.clock_ns


def cpu_ns() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return int((ru.ru_utime + ru.ru_stime) * 1e9)


def memory() -> dict:
    """This process's memory from /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def expected_crcs(size: int, count: int, ntopics: int) -> list[int]:
    """Message i goes to topic i % ntopics: the crc32 of each topic's stream."""
    return [H.payloads_crc(size, range(k, count, ntopics)) for k in range(ntopics)]


def topic_names(ntopics: int) -> list[str]:
    return [f"t{k:04d}" for k in range(ntopics)]


# -- the child processes ------------------------------------------------------


def publisher(name, ntopics, size, count, mode, ready, go, conn) -> None:
    """mode "single": publish(topic[i % T], payload i); "many": publish_many, batches of 64, T = 1."""
    with H.child(conn):
        client = pymq.connect(name)
        try:
            topics = topic_names(ntopics)
            have = client.stats()["topics"]  # maps every topic: no mapping inside the measurement
            missing = [t for t in topics if t not in have]
            if missing:
                raise RuntimeError(f"topics do not exist: {missing[:3]}...")
            fill, pack = filler(size), INDEX.pack
            mem_ready = memory()
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            cpu, t0 = cpu_ns(), clock_ns()
            if mode == "single":
                publish = client.publish
                if ntopics == 1:
                    topic = topics[0]
                    for i in range(count):
                        publish(topic, pack(i) + fill)
                else:
                    for i in range(count):
                        publish(topics[i % ntopics], pack(i) + fill)
            else:
                assert ntopics == 1
                publish_many, topic = client.publish_many, topics[0]
                for base in range(0, count, BATCH):
                    publish_many(topic, [pack(i) + fill for i in range(base, min(count, base + BATCH))])
            t1 = clock_ns()
            conn.send({"start_ns": t0, "end_ns": t1, "cpu_ns": cpu_ns() - cpu,
                       "mem_ready": mem_ready, "mem_end": memory()})
        finally:
            client.close()


def subscriber(name, ntopics, size, count, mode, ready, go, conn) -> None:
    """mode "poll": round-robin get_many(64, timeout=0) over all topics;
    "many": get_many(64, READ_TIMEOUT) on one topic; "single": get(READ_TIMEOUT) on one topic.
    Message i is expected on topic i % T, in order of i."""
    with H.child(conn):
        client = pymq.connect(name)
        try:
            subs = [client.subscribe(t) for t in topic_names(ntopics)]  # creates the topics
            mem_ready = memory()
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            unpack, crc32 = INDEX.unpack_from, zlib.crc32
            small = size * BATCH <= H.JOIN_MAX
            nxt = list(range(ntopics))          # next index expected on each topic
            crcs = [0] * ntopics
            got, disorder, first_bad, empty_polls = 0, 0, None, 0
            cpu, t0 = cpu_ns(), clock_ns()
            if mode == "single":
                get = subs[0].get
                for i in range(count):
                    p = get(READ_TIMEOUT)
                    if unpack(p)[0] != i:
                        disorder += 1
                        first_bad = first_bad or (i, unpack(p)[0])
                    crcs[0] = crc32(p, crcs[0])
                got = count
            else:
                Timeout = pymq.Timeout
                timeout = 0 if mode == "poll" else READ_TIMEOUT
                pairs = list(enumerate(subs))
                last_progress = time.monotonic()
                while got < count:
                    progress = False
                    for k, sub in pairs:
                        try:
                            items = sub.get_many(BATCH, timeout)
                        except Timeout:
                            empty_polls += 1
                            continue
                        n = len(items)
                        idx = [unpack(p)[0] for p in items]
                        if idx != list(range(nxt[k], nxt[k] + n * ntopics, ntopics)):
                            disorder += 1
                            first_bad = first_bad or (k, nxt[k], idx[:4])
                        nxt[k] += n * ntopics
                        crcs[k] = H.crc_batch(items, crcs[k], small)
                        got += n
                        progress = True
                    if not progress:
                        now = time.monotonic()
                        if now - last_progress > READ_TIMEOUT:
                            raise RuntimeError(f"no message for {READ_TIMEOUT} s after {got} of {count}")
                    else:
                        last_progress = time.monotonic()
            t1 = clock_ns()
            out = {"start_ns": t0, "end_ns": t1, "cpu_ns": cpu_ns() - cpu, "received": got,
                   "crcs": crcs, "disorder": disorder, "first_bad": repr(first_bad),
                   "empty_polls": empty_polls, "mem_ready": mem_ready, "mem_end": memory()}
            extra = 0
            for sub in subs:  # nothing beyond count may arrive
                try:
                    extra += len(sub.get_many(1024, timeout=0))
                except pymq.Timeout:
                    pass
                sub.unsubscribe()
            out["extra"] = extra
            conn.send(out)
        finally:
            client.close()


# -- the parent -----------------------------------------------------------------


def shm_usage(name: str) -> dict:
    prefix = f"pymq.{name}."
    files = [f for f in os.listdir(SHM_DIR) if f.startswith(prefix)]
    size = blocks = 0
    for f in files:
        try:
            st = os.stat(os.path.join(SHM_DIR, f))
        except FileNotFoundError:
            continue
        size += st.st_size
        blocks += st.st_blocks * 512
    return {"files": len(files), "bytes": size, "allocated_bytes": blocks}


def proc_cpu_ns(pid: int) -> int | None:
    """user + system CPU of another process (the supervisor), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


_seq = 0


def run_once(ctx, *, ntopics: int, nsubs: int, size: int, count: int, pub_mode: str,
             sub_mode: str, ring_bytes: int, max_message_bytes: int | None,
             crc_cache: dict) -> dict:
    global _seq
    _seq += 1
    name = f"scale-{os.getpid()}-{_seq}"
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=ring_bytes,
                                           max_message_bytes=max_message_bytes))
    procs = []
    try:
        go, pub_ready = ctx.Event(), ctx.Event()
        subs = []
        for j in range(nsubs):
            ready = ctx.Event()
            p, r = H.start_child(ctx, procs, subscriber, f"pymq-scale-sub{j}",
                                 (name, ntopics, size, count, sub_mode, ready, go))
            subs.append((p, ready, r))
        for j, (p, ready, _) in enumerate(subs):
            H.wait_event(ready, p, f"subscriber {j}", START_TIMEOUT)
        pub, r_pub = H.start_child(ctx, procs, publisher, "pymq-scale-pub",
                                   (name, ntopics, size, count, pub_mode, pub_ready, go))
        H.wait_event(pub_ready, pub, "publisher", START_TIMEOUT)
        sup_pid = broker.stats()["supervisor"]["pid"]
        sup0, wall0 = proc_cpu_ns(sup_pid), clock_ns()
        go.set()
        budget = 120.0 + count * max(size, 64) * nsubs / 20e6
        pr = H.receive(r_pub, pub, "publisher", budget)
        srs = [H.receive(r, p, f"subscriber {j}", budget) for j, (p, _, r) in enumerate(subs)]
        sup1, wall1 = proc_cpu_ns(sup_pid), clock_ns()
        H.finish(procs, START_TIMEOUT)
        shm = shm_usage(name)
        stats = broker.stats()["topics"]
    finally:
        H.reap(procs)
        broker.close()
    left = shm_usage(name)
    if left["files"]:
        raise RuntimeError(f"left in {SHM_DIR}: {left['files']} files of broker {name}")

    key = (size, count, ntopics)
    if key not in crc_cache:
        crc_cache[key] = expected_crcs(size, count, ntopics)
    published = sum(stats[t]["published"] for t in topic_names(ntopics))
    for j, s in enumerate(srs):
        if not (s["received"] == count and s["disorder"] == 0 and s["extra"] == 0
                and s["crcs"] == crc_cache[key] and published == count):
            raise RuntimeError(f"verification failed (subscriber {j}): sent {count}, published "
                               f"{published}, received {s['received']}, disorder {s['disorder']} "
                               f"{s['first_bad']}, extra {s['extra']}, "
                               f"crc ok {s['crcs'] == crc_cache[key]}")
    t0 = pr["start_ns"]
    per_sub = [count / ((s["end_ns"] - t0) / 1e9) for s in srs]
    last = max(s["end_ns"] for s in srs)
    elapsed = (last - t0) / 1e9
    return {
        "broker": name, "topics": ntopics, "subscribers": nsubs, "payload_bytes": size,
        "messages": count, "publisher_mode": pub_mode, "subscriber_mode": sub_mode,
        "ring_bytes": ring_bytes, "elapsed_s": elapsed,
        "msg_per_s": count / elapsed,                       # messages published and all delivered
        "MB_per_s": count * size / elapsed / 1e6,
        "per_subscriber_msg_per_s": per_sub,
        "aggregate_delivered_msg_per_s": nsubs * count / elapsed,
        "pub_cpu_us_per_msg": pr["cpu_ns"] / count / 1e3,
        "sub_cpu_us_per_msg": [s["cpu_ns"] / count / 1e3 for s in srs],
        "sub_empty_polls": [s["empty_polls"] for s in srs],
        "publish_waits": sum(stats[t]["publish_waits"] for t in topic_names(ntopics)),
        "publisher_mem_ready": pr["mem_ready"], "publisher_mem_end": pr["mem_end"],
        "subscriber_mem_ready": [s["mem_ready"] for s in srs],
        "subscriber_mem_end": [s["mem_end"] for s in srs],
        "shm_end": shm,
        "supervisor_cpu_pct": (None if sup0 is None or sup1 is None
                               else 100 * (sup1 - sup0) / (wall1 - wall0)),
        "verified": True,
    }


def repeat(args, ctx, label: str, crc_cache: dict, **kw) -> dict:
    runs = []
    for rep in range(args.repeat):
        r = run_once(ctx, crc_cache=crc_cache, **kw)
        runs.append(r)
        print(f"# {label:<28} run {rep + 1}/{args.repeat}: {r['msg_per_s']:>11,.0f} msg/s "
              f"{r['MB_per_s']:>8.1f} MB/s  aggregate {r['aggregate_delivered_msg_per_s']:>11,.0f}  "
              f"shm {r['shm_end']['bytes'] / MiB:.1f} MiB  pub RSS "
              f"{r['publisher_mem_end']['VmRSS'] / MiB:.1f} MiB  sub RSS "
              f"{max(m['VmRSS'] for m in r['subscriber_mem_end']) / MiB:.1f} MiB  ok",
              file=sys.stderr, flush=True)
    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    return {"label": label, "runs": runs, **H.rate_summary(runs),
            "MB_per_s": med(lambda r: r["MB_per_s"]),
            "aggregate": med(lambda r: r["aggregate_delivered_msg_per_s"]),
            "per_sub_min": med(lambda r: min(r["per_subscriber_msg_per_s"])),
            "per_sub_median": med(lambda r: statistics.median(r["per_subscriber_msg_per_s"])),
            "per_sub_max": med(lambda r: max(r["per_subscriber_msg_per_s"])),
            "pub_cpu": med(lambda r: r["pub_cpu_us_per_msg"]),
            "sub_cpu": med(lambda r: statistics.median(r["sub_cpu_us_per_msg"])),
            "shm": med(lambda r: r["shm_end"]["bytes"]),
            "shm_files": runs[0]["shm_end"]["files"],
            "pub_rss": med(lambda r: r["publisher_mem_end"]["VmRSS"]),
            "pub_shmem": med(lambda r: r["publisher_mem_end"]["RssShmem"]),
            "pub_rss_ready": med(lambda r: r["publisher_mem_ready"]["VmRSS"]),
            "pub_hwm": med(lambda r: r["publisher_mem_end"]["VmHWM"]),
            "sub_rss": med(lambda r: max(m["VmRSS"] for m in r["subscriber_mem_end"])),
            "sub_anon": med(lambda r: max(m["RssAnon"] for m in r["subscriber_mem_end"])),
            "sub_shmem": med(lambda r: max(m["RssShmem"] for m in r["subscriber_mem_end"])),
            "sub_rss_ready": med(lambda r: max(m["VmRSS"] for m in r["subscriber_mem_ready"])),
            "sub_hwm": med(lambda r: max(m["VmHWM"] for m in r["subscriber_mem_end"])),
            "sup_cpu_pct": med(lambda r: r["supervisor_cpu_pct"] or 0.0),
            "publish_waits": med(lambda r: r["publish_waits"]),
            "empty_polls": med(lambda r: statistics.median(r["sub_empty_polls"]))}


def mib(b: float) -> str:
    return f"{b / MiB:.1f}"


def rate(x: float) -> str:
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.0f} k"


def rng(s: dict) -> str:
    return "" if len(s["runs"]) == 1 else f" ({rate(s['msg_per_s_min'])}-{rate(s['msg_per_s_max'])})"


def print_tables(res: dict) -> None:
    if "topics" in res:
        print("\nTopics (64 KiB rings, 64 B, publish round-robin / get_many(64, timeout=0) round-robin)")
        print("| topics | messages | msg/s | /dev/shm (files) | publisher RSS (shmem) | "
              "subscriber RSS (anon / shmem) | supervisor CPU | sub empty polls |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in res["topics"]:
            r0 = s["runs"][0]
            print(f"| {r0['topics']:,} | {r0['messages']:,} | {rate(s['msg_per_s'])}{rng(s)} | "
                  f"{mib(s['shm'])} MiB ({s['shm_files']}) | {mib(s['pub_rss'])} MiB "
                  f"({mib(s['pub_shmem'])}) | {mib(s['sub_rss'])} MiB ({mib(s['sub_anon'])} / "
                  f"{mib(s['sub_shmem'])}) | {s['sup_cpu_pct']:.1f} % | {s['empty_polls']:,.0f} |")
    if "fanout" in res:
        print("\nFan-out (one topic, 8 MiB ring, 64 B, publish_many / get_many, batches of 64)")
        print("| subscribers | messages each | per subscriber msg/s (min / median / max) | "
              "aggregate delivered msg/s | publisher CPU us/msg | subscriber CPU us/msg (median) |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in res["fanout"]:
            r0 = s["runs"][0]
            print(f"| {r0['subscribers']} | {r0['messages']:,} | {rate(s['per_sub_min'])} / "
                  f"{rate(s['per_sub_median'])} / {rate(s['per_sub_max'])} | {rate(s['aggregate'])} | "
                  f"{s['pub_cpu']:.2f} | {s['sub_cpu']:.2f} |")
    if "sizes" in res:
        print("\nMessage sizes (8 MiB ring, max_message_bytes 1 MiB, publish / get)")
        print("| payload | messages | msg/s | MB/s | publisher CPU us/msg | subscriber CPU us/msg | publish waits |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for s in res["sizes"]:
            r0 = s["runs"][0]
            print(f"| {s['label'].split()[-2]} {s['label'].split()[-1]} | {r0['messages']:,} | "
                  f"{rate(s['msg_per_s'])}{rng(s)} | {s['MB_per_s']:,.0f} | {s['pub_cpu']:.2f} | "
                  f"{s['sub_cpu']:.2f} | {s['publish_waits']:,.0f} |")
    if "memory" in res:
        print("\nMemory against message count (64 B, 8 MiB ring, batches of 64)")
        print("| messages | msg/s | publisher RSS ready -> end (peak) | "
              "subscriber RSS ready -> end (peak) | /dev/shm at end |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for s in res["memory"]:
            r0 = s["runs"][0]
            print(f"| {r0['messages']:,} | {rate(s['msg_per_s'])} | {mib(s['pub_rss_ready'])} -> "
                  f"{mib(s['pub_rss'])} MiB ({mib(s['pub_hwm'])}) | {mib(s['sub_rss_ready'])} -> "
                  f"{mib(s['sub_rss'])} MiB ({mib(s['sub_hwm'])}) | {s['shm']:,.0f} B |")


PARTS = ("topics", "fanout", "sizes", "memory")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a smoke run, ~1 min)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per case; medians reported (default 1)")
    ap.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    parts = args.part or list(PARTS)
    q = 1 if args.quick else 0
    ctx = mp.get_context("spawn")
    crc_cache: dict = {}
    res: dict = {}
    load_before, t_start = os.getloadavg(), time.monotonic()
    try:
        if "topics" in parts:
            res["topics"] = [
                repeat(args, ctx, f"topics {t}", crc_cache, ntopics=t, nsubs=1, size=64,
                       count=c[q], pub_mode="single", sub_mode="poll", ring_bytes=TOPIC_RING,
                       max_message_bytes=None)
                for t, *c in TOPICS]
        if "fanout" in parts:
            res["fanout"] = [
                repeat(args, ctx, f"fanout {n} subscribers", crc_cache, ntopics=1, nsubs=n,
                       size=64, count=c[q], pub_mode="many", sub_mode="many",
                       ring_bytes=BIG_RING, max_message_bytes=None)
                for n, *c in FANOUT]
        if "sizes" in parts:
            res["sizes"] = [
                repeat(args, ctx, f"size {label}", crc_cache, ntopics=1, nsubs=1, size=size,
                       count=c[q], pub_mode="single", sub_mode="single", ring_bytes=BIG_RING,
                       max_message_bytes=1 * MiB)
                for size, label, *c in SIZES]
        if "memory" in parts:
            n = MEMORY_N[q]
            res["memory"] = [
                repeat(args, ctx, f"memory {c:,} messages", crc_cache, ntopics=1, nsubs=1,
                       size=64, count=c, pub_mode="many", sub_mode="many", ring_bytes=BIG_RING,
                       max_message_bytes=None)
                for c in (n, 10 * n)]
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    left = [f for f in os.listdir(SHM_DIR) if f.startswith(f"pymq.scale-{os.getpid()}-")]
    if left:
        print(f"error: left in {SHM_DIR}: {left[:5]}", file=sys.stderr)
        return 1
    load_after = os.getloadavg()
    print_tables(res)
    print(f"\nall runs verified; nothing left in {SHM_DIR}; {time.monotonic() - t_start:.0f} s; "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    if args.json:
        H.write_json(args.json, {
            **H.run_info(), "quick": args.quick, "repeat": args.repeat,
            "loadavg_before": load_before, "loadavg_after": load_after, "results": res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
