"""The HTTP admin server of a broker, run by its supervisor process: /health,
/stats, /stats/{topic}, /metrics, /history and the dashboard at /.

Rooms: server.py (the HTTP engine: connections, limits, lanes, threads),
routes.py (the endpoints and their answers), metrics.py (the metric table and
the Prometheus and OpenMetrics texts), history.py (the recent history behind
/history), dashboard.html (the page). Standard library only; docs/admin.md
describes the whole.
"""

from .metrics import escape_label_value, metrics_text, openmetrics_text
from .server import AdminServer

__all__ = ["AdminServer", "escape_label_value", "metrics_text", "openmetrics_text"]
