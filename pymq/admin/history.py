"""The recent history of the broker's figures, kept by the admin server in the
supervisor process and served at GET /history, so that the dashboard's charts
show the last minutes from the moment a page loads.

The server samples stats() about once a second (History.add) and keeps `span`
seconds of samples: per topic, published/s and delivered/s; per group, lag and
pending (a topic's anonymous subscriptions together as group "~anonymous", as
in the metrics, so that their churn adds no series). Memory is bounded: one
array of doubles per series (`span / interval` samples) and at most
`max_series` series; a series absent for the whole span is dropped.
Standard library only; not thread-safe (the server's event loop owns it).
"""

from __future__ import annotations

import logging
import math
from array import array
from collections.abc import Mapping
from typing import Any

from .metrics import ANONYMOUS

log = logging.getLogger("pymq.admin")

SPAN = 600.0          # seconds of history kept
INTERVAL = 1.0        # seconds between samples
MAX_SERIES = 2000     # series kept at most (each span / interval doubles)

TOPIC_SERIES = ("published_per_s", "delivered_per_s")
GROUP_SERIES = ("lag", "pending")

NAN = float("nan")


class History:
    """Samples of the broker's figures over the last `span` seconds."""

    def __init__(self, span: float = SPAN, interval: float = INTERVAL,
                 max_series: int = MAX_SERIES) -> None:
        if span <= 0 or interval <= 0:
            raise ValueError("span and interval must be positive")
        self.span = float(span)
        self.interval = float(interval)
        self.capacity = max(2, math.ceil(span / interval))
        self.max_series = max_series
        self._t = array("d", [NAN] * self.capacity)   # a ring of sample times
        self._count = 0                                # samples added, ever
        # (kind, topic, group, figure) -> (values ring, index of the last sample with a value)
        self._series: dict[tuple[str, str, str, str], tuple[array[float], int]] = {}
        self._counters: dict[tuple[str, str], tuple[float, dict[str, float]]] = {}
        self.dropped_series = 0

    def __len__(self) -> int:
        """Samples kept."""
        return min(self._count, self.capacity)

    @property
    def series(self) -> int:
        """Series kept (each `capacity` doubles)."""
        return len(self._series)

    # -- adding a sample ---------------------------------------------------------------

    def add(self, t: float, stats: Mapping[str, Any]) -> None:
        """Record the figures of `stats` (a Client.stats() dict) taken at
        epoch time t. Rates come from the previous sample's counters; a counter
        that went backwards (a topic deleted and made again) gives no rate."""
        i = self._count % self.capacity
        self._t[i] = t
        values: dict[tuple[str, str, str, str], float] = {}
        topics: Mapping[str, Any] = stats.get("topics") or {}
        for topic, figures in topics.items():
            counters = _topic_counters(figures)
            prev = self._counters.get(("topic", topic))
            self._counters[("topic", topic)] = (t, counters)
            if prev is not None and t > prev[0]:
                dt = t - prev[0]
                pub = _delta(prev[1], counters, "published")
                if pub is not None:
                    values[("topic", topic, "", "published_per_s")] = pub / dt
                deltas = [_delta(prev[1], counters, k) for k in counters if k.startswith("d:")]
                known = [d for d in deltas if d is not None]
                if known or not deltas:
                    values[("topic", topic, "", "delivered_per_s")] = sum(known) / dt
            for group, g in _groups(figures).items():
                for figure in GROUP_SERIES:
                    v = g.get(figure)
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        values[("group", topic, group, figure)] = float(v)
        for gone in [k for k in self._counters if k[1] not in topics]:
            del self._counters[gone]
        for key, value in values.items():
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= self.max_series:
                    if not self.dropped_series:
                        log.warning("history: over %d series; new ones are not kept",
                                    self.max_series)
                    self.dropped_series += 1
                    continue
                series = (array("d", [NAN] * self.capacity), self._count)
            ring, _ = series
            ring[i] = value
            self._series[key] = (ring, self._count)
        for key, (ring, last) in list(self._series.items()):
            if key not in values:
                ring[i] = NAN
                if self._count - last >= self.capacity:
                    del self._series[key]  # nothing of it left in the span
        self._count += 1

    # -- reading it ---------------------------------------------------------------------

    def to_json(self, since: float | None = None) -> dict[str, Any]:
        """The samples taken after `since` (epoch seconds; None: all kept), as
        GET /history serves them: {"interval", "span", "t": [...],
        "topics": {topic: {"published_per_s": [...], "delivered_per_s": [...]}},
        "groups": {topic: {group: {"lag": [...], "pending": [...]}}}}; every
        list is aligned with "t", null where the series had no value."""
        n = len(self)
        order = [(self._count - n + k) % self.capacity for k in range(n)]
        if since is not None:
            order = [i for i in order if round(self._t[i], 3) > since]  # as served
        out: dict[str, Any] = {"interval": self.interval, "span": self.span,
                               "t": [round(self._t[i], 3) for i in order],
                               "topics": {}, "groups": {}}
        for (kind, topic, group, figure), (ring, _) in sorted(self._series.items()):
            points = [None if math.isnan(ring[i]) else round(ring[i], 3) for i in order]
            if all(p is None for p in points):
                continue
            if kind == "topic":
                out["topics"].setdefault(topic, {})[figure] = points
            else:
                out["groups"].setdefault(topic, {}).setdefault(group, {})[figure] = points
        for topics in (out["topics"],):
            for figures in topics.values():
                for figure in TOPIC_SERIES:
                    figures.setdefault(figure, [None] * len(order))
        for groups in out["groups"].values():
            for figures in groups.values():
                for figure in GROUP_SERIES:
                    figures.setdefault(figure, [None] * len(order))
        if self.dropped_series:
            out["dropped_series"] = self.dropped_series
        return out


def _groups(figures: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A topic's groups for the history: named ones as they are, anonymous ones
    together (lag: the largest, pending: the sum)."""
    out: dict[str, dict[str, Any]] = {}
    anon: list[Mapping[str, Any]] = []
    for name, g in (figures.get("groups") or {}).items():
        if g.get("anonymous"):
            anon.append(g)
        else:
            out[name] = dict(g)
    if anon:
        lags = [g["lag"] for g in anon if isinstance(g.get("lag"), (int, float))]
        pendings = [g["pending"] for g in anon if isinstance(g.get("pending"), (int, float))]
        out[ANONYMOUS] = {"lag": max(lags) if lags else None,
                          "pending": sum(pendings) if pendings else None}
    return out


def _topic_counters(figures: Mapping[str, Any]) -> dict[str, float]:
    """The counters rates are taken of: "published", and "d:<group>" for each
    group's deliveries (anonymous subscriptions together when the topic's
    "anonymous" entry counts them, departed ones included; else each on its own,
    so that one leaving takes no deliveries back)."""
    out: dict[str, float] = {}
    if isinstance(figures.get("published"), (int, float)):
        out["published"] = float(figures["published"])
    given = figures.get("anonymous")
    for name, g in (figures.get("groups") or {}).items():
        if g.get("anonymous") and isinstance(given, Mapping):
            continue
        if isinstance(g.get("delivered"), (int, float)):
            out["d:" + name] = float(g["delivered"])
    if isinstance(given, Mapping) and isinstance(given.get("delivered"), (int, float)):
        out["d:" + ANONYMOUS] = float(given["delivered"])
    return out


def _delta(prev: Mapping[str, float], now: Mapping[str, float], key: str) -> float | None:
    """How much a counter grew, or None when it is new or went backwards."""
    if key not in prev or key not in now or now[key] < prev[key]:
        return None
    return now[key] - prev[key]
