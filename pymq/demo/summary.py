"""The demo's closing account: every message accounted for, or why not.

Owns: the checks (the streamers' counts and crc32 sums against the broker's
figures and against each collector group: processed == published, every
(streamer, seq) exactly once, every processed message acked once, nothing
pending or dead-lettered, nacks and redeliveries as the members saw them; the
persistence files, when on), the printed summary, and when the run counts as
drained or settled. Pure functions of the figures and of the processes'
reports: nothing here talks to a broker.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from .collector import GROUPS
from .telemetry import TOPIC

Figures = dict[str, Any]  # a part of Client.stats(), or a process's report

ACK_FIGURES = ("acked", "nacked", "redelivered", "dead_lettered", "timeouts", "pending")


def topic_figures(stats: Figures) -> Figures:
    """The demo topic's figures in Client.stats(); zeros before it exists."""
    return stats["topics"].get(TOPIC) or {"published": 0, "delivered": 0, "depth": 0,
                                          "ring_bytes_used": 0, "ring_bytes_capacity": 1,
                                          "publish_waits": 0, "publish_refusals": 0, "groups": {},
                                          **dict.fromkeys(ACK_FIGURES, 0)}


def drained(stats: Figures) -> bool:
    """Every group acked everything published."""
    t = topic_figures(stats)
    return all(g in t["groups"] and t["groups"][g]["acked"] >= t["published"] for g in GROUPS)


def settled(stats: Figures) -> bool:
    """Nothing more will happen: every group acked or dead-lettered everything
    published and has no delivery pending (dead-lettered ones never come back)."""
    t = topic_figures(stats)
    groups = [t["groups"].get(g) for g in GROUPS]
    return all(g is not None and g["pending"] == 0 and
               g["acked"] + g["dead_lettered"] >= t["published"] for g in groups)


def _hex(n: int) -> str:
    return f"{n & 0xFFFFFFFFFFFFFFFF:016x}"


def report(name: str, stats: Figures, s_results: list[Figures], c_results: list[Figures], *,
           started: int, members_per_group: int, problems: list[str], ran: float,
           drain_time: float, drain_problem: str | None, interrupted: bool, peak_rate: float,
           peak_used: int) -> bool:
    """Print the closing accounting; True when everything balances.

    stats: the broker's figures at the end; s_results, c_results: the reports
    of the streamers and the collectors; started: how many streamers started;
    members_per_group: how many members each group started; problems: what
    went wrong already (processes that did not start or exit); drain_problem:
    why the groups did not drain, or None; peak_rate, peak_used: the peaks of
    the live figures (msg/s, ring bytes used)."""
    t = topic_figures(stats)
    bad = list(problems)
    s_results.sort(key=lambda r: r["index"])
    published = sum(r["count"] for r in s_results)
    crc = sum(r["crc"] for r in s_results)
    nbytes = sum(r["bytes"] for r in s_results)
    print()
    print("=" * 78)
    how = "interrupted after" if interrupted else "ran"
    print(f"summary: {how} {ran:.1f} s, drained in {drain_time:.2f} s; broker {name!r}")
    print(f"published  {published:>12,} messages ({nbytes / 1e6:,.1f} MB), "
          f"{published / max(ran, 1e-9):,.0f} msg/s; crc32 sum {_hex(crc)}")
    print(f"  broker stats: published {t['published']:,}, publish waits "
          f"{t['publish_waits']:,}, refusals {t['publish_refusals']:,}, "
          f"peak {peak_rate:,.0f} msg/s, ring peak {peak_used / 1024:,.0f} KiB used")
    if len(s_results) != started:
        bad.append(f"{started - len(s_results)} streamer(s) never reported")
    for r in s_results:
        err = f"  ERROR {r['error']}" if r["error"] else ""
        print(f"  streamer {r['index']} pid {r['pid']:>7}  {r['count']:>12,}  crc32 sum "
              f"{_hex(r['crc'])}  Full retries {r['full_retries']}{err}")
        if r["error"]:
            bad.append(f"streamer {r['index']}: {r['error']}")
    refused = sum(r["full_retries"] for r in s_results)
    if refused != t["publish_refusals"]:
        bad.append(f"streamers were refused (pymq.Full) {refused:,} times, the broker counted "
                   f"{t['publish_refusals']:,} refusals")
    if published != t["published"]:
        bad.append(f"streamers counted {published:,} published, the broker {t['published']:,}")
    by_streamer = {r["index"]: r for r in s_results}
    for group in GROUPS:
        members = sorted((r for r in c_results if r["group"] == group), key=lambda r: r["member"])
        bad += _group_summary(group, members, t["groups"].get(group), published, crc,
                              by_streamer, members_per_group)
    if drain_problem:
        bad.append(f"the groups did not ack every published message {drain_problem}")
    for line in bad:
        print(f"  does not balance: {line}")
    print("=" * 78)
    return not bad


def _bits(n: int) -> int:
    return bin(n).count("1")


def _lowest(n: int) -> int:
    return (n & -n).bit_length() - 1


def _distinct(members: list[Figures], by_streamer: dict[int, Figures]
              ) -> tuple[list[str], set[int], int, int]:
    """Check the group's (streamer, seq) bitmaps against what each streamer
    published: returns (complaints, the streamers they name, distinct messages
    processed, duplicates across members). Duplicates inside one member are
    counted by that member."""
    bad: list[str] = []
    named: set[int] = set()
    distinct = dups = 0
    streamers = set(by_streamer) | {s for r in members for s in r["seen"]}
    for idx in sorted(streamers):
        union = overlap = 0
        for r in members:
            bm = r["seen"].get(idx)
            if bm:
                b = int.from_bytes(bm, "little")
                overlap |= union & b
                union |= b
        before = len(bad)
        distinct += _bits(union)
        if overlap:
            dups += _bits(overlap)
            bad.append(f"from streamer {idx}: {_bits(overlap):,} message(s) processed by more "
                       f"than one member (duplicates), e.g. seq {_lowest(overlap)}")
        s = by_streamer.get(idx)
        if s is None:
            bad.append(f"{_bits(union):,} message(s) from streamer {idx}, which never reported")
            continue
        expected = (1 << (s["count"] + 1)) - 2  # seqs 1..count
        missing, extra = expected & ~union, union & ~expected
        if missing:
            bad.append(f"from streamer {idx}: {_bits(missing):,} published message(s) never "
                       f"processed, e.g. seq {_lowest(missing)}")
        if extra:
            bad.append(f"from streamer {idx}: {_bits(extra):,} message(s) processed that it "
                       f"never counted as published, e.g. seq {_lowest(extra)}")
        if len(bad) > before:
            named.add(idx)
    return bad, named, distinct, dups


def _group_summary(group: str, members: list[Figures], g: Figures | None, published: int,
                   crc: int, by_streamer: dict[int, Figures], want_members: int) -> list[str]:
    """Print one group's accounting; returns its complaints."""
    bad: list[str] = []
    g = g or {"delivered": 0, "lag": 0, "members": 0, **dict.fromkeys(ACK_FIGURES, 0)}
    processed = sum(r["count"] for r in members)
    acked = sum(r["acked"] for r in members)
    redelivered = sum(r["redelivered"] for r in members)
    nacked = sum(r["nacked"] for r in members)
    local_dups = sum(r["duplicates"] for r in members)
    gcrc = sum(r["crc"] for r in members)
    set_bad, named, distinct, cross_dups = _distinct(members, by_streamer)
    dups = local_dups + cross_dups
    balanced = (processed == published == distinct == acked and gcrc == crc and not set_bad
                and not dups)
    print(f"group {group:10} processed {processed:>10,} of {published:,}, distinct {distinct:,}, "
          f"acked {acked:,}, duplicates {dups:,}  crc32 sum {_hex(gcrc)} "
          f"{'==' if gcrc == crc else '!='} {_hex(crc)}  {'OK' if balanced else 'MISMATCH'}")
    print(f"  broker stats: acked {g['acked']:,}, delivered {g['delivered']:,}, nacked "
          f"{g['nacked']:,}, redelivered {g['redelivered']:,}, dead_lettered "
          f"{g['dead_lettered']:,}, timeouts {g['timeouts']:,}, pending {g['pending']:,}, "
          f"lag {g['lag']:,}, members now {g['members']}")
    for r in members:
        share = 100.0 * r["count"] / processed if processed else 0.0
        valid = r["count"] - r["invalid"]
        lat = (f"latency avg {1e3 * r['latency_sum'] / valid:.2f} ms max "
               f"{1e3 * r['latency_max']:.1f} ms") if valid > 0 else ""
        err = f"  ERROR {r['error']}" if r["error"] else ""
        print(f"  member {r['member']} pid {r['pid']:>7}  {r['count']:>10,} ({share:5.1f}%)  "
              f"redeliveries {r['redelivered']:,}  nacked {r['nacked']:,}  invalid {r['invalid']}  "
              f"out of order {r['out_of_order']}  {lat}{err}")
        who = f"{group} member {r['member']}"
        if r["error"]:
            bad.append(f"{who}: {r['error']}")
        if r["invalid"] or r["out_of_order"]:
            bad.append(f"{who}: {r['invalid']} invalid, {r['out_of_order']} out of order")
        if r["duplicates"]:
            ex = ", ".join(f"streamer {s} seq {q} (attempt {a})" for s, q, a in r["dup_examples"])
            bad.append(f"{who}: processed {r['duplicates']:,} message(s) a second time "
                       f"(duplicates), e.g. {ex}")
        if r["acked"] != r["count"]:
            bad.append(f"{who}: processed {r['count']:,} but {r['acked']:,} acks took effect "
                       "(a message acked twice, late or not at all)")
    bad += [f"{group}: {line}" for line in set_bad]
    if len(members) != want_members:
        bad.append(f"{group}: {want_members - len(members)} member(s) never reported")
    if processed != published:
        where = ""
        if processed + g["lag"] + g["pending"] == published and g["lag"] + g["pending"]:
            where = ": the rest is still unread or unacked"
        bad.append(f"{group}: processed {processed:,}, published {published:,} "
                   f"({processed - published:+,}){where}")
    if gcrc != crc:
        bad.append(f"{group}: crc32 sum {_hex(gcrc)} != published {_hex(crc)}")
    for idx, s in by_streamer.items():  # which streamer does not balance, if not said yet
        if idx in named or any(r["duplicates"] for r in members):
            continue
        per = [r["per_streamer"].get(idx, [0, 0, 0]) for r in members]
        n, c = sum(p[0] for p in per), sum(p[1] for p in per)
        if (n, c) != (s["count"], s["crc"]):
            bad.append(f"{group}: from streamer {idx} processed {n:,} (crc32 sum {_hex(c)}), "
                       f"it published {s['count']:,} ({_hex(s['crc'])})")
    # the broker's figures must tell the same story
    if g["acked"] != published:
        bad.append(f"{group}: the broker counted {g['acked']:,} acked, {published:,} published")
    if g["dead_lettered"]:
        bad.append(f"{group}: {g['dead_lettered']:,} message(s) dead-lettered to {TOPIC}.dlq")
    if g["pending"]:
        bad.append(f"{group}: {g['pending']:,} deliveries still pending (unacked) at the end")
    if g["nacked"] != nacked:
        bad.append(f"{group}: the members nacked {nacked:,}, the broker counted {g['nacked']:,}")
    if g["redelivered"] != redelivered:
        bad.append(f"{group}: the members processed {redelivered:,} redeliveries, the broker "
                   f"redelivered {g['redelivered']:,}")
    return bad


def persistence_report(persist_dir: str, published: int | None) -> bool:
    """Print what the broker wrote to disk; True when it is every published
    message, once, in order."""
    files = sorted(glob.glob(os.path.join(persist_dir, TOPIC, "*.jsonl")))
    seqs: list[int] = []
    size = 0
    for f in files:
        size += os.path.getsize(f)
        with open(f, "rb") as fh:
            seqs.extend(json.loads(line)["seq"] for line in fh)
    distinct = sorted(set(seqs))
    complete = published is not None and distinct == list(range(1, published + 1))
    print(f"persistence: {len(seqs):,} lines ({len(distinct):,} distinct seqs) in {len(files)} "
          f"file(s), {size / 1e6:.1f} MB under {os.path.join(persist_dir, TOPIC)}: "
          + ("every published message is on disk" if complete else
             f"NOT every published message ({published}) is on disk"))
    return complete

