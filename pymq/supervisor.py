"""The supervisor: the broker's slow, periodic work, in a process of its own.

Started by Broker (python -m pymq.supervisor NAME) and restarted by it if it
dies. Each sweep it
- reaps dead processes: their subscriptions leave their groups (an anonymous
  group goes with its member, so a killed subscriber never holds publishers
  back) and what an ack member had in flight is redelivered at once;
- redelivers deliveries of ack groups whose ack timeout passed, and publishes
  those out of retries to '{topic}.dlq' (then frees them);
- runs a persistence writer per topic and records group positions;
- reports named groups with no member for longer than group_idle_timeout, and
  deletes them when group_idle_expire is set;
- removes topic segments whose creator died before making them ready;
- stores a heartbeat.
It also answers requests on its control socket (pymq/control.py: the admin
server, deletions), one at a time and never during a sweep. It holds no state
that a restart would lose: everything it needs is in shared memory, the token
files and the namespace header (the admin port it serves).

It logs through logging.getLogger("pymq.supervisor"); its records go, as JSON
lines on its stdout, to the Broker's process, which hands them to the logger of
the same name there (so the application chooses where they go).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any

import posix_ipc

from . import _core, control, segments
from .config import check_group, check_topic
from .errors import GroupNotFound, MQError, Timeout, TopicNotFound

log = logging.getLogger("pymq.supervisor")  # not __name__: it runs as __main__

DEAD_BATCH = 256        # dead deliveries moved to a .dlq topic per call
SWEEP_INTERVAL = 0.05   # seconds between sweeps
IDLE_INTERVAL = 1.0     # seconds between looks for idle groups
UNREADY_GRACE = 5.0     # seconds a segment may stay uninitialised before removal
HEALTH_BUDGET = 0.5     # seconds /health may spend looking at topics' locks, all together
HEALTH_LOCK_WAIT = 0.1  # seconds it waits for one topic's lock; longer held is a problem
SWEEP_LOCK_WAIT = 100_000_000  # ns the sweep waits for a topic's lock, at most
PERSIST_COUNTERS = ("written", "fsyncs", "files_removed", "write_errors", "fsync_errors")


class Supervisor:
    def __init__(self, name: str):
        self.name = name
        self.ns = _core.Namespace(segments.Segment.attach(segments.ns_shm_name(name)))
        self.rings: dict[str, _core.Ring] = {}
        self._rings_lock = threading.Lock()
        self.lock = threading.Lock()  # a sweep, or one control request: never both
        self.stop = False
        self.woken = threading.Event()  # set to end a sweep's pause early (SIGTERM)
        from .client import Client
        self._client = Client(name)  # made here: the admin server's threads use it too
        self._dead_batch = None
        self.admin = None
        self.control = None
        self._errors: dict = {}
        self.writers: dict = {}
        self.restorers: dict = {}  # topic -> persistence.Restorer, while a backlog streams in
        self._checkpoints: dict = {}
        self._last_idle = 0.0
        self._last_orphans = 0.0
        self.idle: list[dict] = []  # named groups idle past group_idle_timeout (last look)
        self.busy_since: dict[str, float] = {}  # topics whose ack groups' locks the sweep found held

    def owner_alive(self) -> bool:
        return segments.token_alive(segments.token_path(self.name, self.ns.hdr.owner_token))

    def ring(self, topic: str) -> _core.Ring | None:
        """The topic's ring, attached once. The admin server's threads call it
        too (health), hence the lock."""
        with self._rings_lock:
            return self._ring(topic)

    def _ring(self, topic: str) -> _core.Ring | None:
        ring = self.rings.get(topic)
        if ring is not None and ring.closed == _core.CLOSED_DELETED:
            self._forget(topic)  # deleted by a client: a new one may stand there now
            ring = None
        if ring is None:
            shm_name = segments.topic_shm_name(self.name, topic)
            try:
                ring = _core.Ring(segments.Segment.attach(shm_name), topic)
            except posix_ipc.ExistentialError:
                self._remove_if_abandoned(shm_name)
                return None
            except _core.SegmentNotReady:
                self._remove_if_abandoned(shm_name)
                return None
            except MQError as e:
                self.log_once((topic, "attach"), f"topic {topic!r}: {e}")
                return None
            self.rings[topic] = ring
        return ring

    def _forget(self, topic: str) -> None:
        """Let go of a topic's ring (deleted): the cached handles, its writer."""
        self.rings.pop(topic, None)
        for threads in (self.writers, self.restorers):
            w = threads.pop(topic, None)
            if w is not None:
                w.stop()
        self._checkpoints.pop(topic, None)
        if self._client is not None:
            self._client._forget(topic)

    def _remove_if_abandoned(self, shm_name: str) -> None:
        if UNREADY_GRACE < segments.age(shm_name) < float("inf"):
            log.warning("removing %s: never initialised (its creator died)", shm_name)
            segments.unlink(shm_name)

    def reap(self) -> None:
        """Remove the subscriptions of every dead process, then its token. A
        topic whose lock is held (by a stopped process, say) is not waited for:
        the token stays, and the next sweep tries that topic again. A stopped
        process is not dead: it keeps its token's lock."""
        for path in segments.token_files(self.name):
            dead = segments.probe_token(path)
            if dead is None:
                continue
            removed, left = 0, 0
            for topic in segments.topic_names(self.name):
                ring = self.ring(topic)
                if ring is None:
                    continue
                try:
                    removed += ring.reap(dead.value)
                except Timeout:
                    left += 1
            if removed:
                log.info("reaped %d subscription(s) of dead process %s", removed,
                         dead.info.get("pid"))
            if left:
                dead.close()  # not yet: a topic's lock is held; next sweep
                continue
            self.ns.hdr.reaped_processes += 1
            dead.release()
        if time.monotonic() - self._last_orphans >= IDLE_INTERVAL:
            self._last_orphans = time.monotonic()
            self.reap_orphans()

    def reap_orphans(self) -> None:
        """Remove members whose owner's token file is gone: a process that
        closed its client while a topic's lock was held (a stopped process)
        and could not wait to leave. A token file exists before its first
        join and until its client closes, so a member without one is left
        over."""
        for topic in segments.topic_names(self.name):
            ring = self.ring(topic)
            if ring is None:
                continue
            owners = {owner for _, owner, _, _ in ring.member_owners() if owner}
            for owner in owners:
                if os.path.exists(segments.token_path(self.name, owner)):
                    continue
                try:
                    n = ring.reap(owner)
                except Timeout:
                    continue  # its lock is held: next time
                if n:
                    log.info("topic %r: removed %d subscription(s) left by a closed client",
                             topic, n)

    def redeliver(self) -> None:
        """Requeue timed-out deliveries of every ack group; dead-letter what is
        out of retries. A failure in one group (a full or missing .dlq topic,
        say) is logged and retried next sweep; it never stops the others."""
        now = time.monotonic_ns()
        for topic in segments.topic_names(self.name):
            ring = self.ring(topic)
            if ring is None:
                continue
            try:
                dead_groups, busy = ring.sweep(now)  # a group whose lock is held: next sweep
            except MQError as e:
                self.log_once((topic, None), f"topic {topic!r}: sweep: {e}")
                continue
            if busy:
                self.busy_since.setdefault(topic, time.monotonic())
            else:
                self.busy_since.pop(topic, None)
            for g in dead_groups:
                try:
                    while self.dead_letter(ring, g):
                        pass
                except (MQError, ValueError) as e:
                    self.log_once((topic, g), f"topic {topic!r}, group slot {g}: {e}; "
                                              "retrying every sweep")
                else:
                    self._errors.pop((topic, g), None)

    def log_once(self, key, msg: str) -> None:
        """Log a failure once, not on every sweep while it lasts."""
        if self._errors.get(key) != msg:
            self._errors[key] = msg
            log.warning("%s", msg)

    def dead_letter(self, ring: _core.Ring, group: int) -> int:
        """Publish a batch of the group's dead deliveries to '{topic}.dlq', then
        free them. A death in between publishes them again: at least once. The
        publish does not wait for space: a full .dlq is tried again next sweep."""
        batch = self.dead_batch(ring)
        n, gen = ring.take_dead(group, batch)
        if n == 0:
            return 0
        dlq = f"{ring.topic}.dlq"
        limit = self.client()._ring(dlq).capacity // 4  # a batch must fit any .dlq ring
        done = 0
        for start, end in _core.spans_within(batch.lengths(n), limit):
            self.client().publish_many(dlq, [batch.payload(i) for i in range(start, end)],
                                       timeout=0.01)
            done += ring.dead_lettered(group, gen, batch, start, end)
        if done:
            log.warning("dead-lettered %d message(s) of %r to %r", done, ring.topic, dlq)
        return n

    def dead_batch(self, ring: _core.Ring) -> _core.Batch:
        buflen = max(1 << 20, ring.max_msg)
        if self._dead_batch is None or self._dead_batch.buflen < buflen:
            self._dead_batch = _core.Batch(DEAD_BATCH, buflen)
        return self._dead_batch

    def client(self):
        return self._client

    # -- requests (pymq/control.py) ------------------------------------------------

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        """Carry out one control request; the fields of the answer."""
        op = req["op"]
        with self.lock:
            if op == "ping":
                return {"pid": os.getpid()}
            if op == "admin":
                port = req.get("port")
                if port is not None and (not isinstance(port, int) or not 0 <= port <= 65535):
                    raise ValueError(f"bad port {port!r}")
                return {"port": self.serve_admin(port)}
            if op == "delete_topic":
                self.delete_topic(check_topic(req["topic"]), bool(req.get("keep_files", True)))
                return {}
            if op == "delete_group":
                self.delete_group(check_topic(req["topic"]), check_group(req["group"]))
                return {}
        raise ValueError(f"unknown request {op!r}")

    def delete_topic(self, topic: str, keep_files: bool) -> None:
        """Mark the topic's ring deleted (publishers then open the topic anew,
        its subscribers are closed), unlink its segment (its memory goes when
        the last process unmaps it), stop its writer, and keep or remove its log."""
        ring = self.ring(topic)
        if ring is None:
            raise TopicNotFound(f"broker {self.name!r} has no topic {topic!r}")
        ring.close_ring(deleted=True)
        segments.unlink(segments.topic_shm_name(self.name, topic))
        with self._rings_lock:
            self._forget(topic)
        cfg = self.client().config
        if cfg.persistence_enabled:
            from .persistence import remove_topic_files
            kept = remove_topic_files(cfg.persistence_dir, topic, keep_files)
            if kept:
                log.info("topic %r deleted; its log kept in %s", topic, kept)
                return
        log.info("topic %r deleted", topic)

    def delete_group(self, topic: str, group: str) -> None:
        ring = self.ring(topic)
        if ring is None:
            raise TopicNotFound(f"broker {self.name!r} has no topic {topic!r}")
        try:
            ring.delete_group(group)
        except GroupNotFound:
            raise GroupNotFound(f"topic {topic!r} has no group {group!r}") from None
        log.info("group %r of topic %r deleted", group, topic)
        self.checkpoint()  # a restart must not bring it back

    # -- the admin server --------------------------------------------------------

    def serve_admin(self, port: int | None) -> int | None:
        """Serve the admin endpoints on port (0: any free one), moving them
        if they are served elsewhere; None stops them. Returns the bound port.
        An OSError (the port is taken, say) leaves the server as it was. The
        port is stored in the namespace, so that a restarted supervisor serves
        it again."""
        from .admin import AdminServer
        hdr = self.ns.hdr
        if port is None:
            if self.admin is not None:
                self.admin.close()
                self.admin = None
            hdr.admin_port = -1
            return None
        cfg = self.client().config
        if self.admin is not None and port in (0, self.admin.port):
            self.admin.close()  # its own port: let it go first
            self.admin = None
        new = AdminServer(self, cfg.admin_host, port, os.environ.get("PYMQ_ADMIN_TOKEN") or None)
        if self.admin is not None:
            self.admin.close()
        self.admin = new
        hdr.admin_port = new.port
        log.info("admin server on http://%s:%d/", cfg.admin_host, new.port)
        return new.port

    def stats(self) -> dict:
        """The broker's figures: Client.stats(), and with persistence on, each
        topic's writer's counters under "persistence" (only the supervisor has
        them) and their sums broker-wide."""
        figures = self.client().stats()
        if self.writers:
            total: dict[str, Any] = dict.fromkeys(PERSIST_COUNTERS, 0)
            for topic, t in figures["topics"].items():
                w = self.writers.get(topic)
                if w is not None:
                    t["persistence"] = w.figures()
                    for k in PERSIST_COUNTERS:
                        total[k] += t["persistence"][k]
            total["failing"] = sum(1 for t in figures["topics"].values()
                                   if (t.get("persistence") or {}).get("failing"))
            figures["persistence"] = total
        return figures

    def health(self) -> tuple[bool, dict]:
        """(healthy, details), within HEALTH_BUDGET seconds whatever the locks
        do: the supervisor serves, its owner lives, no segment is closed or
        corrupt, no topic's lock has been held for long (by which pid, and
        whether it is stopped, is said), the persistence writers write. Idle
        groups are warnings: they hold messages, but the broker works."""
        problems = []
        hdr = self.ns.hdr
        start = time.monotonic()
        if hdr.closed:
            problems.append("the broker is closing")
        if not self.owner_alive():
            problems.append(f"the broker process (pid {hdr.owner_pid}) is gone")
        if time.time_ns() - hdr.supervisor_beat_ns > 5e9:
            problems.append("the supervisor has not swept for over 5 s")
        topics = 0
        for topic in segments.topic_names(self.name):
            ring = self.ring(topic)
            if ring is None:
                continue
            topics += 1
            wait = min(HEALTH_LOCK_WAIT, max(0.0, HEALTH_BUDGET - (time.monotonic() - start)))
            try:
                figures = ring.stats(lock_timeout_ns=int(wait * 1e9))
            except MQError as e:
                problems.append(f"topic {topic!r}: {e}")
                continue
            if figures["corrupt"]:
                problems.append(f"topic {topic!r}: {figures['corrupt']} corruption(s) detected")
            if figures["locked"] and wait >= HEALTH_LOCK_WAIT:
                problems.append(f"topic {topic!r}: its lock has been held for over "
                                f"{HEALTH_LOCK_WAIT:g} s by {_holder(figures['lock_pid'])}")
            held = time.monotonic() - self.busy_since.get(topic, time.monotonic())
            if held > HEALTH_LOCK_WAIT:
                pids = [g["lock_pid"] for g in figures["groups_detail"] if g["lock_pid"]]
                problems.append(f"topic {topic!r}: an ack group's lock has been held for "
                                f"{held:.1f} s by {_holder(pids[0]) if pids else 'a process'}")
        for topic, w in list(self.writers.items()):
            failing = w.figures()["failing"]
            if failing:
                problems.append(f"persistence of {topic!r}: {failing}")
        details: dict[str, Any] = {"broker": self.name, "supervisor_pid": os.getpid(),
                                   "topics": topics, "supervisor_restarts": hdr.supervisor_restarts}
        idle = list(self.idle)
        if idle:
            details["idle_groups"] = idle
            details["warnings"] = [
                f"group {g['group']!r} of topic {g['topic']!r} has had no member for "
                f"{g['idle_seconds']:.0f} s and holds {g['lag'] + g['pending']:,} message(s)"
                for g in idle]
        if problems:
            details["problems"] = problems
        return not problems, details

    # -- idle groups -------------------------------------------------------------

    def idle_groups(self) -> list[dict]:
        """Named groups with no member for longer than group_idle_timeout."""
        limit = self.client().config.group_idle_timeout
        if limit is None:
            return []
        now, out = time.time(), []
        for topic in segments.topic_names(self.name):
            ring = self.ring(topic)
            if ring is None:
                continue
            try:
                groups = ring.stats()["groups_detail"]
            except MQError:
                continue
            for g in groups:
                if g["anonymous"] or g["name"].startswith("~") or g["members"] or not g["idle_since"]:
                    continue
                idle = now - g["idle_since"]
                if idle > limit:
                    out.append({"topic": topic, "group": g["name"], "idle_seconds": round(idle, 3),
                                "lag": g["lag"], "pending": g["pending"]})
        return out

    def watch_idle(self, force: bool = False) -> None:
        """Look for idle groups (once a second); with group_idle_expire, delete them."""
        now = time.monotonic()
        if not force and now - self._last_idle < IDLE_INTERVAL:
            return
        self._last_idle = now
        idle = self.idle_groups()
        if idle and self.client().config.group_idle_expire:
            for g in idle:
                try:
                    self.delete_group(g["topic"], g["group"])
                    log.warning("group %r of topic %r expired: no member for %.0f s "
                                "(group_idle_timeout)", g["group"], g["topic"], g["idle_seconds"])
                except (MQError, OSError) as e:
                    self.log_once((g["topic"], g["group"], "expire"),
                                  f"cannot expire group {g['group']!r} of {g['topic']!r}: {e}")
            idle = self.idle_groups()
        for g in idle:
            key = (g["topic"], g["group"], "idle")
            if key not in self._errors:
                self.log_once(key, f"group {g['group']!r} of topic {g['topic']!r} has had no "
                                   f"member for {g['idle_seconds']:.0f} s (group_idle_timeout)")
        self.idle = idle

    # -- persistence ----------------------------------------------------------------

    def persist(self) -> None:
        """With persistence on, a writer thread per topic (pymq/persistence.py);
        one that stopped on an error is started again next sweep."""
        cfg = self.client().config
        if not cfg.persistence_enabled:
            return
        from .persistence import Writer
        for topic in segments.topic_names(self.name):
            ring = self.ring(topic)
            if ring is None:
                continue
            w = self.writers.get(topic)
            if w is not None and (w.is_alive() or (w.error is None and ring.closed)):
                continue  # at work, or done: the topic is closed and written out
            if w is not None and w.error is not None:
                self.log_once((topic, "writer"), f"persistence of {topic!r}: the writer stopped "
                              f"({type(w.error).__name__}: {w.error}); starting another")
            if w is not None:
                w.finish()  # its member left, or leaves now (it could not when it stopped)
            if _persist_members(ring):
                continue  # a dead writer's member, not reaped yet: its batch must come first
            try:
                w = self.writers[topic] = Writer(ring, self.client()._owner_token(), cfg)
                w.start()
            except (MQError, OSError) as e:
                self.log_once((topic, "persist"), f"persistence of {topic!r}: {e}")

    def restore(self) -> None:
        """A topic whose backlog from disk is larger than its ring is streamed
        in by a Restorer thread (persistence.restore_topic started it); one
        that stopped on an error, or died with a supervisor, starts again."""
        from .persistence import Restorer
        for topic in segments.topic_names(self.name):
            ring = self.ring(topic)
            if ring is None or not ring.h.hdr.restore_end:
                continue
            r = self.restorers.get(topic)
            if r is not None and r.is_alive():
                continue
            r = self.restorers[topic] = Restorer(ring, self.client().config)
            r.start()

    def checkpoint(self) -> None:
        """Record the named groups' positions and acks of every topic on disk
        (persistence.group_positions) every sweep in which they changed (and at
        close): a reboot delivers again nothing acked more than a sweep ago."""
        cfg = self.client().config
        if not cfg.persistence_enabled:
            return
        from . import persistence
        for topic in segments.topic_names(self.name):
            ring = self.ring(topic)
            if ring is None:
                continue
            try:
                state = persistence.group_positions(ring)
                if state != self._checkpoints.get(topic):
                    persistence.write_checkpoint(cfg.persistence_dir, topic, state,
                                                 cfg.persistence_fsync != "never")
                    self._checkpoints[topic] = state
            except (MQError, OSError) as e:
                self.log_once((topic, "checkpoint"), f"group positions of {topic!r}: {e}")

    def sweep(self) -> None:
        """One round of every duty. Each is on its own: whatever one meets (a
        corrupt segment, a full disk, a bug) is logged once and the others go
        on; the sweep never waits long for a lock."""
        with self.lock:
            for duty in (self.reap, self.redeliver, self.restore, self.persist,
                         self.checkpoint, self.watch_idle):
                try:
                    duty()
                except Exception as e:  # noqa: BLE001 - the supervisor must survive anything
                    self.log_once(("sweep", duty.__name__), f"sweep: {duty.__name__}: "
                                  f"{type(e).__name__}: {e}")
                else:
                    self._errors.pop(("sweep", duty.__name__), None)
        self.ns.hdr.supervisor_beat_ns = time.time_ns()

    def run(self) -> int:
        hdr = self.ns.hdr
        if hdr.admin_port >= 0:  # a restarted supervisor serves where its predecessor did
            try:
                self.serve_admin(hdr.admin_port)
            except OSError as e:
                log.error("admin server cannot listen on port %d again: %s", hdr.admin_port,
                          e.strerror or e)
        self.control = control.ControlServer(self.name, self.handle)
        while not self.stop:  # closed: the writers finish, until the Broker's SIGTERM
            if not self.owner_alive():
                log.warning("the owner of %r (pid %d) is gone; exiting", self.name, hdr.owner_pid)
                return 0
            self.sweep()
            self.woken.wait(SWEEP_INTERVAL)
        return 0

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
        for w in list(self.writers.values()) + list(self.restorers.values()):
            w.stop()
        try:
            self.checkpoint()
        except MQError:
            pass
        if self.admin is not None:
            self.admin.close()
            self.admin = None


# -- logging to the Broker's process -------------------------------------------------------

class PipeHandler(logging.Handler):
    """Each record as one JSON line on fd (the Broker reads them, see
    broker._LogPump). The fd is non-blocking: a reader that stalls costs
    dropped lines (counted, and said once it drains), never a stalled sweep."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd
        self.dropped = 0
        os.set_blocking(fd, False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {"name": record.name, "levelno": record.levelno,
                      "levelname": record.levelname, "msg": record.getMessage(),
                      "created": record.created, "process": record.process,
                      "threadName": record.threadName}
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            if self.dropped:
                fields["msg"] += f" ({self.dropped} earlier log line(s) dropped)"
            line = self._fit(fields)
            os.write(self.fd, line)  # at most PIPE_BUF bytes: written whole, or not at all
            self.dropped = 0
        except (BlockingIOError, BrokenPipeError):
            self.dropped += 1
        except Exception:
            self.handleError(record)


    @staticmethod
    def _fit(fields: dict[str, Any]) -> bytes:
        """The record as one line of at most PIPE_BUF bytes (long texts cut)."""
        for keep in (None, 2000, 500, 100):
            if keep is not None:
                for k in ("msg", "exc_text"):
                    if k in fields and len(fields[k]) > keep:
                        fields[k] = fields[k][:keep] + "..."
            line = json.dumps(fields).encode() + b"\n"
            if len(line) <= select.PIPE_BUF:
                return line
        return line[:select.PIPE_BUF - 2] + b"\n"  # not JSON any more: the reader skips it


def _persist_members(ring: _core.Ring) -> int:
    """Members of a topic's "~persist" group. A writer starts only when there
    is none: the batch a dead one held is then the first the new one reads, so
    that the log stays in seq order and lines already written are skipped
    (TopicLog.last_seq) rather than records never written."""
    for g in ring.stats(lock_timeout_ns=SWEEP_LOCK_WAIT)["groups_detail"]:
        if g["name"] == _core.PERSIST_GROUP:
            return int(g["members"])
    return 0


def _holder(pid: int) -> str:
    """Who holds a lock, for a report: its pid and what it is doing."""
    return f"pid {pid} ({segments.process_state(pid)})" if pid else "a process"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pymq.supervisor NAME", file=sys.stderr)
        return 2
    root = logging.getLogger("pymq")
    root.addHandler(PipeHandler(sys.stdout.fileno()))
    root.setLevel(logging.DEBUG)  # the Broker's process decides what it keeps
    root.propagate = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the Broker's process
    sup = Supervisor(argv[0])

    def on_term(signum, frame):
        sup.stop = True
        sup.woken.set()

    signal.signal(signal.SIGTERM, on_term)
    try:
        return sup.run()
    finally:
        sup.close()


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Everything is closed by now (the writers' logs fsynced and closed, the
    # sockets shut, the lines logged): the interpreter's own teardown would only
    # add 20 ms (45 under the sanitizers) to every Broker.close(), which waits for
    # this process to end. A supervisor may die at any instant anyway (SIGKILL).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
