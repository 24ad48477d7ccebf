"""The one way to ask the supervisor for something: its control socket.

The supervisor listens on a Unix stream socket, /dev/shm/pymq.<name>..ctl
(owner-only, beside the broker's segments, removed with them). A request is
one JSON object on one line, {"op": ..., ...}; the answer is one JSON object
on one line, {"ok": true, ...} or {"ok": false, "error": CLASS, "message":
TEXT}, CLASS being the name of a pymq exception (or OSError with "errno").
One request per connection. Only processes of the same user (or root) are
served (SO_PEERCRED). A request carries its deadline on CLOCK_MONOTONIC (one
clock for every process of the machine): one that waited past it (the
supervisor was frozen, say, and the client gave up) is not carried out late.

Requests (pymq/supervisor.py carries them out, one at a time):

    admin         {"port": int or null}  start, move or stop the admin server;
                                         answers {"port": the bound port}
    delete_topic  {"topic", "keep_files"}
    delete_group  {"topic", "group"}
    ping          {}                     answers {"pid": the supervisor's pid}

The Broker uses it for the admin server; any client for deletions. Nothing on
the hot path goes through here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from typing import Any, Callable

from . import errors, segments

log = logging.getLogger(__name__)

SUFFIX = "..ctl"
MAX_LINE = 64 * 1024       # bytes of a request or an answer
IO_TIMEOUT = 5.0           # seconds a peer may take to send its request
DEFAULT_TIMEOUT = 15.0     # seconds a request waits (the supervisor may be restarting)


def path(name: str) -> str:
    return os.path.join(segments.SHM_DIR, f"pymq.{name}{SUFFIX}")


def _loads(line: bytes) -> Any:
    """One JSON value: ValueError for anything else (nested too deep too)."""
    try:
        return json.loads(line)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no complete line in time")
        sock.settimeout(left)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError(f"a line over {MAX_LINE} bytes")
    return buf[:buf.index(b"\n")]


# -- the client side -----------------------------------------------------------------

_ANSWERABLE = {cls.__name__: cls for cls in (
    errors.TopicNotFound, errors.GroupNotFound, errors.InvalidName, errors.InvalidTopic,
    errors.SegmentMismatch, errors.BrokerClosed, errors.NativeError, errors.LimitExceeded)}


def request(name: str, op: str, timeout: float = DEFAULT_TIMEOUT, **args: Any) -> dict[str, Any]:
    """Send one request to broker `name`'s supervisor and return its answer.
    Raises what the supervisor answered (a pymq exception, or OSError), or
    BrokerUnavailable when nobody answers within timeout (or the supervisor
    failed in a way that has no class of its own)."""
    deadline = time.monotonic() + timeout
    line = json.dumps({"op": op, "deadline": time.monotonic() + timeout, **args}).encode() + b"\n"
    last = "no supervisor"
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                sock.connect(path(name))
                sock.sendall(line)
                answer = _loads(_read_line(sock, deadline))
            break
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError) as e:
            last = e.strerror or str(e)  # not listening (yet, or any more): try again
        except PermissionError:
            raise errors.BrokerUnavailable(f"broker {name!r}: its control socket belongs to "
                                           "another user (permission denied): run as the "
                                           "broker's user") from None
        except (OSError, ValueError) as e:  # a timeout, a broken answer
            raise errors.BrokerUnavailable(f"broker {name!r}: the supervisor did not answer "
                                           f"{op!r}: {e}") from None
        if time.monotonic() >= deadline:
            raise errors.BrokerUnavailable(f"broker {name!r}: no supervisor answered {op!r} "
                                           f"within {timeout:g} s ({last})")
        time.sleep(0.02)
    if not isinstance(answer, dict):
        raise errors.BrokerUnavailable(f"broker {name!r}: the supervisor answered {op!r} "
                                       "with something that is not an object")
    if answer.get("ok"):
        return answer
    message = str(answer.get("message", "failed"))
    if answer.get("error") == "OSError":
        raise OSError(int(answer.get("errno") or 0), message)
    cls = _ANSWERABLE.get(str(answer.get("error")), errors.BrokerUnavailable)
    raise cls(message)


# -- the supervisor side ----------------------------------------------------------------

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    """Serves requests on broker `name`'s control socket, on a thread of its
    own, one at a time: handle(request) -> answer fields, or raises."""

    def __init__(self, name: str, handle: Handler):
        self.name = name
        self.handle = handle
        self.path = path(name)
        try:
            os.unlink(self.path)  # a dead supervisor's
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # owner-only from the start, like the segments
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="pymq-control")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("control socket: accept failed")
                time.sleep(0.1)
                continue
            with conn:
                try:
                    self._one(conn)
                except OSError as e:  # the client gave up or went away
                    log.info("control socket: a client went away before its answer: %s", e)
                except Exception:  # a broken peer must never stop the server
                    log.exception("control socket: a request failed")

    def _one(self, conn: socket.socket) -> None:
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid not in (os.getuid(), 0):
            return
        try:
            req = _loads(_read_line(conn, time.monotonic() + IO_TIMEOUT))
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise ValueError("not a request object")
        except (OSError, ValueError) as e:
            answer: dict[str, Any] = {"ok": False, "error": "MQError", "message": f"bad request: {e}"}
        else:
            deadline = req.get("deadline")
            if isinstance(deadline, (int, float)) and time.monotonic() > deadline:
                log.info("control socket: %r came after its deadline; not carried out", req["op"])
                return
            answer = self._answer(req)
        conn.settimeout(IO_TIMEOUT)
        conn.sendall(json.dumps(answer).encode() + b"\n")

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"ok": True, **self.handle(req)}
        except errors.MQError as e:
            name = type(e).__name__ if type(e).__name__ in _ANSWERABLE else "MQError"
            return {"ok": False, "error": name, "message": str(e)}
        except OSError as e:
            return {"ok": False, "error": "OSError", "errno": e.errno or 0,
                    "message": e.strerror or str(e)}
        except (ValueError, KeyError, TypeError) as e:
            return {"ok": False, "error": "MQError", "message": f"bad request {req.get('op')!r}: {e}"}

    def close(self) -> None:
        """Stop serving and remove the socket (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()  # the thread sees it within its accept's timeout, or dies with us
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
