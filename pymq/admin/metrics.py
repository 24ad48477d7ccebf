"""The broker's figures as Prometheus metrics: the one table of metric
definitions (METRICS), the samples it yields from a stats dict
(Client.stats()), and their two text expositions, Prometheus text format 0.0.4
and OpenMetrics 1.0.0. pymq/metrics.py builds prometheus_client families from
the same table and samples. Standard library only.

Conventions (https://prometheus.io/docs/practices/naming/): every name starts
with `pymq_`; a counter (a figure that only grows) ends in `_total`; a unit is
a suffix (`_bytes`, `_seconds`); labels are `topic` and `group` (and, for a
bridge to NATS, `node` and `direction`: "out" or "in"). Anonymous
subscriptions (a group each, coming and going) are one label set per topic,
group="~anonymous", so that their churn never grows the number of series.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

ANONYMOUS = "~anonymous"  # the group label of a topic's anonymous subscriptions, together
                          # (a group name cannot start with "~": no clash with a real one)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Spec:
    """One metric family.

    name: the name in Prometheus text (a counter's ends in _total, an info's
    in _info); kind: "counter", "gauge" or "info"; scope: "broker", "topic",
    "group", "node" (a bridge) or "bridge" (a bridge's topic in one direction)
    (labels: none; topic; topic and group; node; node, direction and topic);
    key: the figure's
    key in its stats dict (broker scope: see broker_figures()); unit: the
    name's unit suffix, or ""; anonymous: how the group-scope figure of a
    topic's anonymous subscriptions is combined ("sum", "max"), or "" for
    none (a sum of counters that vanish with their subscription is no counter).
    """

    name: str
    kind: str
    help: str
    scope: str
    key: str
    unit: str = ""
    anonymous: str = ""

    @property
    def family(self) -> str:
        """The family name in OpenMetrics (and prometheus_client): without
        the counter's _total or the info's _info."""
        if self.kind == "counter":
            return self.name[:-len("_total")]
        if self.kind == "info":
            return self.name[:-len("_info")]
        return self.name

    @property
    def labels(self) -> tuple[str, ...]:
        return {"broker": (), "topic": ("topic",), "group": ("topic", "group"),
                "node": ("node",), "bridge": ("node", "direction", "topic")}[self.scope]


METRICS: tuple[Spec, ...] = (
    # broker
    Spec("pymq_build_info", "info", "The pymq version serving these figures (value 1).",
         "broker", "version"),
    Spec("pymq_healthy", "gauge", "1 if the broker is healthy (GET /health is 200), else 0.",
         "broker", "healthy"),
    Spec("pymq_topics", "gauge", "Topics of the broker.", "broker", "topics"),
    Spec("pymq_supervisor_restarts_total", "counter",
         "Times the supervisor process was restarted.", "broker", "supervisor_restarts"),
    Spec("pymq_reaped_processes_total", "counter",
         "Dead client processes reaped by the supervisor.", "broker", "reaped_processes"),
    Spec("pymq_reaped_subscriptions_total", "counter",
         "Subscriptions of dead processes removed by the supervisor.", "broker",
         "reaped_subscriptions"),
    Spec("pymq_supervisor_last_sweep_timestamp_seconds", "gauge",
         "When the supervisor last swept (epoch seconds).", "broker", "last_sweep", "seconds"),
    # topic
    Spec("pymq_published_total", "counter", "Messages published to the topic.",
         "topic", "published"),
    Spec("pymq_published_bytes_total", "counter", "Payload bytes published to the topic.",
         "topic", "published_bytes", "bytes"),
    Spec("pymq_publish_waits_total", "counter", "Publishes that waited for ring space.",
         "topic", "publish_waits"),
    Spec("pymq_publish_refusals_total", "counter",
         "Publishes refused (pymq.Full): no ring space within their timeout.",
         "topic", "publish_refusals"),
    Spec("pymq_expired_total", "counter",
         "Records reclaimed from the ring once no group needed them.", "topic", "expired"),
    Spec("pymq_lock_recoveries_total", "counter",
         "Topic locks recovered from a process that died holding them.",
         "topic", "lock_recoveries"),
    Spec("pymq_corrupt_total", "counter", "Corruptions detected in the topic's segment.",
         "topic", "corrupt"),
    Spec("pymq_depth", "gauge",
         "Messages the slowest group has yet to receive or ack (lag + pending).",
         "topic", "depth"),
    Spec("pymq_ring_used_bytes", "gauge", "Ring bytes held for groups that still need them.",
         "topic", "ring_bytes_used", "bytes"),
    Spec("pymq_ring_retained_bytes", "gauge", "Ring bytes holding messages (with history).",
         "topic", "ring_bytes_retained", "bytes"),
    Spec("pymq_ring_capacity_bytes", "gauge", "Data bytes of the topic's ring.",
         "topic", "ring_bytes_capacity", "bytes"),
    # group
    Spec("pymq_delivered_total", "counter", "Deliveries to members of the group.",
         "group", "delivered", anonymous="sum"),
    Spec("pymq_delivered_bytes_total", "counter", "Payload bytes delivered to the group.",
         "group", "delivered_bytes", "bytes", anonymous="sum"),
    Spec("pymq_acked_total", "counter", "Deliveries acked by the group.", "group", "acked"),
    Spec("pymq_nacked_total", "counter", "Deliveries nacked by the group.", "group", "nacked"),
    Spec("pymq_redelivered_total", "counter", "Redeliveries in the group.",
         "group", "redelivered"),
    Spec("pymq_dead_lettered_total", "counter",
         "Messages of the group moved to the dead-letter topic after max_retries.",
         "group", "dead_lettered"),
    Spec("pymq_timeouts_total", "counter",
         "Deliveries of the group not acked within ack_timeout.", "group", "timeouts"),
    Spec("pymq_group_members", "gauge", "Live subscriptions in the group.",
         "group", "members", anonymous="sum"),
    Spec("pymq_group_lag", "gauge",
         "Messages published that the group has not received yet (anonymous: the largest).",
         "group", "lag", anonymous="max"),
    Spec("pymq_group_pending", "gauge", "Deliveries of the group awaiting an ack.",
         "group", "pending", anonymous="sum"),
    Spec("pymq_group_position", "gauge", "Sequence number of the group's next message.",
         "group", "position"),
    # bridges to NATS JetStream (pymq bridge): per node, and per node, direction and topic
    Spec("pymq_bridge_up", "gauge", "1 while the bridge process of the node lives.",
         "node", "alive"),
    Spec("pymq_bridge_connected", "gauge", "1 while the bridge is connected to NATS.",
         "node", "connected"),
    Spec("pymq_bridge_reconnects_total", "counter", "Times the bridge reconnected to NATS.",
         "node", "reconnects"),
    Spec("pymq_bridge_forwarded_total", "counter",
         "Messages forwarded: out, acked by JetStream; in, put into the local topic.",
         "bridge", "forwarded"),
    Spec("pymq_bridge_in_flight", "gauge", "Publishes to JetStream not acked yet (out).",
         "bridge", "in_flight"),
    Spec("pymq_bridge_lag", "gauge", "Messages the node's consumer has yet to fetch (in).",
         "bridge", "lag"),
    Spec("pymq_bridge_resent_total", "counter",
         "Publishes sent again after a failure or no ack in time (out).", "bridge", "resent"),
    Spec("pymq_bridge_errors_total", "counter", "Failed publishes, fetches and acks.",
         "bridge", "errors"),
    Spec("pymq_bridge_echo_skipped_total", "counter",
         "Messages that came in from NATS and were not sent back out (out).",
         "bridge", "echo_skipped"),
    Spec("pymq_bridge_own_dropped_total", "counter",
         "Messages of this node coming back from NATS, dropped (in).", "bridge", "own_dropped"),
    Spec("pymq_bridge_duplicates_total", "counter",
         "Messages delivered again by NATS and dropped as already seen (in).",
         "bridge", "duplicates"),
)


def node_figures(bridge: Mapping[str, Any]) -> dict[str, Any]:
    """The node-scope figures of a bridge's entry in stats["bridges"]."""
    nats = bridge.get("nats") or {}
    return {"alive": bridge.get("alive"), "connected": nats.get("connected"),
            "reconnects": nats.get("reconnects")}


def _version() -> str:
    from .. import __version__
    return str(__version__)


def number(value: Any) -> float | int | None:
    """A figure as a sample value, or None when it is absent or not a number
    (no sample rather than a wrong one)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None


def broker_figures(stats: Mapping[str, Any], healthy: bool | None) -> dict[str, Any]:
    """The broker-scope figures (the keys of the broker Specs) of a stats dict."""
    supervisor = stats.get("supervisor") or {}
    return {
        "version": _version(),
        "healthy": None if healthy is None else int(healthy),
        "topics": len(stats.get("topics") or {}),
        "supervisor_restarts": supervisor.get("restarts"),
        "last_sweep": supervisor.get("last_sweep"),
        "reaped_processes": stats.get("reaped_processes"),
        "reaped_subscriptions": stats.get("reaped_subscriptions"),
    }


def anonymous_figures(topic: Mapping[str, Any]) -> dict[str, Any] | None:
    """The figures of a topic's anonymous subscriptions together, or None when
    it has none to show.

    The topic's "anonymous" entry gives members, delivered and delivered_bytes
    (monotonic: they include departed subscriptions) when the broker provides
    it; otherwise they are summed over its anonymous groups. The gauges lag
    (the largest) and pending (the sum) always come from the groups."""
    groups = [g for g in (topic.get("groups") or {}).values() if g.get("anonymous")]
    given = topic.get("anonymous")
    if not groups and not given:
        return None
    out: dict[str, Any] = {}
    for spec in METRICS:
        if spec.scope != "group" or not spec.anonymous:
            continue
        values = [v for v in (number(g.get(spec.key)) for g in groups) if v is not None]
        if isinstance(given, Mapping) and spec.key in given:
            out[spec.key] = given[spec.key]
        elif values:
            out[spec.key] = sum(values) if spec.anonymous == "sum" else max(values)
    return out


def samples(stats: Mapping[str, Any], healthy: bool | None = None
            ) -> Iterator[tuple[Spec, list[tuple[Labels, float | int | str]]]]:
    """Each metric family of METRICS with its samples (label set, value), in
    table order; a family without samples is left out. An info family's value
    is its label value (the version)."""
    topics: Mapping[str, Any] = stats.get("topics") or {}
    bridges: Mapping[str, Any] = stats.get("bridges") or {}
    broker = broker_figures(stats, healthy)
    for spec in METRICS:
        found: list[tuple[Labels, float | int | str]] = []
        if spec.scope == "broker":
            value = broker.get(spec.key)
            if spec.kind == "info":
                found.append(((), str(value)))
            elif number(value) is not None:
                found.append(((), _checked(spec, value)))
        elif spec.scope == "node":
            for node in sorted(bridges):
                value = node_figures(bridges[node]).get(spec.key)
                if number(value) is not None:
                    found.append(((("node", node),), _checked(spec, value)))
        elif spec.scope == "bridge":
            for node in sorted(bridges):
                for direction in ("out", "in"):
                    per_topic = bridges[node].get(direction) or {}
                    for topic in sorted(per_topic):
                        value = (per_topic[topic] or {}).get(spec.key)
                        if number(value) is not None:
                            found.append(((("node", node), ("direction", direction),
                                           ("topic", topic)), _checked(spec, value)))
        elif spec.scope == "topic":
            for topic in sorted(topics):
                value = topics[topic].get(spec.key)
                if number(value) is not None:
                    found.append(((("topic", topic),), _checked(spec, value)))
        else:
            for topic in sorted(topics):
                figures = topics[topic]
                groups = figures.get("groups") or {}
                for group in sorted(groups):
                    g = groups[group]
                    if g.get("anonymous"):
                        continue
                    value = g.get(spec.key)
                    if number(value) is not None:
                        found.append(((("topic", topic), ("group", group)), _checked(spec, value)))
                anon = anonymous_figures(figures) if spec.anonymous else None
                if anon is not None and number(anon.get(spec.key)) is not None:
                    found.append(((("topic", topic), ("group", ANONYMOUS)),
                                  _checked(spec, anon[spec.key])))
        found = [(labels, v) for labels, v in found if not (isinstance(v, float) and math.isnan(v)
                                                             and spec.kind == "counter")]
        if found:
            yield spec, found


def _checked(spec: Spec, value: Any) -> float | int:
    v = number(value)
    assert v is not None
    return v


# -- the text expositions -----------------------------------------------------------------

def escape_label_value(value: object) -> str:
    """A label value as both formats want it: backslash, double quote and line
    feed escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def format_value(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _sample_line(name: str, labels: Sequence[tuple[str, str]], value: str) -> str:
    if not labels:
        return f"{name} {value}"
    text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
    return f"{name}{{{text}}} {value}"


def _lines(stats: Mapping[str, Any], healthy: bool | None, openmetrics: bool) -> Iterator[str]:
    for spec, found in samples(stats, healthy):
        family = spec.family if openmetrics else spec.name
        kind = spec.kind if openmetrics or spec.kind != "info" else "gauge"
        yield f"# HELP {family} {_escape_help(spec.help, openmetrics)}"
        yield f"# TYPE {family} {kind}"
        if openmetrics and spec.unit:
            yield f"# UNIT {family} {spec.unit}"
        for labels, value in found:
            if spec.kind == "info":
                yield _sample_line(spec.name, labels + ((spec.key, str(value)),), "1")
            else:
                assert not isinstance(value, str)
                yield _sample_line(spec.name, labels, format_value(value))


def metrics_text(stats: Mapping[str, Any], healthy: bool | None = None) -> str:
    """The stats dict (Client.stats()) in Prometheus text format 0.0.4;
    healthy: whether /health is 200 (pymq_healthy), or None for no such sample."""
    return "\n".join(_lines(stats, healthy, openmetrics=False)) + "\n"


def openmetrics_text(stats: Mapping[str, Any], healthy: bool | None = None) -> str:
    """The same figures in OpenMetrics 1.0.0: a counter's family is named
    without _total (its samples with it), units are declared, `# EOF` ends it."""
    return "\n".join([*_lines(stats, healthy, openmetrics=True), "# EOF"]) + "\n"


def wants_openmetrics(accept: str | None) -> bool:
    """Whether an Accept header asks for OpenMetrics (as Prometheus's scrapes
    do: `application/openmetrics-text;version=1.0.0,...;q=0.5`), with q > 0."""
    for item in (accept or "").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False
