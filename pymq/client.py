"""The client API: connect(), Client, Subscription, Message.

A Client attaches to a running broker's namespace and to one segment per topic
it uses (creating a topic's segment on first use). Publishing and receiving
are native calls on shared memory; the supervisor is never on the hot path
(deleting a topic or a group asks it, through pymq/control.py).
"""

from __future__ import annotations

import collections
import itertools
import operator
import os
import threading
import time
import weakref
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, Union

import posix_ipc

from . import _core, control, segments
from .batch import AckBatch, Batch, HistoryBatch
from .config import BrokerConfig, check_broker_name, check_group, check_topic, default_name
from .errors import (BrokerClosed, BrokerNotFound, Full, GroupKindMismatch, MessageTooLarge, MQError,
                     SegmentMismatch, SubscriptionClosed, Timeout)

READ_BATCH = 1024          # most records one native read returns
CLOSE_LEAVE_NS = 100_000_000  # close() waits this long for a topic's lock to leave its groups
READ_BUFFER = 256 * 1024   # bytes of a subscription's read buffer (at least max_message_bytes)
READY_TIMEOUT = 5.0        # seconds to wait for another process to finish creating a segment


def _aio() -> Any:
    """pymq/aio.py, imported by the first coroutine call: asyncio's import
    (about a quarter of `import pymq`'s time) is paid by those who use it."""
    from . import aio
    return aio


def _as_bytes(payload: object) -> bytes:
    """The payload as bytes (the ring copies from a bytes object's own buffer)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, Message):
        return _as_bytes(payload.payload)
    if isinstance(payload, (bytearray, memoryview)) or hasattr(payload, "__buffer__"):
        return bytes(payload)
    try:
        return bytes(memoryview(payload))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"payload must be bytes-like or pymq.Message, "
                        f"not {type(payload).__name__}") from None


Message = _core.Message  # all C (native/py/message.c): fields, ack, nack, view, repr


Payload = Union[bytes, bytearray, memoryview, Message]  # or anything with the buffer protocol
T = TypeVar("T")
_Sub = TypeVar("_Sub", bound="Subscription[Any]")


class _Resources:
    """What a Client owns, kept apart from it so that a finalizer can free it.
    Mappings are unmapped when their last user (a Subscription, say) lets go."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.ns: _core.Namespace | None = None
        self.topics: dict[str, _core.Ring] = {}
        self.subs: set[Subscription[Any]] = set()
        self.token: segments.Token | None = None

    def close(self) -> None:
        if os.getpid() != self.pid:  # a forked copy: the subscriptions are the parent's
            self.subs.clear()
        stuck: set[int] = set()  # rings whose lock is held (a stopped process): not waited for
        for sub in list(self.subs):
            if id(sub._ring) in stuck:
                sub._reader.close()  # left to the supervisor (its owner's token goes below)
            elif not sub._leave(CLOSE_LEAVE_NS):
                stuck.add(id(sub._ring))
        self.subs.clear()
        self.topics.clear()
        if self.token is not None:
            self.token.close()
            self.token = None
        self.ns = None


class Client:
    """A connection to a running broker. Broker shares this interface."""

    def __init__(self, name: str | None = None, *, _token: segments.Token | None = None):
        """Attach to the running broker `name` (None: $PYMQ_NAME, else "pymq").

        Raises InvalidName for a bad name, BrokerNotFound if no broker of that
        name runs, SegmentMismatch if its namespace is of another layout or
        corrupt."""
        name = check_broker_name(default_name() if name is None else name)
        self._res = _Resources()
        self._finalizer = weakref.finalize(self, self._res.close)
        self._lock = threading.Lock()
        self._closed = False
        self.name = name
        try:
            self._res.ns = _core.Namespace(segments.Segment.attach(segments.ns_shm_name(name)))
        except (posix_ipc.ExistentialError, _core.SegmentNotReady):
            self._finalizer()
            raise BrokerNotFound(f"no broker named {name!r} is running") from None
        except posix_ipc.PermissionsError:
            self._finalizer()
            raise BrokerNotFound(f"broker {name!r} belongs to another user (permission denied): "
                                 "run as its user (docs/security.md)") from None
        except BaseException:
            self._finalizer()
            raise
        self._res.token = _token
        try:
            self._config = BrokerConfig.from_json(self._res.ns.config_text())
        except ValueError as e:
            self._finalizer()
            raise SegmentMismatch(f"broker {name!r}: bad config in shared memory: {e}") from None
        self._topics = self._res.topics  # the hot path's dict
        self._publish_timeout_ns = _core.timeout_ns(self._config.publish_timeout)
        # what publish's C path reads (pymq._fast.Publisher, below)
        self._publish_state = (self._topics, self._publish_timeout_ns)

    # -- lifetime -------------------------------------------------------------

    @property
    def config(self) -> BrokerConfig:
        """The BrokerConfig in force (read from the broker's shared memory)."""
        return self._config

    def close(self) -> None:
        """Leave every subscription and unmap everything. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed("this client is closed")
        ns = self._res.ns
        if ns is None or ns.hdr.closed:
            raise BrokerClosed(f"broker {self.name!r} is closed (or was replaced by a new one)")

    # -- topics -----------------------------------------------------------------

    def _ring(self, topic: str) -> _core.Ring:
        ring = self._topics.get(topic) or self._open_topic(topic, create=True)
        assert ring is not None  # create=True: made, or an exception
        return ring

    def _open_topic(self, topic: str, create: bool) -> _core.Ring | None:
        check_topic(topic)
        with self._lock:
            self._check_open()
            ts = self._topics.get(topic)
            if ts is None:
                ts = self._attach_or_create(topic, create)
                if ts is not None:
                    self._topics[topic] = ts
            return ts

    def _forget(self, topic: str, ring: _core.Ring | None = None) -> None:
        """Drop the cached ring of a deleted topic (only that one, if given:
        another thread may have opened the new topic already)."""
        with self._lock:
            if ring is None or self._topics.get(topic) is ring:
                self._topics.pop(topic, None)

    def _attach_or_create(self, topic: str, create: bool) -> _core.Ring | None:
        shm_name = segments.topic_shm_name(self.name, topic)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                seg = segments.Segment.attach(shm_name)
            except posix_ipc.ExistentialError:
                if not create:
                    return None
                made = self._create_topic(shm_name)
                if made is None:
                    continue  # another process created it first: attach to theirs
                seg = made
            try:
                ring = _core.Ring(seg, topic)
            except _core.SegmentNotReady:
                ring = None
            if ring is not None and ring.closed != _core.CLOSED_DELETED:
                return ring
            if ring is not None:
                ring.release()  # deleted, not unlinked yet: its name is about to go
            if time.monotonic() > deadline:
                raise SegmentMismatch(f"topic {topic!r}: segment never became ready") from None
            time.sleep(0.001)

    def _create_topic(self, shm_name: str) -> segments.Segment | None:
        cfg = self._config
        assert cfg.max_message_bytes is not None  # set by BrokerConfig.__post_init__
        params = _core.ring_params(cfg.ring_capacity, cfg.max_message_bytes,
                                   os.getpid(), segments.start_stamp())
        try:
            seg = segments.Segment.create(shm_name, _core.ring_size(params))
        except posix_ipc.ExistentialError:
            return None
        try:
            _core.Ring.init(seg, params, persist=cfg.persistence_enabled)
        except BaseException:
            seg.close()
            segments.unlink(shm_name)  # ours, never made ready: nobody attached
            raise
        ns = self._res.ns
        if ns is None or ns.hdr.closed:  # the broker closed while we created it
            seg.close()
            segments.unlink(shm_name)
            raise BrokerClosed(f"broker {self.name!r} is closed")
        return seg

    def _owner_token(self) -> int:
        with self._lock:
            if self._res.token is None:
                self._res.token = segments.Token(self.name)
            return self._res.token.value

    # -- publishing -------------------------------------------------------------

    def publish(self, topic: str, payload: Payload, timeout: float | None = None) -> int:
        """Publish one message (bytes-like or Message); returns its seq.

        Waits up to timeout (default: config.publish_timeout) for ring space.
        Raises Full when there was none in time, MessageTooLarge for a payload
        over max_message_bytes, TypeError for a payload that is not bytes-like,
        InvalidTopic, BrokerClosed. A call that fails creates nothing (not even
        the topic)."""
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        timeout_ns = self._publish_timeout_ns if timeout is None else _core.timeout_ns(timeout)
        ring = self._topics.get(topic) or self._ring_for(topic, {len(payload): 1})
        try:
            seq: int = ring.put1(payload, timeout_ns)
            return seq
        except _core.TopicDeleted:  # deleted under us: publish to the topic anew
            self._forget(topic, ring)
            return self.publish(topic, payload, timeout)

    # The usual case (a str topic mapped here, a bytes payload, the default
    # timeout) with no Python frame: pymq._fast.Publisher publishes it from C
    # and hands every other call to the function above, which it wraps as a
    # method (its name, doc and signature are that function's).
    publish = _core.publisher(publish)

    def publish_many(self, topic: str, payloads: Iterable[Payload],
                     timeout: float | None = None) -> int:
        """Publish a batch in one native call, all or none; returns the last seq.

        Raises as publish(); also ValueError for an empty batch, and
        MessageTooLarge for a batch larger than the ring."""
        if type(payloads) is not list and type(payloads) is not tuple:
            payloads = list(payloads)  # an iterator, say
        assert isinstance(payloads, (list, tuple))
        if not payloads:
            raise ValueError("publish_many needs at least one payload")
        timeout_ns = self._publish_timeout_ns if timeout is None else _core.timeout_ns(timeout)
        ring = self._topics.get(topic)
        if ring is None:
            checked = [p if type(p) is bytes else _as_bytes(p) for p in payloads]
            ring = self._ring_for(topic, collections.Counter(map(len, checked)))
            payloads = checked
        try:
            last = ring.publish_list(payloads, timeout_ns)  # bytes only: the ring copies from each
            if last is None:
                last = ring.publish_list([p if type(p) is bytes else _as_bytes(p) for p in payloads],
                                         timeout_ns)
            assert last is not None  # every item is bytes now
        except _core.TopicDeleted:
            self._forget(topic, ring)
            return self.publish_many(topic, payloads, timeout)
        return last

    def publish_batch(self, topic: str, data: Any, *, record_size: int | None = None,
                      offsets: Any = None, timeout: float | None = None) -> int:
        """Publish every record of one buffer as one message each, in one
        native call, all or none; returns the last seq. data: anything with
        the buffer protocol, C-contiguous (bytes, bytearray, memoryview, a
        numpy array); record_size: every record's size (the data a whole
        number of them), or offsets: n + 1 unsigned 64-bit integers
        (array('Q'), a numpy uint64 array, or a sequence of ints), record i
        being data[offsets[i]:offsets[i + 1]]. Waits like publish().

        Raises ValueError (nothing published) for bad sizes or offsets (not
        dividing the data, decreasing, past its end, negative, not integers,
        a strided array) or no record, TypeError for data without the buffer
        protocol, BufferError for data that is not C-contiguous,
        MessageTooLarge for a record over max_message_bytes or a batch larger
        than the ring, and as publish()."""
        if record_size is not None:
            try:
                size = operator.index(record_size)  # an int, or numpy's (dtype.itemsize is one)
            except TypeError:
                size = 0
            if size < 1 or isinstance(record_size, bool):
                raise ValueError(f"record_size must be an int >= 1, not {record_size!r}")
        else:
            size = 0
            if offsets is not None:
                offsets = _offsets(offsets)
        with memoryview(data) as view:  # TypeError without the buffer protocol
            if not view.c_contiguous:  # (numpy's own error here would be a ValueError)
                raise BufferError("data must be C-contiguous")
            length = view.nbytes
        timeout_ns = self._publish_timeout_ns if timeout is None else _core.timeout_ns(timeout)
        ring = self._topics.get(topic)
        if ring is None:  # the first publish to it: a batch that must fail creates no topic
            ring = self._ring_for(topic, _record_lengths(length, size, offsets))
        try:
            return ring.publish_buffer(data, size, offsets, timeout_ns)
        except _core.TopicDeleted:
            self._forget(topic, ring)
            return self.publish_batch(topic, data, record_size=size or None, offsets=offsets,
                                      timeout=timeout)

    async def apublish(self, topic: str, payload: Payload, timeout: float | None = None) -> int:
        """publish() for a coroutine: the wait for ring space (up to timeout,
        default config.publish_timeout) is awaited, never blocking the event
        loop. Returns the seq; raises as publish()."""
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        timeout_ns = self._publish_timeout_ns if timeout is None else _core.timeout_ns(timeout)
        ring = self._topics.get(topic) or self._ring_for(topic, {len(payload): 1})
        try:
            return ring.put1(payload, 0)  # the usual case, made short: there is room
        except Full:
            if timeout_ns == 0:
                raise
        except _core.TopicDeleted:
            self._forget(topic, ring)
        seq: int = await _aio().publish(self._topics.get(topic) or self._ring(topic),
                                        lambda: self.publish(topic, payload, 0), timeout_ns,
                                        len(payload))
        return seq

    async def apublish_many(self, topic: str, payloads: Iterable[Payload],
                            timeout: float | None = None) -> int:
        """publish_many() for a coroutine (see apublish()): all or none, the
        last seq; raises as publish_many()."""
        batch = [p if type(p) is bytes else _as_bytes(p) for p in payloads]
        if not batch:
            raise ValueError("publish_many needs at least one payload")
        timeout_ns = self._publish_timeout_ns if timeout is None else _core.timeout_ns(timeout)
        ring = self._topics.get(topic) or self._ring_for(topic,
                                                         collections.Counter(map(len, batch)))
        last: int = await _aio().publish(ring, lambda: self.publish_many(topic, batch, 0),
                                         timeout_ns, sum(map(len, batch)))
        return last

    def _ring_for(self, topic: str, counts: dict[int, int]) -> _core.Ring:
        """The topic's ring for a first publish to it of payloads of these
        lengths ({length: how many}), once they are known to fit (each under
        max_message_bytes, all in the ring: a new ring's records start at its
        start, so they fit if their sizes do): a publish that must fail
        creates no topic."""
        check_topic(topic)
        limit = self._config.max_message_bytes
        assert limit is not None
        big = max(counts)
        footprint = sum(_core.record_size(n) * k for n, k in counts.items())
        if big > limit:
            raise MessageTooLarge(f"topic {topic!r}: a payload of {big:,} bytes is over "
                                  f"max_message_bytes ({limit:,})")
        if footprint > self._config.ring_capacity:
            raise MessageTooLarge(f"topic {topic!r}: a batch of {footprint:,} bytes in the ring "
                                  f"does not fit the ring ({self._config.ring_capacity:,} bytes)")
        return self._ring(topic)

    # -- subscribing ------------------------------------------------------------

    def subscribe(self, topic: str, group: str | None = None,
                  start: str | int = "latest") -> "Subscription[bytes]":
        """Subscribe to topic; yields payload bytes, each once per group.
        Without group: a group of its own (fan-out). With group: compete with
        the group's other members (each message to one); a named group is
        durable: it keeps its position, and holds messages, while it has no
        member (see delete_group). start ("latest", "earliest" or a seq >= 1)
        applies when the group is created.

        Raises InvalidTopic, InvalidName (group), ValueError (start),
        GroupKindMismatch if the group was made by subscribe_with_ack(),
        LimitExceeded when the topic has no room for another subscription,
        BrokerClosed."""
        return self._subscribe(Subscription[bytes], topic, group, start, 0)

    def subscribe_with_ack(self, topic: str, group: str | None = None,
                           start: str | int = "latest") -> "AckSubscription":
        """Subscribe with at-least-once delivery; yields pymq.Message. A message
        not acked within config.ack_timeout is redelivered (delivery_attempt + 1)
        to a live member of the group; after config.max_retries redeliveries it
        goes to the topic '{topic}.dlq'. A member that dies has its unacked
        messages redelivered at once.

        Raises as subscribe() (GroupKindMismatch if the group was made by
        subscribe())."""
        return self._subscribe(AckSubscription, topic, group, start, _core.GROUP_ACK)

    def _subscribe(self, cls: Callable[..., _Sub], topic: str, group: str | None,
                   start: str | int, flags: int) -> _Sub:
        check_topic(topic)
        if group is not None:
            check_group(group)
        seq: int
        if isinstance(start, str):
            if start not in _core.START:
                raise ValueError(f"start must be 'latest', 'earliest' or a seq, not {start!r}")
            mode, seq = _core.START[start], 0
        elif isinstance(start, int) and not isinstance(start, bool) and start >= 1:
            mode, seq = _core.START_SEQ, start
        else:
            raise ValueError(f"start must be 'latest', 'earliest' or a seq >= 1, not {start!r}")
        ring = self._ring(topic)
        cfg = self._config
        try:
            joined = ring.join(group or "", flags, mode, seq, self._owner_token(),
                               int(cfg.ack_timeout * 1e9), cfg.max_retries)
        except ValueError:
            if group is None:
                raise
            want, other = (("subscribe_with_ack", "subscribe") if flags else
                           ("subscribe", "subscribe_with_ack"))
            raise GroupKindMismatch(f"group {group!r} of topic {topic!r} was made by {other}(): "
                                    f"it cannot be joined with {want}()") from None
        reader = ring.reader(joined, bool(flags & _core.GROUP_ACK), READ_BATCH,
                             max(READ_BUFFER, ring.max_msg))
        sub = cls(self, topic, group, ring, reader)
        if joined.created and mode != _core.START["latest"] and cfg.persistence_enabled:
            # What the ring no longer holds comes from disk first (it was written
            # there before the ring let it go).
            first_in_ring = ring.group_position(joined.group)[0]
            since = 1 if mode == _core.START["earliest"] else seq
            if since < first_in_ring:
                from .persistence import replay
                sub._set_backlog(_Backlog(source=replay(cfg.persistence_dir, topic, since,
                                                        first_in_ring),
                                          make=sub._from_disk))
        with self._lock:
            self._res.subs.add(sub)
        return sub

    def _system_subscription(self, topic: str, group: str, ack_timeout_ns: int,
                             max_retries: int) -> "AckSubscription":
        """A member of a durable ack group of pymq's own (a name users cannot
        take: '~bridge'), made at the oldest message the ring holds, with its
        own ack timeout and retries (the bridge's)."""
        check_topic(topic)
        ring = self._ring(topic)
        joined = ring.join(group, _core.GROUP_ACK, _core.START["earliest"], 0,
                           self._owner_token(), ack_timeout_ns, max_retries)
        reader = ring.reader(joined, True, READ_BATCH, max(READ_BUFFER, ring.max_msg))
        sub = AckSubscription(self, topic, group, ring, reader)
        with self._lock:
            self._res.subs.add(sub)
        return sub

    # -- deleting ----------------------------------------------------------------

    def delete_group(self, topic: str, group: str) -> None:
        """Delete a named group and its position: its members get
        SubscriptionClosed at their next call, an ack group's pending
        deliveries go with it, and it no longer holds messages back. With
        persistence, its recorded position goes too (a restart does not bring
        it back).

        Raises InvalidTopic, InvalidName, TopicNotFound, GroupNotFound,
        BrokerClosed, BrokerUnavailable (the supervisor did not answer)."""
        check_topic(topic)
        check_group(group)
        self._check_open()
        control.request(self.name, "delete_group", topic=topic, group=group)

    def delete_topic(self, topic: str, keep_files: bool = True) -> None:
        """Delete a topic: its subscriptions get SubscriptionClosed, its
        messages go, and a later publish makes the topic anew. Its segment's
        memory is freed once no process has it mapped. With persistence, its
        log is kept (moved aside to '{persistence_dir}/.deleted.{topic}.{ns}',
        which no restart restores) or, with keep_files=False, removed.

        Raises InvalidTopic, TopicNotFound, BrokerClosed, BrokerUnavailable."""
        check_topic(topic)
        self._check_open()
        control.request(self.name, "delete_topic", topic=topic, keep_files=bool(keep_files))
        self._forget(topic)

    # -- figures ---------------------------------------------------------------

    def topics(self) -> list[str]:
        """The topics that exist (have a segment). Raises BrokerClosed."""
        self._check_open()
        return segments.topic_names(self.name)

    def stats(self) -> dict[str, Any]:
        """Broker-wide figures and one entry per topic (the same dict as GET
        /stats). Raises BrokerClosed."""
        self._check_open()
        assert self._res.ns is not None
        hdr = self._res.ns.hdr
        topics = {}
        start = time.monotonic()
        for topic in self.topics():
            # a topic whose lock is held (by a stopped process, say) is read
            # without it, after at most 0.1 s, and 0.5 s for them all
            wait = min(0.1, max(0.0, 0.5 - (time.monotonic() - start)))
            try:
                ring = self._topics.get(topic) or self._open_topic(topic, create=False)
                if ring is not None and ring.closed == _core.CLOSED_DELETED:
                    self._forget(topic, ring)
                    ring = self._open_topic(topic, create=False)
                if ring is not None:
                    topics[topic] = topic_stats(ring.stats(lock_timeout_ns=int(wait * 1e9)))
            except (MQError, ValueError):
                continue  # being created, removed or deleted right now
        return {
            "broker": self.name,
            "owner_pid": hdr.owner_pid,
            "bridges": segments.bridge_figures(self.name),
            "supervisor": {"pid": hdr.supervisor_pid, "restarts": hdr.supervisor_restarts,
                           "last_sweep": hdr.supervisor_beat_ns / 1e9},
            "reaped_processes": hdr.reaped_processes,
            **{k: sum(t[k] for t in topics.values())
               for k in ("reaped_subscriptions", "published", "delivered") + ACK_FIGURES},
            "topics": topics,
        }


ACK_FIGURES = ("acked", "nacked", "redelivered", "dead_lettered", "timeouts", "pending")


def topic_stats(s: dict[str, Any]) -> dict[str, Any]:
    """The public figures of one topic from a Ring.stats() dict."""
    groups = {}
    now = time.time()
    for g in s["groups_detail"]:
        key = g["name"] if not g["anonymous"] else f"anon-{g['index']}"
        groups[key] = {"members": g["members"], "anonymous": g["anonymous"], "ack": g["ack"],
                       "position": g["position"], "lag": g["lag"],
                       "delivered": g["delivered"], "delivered_bytes": g["delivered_bytes"],
                       "idle_seconds": round(max(0.0, now - g["idle_since"]), 3)
                       if g["idle_since"] and not g["members"] else None,
                       **{k: g[k] for k in ACK_FIGURES}}
    anon = [g for g in groups.values() if g["anonymous"]]
    held = None
    if s.get("locked"):  # its lock could not be had in time: these figures were read without it
        pid = int(s.get("lock_pid") or 0)
        held = {"pid": pid, "state": segments.process_state(pid) if pid else "unknown"}
    return {
        "published": s["published"],
        "published_bytes": s["published_bytes"],
        "lock_held": held,
        # a backlog from disk larger than the ring, still streaming in (publishes wait)
        "restoring": max(0, s["restore_end"] - s["next_seq"]) if s["restore_end"] else 0,
        "delivered": sum(g["delivered"] for g in groups.values()),
        **{k: sum(g[k] for g in groups.values()) for k in ACK_FIGURES},
        "depth": max((g["lag"] + g["pending"] for g in groups.values()), default=0),
        "ring_bytes_used": s["tail"] - s["gate_min"],
        "ring_bytes_retained": s["tail"] - s["head"],
        "ring_bytes_capacity": s["capacity"],
        "publish_waits": s["publish_waits"],
        "publish_refusals": s["publish_full"],
        "expired": s["expired"],
        "lock_recoveries": s["recoveries"],
        "corrupt": s["corrupt"],
        # members of dead processes the supervisor removed (counted under the
        # topic's lock as each goes, so a killed supervisor miscounts none)
        "reaped_subscriptions": s["reaped_members"],
        # every anonymous subscription together, counting those gone: one
        # bounded set of figures however many come and go
        "anonymous": {"members": sum(g["members"] for g in anon),
                      "delivered": s["anon_delivered"] + sum(g["delivered"] for g in anon),
                      "delivered_bytes": s["anon_delivered_bytes"]
                      + sum(g["delivered_bytes"] for g in anon)},
        "groups": groups,
    }


class _Backlog:
    """What a subscription hands out before it reads the ring again: what its
    start= replays from disk (records (seq, ts_ns, payload) from source, read
    lazily, made into items by make), or what its own iteration read ahead
    (items, with the read's seqs and times). Nothing in it is lost to the
    caller: the next get, get_many, get_batch or iteration takes it first.
    Beside the items, their seqs and publish times, oldest first, in arrays
    (meta); what get and iteration took is dropped from meta when it is next
    looked at: they take items alone, at no cost each."""

    __slots__ = ("items", "source", "make", "meta", "described")

    def __init__(self, items: Iterable[Any] = (), seqs: bytes = b"", times: bytes = b"",
                 source: Iterator[tuple[int, int, bytes]] | None = None,
                 make: Callable[[tuple[int, int, bytes]], Any] | None = None):
        self.items: collections.deque[Any] = collections.deque(items)
        self.source, self.make = source, make
        self.meta: collections.deque[tuple[array[int], array[float]]] = collections.deque()
        self.described = 0  # items meta describes: those in items, and before them some taken
        s, t = array("Q"), array("d")
        s.frombytes(seqs)
        t.frombytes(times)
        self._describe(s, t)

    def _describe(self, seqs: array[int], times: array[float]) -> None:
        if len(seqs):
            self.meta.append((seqs, times))
            self.described += len(seqs)

    def _drop(self, n: int) -> tuple[array[int], array[float]]:
        """The first n seqs and times of meta, taken off it."""
        seqs, times = array("Q"), array("d")
        meta = self.meta
        while n:
            s, t = meta[0]
            k = min(n, len(s))
            seqs.extend(s[:k])
            times.extend(t[:k])
            if k == len(s):
                meta.popleft()
            else:
                meta[0] = (s[k:], t[k:])
            self.described -= k
            n -= k
        return seqs, times

    def fill(self, n: int) -> bool:
        """At least n items, or all that is left, in items (from the source);
        whether there are any."""
        items = self.items
        if len(items) < n and self.source is not None:
            recs = list(itertools.islice(self.source, n - len(items)))
            if not recs:
                self.source = None
            assert self.make is not None
            self._drop(self.described - len(items))  # what was taken since
            items.extend(map(self.make, recs))
            self._describe(array("Q", [r[0] for r in recs]), array("d", [r[1] / 1e9 for r in recs]))
        return bool(items)

    def take(self, n: int) -> list[Any]:
        """Up to n items; [] once it is empty."""
        self.fill(n)
        items = self.items
        return [items.popleft() for _ in range(min(n, len(items)))]

    def take_described(self, n: int) -> tuple[list[Any], array[int], array[float]]:
        """Up to n items, their seqs and their publish times."""
        self.fill(n)
        items = self.items
        self._drop(self.described - len(items))
        k = min(n, len(items))
        return [items.popleft() for _ in range(k)], *self._drop(k)


class Subscription(Generic[T]):
    """Receives a topic's messages for one member of a group.

    Iterate it, or call get()/get_many(). Iteration ends when unsubscribed or
    when the broker closes, and leaving it early loses and strands nothing:
    a named group's member and an ack subscription take one message at a time
    from the ring as it is asked for; an anonymous subscription (the only one
    that receives every message) reads ahead, and what it read ahead goes to
    its next get, get_many or loop. Not for concurrent use by several threads:
    give each thread its own subscription.
    """

    def __init__(self, client: Client, topic: str, group: str | None, ring: _core.Ring,
                 reader: _core.Reader):
        self.topic = topic
        self.group = group
        self._client = client
        self._ring = ring
        self._reader = reader
        self._set_backlog(None)

    _backlog: _Backlog | None = None

    def _set_backlog(self, backlog: _Backlog | None) -> None:
        """What get() hands out first. With none (the usual case), get is the
        reader's C method itself, bound on the instance: a receive costs no
        Python frame. With one, it is the method below, which takes from it."""
        self._backlog = backlog
        if backlog is None:
            self.__dict__["get"] = self._reader.get1
        else:
            self.__dict__.pop("get", None)

    def _from_disk(self, rec: tuple[int, int, bytes]) -> Any:
        """A record (seq, ts_ns, payload) replayed from disk, as get() gives it."""
        return rec[2]

    def _taken(self, n: int) -> list[T]:
        """Up to n items of the backlog; [] (and no backlog) once it is empty."""
        got = self._backlog.take(n) if self._backlog is not None else []
        if not got:
            self._set_backlog(None)
        return got

    def _many(self, max_count: int) -> int:
        """max_count checked, and capped at what one read returns."""
        if not isinstance(max_count, int) or isinstance(max_count, bool) or max_count < 1:
            raise ValueError(f"max_count must be an int >= 1, not {max_count!r}")
        return min(max_count, READ_BATCH)

    def get(self, timeout: float | None = None) -> T:
        """The next payload (a pymq.Message for an ack subscription); waits up
        to timeout seconds (None: for ever).

        Raises Timeout when nothing arrived in time, SubscriptionClosed
        (unsubscribed, reaped, its group or topic deleted), BrokerClosed,
        ValueError for a bad timeout. (Without a backlog to hand out first,
        this is the reader's own C method: see _set_backlog.)"""
        if self._backlog is not None:
            old = self._taken(1)
            if old:
                return old[0]
        got: T = self._reader.get1(timeout)
        return got

    def get_many(self, max_count: int, timeout: float | None = None) -> list[T]:
        """1..max_count payloads (Messages) in one native call; waits like get()
        and raises as get() (and ValueError for a bad max_count)."""
        n = self._many(max_count)
        if self._backlog is not None:
            old = self._taken(n)
            if old:
                return old
        got: list[T] = self._reader.get(n, timeout)
        return got

    async def aget(self, timeout: float | None = None) -> T:
        """get() for a coroutine: awaits, never blocking the event loop, with no
        thread of its own (pymq/aio.py). Cancelling it takes nothing. Raises
        as get()."""
        if self._backlog is None:  # the usual case, made short: there is one now
            got = self._reader.poll(1)
            if type(got) is list:
                item: T = got[0]
                return item
        more = await self.aget_many(1, timeout)
        return more[0]

    async def aget_many(self, max_count: int, timeout: float | None = None) -> list[T]:
        """get_many() for a coroutine (see aget()). Raises as get_many()."""
        n = self._many(max_count)
        if self._backlog is not None:
            old = self._taken(n)
            if old:
                return old
        got: list[T] = await _aio().receive(self._reader, n, _core.timeout_ns(timeout),
                                            self._ring)
        return got

    async def aiter(self) -> AsyncIterator[T]:
        """`async for item in sub.aiter()`: iteration for a coroutine, ending
        and reading ahead as iteration does. Raises what aget() raises but
        SubscriptionClosed and BrokerClosed, which end it."""
        ahead = self._read_ahead()
        while True:
            if self._backlog is not None:
                for item in self._backlog_items():
                    yield item
                continue
            try:
                if ahead:
                    got = await self.aget_many(READ_BATCH)
                    self._set_backlog(_Backlog(got, *self._reader.last_read()))
                    continue
                item = await self.aget()
            except (SubscriptionClosed, BrokerClosed):
                return
            yield item

    def __aiter__(self) -> AsyncIterator[T]:
        return self.aiter()

    def get_batch(self, max_count: int, timeout: float | None = None) -> Batch:
        """1..max_count messages as one pymq.Batch, in one native call, with no
        Python object per message (an ack subscription: a batch with ack() and
        nack()); waits like get() and raises as get_many()."""
        n = self._many(max_count)
        if self._backlog is not None:  # what start= replays, or iteration read ahead
            old, old_seqs, old_times = self._backlog.take_described(n)
            if old:
                return self._as_batch(old, old_seqs, old_times)
            self._set_backlog(None)
        got = self._reader.get_batch(n, timeout)
        data, offsets, seqs, times, slots, attempts, size = got
        if slots is None or attempts is None:
            return Batch(self.topic, data, offsets, seqs, times, size)
        return AckBatch(self.topic, data, offsets, seqs, times, size, slots, attempts,
                        self._reader)

    def _as_batch(self, items: list[Any], seqs: array[int], times: array[float]) -> Batch:
        """Items a get would have given (bytes read ahead or replayed from disk;
        Messages replayed, history), with their seqs and publish times, as a
        Batch (an ack subscription's: HistoryBatch)."""
        history = any(isinstance(p, Message) for p in items)
        payloads = [p.payload if isinstance(p, Message) else bytes(p) for p in items]
        offs = array("Q", [0])
        for p in payloads:
            offs.append(offs[-1] + len(p))
        sizes = {len(p) for p in payloads}
        kind = HistoryBatch if history else Batch
        return kind(self.topic, b"".join(payloads), offs.tobytes(), seqs.tobytes(),
                    times.tobytes(), sizes.pop() if len(sizes) == 1 else None)

    def _read_ahead(self) -> bool:
        """Whether iteration may read ahead: only a group of its own, whose
        messages nobody else would get."""
        return self.group is None

    def _backlog_items(self) -> Iterator[T]:
        """Iteration's share of the backlog (replayed, or read ahead): its
        items one by one, each taken before it is handed out, so a loop that
        breaks loses nothing; no backlog once it is empty. No get() per item:
        an anonymous subscription's loop costs about a get's, not six."""
        backlog = self._backlog
        assert backlog is not None
        items = backlog.items
        if not items and not backlog.fill(READ_BATCH):
            self._set_backlog(None)
        while items and self._backlog is backlog:
            yield items.popleft()

    def __iter__(self) -> Iterator[T]:
        ahead = self._read_ahead()
        while True:
            if self._backlog is not None:
                yield from self._backlog_items()
                continue
            try:
                if ahead:
                    got = self.get_many(READ_BATCH)
                    self._set_backlog(_Backlog(got, *self._reader.last_read()))
                    continue
                item = self.get()
            except (SubscriptionClosed, BrokerClosed):
                return
            yield item

    def _leave(self, timeout_ns: int = -1) -> bool:
        """Close the reader and leave the group: False if the topic's lock was
        held past timeout_ns (< 0: 10 s; the member is left to the supervisor,
        which reaps it once its process or client is gone)."""
        r = self._reader
        self._set_backlog(None)
        if not r.closed:
            r.close()  # its reads raise SubscriptionClosed; its messages can still be acked
            try:
                self._ring.leave(r.member, r.gen, timeout_ns)
            except Timeout:
                return False
            except MQError:
                pass  # a corrupt or closed segment: nothing left to leave
        return True

    def unsubscribe(self) -> None:
        """Leave the group (an anonymous group goes with it). Idempotent."""
        client = self._client
        with client._lock:
            client._res.subs.discard(self)
        self._leave()

    close = unsubscribe

    def __enter__(self) -> "Subscription[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


def _offsets(offsets: Any) -> Any:
    """publish_batch's offsets as the native call takes them: a C-contiguous
    buffer (checked here, so that a strided one is the same ValueError on
    every publish), or a sequence of ints made an array('Q')."""
    try:
        with memoryview(offsets) as o:
            contiguous = o.c_contiguous
    except TypeError:  # not a buffer: a sequence of ints
        try:
            return array("Q", offsets)
        except (OverflowError, TypeError) as e:  # a negative offset, or not an int
            raise ValueError(f"offsets must be unsigned integers: {e}") from None
    if not contiguous:
        raise ValueError("offsets must be C-contiguous")
    return offsets


def _record_lengths(length: int, record_size: int, offsets: Any) -> dict[int, int]:
    """The records' lengths ({length: how many}) of a publish_batch of
    length bytes of data (C-contiguous: checked by the caller), its other
    arguments checked as the native call checks them (ValueError): for the
    first publish to a topic, which must create nothing if it fails."""
    if record_size:
        if offsets is not None:
            raise ValueError("give record_size or offsets, not both")
        if length % record_size:
            raise ValueError(f"the data ({length} bytes) is not a whole number of records of "
                             f"{record_size} bytes")
        if not length:
            raise ValueError("no records in the data")
        return {record_size: length // record_size}
    if offsets is None:
        raise ValueError("give record_size (> 0) or offsets")
    with memoryview(offsets) as o:
        if o.itemsize != 8 or o.format not in ("Q", "L", "K") or o.nbytes < 16:
            raise ValueError("offsets must be n + 1 unsigned 64-bit integers (array('Q'), "
                             "numpy uint64), n >= 1")
        offs = o.cast("B").cast("Q").tolist()
    if any(b < a for a, b in zip(offs, offs[1:])) or offs[-1] > length:
        raise ValueError(f"offsets must be non-decreasing and within the data ({length} bytes)")
    return collections.Counter(b - a for a, b in zip(offs, offs[1:]))


class AckSubscription(Subscription[Message]):
    """An at-least-once subscription: get()/get_many()/iteration give
    pymq.Message objects to ack() (or nack()); ack_many() acks a batch in one
    native call. Iteration takes one delivery at a time, so leaving a loop
    leaves nothing pending."""

    def _read_ahead(self) -> bool:
        return False  # what it read ahead would be pending, its ack clock running

    def _from_disk(self, rec: tuple[int, int, bytes]) -> Message:
        """A message replayed from disk: history, so its ack is a no-op."""
        seq, ts, payload = rec
        return Message(payload, topic=self.topic, seq=seq, publish_time=ts / 1e9)

    def _settle_many(self, msgs: Iterable[Message], nack: bool) -> int:
        """One native call per subscription the messages came from."""
        mine = msgs if type(msgs) is list else list(msgs)
        n: int | None = (self._reader.nack if nack else self._reader.ack)(mine)
        if n is not None:
            return n  # the usual case: all this subscription's
        by_reader: dict[_core.Reader, list[Message]] = {}
        for m in mine:
            if m._reader is not None:
                by_reader.setdefault(m._reader, []).append(m)
            elif not nack:
                m.ack()  # a user's message: its own ack, if it has one
        return sum((r.nack if nack else r.ack)(part) or 0 for r, part in by_reader.items())

    def get_batch(self, max_count: int, timeout: float | None = None) -> AckBatch:
        """Subscription.get_batch: an AckBatch, whose ack() and nack() settle
        its messages (all, or some indices) in one native call. Raises as
        get_many()."""
        batch = super().get_batch(max_count, timeout)
        assert isinstance(batch, AckBatch)
        return batch

    def ack_many(self, msgs: Iterable[Message]) -> int:
        """Ack many messages in one native call (per subscription they came
        from); returns how many were still waiting for their ack. It never
        waits. Raises SegmentMismatch for a corrupt segment."""
        return self._settle_many(msgs, nack=False)

    def nack_many(self, msgs: Iterable[Message]) -> int:
        """Redeliver many messages now (dead-letter those out of retries);
        returns how many were requeued. Raises SegmentMismatch for a corrupt
        segment."""
        return self._settle_many(msgs, nack=True)


def connect(name: str | None = None, *, wait: float = 0.0) -> Client:
    """Attach to the running broker `name` (None: $PYMQ_NAME, else "pymq").

    wait: seconds to wait for a broker that is starting (containers of a pod
    start in any order). Raises BrokerNotFound if none runs (after wait),
    InvalidName for a bad name, SegmentMismatch for a namespace of another
    layout."""
    name = check_broker_name(default_name() if name is None else name)
    if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not wait >= 0:
        raise ValueError(f"wait must be a number >= 0, not {wait!r}")
    deadline = time.monotonic() + wait
    while True:
        try:
            return Client(name)
        except BrokerNotFound:
            if time.monotonic() >= deadline:
                if wait:
                    raise BrokerNotFound(f"no broker named {name!r} started within "
                                         f"{wait:g} s") from None
                raise
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
