"""Processes for tests/test_ring.py: they stop themselves at a named test point
of a publish or a reap (PYMQ_TEST_PAUSE, set by the parent before it starts them), to be
killed there, the segment's mutex held."""

from pymq import _core, segments


def publish_and_stop(shm_name, payload):
    ring = _core.Ring(segments.Segment.attach(shm_name), "t")
    ring.publish1(payload, 0)  # stops itself (SIGSTOP) inside, at the point named


def reap_and_stop(shm_name, owner):
    ring = _core.Ring(segments.Segment.attach(shm_name), "t")
    ring.reap(owner)  # stops itself inside, at the point named
