"""The one module that touches the compiled extensions pymq._native (the ring,
through cffi) and pymq._fast (the client's hot calls, CPython C-API, which
calls _native's functions through pointers bound here at import).

It turns the C return codes into exceptions in one place (check) and wraps a
mapped segment in a Ring or Namespace handle. Everything else in pymq goes
through here; a test asserts that no other module imports _native or _fast.
"""

from __future__ import annotations

import contextlib
import os
import time
import weakref
from typing import Any
from array import array
from functools import partial

import sys

if not sys.platform.startswith("linux"):
    raise ImportError(f"pymq runs on Linux only, not {sys.platform}: it needs futexes, robust "
                      "process-shared mutexes and a /dev/shm tmpfs")

from . import _fast, _native  # noqa: E402
from .errors import (BrokerClosed, Full, GroupNotFound, LimitExceeded, MessageTooLarge, MQError,
                     NativeError, SegmentMismatch, SubscriptionClosed, Timeout)

ffi, lib = _native.ffi, _native.lib
_fast.bind(*(int(ffi.cast("uintptr_t", ffi.addressof(lib, f))) for f in (
    "pmq_ring_publish1", "pmq_ring_publish", "pmq_ring_read", "pmq_group_ack", "pmq_group_ack1",
    "pmq_ring_claim")))

LAYOUT_VERSION = 3
if lib.pmq_layout_version() != LAYOUT_VERSION:  # a stale build beside new Python code
    raise ImportError(f"pymq._native has layout {lib.pmq_layout_version()}, "
                      f"this pymq expects {LAYOUT_VERSION}: rebuild it (make build)")

EINTR = lib.PMQ_EINTR
EMPTY = lib.PMQ_EMPTY
DELETED = lib.PMQ_DELETED
NOTREADY = lib.PMQ_NOTREADY
START = {"latest": lib.PMQ_START_LATEST, "earliest": lib.PMQ_START_EARLIEST}
START_SEQ = lib.PMQ_START_SEQ
REC_HDR = lib.PMQ_REC_HDR
GROUP_ACK = lib.PMQ_GROUP_ACK
CLOSED_BROKER = lib.PMQ_CLOSED_BROKER
CLOSED_DELETED = lib.PMQ_CLOSED_DELETED
PERSIST_GROUP = "~persist"  # PMQ_PERSIST_GROUP: the persistence writer's ack group
ACK_GROUPS = 16       # pending tables per topic: ack groups it can have
PENDING_CAP = 1024    # deliveries in flight per ack group


class SegmentNotReady(SegmentMismatch):
    """The segment exists but its creator has not finished initialising it."""


class TopicDeleted(SubscriptionClosed):
    """The topic was deleted: a subscription of it is closed; a publisher opens
    the topic anew (the client catches this one)."""


_ERRORS = {
    lib.PMQ_CLOSED: (BrokerClosed, "the broker is closed"),
    lib.PMQ_GONE: (SubscriptionClosed, "the subscription is closed (unsubscribed, reaped, or its "
                                       "group deleted)"),
    lib.PMQ_DELETED: (TopicDeleted, "the topic was deleted"),
    lib.PMQ_ECORRUPT: (SegmentMismatch, "corrupt segment: a length, offset or count out of bounds"),
    lib.PMQ_EVERSION: (SegmentMismatch, "segment of another magic or layout version"),
    lib.PMQ_NOTREADY: (SegmentNotReady, "segment not initialised yet"),
    lib.PMQ_ENOSLOT: (LimitExceeded, f"the topic has no room for another subscription (at most "
                                     f"{lib.PMQ_MAX_GROUPS} groups, {lib.PMQ_MAX_MEMBERS} "
                                     f"subscriptions and {ACK_GROUPS} ack groups per topic)"),
    lib.PMQ_NOTFOUND: (GroupNotFound, "no such group"),
    lib.PMQ_EINVAL: (ValueError, "invalid argument"),
    lib.PMQ_EBUFSMALL: (SegmentMismatch, "a record larger than max_message_bytes"),
}


def _seconds(ns: int | None) -> str:
    if ns is None or ns < 0:
        return "for ever"
    return f"{ns / 1e9:g} s"


def error(rc: int, context: str = "", *, timeout_ns: int | None = None, size: int | None = None,
          largest: int | None = None, max_msg: int | None = None,
          capacity: int | None = None) -> Exception:
    """The exception for the negative code rc, its message naming what is known:
    the time waited, the size asked for (size: all of it; largest: its largest
    payload), the limit it met."""
    where = f"{context}: " if context else ""
    if rc == lib.PMQ_EMPTY:
        return Timeout(f"{where}nothing arrived within {_seconds(timeout_ns)}")
    if rc == lib.PMQ_FULL:
        need = f" for {size:,} bytes" if size is not None else ""
        cap = f" (ring capacity {capacity:,} bytes)" if capacity else ""
        return Full(f"{where}no ring space{need} within {_seconds(timeout_ns)}{cap}: "
                    "a group is behind, or has no member and holds every message")
    if rc == lib.PMQ_ETOOBIG:
        largest = size if largest is None else largest
        if largest is not None and max_msg is not None and largest > max_msg:
            return MessageTooLarge(f"{where}a payload of {largest:,} bytes is over "
                                   f"max_message_bytes ({max_msg:,})")
        total = f"a batch of {size:,} bytes" if size is not None else "the batch"
        cap = f" ({capacity:,} bytes)" if capacity else ""
        return MessageTooLarge(f"{where}{total} does not fit the ring{cap}")
    exc, text = _ERRORS.get(rc, (None, None))
    if exc is None:
        code = -rc
        return NativeError(code, f"{where}{os.strerror(code)}")
    return exc(f"{where}{text}")


def check(rc: int, context: str = "", **detail) -> int:
    """Return rc if it is not an error code, else raise the matching exception."""
    if rc >= 0:
        return rc
    raise error(rc, context, **detail)


def bind_message(cls: type) -> Any:
    """Make cls (pymq.Message) the class whose objects Reader.get_messages
    builds in C; returns the C ack to install as cls.ack (cls's own ack stays
    its general path, for messages not received from an ack subscription)."""
    return _fast.bind_message(cls, check)


def ns_size() -> int:
    return lib.pmq_ns_size()


def ring_params(capacity: int, max_msg: int, pid: int = 0, start: int = 0, persist: bool = False,
                first_seq: int = 1):
    p = ffi.new("pmq_ring_params_t *")
    p.capacity = capacity
    p.max_msg = max_msg
    p.max_groups = lib.PMQ_MAX_GROUPS
    p.max_members = lib.PMQ_MAX_MEMBERS
    p.max_ack_groups = ACK_GROUPS
    p.pending_cap = PENDING_CAP
    p.persist = 1 if persist else 0
    p.first_seq = first_seq
    p.creator_pid = pid
    p.creator_start = start
    return p


def ring_size(params) -> int:
    size = lib.pmq_ring_size(params)
    if size == 0:
        raise ValueError("invalid ring parameters")
    return size


def _unmap(ptr, seg) -> None:
    ffi.release(ptr)
    seg.close()


class _Mapped:
    """A cffi pointer over a mapped Segment. Both are released together when
    the handle is garbage (no C call can still be using it then) or by
    release(), which the caller may only use when no other thread can be
    inside a call on it."""

    def __init__(self, seg):
        self.seg = seg
        self._ptr = ffi.from_buffer(seg.mm)
        self._len = len(seg.mm)
        self._fin = weakref.finalize(self, _unmap, self._ptr, seg)
        self._fin.atexit = False  # at exit, users may still run; the OS unmaps

    def release(self) -> None:
        self._fin()


class Namespace(_Mapped):
    """The namespace header of a broker (pmq_ns.h)."""

    @classmethod
    def init(cls, seg, owner_pid: int, owner_start: int, owner_token: int, config: bytes):
        with ffi.from_buffer(seg.mm) as ptr:
            check(lib.pmq_ns_init(ptr, len(seg.mm), owner_pid, owner_start, owner_token,
                                  config, len(config)), "namespace")
        return cls(seg)

    def __init__(self, seg: Any) -> None:
        super().__init__(seg)
        rc = lib.pmq_ns_attach(self._ptr, self._len)
        if rc < 0:
            self.release()
            check(rc, "namespace")
        self.hdr = ffi.cast("pmq_ns_t *", self._ptr)

    def config_text(self) -> str:
        n = min(self.hdr.config_len, lib.PMQ_NS_CONFIG_MAX)
        return ffi.unpack(self.hdr.config, n).decode("utf-8")


class Ring(_Mapped):
    """A topic's ring (pmq_ring.h), attached over a mapped Segment."""

    @staticmethod
    def init(seg, params) -> None:
        with ffi.from_buffer(seg.mm) as ptr:
            check(lib.pmq_ring_init(ptr, len(seg.mm), params), "ring init")

    def __init__(self, seg, topic: str = ""):
        super().__init__(seg)
        self.topic = topic
        self.h = ffi.new("pmq_ring_t *")
        rc = lib.pmq_ring_attach(self.h, self._ptr, self._len)
        if rc < 0:
            self.release()
            check(rc, f"topic {topic!r}")
        self.max_msg = self.h.max_msg
        self.capacity = self.h.capacity
        self.addr = int(ffi.cast("uintptr_t", self.h))  # the handle, for pymq._fast
        # the hot path, bound once: put1(payload: bytes, timeout_ns) -> seq, or a
        # negative code for finish()
        self.put1 = partial(_fast.publish1, self.addr)

    def finish(self, rc: int, timeout_ns: int, call, size: int | None = None,
               largest: int | None = None):
        """A call's slow path, after it returned the code rc: after a signal
        (PMQ_EINTR; its Python handler has run by now) call(time left of
        timeout_ns) again; return the result (a count or seq, or the object a
        pymq._fast call returns), raise for an error code (size, largest: the
        bytes a publish asked for and its largest payload, for the message)."""
        deadline = time.monotonic_ns() + timeout_ns
        while rc == EINTR:
            rc = call(-1 if timeout_ns < 0 else max(0, deadline - time.monotonic_ns()))
        if type(rc) is not int or rc >= 0:
            return rc
        raise error(rc, f"topic {self.topic!r}", timeout_ns=timeout_ns, size=size,
                    largest=largest, max_msg=self.max_msg, capacity=self.capacity)

    # -- publishing ---------------------------------------------------------

    def publish1(self, data: bytes, timeout_ns: int) -> int:
        """Publish one payload (bytes); returns its seq."""
        rc = self.put1(data, timeout_ns)
        return rc if rc > 0 else self.finish(rc, timeout_ns, partial(self.put1, data))

    def publish_list(self, payloads, timeout_ns: int) -> int | None:
        """Publish a list (or tuple) of bytes in one native call, all or none;
        returns the seq of the last, or None if an item is not bytes."""
        rc = _fast.publish(self.addr, payloads, timeout_ns)
        if rc is None or rc > 0:
            return rc
        again = tuple(payloads)  # after a signal: what was checked, whatever the list does now
        return self.finish(rc, timeout_ns, partial(_fast.publish, self.addr, again),
                           sum(map(len, again)), max(map(len, again)))

    def test_stop_in_publish(self, data: bytes, phase: int) -> int:
        """Tests only: stop a publish part-way, keeping the mutex (then die)."""
        return check(lib.pmq_ring_test_stop_in_publish(self.h, data, len(data), phase))

    # -- groups ---------------------------------------------------------------

    def join(self, group: str, flags: int, start: int, start_seq: int, owner: int,
             ack_timeout_ns: int = 0, max_retries: int = 0):
        """Join (or create) a group; returns the pmq_join_t (member, member_gen,
        group, group_gen)."""
        out = ffi.new("pmq_join_t *")
        check(lib.pmq_group_join(self.h, group.encode(), flags, start, start_seq, owner,
                                 os.getpid(), ack_timeout_ns, max_retries, out),
              f"topic {self.topic!r}")
        return out

    def leave(self, member: int, gen: int) -> bool:
        rc = lib.pmq_member_leave(self.h, member, gen)
        return rc == 0 or (rc != lib.PMQ_GONE and check(rc, f"topic {self.topic!r}") == 0)

    # -- ack groups -----------------------------------------------------------

    def acker(self, group: int, group_gen: int):
        """ack1(slot, seq) for one group, its arguments bound once (Message.ack's
        hot path): 1 if it acked, 0 if the delivery was no longer pending, or a
        negative code for check()."""
        return partial(_fast.ack1, self.addr, group, group_gen)

    def ack_messages(self, group: int, group_gen: int, sub, msgs: list) -> int | None:
        """Ack sub's pending Messages in one call (settled ones skipped): how
        many took effect; None, having done nothing, if one of them is not a
        plain pending Message of sub (the caller then takes the general path)."""
        rc = _fast.ack_messages(self.addr, group, group_gen, sub, msgs)
        return rc if rc is None or rc >= 0 else check(rc, f"topic {self.topic!r}")

    def settle(self, how: str, group: int, group_gen: int, slots, seqs, attempts=None,
               n: int | None = None) -> int:
        """Ack, nack or confirm dead-lettering of n (default len(slots)) deliveries
        in one native call; returns how many took effect. slots, seqs, attempts
        (for nacks): array('I'), array('Q'), array('I'), or a Batch's own arrays."""
        def c(ctype, a):
            return a if isinstance(a, ffi.CData) else ffi.from_buffer(ctype, a)
        h, s, q = self.h, c("uint32_t[]", slots), c("uint64_t[]", seqs)
        n = len(slots) if n is None else n
        if how == "ack":
            rc = lib.pmq_group_ack(h, group, group_gen, s, q, n)
        elif how == "nack":
            rc = lib.pmq_group_nack(h, group, group_gen, s, q, c("uint32_t[]", attempts), n)
        else:
            rc = lib.pmq_group_dead_lettered(h, group, group_gen, s, q, n)
        return rc if rc >= 0 else check(rc, f"topic {self.topic!r}")

    def sweep(self, now_ns: int) -> list[int]:
        """Requeue every ack group's timed-out deliveries; the groups that have
        dead ones to dead-letter."""
        mask = ffi.new("uint64_t *")
        check(lib.pmq_ring_sweep(self.h, now_ns, mask), f"topic {self.topic!r}")
        return [g for g in range(64) if mask[0] >> g & 1]

    def take_dead(self, group: int, batch: "Batch") -> tuple[int, int]:
        """Copy dead deliveries of the group into batch: (count, group gen)."""
        gen = ffi.new("uint32_t *")
        n = check(lib.pmq_group_take_dead(self.h, group, batch.b, batch.max_batch, gen),
                  f"topic {self.topic!r}")
        return n, gen[0]

    # -- persistence: restoring after a restart -------------------------------------

    def restore(self, payloads: list[bytes], seqs, ts) -> None:
        """Append records with their old seqs and times (array('Q'), array('q'))."""
        lens = array("I", map(len, payloads))
        bufs = [ffi.from_buffer(p) for p in payloads]  # alive until the call returns
        check(lib.pmq_ring_restore(self.h, ffi.new("char *[]", bufs), ffi.from_buffer("uint32_t[]", lens),
                                   ffi.from_buffer("uint64_t[]", seqs),
                                   ffi.from_buffer("int64_t[]", ts), len(payloads)),
              f"topic {self.topic!r}: restore")

    def group_restore(self, name: str, flags: int, position: int, acked, ack_timeout_ns: int,
                      max_retries: int) -> None:
        acked = array("Q", acked)
        check(lib.pmq_group_restore(self.h, name.encode(), flags, position,
                                    ffi.from_buffer("uint64_t[]", acked) if acked else ffi.NULL,
                                    len(acked), ack_timeout_ns, max_retries),
              f"topic {self.topic!r}: restore group {name!r}")

    def group_position(self, group: int) -> tuple[int, list[int]]:
        """(seq of the oldest unacked/undelivered record, seqs acked after it)."""
        position = ffi.new("uint64_t *")
        acked = ffi.new("uint64_t[]", PENDING_CAP)
        n = check(lib.pmq_group_position(self.h, group, position, acked, PENDING_CAP),
                  f"topic {self.topic!r}")
        return position[0], ffi.unpack(acked, n)

    @contextlib.contextmanager
    def data(self):
        """(char pointer, length) of the data area in shared memory, for the
        duration of the with block (it pins the mapping)."""
        with ffi.from_buffer("char[]", self.seg.mm) as base:
            yield base + self.h.data_off, self.h.capacity

    def view(self, pos: int, length: int) -> memoryview:
        """A read-only view of a record's payload in shared memory; it keeps the
        mapping alive for as long as it exists."""
        off = self.h.data_off + (pos & self.h.mask) + REC_HDR
        return memoryview(self.seg.mm)[off:off + length].toreadonly()

    def reap(self, owner: int) -> int:
        return check(lib.pmq_ring_reap(self.h, owner), f"topic {self.topic!r}")

    def member_owners(self) -> list[tuple[int, int, int, int]]:
        """(member, owner token, group index, pid) of every live member."""
        owner, group, pid = ffi.new("uint64_t *"), ffi.new("uint32_t *"), ffi.new("int32_t *")
        out = []
        for i in range(lib.PMQ_MAX_MEMBERS):
            if lib.pmq_member_info(self.h, i, owner, group, pid) == 1:
                out.append((i, owner[0], group[0], pid[0]))
        return out

    # -- figures and lifetime ------------------------------------------------

    def stats(self) -> dict:
        """The ring's figures and its live groups', in one locked snapshot."""
        s = ffi.new("pmq_ring_stats_t *")
        groups = ffi.new("pmq_group_stats_t[]", lib.PMQ_MAX_GROUPS)
        n = check(lib.pmq_ring_stats(self.h, s, groups, lib.PMQ_MAX_GROUPS), f"topic {self.topic!r}")
        out = {name: getattr(s, name) for name in (
            "capacity", "head", "tail", "gate_min", "next_seq", "published", "published_bytes",
            "publish_waits", "publish_full", "expired", "recoveries", "wakeups", "corrupt",
            "anon_delivered", "anon_delivered_bytes", "groups", "members", "closed", "max_msg")}
        out["groups_detail"] = [{
            "index": g.index, "name": ffi.string(g.name).decode("utf-8", "replace"),
            "anonymous": bool(g.flags & lib.PMQ_GROUP_ANON), "members": g.members,
            "cursor": g.cursor, "delivered": g.delivered, "delivered_bytes": g.delivered_bytes,
            "lag": g.lag, "position": g.cursor_seq, "ack": bool(g.flags & lib.PMQ_GROUP_ACK),
            "acked": g.acked, "nacked": g.nacked, "redelivered": g.redelivered,
            "dead_lettered": g.dead_lettered, "timeouts": g.timeouts, "pending": g.pending,
            "ready": g.ready, "dead": g.dead, "idle_since": g.idle_since_ns / 1e9}
            for g in (groups[i] for i in range(n))]
        return out

    def close_ring(self, deleted: bool = False) -> None:
        """Mark the segment closed (the Broker, before unlinking) or deleted (a
        topic deletion) and wake everyone: publishers then get BrokerClosed
        (or TopicDeleted), and readers too once they read what was there. The
        mark is made even when the lock cannot be had (a corrupt segment)."""
        lib.pmq_ring_close(self.h, CLOSED_DELETED if deleted else CLOSED_BROKER)

    @property
    def closed(self) -> int:
        """0 while open, else CLOSED_BROKER or CLOSED_DELETED."""
        return self.h.hdr.closed

    def delete_group(self, name: str) -> None:
        """Delete a named group (GroupNotFound if there is none)."""
        check(lib.pmq_group_delete(self.h, name.encode()), f"topic {self.topic!r}, group {name!r}")


class Batch:
    """Buffers one native read fills (pmq_batch_t): Python allocates, C fills.
    zero_copy (a Reader of an ack group only: Reader.read refuses a plain
    group's): no payload buffer; offs are offsets in the ring's data area,
    buflen a budget of payload bytes. Whatever zero_copy, zb is the same arrays
    without the buffer, for the fast reads' peeks (Reader.get1, get_payloads)."""

    def __init__(self, max_batch: int, buflen: int, zero_copy: bool = False):
        self.max_batch = max_batch
        self.buflen = buflen
        self.buf = ffi.NULL if zero_copy else ffi.new("char[]", buflen)
        self.offs = ffi.new("uint64_t[]", max_batch)
        self.lens = ffi.new("uint32_t[]", max_batch)
        self.seqs = ffi.new("uint64_t[]", max_batch)
        self.ts = ffi.new("int64_t[]", max_batch)
        self.pos = ffi.new("uint64_t[]", max_batch)
        self.slots = ffi.new("uint32_t[]", max_batch)
        self.attempts = ffi.new("uint32_t[]", max_batch)
        self.b = self._batch(self.buf)
        # the same arrays, no buffer: a plain group's fast reads (Reader.get1,
        # get_payloads) peek, copy each payload once from the ring into its
        # bytes, then claim (pymq._fast, pmq_ring_claim)
        self.zb = self._batch(ffi.NULL)
        self.view = None if zero_copy else ffi.buffer(self.buf)

    def _batch(self, buf):
        b = ffi.new("pmq_batch_t *")
        b.buf, b.buflen, b.max = buf, self.buflen, self.max_batch
        b.offs, b.lens, b.seqs, b.ts = self.offs, self.lens, self.seqs, self.ts
        b.pos, b.slots, b.attempts = self.pos, self.slots, self.attempts
        return b

    def payloads(self):
        """A context giving (char pointer, length): where offs point."""
        return contextlib.nullcontext((self.buf, self.buflen))

    def payload(self, i: int) -> bytes:
        off = self.offs[i]
        return self.view[off:off + self.lens[i]]


class Reader(Batch):
    """A subscription's reads: its member of a ring, and its buffers."""

    def __init__(self, ring: Ring, member: int, gen: int, max_batch: int, buflen: int,
                 zero_copy: bool = False):
        super().__init__(max_batch, buflen, zero_copy)
        self.ring, self.member, self.gen = ring, member, gen
        # the hot reads (pymq._fast) with this reader's ring, member and buffers
        # bound once; each returns its result, or a negative code for finish():
        #   get1(timeout_ns) -> bytes; get_payloads(n, timeout_ns) -> [bytes];
        #   an ack group's get1_message(timeout_ns, sub, topic) -> Message and
        #   get_messages(n, timeout_ns, sub, topic) -> [Message] (see bind_message)
        peek = (ring.addr, member, gen, int(ffi.cast("uintptr_t", self.zb)))
        fixed = (ring.addr, member, gen, int(ffi.cast("uintptr_t", self.b)))
        self.get1 = partial(_fast.read1, *peek, 1)
        self.get_payloads = partial(_fast.read, *peek)
        self.get1_message = partial(_fast.read1_message, *fixed, 1)
        self.get_messages = partial(_fast.read_messages, *fixed)
        self.finish = ring.finish

    def payloads(self):
        if self.buf:
            return super().payloads()
        return self.ring.data()

    def read1(self, timeout_ns: int) -> bytes:
        """One record's payload."""
        p = self.get1(timeout_ns)
        return p if type(p) is bytes else self.finish(p, timeout_ns, self.get1)

    def read(self, max_count: int, timeout_ns: int) -> int:
        """Fill the buffers with up to max_count records; returns the count."""
        ring = self.ring
        h = ring.h
        n = min(max_count, self.max_batch)
        rc = lib.pmq_ring_read(h, self.member, self.gen, self.b, n, timeout_ns)
        if rc > 0 and self.b.claim_to:  # a plain group's zero-copy read: a peek, nothing taken
            raise ValueError("a zero-copy Reader is for an ack group (a plain group's records "
                             "may be overwritten once read)")
        if rc > 0:
            return rc
        return self.finish(rc, timeout_ns, lambda left: lib.pmq_ring_read(
            h, self.member, self.gen, self.b, n, left))
