#!/usr/bin/env python3
"""tools/fuzz_parsers.py - owns the coverage-guided fuzzers of pymq's Python
parsers (atheris, libFuzzer for Python; issue 14). Targets:

    log         persistence.read_log and replay (JSON-lines files, torn and corrupt
                lines, several files) and TopicLog's recovery of a torn tail (_recover)
    checkpoint  persistence.read_checkpoint (groups.json), and restore_topic of
                what it accepts (with a log beside it)
    admin       the admin server's request reading (server._read_head, _parse) from
                raw bytes, routes.resolve, the endpoint's answer and its head
    cli         pymq.cli.main with fuzzed argv and stdin (a broker of its own for
                the commands that need one; no server, no network)
    config      BrokerConfig.from_env and from_json
    token       segments.read_token_info, _pid_says_dead, probe_token and token_of
                of a liveness token file's fuzzed bytes and name

Each target is a function of the input bytes that returns when pymq behaved
as documented and raises Finding (or anything else) when not: a parser
that raises what it does not document, returns what it must not (a seq out of
order, a config that later fails to be used), a CLI that prints a traceback
or exits other than 0/1/2, an admin request that makes the server fail
instead of answering. Under atheris, a raise is a crash: its input is saved
(the artifact) and becomes a regression test (tests/test_fuzz_parsers.py).

    python tools/fuzz_parsers.py --seconds 600                  # each target 10 minutes
    python tools/fuzz_parsers.py --target log -- -runs=5000 -seed=1
    python tools/fuzz_parsers.py --target log --replay crash-...  # one input again
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "fuzz")


class Finding(Exception):
    """pymq did not behave as documented for this input."""


def _split(data: bytes, parts: int) -> list[bytes]:
    """The input cut into `parts` pieces at b"\\xff\\xfe" (fewer: empty ones)."""
    got = data.split(b"\xff\xfe", parts - 1)
    return got + [b""] * (parts - len(got))


# ==== log: read_log, replay, TopicLog._recover ====================================

class _Cfg:
    persistence_fsync = "never"
    persistence_segment_bytes = 1 << 20
    persistence_retention_bytes = 1 << 30
    persistence_retention_seconds = 1e9
    persistence_fsync_interval = 1.0


def _log_files(root: str, topic: str, data: bytes) -> list[tuple[str, bytes]]:
    """Write up to 3 log files of the input's pieces: (name, bytes) of each."""
    d = os.path.join(root, topic)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d, mode=0o700)
    head, rest = (data[0], data[1:]) if data else (0, b"")
    pieces = _split(rest, 1 + head % 3)
    files = []
    first = 1
    for i, content in enumerate(pieces):
        name = f"{first:020d}.jsonl" if not head & 0x80 or i else "x.jsonl"
        first += 1 + (head >> 2 & 7) * (i + 1)
        with open(os.path.join(d, name), "wb") as f:
            f.write(content)
        files.append((name, content))
    return files


def target_log(data: bytes) -> None:
    from pymq.persistence.log import LogReport, TopicLog, read_log, replay
    root = _tmp("log")
    files = _log_files(root, "t", data)
    from_seq = 1 + (data[0] >> 5 if data else 0)
    report = LogReport()
    got = list(read_log(root, "t", from_seq, report))
    last = 0
    for rec in got:
        seq, ts_ns, payload = rec
        if not (isinstance(seq, int) and seq > last and seq >= from_seq):
            raise Finding(f"read_log gave seq {seq!r} after {last} (from {from_seq})")
        if not isinstance(ts_ns, int) or not isinstance(payload, bytes):
            raise Finding(f"read_log gave {rec!r}")
        last = seq
    if report.records != len(got) or report.last_seq < last:
        raise Finding(f"read_log's report ({report.records} records, last {report.last_seq}) "
                      f"does not match what it gave ({len(got)}, last {last})")
    lo, hi = sorted([from_seq, from_seq + (data[-1] if data else 0)])
    for seq, _, _ in replay(root, "t", lo, hi):
        if not lo <= seq < hi:
            raise Finding(f"replay({lo}, {hi}) gave seq {seq}")
    # recovery of a torn tail: the last file is cut back to its last whole line
    tl = TopicLog(root, "t", _Cfg())
    try:
        name, before = sorted(files)[-1]
        with open(os.path.join(root, "t", name), "rb") as f:
            after = f.read()
        if not before.startswith(after) or (after and not after.endswith(b"\n")):
            raise Finding(f"_recover left {after[-60:]!r} of {before[-60:]!r}")
        if not before.endswith(b"\n") and before.rfind(b"\n") + 1 != len(after):
            raise Finding("_recover did not cut the torn tail exactly at the last newline")
        if not isinstance(tl.last_seq, int) or tl.last_seq < 0:
            raise Finding(f"_recover gave last_seq {tl.last_seq!r}")
    finally:
        tl.close()


# ==== checkpoint: read_checkpoint, and restore_topic of what it accepts ===============

def target_checkpoint(data: bytes) -> None:
    from pymq import MQError, segments
    from pymq.config import BrokerConfig
    from pymq.persistence import read_checkpoint, restore_topic
    from pymq.errors import PersistenceError
    root = _tmp("checkpoint")
    state_bytes, log_bytes = _split(data, 2)
    d = os.path.join(root, "t")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d, mode=0o700)
    with open(os.path.join(d, "groups.json"), "wb") as f:
        f.write(state_bytes)
    if log_bytes:
        with open(os.path.join(d, f"{1:020d}.jsonl"), "wb") as f:
            f.write(log_bytes)
    try:
        state = read_checkpoint(root, "t")
    except PersistenceError:
        return  # documented: unusable group positions
    if state is None:
        raise Finding("read_checkpoint said absent of a file that is there")
    name = _fuzz_name()
    cfg = BrokerConfig(name=name, ring_bytes=8192, persistence_enabled=True, persistence_dir=root)
    try:
        restore_topic(name, "t", cfg)  # what a restarted Broker does with it
    except MQError:
        pass  # documented (PersistenceError, SegmentMismatch, ...)
    finally:
        segments.remove_namespace(name)


# ==== admin: request head, routing, endpoint, answer ======================================

class _Backend:
    """What routes.py needs from the server: fixed figures, a real history."""

    def __init__(self, figures: dict[str, Any], token: bytes | None, loopback: bool):
        from pymq.admin.history import History
        self.token, self.loopback, self.figures = token, loopback, figures
        self._history = History(60.0, 1.0)
        now = time.time()
        for k in range(5):
            self._history.add(now - 5 + k, figures)

    async def stats(self) -> dict[str, Any]:
        return self.figures

    async def health(self) -> tuple[bool, dict[str, Any]]:
        return True, {"broker": "fuzz"}

    def history(self, since: float | None) -> dict[str, Any]:
        return self._history.to_json(since)


_FIGURES: dict[str, Any] | None = None


def _figures() -> dict[str, Any]:
    """A stats dict as Client.stats() makes it, from a ring on plain memory
    (no broker: no process)."""
    global _FIGURES
    if _FIGURES is None:
        from pymq import _core
        from pymq.client import topic_stats

        import mmap

        class Plain:  # page-aligned memory, as a segment's (the ring's CAS needs 16 bytes)
            def __init__(self, n: int):
                self.mm = mmap.mmap(-1, n)

            def close(self) -> None:
                pass
        params = _core.ring_params(4096, 1024)
        seg = Plain(_core.ring_size(params))
        _core.Ring.init(seg, params)
        ring = _core.Ring(seg, "t")
        ring.join("g", _core.GROUP_ACK, 1, 0, 1, 10**9, 3)
        ring.publish1(b"x" * 10, 0)
        t = topic_stats(ring.stats())
        ring.release()
        _FIGURES = {"broker": "fuzz", "owner_pid": 1, "supervisor": {"pid": 2, "restarts": 0,
                    "last_sweep": time.time()}, "reaped_processes": 0, "reaped_subscriptions": 0,
                    "published": 1, "delivered": 0, "acked": 0, "nacked": 0, "redelivered": 0,
                    "dead_lettered": 0, "timeouts": 0, "pending": 0, "topics": {"t": t}}
    return _FIGURES


_LOOP: asyncio.AbstractEventLoop | None = None

STATUSES = {200, 400, 401, 404, 405, 408, 414, 421, 431, 500, 503, 505}


def target_admin(data: bytes) -> None:
    from pymq.admin import routes, server
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
    flags, raw = (data[0], data[1:]) if data else (0, b"")
    backend = _Backend(_figures(), b"s3cret" if flags & 1 else None, bool(flags & 2))

    async def serve() -> routes.Response | None:
        reader = asyncio.StreamReader(limit=server.MAX_REQUEST_LINE)
        reader.feed_data(raw)
        reader.feed_eof()
        head = await server._read_head(reader)
        if head is None or isinstance(head, routes.Response):
            return head
        endpoint = routes.resolve(head, backend)
        if isinstance(endpoint, routes.Response):
            return endpoint
        return await endpoint(backend)

    try:
        answer = _LOOP.run_until_complete(serve())
    except Exception as e:  # the server would drop the connection, unanswered
        raise Finding(f"a request made the admin server fail: {type(e).__name__}: {e}") from e
    if answer is None:
        if raw.strip():
            raise Finding("a request that is not empty was not answered")
        return
    if answer.status not in STATUSES or not isinstance(answer.body, bytes):
        raise Finding(f"answer {answer.status} {answer.body[:100]!r}")
    server._head(answer, with_body=True)  # its head can be written


# ==== cli: pymq.cli.main ======================================================================

_CLI_BROKER: Any = None
SAFE = ["stats", "publish", "groups", "delete-group", "delete-topic", "clean", "tail", "--help",
        "--version", "serve", "bench", "demo", "top", "bridge", ""]
RUN = {"serve", "bench", "demo", "top", "bridge"}  # only their --help: they run until stopped
WORDS = ["--name", "--group", "--ack", "--count", "--timeout", "--start", "--json", "-", "t",
         "earliest", "latest", "0", "1", "-1", "1e999", "nan", "--admin", "--help", "g",
         "--keep-files", "--no-keep-files", "x" * 300, "\udcff", "t.dlq", "--log-level",
         "--max-bytes", "--batch"]


def _cli_broker() -> str:
    """A broker of this process for the commands that need one (made anew
    when the inputs made it many topics: they take /dev/shm); the driver
    removes what it leaves (libFuzzer exits without Python's atexit)."""
    global _CLI_BROKER
    if _CLI_BROKER is not None and len(_CLI_BROKER.topics()) > 16:
        _CLI_BROKER.close()
        _CLI_BROKER = None
    if _CLI_BROKER is None:
        import pymq
        _CLI_BROKER = pymq.Broker(pymq.BrokerConfig(name=_fuzz_name("cli"), ring_bytes=65536,
                                                    publish_timeout=0.05))
        _CLI_BROKER.publish("t", b"hello")
        _CLI_BROKER.subscribe("t", group="g")
    return _CLI_BROKER.name


def _no_network(*args: Any, **kw: Any) -> Any:
    import urllib.error
    raise urllib.error.URLError("no network in the fuzzer")


def target_cli(data: bytes) -> None:
    import urllib.request
    from pymq import cli
    urllib.request.urlopen = _no_network  # --admin: never a real request
    argv_bytes, stdin_bytes = _split(data, 2)
    words = [w.decode("utf-8", "surrogateescape") for w in argv_bytes.split(b"\x00")]
    cmd = SAFE[(argv_bytes[0] if argv_bytes else 0) % len(SAFE)]
    argv = [cmd] if cmd else []
    for w in words[1:]:
        argv.append(WORDS[ord(w[0]) % len(WORDS)] if w and ord(w[0]) < 32 else w)
    if cmd in RUN:
        argv = [cmd, "--help"]
    if cmd == "tail":  # it ends after this long without a message
        argv += ["--timeout", "0.01"]
    if cmd == "clean" or (argv_bytes[-1:] or b"\0")[0] & 1:
        name = _fuzz_name("cli") if cmd == "clean" else _cli_broker()
        argv[1:1] = ["--name", name] if cmd else []
    env = {k: v for k, v in os.environ.items() if k.startswith("PYMQ_") or k == "MQ_SERVICE_ENDPOINT"}
    for k in env:
        del os.environ[k]
    with tempfile.TemporaryFile() as stdin:
        stdin.write(stdin_bytes)
        stdin.seek(0)
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdin, sys.stdout, sys.stderr
        sys.stdin = io.TextIOWrapper(os.fdopen(os.dup(stdin.fileno()), "rb"))
        sys.stdout, sys.stderr = out, err
        try:
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # argparse: --help (0), a usage error (2)
                rc = e.code if isinstance(e.code, int) else 2
                if rc not in (0, 2):
                    raise Finding(f"exit status {e.code!r} from argparse for {argv!r}")
        finally:
            sys.stdin.close()
            sys.stdin, sys.stdout, sys.stderr = saved
            os.environ.update(env)
    text = err.getvalue()
    if rc not in (0, 1, 2):
        raise Finding(f"pymq {argv!r} returned {rc!r}")
    if "Traceback" in text:
        raise Finding(f"pymq {argv!r} printed a traceback:\n{text[-3000:]}")
    if rc and not text.strip():
        raise Finding(f"pymq {argv!r} failed ({rc}) without saying why")


# ==== config: from_env, from_json ===============================================================

def _usable(cfg: Any) -> str | None:
    """Why a BrokerConfig that validation accepted cannot be used, or None: its
    numbers are what the rest of pymq turns into nanoseconds, table sizes and
    C integers (a broker, a subscription, a publish)."""
    from pymq import _core
    for f in ("ack_timeout", "publish_timeout", "persistence_retention_seconds",
              "persistence_fsync_interval", "persistence_close_timeout", "group_idle_timeout"):
        v = getattr(cfg, f)
        if v is not None and not math.isfinite(v):
            return f"{f}={v!r}"
    for f in ("ack_timeout", "publish_timeout"):
        if getattr(cfg, f) * 1e9 >= 2.0 ** 63:
            return f"{f}={getattr(cfg, f)!r} is past int64 nanoseconds"
    if cfg.max_retries > _core.lib.PMQ_MAX_RETRIES:
        return f"max_retries={cfg.max_retries} is over the ring's {_core.lib.PMQ_MAX_RETRIES}"
    try:
        _core.ring_size(_core.ring_params(cfg.ring_capacity, cfg.max_message_bytes))
    except (ValueError, OverflowError) as e:
        return f"ring_bytes={cfg.ring_bytes}, max_message_bytes={cfg.max_message_bytes}: {e}"
    try:
        back = type(cfg).from_json(cfg.to_json())
    except ValueError as e:
        return f"to_json does not read back: {e}"
    if back != cfg:
        return "to_json reads back as another config"
    return None


FIELDS = ["NAME", "PERSISTENCE_ENABLED", "PERSISTENCE_DIR", "ACK_TIMEOUT", "MAX_RETRIES",
          "RING_BYTES", "MAX_MESSAGE_BYTES", "PUBLISH_TIMEOUT", "ADMIN_HOST", "ADMIN_PORT",
          "PERSISTENCE_SEGMENT_BYTES", "PERSISTENCE_RETENTION_BYTES",
          "PERSISTENCE_RETENTION_SECONDS", "PERSISTENCE_FSYNC", "PERSISTENCE_FSYNC_INTERVAL",
          "PERSISTENCE_CLOSE_TIMEOUT", "GROUP_IDLE_TIMEOUT", "GROUP_IDLE_EXPIRE"]


def target_config(data: bytes) -> None:
    from pymq.config import BrokerConfig
    env_bytes, json_bytes = _split(data, 2)
    environ = {}
    for item in env_bytes.split(b"\x00"):
        if not item:
            continue
        key = "PYMQ_" + FIELDS[item[0] % len(FIELDS)]
        environ[key] = item[1:].decode("utf-8", "surrogateescape")
    for how, make in (("from_env", lambda: BrokerConfig.from_env(environ)),
                      ("from_json", lambda: BrokerConfig.from_json(
                          json_bytes.decode("utf-8", "surrogateescape")))):
        try:
            cfg = make()
        except ValueError:
            continue  # documented: a bad value (InvalidName is one)
        except Exception as e:
            raise Finding(f"BrokerConfig.{how} raised {type(e).__name__}: {e}") from e
        why = _usable(cfg)
        if why:
            raise Finding(f"BrokerConfig.{how} accepted a config pymq cannot use: {why}")


# ==== token: a liveness token file's bytes and name ===============================================

def target_token(data: bytes) -> None:
    from pymq import segments
    content, name = _split(data, 2)
    root = _tmp("token")
    path = os.path.join(root, "pymq.fz..proc.0000000000000001")
    with open(path, "wb") as f:
        f.write(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        info = segments.read_token_info(fd)
    finally:
        os.close(fd)
    if not isinstance(info, dict):
        raise Finding(f"read_token_info gave {info!r}")
    dead = segments._pid_says_dead(info)
    if not isinstance(dead, bool):
        raise Finding(f"_pid_says_dead gave {dead!r}")
    got = segments.probe_token(path)  # nobody holds its lock: dead, whatever it says
    if got is None:
        raise Finding("probe_token said alive of a token nobody holds")
    got.close()
    value = segments.token_of(name.decode("utf-8", "surrogateescape"))
    if value is not None and not isinstance(value, int):
        raise Finding(f"token_of gave {value!r}")


# ==== known bugs ===================================================================
# Bugs found and recorded (each by a strict xfail test in tests/test_fuzz_parsers.py):
# with --skip-known (the CI run, long runs) an input that meets one of them is
# counted, not a crash, so that fuzzing goes on past it. An entry: the
# exception's type and where it was raised, as the end of the chain of pymq
# frames ("file:function>file:function"); for a Finding, the start of its message.
KNOWN: dict[str, list[tuple[str, str]]] = {
    # none open. Each bug found so far (ts of inf, NaN or past int64 ns in a log line;
    # groups.json entries the ring refuses; BrokerConfig numbers pymq cannot use) is
    # fixed and has its regression test in tests/test_fuzz_parsers.py. A new one goes
    # here as  "name": [(exception type, "file:function>...")]  while it stands.
}


def known(e: BaseException) -> str | None:
    """The known bug an exception is, or None."""
    import traceback
    chain = ">".join(f"{f.filename.split('/pymq/')[-1]}:{f.name}"
                     for f in traceback.extract_tb(e.__traceback__) if "/pymq/" in f.filename)
    for bug, places in KNOWN.items():
        for kind, place in places:
            if type(e).__name__ != kind:
                continue
            if (str(e).startswith(place) if kind == "Finding" else chain.endswith(place)):
                return bug
    return None


def _guarded(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        try:
            fn(data)
        except Exception as e:
            if known(e) is None:
                raise
    return target


# ==== plumbing ==========================================================================================

TARGETS: dict[str, Callable[[bytes], None]] = {
    "log": target_log, "checkpoint": target_checkpoint, "admin": target_admin, "cli": target_cli,
    "config": target_config, "token": target_token}

_TMP: dict[str, str] = {}


def _tmp(what: str) -> str:
    """A folder of this process for a target's files (removed by the driver)."""
    if what not in _TMP:
        base = os.environ.get("PYMQ_FUZZ_TMP") or tempfile.mkdtemp(prefix="pymq-fuzz-")
        _TMP[what] = os.path.join(base, what)
        os.makedirs(_TMP[what], exist_ok=True)
    return _TMP[what]


_NAMES = [0]


def _fuzz_name(kind: str = "") -> str:
    """A broker name of this process (PYMQ_FUZZ_NAME: what the driver removes)."""
    prefix = os.environ.get("PYMQ_FUZZ_NAME") or f"fzp{os.getpid()}"
    if kind:
        return f"{prefix}{kind}"
    _NAMES[0] += 1
    return f"{prefix}r{_NAMES[0] % 4}"


def seeds(target: str) -> list[bytes]:
    """Starting inputs of a target."""
    line = b'{"seq":%d,"ts":1700000000.000001,"payload":"aGVsbG8="}\n'
    good = b"".join(line % s for s in range(1, 6))
    if target == "log":
        return [b"\x00" + good, b"\x01" + good + b"\xff\xfe" + line % 9 + b'{"seq":1',
                b"\x02" + good + b"\xff\xfe" + b"not json\n" + line % 7 + b"\xff\xfe" + line % 3,
                b"\x40" + line % 2 + line % 1 + b"\n\n" + b'{"seq":true,"ts":1,"payload":""}\n']
    if target == "checkpoint":
        st = {"version": 1, "next_seq": 6, "groups": [
            {"name": "g", "ack": True, "position": 2, "acked": [3, 4]},
            {"name": "p", "ack": False, "position": 1, "acked": []}]}
        return [json.dumps(st).encode() + b"\xff\xfe" + good, json.dumps(st).encode(),
                b'{"version":1,"next_seq":1,"groups":[]}', b"[]", b"{"]
    if target == "admin":
        return [b"\x00GET /stats HTTP/1.1\r\nHost: localhost\r\n\r\n",
                b"\x01GET /stats/t?token=s3cret HTTP/1.1\r\n\r\n",
                b"\x03GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;q=0.5\r\n"
                b"Authorization: Bearer s3cret\r\nHost: 127.0.0.1:8080\r\n\r\n",
                b"\x02HEAD /history?since=1 HTTP/1.0\r\nHost: [::1]:80\r\n\r\n",
                b"\x00GET / HTTP/1.1\r\n\r\n", b"\x00POST /health HTTP/1.1\r\n\r\n",
                b"\x00GET /stats/%2e%2e HTTP/1.1\r\n\r\n"]
    if target == "cli":
        return [b"\x01\x00t\x00hi\xff\xfe", b"\x01\x00t\x00-\xff\xfeline1\nline2\n",
                b"\x00\x00t", b"\x02\x00t\x01", b"\x06\x00t\x00--ack", b"\x03\x00t\x00g",
                b"\x05", b"\x07"]
    if target == "config":
        return [b"\x05" + b"65536" + b"\x00\x03" + b"0.5" + b"\xff\xfe" + b'{"name":"x"}',
                b"\x0e" + b"always" + b"\x00\x10" + b"5" + b"\x00\x11" + b"yes",
                b"\xff\xfe" + json.dumps({"ack_timeout": 1.5, "max_retries": 2}).encode()]
    if target == "token":
        return [json.dumps({"pid": os.getpid(), "start": 1.0, "pidns": "pid:[1]"}).encode()
                + b"\xff\xfepymq.x..proc.00000000000000ff", b"{}", b"\xff\xfe..proc."]
    raise KeyError(target)


# libFuzzer dictionaries: tokens its mutations insert (the content, as bytes)
_JSON_WORDS = ['"seq"', '"ts"', '"payload"', '"groups"', '"next_seq"', '"name"', '"ack"',
               '"position"', '"acked"', '"version"', "Infinity", "-Infinity", "NaN", "1e999",
               "-1", "0", "true", "false", "null", "18446744073709551616", "9223372036854775808",
               '"\\ud800"', '"~persist"', '""', "[]", "{}", "\n", "=", '"AAAA"', "1.5e18"]
DICTIONARIES = {
    "log": _JSON_WORDS, "checkpoint": _JSON_WORDS, "config": _JSON_WORDS + [
        '"ring_bytes"', '"max_message_bytes"', '"ack_timeout"', '"publish_timeout"',
        '"max_retries"', '"admin_port"', '"persistence_fsync"', "inf", "nan", "1e308", "0x10",
        "4096", "65536", "yes", "none", "always", "interval", "never"],
    "token": _JSON_WORDS + ['"pid"', '"start"', '"pidns"', '"pid:[4026531836]"', "..proc."],
    "admin": ["GET", "HEAD", "POST", " HTTP/1.1", " HTTP/1.0", " HTTP/2.0", "\r\n", "Host: ",
              "Authorization: Bearer ", "Accept: ", "application/openmetrics-text", ";q=",
              "/stats", "/stats/", "/metrics", "/health", "/history", "?since=", "?token=",
              "%2e", "%2F", "%00", "%ff", "[::1]", "localhost", "127.0.0.1", ":8080", "s3cret",
              "nan", "inf", "1e999"],
    "cli": ["--name", "--group", "--ack", "--count", "--timeout", "--start", "--json", "--admin",
            "--help", "earliest", "latest", "nan", "inf", "-1", "1e999", "\x00", "\n"],
}


def _dict_line(word: str) -> str:
    """One libFuzzer dictionary entry: "..." with \\xNN for what is not plain."""
    out = "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}"
                  for b in word.encode("utf-8", "surrogateescape"))
    return f'"{out}"\n'


def fuzz(target: str, libfuzzer_args: list[str], skip_known: bool = False) -> None:
    """Run one target under atheris (never returns)."""
    import atheris
    with atheris.instrument_imports(include=["pymq"]):
        import pymq  # noqa: F401
        import pymq.admin.routes  # noqa: F401
        import pymq.admin.server  # noqa: F401
        import pymq.cli  # noqa: F401
        import pymq.config  # noqa: F401
        import pymq.persistence  # noqa: F401
        import pymq.segments  # noqa: F401
    fn = _guarded(TARGETS[target]) if skip_known else TARGETS[target]
    atheris.Setup([sys.argv[0], *libfuzzer_args], fn)
    atheris.Fuzz()


def run(target: str, runs: int | None = None, seconds: float | None = None, seed: int = 1,
        corpus: str | None = None, crashes: str | None = None,
        skip_known: bool = True) -> dict[str, Any]:
    """Fuzz one target in a process of its own, from its seeds (and a corpus):
    figures, and the input that crashed it (atheris stops at the first)."""
    work = tempfile.mkdtemp(prefix=f"pymq-fuzz-{target}-")
    name = f"fzp{os.getpid() % 100000}{target[:3]}"
    try:
        seed_dir = os.path.join(work, "seeds")
        os.makedirs(seed_dir)
        for i, data in enumerate(seeds(target)):
            with open(os.path.join(seed_dir, f"seed{i}"), "wb") as f:
                f.write(data)
        crashes = crashes or os.path.join(OUT, "crashes", target)
        os.makedirs(crashes, exist_ok=True)
        corpus = corpus or os.path.join(work, "corpus")
        os.makedirs(corpus, exist_ok=True)
        words = os.path.join(work, "dict")
        with open(words, "w") as f:
            f.writelines(_dict_line(w) for w in DICTIONARIES.get(target, []))
        args = [f"-seed={seed}", "-timeout=30", "-rss_limit_mb=4096", "-print_final_stats=1",
                f"-artifact_prefix={crashes}/", f"-dict={words}", corpus, seed_dir]
        if runs is not None:
            args.insert(0, f"-runs={runs}")
        if seconds is not None:
            args.insert(0, f"-max_total_time={int(seconds)}")
        before = set(os.listdir(crashes))
        env = dict(os.environ, PYMQ_FUZZ_NAME=name, PYMQ_FUZZ_TMP=work)
        start = time.monotonic()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--target", target,
                               *(["--skip-known"] if skip_known else []), "--", *args], capture_output=True, text=True, errors="replace",
                              env=env)
        took = time.monotonic() - start
        import re
        m = re.search(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)", proc.stderr)
        found = sorted(set(os.listdir(crashes)) - before)
        return {"target": target, "returncode": proc.returncode, "seconds": round(took, 1),
                "execs": int(m.group(1)) if m else None, "cov": int(m.group(2)) if m else None,
                "corpus": int(m.group(4)) if m else None,
                "crashes": [os.path.join(crashes, c) for c in found],
                "report": proc.stderr[-6000:] if proc.returncode else ""}
    finally:
        from pymq import segments
        for n in [name + "cli"] + [f"{name}r{k}" for k in range(4)]:
            segments.remove_namespace(n)
        shutil.rmtree(work, ignore_errors=True)


def replay(target: str, data: bytes) -> None:
    """Run one input through a target, in this process (raises what it finds)."""
    try:
        TARGETS[target](data)
    finally:
        _cleanup()


def _cleanup() -> None:
    global _CLI_BROKER
    if _CLI_BROKER is not None:
        _CLI_BROKER.close()
        _CLI_BROKER = None
    for path in _TMP.values():
        shutil.rmtree(path, ignore_errors=True)
    _TMP.clear()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="all", choices=["all", *TARGETS])
    p.add_argument("--seconds", type=float, default=None, help="per target (driver mode)")
    p.add_argument("--runs", type=int, default=None, help="per target (driver mode)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-corpus", action="store_true",
                   help="grow build/fuzz/corpus/py-<target> (and start from it)")
    p.add_argument("--replay", default=None, help="run this one input (with --target)")
    p.add_argument("--skip-known", action="store_true",
                   help="an input that meets a known (recorded) bug is not a crash")
    p.add_argument("--no-skip-known", dest="skip_known_runs", action="store_false",
                   help="(driver) known bugs are crashes too")
    p.add_argument("--json", default=None)
    p.add_argument("libfuzzer", nargs="*", help="after --: libFuzzer's own arguments, "
                                                "running one target in this process")
    args = p.parse_args(argv)
    if args.replay:
        with open(args.replay, "rb") as f:
            replay(args.target, f.read())
        print("no finding", file=sys.stderr)
        return 0
    if args.libfuzzer:
        fuzz(args.target, args.libfuzzer, args.skip_known)
        return 0
    if args.seconds is None and args.runs is None:
        args.seconds = 60
    results = []
    for t in (TARGETS if args.target == "all" else [args.target]):
        corpus = os.path.join(OUT, "corpus", "py-" + t) if args.keep_corpus else None
        r = run(t, args.runs, args.seconds, args.seed, corpus, skip_known=args.skip_known_runs)
        results.append(r)
        print(f"{t}: {r['execs']} executions in {r['seconds']} s, cov {r['cov']}, corpus "
              f"{r['corpus']}, exit {r['returncode']}"
              + (f", crash: {r['crashes']}" if r["crashes"] else ""), file=sys.stderr)
        if r["returncode"]:
            sys.stderr.write(r["report"][-3000:])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "results": results}, f,
                      indent=1)
    return 1 if any(r["returncode"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
