"""Transports for benchmarks/compare.py: pymq and five Python IPC peers behind
one small interface, so that compare.py runs the same measured loops on each.

Each transport is used the way its documentation shows, in its fastest
configuration that still hands the receiver a `bytes` object per message:

  pymq         Client.publish / Subscription.get (an 8 MiB ring: the default);
               batched: publish_many / get_many(64)
  mp.Queue     multiprocessing.Queue (spawn context), put / get (pickles each
               object: no bytes-only API); batched: put / get of a list of 64
  mp.Pipe      multiprocessing.Pipe(duplex=False), send_bytes / recv_bytes (no
               pickling); batched: send / recv of a list of 64 (pickled); with
               several producers, one pipe each and multiprocessing.connection.wait
               (the documented way; several writers on one Connection is not)
  faster-fifo  faster_fifo.Queue(8 MiB, loads=bytes, dumps=bytes): its custom
               serializer hooks, so no pickling; put / get; batched: put_many /
               get_many(max_messages_to_get=64)
  pyzmq        PUSH -> PULL over ipc:// (a socket in a fresh temporary folder),
               send / recv; batched: send_multipart / recv_multipart of 64 frames
  posix_ipc    posix_ipc.MessageQueue (mq_send / mq_receive), max_messages=10
               (this kernel's fs.mqueue.msg_max, the Linux default; more needs a
               sysctl), max_message_size = the payload size; no batched API: n/a

A transport is set up in the parent (make_channel: a picklable handle plus a
cleanup), then opened in each spawned child: open_sender(handle, k) for
producer k, open_receiver(handle) for the consumer. The measured loops in
compare.py call the bound methods these return directly, so that no adapter
frame sits on the hot path of any transport (pymq's publish gets its topic as
first argument, exactly as a user calls it).
"""

from __future__ import annotations

import functools
import itertools
import os
import queue as _queue
import shutil
import tempfile

# pymq's ring per topic (its default, BrokerConfig.ring_bytes) and faster-fifo's
# buffer, the same for both. A buffer that fits the last-level cache (32 MiB on
# the machine of docs/benchmarks.md) keeps the data the producer writes and the
# consumer reads in cache; 64 MiB (used before 2026-11-27 11:00) sent every lap
# of the buffer through DRAM: 4 KiB single-call runs went from 0.78 M to
# 1.3-1.6 M msg/s with the smaller ring (the Versions section says more).
RING_BYTES = 8 * 1024 * 1024
RECV_TIMEOUT = 30.0                  # a consumer that waits longer than this fails the run
MQ_MAX_MESSAGES = 10                 # posix mqueue depth: fs.mqueue.msg_max (Linux default)
ZMQ_HWM = 10_000                     # zmq high-water marks, in messages (default 1000)

PEERS = ["mp.Queue", "mp.Pipe", "faster-fifo", "pyzmq", "posix_ipc"]
ALL = ["pymq"] + PEERS
BATCHED = {"pymq", "mp.Queue", "mp.Pipe", "faster-fifo", "pyzmq"}   # posix_ipc: n/a
DISTRIBUTION = {"pymq": "pymq-shm", "mp.Queue": None, "mp.Pipe": None,
                "faster-fifo": "faster-fifo", "pyzmq": "pyzmq", "posix_ipc": "posix_ipc"}

_serial = itertools.count()


def missing(impl: str) -> str | None:
    """Why this transport cannot run here (its package is not installed), or None."""
    mod = {"faster-fifo": "faster_fifo", "pyzmq": "zmq", "posix_ipc": "posix_ipc"}.get(impl)
    if mod is None:
        return None
    try:
        __import__(mod)
    except ImportError as e:
        return f"not installed ({e})"
    return None


def versions() -> dict:
    """Version of every transport's package (and of libzmq)."""
    from importlib import metadata
    out = {}
    for impl, dist in DISTRIBUTION.items():
        if dist is None:
            continue
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import zmq
        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    return out


# -- channels (made in the parent) -------------------------------------------------


class Channel:
    """What the parent made for one run: `handle` goes to the children (pickled
    by spawn); close() removes everything the run created."""

    def __init__(self, impl: str, handle, cleanup=()):
        self.impl = impl
        self.handle = handle
        self._cleanup = list(cleanup)

    def close(self) -> list[str]:
        """Run every cleanup; return what could not be removed."""
        left = []
        for fn in reversed(self._cleanup):
            try:
                more = fn()
                if more:
                    left.extend(more)
            except Exception as e:  # noqa: BLE001 - report, do not hide
                left.append(f"{self.impl} cleanup: {e!r}")
        self._cleanup.clear()
        return left


def make_channel(ctx, impl: str, producers: int, size: int, lanes: int = 1,
                 persist: bool = False) -> Channel:
    """A channel for `producers` producer processes and one consumer.

    lanes=2 makes two independent channels (ping and pong) for ping-pong; then
    handle is a tuple of two handles and producers must be 1. persist (pymq
    only): persistence on, fsync "interval" (1 s), into a new temp folder that
    close() removes (ch.persistence_dir)."""
    if lanes == 2 and impl == "pymq":  # one broker, two topics
        ch = make_channel(ctx, impl, 1, size)
        name = ch.handle["name"]
        ch.handle = ({"name": name, "topic": "ping"}, {"name": name, "topic": "pong"})
        return ch
    if lanes == 2:
        a = make_channel(ctx, impl, 1, size)
        b = make_channel(ctx, impl, 1, size)
        ch = Channel(impl, (a.handle, b.handle))
        ch._cleanup = [a.close, b.close]
        return ch
    if impl == "pymq":
        import pymq
        import harness
        name = f"cmp-{os.getpid()}-{next(_serial)}"
        pdir = tempfile.mkdtemp(prefix="pymq-cmp-persist-") if persist else None
        cfg = pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES)
        if persist:
            cfg = pymq.BrokerConfig(name=name, ring_bytes=RING_BYTES, persistence_enabled=True,
                                    persistence_dir=pdir, persistence_fsync="interval",
                                    persistence_fsync_interval=1.0,
                                    persistence_retention_bytes=1 << 40)  # keep every line to count
        broker = pymq.Broker(cfg)

        def close_broker():
            broker.close()
            if pdir:
                shutil.rmtree(pdir)
            return [f"/dev/shm/{f}" for f in harness.leftovers(name)]
        ch = Channel(impl, {"name": name, "topic": "t"}, [close_broker])
        ch.broker, ch.persistence_dir = broker, pdir
        return ch
    if impl == "mp.Queue":
        return Channel(impl, ctx.Queue())
    if impl == "mp.Pipe":
        pipes = [ctx.Pipe(duplex=False) for _ in range(producers)]
        ch = Channel(impl, {"recv": [r for r, _ in pipes], "send": [s for _, s in pipes]})

        def close_pipes():
            for r, s in pipes:
                r.close()
                s.close()
        ch._cleanup.append(close_pipes)
        return ch
    if impl == "faster-fifo":
        import faster_fifo
        return Channel(impl, faster_fifo.Queue(RING_BYTES, loads=bytes, dumps=bytes))
    if impl == "pyzmq":
        folder = tempfile.mkdtemp(prefix="pymq-cmp-")
        path = os.path.join(folder, "pull.sock")

        def remove_folder():
            shutil.rmtree(folder, ignore_errors=True)
            return [folder] if os.path.exists(folder) else []
        return Channel(impl, {"endpoint": f"ipc://{path}"}, [remove_folder])
    if impl == "posix_ipc":
        import posix_ipc
        name = f"/pymq-cmp-{os.getpid()}-{next(_serial)}"
        mq = posix_ipc.MessageQueue(name, posix_ipc.O_CREX, max_messages=MQ_MAX_MESSAGES,
                                    max_message_size=size)

        def unlink():
            mq.close()
            mq.unlink()
            try:  # gone?
                posix_ipc.MessageQueue(name).close()
            except posix_ipc.ExistentialError:
                return []
            return [f"mqueue {name}"]
        return Channel(impl, {"name": name}, [unlink])
    raise ValueError(f"unknown transport {impl!r}")


# -- the ends (opened in the children) ---------------------------------------------


class Sender:
    """Producer side. send(p) / send_many(list), or, when `topic` is not None
    (pymq), send(topic, p) / send_many(topic, list)."""

    topic = None
    send = None
    send_many = None

    def close(self) -> None:
        pass


class Receiver:
    """Consumer side. recv() -> bytes (or (bytes, priority) when recv_tuple:
    posix_ipc), recv_many() -> list of bytes (up to 64), extra() -> how many
    messages are still there (must be 0 after a run)."""

    recv_tuple = False
    recv = None
    recv_many = None

    def extra(self) -> int:
        return 0

    def close(self) -> None:
        pass


def open_sender(impl: str, handle, k: int = 0, batch: int = 64) -> Sender:
    s = Sender()
    if impl == "pymq":
        import pymq
        client = pymq.connect(handle["name"])
        topic = handle["topic"]
        # stats() maps every existing topic (the consumer created it), so the
        # first publish inside the measurement does not map it.
        if topic not in client.stats()["topics"]:
            client.close()
            raise RuntimeError(f"topic {topic!r} does not exist: the consumer creates it")
        s.topic, s.send, s.send_many = topic, client.publish, client.publish_many
        s.close = client.close
        s.client = client
    elif impl == "mp.Queue":
        q = handle
        s.send = s.send_many = q.put

        def close():
            q.close()
            q.join_thread()   # the feeder thread has written everything
        s.close = close
    elif impl == "mp.Pipe":
        conn = handle["send"][k]
        for j, other in enumerate(handle["send"]):
            if j != k:
                other.close()
        for r in handle["recv"]:
            r.close()
        s.send, s.send_many, s.close = conn.send_bytes, conn.send, conn.close
    elif impl == "faster-fifo":
        q = handle
        s.send, s.send_many = q.put, q.put_many   # block, for at most 10 s (its default)
    elif impl == "pyzmq":
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, ZMQ_HWM)
        sock.setsockopt(zmq.SNDTIMEO, int(RECV_TIMEOUT * 1000))
        sock.connect(handle["endpoint"])
        s.send, s.send_many = sock.send, sock.send_multipart

        def close():
            sock.close(linger=int(RECV_TIMEOUT * 1000))
            zctx.term()
        s.close = close
    elif impl == "posix_ipc":
        import posix_ipc
        mq = posix_ipc.MessageQueue(handle["name"])
        s.send, s.close = mq.send, mq.close
    else:
        raise ValueError(impl)
    return s


def open_receiver(impl: str, handle, batch: int = 64, group: str | None = None,
                  ack: bool = False) -> Receiver:
    """The consumer's end; made before the producers start (pymq subscribes
    "latest", zmq binds), so nothing they send is missed."""
    r = Receiver()
    if impl == "pymq":
        import pymq
        client = pymq.connect(handle["name"])
        topic = handle["topic"]
        sub = (client.subscribe_with_ack(topic, group) if ack else client.subscribe(topic, group))
        r.sub = sub
        r.recv = sub.get                                   # timeout None: waits for ever
        r.recv_many = functools.partial(sub.get_many, batch)

        def extra():
            try:
                return len(sub.get_many(1024, timeout=0))
            except pymq.Timeout:
                return 0

        def close():
            sub.unsubscribe()
            client.close()
        r.extra, r.close = extra, close
        r.client = client
    elif impl == "mp.Queue":
        q = handle
        r.recv = r.recv_many = q.get

        def extra():
            try:
                q.get(timeout=0.05)
            except _queue.Empty:
                return 0
            return 1
        r.extra = extra
    elif impl == "mp.Pipe":
        conns = handle["recv"]
        for s in handle["send"]:
            s.close()
        if len(conns) == 1:
            c = conns[0]
            r.recv, r.recv_many = c.recv_bytes, c.recv
            r.extra = lambda: int(c.poll(0))
        else:
            from multiprocessing.connection import wait
            from collections import deque
            pending = deque()
            popleft, append = pending.popleft, pending.append

            def recv():
                while not pending:
                    for c in wait(conns):
                        append(c.recv_bytes())
                return popleft()

            def recv_many():
                out = []
                while not out:
                    for c in wait(conns):
                        out.extend(c.recv())
                return out
            r.recv, r.recv_many = recv, recv_many
            r.extra = lambda: sum(int(c.poll(0)) for c in conns)

        def close():
            for c in conns:
                c.close()
        r.close = close
    elif impl == "faster-fifo":
        q = handle
        r.recv = q.get                             # block, for at most 10 s (its default)
        r.recv_many = functools.partial(q.get_many, True, RECV_TIMEOUT, batch)

        def extra():
            try:
                return len(q.get_many_nowait())
            except _queue.Empty:
                return 0
        r.extra = extra
    elif impl == "pyzmq":
        import zmq
        zctx = zmq.Context()
        sock = zctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, ZMQ_HWM)
        sock.setsockopt(zmq.RCVTIMEO, int(RECV_TIMEOUT * 1000))
        sock.bind(handle["endpoint"])
        r.recv, r.recv_many = sock.recv, sock.recv_multipart

        def extra():
            n = 0
            while True:
                try:
                    sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return n
                n += 1

        def close():
            sock.close(linger=0)
            zctx.term()
        r.extra, r.close = extra, close
    elif impl == "posix_ipc":
        import posix_ipc
        mq = posix_ipc.MessageQueue(handle["name"])
        r.recv_tuple = True
        r.recv = mq.receive                        # blocks: the parent's budget ends a stuck run

        def extra():
            return mq.current_messages
        r.extra, r.close = extra, mq.close
    else:
        raise ValueError(impl)
    return r
