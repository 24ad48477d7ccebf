"""pymq's figures in an application's own prometheus_client registry.

    from prometheus_client import REGISTRY, start_http_server
    import pymq.metrics

    REGISTRY.register(pymq.metrics.Collector("telemetry"))   # a broker name, a Client or a Broker
    start_http_server(9100)

Each collect() (each scrape) reads client.stats() and yields the same metric
families, names and labels as the admin server's GET /metrics (the one table
in pymq/admin/metrics.py), except pymq_healthy, which only the supervisor
knows. Needs the prometheus-client package: `pip install 'pymq-shm[metrics]'`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        InfoMetricFamily, Metric)
    from prometheus_client.registry import Collector as _CollectorBase
except ImportError as e:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "pymq.metrics needs the prometheus-client package: "
        "pip install 'pymq-shm[metrics]' (or pip install prometheus-client)") from e

from .admin.metrics import METRICS, Spec, samples
from .errors import BrokerClosed, BrokerNotFound

log = logging.getLogger("pymq.metrics")

__all__ = ["Collector"]


class Collector(_CollectorBase):
    """A prometheus_client collector of one broker's figures.

    source: a broker name (a Client is connected at the first scrape, and
    again after the broker was restarted), or a Client or Broker of the
    caller's (used as it is; the caller closes it). A scrape while the broker
    is not running yields pymq_build_info alone."""

    def __init__(self, source: Any = None) -> None:
        if source is None or isinstance(source, str):
            self._name: str | None = source
            self._client: Any = None
        elif callable(getattr(source, "stats", None)):
            self._name, self._client = None, source
        else:
            raise TypeError(f"Collector wants a broker name, a Client or a Broker, "
                            f"not {type(source).__name__}")
        self._owns = self._client is None
        self._down_logged = False

    def describe(self) -> list[Metric]:
        """The families this collector yields (without samples), for the
        registry's check of duplicate names."""
        return [_family(spec) for spec in METRICS if spec.name != "pymq_healthy"]

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for spec, found in samples(stats if stats is not None else {}):
            if stats is None and spec.kind != "info":
                continue
            family = _family(spec)
            for labels, value in found:
                label_values = [v for _, v in labels]
                if isinstance(family, InfoMetricFamily):
                    family.add_metric(label_values, {spec.key: str(value)})
                elif isinstance(family, (CounterMetricFamily, GaugeMetricFamily)):
                    assert not isinstance(value, str)
                    family.add_metric(label_values, value)
            yield family

    def _stats(self) -> dict[str, Any] | None:
        from .client import connect
        try:
            if self._client is None:
                self._client = connect(self._name) if self._name is not None else connect()
            stats: dict[str, Any] = self._client.stats()
        except (BrokerNotFound, BrokerClosed) as e:
            if self._owns and self._client is not None:
                self._client.close()
                self._client = None
            if not self._down_logged:
                log.warning("pymq.metrics: no figures of broker %r: %s", self._name, e)
                self._down_logged = True
            return None
        self._down_logged = False
        return stats

    def close(self) -> None:
        """Close the Client this collector connected (idempotent)."""
        if self._owns and self._client is not None:
            self._client.close()
        self._client = None


def _family(spec: Spec) -> Metric:
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels, unit=spec.unit)
    if spec.kind == "gauge":
        return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels, unit=spec.unit)
    return InfoMetricFamily(spec.family, spec.help, labels=spec.labels)
