"""The demo's message: one JSON object of GPU telemetry, as the streamers write
it and the collectors check it.

Owns: the topic, the fields and their types, the plausible ranges (valid), and
a GPU's random walk (Gpu) that makes the figures look like a training job.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

TOPIC = "gpu-telemetry"
GPUS_PER_HOST = 8
MEM_TOTAL_MIB = 81920  # an 80 GB card
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "host": str, "gpu": int, "util_pct": (int, float), "mem_used_mib": int,
    "mem_total_mib": int, "temp_c": (int, float), "power_w": (int, float),
    "streamer": int, "seq": int, "ts": (int, float)}


class Gpu:
    """A random walk that looks like one GPU under a training job."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.util = rng.uniform(40, 95)
        self.mem = rng.randint(20_000, 70_000)
        self.temp = rng.uniform(45, 70)

    def sample(self) -> tuple[float, int, float, float]:
        """(utilization %, memory used MiB, temperature C, power W), one step on."""
        rng = self.rng
        self.util = min(100.0, max(0.0, self.util + rng.uniform(-3, 3)))
        self.mem = min(MEM_TOTAL_MIB, max(1024, self.mem + rng.randint(-256, 256)))
        self.temp = min(95.0, max(30.0, self.temp + (self.util - 60) * 0.01
                                  + rng.uniform(-0.5, 0.5)))
        power = 60 + self.util * 3.4 + rng.uniform(-5, 5)
        return round(self.util, 1), self.mem, round(self.temp, 1), round(power, 1)


def record(host: str, gpu: int, sample: tuple[float, int, float, float], streamer: int,
           seq: int) -> bytes:
    """The payload of one message: compact JSON, stamped with the time now."""
    util, mem, temp, power = sample
    return json.dumps(
        {"host": host, "gpu": gpu, "util_pct": util, "mem_used_mib": mem,
         "mem_total_mib": MEM_TOTAL_MIB, "temp_c": temp, "power_w": power,
         "streamer": streamer, "seq": seq, "ts": time.time()},
        separators=(",", ":")).encode()


def valid(msg: Any) -> bool:
    """A decoded payload has every field, of its type, in a plausible range."""
    if not isinstance(msg, dict):
        return False
    for key, kind in REQUIRED.items():
        value = msg.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return False
    return bool(0 <= msg["gpu"] < GPUS_PER_HOST and 0 <= msg["util_pct"] <= 100
                and 0 <= msg["mem_used_mib"] <= msg["mem_total_mib"] and 0 < msg["temp_c"] < 130
                and msg["power_w"] >= 0 and msg["seq"] >= 1 and msg["streamer"] >= 0)
