"""Hostile memory: segments scribbled on while live. Every outcome is correct
operation or a pymq.MQError, and the owner can always let go: close()
removes everything it created, whatever the segments contain."""

import os
import random

import pytest

import pymq
from pymq import segments


@pytest.mark.parametrize("seed", range(30))
def test_close_after_a_scribbled_topic_header_removes_everything(make_broker, name, seed):
    broker = make_broker()
    sub = broker.subscribe_with_ack("t", group="g")
    broker.publish_many("t", [b"a", b"b"])
    path = os.path.join(segments.SHM_DIR, segments.topic_shm_name(name, "t").lstrip("/"))
    rnd = random.Random(seed)
    with open(path, "r+b") as f:  # bytes 128-255 of the header: positions, counts, the lock
        f.seek(128)
        f.write(rnd.randbytes(128))
    for op in (lambda: broker.publish("t", b"c", timeout=0.2), lambda: sub.get(timeout=0.2),
               lambda: broker.stats()):
        try:
            op()
        except pymq.MQError:
            pass
    broker.close()  # no exception; the `name` fixture checks that nothing is left
