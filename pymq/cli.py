"""The command line: `pymq SUBCOMMAND ...`, also `python -m pymq SUBCOMMAND ...`.

  serve    run a broker in the foreground until SIGTERM or SIGINT
  stats    figures of a broker: a table, or the JSON of GET /stats
  publish  publish a message, or one message per line of stdin
  tail     print a topic's messages as they arrive (optionally acking them)
  top      a live view of rates, depths and lags
  groups   a topic's groups: members, lag, pending, how long without a member
  delete-group, delete-topic
           delete a named group, or a topic (through the supervisor)
  demo     the telemetry pipeline (pymq.demo)
  bench    pymq measured on this machine (pymq.bench)
  bridge   link this node's broker to NATS JetStream (pymq.bridge)
  clean    remove what a dead broker left in /dev/shm

Every command takes --name (default $PYMQ_NAME or 'pymq'). `stats` and `top`
(and `groups`) read the admin server at --admin or $MQ_SERVICE_ENDPOINT when
one is given (and --name is not), else the broker's shared memory directly.

Exit status: 0 ok, 1 failure, 2 usage error. Every error is one readable line
on stderr, never a traceback (set PYMQ_DEBUG=1 to see the traceback of an
unexpected one). SIGINT (Ctrl-C) or SIGTERM asks the commands that run until
stopped (serve, tail, top) to stop: they finish what they hold (serve closes
its broker, tail acks what it printed and unsubscribes), say so on one line
(serve on stdout, tail on stderr; top's screen is its output) and exit 0. It
interrupts the others (stats, groups, publish, delete-*, clean, bench):
'interrupted', exit 1.
The demo stops early and still accounts for everything (see pymq.demo).

`serve` logs through the "pymq" logger to stderr: --log-level, --log-format
text|json (or PYMQ_LOG_LEVEL, PYMQ_LOG_FORMAT; pymq.logfmt).

This module owns the parser and the commands. What it shares with the demo
and the benchmark (argument types, one-line errors, the stop-signal handler,
tables) is pymq.cliutil; the demo is pymq.demo, the benchmark pymq.bench.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pymq

from . import __version__, logfmt
from .cliutil import (ArgumentParser, Failure, StopSignals, broker_name_arg, bytes_text, checked,
                      count_text, group_arg, nonneg_float, nonneg_int, port_arg, positive_float,
                      positive_int, run_main, size_arg, table, topic_arg)

log = logging.getLogger(__name__)  # "pymq.cli": what serve logs of its own

Figures = dict[str, Any]  # GET /stats (Client.stats()), or a part of it


def _start(text: str) -> str | int:
    if text in ("earliest", "latest"):
        return text
    try:
        seq = int(text)
    except ValueError:
        seq = 0
    if seq < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'earliest', 'latest' or a seq >= 1")
    return seq


def _default_name() -> str:
    return os.environ.get("PYMQ_NAME") or "pymq"


def _add_name(p: argparse.ArgumentParser, what: str = "broker name") -> None:
    p.add_argument("--name", type=broker_name_arg, default=None, metavar="NAME",
                   help=f"{what} (default: $PYMQ_NAME or 'pymq')")


def _connect(name: str) -> pymq.Client:
    return pymq.connect(name)


# -- where figures come from: the admin server, or shared memory ------------------------

def _admin_url(address: str) -> str:
    """'127.0.0.1:8080', 'http://host:port/', ':8080' or '8080' -> 'http://host:port'."""
    address = address.strip().rstrip("/")
    if address.isdigit():
        address = ":" + address
    if address.startswith(":"):
        address = "127.0.0.1" + address
    if "://" not in address:
        address = "http://" + address
    return address


class _Source:
    """The figures of one broker: GET /stats from the admin server, or
    Client.stats() from shared memory (connecting anew each time, so that a
    restarted broker is seen as such)."""

    def __init__(self, args: argparse.Namespace) -> None:
        admin: str | None = args.admin
        if admin is None and args.name is None:
            admin = os.environ.get("MQ_SERVICE_ENDPOINT") or None
        self.url = _admin_url(admin) if admin is not None else None
        self.name: str = args.name or _default_name()

    def describe(self) -> str:
        return f"admin server {self.url}" if self.url else f"broker {self.name!r}"

    def stats(self) -> Figures:
        if self.url is None:
            with _connect(self.name) as client:
                stats: Figures = client.stats()
                return stats
        return self._get(self.url, "/stats")

    def topic(self, topic: str) -> Figures:
        """One topic's figures; Failure if the broker has no such topic."""
        if self.url is None:
            figures: Figures | None = self.stats()["topics"].get(topic)
            if figures is None:
                raise Failure(f"broker {self.name!r} has no topic {topic!r}")
            return figures
        return self._get(self.url, f"/stats/{topic}",
                         f"the broker at {self.url} has no topic {topic!r}")

    def _get(self, url: str, path: str, not_found: str | None = None) -> Figures:
        """GET url + path: the JSON object it answers with (200). Failure, saying
        why, for any other answer (404: not_found, if given) or none."""
        status, data = self._request(url + path)
        if status == 404 and not_found:
            raise Failure(not_found)
        if status != 200:
            detail = data.get("error") if isinstance(data, dict) else None
            hint = " (set PYMQ_ADMIN_TOKEN)" if status == 401 else ""
            raise Failure(f"the admin server at {url} answered GET {path} with {status}"
                          + (f": {detail}" if detail else "") + hint)
        if not isinstance(data, dict):
            raise Failure(f"the admin server at {url} answered {path} with something that is "
                          "not a JSON object")
        return data

    def _request(self, url: str) -> tuple[int, Any]:
        """(status, the JSON of the body, or None if it is not JSON)."""
        import urllib.error
        import urllib.request
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        token = os.environ.get("PYMQ_ADMIN_TOKEN")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except urllib.error.URLError as e:
            reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror \
                else e.reason
            raise Failure(f"cannot reach the admin server at {self.url}: {reason}") from None
        except (OSError, ValueError) as e:  # a timeout, a bad address
            raise Failure(f"cannot reach the admin server at {self.url}: {e}") from None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None


def _add_source(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--admin", metavar="ADDR",
                       help="read from the admin server at ADDR (host:port or http://host:port; "
                            "default: $MQ_SERVICE_ENDPOINT, unless --name is given)")
    where.add_argument("--name", type=broker_name_arg, default=None, metavar="NAME",
                       help="read the shared memory of broker NAME on this machine directly "
                            "(default: $PYMQ_NAME or 'pymq', when no admin address is known)")


# -- serve ----------------------------------------------------------------------------

_SERVE_FIELDS = ("name", "ring_bytes", "max_message_bytes", "ack_timeout", "max_retries",
                 "publish_timeout", "persistence_enabled", "persistence_dir", "admin_host",
                 "admin_port")


def _configure_logging(args: argparse.Namespace) -> None:
    """serve's handler on the "pymq" logger (which also gets the supervisor's
    records): --log-level and --log-format, else PYMQ_LOG_LEVEL and
    PYMQ_LOG_FORMAT (a bad one: ValueError, exit 1, as for the other PYMQ_*
    variables)."""
    environ = dict(os.environ)
    if args.log_level is not None:
        environ[logfmt.LEVEL_ENV] = args.log_level
    if args.log_format is not None:
        environ[logfmt.FORMAT_ENV] = args.log_format
    logfmt.configure(*logfmt.from_env(environ))


def cmd_serve(args: argparse.Namespace) -> int:
    # Before anything is created: a SIGTERM during start-up closes the broker
    # as soon as it stands, instead of killing the process half-way.
    with StopSignals() as stop:
        _configure_logging(args)
        overrides = {f: getattr(args, f) for f in _SERVE_FIELDS if getattr(args, f) is not None}
        cfg = pymq.BrokerConfig.from_env(**overrides)
        broker = pymq.Broker(cfg)
        try:
            fields: dict[str, object] = {"broker": cfg.name, "pid": os.getpid(),
                                         "supervisor_pid": broker.supervisor_pid,
                                         "ring_bytes": cfg.ring_capacity}
            where = (f"broker {cfg.name!r} serving in /dev/shm (pid {os.getpid()}, supervisor "
                     f"pid {broker.supervisor_pid}, ring {bytes_text(cfg.ring_capacity)} "
                     "per topic)")
            if broker.admin_port is not None:
                host = f"[{cfg.admin_host}]" if ":" in cfg.admin_host else cfg.admin_host
                fields["admin_url"] = f"http://{host}:{broker.admin_port}/"
                where += f"; admin {fields['admin_url']}"
            # the status lines on stdout, as before; the same events as log records
            print(f"pymq serve: {where}; SIGTERM or Ctrl-C to stop", flush=True)
            log.info("broker %r serving", cfg.name, extra=fields)
            while not stop:
                stop.sleep(3600)
            print(f"pymq serve: {stop.name}: closing broker {cfg.name!r}", flush=True)
            log.info("%s: closing broker %r", stop.name, cfg.name,
                     extra={"broker": cfg.name, "signal": stop.name})
        finally:
            broker.close()
        print(f"pymq serve: broker {cfg.name!r} closed", flush=True)
        log.info("broker %r closed", cfg.name, extra={"broker": cfg.name})
    return 0


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    _add_name(p, "broker name: its segments are /dev/shm/pymq.NAME.*")
    p.add_argument("--admin-port", type=port_arg, default=None, metavar="PORT",
                   help="serve the HTTP admin endpoints (/health, /stats, /metrics) on PORT; "
                        "0 picks a free port (default: $PYMQ_ADMIN_PORT, else none)")
    p.add_argument("--admin-host", default=None, metavar="HOST",
                   help="address the admin server binds (default: $PYMQ_ADMIN_HOST or "
                        "127.0.0.1; 0.0.0.0 for Kubernetes probes)")
    p.add_argument("--ring-bytes", type=size_arg, default=None, metavar="SIZE",
                   help="data bytes of each topic's ring, rounded up to a power of two "
                        "(e.g. 64K, 8M; default: $PYMQ_RING_BYTES or 8 MiB)")
    p.add_argument("--max-message-bytes", type=size_arg, default=None, metavar="SIZE",
                   help="largest payload accepted (default: $PYMQ_MAX_MESSAGE_BYTES or 1 MiB, "
                        "at most half the ring)")
    p.add_argument("--ack-timeout", type=positive_float, default=None, metavar="SECONDS",
                   help="seconds before an unacked delivery is redelivered "
                        "(default: $PYMQ_ACK_TIMEOUT or 30)")
    p.add_argument("--max-retries", type=nonneg_int, default=None, metavar="N",
                   help="redeliveries after the first delivery, then dead-letter to TOPIC.dlq "
                        "(default: $PYMQ_MAX_RETRIES or 3)")
    p.add_argument("--publish-timeout", type=nonneg_float, default=None, metavar="SECONDS",
                   help="seconds publish waits for ring space before pymq.Full "
                        "(default: $PYMQ_PUBLISH_TIMEOUT or 5)")
    p.add_argument("--persistence", dest="persistence_enabled", default=None,
                   action=argparse.BooleanOptionalAction,
                   help="append every message to JSON-lines files on disk and restore "
                        "durable groups on restart (default: $PYMQ_PERSISTENCE_ENABLED or off)")
    p.add_argument("--persistence-dir", default=None, metavar="DIR",
                   help="where persistence writes (default: $PYMQ_PERSISTENCE_DIR or /data/mq)")
    _add_log_arguments(p)


def _add_log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", type=checked(logfmt.check_level), default=None,
                   metavar="LEVEL", help="least level of the log records written to stderr: "
                   "DEBUG, INFO, WARNING, ERROR (default: $PYMQ_LOG_LEVEL or INFO)")
    p.add_argument("--log-format", type=checked(logfmt.check_format), default=None,
                   metavar="text|json", help="text: a line per record; json: an object per "
                   "line (time, level, logger, message and the record's fields) for log "
                   "collectors (default: $PYMQ_LOG_FORMAT or text)")


# -- stats ----------------------------------------------------------------------------

WIDTH = 100  # columns that `pymq stats` fits, for realistic names and figures


def _ring_use(t: Figures) -> str:
    cap = t.get("ring_bytes_capacity") or 0
    return f"{100 * t.get('ring_bytes_used', 0) / cap:.1f}%" if cap else "-"


def _rings(topics: Figures) -> str:
    """', rings of 8.0 MiB' (or '64.0 KiB to 8.0 MiB'): the capacity of the topics' rings."""
    caps = sorted({t["ring_bytes_capacity"] for t in topics.values()
                   if t.get("ring_bytes_capacity")})
    if not caps:
        return ""
    return ", rings of " + " to ".join(bytes_text(c) for c in dict.fromkeys((caps[0], caps[-1])))


# Ten columns of seven-digit counts do not fit 100 columns: each table leaves
# out what the other shows (a topic's redeliveries and dead letters are its
# groups'; a dead letter is also a message of TOPIC.dlq) and the group's
# position (its lag says how far behind it is); --json has every figure.
TOPIC_COLUMNS = ["TOPIC", "PUBLISHED", "DELIVERED", "ACKED", "DEPTH", "RING USE", "WAITS",
                 "REFUSALS"]
GROUP_COLUMNS = ["TOPIC", "GROUP", "MEMBERS", "ACK", "LAG", "PENDING", "DELIVERED", "ACKED",
                 "REDELIV", "DLQ"]


def _topic_rows(topics: Figures) -> list[list[str | int]]:
    return [[topic, t["published"], t["delivered"], t["acked"], t["depth"], _ring_use(t),
             t["publish_waits"], t["publish_refusals"]]
            for topic, t in topics.items()]


def _group_rows(topics: Figures) -> list[list[str | int]]:
    return [[topic, group, g["members"], "ack" if g["ack"] else "-", g["lag"], g["pending"],
             g["delivered"], g["acked"], g["redelivered"], g["dead_lettered"]]
            for topic, t in topics.items() for group, g in t.get("groups", {}).items()]


def stats_text(stats: Figures | None, topics: Figures) -> str:
    """The readable form of GET /stats (stats), or of some of its topics: lines
    of at most WIDTH characters unless names are very long (counts that would
    not fit are shown compact, '1.23M'; --json has them exact)."""
    lines = []
    if stats is not None:
        sup = stats.get("supervisor", {})
        sweep = sup.get("last_sweep")
        ago = f", last sweep {max(0.0, time.time() - sweep):.1f} s ago" if sweep else ""
        lines.append(f"broker {stats.get('broker')!r}: {count_text(len(topics), 'topic')}"
                     f"{_rings(topics)}, owner pid {stats.get('owner_pid')}, reaped "
                     f"{count_text(stats.get('reaped_processes', 0), 'process', 'processes')}")
        lines.append(f"supervisor pid {sup.get('pid')}: "
                     f"{count_text(sup.get('restarts', 0), 'restart')}{ago}")
    if not topics:
        lines.append("no topics")
        return "\n".join(lines)
    lines += [""] + table(TOPIC_COLUMNS, _topic_rows(topics), width=WIDTH)
    groups = _group_rows(topics)
    if groups:
        lines += [""] + table(GROUP_COLUMNS, groups, left=2, width=WIDTH)
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace) -> int:
    source = _Source(args)
    if args.topic is not None:
        data = source.topic(args.topic)
        text = stats_text(None, {args.topic: data})
    else:
        data = source.stats()
        text = stats_text(data, data.get("topics", {}))
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


# -- publish --------------------------------------------------------------------------

READ_CHUNK = 1 << 16
BATCH_COUNT = 1024


def _too_large(what: str, limit: int) -> Failure:
    return Failure(f"{what} is larger than the broker's max_message_bytes ({limit:,} bytes)")


def _lines(fd: int, limit: int) -> Iterator[list[bytes]]:
    """Lists of the complete lines (without the newline) of what arrives on
    fd, as it arrives; a last line without a newline counts too. At a line
    longer than limit: the lines before it, then Failure (before that line is
    all in memory)."""
    rest, number = b"", 0
    while True:
        chunk = os.read(fd, READ_CHUNK)
        if not chunk:
            if rest:
                yield [rest]
            return
        *lines, rest = (rest + chunk).split(b"\n")
        bad = next((i for i, line in enumerate(lines + [rest]) if len(line) > limit), None)
        good = lines if bad is None else lines[:bad]
        if good:
            yield good
        if bad is not None:
            raise _too_large(f"line {number + bad + 1:,} of stdin", limit)
        number += len(lines)


def _batches(lines: list[bytes], max_bytes: int) -> Iterator[list[bytes]]:
    """Runs of lines for one publish_many each: at most BATCH_COUNT lines and
    max_bytes of ring (a batch must fit the ring)."""
    from . import _core
    for start, end in _core.spans_within([len(line) for line in lines], max_bytes, BATCH_COUNT):
        yield lines[start:end]


def cmd_publish(args: argparse.Namespace) -> int:
    from .errors import MQError

    from_stdin = args.message == "-" or (args.message is None and not sys.stdin.isatty())
    if args.message is None and not from_stdin:
        print("pymq publish: error: give a MESSAGE, or '-' to publish the lines of stdin "
              "(see 'pymq publish --help')", file=sys.stderr)
        return 2
    name = args.name or _default_name()
    count, seq = 0, None
    with _connect(name) as client:
        cfg = client.config
        limit = cfg.max_message_bytes
        assert limit is not None  # a BrokerConfig resolves its default
        try:
            if not from_stdin:
                payload = os.fsencode(args.message)
                if len(payload) > limit:
                    raise _too_large(f"the message ({len(payload):,} bytes)", limit)
                seq = client.publish(args.topic, payload, timeout=args.timeout)
                count = 1
            else:
                max_bytes = cfg.ring_capacity // 4
                for lines in _lines(sys.stdin.fileno(), limit):
                    for batch in _batches(lines, max_bytes):
                        seq = client.publish_many(args.topic, batch, timeout=args.timeout)
                        count += len(batch)
        except (MQError, Failure) as e:
            done = f" (after {count_text(count)}, last seq {seq})" if count else ""
            raise Failure(f"{e}{done}") from None
    last = f" (last seq {seq})" if count > 1 else f" (seq {seq})" if count else ""
    print(f"published {count_text(count)} to {args.topic!r}{last}")
    return 0


# -- tail -----------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def payload_text(payload: bytes) -> str:
    """One line for a payload: UTF-8 text (a stray invalid byte replaced), or
    the bytes' repr when it is binary or spans lines."""
    text = payload.decode("utf-8", "replace")
    replaced = text.count("\ufffd") - payload.count("\ufffd".encode())
    if _CONTROL.search(text) or replaced * 10 > len(text):
        return repr(payload)
    return text


POLL = 0.1  # seconds: how soon tail notices a signal while it waits


def cmd_tail(args: argparse.Namespace) -> int:
    from .errors import BrokerClosed, SubscriptionClosed, Timeout

    name = args.name or _default_name()
    out = sys.stdout
    got, ended = 0, None
    with StopSignals() as stop, _connect(name) as client:
        if args.group is not None:  # (the library only says "invalid argument")
            g = client.stats()["topics"].get(args.topic, {}).get("groups", {}).get(args.group)
            if g is not None and g["ack"] != args.ack:
                raise Failure(f"group {args.group!r} of topic {args.topic!r} is "
                              + ("an ack group: tail it with --ack" if g["ack"] else
                                 "a group without acks: tail it without --ack"))
        ack_sub = client.subscribe_with_ack(args.topic, group=args.group, start=args.start) \
            if args.ack else None
        # items: pymq.Message with --ack, else bytes
        sub: pymq.Subscription[Any] = ack_sub if ack_sub is not None else \
            client.subscribe(args.topic, group=args.group, start=args.start)
        with sub:
            idle_since = time.monotonic()
            while not stop and (args.count is None or got < args.count):
                # never take more than --count: a group's other members get the rest
                want = 256 if args.count is None else min(256, args.count - got)
                try:
                    batch = sub.get_many(want, timeout=POLL)
                except Timeout:
                    if args.timeout is not None and time.monotonic() - idle_since >= args.timeout:
                        ended = f"no message for {args.timeout:g} s"
                        break
                    continue
                except (BrokerClosed, SubscriptionClosed) as e:
                    ended = str(e)
                    break
                if args.ack:
                    out.write("".join(f"seq={m.seq} attempt={m.delivery_attempt} "
                                      f"{payload_text(bytes(m.payload))}\n" for m in batch))
                else:
                    out.write("".join(payload_text(bytes(p)) + "\n" for p in batch))
                out.flush()  # printed before acked: at least once, also on the terminal
                if ack_sub is not None:
                    ack_sub.ack_many(batch)
                got += len(batch)
                idle_since = time.monotonic()
    if stop:  # asked to stop: exit 0, as serve and top do, and say so as serve does
        ended = stop.name
    elif args.count is not None and got < args.count:
        raise Failure(f"{ended}: received {got:,} of {count_text(args.count)}")
    if ended:  # on stderr: stdout is the messages'
        print(f"pymq tail: {ended}; received {count_text(got)}", file=sys.stderr)
    return 0


# -- top ------------------------------------------------------------------------------

def _rate(now: Figures | None, before: Figures | None, key: str, dt: float) -> str:
    if before is None or now is None or dt <= 0 or now[key] < before[key]:
        return "-"  # no earlier figure, or a different topic or group since
    return f"{(now[key] - before[key]) / dt:,.0f}"


def top_text(stats: Figures, prev: Figures | None, dt: float) -> list[str]:
    topics = stats.get("topics", {})
    old = (prev or {}).get("topics", {})
    if not topics:
        return ["no topics"]
    rows = [[topic, _rate(t, old.get(topic), "published", dt),
             _rate(t, old.get(topic), "delivered", dt), t["depth"],
             _ring_use(t),
             t["published"], t["publish_waits"], t["publish_refusals"]]
            for topic, t in topics.items()]
    lines = table(["TOPIC", "PUBLISHED/S", "DELIVERED/S", "DEPTH", "RING USE", "PUBLISHED",
                    "WAITS", "REFUSALS"], rows)
    groups = []
    for topic, t in topics.items():
        for group, g in t.get("groups", {}).items():
            before = old.get(topic, {}).get("groups", {}).get(group)
            groups.append([topic, group, g["members"], g["lag"], g["pending"],
                           _rate(g, before, "delivered", dt),
                           _rate(g, before, "acked", dt) if g["ack"] else "-",
                           g["redelivered"], g["dead_lettered"]])
    if groups:
        lines += [""] + table(["TOPIC", "GROUP", "MEMBERS", "LAG", "PENDING", "DELIVERED/S",
                                "ACKED/S", "REDELIVERED", "DEAD-LETTERED"], groups, left=2)
    return lines


def cmd_top(args: argparse.Namespace) -> int:
    source = _Source(args)
    tty = sys.stdout.isatty()
    prev, prev_t, shown = None, 0.0, 0
    with StopSignals() as stop:
        while not stop and (args.iterations is None or shown < args.iterations):
            if shown:
                stop.sleep(args.interval)
                if stop:
                    break
            try:
                stats, t = source.stats(), time.monotonic()
            except Exception as e:  # noqa: BLE001 - shown, and tried again next refresh
                if not shown:
                    raise  # nothing to watch: fail as stats would
                body, prev = [f"unavailable: {e}"], None
            else:
                body = top_text(stats, prev, t - prev_t)
                prev, prev_t = stats, t
            head = (f"pymq top: {source.describe()}, {time.strftime('%H:%M:%S')}, every "
                    f"{args.interval:g} s" + (" (Ctrl-C to quit)" if tty else ""))
            block = "\n".join([head, ""] + body)
            sys.stdout.write(("\x1b[H\x1b[2J" if tty else ("\n" if shown else "")) + block + "\n")
            sys.stdout.flush()
            shown += 1
    return 0


# -- demo, clean ----------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo
    return demo.run(args)


# -- groups, deleting ----------------------------------------------------------------------

GROUPS_COLUMNS = ["GROUP", "KIND", "MEMBERS", "POSITION", "LAG", "PENDING", "DELIVERED", "ACKED",
                  "IDLE"]


def groups_text(topic: str, figures: Figures) -> str:
    """The groups of one topic: named ones by name, anonymous ones together."""
    rows: list[list[str | int]] = []
    anonymous = [g for g in figures.get("groups", {}).values() if g.get("anonymous")]
    for name, g in sorted(figures.get("groups", {}).items()):
        if g.get("anonymous"):
            continue
        idle = g.get("idle_seconds")
        rows.append([name, "ack" if g["ack"] else "plain", g["members"], g["position"], g["lag"],
                     g["pending"], g["delivered"], g["acked"],
                     "-" if idle is None else f"{idle:,.0f} s"])
    if anonymous:
        rows.append([f"({len(anonymous)} anonymous)", "-", sum(g["members"] for g in anonymous),
                     "-", max(g["lag"] for g in anonymous), sum(g["pending"] for g in anonymous),
                     sum(g["delivered"] for g in anonymous), sum(g["acked"] for g in anonymous),
                     "-"])
    if not rows:
        return f"topic {topic!r} has no groups"
    return "\n".join(table(GROUPS_COLUMNS, rows, width=WIDTH))


def cmd_groups(args: argparse.Namespace) -> int:
    source = _Source(args)
    figures = source.topic(args.topic)
    print(json.dumps(figures.get("groups", {}), indent=2) if args.json
          else groups_text(args.topic, figures))
    return 0


def cmd_delete_group(args: argparse.Namespace) -> int:
    with _connect(args.name or _default_name()) as client:
        try:
            client.delete_group(args.topic, args.group)
        except LookupError as e:  # TopicNotFound, GroupNotFound
            raise Failure(str(e)) from None
    print(f"deleted group {args.group!r} of topic {args.topic!r}")
    return 0


def cmd_delete_topic(args: argparse.Namespace) -> int:
    with _connect(args.name or _default_name()) as client:
        try:
            client.delete_topic(args.topic, keep_files=not args.remove_files)
        except LookupError as e:
            raise Failure(str(e)) from None
    print(f"deleted topic {args.topic!r}")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    from . import bridge
    _configure_logging(args)  # its records on stderr, as serve's
    return bridge.run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    return bench.run(args)


def cmd_clean(args: argparse.Namespace) -> int:
    from . import segments
    from .broker import remove_stale
    from .errors import MQError
    try:
        removed = remove_stale(args.name)
    except MQError as e:  # a live broker owns the name
        print(f"pymq clean: error: {e}", file=sys.stderr)
        return 1
    if not removed:
        print(f"nothing to remove: no segments of broker {args.name!r} in {segments.SHM_DIR}")
    for entry in removed:
        print(f"removed {os.path.join(segments.SHM_DIR, entry)}")
    return 0


# -- the parser -------------------------------------------------------------------------

class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped; texts of several lines (examples) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _sub(sub: argparse._SubParsersAction[ArgumentParser], name: str, help: str,
         description: str, epilog: str | None = None) -> ArgumentParser:
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=_Formatter)


def build_parser() -> ArgumentParser:
    from . import bench, demo

    parser = ArgumentParser(
        prog="pymq",
        description="pymq: a message broker for processes on one machine, over shared memory.",
        epilog="Each command takes --name (default: $PYMQ_NAME or 'pymq'); see "
               "'pymq COMMAND --help'.")
    parser.add_argument("--version", action="version", version=f"pymq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _sub(sub, "serve", "run a broker in the foreground until SIGTERM or Ctrl-C",
             "Run a broker (its namespace in /dev/shm and its supervisor process) in the "
             "foreground. Settings: the PYMQ_* environment variables (as "
             "BrokerConfig.from_env()), overridden by the options below. On SIGTERM or SIGINT "
             "it closes the broker (blocked subscribers and publishers get BrokerClosed, every "
             "segment is removed) and exits 0.",
             "examples:\n  pymq serve --name telemetry --admin-port 8080\n"
             "  PYMQ_ACK_TIMEOUT=10 pymq serve --ring-bytes 64M --max-retries 5")
    _add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = _sub(sub, "stats", "print a broker's figures (a table, or JSON)",
             "Print a broker's figures: per topic published, delivered and acked (summed over "
             "its groups), depth, ring use, publisher waits and refusals; per group members, "
             "kind (ack or not), lag, pending, delivered, acked, redelivered (REDELIV) and "
             "dead-lettered (DLQ). The tables fit 100 columns: a count that would not fit is "
             "shown to three digits (1.23M); --json has every figure, exact. Read from the "
             "admin server (--admin or $MQ_SERVICE_ENDPOINT) or, with --name or "
             "when no admin address is known, from shared memory on this machine.",
             "examples:\n  pymq stats --name telemetry\n  pymq stats gpu-telemetry --json\n"
             "  MQ_SERVICE_ENDPOINT=127.0.0.1:8080 pymq stats")
    p.add_argument("topic", nargs="?", type=topic_arg, metavar="TOPIC",
                   help="only this topic (exit 1 if the broker has no such topic)")
    p.add_argument("--json", action="store_true",
                   help="print the JSON of GET /stats (or /stats/TOPIC) instead of a table")
    _add_source(p)
    p.set_defaults(func=cmd_stats)

    p = _sub(sub, "groups", "list a topic's groups (members, lag, pending, idle time)",
             "List TOPIC's groups: kind (ack or plain), members, position (the seq of the next "
             "message; of an ack group, its oldest unacked one), lag, pending, delivered, acked, "
             "and for a named group with no member how long it has had none (IDLE): a named "
             "group holds every message published while it has no member, until it is "
             "deleted (pymq delete-group). Anonymous subscriptions are summed on one line. "
             "Read like 'stats'.",
             "examples:\n  pymq groups gpu-telemetry\n  pymq groups gpu-telemetry --json")
    p.add_argument("topic", type=topic_arg, metavar="TOPIC")
    p.add_argument("--json", action="store_true", help="print the groups' JSON figures")
    _add_source(p)
    p.set_defaults(func=cmd_groups)

    p = _sub(sub, "delete-group", "delete a named group and its position",
             "Delete GROUP of TOPIC: its position goes, what an ack group had pending goes "
             "with it, it no longer holds messages back, and its members get "
             "SubscriptionClosed. Exit 1 if there is no such topic or group.",
             "example:\n  pymq delete-group gpu-telemetry old-dashboard")
    p.add_argument("topic", type=topic_arg, metavar="TOPIC")
    p.add_argument("group", type=group_arg, metavar="GROUP")
    _add_name(p)
    p.set_defaults(func=cmd_delete_group)

    p = _sub(sub, "delete-topic", "delete a topic (its segment, and its log if asked)",
             "Delete TOPIC: its subscriptions get SubscriptionClosed, its messages go, a later "
             "publish makes it anew; its shared memory is freed once no process has it mapped. "
             "With persistence, its log is kept aside in PERSISTENCE_DIR/.deleted.TOPIC.<ns> "
             "(no restart restores it), or removed with --remove-files. Exit 1 if there is "
             "no such topic.",
             "examples:\n  pymq delete-topic scratch\n  pymq delete-topic scratch --remove-files")
    p.add_argument("topic", type=topic_arg, metavar="TOPIC")
    p.add_argument("--remove-files", action="store_true",
                   help="remove its persisted files instead of keeping them aside")
    _add_name(p)
    p.set_defaults(func=cmd_delete_topic)

    p = _sub(sub, "publish", "publish a message, or one per line of stdin",
             "Publish MESSAGE to TOPIC or, with '-' (or no MESSAGE and stdin not a terminal), "
             "one message per line of stdin (without its newline), in batches. Prints the "
             "count and the last seq.",
             "examples:\n  pymq publish gpu-telemetry 'GPU utilization: 85%'\n"
             "  seq 1000 | pymq publish numbers -")
    p.add_argument("topic", type=topic_arg, metavar="TOPIC")
    p.add_argument("message", nargs="?", metavar="MESSAGE|-",
                   help="the payload (UTF-8), or '-' for the lines of stdin")
    p.add_argument("--timeout", type=nonneg_float, default=None, metavar="SECONDS",
                   help="how long to wait for ring space before failing with Full "
                        "(default: the broker's publish_timeout)")
    _add_name(p)
    p.set_defaults(func=cmd_publish)

    p = _sub(sub, "tail", "print a topic's messages as they arrive",
             "Subscribe to TOPIC and print each message on a line: UTF-8 text, or the repr of "
             "binary payloads. Ends after --count messages, after --timeout seconds without a "
             "message, on Ctrl-C or SIGTERM (exit 0, like serve and top), or when the broker "
             "closes; but for --count, one line on stderr says how it ended. Exit 1 if "
             "--timeout or the broker's closing ended it before --count messages arrived.",
             "examples:\n  pymq tail gpu-telemetry\n"
             "  pymq tail gpu-telemetry --group archiver --ack --count 10 --start earliest")
    p.add_argument("topic", type=topic_arg, metavar="TOPIC")
    p.add_argument("--group", type=group_arg, default=None, metavar="GROUP",
                   help="join the named group (competing with its other members; durable) "
                        "instead of a group of its own")
    p.add_argument("--ack", action="store_true",
                   help="at-least-once: print 'seq=N attempt=A PAYLOAD' and ack each message "
                        "once printed")
    p.add_argument("--count", type=positive_int, default=None, metavar="N",
                   help="stop after N messages (never takes more from the group)")
    p.add_argument("--start", type=_start, default="latest", metavar="earliest|latest|SEQ",
                   help="where a new group starts (default: latest)")
    p.add_argument("--timeout", type=nonneg_float, default=None, metavar="SECONDS",
                   help="stop when no message arrived for SECONDS")
    _add_name(p)
    p.set_defaults(func=cmd_tail)

    p = _sub(sub, "top", "a live view of rates, depths and lags",
             "Refresh every --interval seconds: per topic published/s, delivered/s, depth and "
             "ring use; per group members, lag, pending, delivered/s and acked/s. Clears the "
             "screen on a terminal, prints one block per refresh otherwise. Reads like 'stats'.",
             "examples:\n  pymq top --name telemetry\n  pymq top --admin 127.0.0.1:8080 "
             "--interval 5")
    p.add_argument("--interval", type=positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between refreshes (default: 1)")
    p.add_argument("--iterations", type=positive_int, default=None, metavar="N",
                   help="stop after N refreshes (default: until Ctrl-C)")
    _add_source(p)
    p.set_defaults(func=cmd_top)

    p = _sub(sub, "demo", "run the GPU-telemetry pipeline demo",
             "The GPU-telemetry pipeline: a broker, streamer processes, two collector groups, "
             "live figures and a closing account of every message. Exits 0 only when the "
             "account balances.")
    demo.add_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = _sub(sub, "clean", "remove what a dead broker left in /dev/shm",
             "Remove the shared-memory segments and token files of a broker that is no longer "
             "running. Refuses (exit 1) when a live broker owns the name.")
    p.add_argument("--name", type=broker_name_arg, default=_default_name(), metavar="NAME",
                   help="broker name (default: $PYMQ_NAME or 'pymq')")
    p.set_defaults(func=cmd_clean)

    p = _sub(sub, "bridge", "link this node's broker to NATS JetStream",
             "Link the broker --name to NATS JetStream, for topics shared across nodes (one "
             "broker per node): --out TOPIC forwards the local topic to the subject "
             "PREFIX.TOPIC, --in TOPIC delivers that subject into the local topic. "
             "At-least-once both ways: a local message is acked once JetStream has it, a "
             "JetStream message once it is in the local ring; nothing that came in is sent "
             "back out. Runs until SIGTERM or Ctrl-C, then settles what is in flight and exits "
             "0. Needs nats-py (pip install 'pymq-shm[nats]'). See docs/scaling.md.",
             "examples:\n  pymq bridge --name telemetry --nats nats://nats:4222 --out gpu\n"
             "  pymq bridge --nats nats://127.0.0.1:4222 --out gpu --in gpu --node node-a")
    from . import bridge
    bridge.add_arguments(p)
    _add_log_arguments(p)
    _add_name(p)
    p.set_defaults(func=cmd_bridge)

    p = _sub(sub, "bench", "measure pymq on this machine (throughput, latency)",
             "Measure pymq alone across two processes: publish -> get of 64 B and 4 KiB "
             "payloads, single and batched calls (msg/s, MB/s), and ping-pong latency (one-way "
             "p50, p99), every payload checked, on a broker of its own that it removes. Exit 1 "
             "if a payload is wrong or anything is left in /dev/shm. From a source checkout, "
             "--compare runs the side by side with other IPC transports instead.",
             "examples:\n  pymq bench --quick\n  pymq bench\n"
             "  pymq bench --compare --quick --scenario A   # source checkout, '.[bench]' extra")
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`pymq ARGS...`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        print("pymq: error: a command is required (see 'pymq --help')", file=sys.stderr)
        return 2
    return run_main(f"pymq {args.command}", lambda: func(args))


if __name__ == "__main__":
    sys.exit(main())
