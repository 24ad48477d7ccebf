#!/usr/bin/env python3
"""Chaos under load, the long run (issue 14): N SIGKILLs at random instants
and inside each critical section, SIGSTOPs and SIGCONTs, while publishers and
group members run, with exact accounting after every round. The engine, and
what it kills and checks, is tests/chaos/chaos_engine.py (tests/chaos/test_chaos.py
runs a bounded version in CI); this is its command line: a line per round
while it runs, a summary table at the end, the figures as JSON with --json.
Exit 0 when every round balanced, 1 at the first failure (its seed, round
and what was wrong on stderr), 130 on Ctrl-C.

    nice -n 19 .venv/bin/python tools/chaos.py --kills 10000 --json build/chaos.json

docs/reliability.md has the figures of the last long run.
"""

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "chaos")]

import chaos_engine  # noqa: E402
import chaos_roles  # noqa: E402
from chaos_engine import Settings  # noqa: E402


def parse_args(argv):
    d = Settings()
    p = argparse.ArgumentParser(prog="tools/chaos.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=1000, help="SIGKILLs in all (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    p.add_argument("--json", metavar="OUT", help="write the figures (and any failure) there")
    p.add_argument("--kills-per-round", type=int, default=25,
                   help="kills between two accountings (default 25)")
    p.add_argument("--gap", type=float, default=0.1,
                   help="mean seconds between two kills (default 0.1)")
    p.add_argument("--stops", type=float, default=0.5,
                   help="SIGSTOPs (10-300 ms each) per kill, on average (default 0.5)")
    p.add_argument("--point-share", type=float, default=d.point_share,
                   help=f"share of kills inside a critical section (default {d.point_share})")
    p.add_argument("--supervisor-share", type=float, default=d.supervisor_share,
                   help=f"share of kills of the supervisor (default {d.supervisor_share})")
    p.add_argument("--rate", type=float, default=d.rate,
                   help=f"payloads per second per publisher, 0: no limit (default {d.rate:g})")
    p.add_argument("--members", type=int, default=d.members,
                   help=f"members of each group (default {d.members})")
    p.add_argument("--plain-groups", type=int, default=d.plain_groups)
    p.add_argument("--ack-groups", type=int, default=d.ack_groups)
    p.add_argument("--no-persistence", action="store_true", help="no log on disk, no writer")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="start no round after this many minutes (0: no limit)")
    p.add_argument("--name", default=f"chaos{os.getpid():x}", help="broker name")
    p.add_argument("--quiet", action="store_true", help="no line per round")
    return p.parse_args(argv)


def fmt_s(x):
    return "-" if x is None else f"{x * 1000:.1f} ms"


def summary(fig, args, failure=None):
    """The table printed at the end."""
    r = fig["recovery_s"]
    lines = [
        f"chaos under load: {fig['kills']:,} SIGKILLs in {fig['rounds']} rounds, "
        f"{fig['stops']:,} SIGSTOP/SIGCONT, {fig['duration_s'] / 60:.1f} min, seed {args.seed}",
        "",
        f"{'KILLED':<20}{'KILLS':>8}{'RECOVERY p50':>16}{'p99':>12}{'max':>12}",
    ]
    kinds = fig["recovery_s_by_kind"]
    for kind, n in fig["kills_by_kind"].items():
        k = kinds.get(kind, {})
        lines.append(f"{kind:<20}{n:>8,}{fmt_s(k.get('p50')):>16}{fmt_s(k.get('p99')):>12}"
                     f"{fmt_s(k.get('max')):>12}")
    lines.append(f"{'all':<20}{fig['kills']:>8,}{fmt_s(r['p50']):>16}{fmt_s(r['p99']):>12}"
                 f"{fmt_s(r['max']):>12}")
    c = fig["checked"]
    lines += [
        "",
        f"messages published                 {fig['published']:>14,}",
        f"checked in plain groups            {c.get('plain', 0):>14,}  (each once)",
        f"checked in ack groups              {c.get('ack', 0):>14,}  (each at least once)",
        f"checked in the log on disk         {c.get('log', 0):>14,}  (each seq once)",
        f"lost by design (plain, killed)     {fig['lost_by_design']:>14,}  "
        f"(= taken by a killed plain member, not reported)",
        f"of which not in 'delivered'        {fig.get('uncounted_deliveries', 0):>14,}  "
        f"(claimed by a member killed before it counted them)",
        f"reported twice (ack, killed)       {fig['redelivered_reports']:>14,}",
        f"lock recoveries (EOWNERDEAD)       {fig['lock_recoveries']:>14,}",
        f"supervisor restarts                {fig['supervisor_restarts']:>14,}",
        f"subscriptions reaped               {fig['reaped_subscriptions']:>14,}",
        f"lost / torn / wedged               {'FAILED' if failure else '0 / 0 / 0':>14}",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    chaos_roles.sigterm_as_interrupt()  # the engine then stops all it started, closes its broker
    settings = Settings(
        kills=args.kills, seed=args.seed, kills_per_round=args.kills_per_round, gap=args.gap,
        stop_share=args.stops, point_share=args.point_share,
        supervisor_share=args.supervisor_share, rate=args.rate, members=args.members,
        plain_groups=args.plain_groups, ack_groups=args.ack_groups,
        persistence=not args.no_persistence,
        deadline=time.monotonic() + args.max_minutes * 60 if args.max_minutes else 0.0)
    progress = None if args.quiet else (lambda line: print(line, flush=True))
    out = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": platform.machine(),
           "cpus": os.cpu_count(), "settings": vars(args)}
    failure = None
    try:
        fig = chaos_engine.run(args.name, settings, progress)
    except chaos_engine.ChaosFailure as e:
        failure = str(e)
        fig = getattr(e, "figures", None)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    out.update(figures=fig, failure=failure)
    if fig:
        print(summary(fig, args, failure))
    if fig and fig["kills"] < args.kills and not failure:
        print(f"note: stopped after {args.max_minutes:g} min at {fig['kills']:,} of {args.kills:,} "
              f"kills ({fig['kills'] / fig['duration_s'] * 60:.0f} kills a minute)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    if failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
