#!/usr/bin/env python3
"""tools/fuzz_segments.py - owns the mutation fuzzer of live segments (issue 14, point 3).

A fuzz *case* is one broker with traffic flowing: topics, plain and ack groups
with members in this process and in a peer process (this script, --peer),
the supervisor sweeping. Each *mutation* writes bytes into the live mapping of
one region (the topic header, the group, member and pending tables, records
and their headers, the namespace segment, liveness token files, the mutexes),
field-aware where the layout is known (boundary values, positions just past
capacity, counts past table sizes) or blind (random bytes, bit flips), then
runs one operation (publish, publish_many, get, get_many, ack, nack, views,
stats, subscribe/unsubscribe, delete_group, delete_topic, the sweep, reaping,
attach, connect, a second client's close); half the mutations are undone
after their operation. At the end of a case the broker is closed.

Every outcome must be correct operation or a pymq.MQError, in every process:
a bare OSError/ValueError/KeyError/TypeError/AssertionError..., a process
dying by a signal (an ASan/UBSan report aborts it), a call that does not
return within HANG_SECONDS, a result of the wrong shape, a supervisor that
dies of an exception, or a close() that raises or leaves anything in
/dev/shm is a *finding*.

Where offsets come from: the layout below mirrors native/ring/pmq_ring.h and
pmq_ns.h; it is checked at start against the build (cffi's sizes and offsets
of every field pymq._native declares, and the region offsets a fresh segment
stores), so a change of layout makes this script refuse to run, not scribble
at the wrong places.

Processes: the *driver* (default) runs cases in a *runner* subprocess (so a
crash or hang loses one case, not the run), reads its report lines, and on a
runner's death reads the case's breadcrumbs (the last mutations and
operations) and its stderr (ASan report, traceback) and carries on with the
next case. Runs are deterministic in their mutations (seed and case number);
the other processes' timing is not.

    python tools/fuzz_segments.py --mutations 1000000 --seed 1 --json out.json
    python tools/fuzz_segments.py --seed 1 --case 17 --per-case 400   # one case again

Against the ASan+UBSan build: `make fuzz-segments` (FUZZ_MUTATIONS=..., FUZZ_SEED=...),
see docs/reliability.md ("Fuzzing"). tests/test_fuzz_segments.py runs a
bounded version (run(), fixed seed).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

import pymq
from pymq import _core, control, segments
from pymq.errors import MQError

HANG_SECONDS = 45.0      # a call that takes longer is a hang (the longest documented
                         # wait of one call is 10 s: a join or leave under a held lock)
SLOW_SECONDS = 1.0       # calls that take longer are counted (not findings)
CONTROL_TIMEOUT = 0.5    # seconds a deletion waits for the supervisor (15 s in Client)
MAX_SLOW_STEPS = 20      # a case whose operations were slow this often ends early
UNDO = 0.75              # the share of mutations undone after their operation (the rest accumulate)
CASE_SECONDS = 600.0     # the driver kills a runner that reports nothing for this long
PEER_EXIT_SECONDS = 90.0  # a peer's exit (its client's close) may wait for held locks

REGIONS = ("header", "groups", "members", "pending", "records", "namespace", "tokens", "locks")
# how often each region is chosen (the mutexes rarely: glibc's mutex internals
# are trusted by design, docs/design.md; what a scribble there costs is waits)
WEIGHTS = {"header": 18, "groups": 20, "members": 10, "pending": 15, "records": 22,
           "namespace": 8, "tokens": 5, "locks": 1}

# ==== the layout ===============================================================

_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


class Layout:
    """Offsets and sizes of every field of the topic segment and the
    namespace, in an ABI-mode cffi mirror of pmq_ring.h and pmq_ns.h, checked
    against the build's own (pymq._core.ffi) at construction."""

    def __init__(self) -> None:
        import cffi
        real = _core.ffi
        mutex = real.offsetof("pmq_ring_hdr_t", "lock_pid") - 2 * 64
        cl = 64
        cdef = f"""
        typedef struct {{ uint8_t b[{mutex}]; }} fz_mutex_t;
        typedef struct {{
            uint32_t state, flags, gen, members; char name[48];
            uint64_t cursor, cursor_gen; uint8_t pad1[{cl - 16}];
            uint64_t delivered, delivered_bytes, created_ns, start_seq; int64_t idle_since_ns;
            uint64_t from_seq; uint8_t pad2[{cl - 48}];
            fz_mutex_t lock; int32_t lock_pid; uint8_t pad3[{cl - (mutex + 4) % cl}];
            uint64_t floor, pend_head, pend_tail; int64_t ack_timeout_ns;
            uint32_t ptable, ready, dead, max_retries, drained, stale; uint8_t pad4[{cl - 56}];
            uint64_t acked, nacked, redelivered, dead_lettered, timeouts; uint8_t pad5[{cl - 40}];
        }} fz_group_t;
        typedef struct {{
            uint64_t pos; int64_t deadline_ns; uint64_t seq;
            uint16_t w_member, w_attempts; uint8_t w_state, w_pad; uint16_t w_member_gen;
        }} fz_pending_t;
        typedef struct {{
            uint32_t state, group, gen, group_gen; uint64_t owner; int32_t pid; uint32_t pad0;
            uint64_t delivered; uint8_t pad1[{cl - 40}];
        }} fz_member_t;
        typedef struct {{
            uint64_t magic; uint32_t version, ready; uint64_t seg_len, capacity;
            uint64_t groups_off, members_off, pending_off, data_off;
            uint32_t max_groups, max_members, pending_cap, max_msg; int32_t creator_pid;
            uint32_t closed; uint64_t creator_start; int64_t created_ns;
            uint32_t max_ack_groups, pad1a; uint8_t pad1[{2 * cl - 112}];
            fz_mutex_t lock; int32_t lock_pid; uint8_t pad2[{cl - (mutex + 4) % cl}];
            uint32_t intent_active, intent_pad;
            uint64_t intent_old_tail, intent_new_tail, intent_old_seq, intent_new_seq;
            uint64_t next_seq, published_bytes, head;
            uint64_t tail; uint8_t pad4[{cl - 8}];
            uint64_t gate, restore_end; uint32_t group_hint, ptables_used, reap_slot, pad5a;
            uint64_t reap_before; uint8_t pad5[{cl - 40}];
            uint32_t data_seq, data_waiters; uint8_t pad6[{cl - 8}];
            uint32_t space_seq, space_waiters; uint64_t space_target; uint8_t pad7[{cl - 16}];
            uint64_t publish_waits, publish_full, expired, recoveries, wakeups,
                     corrupt, anon_delivered, anon_delivered_bytes, reaped_members;
            uint8_t pad8[{2 * cl - 72}];
        }} fz_ring_hdr_t;
        typedef struct {{
            uint64_t magic; uint32_t version, ready; uint64_t seg_len;
            int32_t owner_pid; uint32_t closed; uint64_t owner_start, owner_token;
            int32_t supervisor_pid; uint32_t supervisor_restarts; uint64_t supervisor_start;
            int64_t supervisor_beat_ns, created_ns; uint64_t reaped_processes;
            int32_t admin_port; uint32_t config_len; char config[{real.sizeof("pmq_ns_t") - 96}];
        }} fz_ns_t;
        """
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        self.ffi = ffi
        self.mutex = mutex
        pairs = {"fz_ring_hdr_t": "pmq_ring_hdr_t", "fz_group_t": "pmq_group_t", "fz_ns_t": "pmq_ns_t"}
        for mine, theirs in pairs.items():
            if ffi.sizeof(mine) != real.sizeof(theirs):
                raise RuntimeError(f"layout changed: sizeof({theirs}) is {real.sizeof(theirs)}, "
                                   f"this fuzzer knows {ffi.sizeof(mine)}")
            for name, _ in real.typeof(theirs).fields:
                if ffi.offsetof(mine, name) != real.offsetof(theirs, name):
                    raise RuntimeError(f"layout changed: {theirs}.{name}")
        self.hdr = self._fields("fz_ring_hdr_t")
        self.group = self._fields("fz_group_t")
        self.member = self._fields("fz_member_t")
        self.pending = self._fields("fz_pending_t")
        self.ns = self._fields("fz_ns_t")
        self.hdr_size = ffi.sizeof("fz_ring_hdr_t")
        self.group_size = ffi.sizeof("fz_group_t")
        self.member_size = ffi.sizeof("fz_member_t")
        self.pending_size = ffi.sizeof("fz_pending_t")
        self.ns_size = ffi.sizeof("fz_ns_t")
        self.hdr_lock = ffi.offsetof("fz_ring_hdr_t", "lock")
        self.group_lock = ffi.offsetof("fz_group_t", "lock")
        self.rec_hdr = _core.REC_HDR

    def _fields(self, t: str) -> dict[str, tuple[int, int]]:
        """name -> (offset, size) of every field but padding and the mutex
        (the group name and the config text as byte blobs)."""
        out = {}
        for name, f in self.ffi.typeof(t).fields:
            if "pad" in name or name == "lock":
                continue
            out[name] = (f.offset, self.ffi.sizeof(f.type))
        return out

    def check_segment(self, mm: mmap.mmap) -> None:
        """The region offsets a segment stores are the ones this layout computes."""
        h = self.read_hdr(mm)
        g = h["groups_off"] + h["max_groups"] * self.group_size
        p = g + h["max_members"] * self.member_size
        d = (p + h["max_ack_groups"] * h["pending_cap"] * self.pending_size + 4095) & ~4095
        if (h["members_off"], h["pending_off"], h["data_off"]) != (g, p, d):
            raise RuntimeError("layout changed: the segment's region offsets are not this "
                               "fuzzer's (pmq_member_t or pmq_pending_t changed)")

    def read_hdr(self, mm: Any) -> dict[str, int]:
        out = {}
        for name, (off, size) in self.hdr.items():
            if size in _FMT:
                out[name] = struct.unpack_from(_FMT[size], mm, off)[0]
        return out


# ==== mutations ==================================================================

def _u(value: int, size: int) -> int:
    return value & ((1 << (8 * size)) - 1)


class Mapped:
    """One segment or file of the broker, mapped writable by the fuzzer."""

    def __init__(self, path: str):
        self.path = path
        fd = os.open(path, os.O_RDWR)
        try:
            st = os.fstat(fd)
            self.ino = st.st_ino
            self.mm = mmap.mmap(fd, st.st_size) if st.st_size else None
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None


class Mutator:
    """Chooses and writes mutations into a broker's live segments and files."""

    def __init__(self, layout: Layout, name: str, rng: random.Random, regions: list[str],
                 geom: dict[str, int]):
        """geom: a topic segment's header as made (read before any mutation)."""
        self.L = layout
        self.geom = geom
        self.name = name
        self.rng = rng
        self.regions = regions
        self.maps: dict[str, Mapped] = {}

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()

    def _map(self, entry: str) -> Mapped | None:
        path = os.path.join(segments.SHM_DIR, entry)
        try:
            ino = os.stat(path).st_ino
        except FileNotFoundError:
            return None
        m = self.maps.get(entry)
        if m is not None and m.ino != ino:
            m.close()
            m = None
        if m is None:
            try:
                m = self.maps[entry] = Mapped(path)
            except (FileNotFoundError, ValueError, OSError):
                return None
        return m if m.mm is not None else None

    # -- values ------------------------------------------------------------------

    def value(self, size: int, cur: int, ctx: dict[str, int]) -> int:
        r = self.rng
        top = 1 << (8 * size)
        k = r.random()
        if k < 0.25:
            v = r.choice([0, 1, 2, top - 1, top >> 1, (top >> 1) - 1, top - 2, 7, 8, 0xFF, 0xFFFF])
        elif k < 0.6 and ctx:
            cap = ctx.get("capacity", 4096)
            base = r.choice([ctx.get("head", 0), ctx.get("tail", 0), ctx.get("gate", 0), 0, cap,
                             ctx.get("next_seq", 1), ctx.get("max_groups", 64),
                             ctx.get("max_members", 256), ctx.get("pending_cap", 1024),
                             ctx.get("max_ack_groups", 16), 32, 64, cur])
            v = base + r.choice([0, 1, -1, 8, -8, 16, -24, cap, -cap, cap + 8, 2 * cap, 24])
        elif k < 0.8:
            v = cur ^ (1 << r.randrange(8 * size))
        elif k < 0.9:
            v = cur + r.choice([1, -1, 8, -8, 1 << 32, -(1 << 32)])
        else:
            v = r.getrandbits(8 * size)
        return _u(v, size)

    # -- regions -------------------------------------------------------------------

    def topics(self) -> list[str]:
        return [e for e in segments.namespace_entries(self.name)
                if not e[len(segments.namespace_prefix(self.name)):].startswith(".")]

    def mutate(self) -> dict[str, Any] | None:
        """Write one mutation; the record of what was written (with the old
        bytes, to undo it), or None if there was nothing to write into."""
        for _ in range(8):
            region = self.rng.choices(self.regions, [WEIGHTS[r] for r in self.regions])[0]
            got = getattr(self, "_m_" + region)()
            if got is not None:
                got["region"] = region
                return got
        return None

    def _mutexes(self, m: Mapped) -> list[tuple[int, int]]:
        """Where a topic segment's mutexes are (the header's, each group's)."""
        if os.path.basename(m.path) == segments.ns_shm_name(self.name).lstrip("/") or \
                m.path.startswith(segments.token_path(self.name, 0)[:-16]):
            return []
        L = self.L
        out = [(L.hdr_lock, L.hdr_lock + L.mutex)]
        for i in range(min(self.geom["max_groups"], 64)):
            b = 4096 + i * L.group_size + L.group_lock
            out.append((b, b + L.mutex))
        return out

    def _write(self, m: Mapped, off: int, data: bytes, what: str,
               mutexes: bool = False) -> dict[str, Any] | None:
        """Write data at off (but over a mutex, unless `mutexes`: the region
        "locks" alone writes there); the record of it, to undo."""
        mm = m.mm
        if mm is None or off < 0 or off >= len(mm):
            return None
        data = data[:len(mm) - off]
        if not mutexes:
            for lo, hi in self._mutexes(m):
                if off < hi and off + len(data) > lo:
                    if off >= lo:
                        return None
                    data = data[:lo - off]
        if not data:
            return None
        old = mm[off:off + len(data)]
        mm[off:off + len(data)] = data
        return {"seg": os.path.basename(m.path), "off": off, "old": old.hex(), "new": data.hex(),
                "what": what}

    def undo(self, mut: dict[str, Any]) -> None:
        if mut.get("file"):
            return  # token files: rewritten, not undone
        m = self.maps.get(mut["seg"])
        if m is None or m.mm is None:
            return
        try:
            if os.stat(m.path).st_ino != m.ino:
                return
        except FileNotFoundError:
            return
        old = bytes.fromhex(mut["old"])
        if mut.get("region") == "locks" and \
                m.mm[mut["off"]:mut["off"] + len(old)] != bytes.fromhex(mut["new"]):
            return  # a lock word someone took or let go since: its old bytes would be stale
                    # (a holder's tid put back after it unlocked holds the lock for ever)
        m.mm[mut["off"]:mut["off"] + len(old)] = old

    def _topic(self) -> tuple[Mapped, dict[str, int]] | None:
        """A topic segment, and its geometry (as made: every topic of a broker
        has the same) with the live positions (head, tail, gate, next_seq)."""
        topics = self.topics()
        if not topics:
            return None
        m = self._map(self.rng.choice(topics))
        if m is None or len(m.mm) != self.geom["seg_len"]:
            return None
        h = dict(self.geom)
        for k in ("head", "tail", "gate", "next_seq"):
            off, size = self.L.hdr[k]
            h[k] = struct.unpack_from(_FMT[size], m.mm, off)[0]
        return m, h

    def _blind(self, m: Mapped, lo: int, hi: int, what: str) -> dict[str, Any] | None:
        r = self.rng
        if hi <= lo:
            return None
        off = r.randrange(lo, hi)
        k = r.random()
        if k < 0.4:
            cur = m.mm[off]
            return self._write(m, off, bytes([cur ^ (1 << r.randrange(8))]), what + " bit flip")
        if k < 0.8:
            return self._write(m, off, r.randbytes(r.randint(1, 16)), what + " random bytes")
        off &= ~7
        return self._write(m, max(lo, off), bytes(r.choice([8, 16, 24, 64])), what + " zeroed")

    def _field(self, m: Mapped, base: int, fields: dict[str, tuple[int, int]], ctx: dict[str, int],
               what: str, skip: tuple[str, ...] = ()) -> dict[str, Any] | None:
        names = [n for n in fields if n not in skip]
        name = self.rng.choice(names)
        off, size = fields[name]
        if size not in _FMT:  # a name or the config text
            return self._blind(m, base + off, base + off + size, f"{what}.{name}")
        cur = struct.unpack_from(_FMT[size], m.mm, base + off)[0]
        v = self.value(size, cur, ctx)
        return self._write(m, base + off, struct.pack(_FMT[size], v), f"{what}.{name}={v:#x}")

    def _m_header(self):
        got = self._topic()
        if got is None:
            return None
        m, h = got
        if self.rng.random() < 0.8:
            return self._field(m, 0, self.L.hdr, h, "hdr")
        return self._blind(m, 0, self.L.hdr_size, "hdr")

    def _slot(self, m: Mapped, base: int, n: int, size: int, active_first: bool) -> int:
        """A slot of a table: one in use, mostly."""
        used = [i for i in range(n) if base + (i + 1) * size <= len(m.mm)
                and struct.unpack_from("<I", m.mm, base + i * size)[0] != 0] if active_first else []
        if used and self.rng.random() < 0.85:
            return self.rng.choice(used)
        return self.rng.randrange(max(1, n))

    def _m_groups(self):
        got = self._topic()
        if got is None:
            return None
        m, h = got
        n = min(h["max_groups"], 64)
        gs = self.L.group_size
        i = self._slot(m, 4096, n, gs, True)
        base = 4096 + i * gs
        if base + gs > len(m.mm):
            return None
        k = self.rng.random()
        if k < 0.75:
            return self._field(m, base, self.L.group, h, f"group[{i}]")
        if k < 0.85:  # one group slot copied over another (but its mutex)
            j = self.rng.randrange(n)
            lo, hi = self.L.group_lock, self.L.group_lock + self.L.mutex
            src = bytes(m.mm[base:base + gs])
            mut = self._write(m, 4096 + j * gs, src[:lo], f"group[{i}] copied over group[{j}]")
            if mut is not None:
                tail = self._write(m, 4096 + j * gs + hi, src[hi:], "")
                mut["also"] = {"off": tail["off"], "old": tail["old"]} if tail else None
            return mut
        return self._blind(m, base, base + gs, f"group[{i}]")

    def _m_members(self):
        got = self._topic()
        if got is None:
            return None
        m, h = got
        base0, ms = h["members_off"], self.L.member_size
        n = min(h["max_members"], 256)
        if base0 + n * ms > len(m.mm):
            return None
        i = self._slot(m, base0, n, ms, True)
        base = base0 + i * ms
        ctx = dict(h, max_groups=h["max_groups"])
        if self.rng.random() < 0.8:
            return self._field(m, base, self.L.member, ctx, f"member[{i}]", skip=("pad0",))
        return self._blind(m, base, base + ms, f"member[{i}]")

    def _m_pending(self):
        got = self._topic()
        if got is None:
            return None
        m, h = got
        L = self.L
        # a table of an ack group, at an entry inside its window, mostly
        acks = []
        for i in range(min(h["max_groups"], 64)):
            b = 4096 + i * L.group_size
            if b + L.group_size > len(m.mm):
                break
            st, fl = struct.unpack_from("<II", m.mm, b)
            if st and fl & _core.GROUP_ACK:
                pt = struct.unpack_from("<I", m.mm, b + L.group["ptable"][0])[0]
                ph, ptl = struct.unpack_from("<QQ", m.mm, b + L.group["pend_head"][0])
                acks.append((pt, ph, ptl))
        cap = max(1, h["pending_cap"])
        tables = min(h["max_ack_groups"], 32)
        if acks and self.rng.random() < 0.85:
            pt, ph, ptl = self.rng.choice(acks)
            n = self.rng.randrange(ph, ptl) if ph < ptl and ptl - ph <= cap else \
                self.rng.randrange(cap)
            pt %= max(1, tables)
        else:
            pt, n = self.rng.randrange(max(1, tables)), self.rng.randrange(cap)
        base = h["pending_off"] + (pt * cap + (n % cap)) * L.pending_size
        if base + L.pending_size > len(m.mm):
            return None
        if self.rng.random() < 0.85:
            return self._field(m, base, L.pending, h, f"pending[{pt}][{n % cap}]")
        return self._blind(m, base, base + L.pending_size, f"pending[{pt}][{n % cap}]")

    def _m_records(self):
        got = self._topic()
        if got is None:
            return None
        m, h = got
        cap, data = h["capacity"], h["data_off"]
        if cap == 0 or cap & (cap - 1) or data + cap > len(m.mm):
            return None
        # a record's header between head and tail, mostly
        recs, pos, tail = [], h["head"], h["tail"]
        steps = 0
        while pos < tail and tail - pos <= cap and steps < 512:
            off = pos & (cap - 1)
            if off + 8 > cap:
                break
            ln, ty = struct.unpack_from("<II", m.mm, data + off)
            size = (24 + ln + 7) & ~7 if ty == 1 else 8 + ln if ty == 2 else 0
            if size == 0 or size > cap:
                break
            recs.append((off, ty))
            pos += size
            steps += 1
        if recs and self.rng.random() < 0.8:
            off, ty = self.rng.choice(recs)
            base = data + off
            field = self.rng.choice(["len", "type", "seq", "ts"] if ty == 1 else ["len", "type"])
            o, size = {"len": (0, 4), "type": (4, 4), "seq": (8, 8), "ts": (16, 8)}[field]
            cur = struct.unpack_from(_FMT[size], m.mm, base + o)[0]
            ctx = dict(h, tail=cap - off, head=0, gate=h["max_msg"])  # lengths: to the end, max_msg
            if self.rng.random() < 0.8:
                v = self.value(size, cur, ctx)
                return self._write(m, base + o, struct.pack(_FMT[size], v),
                                   f"record@{off}.{field}={v:#x}")
            return self._blind(m, base, base + 24 if ty == 1 else base + 8, f"record@{off}")
        return self._blind(m, data, data + cap, "data")

    def _m_namespace(self):
        m = self._map(segments.ns_shm_name(self.name).lstrip("/"))
        if m is None:
            return None
        k = self.rng.random()
        if k < 0.6:
            return self._field(m, 0, self.L.ns, {}, "ns", skip=())
        if k < 0.8:  # the config text: JSON that parses but says something else, or not JSON
            off, size = self.L.ns["config"]
            used = struct.unpack_from("<I", m.mm, self.L.ns["config_len"][0])[0]
            used = min(used, size)
            text = bytes(m.mm[off:off + used])
            r = self.rng
            choice = r.random()
            if choice < 0.5 and used:
                i = r.randrange(used)
                new = text[:i] + r.choice([b"-1", b"1e999", b"NaN", b"null", b"\"x\"", b"[", b"}",
                                           b"\xff", b"0", b"true", b"18446744073709551616"]) \
                    + text[i + 1:]
            else:
                new = r.randbytes(r.randint(0, 64))
            new = new[:size]
            mut = self._write(m, off, new, "ns.config text")
            if mut is not None and r.random() < 0.5:  # and its length
                old_len = bytes(m.mm[self.L.ns["config_len"][0]:self.L.ns["config_len"][0] + 4])
                struct.pack_into("<I", m.mm, self.L.ns["config_len"][0], len(new))
                mut["also"] = {"off": self.L.ns["config_len"][0], "old": old_len.hex()}
            return mut
        return self._blind(m, 0, self.L.ns["config"][0], "ns")

    def _m_tokens(self):
        files = segments.token_files(self.name)
        if not files:
            return None
        path = self.rng.choice(files)
        try:
            with open(path, "rb") as f:
                old = f.read(4096)
        except OSError:
            return None
        r = self.rng
        k = r.random()
        if k < 0.4:
            try:
                info = json.loads(old)
            except ValueError:
                info = {}
            if not isinstance(info, dict):
                info = {}
            key = r.choice(["pid", "start", "pidns"])
            info[key] = r.choice([0, -1, 1, 2**31, 2**64, 2**100, 1.5, "x", None, [], {}, True,
                                  float(r.randrange(10**10)), os.getpid()])
            new = json.dumps(info).encode()
        elif k < 0.7 and old:
            i = r.randrange(len(old))
            new = old[:i] + r.randbytes(r.randint(1, 4)) + old[i + 1:]
        elif k < 0.85:
            new = r.randbytes(r.randint(0, 64))
        else:
            new = old[:r.randrange(len(old) + 1)]
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            return None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, new, 0)
        finally:
            os.close(fd)
        return {"seg": os.path.basename(path), "off": 0, "old": old.hex(), "new": new.hex(),
                "what": "token file rewritten", "file": True}

    def _m_locks(self):
        got = self._topic()
        if got is None:
            return None
        m, h = got
        r = self.rng
        if r.random() < 0.5:
            base, what = self.L.hdr_lock, "hdr.lock"
        else:
            i = self._slot(m, 4096, min(h["max_groups"], 64), self.L.group_size, True)
            base, what = 4096 + i * self.L.group_size + self.L.group_lock, f"group[{i}].lock"
        # the lock word (owner tid, FUTEX_WAITERS, FUTEX_OWNER_DIED), the count,
        # the owner, the kind, or blind bytes
        word = r.choice([0, 4, 8, 12, 16, 16, 20])
        if word == 20 or r.random() < 0.2:
            off = r.randrange(base, base + self.L.mutex)
            return self._write(m, off, r.randbytes(r.randint(1, 8))[:base + self.L.mutex - off],
                               f"{what} random bytes", mutexes=True)
        v = r.choice([0, 1, 0x40000000, 0x40000000 | os.getpid(), 0xC0000000, 0x80000000 | 1,
                      os.getpid(), 1 << 30, 0xFFFFFFFF, r.getrandbits(32), 3, 0x10, 0x20, 0x40])
        return self._write(m, base + word, struct.pack("<I", v), f"{what}+{word}={v:#x}",
                           mutexes=True)


# ==== the operations ==============================================================

def _is_bytes_item(x: Any, max_msg: int) -> bool:
    return isinstance(x, bytes) and len(x) <= max_msg


def _is_message(x: Any, max_msg: int) -> bool:
    return isinstance(x, pymq.Message) and isinstance(x.payload, bytes) and \
        len(x.payload) <= max_msg and isinstance(x.seq, int) and x.delivery_attempt >= 1


class Case:
    """One broker with traffic, mutated and operated on, then closed."""

    def __init__(self, seed: int, number: int, mutations: int, regions: list[str],
                 crumbs: Any, layout: Layout, peer: bool = True, tmp: str | None = None,
                 seconds: float | None = None):
        self.seed, self.number = seed, number
        self.rng = random.Random(f"{seed}:{number}")
        self.mutations = mutations
        self.regions = regions
        self.crumbs = crumbs
        self.L = layout
        self.use_peer = peer
        self.name = f"fz{seed % 100000}x{number}"
        self.findings: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.slow: dict[str, int] = {}
        self.spent: dict[str, float] = {}  # seconds per operation
        self.subs: list[Any] = []
        self.held: list[pymq.Message] = []
        self.views: list[memoryview] = []
        self.other: pymq.Client | None = None
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.step = -1
        self.slow_steps = 0
        self.kept: list[dict[str, Any]] = []  # mutations not undone (yet)
        self.seconds = seconds  # a budget for the mutations (None: all of them)
        self.last: list[dict[str, Any]] = []

    # -- bookkeeping -----------------------------------------------------------------

    def crumb(self, rec: dict[str, Any]) -> None:
        self.last = (self.last + [rec])[-6:]
        if self.crumbs is not None:
            os.write(self.crumbs, (json.dumps(rec) + "\n").encode())

    def count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def finding(self, kind: str, op: str, detail: str, tb: str = "") -> None:
        self.findings.append({"kind": kind, "op": op, "detail": detail[:2000], "traceback": tb[-4000:],
                              "seed": self.seed, "case": self.number, "step": self.step,
                              "last": self.last[-4:]})

    def call(self, op: str, fn: Callable[[], Any], check: Callable[[Any], bool] | None = None,
             allowed: tuple[type[BaseException], ...] = ()) -> Any:
        """Run one operation under the watchdog: correct, or a pymq.MQError
        (or one of `allowed`, where its API documents another exception)."""
        import faulthandler
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        start = time.monotonic()
        try:
            got = fn()
        except MQError as e:
            self.count(f"{op}:{type(e).__name__}")
            if isinstance(e, pymq.BrokerUnavailable):
                self.counts["control-failed-step"] = self.step
            return None
        except allowed as e:
            self.count(f"{op}:{type(e).__name__}")
            return None
        except Exception as e:  # noqa: BLE001 - the point of the exercise
            self.count(f"{op}:WRONG:{type(e).__name__}")
            self.finding("wrong exception", op, f"{type(e).__name__}: {e}", traceback.format_exc())
            return None
        finally:
            faulthandler.cancel_dump_traceback_later()
            took = time.monotonic() - start
            self.spent[op] = self.spent.get(op, 0.0) + took
            if took > SLOW_SECONDS:
                self.slow[op] = self.slow.get(op, 0) + 1
        self.count(f"{op}:ok")
        if check is not None and not check(got):
            self.finding("wrong result", op, f"{op} returned {got!r:.300}")
        return got

    # -- set-up ------------------------------------------------------------------------

    def config(self) -> pymq.BrokerConfig:
        r = self.rng
        ring = r.choice([4096, 8192, 16384, 65536])
        persist = self.tmp is not None and r.random() < 0.2
        return pymq.BrokerConfig(
            name=self.name, ring_bytes=ring, max_message_bytes=r.choice([64, 512, ring // 2 - 32]),
            ack_timeout=r.choice([0.05, 0.2, 1.0]), max_retries=r.choice([0, 1, 3]),
            publish_timeout=0.01, persistence_enabled=persist,
            persistence_dir=os.path.join(self.tmp or "/nonexistent", self.name),
            persistence_fsync="never", persistence_close_timeout=0.5,
            persistence_fsync_interval=0.2)

    def start(self) -> None:
        segments.remove_namespace(self.name)  # a leftover of a crashed earlier run
        self.cfg = self.config()
        self.broker = pymq.Broker(self.cfg)
        self.max_msg = self.cfg.max_message_bytes
        b = self.broker
        self.topics = ["t0", "t1"]
        self.subs = [b.subscribe("t0"), b.subscribe("t0", group="p"), b.subscribe("t0", group="p"),
                     b.subscribe_with_ack("t1"), b.subscribe_with_ack("t0", group="a"),
                     b.subscribe_with_ack("t1", group="a")]
        for t in self.topics:
            for _ in range(8):
                b.publish(t, self.payload(), timeout=1)
        if self.use_peer:
            self.procs.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--peer", self.name,
                 str(self.rng.getrandbits(32))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True))
            line = self.procs[-1].stdout.readline()  # it subscribed
            if not line.startswith(b"ready"):
                self.finding("peer failed", "start", line.decode(errors="replace"))
        self.crumb({"case": self.number, "name": self.name, "pids": self.pids()})
        with open(os.path.join(segments.SHM_DIR, segments.topic_shm_name(self.name, "t0")[1:]),
                  "rb") as f:
            head = f.read(self.L.hdr_size)
        self.L.check_segment(head)
        geom = self.L.read_hdr(head)
        self.mutator = Mutator(self.L, self.name, self.rng, self.regions, geom)

    def pids(self) -> list[int]:
        sup = self.broker.supervisor_pid
        return [p.pid for p in self.procs] + ([sup] if sup else [])

    def payload(self) -> bytes:
        r = self.rng
        n = r.choice([0, 1, 8, 24, self.max_msg // 2, self.max_msg]) if r.random() < 0.3 \
            else r.randint(0, min(64, self.max_msg))
        return r.randbytes(n)

    # -- the operations ------------------------------------------------------------------

    def timeout(self) -> float:
        return self.rng.choice([0, 0, 0, 0.001, 0.005])

    def ring(self, topic: str | None = None) -> _core.Ring | None:
        topic = topic or self.rng.choice(self.topics)
        return self.broker._topics.get(topic)

    QUICK = ("publish", "publish_many", "get", "get_many", "ack", "nack", "ack_many",
             "stats", "ring_stats", "sweep", "take_dead", "position", "reap")

    def op(self, quick: bool = False) -> None:
        """One operation (quick: one that waits for a lock at most its own
        timeout or 0.1 s, not a join's or leave's 10 s)."""
        r = self.rng
        b, mm = self.broker, self.max_msg
        ops: list[tuple[int, str, Callable[[], None]]] = [
            (20, "publish", lambda: self.call("publish", lambda: b.publish(
                r.choice(self.topics), self.payload() if r.random() > 0.02 else bytes(mm + 1),
                timeout=self.timeout()), lambda s: isinstance(s, int) and s >= 1)),
            (8, "publish_many", lambda: self.call("publish_many", lambda: b.publish_many(
                r.choice(self.topics), [self.payload() for _ in range(r.randint(1, 20))],
                timeout=self.timeout()), lambda s: isinstance(s, int) and s >= 1)),
            (16, "get", self.op_get),
            (8, "get_many", self.op_get_many),
            (8, "ack", lambda: self.op_settle("ack")),
            (4, "nack", lambda: self.op_settle("nack")),
            (3, "ack_many", lambda: self.op_settle("ack_many")),
            (2, "nack_many", lambda: self.op_settle("nack_many")),
            (3, "view", self.op_view),
            (4, "stats", lambda: self.call("stats", b.stats,
                                           lambda s: isinstance(s, dict) and "topics" in s)),
            (2, "ring_stats", self.op_ring_stats),
            (3, "subscribe", self.op_subscribe),
            (3, "unsubscribe", self.op_unsubscribe),
            (1, "delete_group", self.op_delete_group),
            (3, "sweep", self.op_sweep),
            (1, "reap", self.op_reap),
            (1, "position", self.op_position),
            (1, "take_dead", self.op_take_dead),
            (1, "members", lambda: self.ring_call("members", lambda ring: ring.member_owners())),
            (1, "topics", lambda: self.call("topics", b.topics, lambda t: isinstance(t, list))),
            (2, "attach", self.op_attach),
            (1, "connect", self.op_connect),
            (2, "other", self.op_other),
            (0.2, "delete_topic", self.op_delete_topic),
        ]
        if quick:
            ops = [o for o in ops if o[1] in self.QUICK]
        _, name, fn = r.choices(ops, [w for w, _, _ in ops])[0]
        self.crumb({"step": self.step, "op": name})
        fn()

    def ring_call(self, op: str, fn: Callable[[_core.Ring], Any]) -> Any:
        ring = self.ring()
        if ring is None:
            return None
        return self.call(op, lambda: fn(ring))

    def sub(self) -> Any:
        live = [s for s in self.subs if not s._reader.closed]
        return self.rng.choice(live) if live else None

    def _items_ok(self, sub: Any, items: list[Any]) -> bool:
        ok = _is_message if isinstance(sub, pymq.client.AckSubscription) else _is_bytes_item
        return all(ok(x, self.max_msg) for x in items)

    def _keep(self, items: list[Any]) -> None:
        for x in items:
            if isinstance(x, pymq.Message) and x._reader is not None:
                self.held.append(x)
        del self.held[:-64]

    def op_get(self) -> None:
        s = self.sub()
        if s is None:
            return
        got = self.call("get", lambda: s.get(timeout=self.timeout()),
                        lambda x: self._items_ok(s, [x]))
        if got is not None:
            self._keep([got])

    def op_get_many(self) -> None:
        s = self.sub()
        if s is None:
            return
        n = self.rng.choice([1, 2, 16, 1024])
        got = self.call("get_many", lambda: s.get_many(n, timeout=self.timeout()),
                        lambda x: isinstance(x, list) and 1 <= len(x) <= n and self._items_ok(s, x))
        if got:
            self._keep(got)

    def op_settle(self, how: str) -> None:
        if not self.held:
            return
        r = self.rng
        if how in ("ack", "nack"):
            m = self.held.pop(r.randrange(len(self.held)))
            self.call(how, getattr(m, how), lambda x: x is None)
            return
        k = r.randint(1, len(self.held))
        msgs = [self.held.pop(r.randrange(len(self.held))) for _ in range(k)]
        sub = next((s for s in self.subs if s._reader is msgs[0]._reader), None)
        if sub is None:
            return
        self.call(how, lambda: getattr(sub, how)(msgs), lambda n: isinstance(n, int) and n >= 0)

    def op_view(self) -> None:
        if not self.held:
            return
        m = self.rng.choice(self.held)
        # ValueError: documented, for a view of a message acked or of a closed subscription
        v = self.call("view", m.view, lambda v: isinstance(v, memoryview) and
                      len(v) <= len(m.payload), allowed=(ValueError,))
        if v is not None:
            self.call("view-read", lambda: bytes(v))
            v.release()

    def op_ring_stats(self) -> None:
        self.ring_call("ring_stats", lambda ring: ring.stats(lock_timeout_ns=10**7))

    def op_subscribe(self) -> None:
        r = self.rng
        topic = r.choice(self.topics + ["t0.dlq", "t1.dlq"])
        ack = r.random() < 0.5
        group = r.choice([None, None, "p" if not ack else "a", "q", "a" if not ack else "p"])
        start = r.choice(["latest", "earliest", r.randint(1, 200), "latest"])
        fn = self.broker.subscribe_with_ack if ack else self.broker.subscribe
        s = self.call("subscribe", lambda: fn(topic, group=group, start=start))
        if s is not None:
            self.subs.append(s)
            if len(self.subs) > 24:
                self.call("unsubscribe", self.subs.pop(0).unsubscribe)

    def op_unsubscribe(self) -> None:
        if self.subs:
            s = self.subs.pop(self.rng.randrange(len(self.subs)))
            self.call("unsubscribe", s.unsubscribe, lambda x: x is None)

    def op_delete_group(self) -> None:
        r = self.rng
        topic, group = r.choice(self.topics), r.choice(["p", "a", "q", "nope"])
        if r.random() < 0.3 and self.supervisor_answers():  # asked of the supervisor
            self.call("delete_group", lambda: control.request(
                self.name, "delete_group", CONTROL_TIMEOUT, topic=topic, group=group))
        else:  # in this process, as the supervisor does it
            ring = self.ring(topic)
            if ring is not None:
                self.call("delete_group-local", lambda: ring.delete_group(group))

    def op_sweep(self) -> None:
        now = time.monotonic_ns() + self.rng.choice([0, 0, 10**9, 10**11, -10**9])
        self.ring_call("sweep", lambda ring: ring.sweep(now))

    def op_reap(self) -> None:
        owner = self.rng.choice([self.rng.getrandbits(63) | 1, 0, 1])
        self.ring_call("reap", lambda ring: ring.reap(owner))

    def op_position(self) -> None:
        g = self.rng.randrange(_core.MAX_GROUPS)
        self.ring_call("position", lambda ring: ring.group_position(g))

    def op_take_dead(self) -> None:
        g = self.rng.randrange(_core.MAX_GROUPS)

        def take(ring: _core.Ring) -> int:
            batch = _core.Batch(64, max(1 << 16, ring.max_msg))
            n, gen = ring.take_dead(g, batch)
            if n and self.rng.random() < 0.5:
                ring.dead_lettered(g, gen, batch, 0, n)
            for i in range(n):
                batch.payload(i)
            return n
        self.ring_call("take_dead", take)

    def op_attach(self) -> None:
        topic = self.rng.choice(self.topics)

        def attach() -> None:
            try:
                seg = segments.Segment.attach(segments.topic_shm_name(self.name, topic))
            except Exception as e:  # posix_ipc.ExistentialError: deleted meanwhile
                if type(e).__name__ == "ExistentialError":
                    return
                raise
            try:
                ring = _core.Ring(seg, topic)
            except MQError:
                seg.close()
                raise
            try:
                ring.stats(lock_timeout_ns=10**7)
            finally:
                ring.release()
        self.call("attach", attach)

    def op_connect(self) -> None:
        def connect() -> None:
            c = pymq.connect(self.name)
            c.close()
        self.call("connect", connect)

    def op_other(self) -> None:
        """A second client of this process: open, use, close (leaving its
        subscriptions under whatever the segments hold)."""
        r = self.rng
        if self.other is None:
            self.other = self.call("other-connect", lambda: pymq.connect(self.name))
            return
        c = self.other
        k = r.random()
        if k < 0.3:
            self.call("other-publish", lambda: c.publish(r.choice(self.topics), self.payload(),
                                                         timeout=0))
        elif k < 0.6:
            def sub_and_get() -> None:
                s = (c.subscribe_with_ack if r.random() < 0.5 else c.subscribe)(
                    r.choice(self.topics), group=r.choice([None, "a", "p"]))
                try:
                    s.get_many(8, timeout=0)
                except pymq.Timeout:
                    pass
            self.call("other-subscribe", sub_and_get)
        else:
            self.other = None
            self.call("other-close", c.close, lambda x: x is None)

    def supervisor_answers(self) -> bool:
        """Whether the last request to the supervisor (if any) was answered, or
        was long enough ago: one that does not answer costs CONTROL_TIMEOUT."""
        if self.counts.get("control-failed-step", -1000) > self.step - 200:
            return False
        return True

    def op_delete_topic(self) -> None:
        if not self.supervisor_answers():
            return
        topic = self.rng.choice(self.topics)

        def delete() -> None:  # Client.delete_topic, with a shorter wait for the supervisor
            control.request(self.name, "delete_topic", CONTROL_TIMEOUT, topic=topic,
                            keep_files=False)
            self.broker._forget(topic)
        self.call("delete_topic", delete)

    # -- the case -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            self.start()
        except MQError as e:  # before any mutation (a loaded machine: a slow supervisor)
            self.count(f"set-up failed:{type(e).__name__}")
            self.setup_error = f"{type(e).__name__}: {e}"
            self.close()
            return self.report(t0, 0)
        except Exception as e:  # noqa: BLE001
            self.finding("set-up failed", "start", f"{type(e).__name__}: {e}", traceback.format_exc())
            self.close()
            return self.report(t0, 0)
        done = 0
        self.phases = {"start": time.monotonic() - t0}
        t1 = time.monotonic()
        seen_sup: dict[int, subprocess.Popen[bytes]] = {}
        for self.step in range(self.mutations):
            if self.seconds is not None and time.monotonic() - t1 > self.seconds:
                self.count("case ended: time")
                break
            mut = self.mutator.mutate()
            if mut is None:
                continue
            self.crumb({"step": self.step, "mut": mut})
            done += 1
            self.count(f"region:{mut['region']}")
            t_op = time.monotonic()
            self.op(quick=mut["region"] == "locks")
            slow = time.monotonic() - t_op > SLOW_SECONDS
            if slow:
                self.slow_steps += 1
                if self.slow_steps > MAX_SLOW_STEPS:  # what is left would be waits: the next case
                    self.count("case ended: slow")
                    self.mutator.undo(mut)
                    break
            # An operation that was slow undoes this mutation and every one kept
            # so far (one of them made it slow: a topic whose ready word is
            # scribbled costs each stats() 5 s, say); the next would be as slow.
            if slow or mut["region"] == "locks" or self.rng.random() < UNDO:
                self.undo(mut)
            else:
                self.kept.append(mut)
            if slow:
                self.count("slow: kept mutations undone")
                while self.kept:
                    self.undo(self.kept.pop())
            sup = self.broker._supervision.proc
            if sup is not None:
                seen_sup[sup.pid] = sup
        self.phases["mutations"] = time.monotonic() - t1
        t1 = time.monotonic()
        self.close(seen_sup)
        self.phases["close"] = time.monotonic() - t1
        return self.report(t0, done)

    def undo(self, mut: dict[str, Any]) -> None:
        self.mutator.undo(mut)
        also = mut.get("also")
        if also:
            self.mutator.undo({"seg": mut["seg"], "off": also["off"], "old": also["old"]})

    def close(self, seen_sup: dict[int, Any] | None = None) -> None:
        """Close the broker (whatever the segments hold); nothing of it may be
        left in /dev/shm. Then look at every process of the case."""
        import faulthandler
        for sup in (seen_sup or {}).values():
            rc = sup.poll()
            if rc is not None and rc < 0:
                self.finding("crash", "supervisor", f"supervisor pid {sup.pid} died by signal {-rc}")
            elif rc:  # an exception: its traceback on stderr says which (the driver looks)
                self.count(f"supervisor-exit:{rc}")
        broker = getattr(self, "broker", None)
        if broker is not None:
            faulthandler.dump_traceback_later(HANG_SECONDS * 3, exit=True)
            t = time.monotonic()
            try:
                broker.close()
            except pymq.PersistenceError as e:
                self.count("close:PersistenceError")  # documented: said, after removing all
                self.detail_close = str(e)
            except Exception as e:  # noqa: BLE001
                self.finding("close raised", "close", f"{type(e).__name__}: {e}",
                             traceback.format_exc())
            finally:
                faulthandler.cancel_dump_traceback_later()
            self.close_seconds = time.monotonic() - t
        if self.other is not None:
            self.call("other-close", self.other.close)
        self.mutator_close()
        for p in self.procs:
            try:  # it ends when its stdin does
                out, _ = p.communicate(timeout=PEER_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                self.finding("hang", "peer", f"peer pid {p.pid} did not exit within "
                             f"{PEER_EXIT_SECONDS:g} s of its broker's close")
            if p.returncode < 0:
                self.finding("crash", "peer", f"peer pid {p.pid} died by signal {-p.returncode}")
            for line in out.decode(errors="replace").splitlines():
                if line.startswith("{"):
                    rec = json.loads(line)
                    if rec.get("finding"):
                        self.findings.append(dict(rec["finding"], seed=self.seed, case=self.number))
                    elif rec.get("counts"):
                        for k, v in rec["counts"].items():
                            self.counts["peer:" + k] = self.counts.get("peer:" + k, 0) + v
        left = segments.namespace_entries(self.name)
        if left:
            self.finding("close left segments", "close", f"left in /dev/shm: {left}")
            segments.remove_namespace(self.name)

    def mutator_close(self) -> None:
        m = getattr(self, "mutator", None)
        if m is not None:
            m.close()

    def report(self, t0: float, done: int) -> dict[str, Any]:
        return {"case": self.number, "mutations": done, "seconds": round(time.monotonic() - t0, 3),
                "close_seconds": round(getattr(self, "close_seconds", 0.0), 3),
                "counts": self.counts, "slow": self.slow,
                "spent": {k: round(v, 3) for k, v in self.spent.items()},
                "phases": {k: round(v, 3) for k, v in getattr(self, "phases", {}).items()}, "findings": self.findings,
                "persistence": bool(getattr(self, "cfg", None) and self.cfg.persistence_enabled)}


# ==== the peer: members in another process =========================================

def peer_main(name: str, seed: int) -> int:
    """Members of the fuzzed broker in a process of its own: publish, get,
    ack and nack until stdin closes, each call bounded; every exception that
    is not a pymq.MQError is reported (a JSON line on stdout)."""
    import faulthandler
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    stop = threading.Event()

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(1):
                pass
        finally:
            stop.set()
    threading.Thread(target=watch_stdin, daemon=True).start()

    def report(kind: str, op: str, detail: str, tb: str = "") -> None:
        print(json.dumps({"finding": {"kind": kind, "op": "peer " + op, "detail": detail[:2000],
                                      "traceback": tb[-4000:]}}), flush=True)

    def call(op: str, fn: Callable[[], Any]) -> Any:
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            got = fn()
            counts[op + ":ok"] = counts.get(op + ":ok", 0) + 1
            return got
        except MQError as e:
            k = f"{op}:{type(e).__name__}"
            counts[k] = counts.get(k, 0) + 1
        except Exception as e:  # noqa: BLE001
            counts[op + ":WRONG"] = counts.get(op + ":WRONG", 0) + 1
            report("wrong exception", op, f"{type(e).__name__}: {e}", traceback.format_exc())
        finally:
            faulthandler.cancel_dump_traceback_later()
        return None

    client = call("connect", lambda: pymq.connect(name))
    if client is None:
        print("failed: no client", flush=True)
        return 0
    subs = [s for s in (call("subscribe", lambda: client.subscribe("t0", group="p")),
                        call("subscribe", lambda: client.subscribe_with_ack("t0", group="a")),
                        call("subscribe", lambda: client.subscribe_with_ack("t1", group="a")))
            if s is not None]
    print("ready", flush=True)
    held: list[Any] = []
    while not stop.is_set():
        k = rng.random()
        if k < 0.3:
            call("publish", lambda: client.publish(rng.choice(["t0", "t1"]),
                                                   rng.randbytes(rng.randint(0, 48)), timeout=0))
        elif k < 0.7 and subs:
            s = rng.choice(subs)
            got = call("get_many", lambda: s.get_many(rng.choice([1, 8]), timeout=0.002))
            for m in got or ():
                if isinstance(m, pymq.Message):
                    held.append(m)
        elif k < 0.9 and held:
            m = held.pop(rng.randrange(len(held)))
            call("ack" if rng.random() < 0.7 else "nack", m.ack if rng.random() < 0.7 else m.nack)
        elif k < 0.93:
            call("stats", client.stats)
        elif k < 0.95 and subs:
            s = subs.pop(rng.randrange(len(subs)))
            call("unsubscribe", s.unsubscribe)
        elif k < 0.97:
            s = call("subscribe", lambda: client.subscribe_with_ack(rng.choice(["t0", "t1"]),
                                                                    group="a"))
            if s is not None:
                subs.append(s)
        del held[:-32]
        time.sleep(0.002)
    faulthandler.dump_traceback_later(PEER_EXIT_SECONDS - 5, exit=True)
    call("close", client.close)
    try:
        print(json.dumps({"counts": counts}), flush=True)
    except BrokenPipeError:  # the runner is gone
        pass
    return 0


# ==== the runner and the driver ======================================================

def runner_main(args: argparse.Namespace) -> int:
    """Run cases first..first+count-1, one JSON line each on stdout."""
    layout = Layout()
    crumbs = os.open(args.crumbs, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) \
        if args.crumbs else None
    tmp = tempfile.mkdtemp(prefix="pymq-fuzz-")
    regions = args.regions.split(",")
    try:
        for number in range(args.first, args.first + args.count):
            if crumbs is not None:
                os.ftruncate(crumbs, 0)
                os.lseek(crumbs, 0, os.SEEK_SET)
            print(f"=== case {number} ===", file=sys.stderr, flush=True)
            case = Case(args.seed, number, args.per_case, regions, crumbs, layout,
                        peer=not args.no_peer, tmp=tmp, seconds=args.case_seconds)
            out = case.run()
            print(json.dumps(out), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _check_layout() -> Layout:
    """The layout, checked against a fresh segment too."""
    layout = Layout()
    params = _core.ring_params(4096, 1024)
    size = _core.ring_size(params)
    buf = bytearray(size)
    with _core.ffi.from_buffer(buf) as p:
        _core.check(_core.lib.pmq_ring_init(p, size, params))
    layout.check_segment(buf)
    return layout


def _scan_stderr(text: str, number: int) -> str:
    """What a runner's stderr says of case `number`: from its marker on (to
    the end: a process of the case may write after the next case began)."""
    marker = f"=== case {number} ==="
    i = text.rfind(marker)
    return text[i + len(marker):] if i >= 0 else text[-20000:]


def _is_mq_error(name: str) -> bool:
    """Whether an exception's printed name ("pymq.errors.Full") is a pymq.MQError."""
    import importlib
    module, _, cls = name.rpartition(".")
    if not module.startswith("pymq"):
        return False
    try:
        return issubclass(getattr(importlib.import_module(module), cls), MQError)
    except (ImportError, AttributeError, TypeError):
        return False


def problems_in(text: str) -> list[tuple[str, str]]:
    """What a case's stderr shows that is a finding: a sanitizer's report,
    a fatal error, a hang's traceback dump, or a Python traceback (or an
    "Exception ignored") whose exception is not a pymq.MQError."""
    out = []
    lines = text.splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("=== case ")), len(lines))
    for i, line in enumerate(lines[:end]):  # what begins before the next case's marker
        if "ERROR: AddressSanitizer" in line or "runtime error:" in line or \
                "Fatal Python error" in line or "Timeout (0:" in line:
            out.append(("crash" if "Timeout" not in line else "hang",
                        "\n".join(lines[i:i + 40])))
        elif line.startswith("Traceback (most recent call last)") or \
                line.startswith("Exception ignored in"):
            j = i + 1  # to the exception's line (past other processes' case markers)
            while j < len(lines) and (lines[j].startswith((" ", "\t", "=== case ")) or
                                      lines[j].startswith("Traceback") or not lines[j].strip()):
                j += 1
            last = lines[j] if j < len(lines) else ""
            name = last.split(":")[0].strip()
            if name and not _is_mq_error(name) and name not in ("BrokenPipeError",):
                out.append(("traceback", "\n".join(lines[max(0, i):j + 1])[-4000:]))
    return out


def _kill_pids(pids: list[int]) -> None:
    """End processes a dead runner started (its supervisor and peer), by pid."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run(seed: int = 1, mutations: int = 1000, per_case: int = 500, regions: list[str] | None = None,
        first_case: int = 0, cases: int | None = None, time_limit: float | None = None,
        peer: bool = True, log: Callable[[str], None] | None = None,
        workdir: str | None = None, skip_known: bool = True,
        case_seconds: float | None = None) -> dict[str, Any]:
    """Run cases until `mutations` mutations are done (or `cases` cases, or
    time_limit seconds), each in a runner subprocess; returns the figures
    and the findings (those of a KNOWN bug counted apart, with skip_known)."""
    _check_layout()
    regions = regions or list(REGIONS)
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="pymq-fuzz-run-")
    crumbs = os.path.join(workdir, "crumbs.jsonl")
    errlog = os.path.join(workdir, "runner.err")
    total = {"seed": seed, "mutations": 0, "cases": 0, "crashed_runners": 0, "findings": [],
             "counts": {}, "slow": {}, "spent": {}, "phases": {}, "known": {}, "regions": regions, "per_case": per_case,
             "close_seconds_max": 0.0, "persistence_cases": 0}
    start = time.monotonic()
    number = first_case
    last_case = None if cases is None else first_case + cases
    stopping: list[int] = []

    def stop(signum: int, frame: Any) -> None:  # the run ends after its current case
        stopping.append(signum)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
    while total["mutations"] < mutations and (last_case is None or number < last_case):
        if stopping or (time_limit is not None and time.monotonic() - start > time_limit):
            break
        n_cases = max(1, min(50, -(-(mutations - total["mutations"]) // per_case)))
        if last_case is not None:
            n_cases = min(n_cases, last_case - number)
        with open(errlog, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--runner", "--seed", str(seed),
                 "--first", str(number), "--count", str(n_cases), "--per-case", str(per_case),
                 "--regions", ",".join(regions), "--crumbs", crumbs]
                + ([] if peer else ["--no-peer"])
                + ([] if case_seconds is None else ["--case-seconds", str(case_seconds)]),
                stdout=subprocess.PIPE, stderr=err, close_fds=True)
        ended = number + n_cases
        while True:
            try:
                ready, _, _ = select.select([proc.stdout], [], [], CASE_SECONDS)
            except InterruptedError:
                ready = []
            if stopping:
                proc.kill()  # its case is dropped; its broker is removed below
                proc.wait()
                _cleanup_case(seed, number, crumbs)
                break
            if not ready:
                proc.kill()
                line = b""
            else:
                line = proc.stdout.readline()
            if not line:
                break
            rec = json.loads(line)
            number = rec["case"] + 1
            total["cases"] += 1
            total["mutations"] += rec["mutations"]
            total["persistence_cases"] += rec["persistence"]
            total["close_seconds_max"] = max(total["close_seconds_max"], rec["close_seconds"])
            for k, v in rec["counts"].items():
                total["counts"][k] = total["counts"].get(k, 0) + v
            for k, v in rec["slow"].items():
                total["slow"][k] = total["slow"].get(k, 0) + v
            for key in ("spent", "phases"):
                for k, v in rec[key].items():
                    total[key][k] = round(total[key].get(k, 0.0) + v, 3)
            with open(errlog, "rb") as f:  # what its processes said (supervisor, peer, runner)
                said = _scan_stderr(f.read().decode(errors="replace"), rec["case"])
            for f in rec["findings"]:
                f["traceback"] = f.get("traceback") or said[-6000:]
            for kind, text in problems_in(said):
                rec["findings"].append({"kind": kind, "op": "stderr", "detail": text[:300],
                                        "traceback": text, "seed": seed, "case": rec["case"],
                                        "last": []})
            for f in rec["findings"]:
                bug = known(f) if skip_known else None
                if bug is None:
                    total["findings"].append(f)
                else:
                    total["known"][bug] = total["known"].get(bug, 0) + 1
            if log:
                slow = "" if rec["seconds"] < 10 else (
                    f" (phases {rec['phases']}; slowest: "
                    f"{sorted(rec['spent'].items(), key=lambda kv: -kv[1])[:3]})")
                log(f"case {rec['case']}: {rec['mutations']} mutations in {rec['seconds']:.1f} s, "
                    f"{len(rec['findings'])} finding(s); total {total['mutations']:,}{slow}")
            if total["mutations"] >= mutations or (time_limit is not None and
                                                    time.monotonic() - start > time_limit):
                break
        if stopping:
            total["stopped"] = f"signal {stopping[0]}"
            break
        if proc.poll() is None and (total["mutations"] >= mutations or
                                    (time_limit is not None and time.monotonic() - start > time_limit)):
            proc.kill()  # enough: its current case is dropped, its broker removed below
            proc.wait()
            _cleanup_case(seed, number, crumbs)
            break
        rc = proc.wait()
        if rc != 0 and number < ended:  # it died in case `number`
            total["crashed_runners"] += 1
            with open(errlog, "rb") as f:
                err_text = f.read().decode(errors="replace")
            last, pids = _read_crumbs(crumbs)
            kind = "hang" if "Timeout (0:" in err_text else "crash"
            sig = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
            total["findings"].append({  # (a dead runner is never a known bug)
                "kind": kind, "op": (last[-1].get("op") if last else "?"),
                "detail": f"runner died ({sig}) in case {number}",
                "traceback": _scan_stderr(err_text, number)[-6000:], "seed": seed, "case": number,
                "last": last[-6:]})
            _kill_pids(pids)
            _cleanup_case(seed, number, crumbs)
            if log:
                log(f"case {number}: runner died ({sig}); going on")
            number += 1
    total["seconds"] = round(time.monotonic() - start, 1)
    if own_dir:
        shutil.rmtree(workdir, ignore_errors=True)
    return total


def _read_crumbs(path: str) -> tuple[list[dict[str, Any]], list[int]]:
    try:
        with open(path) as f:
            recs = [json.loads(line) for line in f if line.strip().startswith("{")]
    except (OSError, ValueError):
        return [], []
    pids = next((r["pids"] for r in recs if "pids" in r), [])
    return [r for r in recs if "pids" not in r], pids


def _cleanup_case(seed: int, number: int, crumbs: str) -> None:
    name = f"fz{seed % 100000}x{number}"
    _, pids = _read_crumbs(crumbs)
    _kill_pids(pids)
    segments.remove_namespace(name)


# Bugs found and recorded (each by a strict xfail test in tests/test_fuzz_segments.py):
# a finding that is one of them is counted under total["known"], not listed as
# a finding, so that a run (the CI one too) goes on catching new ones. An
# entry: the finding's kind and a text its detail or traceback contains.
KNOWN: dict[str, list[tuple[str, str]]] = {
    # a group's flags scribbled from ack to plain: an ack subscription reads
    # through the plain path and hands out Messages with delivery_attempt 0
    "ack-read-of-a-plain-group": [("wrong result", "delivery_attempt=0")],
    # the namespace's supervisor_restarts scribbled to 0xFFFFFFFF: the Broker's
    # watcher thread dies of OverflowError at its += 1 (no more restarts)
    "restart-count-overflow": [("traceback", "supervisor_restarts += 1")],
}


def known(f: dict[str, Any]) -> str | None:
    """The known bug a finding is, or None."""
    text = f"{f.get('detail', '')}\n{f.get('traceback', '')}"
    for bug, marks in KNOWN.items():
        if any(f["kind"] == kind and mark in text for kind, mark in marks):
            return bug
    return None


def signature(f: dict[str, Any]) -> str:
    """What makes two findings the same bug: kind, operation, exception type
    and the innermost pymq frame (or the first line of an ASan report)."""
    detail = f["detail"].split(":")[0]
    tb = f.get("traceback") or ""
    where = ""
    for line in tb.splitlines():
        s = line.strip()
        if s.startswith("File ") and "/pymq/" in s:
            where = s.split("/pymq/")[-1]
        if "ERROR: AddressSanitizer" in s or "runtime error" in s:
            where = s[:160]
            break
    return f"{f['kind']}|{f['op'].split('-')[0]}|{detail}|{where}"


def summarize(total: dict[str, Any]) -> dict[str, Any]:
    """The findings grouped by signature: count and the first of each."""
    groups: dict[str, dict[str, Any]] = {}
    for f in total["findings"]:
        sig = signature(f)
        g = groups.setdefault(sig, {"signature": sig, "count": 0, "first": f})
        g["count"] += 1
    return {"distinct": list(groups.values())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mutations", type=int, default=10000, help="mutations in all (default 10000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per-case", type=int, default=500, help="mutations per broker (default 500)")
    p.add_argument("--case", type=int, default=None, help="run this one case only (a replay)")
    p.add_argument("--regions", default=",".join(REGIONS),
                   help=f"regions to mutate, comma-separated (default: all of {','.join(REGIONS)})")
    p.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--no-peer", action="store_true", help="no member in another process")
    p.add_argument("--case-seconds", type=float, default=None,
                   help="a time budget for each case's mutations (default: none)")
    p.add_argument("--no-skip-known", dest="skip_known", action="store_false",
                   help="findings of known (recorded) bugs are findings too")
    p.add_argument("--json", default=None, help="write the figures and findings here")
    p.add_argument("--runner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--crumbs", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peer", nargs=2, default=None, metavar=("NAME", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer:
        return peer_main(args.peer[0], int(args.peer[1]))
    if args.runner:
        return runner_main(args)
    regions = args.regions.split(",")
    unknown = set(regions) - set(REGIONS)
    if unknown:
        p.error(f"unknown regions: {sorted(unknown)}")
    if os.environ.get("PYMQ_EXPECT_SANITIZED") and "build/sanitize" not in pymq.__file__:
        p.error(f"PYMQ_EXPECT_SANITIZED is set but pymq is {pymq.__file__}")
    print(f"pymq from {os.path.dirname(pymq.__file__)}; seed {args.seed}", file=sys.stderr)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    if args.case is not None:
        total = run(args.seed, 1 << 62, args.per_case, regions, args.case, 1,
                    peer=not args.no_peer, log=lambda s: print(s, file=sys.stderr, flush=True),
                    skip_known=args.skip_known)
    else:
        total = run(args.seed, args.mutations, args.per_case, regions,
                    time_limit=args.time_limit, peer=not args.no_peer,
                    log=lambda s: print(s, file=sys.stderr, flush=True), skip_known=args.skip_known,
                    case_seconds=args.case_seconds)
    total["started"] = started
    total["pymq"] = os.path.dirname(pymq.__file__)
    total["sanitized"] = "build/sanitize" in pymq.__file__
    total["summary"] = summarize(total)
    rate = total["mutations"] / total["seconds"] if total["seconds"] else 0
    print(f"{total['mutations']:,} mutations in {total['cases']} cases, {total['seconds']:.0f} s "
          f"({rate:.0f}/s); {len(total['findings'])} finding(s), "
          f"{len(total['summary']['distinct'])} distinct; runners died: {total['crashed_runners']}; "
          f"known bugs met: {total['known']}", file=sys.stderr)
    for g in total["summary"]["distinct"]:
        f = g["first"]
        print(f"  [{g['count']}x] {g['signature']}\n      case {f['case']} step {f.get('step')}: "
              f"{f['detail'][:300]}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(total, f, indent=1)
    return 1 if total["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
