"""Where the time of compare.py's case C goes (4 producer processes -> 1
consumer, 64 B, single calls): an off-CPU view of each process, for pymq and
pyzmq in the same invocation (issue 15).

    .venv/bin/python benchmarks/fanin_offcpu.py [--messages N] [--repeat R] [--trace]
                                                [--transport T]... [--json PATH]

Each run is compare.run_stream's, unchanged (the same children, checks and
figures: every payload verified, nothing left behind). Beside it, this
process samples every 5 ms, for each child, /proc/PID/task/*/schedstat (time on
a CPU, and time runnable but waiting for one: the run queue) and the voluntary
and involuntary context switches of /proc/PID/status. Over each child's own
measured span (from its "go" to its last message, as the children report it)
that splits its wall time into on CPU, waiting in the run queue (ready,
preempted or not yet scheduled) and asleep (blocked: futex waits, for a lock,
for data, for space, or a socket); summed over a process's threads, so a
process with a thread of its own (pyzmq's I/O thread) can pass 1. With --trace, `perf trace -s` attached to
the children for the rest of the run counts their system calls (futex: how
often a lock, a wait for data or for space went to the kernel); the count
covers the run from about 0.3 s after the children started, so it includes
the end of their set-up and their final wait.

Also printed per run: how long a cache line took to move from CPU 0 to CPU 1
just before it (harness.cross_cpu_ns: about 50 or about 230 ns on the VM of
docs/benchmarks.md, as the host places its vCPUs; fan-in follows it), the ring's figures (publish calls that waited for
space, wakeups of a sleeping reader), msg/s and CPU per message. Transports:
pymq and pyzmq by default (--transport, repeatable), runs interleaved.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare as C  # noqa: E402
import harness as H  # noqa: E402

CASE = next(c for c in C.STREAM_CASES if c[0] == "C 64 B single x4")
SAMPLE_S = 0.005


def proc_stat(pid: int) -> tuple[int, int, int, int]:
    """(ns on a CPU, ns waiting in the run queue, voluntary, involuntary switches)."""
    run = wait = 0
    for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(f) as fh:
                a = fh.read().split()
            run, wait = run + int(a[0]), wait + int(a[1])
        except (OSError, ValueError, IndexError):
            pass
    vol = inv = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("voluntary_ctxt_switches"):
                    vol = int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    inv = int(line.split()[1])
    except OSError:
        pass
    return run, wait, vol, inv


def parse_trace(path: str) -> dict:
    """perf trace -s output: {pid: {syscall: calls}}."""
    out, pid = {}, None
    try:
        with open(path) as fh:
            for line in fh:
                f = line.split()
                if len(f) >= 3 and re.fullmatch(r"\((\d+)\),", f[1]) and f[3:4] == ["events,"]:
                    pid = int(f[1].strip("(),"))
                    out[pid] = {}
                elif pid is not None and len(f) >= 3 and f[1].isdigit() and f[0].isidentifier():
                    out[pid][f[0]] = int(f[1])
    except OSError:
        pass
    return out


def one_run(ctx, impl: str, count: int, trace: bool) -> dict:
    """compare.run_stream of case C for impl, with the children's /proc figures
    sampled over the run."""
    pids, results, series, tracer = [], [], [], []
    stop = threading.Event()
    start_child, receive = H.start_child, H.receive

    def start_child_(ctx_, procs, target, name, args):
        p, c = start_child(ctx_, procs, target, name, args)
        pids.append((name, p.pid))
        return p, c

    def receive_(conn, proc, what, timeout):
        out = receive(conn, proc, what, timeout)
        results.append((what, out))
        return out

    def sampler():
        tmp = f"/tmp/fanin-trace-{os.getpid()}.txt"
        while not stop.is_set():
            if len(pids) == 1 + CASE[3]:
                series.append((H.clock_ns(), {n: proc_stat(p) for n, p in pids}))
                if trace and not tracer and len(series) > 60:
                    cmd = ["perf", "trace", "-s", "-p", ",".join(str(p) for _, p in pids), "-o", tmp]
                    tracer.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL), tmp))
            time.sleep(SAMPLE_S)

    c2c = H.cross_cpu_ns()
    H.start_child, H.receive = start_child_, receive_
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    try:
        r = C.run_stream(ctx, CASE, impl, count, {})
    finally:
        H.start_child, H.receive = start_child, receive
        stop.set()
        th.join()
        for p, _ in tracer:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    calls = {}
    if tracer:
        by_pid = parse_trace(tracer[0][1])
        os.unlink(tracer[0][1])
        calls = {n: by_pid.get(p, {}) for n, p in pids}
    res = dict(results)
    procs = {}
    for name, _ in pids:
        o = res["consumer" if name == "cmp-consumer" else "producer " + name.rsplit("-", 1)[1]]
        a = min(series, key=lambda s: abs(s[0] - o["start_ns"]))
        b = min(series, key=lambda s: abs(s[0] - o["end_ns"]))
        span = (b[0] - a[0]) / 1e9
        ra, wa, va, ia = a[1][name]
        rb, wb, vb, ib = b[1][name]
        on, queued = (rb - ra) / 1e9, (wb - wa) / 1e9
        procs[name] = {"span_s": span, "on_cpu_s": on, "runqueue_s": queued,
                       "asleep_s": max(0.0, span - on - queued), "voluntary": vb - va,
                       "involuntary": ib - ia, "syscalls": calls.get(name, {})}
    return {"impl": impl, "run": r, "procs": procs, "load": os.getloadavg()[0], "cross_cpu_ns": c2c}


def report(runs: list[dict]) -> None:
    for impl in dict.fromkeys(r["impl"] for r in runs):
        mine = [r for r in runs if r["impl"] == impl]
        print(f"\n{impl}: msg/s " + ", ".join(f"{r['run']['msg_per_s'] / 1e6:.2f} M" for r in mine)
              + f"; CPU us/msg pub {statistics.median(r['run']['pub_cpu_us_per_msg'] for r in mine):.2f}"
              f" sub {statistics.median(r['run']['sub_cpu_us_per_msg'] for r in mine):.2f}"
              + (f"; publish waits {[r['run'].get('publish_waits') for r in mine]}"
                 if mine[0]["run"].get("publish_waits") is not None else "")
              + f"; load {[round(r['load'], 1) for r in mine]}"
              + f"; line CPU0->1 ns {[round(r['cross_cpu_ns'] or 0) for r in mine]}")
        print(f"  {'process':<16}{'span s':>8}{'on CPU':>8}{'run queue':>10}{'asleep':>8}"
              f"{'vol sw':>8}{'invol sw':>9}  futex calls   (medians over runs; shares of the span)")
        for name in mine[0]["procs"]:
            ps = [r["procs"][name] for r in mine]
            med = lambda k: statistics.median(p[k] for p in ps)  # noqa: E731
            span = med("span_s")
            fx = [p["syscalls"].get("futex") for p in ps if p["syscalls"]]
            print(f"  {name:<16}{span:>8.2f}{med('on_cpu_s') / span:>8.2f}{med('runqueue_s') / span:>10.2f}"
                  f"{med('asleep_s') / span:>8.2f}{med('voluntary'):>8.0f}{med('involuntary'):>9.0f}"
                  f"  {fx if fx else ''}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=CASE[7])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--transport", action="append", default=None)
    ap.add_argument("--trace", action="store_true", help="also count system calls (perf trace -s)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    impls = args.transport or ["pymq", "pyzmq"]
    runs = []
    for rep in range(args.repeat):
        for impl in impls[rep % len(impls):] + impls[:rep % len(impls)]:
            r = one_run(ctx, impl, args.messages, args.trace)
            runs.append(r)
            print(f"# {impl} run {rep + 1}: {r['run']['msg_per_s']:,.0f} msg/s, load {r['load']:.1f}, "
                  f"line CPU0->1 {r['cross_cpu_ns'] or 0:.0f} ns",
                  file=sys.stderr, flush=True)
    report(runs)
    if args.json:
        H.write_json(args.json, {"case": CASE[0], "messages": args.messages, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
