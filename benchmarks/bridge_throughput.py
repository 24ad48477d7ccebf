"""The bridge's throughput to NATS JetStream against nats-py alone, in the same
run, on the same server (issue 13: the bridge forwards at least 80 % of what
nats-py alone publishes).

    .venv/bin/python benchmarks/bridge_throughput.py [--messages N] [--repeat R] [--json PATH]

Needs nats-server (apt-get install nats-server) and nats-py (the `nats` extra).
Starts its own `nats-server -js` on a free loopback port with a store of its own.

For 64 B and 4 KiB payloads, interleaved, --repeat times:
- nats-py alone: one process publishes N messages with JetStream's
  publish_async, at most 1024 unacked (the bridge's default --window, the
  deliveries its ack group has in flight), into a
  stream of its own, and waits for every ack;
- the bridge: N messages are published into a local topic first (a ring large
  enough to hold them all: the bridge reads as fast as it can), then
  `pymq bridge --out` starts and forwards them into a stream of its own.
Each is timed from its start until the stream holds N messages (stream info,
polled every 5 ms by this process): msg/s = N / that time. Then the latency:
one message at a time from a broker through its bridge, NATS and another
bridge into a second broker (p50, p90, p99, max). The bridge's time
includes its start (about 0.3 s of it: the process starting and connecting),
reported apart and subtracted in the "steady" column, measured from its first
forwarded message instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import pymq

SIZES = [64, 4096]
WINDOW = pymq._core.PENDING_CAP  # the bridge's default --window (its ack group's limit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RAW = r'''
import asyncio, sys, time
import nats
async def main(url, stream, subject, size, n, window):
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=window)
    await js.add_stream(name=stream, subjects=[subject])
    payload = bytes(size)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n):
        await js.publish_async(subject, payload, headers={"Nats-Msg-Id": "raw/%d" % i})
    await js.publish_async_completed()
    await nc.close()
asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                 int(sys.argv[6])))
'''


async def stream_count(url: str, stream: str) -> int:
    import nats
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        try:
            return (await js.stream_info(stream)).state.messages
        except Exception:  # noqa: BLE001 - not made yet
            return 0
    finally:
        await nc.close()


def wait_count(url: str, stream: str, n: int, timeout: float = 600) -> float:
    """Poll until the stream holds n messages; the time it was seen."""
    async def run() -> float:
        import nats
        nc = await nats.connect(url)
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    if (await js.stream_info(stream)).state.messages >= n:
                        return time.monotonic()
                except Exception:  # noqa: BLE001 - not made yet
                    pass
                await asyncio.sleep(0.005)
            raise RuntimeError(f"stream {stream} did not reach {n} messages")
        finally:
            await nc.close()
    return asyncio.run(run())


def run_raw(url: str, size: int, n: int, k: int) -> float:
    stream, subject = f"RAW{k}", f"raw{k}.x"
    p = subprocess.Popen([sys.executable, "-c", RAW, url, stream, subject, str(size), str(n),
                          str(WINDOW)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    p.stdin.write("go\n")
    p.stdin.flush()
    t1 = wait_count(url, stream, n)
    p.wait(60)
    return n / (t1 - t0)


def run_bridge(url: str, size: int, n: int, k: int) -> tuple[float, float, float]:
    name = f"bbench{os.getpid()}x{k}"
    ring = 1 << max(20, (n * (size + 32)).bit_length())
    broker = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=ring,
                                           max_message_bytes=max(size, 1024)))
    prefix, stream = f"b{k}", f"B{k}"
    try:
        payload = bytes(size)
        broker._system_subscription("t", "~bridge", 3600 * 10**9, 1000).close()  # holds them
        for i in range(0, n, 256):
            broker.publish_many("t", [payload] * min(256, n - i))
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, "-m", "pymq", "bridge", "--name", name, "--nats", url,
                              "--out", "t", "--prefix", prefix, "--stream", stream,
                              "--node", "bench", "--window", str(WINDOW)],
                             stderr=subprocess.DEVNULL)
        first = None
        while first is None:  # the first forwarded message
            if asyncio.run(stream_count(url, stream)) > 0:
                first = time.monotonic()
            else:
                time.sleep(0.005)
        t1 = wait_count(url, stream, n)
        p.terminate()
        p.wait(60)
        return n / (t1 - t0), n / (t1 - first), first - t0
    finally:
        broker.close()


def latency(url: str, count: int = 2000) -> dict:
    """One message at a time from broker A through its bridge, NATS and B's
    bridge into broker B: the time from A's publish to B's receive (one
    machine: one clock), p50, p90, p99, max."""
    names = [f"blat{os.getpid()}{x}" for x in "ab"]
    brokers = [pymq.Broker(pymq.BrokerConfig(name=n, ring_bytes=1 << 20)) for n in names]
    procs = []
    try:
        sub = brokers[1].subscribe("lat")
        for n, node, way in ((names[0], "a", "--out"), (names[1], "b", "--in")):
            procs.append(subprocess.Popen([sys.executable, "-m", "pymq", "bridge", "--name", n,
                                           "--nats", url, way, "lat", "--prefix", "lat",
                                           "--stream", "LAT", "--node", node],
                                          stderr=subprocess.DEVNULL))
        for b, node in zip(brokers, "ab"):
            deadline = time.monotonic() + 30
            while not (b.stats()["bridges"].get(node) or {}).get("nats", {}).get("connected"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"bridge {node} did not start")
                time.sleep(0.01)
        brokers[0].publish("lat", b"warm-up")
        sub.get(timeout=30)
        out = []
        for i in range(count):
            t0 = time.perf_counter_ns()
            brokers[0].publish("lat", b"%d" % i)
            got = sub.get(timeout=30)
            out.append((time.perf_counter_ns() - t0) / 1e3)
            assert got == b"%d" % i
        out.sort()
        pick = lambda q: out[min(len(out) - 1, int(q * len(out)))]  # noqa: E731
        return {"messages": count, "p50_us": pick(0.5), "p90_us": pick(0.9),
                "p99_us": pick(0.99), "max_us": out[-1]}
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
        for b in brokers:
            b.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per run (default: 200,000 of 64 B, 50,000 of 4 KiB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    binary = shutil.which("nats-server")
    if binary is None:
        print("nats-server is not installed (apt-get install nats-server)", file=sys.stderr)
        return 1
    store = tempfile.mkdtemp(prefix="pymq-nats-bench-")
    port = free_port()
    server = subprocess.Popen([binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    results = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        k = 0
        for size in SIZES:
            n = args.messages or (200_000 if size == 64 else 50_000)
            raw, whole, steady, start = [], [], [], []
            for _ in range(args.repeat):  # interleaved: the same conditions for both
                k += 1
                raw.append(run_raw(url, size, n, k))
                w, s, st = run_bridge(url, size, n, k)
                whole.append(w)
                steady.append(s)
                start.append(st)
            r = {"payload_bytes": size, "messages": n, "runs": args.repeat,
                 "nats_py_msg_per_s": statistics.median(raw),
                 "bridge_msg_per_s": statistics.median(whole),
                 "bridge_steady_msg_per_s": statistics.median(steady),
                 "bridge_start_s": statistics.median(start),
                 "ratio": statistics.median(whole) / statistics.median(raw),
                 "ratio_steady": statistics.median(steady) / statistics.median(raw),
                 "ratios_within_runs": [w / r_ for w, r_ in zip(whole, raw)]}
            results.append(r)
            print(f"{size:>5} B x {n:,}: nats-py alone {r['nats_py_msg_per_s']:,.0f} msg/s; "
                  f"bridge {r['bridge_msg_per_s']:,.0f} msg/s ({r['ratio']:.2f}x), steady "
                  f"{r['bridge_steady_msg_per_s']:,.0f} msg/s ({r['ratio_steady']:.2f}x); "
                  f"bridge start {r['bridge_start_s']:.2f} s", flush=True)
        lat = latency(url)
        print(f"latency, A publish -> B receive through two bridges and NATS, one at a time "
              f"({lat['messages']:,}): p50 {lat['p50_us']:,.0f} us, p90 {lat['p90_us']:,.0f} us, "
              f"p99 {lat['p99_us']:,.0f} us, max {lat['max_us']:,.0f} us", flush=True)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(store, ignore_errors=True)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"results": results, "latency": lat, "machine": os.uname().machine,
                       "cpus": os.cpu_count()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
