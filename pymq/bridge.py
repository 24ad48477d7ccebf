"""pymq bridge: a node's broker linked to NATS JetStream (nats-py, the `nats`
extra), so that streamers and collectors on different nodes share topics.

  --out T   local topic T, read through the durable local ack group "~bridge",
            published to subject <prefix>.T in the stream <PREFIX> (made if
            missing); a local message is acked only once JetStream acked it
  --in T    subject <prefix>.T, read through a durable pull consumer named
            after the node (every node gets every message), published into
            local topic T; a JetStream message is acked only once it is in the
            local ring

Every message out carries Nats-Msg-Id "<node>/<epoch>/<local seq>": its origin
node and seq (epoch: 0 with persistence, whose seqs go on across restarts, else
when the broker was made), and JetStream's duplicate window drops a publish sent
again (after a lost ack, a reconnect, a restart). What a node's --in gets from its own node is
dropped (no echo), so is an id it has delivered lately, and the local seqs of
what came in are noted (in memory, and in /dev/shm/pymq.<name>..bridge-<node>.echo
for a restart) so that --out never sends them back out. Publishes out are
pipelined (publish_async, at most --window unacked); acks in are explicit, one
per message (an ack of a batch's last, AckAll, would also ack what a killed
bridge had fetched and JetStream has yet to deliver again). Failures (a publish not acked in time, NATS gone) put
the messages back to be sent again, in seq order, until JetStream has them;
nats-py reconnects by itself. SIGTERM or SIGINT stops fetching, waits for what
is in flight, acks it, and exits 0.

Figures (forwarded, in flight, lag, errors, reconnects) go to
/dev/shm/pymq.<name>..bridge-<node>.json every second, where Client.stats()
(and so /stats, /metrics and the dashboard) read them.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import os
import re
import signal
import socket
import time
from collections import deque
from typing import Any

from . import segments
from .client import Client, connect
from ._core import MAX_RETRIES, PENDING_CAP
from .config import check_broker_name, check_topic, default_name
from .errors import BrokerClosed, Full, SubscriptionClosed, Timeout

log = logging.getLogger("pymq.bridge")

GROUP = "~bridge"                 # the local ack group --out reads through
GROUP_ACK_TIMEOUT_NS = 3600 * 10**9  # the bridge sends again itself: no local redelivery
GROUP_RETRIES = MAX_RETRIES        # never dead-letter what NATS did not take
MSG_ID = "Nats-Msg-Id"
FIGURES_EVERY = 1.0               # seconds between writes of the figures file
RECENT = 100_000                  # ids an --in remembers to drop exact duplicates


NODE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_node(node: str) -> str:
    if not NODE_RE.fullmatch(node):
        raise ValueError(f"invalid node name {node!r}: 1 to 64 characters of A-Z a-z 0-9 _ -")
    return node


def default_node() -> str:
    """$PYMQ_NODE, else the host name made a valid node name."""
    node = os.environ.get("PYMQ_NODE") or re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())
    return node[:64] or "node"


class Echo:
    """The local seqs, per topic, that --in put into the ring and --out must
    pass over (only topics bridged both ways need it). Kept as ranges in seq
    order (a batch in is one publish_many: consecutive seqs), in memory and in
    a file in /dev/shm (it lives as long as the broker's shared memory, whose
    seqs it names), which is appended to and rewritten once mostly stale."""

    def __init__(self, path: str, topics: set[str]):
        self.path, self.topics = path, topics
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        try:
            with open(path, encoding="ascii") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[0] in topics and parts[1].isdigit() and \
                            parts[2].isdigit() and int(parts[1]) <= int(parts[2]):
                        self._keep(parts[0], int(parts[1]), int(parts[2]))
        except (FileNotFoundError, UnicodeDecodeError):
            pass
        self.file = open(path, "a", encoding="ascii")
        os.fchmod(self.file.fileno(), 0o600)  # whatever the umask
        self.lines = sum(map(len, self.ranges.values()))

    def _keep(self, topic: str, first: int, last: int) -> None:
        r = self.ranges.setdefault(topic, [])
        if r and first <= r[-1][1]:
            return  # not after the last: read back from an old line
        if r and r[-1][1] + 1 == first:
            r[-1] = (r[-1][0], last)
        else:
            r.append((first, last))

    def add(self, topic: str, first: int, last: int) -> None:
        if topic not in self.topics:
            return  # not sent out: nothing to pass over
        self._keep(topic, first, last)
        self.file.write(f"{topic} {first} {last}\n")
        self.file.flush()  # a process killed now keeps it: the page cache has it
        self.lines += 1

    def has(self, topic: str, seq: int) -> bool:
        r = self.ranges.get(topic)
        if not r:
            return False
        i = bisect.bisect_right(r, (seq, 1 << 64)) - 1
        return i >= 0 and r[i][1] >= seq

    def forget_below(self, topic: str, seq: int) -> None:
        """Ranges wholly below seq (--out has passed them) go; the file is
        rewritten once it holds four times what is kept."""
        r = self.ranges.get(topic, [])
        k = 0
        while k < len(r) and r[k][1] < seq:
            k += 1
        del r[:k]
        kept = sum(map(len, self.ranges.values()))
        if self.lines > 4 * kept + 1024:
            tmp = self.path + ".new"
            with open(tmp, "w", encoding="ascii") as f:
                os.fchmod(f.fileno(), 0o600)
                for t, rs in self.ranges.items():
                    f.writelines(f"{t} {a} {b}\n" for a, b in rs)
            os.replace(tmp, self.path)
            self.file.close()
            self.file = open(self.path, "a", encoding="ascii")
            self.lines = kept

    def close(self) -> None:
        self.file.close()


class Bridge:
    """One bridge process: its NATS connection, its local client, its tasks."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.node = args.node
        self.prefix = args.prefix
        self.stream = args.stream or args.prefix.upper().replace(".", "_")
        # a local message is in flight from its read to its ack: the group holds that many
        self.window = min(args.window, PENDING_CAP)
        self.stopping = asyncio.Event()
        self.started = time.time()
        self.reconnects = self.disconnects = 0
        self.connected = False
        self.last_error: str | None = None
        self.out: dict[str, dict[str, Any]] = {}
        self.into: dict[str, dict[str, Any]] = {}
        self.client: Client | None = None
        self.echo: Echo | None = None

    # -- figures -------------------------------------------------------------------------

    def figures(self) -> dict[str, Any]:
        token = self.client._res.token if self.client is not None else None
        return {"node": self.node, "pid": os.getpid(), "started": self.started,
                "updated": time.time(), "token": token.value if token is not None else 0,
                "nats": {"servers": self.args.nats, "connected": self.connected,
                         "reconnects": self.reconnects, "disconnects": self.disconnects,
                         "stream": self.stream, "prefix": self.prefix},
                "out": self.out, "in": self.into, "last_error": self.last_error}

    def write_figures(self) -> None:
        path = segments.bridge_figures_path(self.args.name, self.node)
        tmp = path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, json.dumps(self.figures(), separators=(",", ":")).encode())
        finally:
            os.close(fd)
        os.replace(tmp, path)

    async def keep_figures(self) -> None:
        while not self.stopping.is_set():
            try:
                self.write_figures()
            except OSError as e:
                self.error(f"cannot write the figures: {e.strerror}")
            try:
                await asyncio.wait_for(self.stopping.wait(), FIGURES_EVERY)
            except (asyncio.TimeoutError, TimeoutError):
                pass

    def error(self, text: str) -> None:
        if text != self.last_error:
            log.error("bridge %s: %s", self.node, text)
        self.last_error = text

    # -- NATS ----------------------------------------------------------------------------

    async def connect(self) -> Any:
        import nats

        async def disconnected() -> None:
            self.connected = False
            self.disconnects += 1
            log.warning("bridge %s: disconnected from NATS", self.node)

        async def reconnected() -> None:
            self.connected = True
            self.reconnects += 1
            log.warning("bridge %s: reconnected to NATS", self.node)

        async def error_cb(e: Exception) -> None:
            self.error(f"NATS: {type(e).__name__}: {e}")

        nc = await nats.connect(servers=self.args.nats, name=f"pymq-bridge-{self.node}",
                                max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                                allow_reconnect=True, disconnected_cb=disconnected,
                                reconnected_cb=reconnected, error_cb=error_cb,
                                connect_timeout=5, user_credentials=self.args.creds)
        self.connected = True
        return nc

    async def ensure_stream(self, js: Any) -> None:
        """The stream of <prefix>.>, made if missing (file storage)."""
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError
        try:
            await js.stream_info(self.stream)
            return
        except NotFoundError:
            pass
        cfg = StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"],
                           max_age=self.args.stream_max_age or None,
                           duplicate_window=self.args.duplicate_window,
                           num_replicas=self.args.stream_replicas)
        try:
            await js.add_stream(cfg)
        except Exception:  # noqa: BLE001 - made by another node meanwhile: fine if it is there
            await js.stream_info(self.stream)

    # -- out: local topic -> NATS ---------------------------------------------------------

    async def forward_out(self, js: Any, topic: str) -> None:
        assert self.client is not None and self.echo is not None
        fig = self.out[topic] = {"forwarded": 0, "in_flight": 0, "resent": 0, "errors": 0,
                                 "echo_skipped": 0}
        sub = self.client._system_subscription(topic, GROUP, GROUP_ACK_TIMEOUT_NS, GROUP_RETRIES)
        subject = f"{self.prefix}.{topic}"
        # An id names a message for as long as its seq does: with persistence seqs go on
        # across restarts (a message sent again keeps its id); without, a new broker
        # counts from 1 again, so its ids carry when it was made.
        cfg, ns = self.client.config, self.client._res.ns
        epoch = 0 if cfg.persistence_enabled or ns is None else ns.hdr.created_ns
        origin = f"{self.node}/{epoch:x}/"
        window: deque[tuple[Any, Any, float]] = deque()  # (message, PubAck future, sent), in order
        again: list[Any] = []  # messages to send again (failures), in seq order
        acked: list[Any] = []
        ack_timeout = self.args.publish_timeout

        async def send(m: Any) -> None:
            try:
                fut = await js.publish_async(subject, m.payload,
                                             headers={MSG_ID: f"{origin}{m.seq}"})
            except Exception as e:  # noqa: BLE001 - NATS away (reconnecting): later
                fig["errors"] += 1
                self.error(f"topic {topic!r}: publish: {type(e).__name__}: {e}")
                again.append(m)
                return
            window.append((m, fut, time.monotonic()))

        async def settle(block: bool) -> None:
            """Settle the window's head, what is done of it (block: waiting
            for its first, so that one more may be sent): acks in order of
            sending; a failure, or no ack in time (and what follows it), goes
            back to be sent again."""
            while window:
                m, fut, sent = window[0]
                if not fut.done():
                    if not block and time.monotonic() - sent < ack_timeout:
                        break
                    block = False  # one wait: then what is done, no more
                    try:
                        await asyncio.wait_for(asyncio.shield(fut), max(
                            0.0, ack_timeout - (time.monotonic() - sent)))
                    except (asyncio.TimeoutError, TimeoutError):
                        pass
                    except Exception:  # noqa: BLE001 - the future's own failure, seen below
                        pass
                    if not fut.done():  # no ack in time: NATS is gone, or slow
                        self.error(f"topic {topic!r}: no ack from JetStream within "
                                   f"{ack_timeout:g} s; sending {len(window)} again")
                        fig["errors"] += 1
                        for m2, f2, _ in window:
                            f2.cancel()
                            again.append(m2)
                        window.clear()
                        break
                window.popleft()
                if fut.cancelled() or fut.exception() is not None:
                    if not fut.cancelled():
                        self.error(f"topic {topic!r}: {type(fut.exception()).__name__}: "
                                   f"{fut.exception()}")
                    fig["errors"] += 1
                    again.append(m)
                else:
                    acked.append(m)
                    fig["forwarded"] += 1
            if acked:
                sub.ack_many(acked)
                acked.clear()
            fig["in_flight"] = len(window)

        try:
            while True:
                await settle(block=False)
                if again:  # failures first, in order, with their ids: duplicates are dropped
                    while window:
                        await settle(block=True)
                    retry = sorted(again, key=lambda m: m.seq)
                    again.clear()
                    fig["resent"] += len(retry)
                    await asyncio.sleep(0.1)  # NATS may be reconnecting
                    for m in retry:
                        await send(m)
                    continue
                if self.stopping.is_set():
                    break
                # What is in flight holds the ~bridge group's deliveries: with all of them
                # out, a read would find nothing until the head's ack (and sleep meanwhile).
                room = self.window - len(window) - len(again) - len(acked)
                if room <= 0:
                    await settle(block=True)
                    continue
                try:
                    msgs = await sub.aget_many(min(self.args.batch, room),
                                               timeout=0.05 if window else 0.2)
                except Timeout:
                    continue
                for m in msgs:
                    if self.echo.has(topic, m.seq or 0):  # came in from NATS: not sent back
                        fig["echo_skipped"] += 1
                        acked.append(m)
                    else:
                        await send(m)
                if msgs:  # below what is in hand, nothing comes again in this run
                    low = min([msgs[0].seq or 0] + [w[0].seq or 0 for w in list(window)[:1]])
                    self.echo.forget_below(topic, low)
            while window:  # stopping: what is in flight is settled, not dropped
                await settle(block=True)
                if again:
                    retry = sorted(again, key=lambda m: m.seq)
                    again.clear()
                    for m in retry:
                        await send(m)
        except (BrokerClosed, SubscriptionClosed):
            self.stopping.set()

    # -- in: NATS -> local topic ---------------------------------------------------------

    async def forward_in(self, js: Any, topic: str) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        assert self.client is not None and self.echo is not None
        fig = self.into[topic] = {"forwarded": 0, "own_dropped": 0, "duplicates": 0,
                                  "errors": 0, "lag": 0}
        subject = f"{self.prefix}.{topic}"
        durable = f"pymq-{self.node}-{re.sub(r'[^A-Za-z0-9_-]', '_', topic)}"[:200]
        config = ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=self.args.ack_wait,
            max_ack_pending=max(self.args.batch * 4, 1024), filter_subject=subject,
            deliver_policy=DeliverPolicy.NEW if self.args.in_start == "new" else DeliverPolicy.ALL)
        psub = await js.pull_subscribe(subject, durable=durable, stream=self.stream, config=config)
        recent: dict[str, None] = {}  # ids delivered lately (insertion order: oldest first)
        last_info = 0.0
        while not self.stopping.is_set():
            try:
                msgs = await psub.fetch(self.args.batch, timeout=0.5)
            except (NatsTimeout, asyncio.TimeoutError, TimeoutError):
                msgs = []
            except Exception as e:  # noqa: BLE001 - NATS away: try again
                fig["errors"] += 1
                self.error(f"topic {topic!r}: fetch: {type(e).__name__}: {e}")
                await asyncio.sleep(0.25)
                continue
            if time.monotonic() - last_info > 1.0:
                try:
                    fig["lag"] = (await psub.consumer_info()).num_pending
                except Exception:  # noqa: BLE001 - a figure: next time
                    pass
                last_info = time.monotonic()
            if not msgs:
                continue
            keep = []
            for m in msgs:
                mid = (m.headers or {}).get(MSG_ID, "")
                origin = mid.split("/", 1)[0]
                if origin == self.node:
                    fig["own_dropped"] += 1
                elif mid and mid in recent:
                    fig["duplicates"] += 1
                else:
                    keep.append(m)
                    if mid:
                        recent[mid] = None
            while len(recent) > RECENT:
                del recent[next(iter(recent))]
            if keep:
                while True:
                    try:
                        last = await self.client.apublish_many(topic, [m.data for m in keep],
                                                               timeout=1.0)
                        break
                    except Full:
                        if self.stopping.is_set():
                            return  # not acked: JetStream delivers them again
                self.echo.add(topic, last - len(keep) + 1, last)
                fig["forwarded"] += len(keep)
            try:  # each: an ack of the last would also ack what a killed bridge fetched
                for m in msgs:  # before, not acked, which JetStream must deliver again
                    await m.ack()
            except Exception as e:  # noqa: BLE001 - not acked: delivered again, dropped as seen
                fig["errors"] += 1
                self.error(f"topic {topic!r}: ack: {type(e).__name__}: {e}")

    # -- the whole ---------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self.client = connect(self.args.name, wait=self.args.wait)
        self.client._owner_token()  # its liveness token: stats() says whether it lives
        self.echo = Echo(segments.bridge_echo_path(self.args.name, self.node),
                         set(self.args.outs) & set(self.args.ins))
        nc = await self.connect()
        figures = asyncio.ensure_future(self.keep_figures())
        try:
            js = nc.jetstream(publish_async_max_pending=self.window)
            await self.ensure_stream(js)
            log.info("bridge %s: broker %r <-> NATS %s (stream %s): out %s, in %s", self.node,
                     self.args.name, ",".join(self.args.nats), self.stream,
                     self.args.outs or "-", self.args.ins or "-")
            tasks = [asyncio.ensure_future(self.forward_out(js, t)) for t in self.args.outs]
            tasks += [asyncio.ensure_future(self.forward_in(js, t)) for t in self.args.ins]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    self.stopping.set()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise t.exception()  # type: ignore[misc]
        finally:
            self.stopping.set()
            await figures
            try:  # what was in flight is settled (acked both ways) by now: close, not drain
                await nc.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self.connected = False
            self.write_figures()
            self.echo.close()
            self.client.close()
        log.info("bridge %s: stopped", self.node)
        return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cliutil import positive_float, positive_int
    p.add_argument("--nats", action="append", required=True, metavar="URL",
                   help="a NATS server (nats://host:4222); repeat for a cluster")
    p.add_argument("--creds", default=None, metavar="FILE",
                   help="NATS credentials file (a user's JWT and seed); a user and password "
                        "may also be given in the URL, and tls:// URLs are verified against "
                        "the system's CAs")
    p.add_argument("--out", dest="outs", action="append", default=[], type=_topic,
                   metavar="TOPIC", help="forward local TOPIC to <prefix>.TOPIC (repeatable)")
    p.add_argument("--in", dest="ins", action="append", default=[], type=_topic,
                   metavar="TOPIC", help="deliver <prefix>.TOPIC into local TOPIC (repeatable)")
    p.add_argument("--prefix", default="pymq", type=_prefix,
                   help="subject prefix (default: pymq)")
    p.add_argument("--stream", default=None,
                   help="JetStream stream name (default: the prefix in capitals)")
    p.add_argument("--node", default=default_node(), type=_node,
                   help="this node's name (default: $PYMQ_NODE, else the host name)")
    p.add_argument("--batch", type=positive_int, default=256,
                   help="messages read or fetched at a time (default: 256)")
    p.add_argument("--window", type=positive_int, default=PENDING_CAP,
                   help=f"publishes to JetStream in flight at most, up to the {PENDING_CAP} "
                        f"deliveries the ~bridge group has in flight (default: {PENDING_CAP})")
    p.add_argument("--publish-timeout", type=positive_float, default=5.0, metavar="SECONDS",
                   help="a publish not acked by JetStream in this time is sent again "
                        "(default: 5)")
    p.add_argument("--ack-wait", type=positive_float, default=30.0, metavar="SECONDS",
                   help="the pull consumers' ack wait: what a killed bridge fetched and "
                        "did not ack comes again after this (default: 30)")
    p.add_argument("--in-start", choices=("all", "new"), default="all",
                   help="where a node's consumer starts when first made: everything the "
                        "stream holds (default) or what comes next")
    p.add_argument("--stream-max-age", type=positive_float, default=24 * 3600.0,
                   metavar="SECONDS", help="a stream made by the bridge keeps messages this "
                                           "long (default: a day)")
    p.add_argument("--stream-replicas", type=positive_int, default=1, metavar="N",
                   help="a stream made by the bridge is kept on N servers of a cluster "
                        "(default: 1; 3 for a JetStream cluster)")
    p.add_argument("--wait", type=positive_float, default=60.0, metavar="SECONDS",
                   help="wait this long for the broker to start (a sidecar may start first; "
                        "default: 60)")
    p.add_argument("--duplicate-window", type=positive_float, default=120.0,
                   metavar="SECONDS", help="a stream made by the bridge drops a publish "
                                           "with an id seen this recently (default: 120)")


def _topic(text: str) -> str:
    try:
        return check_topic(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _node(text: str) -> str:
    try:
        return check_node(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", text):
        raise argparse.ArgumentTypeError(f"invalid subject prefix {text!r}")
    return text


def run(args: argparse.Namespace) -> int:
    """`pymq bridge`: runs until SIGTERM or SIGINT; 0 after a clean stop."""
    try:
        import nats  # noqa: F401
    except ImportError:
        raise SystemExit("pymq bridge needs nats-py: pip install 'pymq-shm[nats]'") from None
    if not args.outs and not args.ins:
        raise SystemExit("pymq bridge: nothing to do: give --out TOPIC and/or --in TOPIC")
    args.name = check_broker_name(args.name or default_name())
    return asyncio.run(Bridge(args).run())


__all__ = ["Bridge", "add_arguments", "check_node", "run"]
