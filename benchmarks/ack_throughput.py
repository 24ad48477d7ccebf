"""Cross-process throughput of at-least-once delivery (ack groups), 64 B payloads.

    .venv/bin/python benchmarks/ack_throughput.py [--messages N] [--repeat R] [--json PATH]

One publisher process -> 1 or 4 consumer processes, all members of one named
group ("workers") of one topic. The publisher always sends batches of 64 with
publish_many, so only the consumer side differs between scenarios:

  plain single     subscribe(),          get()                    (the reference)
  ack single       subscribe_with_ack(), get() + msg.ack()
  plain batch64    subscribe(),          get_many(64)
  ack batch64      subscribe_with_ack(), get_many(64) + ack_many(msgs)
  ... x4           the same with 4 member processes competing in the group

Method (as benchmarks/throughput.py): every run has a Broker of its own (unique
name, 64 MiB ring), closed after the run; the script fails if any segment of
its name remains in /dev/shm. The parent starts the members (spawned processes)
and waits for their Events "subscribed", then the publisher and its Event
"ready", then sets the Event "go" that all wait on. msg/s = messages / (last
member's end - publisher's start), on CLOCK_MONOTONIC. CPU per message is
getrusage(RUSAGE_SELF) user + system time over the measured span: the
publisher's, and the sum of the members', each divided by the messages.

A member does not know how many messages it will get: it reads with timeout 0
and, only when that finds nothing, notes the time (its end, if it got messages
since it last noted it), publishes its count in a shared array, and stops when
the counts add up to the total; otherwise it waits (get(timeout=0.05)) and
reads on. No clock or shared counter is touched per message.

Verification of every run: payload i carries i in its first 8 bytes. Each
member marks i in a bytearray of its own and counts indices not above the one
before (each member's deliveries must come in publish order: nothing is
redelivered in these runs), and computes crc32 over its stream. The parent
checks that the members' marks add up to exactly one per message (none lost,
none delivered twice), that each member's crc32 is that of the payloads it
marked, in order, and the broker's figures of the group at the end: published
== delivered == messages, lag 0 and, for ack groups, acked == messages,
pending == 0 and no redelivery, nack, timeout or dead letter. ack_many's return
values (acks that took effect) must add up to the messages too.

Scenarios run interleaved: repeat 1 of every scenario, then repeat 2, ... so
that a plain row and its ack row are measured minutes apart at most; each
ratio ack/plain is taken within one repeat, and the table gives its median.
Every scenario runs --repeat times (default 3); the table shows medians and
the range of msg/s.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import statistics
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # harness.py, throughput.py, also in spawned children

import harness as H  # noqa: E402  (same method: clocks, CPU, Events, payloads)
import pymq  # noqa: E402
import throughput as tp  # noqa: E402  (the publisher)

RING_BYTES = 64 * 1024 * 1024
SIZE = 64                 # payload bytes
BATCH = 64                # publish_many / get_many batch
TOPIC = "ackput"
GROUP = "workers"
IDLE = 0.05               # a member that found nothing waits this long before it looks again
READ_TIMEOUT = 30.0       # a member that got nothing for this long while messages are missing fails
START_TIMEOUT = tp.START_TIMEOUT

# name, ack, messages per read, members, default messages (about 2-3 s a run
# on the 2-core machine of docs/benchmarks.md)
SCENARIOS = [
    ("plain single", False, 1, 1, 1_500_000),
    ("ack single", True, 1, 1, 600_000),
    ("plain batch64", False, BATCH, 1, 5_000_000),
    ("ack batch64", True, BATCH, 1, 2_000_000),
    ("plain single x4", False, 1, 4, 1_500_000),
    ("ack single x4", True, 1, 4, 600_000),
    ("plain batch64 x4", False, BATCH, 4, 5_000_000),
    ("ack batch64 x4", True, BATCH, 4, 2_000_000),
]
PAIRS = [("single", "plain single", "ack single"),
         ("batch64", "plain batch64", "ack batch64"),
         ("single x4", "plain single x4", "ack single x4"),
         ("batch64 x4", "plain batch64 x4", "ack batch64 x4")]

clock_ns, cpu_ns, ctx_switches = H.clock_ns, H.cpu_ns, H.ctx_switches
INDEX = H.INDEX


# -- the member processes -------------------------------------------------------


def member(name, ack, batch, count, me, counts, ready, go, conn) -> None:
    """One member of GROUP: read (and ack) until the members' counts add up to count."""
    with H.child(conn):
        client = pymq.connect(name)
        try:
            if ack:
                sub = client.subscribe_with_ack(TOPIC, GROUP)
            else:
                sub = client.subscribe(TOPIC, GROUP)
            ready.set()
            if not go.wait(START_TIMEOUT):
                raise RuntimeError("no go signal")
            loop = {(False, 1): _plain_single, (True, 1): _ack_single,
                    (False, BATCH): _plain_batch, (True, BATCH): _ack_batch}[(ack, batch)]
            seen = bytearray(count)
            cs, cpu, t0 = ctx_switches(), cpu_ns(), clock_ns()
            got, t_end, crc, disorder, effective = loop(sub, count, me, counts, seen, t0)
            out = H.measured(cpu, cs, t0, t_end)
            out.update(received=got, crc=crc, disorder=disorder, acks_effective=effective,
                       pid=os.getpid())
            try:  # nothing may be left for this member
                extra = len(sub.get_many(1024, timeout=0))
            except pymq.Timeout:
                extra = 0
            out["extra"] = extra
            sub.unsubscribe()
            out["seen"] = bytes(seen)
            conn.send(out)
        finally:
            client.close()


def _idle(counts, me, got, count, t_last_msg) -> bool:
    """Nothing to read: publish our count; True when all messages are taken.
    Fails if nothing arrived for READ_TIMEOUT while messages are missing."""
    counts[me] = got
    if sum(counts) >= count:
        return True
    if clock_ns() - t_last_msg > READ_TIMEOUT * 1e9:
        raise RuntimeError(f"nothing for {READ_TIMEOUT} s: members took {list(counts)} of {count}")
    return False


# The four loops differ only in how they read and ack; the verification is the
# same. Each returns (received, end_ns, crc32, disorder, acks that took effect).
# On the fast path a message costs a read, unpack, a bytearray increment, a
# compare and a crc32 (plus the ack); the slow path runs only when nothing is
# there to read.


def _plain_single(sub, count, me, counts, seen, t0):
    get, Timeout, unpack, crc32 = sub.get, pymq.Timeout, INDEX.unpack_from, zlib.crc32
    got, noted, t_end, crc, disorder, last = 0, 0, t0, 0, 0, -1
    while True:
        try:
            p = get(0)
        except Timeout:
            if got != noted:
                t_end, noted = clock_ns(), got
            if _idle(counts, me, got, count, t_end):
                break
            try:
                p = get(IDLE)
            except Timeout:
                continue
        i = unpack(p)[0]
        seen[i] += 1
        if i <= last:
            disorder += 1
        last = i
        crc = crc32(p, crc)
        got += 1
    return got, t_end, crc, disorder, got


def _ack_single(sub, count, me, counts, seen, t0):
    get, Timeout, unpack, crc32 = sub.get, pymq.Timeout, INDEX.unpack_from, zlib.crc32
    got, noted, t_end, crc, disorder, last = 0, 0, t0, 0, 0, -1
    while True:
        try:
            m = get(0)
        except Timeout:
            if got != noted:
                t_end, noted = clock_ns(), got
            if _idle(counts, me, got, count, t_end):
                break
            try:
                m = get(IDLE)
            except Timeout:
                continue
        p = m.payload
        i = unpack(p)[0]
        seen[i] += 1
        if i <= last:
            disorder += 1
        last = i
        crc = crc32(p, crc)
        m.ack()
        got += 1
    return got, t_end, crc, disorder, got  # ack() returns nothing: the group's figures count them


def _plain_batch(sub, count, me, counts, seen, t0):
    get_many, Timeout, unpack, crc32 = sub.get_many, pymq.Timeout, INDEX.unpack_from, zlib.crc32
    got, noted, t_end, crc, disorder, last = 0, 0, t0, 0, 0, -1
    while True:
        try:
            items = get_many(BATCH, 0)
        except Timeout:
            if got != noted:
                t_end, noted = clock_ns(), got
            if _idle(counts, me, got, count, t_end):
                break
            try:
                items = get_many(BATCH, IDLE)
            except Timeout:
                continue
        for p in items:
            i = unpack(p)[0]
            seen[i] += 1
            if i <= last:
                disorder += 1
            last = i
        crc = crc32(b"".join(items), crc)
        got += len(items)
    return got, t_end, crc, disorder, got


def _ack_batch(sub, count, me, counts, seen, t0):
    get_many, Timeout, unpack, crc32 = sub.get_many, pymq.Timeout, INDEX.unpack_from, zlib.crc32
    ack_many = sub.ack_many
    got, noted, t_end, crc, disorder, last, effective = 0, 0, t0, 0, 0, -1, 0
    while True:
        try:
            msgs = get_many(BATCH, 0)
        except Timeout:
            if got != noted:
                t_end, noted = clock_ns(), got
            if _idle(counts, me, got, count, t_end):
                break
            try:
                msgs = get_many(BATCH, IDLE)
            except Timeout:
                continue
        items = [m.payload for m in msgs]
        for p in items:
            i = unpack(p)[0]
            seen[i] += 1
            if i <= last:
                disorder += 1
            last = i
        crc = crc32(b"".join(items), crc)
        effective += ack_many(msgs)
        got += len(msgs)
    return got, t_end, crc, disorder, effective


# -- the parent -----------------------------------------------------------------


def stream_crc(seen: bytes) -> int:
    """crc32 of the payloads whose index is marked in seen, in index order."""
    return H.payloads_crc(SIZE, itertools.compress(range(len(seen)), seen))


def verify(label: str, ack: bool, count: int, subs: list[dict], topic: dict,
           crc_cache: dict) -> None:
    """Raise unless every message went to exactly one member (once), intact and
    in order, and the broker's figures agree."""
    problems = []
    total = sum(s["received"] for s in subs)
    if total != count:
        problems.append(f"members received {total} of {count}")
    ones = int.from_bytes(b"\x01" * count, "little")
    marks = 0
    for k, s in enumerate(subs):
        seen = s["seen"]
        if len(seen) != count or (seen and max(seen) > 1):
            problems.append(f"member {k}: an index delivered to it twice")
        if s["disorder"] or s["extra"]:
            problems.append(f"member {k}: {s['disorder']} out of order, {s['extra']} extra")
        if s["acks_effective"] != s["received"]:
            problems.append(f"member {k}: {s['acks_effective']} acks took effect "
                            f"for {s['received']} messages")
        if len(subs) == 1:
            if count not in crc_cache:
                crc_cache[count] = tp.expected_crc(SIZE, count)
            want = crc_cache[count]
        else:
            want = stream_crc(seen)
        if s["crc"] != want:
            problems.append(f"member {k}: crc32 {s['crc']:#x}, expected {want:#x}")
        marks += int.from_bytes(seen, "little")
    if marks != ones:  # bytes of at most 1 each, at most 4 members: no carries
        problems.append("the members' indices are not exactly 0..messages-1 once each")
    g = topic["groups"].get(GROUP)
    if topic["published"] != count:
        problems.append(f"topic published {topic['published']}, expected {count}")
    if g is None:
        problems.append(f"group {GROUP!r} missing from stats")
    else:
        want = {"delivered": count, "lag": 0, "members": 0}
        if ack:
            want.update(acked=count, pending=0, redelivered=0, nacked=0, timeouts=0,
                        dead_lettered=0)
        for key, value in want.items():
            if g[key] != value:
                problems.append(f"group {key} = {g[key]}, expected {value}")
    if problems:
        raise RuntimeError(f"{label}: verification failed:\n  " + "\n  ".join(problems)
                           + f"\n  group figures: {g}")


def run_once(ctx, serial: int, label: str, ack: bool, batch: int, members: int, count: int,
             crc_cache: dict) -> dict:
    name = f"ackput-{os.getpid()}-{serial}"
    counts = ctx.RawArray("q", members)
    go, pub_ready = ctx.Event(), ctx.Event()
    procs, pipes = [], []
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES))
    try:
        readies = []
        for k in range(members):
            ready = ctx.Event()
            proc, recv = H.start_child(ctx, procs, member, f"pymq-ackput-m{k}",
                                       (name, ack, batch, count, k, counts, ready, go))
            pipes.append(recv)
            readies.append(ready)
        for k, (ready, proc) in enumerate(zip(readies, procs)):
            H.wait_event(ready, proc, f"member {k}", START_TIMEOUT)
        pub, pub_recv = H.start_child(ctx, procs, tp.publisher, "pymq-ackput-pub",
                                      (name, TOPIC, SIZE, BATCH, count, pub_ready, go))
        H.wait_event(pub_ready, pub, "publisher", START_TIMEOUT)
        go.set()
        budget = 120.0 + count * 10e-6  # generous: a failed run must end, not hang
        p = H.receive(pub_recv, pub, "publisher", budget)
        subs = [H.receive(conn, proc, f"member {k}", budget)
                for k, (conn, proc) in enumerate(zip(pipes, procs))]
        H.finish(procs, START_TIMEOUT)
        topic = broker.stats()["topics"][TOPIC]
    finally:
        H.reap(procs)
        broker.close()
    left = H.leftovers(name)
    if left:
        raise RuntimeError(f"left in {H.SHM_DIR}: {left}")

    verify(label, ack, count, subs, topic, crc_cache)
    elapsed = (max(s["end_ns"] for s in subs) - p["start_ns"]) / 1e9
    shares = [s["received"] / count for s in subs]
    return {
        "messages": count, "ack": ack, "batch": batch, "members": members, "elapsed_s": elapsed,
        "msg_per_s": count / elapsed,
        "publisher_s": (p["end_ns"] - p["start_ns"]) / 1e9,
        "pub_cpu_us_per_msg": (p["user_ns"] + p["system_ns"]) / count / 1e3,
        "sub_cpu_us_per_msg": sum(s["user_ns"] + s["system_ns"] for s in subs) / count / 1e3,
        "sub_sys_us_per_msg": sum(s["system_ns"] for s in subs) / count / 1e3,
        "member_share_min": min(shares), "member_share_max": max(shares),
        "sub_voluntary_switches": sum(s["voluntary_switches"] for s in subs),
        "sub_involuntary_switches": sum(s["involuntary_switches"] for s in subs),
        "publish_waits": topic["publish_waits"],
        "group": topic["groups"][GROUP], "verified": True,
    }


def baselines(count: int = 200_000) -> dict:
    """What the members' verification costs alone, in this process, on payloads
    already in memory (part of the member CPU per message, not pymq's)."""
    fill, pack, unpack, crc32 = H.filler(SIZE), INDEX.pack, INDEX.unpack_from, zlib.crc32
    pool = [pack(i) + fill for i in range(count)]
    seen = bytearray(count)
    crc, disorder, last = 0, 0, -1
    t0 = time.process_time_ns()
    for p in pool:
        i = unpack(p)[0]
        seen[i] += 1
        if i <= last:
            disorder += 1
        last = i
        crc = crc32(p, crc)
    t1 = time.process_time_ns()
    seen = bytearray(count)
    crc, disorder, last = 0, 0, -1
    t2 = time.process_time_ns()
    for base in range(0, count, BATCH):
        items = pool[base:base + BATCH]
        for p in items:
            i = unpack(p)[0]
            seen[i] += 1
            if i <= last:
                disorder += 1
            last = i
        crc = crc32(b"".join(items), crc)
    t3 = time.process_time_ns()
    return {"verify_single_us_per_msg": (t1 - t0) / count / 1e3,
            "verify_batch64_us_per_msg": (t3 - t2) / count / 1e3}


def summarise(label: str, runs: list[dict]) -> dict:
    med = lambda key: H.median(runs, key)  # noqa: E731
    return {"scenario": label, "runs": len(runs), "messages": runs[0]["messages"],
            "members": runs[0]["members"], "ack": runs[0]["ack"], "batch": runs[0]["batch"],
            **H.rate_summary(runs),
            "elapsed_s": med("elapsed_s"),
            "pub_cpu_us_per_msg": med("pub_cpu_us_per_msg"),
            "sub_cpu_us_per_msg": med("sub_cpu_us_per_msg"),
            "member_share_min": min(r["member_share_min"] for r in runs),
            "member_share_max": max(r["member_share_max"] for r in runs),
            "publish_waits": med("publish_waits")}


def ratios(by_label: dict[str, list[dict]]) -> list[dict]:
    """ack / plain for each pair present, taken within each repeat, then the median."""
    out = []
    for name, plain, ack in PAIRS:
        if plain not in by_label or ack not in by_label:
            continue
        pairs = list(zip(by_label[plain], by_label[ack]))
        rate = [a["msg_per_s"] / p["msg_per_s"] for p, a in pairs]
        cpu = [a["sub_cpu_us_per_msg"] / p["sub_cpu_us_per_msg"] for p, a in pairs]
        out.append({"pair": name, "plain": plain, "ack": ack, "repeats": len(pairs),
                    "msg_per_s_ratio": statistics.median(rate),
                    "msg_per_s_ratio_min": min(rate), "msg_per_s_ratio_max": max(rate),
                    "sub_cpu_ratio": statistics.median(cpu),
                    "sub_cpu_ratio_min": min(cpu), "sub_cpu_ratio_max": max(cpu)})
    return out


def print_tables(summary: list[dict], ratio: list[dict], base: dict) -> None:
    head = (f"{'scenario':<18}{'msgs':>11}{'runs':>6}{'msg/s':>12}{'msg/s range':>22}"
            f"{'pub CPU us/msg':>16}{'members CPU us/msg':>20}{'member share':>14}{'pub waits':>11}")
    print(head)
    print("-" * len(head))
    for r in summary:
        rng = f"{r['msg_per_s_min']:,.0f}-{r['msg_per_s_max']:,.0f}"
        share = (f"{r['member_share_min'] * 100:.0f}-{r['member_share_max'] * 100:.0f} %"
                 if r["members"] > 1 else "")
        print(f"{r['scenario']:<18}{r['messages']:>11,}{r['runs']:>6}{r['msg_per_s']:>12,.0f}"
              f"{rng:>22}{r['pub_cpu_us_per_msg']:>16.3f}{r['sub_cpu_us_per_msg']:>20.3f}"
              f"{share:>14}{r['publish_waits']:>11,.0f}")
    if ratio:
        print()
        print("ack / plain, within each repeat (median, range):")
        for q in ratio:
            print(f"  {q['pair']:<11} msg/s {q['msg_per_s_ratio']:.2f} "
                  f"({q['msg_per_s_ratio_min']:.2f}-{q['msg_per_s_ratio_max']:.2f})   "
                  f"members' CPU per message {q['sub_cpu_ratio']:.2f} "
                  f"({q['sub_cpu_ratio_min']:.2f}-{q['sub_cpu_ratio_max']:.2f})")
    print()
    print("baseline, no pymq (one process): the members' verification alone, us per message: "
          f"single {base['verify_single_us_per_msg']:.3f}, batch64 {base['verify_batch64_us_per_msg']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per run for every scenario (default: per scenario, "
                         "about 2-3 s a run: " + ", ".join(f"{s[0]} {s[4]:,}" for s in SCENARIOS) + ")")
    ap.add_argument("--repeat", type=int, default=3, help="runs per scenario; medians reported (default 3)")
    ap.add_argument("--scenario", action="append", choices=[s[0] for s in SCENARIOS],
                    help="run only this scenario (repeatable)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    if args.messages is not None and args.messages < 1:
        ap.error("--messages must be >= 1")
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")

    ctx = mp.get_context("spawn")
    scenarios = [s for s in SCENARIOS if not args.scenario or s[0] in args.scenario]
    by_label: dict[str, list[dict]] = {s[0]: [] for s in scenarios}
    crc_cache: dict = {}
    serial = itertools.count()
    load_before = os.getloadavg()
    for rep in range(args.repeat):  # interleaved: repeat 1 of each scenario, then repeat 2, ...
        for label, ack, batch, members, default_count in scenarios:
            count = args.messages or default_count
            r = run_once(ctx, next(serial), label, ack, batch, members, count, crc_cache)
            r.update(scenario=label, repeat=rep)
            by_label[label].append(r)
            print(f"# {label:<17} run {rep + 1}/{args.repeat}: {r['msg_per_s']:>12,.0f} msg/s  "
                  f"pub {r['pub_cpu_us_per_msg']:.3f} members {r['sub_cpu_us_per_msg']:.3f} "
                  f"CPU us/msg  waits {r['publish_waits']}  ok", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    summary = [summarise(label, runs) for label, runs in by_label.items()]
    ratio = ratios(by_label)
    base = baselines()
    print_tables(summary, ratio, base)
    if args.json:
        H.write_json(args.json, {
            **H.run_info(), "ring_bytes": RING_BYTES, "payload_bytes": SIZE, "batch": BATCH,
            "repeat": args.repeat, "loadavg_before": load_before, "loadavg_after": load_after,
            "summary": summary, "ratios": ratio,
            "runs": [r for runs in by_label.values() for r in runs], "baselines": base})
    return 0


if __name__ == "__main__":
    sys.exit(main())
