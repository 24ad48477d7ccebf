"""The HTTP engine of the admin server: an asyncio server on an event loop in
a daemon thread of its own (the supervisor process is synchronous), which
reads requests, admits them, has routes.py answer them and writes the answers.
Standard library only.

Shape, so that no client can take it down, wedge it or starve /health:
- the listening socket is bound in the constructor (errors are OSErrors with
  their errno); `asyncio.start_server` serves it; RLIMIT_NOFILE's soft limit
  is raised to the hard one when it is too low for max_connections;
- one request per connection (every answer says Connection: close); the whole
  request head must arrive within request_timeout (a slowloris client gets
  408, trickling does not extend it); StreamReader's limit caps a line, so a
  request line over MAX_REQUEST_LINE is 414 and a head over MAX_HEAD (or over
  MAX_HEADERS lines) is 431;
- at most max_connections connections are kept: over it, the oldest
  connection still sending its head (then the oldest one draining after its
  answer) is closed with a 503, so idle connections never keep a new one,
  a Kubernetes probe say, from being read;
- an admitted request runs in a lane: /health in one of its own, the
  endpoints that call stats() in another, the page and /history (which call
  nothing) in a third; a lane answers a few requests at once (an
  asyncio.Semaphore: `workers` for the stats lane) and lets some more wait
  (`queue_size`); beyond, 503 with Retry-After at once;
- the source's blocking calls run in daemon threads, health() on one and
  stats() on another, so that a slow stats() never delays a probe; concurrent
  requests share one call (each answer comes from a call that began after the
  request arrived) and give up after a timeout (503);
- a handler exception is a 500 with a JSON error, logged (rate-limited) on
  the "pymq.admin" logger; requests themselves are not logged;
- after its answer, the server half-closes and drains what the client still
  sends (LINGER_*) before closing, so that no reset eats the answer;
- the history (history.py) is sampled from stats() about once a second;
- close() stops it all, frees the port and joins the loop's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import errno
import http
import http.client
import io
import ipaddress
import itertools
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ..errors import MQError
from . import history as history_mod
from . import routes
from .routes import Request, Response, error

log = logging.getLogger("pymq.admin")

WORKERS = 8               # requests of a lane answered at once
QUEUE_SIZE = 64           # requests of a lane waiting for that; beyond: 503
HEALTH_WORKERS = 16       # the same for /health, a lane of its own
HEALTH_QUEUE_SIZE = 256
LOCAL_WORKERS = 16        # the same for / and /history (no call into the broker)
LOCAL_QUEUE_SIZE = 256
MAX_CONNECTIONS = 256     # connections kept open; over it the oldest idle one is closed
REQUEST_TIMEOUT = 5.0     # seconds to receive a whole request head
WRITE_TIMEOUT = 5.0       # seconds to hand an answer to the kernel
LINGER_TIMEOUT = 2.0      # seconds to drain a client after its answer before closing
LINGER_BYTES = 1 << 20    # most bytes drained from a client after its answer
MAX_REQUEST_LINE = 8192   # bytes; longer: 414 (also the longest header line: 431)
MAX_HEAD = 16384          # bytes of request line and headers; more: 431
MAX_HEADERS = 100         # header lines; more: 431
STATS_TIMEOUT = 10.0      # seconds a request waits for stats(); then 503
HEALTH_TIMEOUT = 5.0      # seconds a probe waits for health(); then 503 unhealthy
BACKLOG = 1024            # the listening socket's backlog
FD_HEADROOM = 256         # descriptors the supervisor needs besides the connections

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/(\d{1,3})\.(\d{1,3})")

T = TypeVar("T")


class AdminServer:
    """Serves the admin endpoints of `source` (an object with stats() -> dict
    and health() -> (ok, details), both blocking) on host:port; port 0 picks a
    free one (self.port). token: None, or the bearer token every endpoint but
    /health requires. workers and queue_size: requests answered at once and
    waiting, per lane. history_interval: seconds between samples of the
    history (None: no sampling). close() stops it and frees the port."""

    def __init__(self, source: Any, host: str, port: int, token: str | None, *,
                 workers: int = WORKERS, queue_size: int = QUEUE_SIZE,
                 max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT,
                 history_interval: float | None = history_mod.INTERVAL,
                 history_span: float = history_mod.SPAN,
                 stats_timeout: float = STATS_TIMEOUT,
                 health_timeout: float = HEALTH_TIMEOUT) -> None:
        self.source = source
        self.token = token.encode("utf-8", "surrogateescape") if token else None
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.stats_timeout = stats_timeout
        self.health_timeout = health_timeout
        self._workers, self._queue_size = workers, queue_size
        self._history = history_mod.History(history_span, history_interval or 1.0)
        self._history_interval = history_interval
        self._closed = False
        self._errors_logged = 0
        self._last_error_log = 0.0
        _raise_fd_limit(max_connections + FD_HEADROOM)

        self._lsock = _listen(host, port)
        self.server_address = self._lsock.getsockname()
        self.host: str = self.server_address[0]
        self.port: int = self.server_address[1]
        # On loopback, only requests addressed to a loopback name are served: a
        # web page elsewhere that rebinds its DNS name to 127.0.0.1 cannot read it.
        self.loopback = ipaddress.ip_address(self.host.split("%")[0]).is_loopback

        self._stats_thread = _DaemonExecutor("pymq-admin-stats")
        self._health_thread = _DaemonExecutor("pymq-admin-health")
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_exception)
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pymq-admin-loop")
        self._thread.start()
        try:
            self._started.result(timeout=10)
        except BaseException:
            self.close()
            raise

    # -- the Backend of routes.py ----------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """The source's stats(), shared with concurrent requests."""
        return await self._call(self._stats_calls, self.stats_timeout, "stats")

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """The source's health(), shared with concurrent probes."""
        return await self._call(self._health_calls, self.health_timeout, "health")

    def history(self, since: float | None) -> dict[str, Any]:
        return self._history.to_json(since)

    async def _call(self, calls: _Coalesced[T], timeout: float, what: str) -> T:
        try:
            return await asyncio.wait_for(asyncio.shield(calls.next()), timeout)
        except TimeoutError:
            raise routes.Unavailable(
                f"the broker did not answer ({what}) within {timeout:g} s") from None

    # -- the loop's thread -------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 - handed to the constructor or logged
            if not self._started.done():
                self._started.set_exception(e)
            else:
                log.exception("the admin server's event loop failed")
        finally:
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._conns: dict[_Conn, None] = {}     # open connections, oldest first
        self._reading: dict[_Conn, None] = {}   # of which still sending their head
        self._lingering: dict[_Conn, None] = {}  # of which drained after their answer
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count()
        self._lanes = {"source": _Lane(self._workers, self._queue_size),
                       "health": _Lane(HEALTH_WORKERS, HEALTH_QUEUE_SIZE),
                       "local": _Lane(LOCAL_WORKERS, LOCAL_QUEUE_SIZE)}
        self._stats_calls: _Coalesced[dict[str, Any]] = _Coalesced(
            self._stats_thread, lambda: self.source.stats())
        self._health_calls: _Coalesced[tuple[bool, dict[str, Any]]] = _Coalesced(
            self._health_thread, lambda: self.source.health())
        server = await asyncio.start_server(self._serve, sock=self._lsock, backlog=BACKLOG,
                                            limit=MAX_REQUEST_LINE)
        sampler = None
        if self._history_interval:
            sampler = asyncio.create_task(self._sample(self._history_interval))
        self._started.set_result(None)
        await self._stop.wait()
        server.close()  # closes the listening socket: the port is free
        for conn in list(self._conns):
            conn.writer.transport.abort()
        tasks = list(self._tasks) + ([sampler] if sampler else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _sample(self, interval: float) -> None:
        """Add a sample of stats() to the history about every `interval` s."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                figures = await self.stats()
            except (routes.Unavailable, MQError) as e:  # stuck, or closing
                log.warning("history: no sample: %s", e)
            except Exception:
                self._log_exception("sampling the history")
            else:
                self._history.add(time.time(), figures)
            # a cadence, not a synchronisation: nothing to wait for but the clock
            await asyncio.sleep(max(0.0, interval - (loop.time() - began)))

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(next(self._ids), writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._conns[conn] = None
        self._reading[conn] = None
        self._evict()
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    head = await _read_head(reader)
            except TimeoutError:
                head = error(408, f"no complete request within {self.request_timeout:g} s")
            self._reading.pop(conn, None)
            if conn.evicted or head is None:
                return
            if isinstance(head, Response):
                answer, method = head, ""
            else:
                answer, method = await self._answer(head), head.method
            if conn.evicted:
                return
            await self._write(writer, answer, method == "HEAD")
            await self._linger(conn, reader)
        except (ConnectionError, TimeoutError, OSError):
            pass  # the client went away, or does not read
        except asyncio.CancelledError:
            pass  # close(): end as a task that finished (asyncio.streams asks its exception())
        finally:
            self._tasks.discard(task)
            self._forget(conn)
            writer.close()

    async def _answer(self, request: Request) -> Response:
        endpoint = routes.resolve(request, self)
        if isinstance(endpoint, Response):
            return endpoint
        lane = self._lanes[endpoint.lane]
        if not await lane.enter():
            return error(503, "the admin server is busy; retry", (("Retry-After", "1"),))
        try:
            return await endpoint(self)
        except Exception:
            self._log_exception()
            return error(500, "internal server error")
        finally:
            lane.leave()

    async def _write(self, writer: asyncio.StreamWriter, answer: Response, head_only: bool) -> None:
        writer.write(_head(answer))
        if not head_only and answer.status >= 200 and answer.status not in (204, 304):
            writer.write(answer.body)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    async def _linger(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        """Half-close, then read what the client still sends (a request body we
        did not want, say) until it closes, so that closing sends no reset that
        could destroy the answer before the client read it."""
        if conn.writer.can_write_eof():
            conn.writer.write_eof()
        self._lingering[conn] = None
        drained = 0
        try:
            async with asyncio.timeout(LINGER_TIMEOUT):
                while drained <= LINGER_BYTES:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    drained += len(chunk)
        except TimeoutError:
            pass

    def _evict(self) -> None:
        """Over max_connections, close the oldest connection still sending its
        head (with a 503), else the oldest one draining after its answer."""
        while len(self._conns) > self.max_connections:
            pool = self._reading or self._lingering
            if not pool:
                return  # every connection is being answered: those are bounded by the lanes
            conn = next(iter(pool))
            conn.evicted = True
            if pool is self._reading:
                conn.writer.write(_head(error(503, "too many connections; retry",
                                              (("Retry-After", "1"),)), with_body=True))
            self._forget(conn)
            conn.writer.close()

    def _forget(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)
        self._reading.pop(conn, None)
        self._lingering.pop(conn, None)

    # -- logging ---------------------------------------------------------------------------

    def _log_exception(self, what: str = "answering a request (answered 500)") -> None:
        """Log the exception being handled: the first ones in full, then at most
        one a minute."""
        now = time.monotonic()
        self._errors_logged += 1
        if self._errors_logged <= 3 or now - self._last_error_log > 60:
            self._last_error_log = now
            log.error("error %s", what, exc_info=True)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's own errors (out of descriptors at accept, say), rate-limited."""
        now = time.monotonic()
        self._errors_logged += 1
        if self._errors_logged <= 3 or now - self._last_error_log > 60:
            self._last_error_log = now
            exc = context.get("exception")
            log.error("admin server: %s", context.get("message", "error"),
                      exc_info=(type(exc), exc, exc.__traceback__) if exc else None)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop serving, free the port and join the loop's thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread.is_alive() and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop_soon)
            except RuntimeError:
                pass  # the loop ended already
            self._thread.join(10)
        try:
            self._lsock.close()
        except OSError:
            pass
        # a thread stuck in the source is a daemon: not waited for long
        deadline = time.monotonic() + 2.0
        for executor in (self._stats_thread, self._health_thread):
            executor.shutdown(max(0.0, deadline - time.monotonic()))

    def _stop_soon(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()

    def __enter__(self) -> AdminServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- reading a request head ------------------------------------------------------------------

async def _read_head(reader: asyncio.StreamReader) -> Request | Response | None:
    """The request head, the error that answers it, or None when the client
    sent nothing and went."""
    total = 0
    while True:  # empty lines before a request line are allowed
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return error(414, f"request line over {MAX_REQUEST_LINE} bytes")
        except asyncio.IncompleteReadError as e:  # the client is done sending
            if not e.partial.strip():
                return None
            line, eof = e.partial, True
        else:
            eof = False
        total += len(line)
        if total > MAX_HEAD:
            return error(431, f"request head over {MAX_HEAD} bytes")
        if line.strip(b"\r\n"):
            break
    request_line = line
    fields: list[bytes] = []
    while not eof:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return error(431, f"a header line over {MAX_REQUEST_LINE} bytes")
        except asyncio.IncompleteReadError as e:  # answer what came
            line, eof = e.partial, True
        total += len(line)
        if total > MAX_HEAD:
            return error(431, f"request head over {MAX_HEAD} bytes")
        if not line.strip(b"\r\n"):
            break
        fields.append(line)
        if len(fields) > MAX_HEADERS:
            return error(431, f"more than {MAX_HEADERS} header lines")
    return _parse(request_line, fields)


def _parse(request_line: bytes, fields: list[bytes]) -> Request | Response:
    words = request_line.decode("iso-8859-1").rstrip("\r\n").split()
    if len(words) != 3:
        return error(400, "malformed request line")
    method, target, version = words
    m = _VERSION.fullmatch(version)
    if m is None or not _TOKEN.fullmatch(method):
        return error(400, "malformed request line")
    if (int(m.group(1)), int(m.group(2))) >= (2, 0) or int(m.group(1)) < 1:
        return error(505, f"{version} is not supported; HTTP/1.1 is")
    try:
        headers = http.client.parse_headers(io.BytesIO(b"".join(fields) + b"\r\n"))
    except http.client.HTTPException as e:
        return error(431 if "header" in str(e).lower() else 400, f"malformed headers: {e}")
    return Request(method, target, headers)


# -- writing an answer -------------------------------------------------------------------------

def _head(answer: Response, with_body: bool = False) -> bytes:
    """The status line and headers of an answer (and its body, if asked)."""
    try:
        reason = http.HTTPStatus(answer.status).phrase
    except ValueError:
        reason = "Error"
    lines = [f"HTTP/1.1 {answer.status} {reason}",
             "Server: pymq-admin",
             f"Date: {email.utils.formatdate(usegmt=True)}",
             f"Content-Type: {answer.content_type}",
             f"Content-Length: {len(answer.body)}",
             "Cache-Control: no-store",
             "X-Content-Type-Options: nosniff",
             f"X-Pymq-Time: {time.time():.6f}",
             "Connection: close"]
    lines += [f"{k}: {v}" for k, v in answer.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + answer.body if with_body else head


# -- the pieces --------------------------------------------------------------------------------

class _Conn:
    __slots__ = ("id", "writer", "evicted")

    def __init__(self, id: int, writer: asyncio.StreamWriter) -> None:
        self.id, self.writer, self.evicted = id, writer, False

    def __hash__(self) -> int:
        return self.id


class _Lane:
    """`active` requests at once, `waiting` more in line; beyond, refused."""

    def __init__(self, active: int, waiting: int) -> None:
        self._sem = asyncio.Semaphore(active)
        self._active = 0
        self._waiting = 0
        self._max_waiting = waiting

    async def enter(self) -> bool:
        if self._sem.locked() and self._waiting >= self._max_waiting:
            return False
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1
        self._active += 1
        return True

    def leave(self) -> None:
        self._active -= 1
        self._sem.release()

    @property
    def busy(self) -> int:
        """Requests in the lane: answered and waiting."""
        return self._active + self._waiting


class _Coalesced(Generic[T]):
    """Calls of one blocking function in one thread, shared by concurrent
    callers. next() is a future of a call that begins after it was asked for:
    the one starting now if none runs, else the one that will follow the
    running call (shared by every caller that asks meanwhile). So N concurrent
    requests make at most two calls, and none gets figures older than itself."""

    def __init__(self, executor: _DaemonExecutor, fn: Callable[[], T]) -> None:
        self._executor, self._fn = executor, fn
        self._running: asyncio.Future[T] | None = None
        self._queued: asyncio.Future[T] | None = None

    def next(self) -> asyncio.Future[T]:
        if self._running is None:
            self._running = self._start()
            return self._running
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_future()
            self._queued.add_done_callback(_retrieve)
        return self._queued

    def _start(self) -> asyncio.Future[T]:
        fut = asyncio.wrap_future(self._executor.submit(self._fn))
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[T]) -> None:
        _retrieve(fut)
        self._running = None
        queued, self._queued = self._queued, None
        if queued is None:
            return
        run = self._running = self._start()

        def relay(done: asyncio.Future[T]) -> None:
            if queued.done():
                return
            if done.cancelled():
                queued.cancel()
            elif done.exception() is not None:
                queued.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                queued.set_result(done.result())

        run.add_done_callback(relay)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen (its callers may have given up)."""
    if not fut.cancelled():
        fut.exception()


class _DaemonExecutor:
    """One daemon thread running submitted calls in order. Daemon: a call stuck
    in the source never keeps the supervisor process from exiting (a
    ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any],
                                             Callable[[], Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((fut, fn))
        return fut

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fut, fn = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
            else:
                fut.set_result(result)

    def shutdown(self, timeout: float) -> None:
        self._queue.put(None)
        self._thread.join(timeout)


# -- the socket ------------------------------------------------------------------------------

def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (an OSError with its errno if not)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    except socket.gaierror as e:  # an OSError with a real errno, for admin_errno
        raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {host!r}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _raise_fd_limit(need: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to the hard one when it is below
    `need`: max_connections sockets must not run the process out of
    descriptors (a soft limit of 1024 is common)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= need or soft == hard:
            return
        target = need if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("admin server: raised the open-files limit from %d to %d", soft, target)
    except (ImportError, ValueError, OSError) as e:
        log.warning("admin server: cannot raise the open-files limit: %s", e)


__all__ = ["AdminServer"]
