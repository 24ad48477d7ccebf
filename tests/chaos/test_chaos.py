"""Chaos under load, bounded for CI (issue 14): SIGKILLs at random instants
across every role, and one inside each critical section, while traffic
flows; every round accounted for exactly. What is killed and what is checked:
tests/chaos/chaos_engine.py. The long run: tools/chaos.py --kills 10000
(docs/reliability.md). A failure names its seed; run it again with
tools/chaos.py --seed S and the same settings."""

import chaos_engine
from chaos_engine import POINTS, Settings

# Small enough for CI (each run starts its processes afresh), big enough that
# each group has members to share the work and to take over from the dead.
LEAN = dict(single_publishers=1, batch_publishers=1, plain_groups=1, ack_groups=1, members=2)
RECOVERY_BOUND = 5.0  # seconds from a kill until a fresh round trip works (ASan included)


def check_figures(fig):
    r = fig["recovery_s"]
    assert r["n"] == fig["kills"] - fig["kills_by_kind"].get("writer", 0)  # one probe per kill
    assert r["max"] < RECOVERY_BOUND, r
    assert fig["checked"]["log"] == fig["published"]  # every seq on disk, once
    # every message reached the ack group at least once, the plain group once
    # but for what killed plain members held
    assert fig["checked"]["ack"] == fig["published"] + fig["redelivered_reports"]
    assert fig["checked"]["plain"] == fig["published"] - fig["lost_by_design"]


def test_random_kills_across_roles_under_load_lose_tear_and_wedge_nothing(name):
    fig = chaos_engine.run(name, Settings(kills=20, seed=1401, kills_per_round=10, gap=0.06,
                                          point_share=0.2, supervisor_share=0.15, **LEAN))
    assert (fig["kills"], fig["rounds"]) == (20, 2)
    assert set(fig["kills_by_kind"]) >= {"publisher", "plain", "ack", "supervisor"}
    assert fig["supervisor_restarts"] == fig["kills_by_kind"]["supervisor"] + \
        fig["kills_by_kind"].get("writer", 0)
    assert fig["published"] > 1000
    check_figures(fig)


def test_a_process_killed_inside_each_critical_section_loses_tears_and_wedges_nothing(name):
    """One kill at each test point, in two rounds, each accounted for:
    publish.locked, .written, .committed (a publisher holding the topic's
    lock: before its records are written, before its commit, after it),
    member.locked (a member joining), ack.locked, ack.claimed (an ack member
    holding its group's lock: before its claim, after it), writer (the
    supervisor's persistence writer with a batch claimed and not on disk; its
    supervisor is killed first). The engine checks each one's outcome: a
    publish killed before its commit is not delivered, one after it is; a
    member killed while joining left no subscription; what a killed ack
    member claimed goes to another member; the log holds every seq once."""
    fig = chaos_engine.run(name, Settings(kills=len(POINTS) + 1, seed=1402, plan=POINTS,
                                          kills_per_round=4, gap=0.05, **LEAN))
    assert fig["kills_by_kind"] == {**{p: 1 for p in POINTS}, "supervisor": 1}
    assert (fig["rounds"], fig["supervisor_restarts"]) == (2, 2)
    assert fig["reaped_subscriptions"] == 4  # ack.locked, ack.claimed, two writers
    check_figures(fig)
