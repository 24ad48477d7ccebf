"""The supervisor: the broker's slow, periodic work, in a process of its own.

Started by Broker (python -m pymq.supervisor NAME) and restarted by it if it
dies. Each sweep it reaps dead processes (their subscriptions leave their
groups; an anonymous group goes with its member, so a killed subscriber never
holds publishers back), removes topic segments whose creator died before
making them ready, and stores a heartbeat. It holds no state that a restart
would lose: everything it needs is in shared memory and the token files.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import posix_ipc

from . import _core, segments
from .errors import MQError

SWEEP_INTERVAL = 0.05   # seconds between sweeps
UNREADY_GRACE = 5.0     # seconds a segment may stay uninitialised before removal


def log(msg: str) -> None:
    print(f"pymq supervisor [{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, name: str):
        self.name = name
        self.ns = _core.Namespace(segments.Segment.attach(segments.ns_shm_name(name)))
        self.rings: dict[str, _core.Ring] = {}
        self.stop = False

    def owner_alive(self) -> bool:
        return segments.token_alive(segments.token_path(self.name, self.ns.hdr.owner_token))

    def ring(self, topic: str) -> _core.Ring | None:
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
                log(f"topic {topic!r}: {e}")
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
            hdr.reaped_processes += 1
            hdr.reaped_members += removed
            if removed:
                log(f"reaped {removed} subscription(s) of dead process {dead.info.get('pid')}")
            dead.release()

    def sweep(self) -> None:
        self.reap()
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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m pymq.supervisor NAME", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the Broker's process
    sup = Supervisor(argv[0])

    def on_term(signum, frame):
        sup.stop = True

    signal.signal(signal.SIGTERM, on_term)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
