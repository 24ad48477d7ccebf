"""The HTTP admin server: /health, /stats, /stats/{topic}, /metrics and a live
dashboard at /, served by the supervisor process (standard library only).

Shape of the server, so that no client can take it down or wedge it:
- one event-loop thread accepts connections and reads request heads without
  blocking (selectors), with a total deadline per head (a slowloris client is
  dropped with 408 after REQUEST_TIMEOUT) and size caps (414 for a request
  line over MAX_REQUEST_LINE, 431 for a head over MAX_HEAD); it holds at most
  MAX_CONNECTIONS connections and leaves the rest in the kernel's backlog;
- a complete head goes to a bounded queue served by a fixed pool of worker
  threads; when the queue is full the loop answers 503 (Retry-After) at once;
- workers parse with http.server.BaseHTTPRequestHandler, answer one request
  per connection (Connection: close) with a write timeout, and hand the socket
  back to the loop, which drains what the client still sends and closes it
  (no reset that could eat the response);
- a handler exception is a 500 with a JSON error, logged (rate-limited) on
  stderr; requests themselves are not logged.

Every endpoint but /health requires `Authorization: Bearer <token>` (or
`?token=<token>`) when the server has a token (PYMQ_ADMIN_TOKEN).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import hmac
import ipaddress
import http.server
import io
import json
import math
import os
import queue
import re
import selectors
import socket
import sys
import threading
import time
import traceback
from base64 import b64encode
from urllib.parse import parse_qs, unquote, urlsplit

from .config import check_topic
from .errors import MQError

WORKERS = 8               # threads answering requests
QUEUE_SIZE = 64           # complete requests waiting for a worker; beyond: 503
MAX_CONNECTIONS = 256     # connections the loop reads heads of (or drains) at once
REQUEST_TIMEOUT = 5.0     # seconds to receive a whole request head
WRITE_TIMEOUT = 5.0       # seconds a response write may block
LINGER_TIMEOUT = 2.0      # seconds to drain a client after its response before closing
LINGER_BYTES = 1 << 20    # most bytes drained from a client after its response
MAX_REQUEST_LINE = 8192   # bytes; longer: 414
MAX_HEAD = 16384          # bytes of request line and headers; more: 431

JSON_TYPE = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
ALLOW = "GET, HEAD"

_ACCEPT, _WAKE = object(), object()


def log(msg: str) -> None:
    print(f"pymq admin [{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def _json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# -- the dashboard -----------------------------------------------------------------

def _load_dashboard() -> tuple[bytes, str]:
    """The page, and its Content-Security-Policy (hashes of its inline script
    and style: nothing else may run or style it)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard.html")
    with open(path, encoding="utf-8") as f:
        text = f.read()

    def hashes(tag):
        found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, re.S)
        return " ".join("'sha256-%s'" % b64encode(hashlib.sha256(s.encode()).digest()).decode()
                        for s in found) or "'none'"

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return text.encode("utf-8"), csp


_dashboard: tuple[bytes, str] | None = None


def dashboard() -> tuple[bytes, str]:
    global _dashboard
    if _dashboard is None:
        _dashboard = _load_dashboard()
    return _dashboard


# -- Prometheus text exposition format 0.0.4 -----------------------------------------

# (key in the stats dict, metric name without the pymq_ prefix, help)
BROKER_GAUGES = (
    ("supervisor_restarts", "supervisor_restarts", "Times the supervisor process was restarted."),
    ("reaped_processes", "reaped_processes", "Dead client processes reaped by the supervisor."),
    ("reaped_subscriptions", "reaped_subscriptions",
     "Subscriptions of dead processes removed by the supervisor."),
    ("last_sweep", "supervisor_last_sweep_timestamp_seconds",
     "When the supervisor last swept (epoch seconds)."),
    ("topics", "topics", "Topics of the broker."),
)
TOPIC_COUNTERS = (
    ("published", "published_total", "Messages published to the topic."),
    ("published_bytes", "published_bytes_total", "Payload bytes published to the topic."),
    ("publish_waits", "publish_waits_total", "Publishes that waited for ring space."),
    ("publish_refusals", "publish_refusals_total",
     "Publishes refused (pymq.Full): no ring space within their timeout."),
    ("expired", "expired_total", "Records reclaimed from the ring once no group needed them."),
    ("lock_recoveries", "lock_recoveries_total",
     "Topic locks recovered from a process that died holding them."),
    ("corrupt", "corrupt_total", "Corruptions detected in the topic's segment."),
)
TOPIC_GAUGES = (
    ("depth", "depth", "Messages the slowest group has yet to receive or ack (lag + pending)."),
    ("ring_bytes_used", "ring_bytes_used", "Ring bytes held for groups that still need them."),
    ("ring_bytes_retained", "ring_bytes_retained", "Ring bytes holding messages (with history)."),
    ("ring_bytes_capacity", "ring_bytes_capacity", "Data bytes of the topic's ring."),
)
GROUP_COUNTERS = (
    ("delivered", "delivered_total", "Deliveries to members of the group."),
    ("delivered_bytes", "delivered_bytes_total", "Payload bytes delivered to the group."),
    ("acked", "acked_total", "Deliveries acked by the group."),
    ("nacked", "nacked_total", "Deliveries nacked by the group."),
    ("redelivered", "redelivered_total", "Redeliveries in the group."),
    ("dead_lettered", "dead_lettered_total",
     "Messages of the group moved to the dead-letter topic after max_retries."),
    ("timeouts", "timeouts_total", "Deliveries of the group not acked within ack_timeout."),
)
GROUP_GAUGES = (
    ("members", "group_members", "Live subscriptions in the group."),
    ("lag", "group_lag", "Messages published that the group has not received yet."),
    ("pending", "group_pending", "Deliveries of the group awaiting an ack."),
    ("position", "group_position", "Sequence number of the group's next message."),
)


def escape_label_value(value) -> str:
    """A label value as the text format wants it: backslash, double quote and
    line feed escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value) -> str | None:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return None


class _Exposition:
    """Samples grouped by metric family; each family's HELP and TYPE once."""

    def __init__(self):
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value, labels=()) -> None:
        text = _number(value)
        if text is None:
            return  # absent or not a number: no sample rather than a wrong one
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = (kind, help_text, [])
        label_text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
        fam[2].append(f"pymq_{name}{{{label_text}}} {text}" if labels else f"pymq_{name} {text}")

    def text(self) -> str:
        out = []
        for name, (kind, help_text, samples) in self.families.items():
            out.append(f"# HELP pymq_{name} {_escape_help(help_text)}")
            out.append(f"# TYPE pymq_{name} {kind}")
            out.extend(samples)
        return "\n".join(out) + "\n"


def metrics_text(stats: dict, healthy: bool | None = None) -> str:
    """The stats dict (Client.stats()) in Prometheus text format 0.0.4."""
    exp = _Exposition()
    topics = stats.get("topics") or {}
    broker = {
        "supervisor_restarts": (stats.get("supervisor") or {}).get("restarts"),
        "last_sweep": (stats.get("supervisor") or {}).get("last_sweep"),
        "reaped_processes": stats.get("reaped_processes"),
        "reaped_subscriptions": stats.get("reaped_subscriptions"),
        "topics": len(topics),
    }
    if healthy is not None:
        exp.add("healthy", "gauge", "1 if the broker is healthy (GET /health is 200), else 0.",
                int(healthy))
    for key, name, help_text in BROKER_GAUGES:
        exp.add(name, "gauge", help_text, broker.get(key))
    for specs, kind in ((TOPIC_COUNTERS, "counter"), (TOPIC_GAUGES, "gauge")):
        for key, name, help_text in specs:
            for topic in sorted(topics):
                exp.add(name, kind, help_text, topics[topic].get(key), (("topic", topic),))
    for specs, kind in ((GROUP_COUNTERS, "counter"), (GROUP_GAUGES, "gauge")):
        for key, name, help_text in specs:
            for topic in sorted(topics):
                groups = topics[topic].get("groups") or {}
                for group in sorted(groups):
                    exp.add(name, kind, help_text, groups[group].get(key),
                            (("topic", topic), ("group", group)))
    return exp.text()


# -- requests ------------------------------------------------------------------------

class _SocketWriter(io.RawIOBase):
    """wfile: every write goes straight to the socket (sendall)."""

    def __init__(self, sock):
        self._sock = sock

    def writable(self):
        return True

    def write(self, b):
        self._sock.sendall(b)
        return len(b)


class _Handler(http.server.BaseHTTPRequestHandler):
    """One request whose head the event loop has read already (rfile)."""

    server_version = "pymq-admin"
    sys_version = ""
    protocol_version = "HTTP/1.1"        # every response says Connection: close
    default_request_version = "HTTP/1.0"  # answer a malformed request with headers

    def __init__(self, sock, addr, admin: "AdminServer", head: bytes):
        self._head = head
        self.admin = admin
        super().__init__(sock, addr, admin)

    def setup(self):
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = _SocketWriter(self.request)

    def finish(self):
        pass

    def log_message(self, format, *args):
        pass  # quiet: no line per request

    def version_string(self):
        return self.server_version

    def handle(self):
        self.close_connection = True
        self.command = None
        self.request_version = self.default_request_version
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if not self.raw_requestline.strip():
            self.send_error(400, "empty request")
            return
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.send_error(414, f"request line over {MAX_REQUEST_LINE} bytes")
            return
        if not self.parse_request():
            return
        try:
            code, body, ctype, headers = self.route()
        except Exception:
            self.admin.log_exception()
            code, body, ctype, headers = self.error(500, "internal server error")
        self.respond(code, body, ctype, headers)

    def respond(self, code: int, body: bytes, ctype: str, headers=()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Pymq-Time", f"{time.time():.6f}")
        self.send_header("Connection", "close")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        """http.server's errors (bad request line, too many headers, ...) as JSON."""
        if message is None:
            message = self.responses.get(code, ("error",))[0]
        self.respond(code, _json({"error": message}), JSON_TYPE,
                     (("Allow", ALLOW),) if code == 405 else ())

    # -- routing -------------------------------------------------------------------

    def route(self):
        """(status, body, content type, extra headers) of this request."""
        try:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=32)
        except ValueError:
            return self.error(400, "malformed request target")
        path = parts.path
        if not path.startswith("/"):
            return self.error(404, "not found")
        try:
            segs = [unquote(s, errors="strict") for s in path[1:].split("/")]
        except UnicodeDecodeError:
            return self.error(404, "not found")
        if len(segs) > 1 and segs[-1] == "":
            segs.pop()  # one trailing slash: /stats/ is /stats
        if any(s in (".", "..") or "/" in s or "\0" in s for s in segs):
            return self.error(404, "not found")
        if segs == [""]:
            endpoint, arg = self.page, None
        elif segs == ["health"]:
            endpoint, arg = self.health, None
        elif segs == ["stats"]:
            endpoint, arg = self.stats, None
        elif len(segs) == 2 and segs[0] == "stats":
            endpoint, arg = self.topic, segs[1]
        elif segs == ["metrics"]:
            endpoint, arg = self.metrics, None
        else:
            return self.error(404, "not found")
        if self.admin.loopback and not _loopback_host(self.headers.get("Host")):
            return self.error(421, "this server answers only requests for a loopback address")
        if self.command not in ("GET", "HEAD"):
            return 405, _json({"error": f"method {self.command} not allowed"}), JSON_TYPE, \
                (("Allow", ALLOW),)
        if endpoint.__name__ != "health" and not self.authorized(query):
            return 401, _json({"error": "a bearer token is required"}), JSON_TYPE, \
                (("WWW-Authenticate", 'Bearer realm="pymq"'),)
        try:
            return endpoint(arg)
        except MQError as e:  # the broker is closing, say: not our failure
            return self.error(503, str(e))

    def authorized(self, query) -> bool:
        want = self.admin.token
        if want is None:
            return True
        given = []
        auth = self.headers.get("Authorization", "")
        scheme, _, cred = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and cred.strip():
            given.append(cred.strip().encode("latin-1", "replace"))
        for value in query.get("token", ())[:1]:
            given.append(value.encode("utf-8", "surrogateescape"))
        ok = False
        for g in given:
            ok |= hmac.compare_digest(g, want)
        return ok

    @staticmethod
    def error(code: int, message: str):
        return code, _json({"error": message}), JSON_TYPE, ()

    def health(self, _):
        try:
            ok, details = self.admin.call("health")
            details = dict(details)
        except Exception as e:  # an unhealthy broker may fail to say why
            ok, details = False, {"problems": [f"health check failed: {e}"]}
        if ok:
            details.pop("problems", None)
            return 200, _json({"status": "ok", **details}), JSON_TYPE, ()
        problems = list(details.pop("problems", None) or ["unhealthy"])
        return 503, _json({"status": "unhealthy", "problems": problems, **details}), JSON_TYPE, ()

    def stats(self, _):
        return 200, _json(self.admin.call("stats")), JSON_TYPE, ()

    def topic(self, topic: str):
        try:
            check_topic(topic)
        except ValueError:
            return self.error(404, "invalid topic name")
        figures = (self.admin.call("stats").get("topics") or {}).get(topic)
        if figures is None:
            return self.error(404, f"no topic {topic!r}")
        return 200, _json(figures), JSON_TYPE, ()

    def metrics(self, _):
        stats = self.admin.call("stats")
        try:
            healthy = bool(self.admin.call("health")[0])
        except Exception:
            healthy = False
        return 200, metrics_text(stats, healthy).encode("utf-8"), METRICS_TYPE, ()

    def page(self, _):
        body, csp = dashboard()
        return 200, body, HTML_TYPE, (("Content-Security-Policy", csp),
                                      ("Referrer-Policy", "no-referrer"),
                                      ("X-Frame-Options", "DENY"))


# -- the server ----------------------------------------------------------------------

class _Conn:
    __slots__ = ("sock", "addr", "buf", "deadline", "lingering", "drained")

    def __init__(self, sock, addr, deadline):
        self.sock, self.addr, self.deadline = sock, addr, deadline
        self.buf = b""
        self.lingering = False
        self.drained = 0


def _canned(code: int, message: str, retry_after: int | None = None) -> bytes:
    body = _json({"error": message})
    reason = http.server.BaseHTTPRequestHandler.responses.get(code, ("Error",))[0]
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {JSON_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n")
    if retry_after is not None:
        head += f"Retry-After: {retry_after}\r\n"
    return head.encode() + b"\r\n" + body


def _loopback_host(host: str | None) -> bool:
    """Whether a Host header names this machine's loopback (or is absent)."""
    if not host:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AdminServer:
    """Serves the admin endpoints of `source` (an object with stats() -> dict
    and health() -> (ok, details)) on host:port; port 0 picks a free one
    (self.port). token: None, or the bearer token every endpoint but /health
    requires. close() stops it and frees the port."""

    def __init__(self, source, host: str, port: int, token: str | None, *,
                 workers: int = WORKERS, queue_size: int = QUEUE_SIZE,
                 max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT):
        self.source = source
        self.token = token.encode("utf-8", "surrogateescape") if token else None
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._source_lock = threading.Lock()  # the source is not made for concurrent calls
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._handback: collections.deque = collections.deque()
        self._conns: set[_Conn] = set()
        self._closing = False
        self._closed = False
        self._errors_logged = 0
        self._last_error_log = 0.0

        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host or None, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        except socket.gaierror as e:  # an OSError with a real errno, for admin_errno
            raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {e.strerror}") from None
        self._lsock = socket.socket(family, kind, proto)
        try:
            self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._lsock.bind(addr)
            self._lsock.listen(128)
            self._lsock.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except BaseException:
            self._lsock.close()
            raise
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.server_address = self._lsock.getsockname()
        # On loopback, only requests addressed to a loopback name are served: a
        # web page elsewhere that rebinds its DNS name to 127.0.0.1 cannot read it.
        self.loopback = ipaddress.ip_address(self.server_address[0].split("%")[0]).is_loopback
        self.host = self.server_address[0]
        self.port = self.server_address[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._lsock, selectors.EVENT_READ, _ACCEPT)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._accepting = True
        self._accept_resume = 0.0

        self._workers = [threading.Thread(target=self._work, daemon=True,
                                          name=f"pymq-admin-worker-{i}") for i in range(workers)]
        for t in self._workers:
            t.start()
        self._loop = threading.Thread(target=self._run, daemon=True, name="pymq-admin-loop")
        self._loop.start()

    # -- what the handlers call ----------------------------------------------------

    def call(self, what: str):
        with self._source_lock:
            return getattr(self.source, what)()

    def log_exception(self, what: str = "answering a request (answered 500)") -> None:
        """Log the exception being handled: the first ones in full, then at most
        one a minute."""
        now = time.monotonic()
        self._errors_logged += 1
        if self._errors_logged <= 3 or now - self._last_error_log > 60:
            self._last_error_log = now
            log(f"error {what}:\n" + traceback.format_exc().rstrip())

    # -- the event loop --------------------------------------------------------------

    def _run(self) -> None:
        next_expiry = 0.0
        while not self._closing:
            try:
                for key, _ in self._sel.select(0.25):
                    if key.data is _ACCEPT:
                        self._accept()
                    elif key.data is _WAKE:
                        self._wake_drain()
                    else:
                        self._readable(key.data)
                now = time.monotonic()
                if now >= next_expiry:
                    next_expiry = now + 0.1
                    self._expire(now)
                self._update_accepting(now)
            except Exception:
                self.log_exception("in the event loop")
                time.sleep(0.01)
        for conn in list(self._conns):
            self._drop(conn)
        while self._handback:
            self._close_sock(self._handback.popleft())

    def _accept(self) -> None:
        now = time.monotonic()
        while len(self._conns) < self.max_connections:
            try:
                sock, addr = self._lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, say: pause instead of spinning
                log(f"accept: {e}")
                self._accept_resume = now + 0.1
                self._set_accepting(False)
                return
            sock.setblocking(False)
            conn = _Conn(sock, addr, now + self.request_timeout)
            self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _update_accepting(self, now: float) -> None:
        want = len(self._conns) < self.max_connections and now >= self._accept_resume
        self._set_accepting(want)

    def _set_accepting(self, on: bool) -> None:
        if on != self._accepting:
            self._accepting = on
            if on:
                self._sel.register(self._lsock, selectors.EVENT_READ, _ACCEPT)
            else:
                self._sel.unregister(self._lsock)

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536 if conn.lingering else 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if conn.lingering:
            conn.drained += len(data)
            if not data or conn.drained > LINGER_BYTES:
                self._drop(conn)
            return
        if not data:  # the client is done sending: answer what came, if anything
            if conn.buf.strip():
                self._dispatch(conn, conn.buf)
            else:
                self._drop(conn)
            return
        buf = conn.buf + data
        if not conn.buf:
            buf = buf.lstrip(b"\r\n")  # empty lines before a request line are allowed
        conn.buf = buf
        nl = buf.find(b"\n")
        if nl > MAX_REQUEST_LINE or (nl < 0 and len(buf) > MAX_REQUEST_LINE):
            self._reject(conn, 414, f"request line over {MAX_REQUEST_LINE} bytes")
            return
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            end += 4
        else:
            end = buf.find(b"\n\n")
            if end >= 0:
                end += 2
        if 0 <= end <= MAX_HEAD:
            self._dispatch(conn, buf[:end])
        elif len(buf) > MAX_HEAD:
            self._reject(conn, 431, f"request head over {MAX_HEAD} bytes")

    def _dispatch(self, conn: _Conn, head: bytes) -> None:
        try:
            self._queue.put_nowait((conn.sock, conn.addr, head))
        except queue.Full:
            self._reject(conn, 503, "the admin server is busy; retry", retry_after=1)
            return
        self._sel.unregister(conn.sock)
        self._conns.discard(conn)

    def _reject(self, conn: _Conn, code: int, message: str, retry_after=None) -> None:
        """Answer from the loop (never blocks) and drain the client before closing."""
        try:
            conn.sock.send(_canned(code, message, retry_after))
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(conn)
            return
        self._linger(conn)

    def _linger(self, conn: _Conn) -> None:
        conn.lingering = True
        conn.buf = b""
        conn.deadline = time.monotonic() + LINGER_TIMEOUT

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns if c.deadline <= now]:
            if conn.lingering:
                self._drop(conn)
            else:  # slowloris, or an idle connection
                self._reject(conn, 408, f"no complete request within {self.request_timeout:g} s")

    def _drop(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            try:
                self._sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        self._close_sock(conn.sock)

    @staticmethod
    def _close_sock(sock) -> None:
        try:
            sock.close()
        except OSError:
            pass

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the buffer is full: a wake-up is pending anyway

    def _wake_drain(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        now = time.monotonic()
        while self._handback:
            sock = self._handback.popleft()
            if len(self._conns) >= self.max_connections + self._queue.maxsize + len(self._workers):
                self._close_sock(sock)
                continue
            conn = _Conn(sock, None, now)
            self._linger(conn)
            self._conns.add(conn)
            try:
                self._sel.register(sock, selectors.EVENT_READ, conn)
            except (ValueError, OSError):
                self._conns.discard(conn)
                self._close_sock(sock)

    # -- the workers -----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            sock, addr, head = item
            try:
                sock.setblocking(True)
                sock.settimeout(WRITE_TIMEOUT)
                _Handler(sock, addr, self, head)
            except OSError:
                pass  # the client went away
            except Exception:
                self.log_exception()
            try:
                sock.shutdown(socket.SHUT_WR)
                sock.setblocking(False)
            except OSError:
                self._close_sock(sock)
                continue
            if self._closing:
                self._close_sock(sock)
            else:
                self._handback.append(sock)
                self._wake()

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving and free the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._wake()
        self._loop.join(5)
        self._close_sock(self._lsock)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._close_sock(item[0])
        for _ in self._workers:
            try:
                self._queue.put(None, timeout=1)
            except queue.Full:
                break
        deadline = time.monotonic() + 2.0  # a worker stuck in the source is a daemon thread
        for t in self._workers:
            t.join(max(0.0, deadline - time.monotonic()))
        while self._handback:
            self._close_sock(self._handback.popleft())
        try:
            self._sel.close()
        except Exception:
            pass
        self._close_sock(self._wake_r)
        self._close_sock(self._wake_w)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
