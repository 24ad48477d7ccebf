#!/usr/bin/env python3
"""tools/fuzz_native.py - owns the build and the runs of the coverage-guided
fuzzers of native/ (libFuzzer targets in tools/fuzz/*.c, issue 14):

    ring   pmq_ring_attach's validation and every layer that reads a segment
           (records, groups, members, pending tables) on plain memory
    ns     pmq_ns_attach's validation of the namespace segment
    jsonl  pmq_jsonl_encode, the persistence log's encoder, checked against
           a decoder of its own

Each is compiled with clang -fsanitize=fuzzer,address,undefined (UBSan
fatal) from native/'s sources as they are, into build/fuzz/ (again only when
a source changed), and run from seeds made here plus, for a long run, the
corpus it grew (build/fuzz/corpus/<target>). A crash leaves its input in
build/fuzz/crashes/<target>/; `--replay FILE` runs one input again.

    python tools/fuzz_native.py --seconds 600            # each target 10 minutes
    python tools/fuzz_native.py --target ring --runs 20000 --seed 1
    python tools/fuzz_native.py --target ring --replay build/fuzz/crashes/ring/crash-...

Needs clang with libFuzzer (Debian: apt-get install clang). `make fuzz-native`
(FUZZ_SECONDS=...) runs them all; tests/test_fuzz_native.py a bounded run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "build", "fuzz")
RING = os.path.join(ROOT, "native", "ring")
CODEC = os.path.join(ROOT, "native", "codec")

# the sources of each target (api.c is the CPython fast path's table: not needed)
_RING_SOURCES = ["ring.c", "group.c", "ack.c", "member.c", "durable.c", "sync.c"]
TARGETS = {
    "ring": [os.path.join(RING, f) for f in _RING_SOURCES],
    "ns": [os.path.join(RING, "ns.c"), os.path.join(RING, "sync.c")],
    "jsonl": [os.path.join(CODEC, "jsonl.c")],
}
CFLAGS = ["-std=gnu11", "-g", "-O1", "-fno-omit-frame-pointer",
          "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined",
          "-I" + RING, "-I" + CODEC, "-Wall", "-Wextra"]
if os.uname().machine == "x86_64":
    CFLAGS.append("-mcx16")  # the ring's 16-byte compare-and-swap (as build.py)


def clang() -> str | None:
    return shutil.which(os.environ.get("CLANG", "clang"))


def _inputs(target: str) -> list[str]:
    headers = [os.path.join(d, f) for d in (RING, CODEC) for f in sorted(os.listdir(d))
               if f.endswith(".h")]
    return [os.path.join(ROOT, "tools", "fuzz", f"{target}_fuzz.c")] + TARGETS[target] + headers


def build(target: str) -> str:
    """The target's binary, compiled unless one of the same sources exists."""
    cc = clang()
    if cc is None:
        raise RuntimeError("clang is not installed (apt-get install clang): it builds the "
                           "libFuzzer targets")
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for path in _inputs(target):
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    exe = os.path.join(OUT, f"{target}_fuzz")
    stamp = exe + ".sources"
    digest = h.hexdigest()
    if os.path.exists(exe) and os.path.exists(stamp) and open(stamp).read() == digest:
        return exe
    os.makedirs(OUT, exist_ok=True)
    tmp = exe + ".new"
    subprocess.run([cc, *CFLAGS, "-o", tmp, _inputs(target)[0], *TARGETS[target], "-lpthread"],
                   check=True, capture_output=True, text=True)
    os.replace(tmp, exe)
    with open(stamp, "w") as f:
        f.write(digest)
    return exe


def seeds(target: str) -> list[bytes]:
    """Starting inputs: each prologue of the ring with a few operations, valid
    namespace edits, encodable batches."""
    rnd = random.Random(target)
    if target == "ring":
        out = []
        for variant in range(8):
            ops = bytes([6, 1, 0, 40, 7, 3, 8, 0, 8, 4, 8, 1, 9, 3, 0, 10, 20, 12, 5, 17, 0,
                         13, 0x21, 0, 0, 14, 1, 16, 1, 19, 0, 0])
            out.append(bytes([variant]) + ops)
            out.append(bytes([variant]) + bytes(rnd.randrange(256) for _ in range(64)))
        return out
    if target == "ns":
        return [bytes([0, 0, 0]), bytes([96, 0, 0]) + (5).to_bytes(4, "little"),
                bytes([100, 0, 0]) + (4097).to_bytes(4, "little"), bytes([8, 0, 4]) + b"\x07"]
    out = []
    for n in range(0, 5):
        recs, buf = b"", bytes(rnd.randrange(256) for _ in range(200))
        for i in range(n):
            off, ln = rnd.randrange(100), rnd.randrange(100)
            recs += off.to_bytes(2, "little") + ln.to_bytes(2, "little") + \
                rnd.getrandbits(32).to_bytes(4, "little") + rnd.getrandbits(32).to_bytes(4, "little")
        out.append(bytes([n, 255]) + recs + buf)
    return out


_STATS = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def run(target: str, runs: int | None = None, seconds: float | None = None, seed: int = 1,
        corpus: str | None = None, crashes: str | None = None, timeout: int = 10) -> dict:
    """Fuzz one target (from its seeds, and the corpus if given): its figures,
    and the inputs that crashed it (libFuzzer stops at the first)."""
    exe = build(target)
    work = tempfile.mkdtemp(prefix=f"pymq-fuzz-{target}-")
    try:
        seed_dir = os.path.join(work, "seeds")
        os.makedirs(seed_dir)
        for i, data in enumerate(seeds(target)):
            with open(os.path.join(seed_dir, f"seed{i}"), "wb") as f:
                f.write(data)
        crashes = crashes or os.path.join(OUT, "crashes", target)
        os.makedirs(crashes, exist_ok=True)
        dirs = [corpus] if corpus else [os.path.join(work, "corpus")]
        os.makedirs(dirs[0], exist_ok=True)
        args = [exe, f"-seed={seed}", f"-timeout={timeout}", "-print_final_stats=1",
                f"-artifact_prefix={crashes}/", *dirs, seed_dir]
        if runs is not None:
            args.insert(1, f"-runs={runs}")
        if seconds is not None:
            args.insert(1, f"-max_total_time={int(seconds)}")
        before = set(os.listdir(crashes))
        start = time.monotonic()
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace", env=_env())
        took = time.monotonic() - start
        log = proc.stderr
        m = _STATS.search(log)
        found = sorted(set(os.listdir(crashes)) - before)
        return {"target": target, "returncode": proc.returncode, "seconds": round(took, 1),
                "execs": int(m.group(1)) if m else None, "cov": int(m.group(2)) if m else None,
                "features": int(m.group(3)) if m else None, "corpus": int(m.group(4)) if m else None,
                "crashes": [os.path.join(crashes, c) for c in found],
                "report": log[-6000:] if proc.returncode else ""}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def replay(target: str, path: str) -> subprocess.CompletedProcess:
    """Run one input through the target (its exit status and report)."""
    return subprocess.run([build(target), path], capture_output=True, text=True, errors="replace",
                          env=_env())


def _env() -> dict[str, str]:
    """The environment of a target: its own (clang's) ASan runtime, not one
    preloaded for the sanitized copy of pymq (make test-sanitize), which it
    cannot run with."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="all", choices=["all", *TARGETS])
    p.add_argument("--seconds", type=float, default=None, help="per target")
    p.add_argument("--runs", type=int, default=None, help="per target")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-corpus", action="store_true",
                   help="grow build/fuzz/corpus/<target> (and start from it)")
    p.add_argument("--replay", default=None, help="run this one input (with --target)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.replay:
        if args.target == "all":
            p.error("--replay needs --target")
        done = replay(args.target, args.replay)
        sys.stderr.write(done.stderr[-6000:])
        return done.returncode
    if args.seconds is None and args.runs is None:
        args.seconds = 60
    results = []
    for t in (TARGETS if args.target == "all" else [args.target]):
        corpus = os.path.join(OUT, "corpus", t) if args.keep_corpus else None
        if corpus:
            os.makedirs(corpus, exist_ok=True)
        r = run(t, args.runs, args.seconds, args.seed, corpus)
        results.append(r)
        print(f"{t}: {r['execs']:,} executions in {r['seconds']} s, cov {r['cov']}, "
              f"corpus {r['corpus']}, exit {r['returncode']}"
              + (f", crash: {r['crashes']}" if r["crashes"] else ""), file=sys.stderr)
        if r["returncode"]:
            sys.stderr.write(r["report"][-3000:])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "results": results}, f,
                      indent=1)
    return 1 if any(r["returncode"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
