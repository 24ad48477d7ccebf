"""Broker: creates a namespace, runs its supervisor, and removes it all on close.

A Broker is also a Client (it publishes and subscribes the same way). It owns
the namespace: only it unlinks segments, on close() or when it finds the
segments of a dead predecessor of the same name.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
import weakref

from collections.abc import Callable
from typing import IO, Any

import posix_ipc

from . import _core, control, segments
from .client import Client
from .config import BrokerConfig
from .errors import BrokerExists, MQError, PersistenceError, SegmentMismatch, SupervisorFailed

log = logging.getLogger(__name__)

SUPERVISOR_START_TIMEOUT = 15.0


STARTING_GRACE = 5.0  # seconds a namespace may take to become ready


def remove_stale(name: str, before_remove: Callable[[str], None] | None = None) -> list[str]:
    """Remove what a dead broker of this name left, and return it.

    BrokerExists if a broker of that name is alive or still starting;
    SegmentMismatch if the namespace is unreadable while live processes hold
    tokens in it."""
    shm_name = segments.ns_shm_name(name)
    try:
        ns = _core.Namespace(segments.Segment.attach(shm_name))
    except (posix_ipc.ExistentialError, _core.SegmentNotReady):
        ns = None  # missing, or being created right now
        if segments.age(shm_name) < STARTING_GRACE:
            raise BrokerExists(f"a broker named {name!r} is starting") from None
    except MQError:  # corrupt: its owner cannot be told, so any live token holds it
        ns = None
        live = [t for t in segments.token_files(name) if segments.token_alive(t)]
        if live:
            raise SegmentMismatch(f"the namespace of {name!r} is unreadable and {len(live)} live "
                                  f"process(es) hold tokens in it; stop them first") from None
    if ns is not None:
        owner, pid = ns.hdr.owner_token, ns.hdr.owner_pid
        if segments.token_alive(segments.token_path(name, owner)):
            ns.release()
            raise BrokerExists(f"a broker named {name!r} is already running (pid {pid})")
        # Clients still attached to the dead broker's segments learn that it is
        # gone (BrokerClosed) instead of talking on into unlinked memory.
        ns.hdr.closed = 1
        ns.release()
        if before_remove is not None:
            before_remove(name)
        for topic in segments.topic_names(name):
            ring = _attach_ring(name, topic)
            if ring is not None:
                ring.close_ring()
                ring.release()
    return segments.remove_namespace(name)


def check_persistence_dir(path: str) -> None:
    """The persistence folder exists (made, 0700, if only it is missing) and is
    writable; else a clear PersistenceError at start, not a failing writer later."""
    from .persistence import ensure_dir
    try:
        ensure_dir(path)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        raise PersistenceError(e.errno, f"persistence_dir {path!r}: {e.strerror or e}") from None


def _flush_stale(name: str, cfg: BrokerConfig) -> None:
    """Before a dead broker's segments go: what its writer had not yet put on
    disk, and its groups' live positions (see persistence.flush_stale_ring)."""
    from . import persistence
    for topic in segments.topic_names(name):
        ring = _attach_ring(name, topic)
        if ring is None:
            continue
        try:
            persistence.flush_stale_ring(ring, cfg.persistence_dir, cfg)
        except (MQError, OSError) as e:
            log.error("topic %r: cannot recover from the dead broker's shared memory: %s", topic, e)
        finally:
            ring.release()


def _ended(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether proc ended within timeout, seen the moment it does (its pidfd
    turns readable). Popen.wait(timeout) polls with sleeps that grow to 50 ms:
    a supervisor that is gone in 10 ms cost each close 32 ms, and a test run
    closes about 300 brokers."""
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:  # reaped already (the watcher waits on it)
        return True
    try:
        return proc.returncode is not None or bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


class _Supervision:
    """The Broker's side of its supervisor: start it, restart it, stop it.
    Holds no reference to the Broker, so that a finalizer can use it."""

    def __init__(self, config: BrokerConfig, res: Any):
        self.name = config.name
        self.config = config
        self.res = res  # client._Resources (no import cycle at run time)
        self.owner_pid = os.getpid()
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopping = threading.Event()
        self.watcher: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self.watcher = threading.Thread(target=self._watch, daemon=True,
                                        name=f"pymq-{self.name}-supervision")
        self.watcher.start()

    def _spawn(self) -> None:
        hdr = self.res.ns.hdr
        beat = hdr.supervisor_beat_ns
        # Its stdout is a pipe of its log records (supervisor.PipeHandler),
        # handed to this process's loggers by a thread of their own.
        proc = subprocess.Popen([sys.executable, "-m", "pymq.supervisor", self.name],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, close_fds=True)
        threading.Thread(target=_pump_logs, args=(proc.stdout,), daemon=True,
                         name=f"pymq-{self.name}-supervisor-log").start()
        self.proc = proc
        hdr.supervisor_pid = proc.pid
        deadline = time.monotonic() + SUPERVISOR_START_TIMEOUT
        while hdr.supervisor_beat_ns == beat:  # its first sweep says it is serving
            if proc.poll() is not None:
                raise SupervisorFailed(f"supervisor of {self.name!r} exited at start "
                                       f"({proc.returncode})")
            if time.monotonic() > deadline:
                proc.kill()
                raise SupervisorFailed(f"supervisor of {self.name!r} did not start within "
                                       f"{SUPERVISOR_START_TIMEOUT:g} s")
            time.sleep(0.005)

    def _watch(self) -> None:
        backoff = 0.05
        while not self.stopping.is_set():
            proc = self.proc
            assert proc is not None  # start() spawned it
            proc.wait()
            ns = self.res.ns
            if self.stopping.is_set() or ns is None:
                return
            ns.hdr.supervisor_restarts = (ns.hdr.supervisor_restarts + 1) & 0xFFFFFFFF  # a uint32
            log.warning("supervisor of %r (pid %d) exited with %s; restarting it", self.name,
                        proc.pid, proc.returncode)
            try:
                self._spawn()
                backoff = 0.05
            except MQError as e:
                log.error("%s; retrying in %.2f s", e, backoff)
                if self.stopping.wait(backoff):
                    return
                backoff = min(backoff * 2, 2.0)

    def _rings(self) -> list[tuple[str, _core.Ring]]:
        out = []
        for topic in segments.topic_names(self.name):
            ring = self.res.topics.get(topic) or _attach_ring(self.name, topic)
            if ring is not None:
                out.append((topic, ring))
        return out

    def _close_rings(self) -> None:
        """Mark every topic closed: publishers get BrokerClosed from now on,
        readers once they have read what is left. A topic that cannot be
        marked (corrupt, say) is reported; it is removed all the same."""
        for topic, ring in self._rings():
            try:
                ring.close_ring()
            except Exception as e:  # noqa: BLE001 - whatever a segment holds, close goes on
                log.error("closing topic %r: %s: %s", topic, type(e).__name__, e)

    def _drain_persistence(self) -> dict[str, int]:
        """With persistence on: wait, at most persistence_close_timeout, until
        the writers have put every record of the (closed) topics on disk.
        Returns the records that are not, per topic."""
        left: dict[str, int] = {}
        if not self.config.persistence_enabled:
            return left
        proc = self.proc
        deadline = time.monotonic() + self.config.persistence_close_timeout
        while True:
            left = {}
            for topic, ring in self._rings():
                n = _unpersisted(ring)
                if n:
                    left[topic] = n
            if not left or time.monotonic() >= deadline or proc is None or \
                    proc.poll() is not None:
                return left
            time.sleep(0.01)

    def shutdown(self) -> None:
        """Close every topic, let persistence finish (bounded), stop the
        supervisor, and remove the namespace, whatever the segments hold.
        Only in the process that created the broker (not in a forked child).
        Raises PersistenceError, once everything is removed, if records
        published were not on disk by persistence_close_timeout."""
        if os.getpid() != self.owner_pid or self.stopping.is_set():
            return
        self.stopping.set()
        ns = self.res.ns
        left: dict[str, int] = {}
        try:
            if ns is not None:
                ns.hdr.closed = 1  # no new topic or subscription from here on
                self._close_rings()
                left = self._drain_persistence()
                self._close_rings()  # one made while the first pass ran
        finally:
            proc = self.proc
            if proc is not None:
                proc.terminate()  # its log pipe ends with it: the pump thread ends
                if not _ended(proc, 5.0):
                    proc.kill()
                proc.wait()
            if self.watcher is not None and self.watcher is not threading.current_thread():
                self.watcher.join(5)
            self.res.close()
            segments.remove_namespace(self.name)
        if left:
            each = ", ".join(f"{t!r}: {n}" for t, n in sorted(left.items()))
            raise PersistenceError(
                f"broker {self.name!r} closed with {sum(left.values())} published message(s) "
                f"not on disk ({each}): persistence did not finish within "
                f"persistence_close_timeout={self.config.persistence_close_timeout:g} s "
                f"(the log says why)")


def _unpersisted(ring: _core.Ring) -> int:
    """Records of a topic not yet on disk: its "~persist" group's lag and pending."""
    try:
        figures = ring.stats()
    except MQError:
        return 0  # corrupt: nothing can be counted or written
    for g in figures["groups_detail"]:
        if g["name"] == _core.PERSIST_GROUP:
            return int(g["lag"]) + int(g["pending"])
    return 0


def _attach_ring(name: str, topic: str) -> _core.Ring | None:
    try:
        return _core.Ring(segments.Segment.attach(segments.topic_shm_name(name, topic)), topic)
    except (posix_ipc.ExistentialError, MQError):
        return None  # gone, or never made ready: removed with the namespace


def _pump_logs(pipe: IO[bytes]) -> None:
    """Hand the supervisor's log records (JSON lines) to this process's
    loggers of the same names, until the pipe ends."""
    with pipe:
        for line in pipe:
            try:
                fields = json.loads(line)
                rec = logging.makeLogRecord({k: fields[k] for k in (
                    "name", "levelno", "levelname", "msg", "created", "process", "threadName",
                    "exc_text") if k in fields})
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # cut short (a line over PIPE_BUF), or not ours
            logger = logging.getLogger(rec.name)
            if logger.isEnabledFor(rec.levelno):
                logger.handle(rec)


class Broker(Client):
    """Creates the namespace `config.name` and starts its supervisor process."""

    def __init__(self, config: BrokerConfig | None = None):
        """config: the settings; None takes them from the environment
        (BrokerConfig.from_env(): PYMQ_NAME, PYMQ_RING_BYTES, ...).

        Raises BrokerExists if a live broker owns the name, PersistenceError
        for an unusable persistence_dir, StorageFull if /dev/shm has no room
        for the namespace, SupervisorFailed if the supervisor cannot start."""
        cfg = config if config is not None else BrokerConfig.from_env()
        if not isinstance(cfg, BrokerConfig):
            raise TypeError(f"config must be a BrokerConfig, not {type(cfg).__name__}")
        flush = None
        if cfg.persistence_enabled:
            check_persistence_dir(cfg.persistence_dir)
            flush = lambda n: _flush_stale(n, cfg)  # noqa: E731
        self.stale_removed = remove_stale(cfg.name, flush)
        token = segments.Token(cfg.name)
        self.restored = []
        try:
            if cfg.persistence_enabled:  # before the namespace exists: no client races it
                from . import persistence
                self.restored = [persistence.restore_topic(cfg.name, t, cfg)
                                 for t in persistence.topics_on_disk(cfg.persistence_dir)]
            seg = segments.Segment.create(segments.ns_shm_name(cfg.name), _core.ns_size())
            ns = _core.Namespace.init(seg, os.getpid(), segments.start_stamp(), token.value,
                                      cfg.to_json().encode())
            ns.release()
        except BaseException:
            token.close()
            segments.remove_namespace(cfg.name)
            raise
        super().__init__(cfg.name, _token=token)
        self._supervision = _Supervision(cfg, self._res)
        # Runs at close(), when the Broker is collected, or at interpreter exit.
        self._shutdown = weakref.finalize(self, self._supervision.shutdown)
        try:
            self._supervision.start()
            if cfg.admin_port is not None:
                self.start_admin_server(cfg.admin_port)
        except BaseException:
            self.close()
            raise

    @property
    def supervisor_pid(self) -> int | None:
        """The pid of the supervisor process (the Broker restarts it if it dies)."""
        proc = self._supervision.proc
        return proc.pid if proc is not None else None

    def start_admin_server(self, port: int | str = 0, timeout: float = 15.0) -> int:
        """Have the supervisor serve the HTTP admin endpoints on admin_host:port
        (int or str, as in the seed; 0 picks a free port). Returns the bound
        port. Calling it again moves the server; a restarted supervisor serves
        on the same port again.

        Raises ValueError for a bad port, OSError if it cannot listen there
        (the server stays where it was), BrokerClosed, and BrokerUnavailable
        if the supervisor does not answer within timeout."""
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"admin port must be an int or a str of one, not {port!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"admin port must be in 0..65535, not {port}")
        self._check_open()
        try:
            bound: int = control.request(self.name, "admin", timeout, port=port)["port"]
            return bound
        except OSError as e:
            raise OSError(e.errno, f"admin server cannot listen on {self.config.admin_host}:"
                                   f"{port}: {e.strerror}") from None

    @property
    def admin_port(self) -> int | None:
        """The port the admin server listens on, or None."""
        port = self._res.ns.hdr.admin_port if self._res.ns is not None else -1
        return port if port >= 0 else None

    def close(self) -> None:
        """Close every topic (blocked readers and publishers get BrokerClosed),
        with persistence wait (at most persistence_close_timeout) until what
        was published is on disk, stop the supervisor, and remove every segment
        of the namespace, whatever they hold. Idempotent.

        Raises PersistenceError, after removing everything, if published
        messages were not on disk in time (a full disk, say): it says how many."""
        self._closed = True
        self._shutdown()
