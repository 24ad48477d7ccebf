"""tests/test_fuzz_segments.py - owns the bounded CI run of the mutation fuzzer
of live segments (tools/fuzz_segments.py, issue 14) and the regression tests
of what it found: each a minimal reproduction with the mutated field and
value inline, marked xfail(strict=True) while the bug stands.

The CI run is deterministic in its mutations (a fixed seed), not in the
timing of the supervisor and the peer process, and it leaves the mutexes
alone (region "locks": what a scribble there costs is waits, and the long
run covers it). docs/reliability.md ("Fuzzing") has the long run.
"""

import importlib.util
import os
import sys

import pytest

import pymq

_spec = importlib.util.spec_from_file_location(
    "fuzz_segments", os.path.join(os.path.dirname(__file__), "..", "tools", "fuzz_segments.py"))
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_segments"] = fuzz
_spec.loader.exec_module(fuzz)

SEED = 7
CASES = 3
PER_CASE = 400
CASE_SECONDS = 5.0  # a budget per case: a few calls may each wait seconds (documented waits)


def _describe(findings):
    out = []
    for f in findings[:10]:
        out.append(f"[{f['kind']}] case {f['case']} step {f.get('step')}: {f['op']}: "
                   f"{f['detail'][:300]}\n{(f.get('traceback') or '')[-1500:]}\n"
                   f"last: {f.get('last')}")
    return "\n\n".join(out)


def test_layout_of_the_fuzzer_is_the_build_s():
    """The fuzzer's mirror of pmq_ring.h and pmq_ns.h matches the build (a
    changed layout makes it refuse to run rather than scribble elsewhere)."""
    fuzz._check_layout()


def test_live_segments_under_seeded_mutations_give_correct_results_or_mq_errors():
    """A bounded run: every region but the mutexes, a member in another
    process, the supervisor sweeping; no crash, hang, sanitizer report, bare
    builtin exception, wrong result, or segment left after close()."""
    regions = [r for r in fuzz.REGIONS if r != "locks"]
    total = fuzz.run(seed=SEED, mutations=CASES * PER_CASE, per_case=PER_CASE, regions=regions,
                     cases=CASES, case_seconds=CASE_SECONDS)
    assert total["cases"] == CASES and total["crashed_runners"] == 0, _describe(total["findings"])
    assert total["mutations"] >= PER_CASE  # a loaded machine may end cases on their budget
    assert total["findings"] == [], _describe(total["findings"])


# ---- regressions -------------------------------------------------------------------------

def _group_index(ring, name):
    return next(g["index"] for g in ring.stats()["groups_detail"] if g["name"] == name)


@pytest.mark.parametrize("kind", ["ack", "plain"])
def test_a_group_whose_kind_was_scribbled_is_a_corrupt_segment_to_its_readers(make_broker, kind):
    """Found by the fuzzer: an ack group's flags scribbled to plain made its
    subscription read through the plain path and hand out a Message with
    delivery_attempt 0. The reader knows what it joined: the other kind is
    SegmentMismatch (and counted), and the group's right kind reads again."""
    broker = make_broker()
    subscribe = broker.subscribe_with_ack if kind == "ack" else broker.subscribe
    sub = subscribe("t", group="a")
    broker.publish("t", b"x")
    ring = broker._topics["t"]
    group = ring.h.groups[_group_index(ring, "a")]
    right = group.flags
    group.flags = right ^ 2  # PMQ_GROUP_ACK flipped
    with pytest.raises(pymq.SegmentMismatch):
        sub.get(timeout=1)
    assert broker.stats()["topics"]["t"]["corrupt"] == 1
    group.flags = right
    msg = sub.get(timeout=5)
    assert (msg.payload if kind == "ack" else msg) == b"x"


def test_a_scribbled_restart_count_does_not_stop_supervisor_restarts(make_broker):
    import signal

    from helpers import wait_for
    broker = make_broker()
    broker._res.ns.hdr.supervisor_restarts = 0xFFFFFFFF  # ns.supervisor_restarts
    old, watcher = broker.supervisor_pid, broker._supervision.watcher
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: broker.supervisor_pid != old or not watcher.is_alive(), timeout=15)
    assert watcher.is_alive(), "the Broker's watcher of its supervisor died"
    wait_for(lambda: broker.stats()["supervisor"]["pid"] == broker.supervisor_pid, timeout=15)
