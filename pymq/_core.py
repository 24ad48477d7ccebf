"""The one door to compiled code: pymq._native (the ring and the log's encoder,
bound with cffi) and pymq._fast (the per-message calls and the Message type,
CPython C-API, bound here to _native's table of functions).

At import it checks that the two were built together, and, in a source
checkout, from the sources beside them (a stale build is an ImportError that
says `make clean`). It turns the ring's codes into exceptions in one place
(error, check; error_from_c for pymq._fast), wraps a mapped segment in a
Namespace or Ring handle, fronts the encoder (Lines), and holds the one batch
splitter (spans_within). Every constant comes from the library. A test
asserts that no other module imports compiled code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
import weakref
from array import array
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any, Callable, TypeAlias, TypeVar, cast

if not sys.platform.startswith("linux"):
    raise ImportError(f"pymq runs on Linux only, not {sys.platform}: it needs futexes, robust "
                      "process-shared mutexes and a /dev/shm tmpfs")

from . import _fast, _native  # noqa: E402
from .errors import (BrokerClosed, Full, GroupNotFound, LimitExceeded, MessageTooLarge,  # noqa: E402
                     NativeError, SegmentMismatch, SubscriptionClosed, Timeout)

ffi, lib = _native.ffi, _native.lib


def _build_of_sources() -> str | None:
    """In a source checkout, the build id of the sources beside the package
    (build.py's hash); None for an installed package (or the sanitized
    copy), which then imports neither pathlib nor importlib.util: a
    supervisor's start waits for its imports."""
    top = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    if not os.path.isfile(os.path.join(top, "build.py")) or \
            not os.path.isdir(os.path.join(top, "native", "ring")):
        return None
    import importlib.util
    import pathlib
    root = pathlib.Path(top)
    spec = importlib.util.spec_from_file_location("_pymq_build", root / "build.py")
    if spec is None or spec.loader is None:
        return None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    return str(builder.build_id(root))


BUILD_ID = ffi.string(lib.pmq_api().build_id).decode()
if BUILD_ID != _fast.BUILD_ID:
    raise ImportError(f"pymq._native (build {BUILD_ID}) and pymq._fast (build {_fast.BUILD_ID}) "
                      "were not built together: run `make clean` and build again")
if os.environ.get("PYMQ_SKIP_BUILD_CHECK") is None and _build_of_sources() not in (None, BUILD_ID):
    raise ImportError(f"pymq's native modules (build {BUILD_ID}) were built from other sources "
                      f"than those beside {__file__}: run `make clean` and build again")

LAYOUT_VERSION = lib.PMQ_LAYOUT_VERSION
EINTR = lib.PMQ_EINTR
EMPTY = lib.PMQ_EMPTY
DELETED = lib.PMQ_DELETED
NOTREADY = lib.PMQ_NOTREADY
BUSY = lib.PMQ_BUSY
START = {"latest": lib.PMQ_START_LATEST, "earliest": lib.PMQ_START_EARLIEST}
START_SEQ = lib.PMQ_START_SEQ
REC_HDR = lib.PMQ_REC_HDR
MAX_RETRIES = lib.PMQ_MAX_RETRIES  # of an ack group: BrokerConfig.max_retries at most
GROUP_ACK = lib.PMQ_GROUP_ACK
CLOSED_BROKER = lib.PMQ_CLOSED_BROKER
CLOSED_DELETED = lib.PMQ_CLOSED_DELETED
PERSIST_GROUP = ffi.string(lib.PMQ_PERSIST_GROUP).decode()  # the persistence writer's ack group
PERSIST_ACK_TIMEOUT_NS = lib.PMQ_PERSIST_ACK_TIMEOUT_NS
PERSIST_RETRIES = lib.PMQ_PERSIST_RETRIES
MAX_GROUPS = lib.PMQ_MAX_GROUPS
MAX_MEMBERS = lib.PMQ_MAX_MEMBERS
ACK_GROUPS = lib.PMQ_DEFAULT_ACK_GROUPS      # pending tables per topic: ack groups it can have
PENDING_CAP = lib.PMQ_DEFAULT_PENDING_CAP    # deliveries in flight per ack group


def record_size(payload_len: int) -> int:
    """Bytes a record of a payload of that length takes in a ring."""
    return int(lib.pmq_record_size(payload_len))


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
                                     f"{MAX_GROUPS} groups, {MAX_MEMBERS} "
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
    if rc == lib.PMQ_BUSY:
        return Timeout(f"{where}nothing arrived within {_seconds(timeout_ns)} (a lock of the "
                       "topic was held by another process)")
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
    if rc == -errno.ETIMEDOUT:
        return Timeout(f"{where}a lock of the topic was held by another process (stopped or "
                       "frozen?) for longer than this call waits")
    exc, text = _ERRORS.get(rc, (None, None))
    if exc is None:
        code = -rc
        return NativeError(code, f"{where}{os.strerror(code)}")
    return exc(f"{where}{text}")


def error_from_c(rc: int, topic: object, timeout_ns: int, size: int, largest: int, max_msg: int,
                 capacity: int) -> Exception:
    """error() as pymq._fast calls it (positional; 0 for what it does not know)."""
    return error(rc, f"topic {topic!r}" if topic is not None else "", timeout_ns=timeout_ns,
                 size=size or None, largest=largest or None, max_msg=max_msg or None,
                 capacity=capacity or None)


def check(rc: int, context: str = "", **detail: Any) -> int:
    """Return rc if it is not an error code, else raise the matching exception."""
    if rc >= 0:
        return rc
    raise error(rc, context, **detail)


# pymq._fast gets the table of _native's functions (checked) and the errors' maker, once
_fast.bind(int(ffi.cast("uintptr_t", lib.pmq_api())), error_from_c)

Message: TypeAlias = _fast.Message
Reader: TypeAlias = _fast.Reader
_F = TypeVar("_F", bound=Callable[..., Any])


def publisher(publish: _F) -> _F:
    """Client.publish: the function, with its usual case done in C
    (pymq._fast.Publisher, native/py/publisher.c), typed as the function."""
    return cast(_F, _fast.Publisher(publish))


timeout_ns: Callable[[float | None], int] = _fast.timeout_ns
"""A timeout in seconds as ns (None: -1, for ever); ValueError for a bad one.
pymq's one conversion, in C: the Reader's reads take seconds through it too."""


def spans_within(lens: Sequence[int], limit: int,
                 max_count: int | None = None) -> Iterator[tuple[int, int]]:
    """Split payloads of these lengths into consecutive (start, end) spans that
    take at most limit bytes of a ring each, and hold at most max_count (a span
    has at least one): the one batch splitter, for dead letters, restores and
    `pymq publish`."""
    start, n = 0, len(lens)
    while start < n:
        end, size = start, 0
        stop = n if max_count is None else min(n, start + max_count)
        while end < stop and (end == start or size + record_size(lens[end]) <= limit):
            size += record_size(lens[end])
            end += 1
        yield start, end
        start = end


def deadline(timeout_ns: int) -> Any:
    """A pmq_deadline_t: the timeout, its clock started by the first wait."""
    d = ffi.new("pmq_deadline_t *")
    d.timeout_ns, d.at_ns = timeout_ns, -1
    return d


def ns_size() -> int:
    return int(lib.pmq_ns_size())


def ring_params(capacity: int, max_msg: int, pid: int = 0, start: int = 0,
                first_seq: int = 1) -> Any:
    p = ffi.new("pmq_ring_params_t *")
    p.capacity = capacity
    p.max_msg = max_msg
    p.max_groups = MAX_GROUPS
    p.max_members = MAX_MEMBERS
    p.max_ack_groups = ACK_GROUPS
    p.pending_cap = PENDING_CAP
    p.first_seq = first_seq
    p.creator_pid = pid
    p.creator_start = start
    return p


def ring_size(params: Any) -> int:
    size = int(lib.pmq_ring_size(params))
    if size == 0:
        raise ValueError("invalid ring parameters")
    return size


def _unmap(ptr: Any, seg: Any) -> None:
    ffi.release(ptr)
    seg.close()


class _Mapped:
    """A cffi pointer over a mapped Segment. Both are released together when
    the handle is garbage (no C call can still be using it then: a Reader
    or a Message holds it) or by release(), which the caller may only use
    when no other thread can be inside a call on it."""

    def __init__(self, seg: Any):
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
    def init(cls, seg: Any, owner_pid: int, owner_start: int, owner_token: int,
             config: bytes) -> "Namespace":
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
        return str(ffi.unpack(self.hdr.config, n).decode("utf-8"))


class Batch:
    """What a cold-path read (cffi: the persistence writer, dead letters,
    tests) fills: Python allocates, C fills. zero_copy (an ack group only):
    no buffer, the offsets point into the ring's data area."""

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
        b = self.b = ffi.new("pmq_batch_t *")
        b.buf, b.buflen, b.max = self.buf, buflen, max_batch
        b.offs, b.lens, b.seqs, b.ts = self.offs, self.lens, self.seqs, self.ts
        b.pos, b.slots, b.attempts = self.pos, self.slots, self.attempts
        self.view = None if zero_copy else ffi.buffer(self.buf)

    def payload(self, i: int) -> bytes:
        assert self.view is not None, "a zero-copy batch: its payloads are in the ring"
        off = self.offs[i]
        return bytes(self.view[off:off + self.lens[i]])

    def lengths(self, n: int) -> list[int]:
        return list(ffi.unpack(self.lens, n))


class Ring(_Mapped):
    """A topic's ring (pmq_ring.h), attached over a mapped Segment."""

    @staticmethod
    def init(seg: Any, params: Any, persist: bool = False) -> None:
        """Format a new segment, with the persistence writer's group when
        persist, then mark it ready (nobody else can attach before)."""
        with ffi.from_buffer(seg.mm) as ptr:
            check(lib.pmq_ring_init(ptr, len(seg.mm), params), "ring init")
            if persist:
                r = ffi.new("pmq_ring_t *")
                check(lib.pmq_ring_attach_unready(r, ptr, len(seg.mm)), "ring init")
                check(lib.pmq_group_create(r, PERSIST_GROUP.encode(), GROUP_ACK,
                                           lib.PMQ_START_EARLIEST, 0, PERSIST_ACK_TIMEOUT_NS,
                                           PERSIST_RETRIES), "ring init")
            lib.pmq_ring_ready(ptr)

    def __init__(self, seg: Any, topic: str = ""):
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
        # the hot path, bound once: put1(payload: bytes, timeout_ns) -> seq; raises
        self.put1 = partial(_fast.publish1, self.addr, topic)
        self._context = f"topic {topic!r}"

    # -- publishing ---------------------------------------------------------

    def publish1(self, data: bytes, timeout_ns: int) -> int:
        """Publish one payload (bytes); returns its seq."""
        return int(self.put1(data, timeout_ns))

    def publish_list(self, payloads: Sequence[bytes], timeout_ns: int) -> int | None:
        """Publish a list (or tuple) of bytes in one native call, all or none;
        returns the seq of the last, or None if an item is not bytes."""
        got: int | None = _fast.publish(self.addr, self.topic, payloads, timeout_ns)
        return got

    def publish_buffer(self, data: Any, record_size: int, offsets: Any, timeout_ns: int) -> int:
        """Every record of one buffer as one message (see Client.publish_batch)."""
        seq: int = _fast.publish_buffer(self.addr, self.topic, data, record_size, offsets,
                                        timeout_ns)
        return seq

    # -- members ----------------------------------------------------------------

    def join(self, group: str, flags: int, start: int, start_seq: int, owner: int,
             ack_timeout_ns: int = 0, max_retries: int = 0) -> Any:
        """Join (or create) a group; returns the pmq_join_t (member, member_gen,
        group, group_gen, created)."""
        out = ffi.new("pmq_join_t *")
        check(lib.pmq_member_join(self.h, group.encode(), flags, start, start_seq, owner,
                                  os.getpid(), ack_timeout_ns, max_retries, out), self._context)
        return out

    def reader(self, joined: Any, ack: bool, max_batch: int, budget: int) -> Any:
        """The fast path's reads of the member joined (a pymq._fast.Reader); it
        keeps this handle, so the mapping, alive."""
        return _fast.Reader(self.addr, joined.member, joined.member_gen, joined.group,
                            joined.group_gen, ack, max_batch, budget, self, self.topic)

    def leave(self, member: int, gen: int, timeout_ns: int = -1) -> bool:
        """Remove a member: True, or False if it was gone already; Timeout if
        the topic's lock is held past timeout_ns (< 0: 10 s)."""
        rc = lib.pmq_member_leave(self.h, member, gen, timeout_ns)
        return rc == 0 or (rc != lib.PMQ_GONE and check(rc, self._context) == 0)

    def read(self, member: int, gen: int, batch: Batch, max_count: int, timeout_ns: int) -> int:
        """A cold-path read into batch: the count; raises as a subscription's get."""
        d = deadline(timeout_ns)
        while True:
            rc = lib.pmq_member_read(self.h, member, gen, batch.b, min(max_count, batch.max_batch),
                                     d, ffi.NULL, ffi.NULL)
            if rc != EINTR:
                return check(rc, self._context, timeout_ns=timeout_ns)

    def reap(self, owner: int) -> int:
        return check(lib.pmq_member_reap(self.h, owner), self._context)

    def member_owners(self) -> list[tuple[int, int, int, int]]:
        """(member, owner token, group index, pid) of every live member."""
        owner, group, pid = ffi.new("uint64_t *"), ffi.new("uint32_t *"), ffi.new("int32_t *")
        out = []
        for i in range(MAX_MEMBERS):
            if lib.pmq_member_info(self.h, i, owner, group, pid) == 1:
                out.append((i, owner[0], group[0], pid[0]))
        return out

    # -- groups -------------------------------------------------------------------

    def delete_group(self, name: str) -> None:
        """Delete a named group (GroupNotFound if there is none); an ack group's
        table is freed at once if its lock is free, else by the next sweep."""
        check(lib.pmq_group_delete(self.h, name.encode()), f"{self._context}, group {name!r}")
        self.sweep(time.monotonic_ns())

    def ack(self, group: int, group_gen: int, batch: Batch, n: int) -> int:
        """Ack the first n deliveries of a cold-path batch (the persistence writer)."""
        return check(lib.pmq_ack_ack(self.h, group, group_gen, batch.slots, batch.seqs, n,
                                     ffi.NULL), self._context)

    def sweep(self, now_ns: int) -> tuple[list[int], int]:
        """Requeue every ack group's timed-out deliveries and those of members
        gone, free groups on their way out: (the groups that have dead ones to
        dead-letter, how many groups' locks were held by others and left for
        the next sweep)."""
        mask, busy = ffi.new("uint64_t *"), ffi.new("uint32_t *")
        check(lib.pmq_ack_sweep(self.h, now_ns, mask, busy), self._context)
        return [g for g in range(64) if mask[0] >> g & 1], int(busy[0])

    def take_dead(self, group: int, batch: Batch) -> tuple[int, int]:
        """Copy dead deliveries of the group into batch: (count, group gen)."""
        gen = ffi.new("uint32_t *")
        n = check(lib.pmq_ack_take_dead(self.h, group, batch.b, batch.max_batch, gen),
                  self._context)
        return n, gen[0]

    def dead_lettered(self, group: int, gen: int, batch: Batch, start: int, end: int) -> int:
        """Free dead deliveries start..end-1 of batch, now on the .dlq topic."""
        return check(lib.pmq_ack_dead_lettered(self.h, group, gen, batch.slots + start,
                                               batch.seqs + start, end - start), self._context)

    # -- persistence: positions, and restoring after a restart -----------------------

    def restore(self, payloads: list[bytes], seqs: array, ts: array,
                timeout_ns: int = 0) -> None:
        """Append records with their old seqs and times (array('Q'), array('q')),
        waiting up to timeout_ns for room (Full then)."""
        lens = array("I", map(len, payloads))
        bufs = [ffi.from_buffer(p) for p in payloads]  # alive until the call returns
        check(lib.pmq_ring_restore(self.h, ffi.new("char *[]", bufs),
                                   ffi.from_buffer("uint32_t[]", lens),
                                   ffi.from_buffer("uint64_t[]", seqs),
                                   ffi.from_buffer("int64_t[]", ts), len(payloads),
                                   deadline(timeout_ns), ffi.NULL),
              f"{self._context}: restore", timeout_ns=timeout_ns)

    def wait_word(self, which: int) -> tuple[int, int]:
        """Announce a waiter that sleeps elsewhere (an event loop's: pymq/aio.py)
        for data (WAIT_DATA) or room (WAIT_SPACE): (the word's address, its
        value now). Look again, then sleep while the word holds the value."""
        word, value = ffi.new("uint32_t **"), ffi.new("uint32_t *")
        check(lib.pmq_ring_wait_word(self.h, which, word, value), self._context)
        return int(ffi.cast("uintptr_t", word[0])), int(value[0])

    def restoring(self, end_seq: int) -> None:
        """Start streaming a backlog in (end_seq: the seq after its last;
        publishes wait until it is in), or end it (0)."""
        check(lib.pmq_ring_restoring(self.h, end_seq), f"{self._context}: restoring")

    def group_restore(self, name: str, flags: int, position: int, acked: Iterable[int],
                      ack_timeout_ns: int, max_retries: int) -> None:
        seqs = array("Q", acked)
        check(lib.pmq_durable_restore(self.h, name.encode(), flags, position,
                                      ffi.from_buffer("uint64_t[]", seqs) if seqs else ffi.NULL,
                                      len(seqs), ack_timeout_ns, max_retries),
              f"{self._context}: restore group {name!r}")

    def group_position(self, group: int) -> tuple[int, list[int]]:
        """(seq of the oldest unacked/undelivered record, seqs acked after it)."""
        position = ffi.new("uint64_t *")
        acked = ffi.new("uint64_t[]", PENDING_CAP)
        n = check(lib.pmq_durable_position(self.h, group, position, acked, PENDING_CAP),
                  self._context)
        return position[0], list(ffi.unpack(acked, n))

    @contextlib.contextmanager
    def data(self) -> Iterator[tuple[Any, int]]:
        """(char pointer, length) of the data area in shared memory, for the
        duration of the with block (it pins the mapping)."""
        with ffi.from_buffer("char[]", self.seg.mm) as base:
            yield base + self.h.data_off, self.h.capacity

    def view(self, pos: int, length: int) -> memoryview:
        """A read-only view of a record's payload in shared memory; it keeps the
        mapping alive for as long as it exists."""
        off = self.h.data_off + (pos & self.h.mask) + REC_HDR
        return memoryview(self.seg.mm)[off:off + length].toreadonly()

    # -- figures and lifetime ------------------------------------------------

    def stats(self, lock_timeout_ns: int = 10**8) -> dict[str, Any]:
        """The ring's figures and its groups', in one snapshot under its lock;
        if another process holds the lock for longer than lock_timeout_ns (a
        stopped process, say), from a look without it: then "locked" is true
        and "lock_pid" says who holds it."""
        s = ffi.new("pmq_ring_stats_t *")
        groups = ffi.new("pmq_group_stats_t[]", MAX_GROUPS)
        n = check(lib.pmq_group_stats(self.h, s, groups, MAX_GROUPS, deadline(lock_timeout_ns)),
                  self._context)
        out: dict[str, Any] = {name: getattr(s, name) for name in (
            "capacity", "head", "tail", "gate_min", "next_seq", "published", "published_bytes",
            "publish_waits", "publish_full", "expired", "recoveries", "wakeups", "corrupt",
            "anon_delivered", "anon_delivered_bytes", "reaped_members", "groups", "members", "closed",
            "max_msg", "lock_pid", "restore_end")}
        out["locked"] = bool(s.locked)
        out["groups_detail"] = [{
            "index": g.index, "name": ffi.string(g.name).decode("utf-8", "replace"),
            "anonymous": bool(g.flags & lib.PMQ_GROUP_ANON), "members": g.members,
            "cursor": g.cursor, "delivered": g.delivered, "delivered_bytes": g.delivered_bytes,
            "lag": g.lag, "position": g.cursor_seq, "ack": bool(g.flags & lib.PMQ_GROUP_ACK),
            "acked": g.acked, "nacked": g.nacked, "redelivered": g.redelivered,
            "dead_lettered": g.dead_lettered, "timeouts": g.timeouts, "pending": g.pending,
            "ready": g.ready, "dead": g.dead, "idle_since": g.idle_since_ns / 1e9,
            "lock_pid": g.lock_pid}
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
        return int(self.h.hdr.closed)


class Lines:
    """The JSON lines of a cold-path batch's records, encoded by one native
    call (native/codec) into a buffer reused from batch to batch:
    {"seq":<int>,"ts":<epoch seconds, 6 decimals>,"payload":"<base64>"}\\n"""

    def __init__(self, batch: Batch):
        self.batch = batch
        # every line of a full batch fits: its frame, and base64 of at most the whole budget
        self.cap = batch.max_batch * (lib.PMQ_JSONL_FRAME + 4) + batch.buflen * 4 // 3 + 4
        self.out = ffi.new("char[]", self.cap)
        self.ends = ffi.new("uint64_t[]", batch.max_batch)
        self.view = memoryview(ffi.buffer(self.out))

    def encode(self, first: int, n: int, payloads: tuple[Any, int]) -> list[int]:
        """Encode records first..n-1 (as many as fit) from payloads (where the
        batch's offsets point: (pointer, length)); the end of each line."""
        b = self.batch
        buf, buflen = payloads
        got = lib.pmq_jsonl_encode(buf, buflen, b.offs + first, b.lens + first, b.seqs + first,
                                   b.ts + first, n - first, self.out, self.cap, self.ends)
        if got <= 0:  # a record outside the buffer, or one line bigger than the whole buffer
            from .errors import PersistenceError
            raise PersistenceError(f"cannot encode record seq {b.seqs[first]} for the log")
        return list(ffi.unpack(self.ends, got))

    def seqs(self, first: int) -> Any:
        return self.batch.seqs + first
