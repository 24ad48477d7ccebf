"""The client API: connect(), Client, Subscription, Message.

A Client attaches to a running broker's namespace and to one segment per topic
it uses (creating a topic's segment on first use). Publishing and receiving
are native calls on shared memory; the supervisor is never on the hot path.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from array import array
from functools import partial

import posix_ipc

from . import _core, segments
from .config import BrokerConfig, check_group, check_topic
from .errors import BrokerClosed, BrokerNotFound, MQError, SegmentMismatch, SubscriptionClosed

READ_BATCH = 1024          # most records one native read returns
READ_BUFFER = 256 * 1024   # bytes of a subscription's read buffer (at least max_message_bytes)
READY_TIMEOUT = 5.0        # seconds to wait for another process to finish creating a segment


_TIMEOUTS: dict = {None: -1}  # timeouts seen (a few distinct values in a program) -> ns


def _timeout_ns(timeout) -> int:
    ns = _TIMEOUTS.get(timeout)
    if ns is not None:
        return ns
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    ns = int(timeout * 1e9)
    if len(_TIMEOUTS) < 256:
        _TIMEOUTS[timeout] = ns
    return ns


def _as_bytes(payload):
    """The payload as something cffi passes as `const char *` without a copy."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, Message):
        return _as_bytes(payload.payload)
    if isinstance(payload, (bytearray, memoryview)) or hasattr(payload, "__buffer__"):
        return bytes(payload)
    try:
        return bytes(memoryview(payload))
    except TypeError:
        raise TypeError(f"payload must be bytes-like or pymq.Message, "
                        f"not {type(payload).__name__}") from None


class Message:
    """A message: payload plus, when received, where it came from.

    Message(payload, ack=None) mirrors the seed's Message{Payload, Ack}. ack()
    is a no-op on a message that needs no acknowledgement. A message received
    from subscribe_with_ack() is acked, nacked and viewed through its
    subscription's segment, without a word to the supervisor.
    """

    __slots__ = ("payload", "_ack", "topic", "seq", "delivery_attempt", "publish_time",
                 "_sub", "_slot", "_pos", "_views", "_settled")

    def __init__(self, payload, ack=None, *, topic=None, seq=None, delivery_attempt=1,
                 publish_time=None):
        self.payload = payload
        self._ack = ack
        self.topic = topic
        self.seq = seq
        self.delivery_attempt = delivery_attempt
        self.publish_time = publish_time
        self._sub = None
        self._views = None
        self._settled = False

    def ack(self) -> None:
        """Acknowledge: the message will not be delivered to this group again.
        Idempotent; a no-op on a message that needs no ack."""
        sub = self._sub
        if sub is not None:
            if not self._settled:
                if self._views:
                    self._settle()
                self._settled = True
                rc = sub._ack1(self._slot, self.seq)
                if rc < 0:
                    _core.check(rc, f"topic {sub.topic!r}")
        elif self._ack is not None:
            self._ack()

    def nack(self) -> None:
        """Ask for redelivery now (to any live member of the group) instead of
        after the ack timeout; dead-lettered when out of retries."""
        if self._sub is not None and not self._settled:
            self._sub.nack_many([self])

    def view(self) -> memoryview:
        """A read-only memoryview of the payload in shared memory (zero-copy).
        It is valid while this delivery is pending: until it is acked or nacked
        (then the view is released), and not after its ack timeout passed and
        another member got and acked it, nor after the subscription closed."""
        if self._sub is None:
            return memoryview(self.payload).toreadonly()
        if self._settled:
            raise ValueError("the message was acked: its view is no longer valid")
        if self._sub._reader is None:
            raise ValueError("the subscription is closed: the message may be redelivered elsewhere")
        mv = self._sub._ring.view(self._pos, len(self.payload))
        if self._views is None:
            self._views = []
        self._views.append(mv)
        return mv

    def _settle(self) -> None:
        """Acked or nacked: its place in the ring may be reused, so views go."""
        self._settled = True
        for mv in self._views or ():
            try:
                mv.release()
            except BufferError:
                pass  # something exports it (numpy, say): it stays readable, stale
        self._views = None

    def __repr__(self) -> str:
        return (f"Message(topic={self.topic!r}, seq={self.seq}, "
                f"delivery_attempt={self.delivery_attempt}, "
                f"payload={self.payload[:32]!r}{'...' if len(self.payload) > 32 else ''})")


# An ack subscription's reads make Messages in C (see _core.bind_message):
# payload, topic, seq, delivery_attempt, publish_time (ts / 1e9), _ack None, _sub
# the subscription, _slot and _pos of the delivery, _views None, _settled False.
# Message.ack becomes C too: the common case (such a message, pending, not
# viewed) acks in one call; it hands every other case to the ack above.
Message.ack = _core.bind_message(Message)


class _Resources:
    """What a Client owns, kept apart from it so that a finalizer can free it.
    Mappings are unmapped when their last user (a Subscription, say) lets go."""

    def __init__(self):
        self.pid = os.getpid()
        self.ns = None
        self.topics: dict[str, _core.Ring] = {}
        self.subs: set = set()
        self.token = None

    def close(self) -> None:
        if os.getpid() != self.pid:  # a forked copy: the subscriptions are the parent's
            self.subs.clear()
        for sub in list(self.subs):
            sub._leave()
        self.subs.clear()
        self.topics.clear()
        if self.token is not None:
            self.token.close()
            self.token = None
        self.ns = None


class Client:
    """A connection to a running broker. Broker shares this interface."""

    def __init__(self, name: str = "pymq", *, _token=None):
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
        self._publish_timeout_ns = _timeout_ns(self._config.publish_timeout)

    # -- lifetime -------------------------------------------------------------

    @property
    def config(self) -> BrokerConfig:
        return self._config

    def close(self) -> None:
        """Leave every subscription and unmap everything. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed("this client is closed")
        ns = self._res.ns
        if ns is None or ns.hdr.closed:
            raise BrokerClosed(f"broker {self.name!r} is closed")

    # -- topics -----------------------------------------------------------------

    def _ring(self, topic: str) -> _core.Ring:
        return self._topics.get(topic) or self._open_topic(topic, create=True)

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

    def _attach_or_create(self, topic: str, create: bool) -> _core.Ring | None:
        shm_name = segments.topic_shm_name(self.name, topic)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                seg = segments.Segment.attach(shm_name)
            except posix_ipc.ExistentialError:
                if not create:
                    return None
                seg = self._create_topic(shm_name)
                if seg is None:
                    continue  # another process created it first: attach to theirs
            try:
                return _core.Ring(seg, topic)
            except _core.SegmentNotReady:
                if time.monotonic() > deadline:
                    raise SegmentMismatch(f"topic {topic!r}: segment never became ready") from None
                time.sleep(0.001)

    def _create_topic(self, shm_name: str) -> segments.Segment | None:
        cfg = self._config
        params = _core.ring_params(cfg.ring_capacity, cfg.max_message_bytes,
                                   os.getpid(), segments.start_stamp(), cfg.persistence_enabled)
        try:
            seg = segments.Segment.create(shm_name, _core.ring_size(params))
        except posix_ipc.ExistentialError:
            return None
        try:
            _core.Ring.init(seg, params)
        except BaseException:
            seg.close()
            segments.unlink(shm_name)  # ours, never made ready: nobody attached
            raise
        if self._res.ns.hdr.closed:  # the broker closed while we created it
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

    def publish(self, topic: str, payload, timeout: float | None = None) -> int:
        """Publish one message (bytes-like or Message); returns its seq.

        Waits up to timeout (default: config.publish_timeout) for ring space,
        then raises pymq.Full."""
        ring = self._topics.get(topic) or self._ring(topic)
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        timeout_ns = self._publish_timeout_ns if timeout is None else _timeout_ns(timeout)
        seq = ring.put1(payload, timeout_ns)
        return seq if seq > 0 else ring.finish(seq, timeout_ns, partial(ring.put1, payload))

    def publish_many(self, topic: str, payloads, timeout: float | None = None) -> int:
        """Publish a batch in one native call, all or none; returns the last seq."""
        ring = self._ring(topic)
        timeout_ns = self._publish_timeout_ns if timeout is None else _timeout_ns(timeout)
        if type(payloads) is not list and type(payloads) is not tuple:
            payloads = list(payloads)  # an iterator, say
        if not payloads:
            raise ValueError("publish_many needs at least one payload")
        last = ring.publish_list(payloads, timeout_ns)  # bytes only: the ring copies from each
        if last is None:
            last = ring.publish_list([p if type(p) is bytes else _as_bytes(p) for p in payloads],
                                     timeout_ns)
        return last

    # -- subscribing ------------------------------------------------------------

    def subscribe(self, topic: str, group: str | None = None, start="latest") -> "Subscription":
        """Subscribe to topic; yields payload bytes, each once per group.
        Without group: a group of its own (fan-out). With group: compete with
        the group's other members (each message to one); a named group is
        durable. start ("latest", "earliest" or a seq) applies when the group
        is created."""
        return self._subscribe(Subscription, topic, group, start, 0)

    def subscribe_with_ack(self, topic: str, group: str | None = None,
                           start="latest") -> "AckSubscription":
        """Subscribe with at-least-once delivery; yields pymq.Message. A message
        not acked within config.ack_timeout is redelivered (delivery_attempt + 1)
        to a live member of the group; after config.max_retries redeliveries it
        goes to the topic '{topic}.dlq'. A member that dies has its unacked
        messages redelivered at once."""
        return self._subscribe(AckSubscription, topic, group, start, _core.GROUP_ACK)

    def _subscribe(self, cls, topic, group, start, flags):
        if group is not None:
            check_group(group)
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
            raise ValueError(f"group {group!r} of topic {topic!r} was made by {other}(): "
                             f"it cannot be joined with {want}()") from None
        buflen = max(READ_BUFFER, ring.max_msg + _core.REC_HDR)
        reader = _core.Reader(ring, joined.member, joined.member_gen, READ_BATCH, buflen)
        sub = cls(self, topic, group, reader, joined.group, joined.group_gen)
        if joined.created and mode != _core.START["latest"] and cfg.persistence_enabled:
            # What the ring no longer holds comes from disk first (it was written
            # there before the ring let it go).
            first_in_ring = ring.group_position(joined.group)[0]
            want = 1 if mode == _core.START["earliest"] else seq
            if want < first_in_ring:
                from .persistence import replay
                sub._replay = replay(cfg.persistence_dir, topic, want, first_in_ring)
        with self._lock:
            self._res.subs.add(sub)
        return sub

    # -- figures ---------------------------------------------------------------

    def topics(self) -> list[str]:
        return segments.topic_names(self.name)

    def stats(self) -> dict:
        """Broker-wide figures and one entry per topic (the same dict as GET /stats)."""
        ns = self._res.ns
        if ns is None:
            raise BrokerClosed("this client is closed")
        hdr = ns.hdr
        topics = {}
        for topic in self.topics():
            try:
                ring = self._topics.get(topic) or self._open_topic(topic, create=False)
            except (MQError, ValueError):
                continue  # being created or removed right now
            if ring is not None:
                topics[topic] = topic_stats(ring.stats())
        return {
            "broker": self.name,
            "owner_pid": hdr.owner_pid,
            "supervisor": {"pid": hdr.supervisor_pid, "restarts": hdr.supervisor_restarts,
                           "last_sweep": hdr.supervisor_beat_ns / 1e9},
            "reaped_processes": hdr.reaped_processes,
            "reaped_subscriptions": hdr.reaped_members,
            **{k: sum(t[k] for t in topics.values())
               for k in ("published", "delivered") + ACK_FIGURES},
            "topics": topics,
        }


ACK_FIGURES = ("acked", "nacked", "redelivered", "dead_lettered", "timeouts", "pending")


def topic_stats(s: dict) -> dict:
    """The public figures of one topic from a Ring.stats() dict."""
    groups = {}
    for g in s["groups_detail"]:
        key = g["name"] if not g["anonymous"] else f"anon-{g['index']}"
        groups[key] = {"members": g["members"], "anonymous": g["anonymous"], "ack": g["ack"],
                       "position": g["position"], "lag": g["lag"],
                       "delivered": g["delivered"], "delivered_bytes": g["delivered_bytes"],
                       **{k: g[k] for k in ACK_FIGURES}}
    return {
        "published": s["published"],
        "published_bytes": s["published_bytes"],
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
        "groups": groups,
    }


class Subscription:
    """Receives a topic's messages for one member of a group.

    Iterate it, or call get()/get_many(). It ends (iteration stops) when
    unsubscribed or when the broker closes. Not for concurrent use by several
    threads: give each thread its own subscription.
    """

    def __init__(self, client: Client, topic: str, group: str | None, reader: _core.Reader,
                 group_index: int, group_gen: int):
        self.topic = topic
        self.group = group
        self._client = client
        self._reader = reader
        self._ring = reader.ring
        self._group = group_index
        self._group_gen = group_gen
        self._ack1 = self._ring.acker(group_index, group_gen)

    # An anonymous subscription iterates in big batches; a group member in
    # small ones, so that its peers share the work.
    _iter_batch = READ_BATCH
    _replay = None  # (seq, ts_ns, payload) from disk, before the ring (start= replay)

    def _replayed(self, n: int) -> list:
        """Up to n records replayed from disk; [] once they are all delivered."""
        out = []
        for rec in self._replay:
            out.append(rec)
            if len(out) >= n:
                break
        if not out:
            self._replay = None
        return out

    def _closed(self):
        raise SubscriptionClosed(f"subscription to {self.topic!r} is closed")

    def _many(self, max_count) -> int:
        """max_count checked, and capped at what one read returns."""
        if not isinstance(max_count, int) or max_count < 1:
            raise ValueError(f"max_count must be an int >= 1, not {max_count!r}")
        return min(max_count, READ_BATCH)

    def get(self, timeout: float | None = None) -> bytes:
        """The next payload; waits up to timeout (None: for ever), then raises pymq.Timeout."""
        if self._replay is not None:
            old = self._replayed(1)
            if old:
                return old[0][2]
        r = self._reader or self._closed()
        timeout_ns = -1 if timeout is None else _timeout_ns(timeout)
        p = r.get1(timeout_ns)
        return p if type(p) is bytes else r.finish(p, timeout_ns, r.get1)

    def get_many(self, max_count: int, timeout: float | None = None) -> list[bytes]:
        """1..max_count payloads in one native call; waits like get()."""
        if self._replay is not None and isinstance(max_count, int) and max_count >= 1:
            old = self._replayed(max_count)
            if old:
                return [p for _, _, p in old]
        r, n = self._reader or self._closed(), self._many(max_count)
        timeout_ns = -1 if timeout is None else _timeout_ns(timeout)
        got = r.get_payloads(n, timeout_ns)
        return got if type(got) is list else r.finish(got, timeout_ns, partial(r.get_payloads, n))

    def __iter__(self):
        batch_size = self._iter_batch if self.group is None else 16
        while True:
            try:
                batch = self.get_many(batch_size)
            except (SubscriptionClosed, BrokerClosed):
                return
            yield from batch

    def _leave(self) -> None:
        r, self._reader = self._reader, None
        if r is not None:
            try:
                r.ring.leave(r.member, r.gen)
            except MQError:
                pass  # a corrupt or closed segment: nothing left to leave

    def unsubscribe(self) -> None:
        """Leave the group (an anonymous group goes with it). Idempotent."""
        client = self._client
        with client._lock:
            client._res.subs.discard(self)
        self._leave()

    close = unsubscribe

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unsubscribe()


class AckSubscription(Subscription):
    """An at-least-once subscription: get()/get_many()/iteration give
    pymq.Message objects to ack() (or nack()); ack_many() acks a batch in one
    native call."""

    _iter_batch = 64

    def get(self, timeout: float | None = None) -> Message:
        """The next message; waits up to timeout (None: for ever), then raises pymq.Timeout."""
        if self._replay is not None:
            old = self._replayed(1)
            if old:
                return self._from_disk(*old[0])
        r = self._reader or self._closed()
        timeout_ns = -1 if timeout is None else _timeout_ns(timeout)
        m = r.get1_message(timeout_ns, self, self.topic)
        return m if type(m) is Message else self._finish(m, timeout_ns, r.get1_message)

    def get_many(self, max_count: int, timeout: float | None = None) -> list[Message]:
        """1..max_count messages in one native call (redeliveries first)."""
        if self._replay is not None and isinstance(max_count, int) and max_count >= 1:
            old = self._replayed(max_count)
            if old:
                return [self._from_disk(*rec) for rec in old]
        r, n = self._reader or self._closed(), self._many(max_count)
        timeout_ns = -1 if timeout is None else _timeout_ns(timeout)
        got = r.get_messages(n, timeout_ns, self, self.topic)
        return got if type(got) is list else self._finish(got, timeout_ns, partial(r.get_messages, n))

    def _finish(self, rc, timeout_ns: int, read):
        """get's and get_many's slow path (Ring.finish): read(time left, self,
        topic) again after a signal, or raise for rc. Apart from them, so that
        their hot path makes no closure cells."""
        return self._ring.finish(rc, timeout_ns, lambda left: read(left, self, self.topic))

    def _from_disk(self, seq, ts, payload) -> Message:
        """A message replayed from disk: history, so its ack is a no-op."""
        return Message(payload, topic=self.topic, seq=seq, publish_time=ts / 1e9)

    def _settle_many(self, how: str, msgs) -> int:
        """One native call per subscription the messages came from."""
        by_sub = {}
        for m in msgs:
            if m._sub is not None and not m._settled:
                m._settle()
                by_sub.setdefault(m._sub, []).append(m)
        return sum(sub._ring.settle(how, sub._group, sub._group_gen,
                                    array("I", [m._slot for m in part]),
                                    array("Q", [m.seq for m in part]),
                                    array("I", [m.delivery_attempt for m in part])
                                    if how == "nack" else None)
                   for sub, part in by_sub.items())

    def ack_many(self, msgs) -> int:
        """Ack many messages in one native call (per subscription they came
        from); returns how many were still waiting for their ack."""
        if type(msgs) is list:  # the usual case, all this subscription's: done in C
            n = self._ring.ack_messages(self._group, self._group_gen, self, msgs)
            if n is not None:
                return n
        return self._settle_many("ack", msgs)

    def nack_many(self, msgs) -> int:
        """Redeliver many messages now (dead-letter those out of retries)."""
        return self._settle_many("nack", msgs)


def connect(name: str = "pymq") -> Client:
    """Attach to the running broker `name`; raises pymq.BrokerNotFound if none."""
    from .config import check_broker_name
    return Client(check_broker_name(name))
