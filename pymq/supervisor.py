"""The supervisor: the broker's slow, periodic work, in a process of its own.

Started by Broker (python -m pymq.supervisor NAME) and restarted by it if it
dies. Each sweep it
- reaps dead processes: their subscriptions leave their groups (an anonymous
  group goes with its member, so a killed subscriber never holds publishers
  back) and what an ack member had in flight is redelivered at once;
- redelivers deliveries of ack groups whose ack timeout passed, and publishes
  those out of retries to '{topic}.dlq' (then frees them);
- removes topic segments whose creator died before making them ready;
- stores a heartbeat. It holds no state that a restart
would lose: everything it needs is in shared memory and the token files.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from array import array

import posix_ipc

from . import _core, segments
from .errors import MQError

DEAD_BATCH = 256        # dead deliveries moved to a .dlq topic per call

SWEEP_INTERVAL = 0.05   # seconds between sweeps
UNREADY_GRACE = 5.0     # seconds a segment may stay uninitialised before removal


def log(msg: str) -> None:
    print(f"pymq supervisor [{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, name: str):
        self.name = name
        self.ns = _core.Namespace(segments.Segment.attach(segments.ns_shm_name(name)))
        self.rings: dict[str, _core.Ring] = {}
        self._rings_lock = threading.Lock()
        self.stop = False
        self._client = None
        self._dead_batch = None
        self.admin = None
        self._errors: dict = {}
        self.writers: dict = {}
        self._checkpoints: dict = {}
        self._last_checkpoint = 0.0

    def owner_alive(self) -> bool:
        return segments.token_alive(segments.token_path(self.name, self.ns.hdr.owner_token))

    def ring(self, topic: str) -> _core.Ring | None:
        """The topic's ring, attached once. The admin server's threads call it
        too (health), hence the lock."""
        with self._rings_lock:
            return self._ring(topic)

    def _ring(self, topic: str) -> _core.Ring | None:
        ring = self.rings.get(topic)
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

    def _remove_if_abandoned(self, shm_name: str) -> None:
        if UNREADY_GRACE < segments.age(shm_name) < float("inf"):
            log(f"removing {shm_name}: never initialised (its creator died)")
            segments.unlink(shm_name)

    def reap(self) -> None:
        """Remove the subscriptions of every dead process, then its token."""
        for path in segments.token_files(self.name):
            dead = segments.probe_token(path)
            if dead is None:
                continue
            removed = 0
            for topic in segments.topic_names(self.name):
                ring = self.ring(topic)
                if ring is not None:
                    removed += ring.reap(dead.value)
            hdr = self.ns.hdr
            hdr.reaped_members += removed  # first: a reader that sees the process counted
            hdr.reaped_processes += 1     # sees its subscriptions counted too
            if removed:
                log(f"reaped {removed} subscription(s) of dead process {dead.info.get('pid')}")
            dead.release()

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
                dead_groups = ring.sweep(now)
            except MQError as e:
                self.log_once((topic, None), f"topic {topic!r}: sweep: {e}")
                continue
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
            log(msg)

    def dead_letter(self, ring: _core.Ring, group: int) -> int:
        """Publish a batch of the group's dead deliveries to '{topic}.dlq', then
        free them. A death in between publishes them again: at least once. The
        publish does not wait for space: a full .dlq is tried again next sweep."""
        batch = self.dead_batch(ring)
        n, gen = ring.take_dead(group, batch)
        if n == 0:
            return 0
        dlq = f"{ring.topic}.dlq"
        from .persistence import spans_within
        limit = self.client()._ring(dlq).h.capacity // 4  # a batch must fit any .dlq ring
        done = 0
        for start, end in spans_within(_core.ffi.unpack(batch.lens, n), limit):
            self.client().publish_many(dlq, [batch.payload(i) for i in range(start, end)],
                                       timeout=0.01)
            done += ring.settle("dead_lettered", group, gen,
                                array("I", (batch.slots[i] for i in range(start, end))),
                                array("Q", (batch.seqs[i] for i in range(start, end))))
        if done:
            log(f"dead-lettered {done} message(s) of {ring.topic!r} to {dlq!r}")
        return n

    def dead_batch(self, ring: _core.Ring) -> _core.Batch:
        buflen = max(1 << 20, ring.max_msg + _core.REC_HDR)
        if self._dead_batch is None or self._dead_batch.b.buflen < buflen:
            self._dead_batch = _core.Batch(DEAD_BATCH, buflen)
        return self._dead_batch

    def client(self):
        if self._client is None:
            from .client import Client
            self._client = Client(self.name)
        return self._client

    # -- the admin server --------------------------------------------------------

    def serve_admin(self) -> None:
        """Start, move or stop the admin server as the Broker asked (admin_seq),
        and bring it back on its port after a restart of the supervisor."""
        hdr = self.ns.hdr
        seq = hdr.admin_seq
        if seq == hdr.admin_done and (self.admin is not None or hdr.admin_port < 0):
            return
        port = hdr.admin_request if seq != hdr.admin_done else hdr.admin_port
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        hdr.admin_errno = 0
        if port >= 0:
            from .admin import AdminServer
            cfg = self.client().config
            try:
                self.admin = AdminServer(self, cfg.admin_host, port,
                                         os.environ.get("PYMQ_ADMIN_TOKEN") or None)
                log(f"admin server on http://{cfg.admin_host}:{self.admin.port}/")
            except OSError as e:
                hdr.admin_errno = e.errno or 1
                log(f"admin server cannot listen on {cfg.admin_host}:{port}: {e.strerror}")
        hdr.admin_port = self.admin.port if self.admin is not None else -1
        hdr.admin_done = seq

    def stats(self) -> dict:
        """The broker's figures (the same dict as Client.stats())."""
        return self.client().stats()

    def health(self) -> tuple[bool, dict]:
        """(healthy, details): the supervisor serves, its owner lives, no segment
        is closed or corrupt."""
        problems = []
        hdr = self.ns.hdr
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
            try:
                figures = ring.stats()
            except MQError as e:
                problems.append(f"topic {topic!r}: {e}")
                continue
            if figures["corrupt"]:
                problems.append(f"topic {topic!r}: {figures['corrupt']} corruption(s) detected")
        details = {"broker": self.name, "supervisor_pid": os.getpid(), "topics": topics,
                   "supervisor_restarts": hdr.supervisor_restarts}
        if problems:
            details["problems"] = problems
        return not problems, details

    def persist(self) -> None:
        """With persistence on, a writer thread per topic (pymq/persistence.py);
        one that stopped on an error is started again next sweep."""
        cfg = self.client().config
        if not cfg.persistence_enabled:
            return
        from .persistence import Writer
        for topic in segments.topic_names(self.name):
            w = self.writers.get(topic)
            if w is not None and w.is_alive():
                continue
            try:
                w = self.writers[topic] = Writer(self.client(), topic, cfg, log)
                w.start()
            except (MQError, OSError) as e:
                self.log_once((topic, "persist"), f"persistence of {topic!r}: {e}")

    def checkpoint(self, force: bool = False) -> None:
        """Record the named groups' positions and acks of every topic on disk
        (persistence.group_positions), when they changed, at most every
        persistence_fsync_interval (and at close)."""
        cfg = self.client().config
        if not cfg.persistence_enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_checkpoint < cfg.persistence_fsync_interval:
            return
        self._last_checkpoint = now
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
        self.reap()
        self.redeliver()
        self.persist()
        self.checkpoint()
        self.serve_admin()
        self.ns.hdr.supervisor_beat_ns = time.time_ns()

    def run(self) -> int:
        while not self.stop:
            hdr = self.ns.hdr
            if hdr.closed:
                return 0
            if not self.owner_alive():
                log(f"the owner of {self.name!r} (pid {hdr.owner_pid}) is gone; exiting")
                return 0
            try:
                self.sweep()
            except MQError as e:  # a corrupt segment must not stop the other duties
                log(f"sweep: {e}")
            time.sleep(SWEEP_INTERVAL)
        return 0

    def close(self) -> None:
        for w in self.writers.values():
            w.stop()
        try:
            self.checkpoint(force=True)
        except MQError:
            pass
        if self.admin is not None:
            self.admin.close()
            self.admin = None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pymq.supervisor NAME", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the Broker's process
    sup = Supervisor(argv[0])

    def on_term(signum, frame):
        sup.stop = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        return sup.run()
    finally:
        sup.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
