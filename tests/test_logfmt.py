"""Log formats of pymq's own processes (pymq/logfmt.py)."""

import io
import json
import logging

import pytest

from pymq import logfmt


@pytest.fixture
def stream():
    """A handler on logger "pymq.test-logfmt" (not "pymq": the tests' own logging stays)."""
    out = io.StringIO()
    yield out
    log = logging.getLogger("pymq.test-logfmt")
    for h in list(log.handlers):
        log.removeHandler(h)
    log.propagate = True
    log.setLevel(logging.NOTSET)


def records(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_is_one_object_per_line_with_the_extra_fields(stream):
    logfmt.configure("INFO", "json", stream, logger="pymq.test-logfmt")
    log = logging.getLogger("pymq.test-logfmt.child")
    log.info("broker %r serving", "t1", extra={"broker": "t1", "pid": 42, "odd": {1, 2}})
    log.debug("not shown")
    log.warning("multi\nline", extra={"message_id": 7})
    first, second = records(stream)
    assert first["level"] == "INFO" and first["logger"] == "pymq.test-logfmt.child"
    assert first["message"] == "broker 't1' serving"
    assert (first["broker"], first["pid"], first["odd"]) == ("t1", 42, "{1, 2}")
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-12-07T08:31:02.153Z")
    assert second["message"] == "multi\nline" and second["message_id"] == 7
    assert set(first) == {"time", "level", "logger", "message", "broker", "pid", "odd"}


def test_json_carries_the_traceback(stream):
    logfmt.configure("DEBUG", "json", stream, logger="pymq.test-logfmt")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("pymq.test-logfmt").exception("failed")
    (rec,) = records(stream)
    assert rec["level"] == "ERROR" and "RuntimeError: boom" in rec["exception"]


def test_text_is_a_line_with_key_values(stream):
    logfmt.configure("info", "TEXT", stream, logger="pymq.test-logfmt")
    logging.getLogger("pymq.test-logfmt").info("closed %s", "t1", extra={"broker": "t1"})
    line = stream.getvalue()
    assert line.endswith(" INFO pymq.test-logfmt: closed t1 broker=t1\n"), line


def test_configure_replaces_its_handler_and_does_not_propagate(stream):
    log = logging.getLogger("pymq.test-logfmt")
    logfmt.configure("INFO", "text", io.StringIO(), logger="pymq.test-logfmt")
    logfmt.configure("WARNING", "json", stream, logger="pymq.test-logfmt")
    assert len(log.handlers) == 1 and not log.propagate and log.level == logging.WARNING
    log.info("quiet")
    log.error("loud")
    assert [r["message"] for r in records(stream)] == ["loud"]


def test_levels_and_formats_come_checked_from_the_environment():
    assert logfmt.from_env({}) == ("INFO", "text")
    assert logfmt.from_env({"PYMQ_LOG_LEVEL": "debug", "PYMQ_LOG_FORMAT": "Json"}) == \
        ("DEBUG", "json")
    with pytest.raises(ValueError, match="PYMQ_LOG_LEVEL: 'loud' is not a log level"):
        logfmt.from_env({"PYMQ_LOG_LEVEL": "loud"})
    with pytest.raises(ValueError, match="PYMQ_LOG_FORMAT: 'xml' is not a log format"):
        logfmt.from_env({"PYMQ_LOG_FORMAT": "xml"})


def test_a_traceback_formatted_elsewhere_comes_along(stream):
    # a record of the supervisor, as the Broker's process rebuilds it from the pipe
    logfmt.configure("INFO", "json", stream, logger="pymq.test-logfmt")
    rec = logging.makeLogRecord({"name": "pymq.test-logfmt.supervisor", "levelno": 40,
                                 "levelname": "ERROR", "msg": "sweep: boom", "created": 0.0,
                                 "process": 7, "exc_text": "Traceback ...\nValueError: boom"})
    logging.getLogger(rec.name).handle(rec)
    (out,) = records(stream)
    assert out == {"time": "1970-01-01T00:00:00.000Z", "level": "ERROR",
                   "logger": "pymq.test-logfmt.supervisor", "message": "sweep: boom",
                   "exception": "Traceback ...\nValueError: boom"}
