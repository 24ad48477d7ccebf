"""How the processes that pymq runs itself write their logs (`pymq serve`).

The library only logs, through logging.getLogger("pymq") and its children
(with a NullHandler: an application chooses where its logs go); the
supervisor's records arrive in the Broker's process under their own logger
names ("pymq.supervisor"), so they go where that process's go. A process of
pymq's own chooses here: configure() puts one handler on the "pymq" logger,
writing to stderr in one of two formats:

  text   2026-12-07T08:31:02.153Z INFO pymq.cli: broker 'telemetry' serving broker=telemetry ...
  json   {"time": "2026-12-07T08:31:02.153Z", "level": "INFO", "logger": "pymq.cli",
          "message": "broker 'telemetry' serving", "broker": "telemetry", ...}

json is one object per line for log collectors (Fluent Bit, Vector, Loki,
CloudWatch): time (UTC, RFC 3339, milliseconds), level, logger, message, the
record's extra fields (logger.info(..., extra={"topic": t})), and "exception"
(the formatted traceback, also one that came from the supervisor as text) when
there is one. The level and the format come from --log-level / --log-format,
or from PYMQ_LOG_LEVEL / PYMQ_LOG_FORMAT (from_env, configure_from_env).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
LEVEL_ENV, FORMAT_ENV = "PYMQ_LOG_LEVEL", "PYMQ_LOG_FORMAT"
DEFAULT_LEVEL, DEFAULT_FORMAT = "INFO", "text"

# What every LogRecord has: anything else on a record came in `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


def check_level(text: str) -> str:
    """'info' -> 'INFO'; ValueError naming the levels for anything else."""
    level = text.strip().upper()
    if level not in LEVELS:
        raise ValueError(f"{text!r} is not a log level ({', '.join(LEVELS)})")
    return level


def check_format(text: str) -> str:
    """'JSON' -> 'json'; ValueError naming the formats for anything else."""
    fmt = text.strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"{text!r} is not a log format ({' or '.join(FORMATS)})")
    return fmt


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given through `extra`."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _utc(created: float) -> str:
    t = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The record's traceback: formatted from exc_info, or the text of one that
    was formatted elsewhere (a record of the supervisor carries exc_text)."""
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return record.exc_text or None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _utc(record.created), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)  # an extra field never hides one of the four
        if exc := _exception(self, record):
            out["exception"] = exc
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)  # what JSON cannot hold, as its str()


class TextFormatter(logging.Formatter):
    """'TIME LEVEL LOGGER: MESSAGE key=value ...', a traceback on the lines below."""

    def format(self, record: logging.LogRecord) -> str:
        fields = "".join(f" {k}={v}" for k, v in extra_fields(record).items())
        line = f"{_utc(record.created)} {record.levelname} {record.name}: " \
               f"{record.getMessage()}{fields}"
        if exc := _exception(self, record):
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure() installs (so that it can find it again)."""


def configure(level: str = DEFAULT_LEVEL, fmt: str = DEFAULT_FORMAT,
              stream: IO[str] | None = None, logger: str = "pymq") -> logging.Handler:
    """Log records of `logger` (and its children) at `level` and above to
    stream (default stderr) in format `fmt`, "text" or "json". Replaces the
    handler an earlier call installed; the records do not propagate further
    (a root handler would write them twice). Returns the handler."""
    level, fmt = check_level(level), check_format(fmt)
    log = logging.getLogger(logger)
    for old in [h for h in log.handlers if isinstance(h, _Handler)]:
        log.removeHandler(old)
    handler = _Handler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    return handler


def from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(level, format) from PYMQ_LOG_LEVEL and PYMQ_LOG_FORMAT (defaults: INFO,
    text); ValueError naming the variable if one is not valid."""
    environ = os.environ if environ is None else environ
    out = []
    for var, check, default in ((LEVEL_ENV, check_level, DEFAULT_LEVEL),
                                (FORMAT_ENV, check_format, DEFAULT_FORMAT)):
        try:
            out.append(check(environ.get(var) or default))
        except ValueError as e:
            raise ValueError(f"{var}: {e}") from None
    return out[0], out[1]


def configure_from_env(stream: IO[str] | None = None) -> logging.Handler:
    """configure() with the level and format of the environment."""
    level, fmt = from_env()
    return configure(level, fmt, stream)
