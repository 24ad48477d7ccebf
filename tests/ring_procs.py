"""Processes for tests/test_ring.py: they die at chosen points of a publish."""

import os
import signal

from pymq import _core, segments


def die_in_publish(shm_name, payload, phase):
    ring = _core.Ring(segments.Segment.attach(shm_name), "t")
    ring.test_stop_in_publish(payload, phase)
    os.kill(os.getpid(), signal.SIGKILL)
