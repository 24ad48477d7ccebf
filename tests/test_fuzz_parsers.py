"""tests/test_fuzz_parsers.py - owns the bounded CI run of the coverage-guided
fuzzers of pymq's Python parsers (atheris, tools/fuzz_parsers.py: the
persistence log and its recovery, groups.json and the restore of it, the
admin server's request reading and routing, the command line, BrokerConfig,
liveness token files) and the regression tests of what they found: each a
minimal input inline.

The CI run is a fixed number of executions from a fixed seed per target;
inputs that meet a bug still open are not failures of it (the fuzzer's KNOWN
list names them: none now), so that it still catches new ones.
docs/reliability.md ("Fuzzing") has the long run.
"""

import importlib.util
import json
import os
import sys

import pytest

import pymq
from pymq import segments
from pymq.persistence import LogReport, read_log

_spec = importlib.util.spec_from_file_location(
    "fuzz_parsers", os.path.join(os.path.dirname(__file__), "..", "tools", "fuzz_parsers.py"))
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_parsers"] = fuzz
_spec.loader.exec_module(fuzz)

RUNS = {"log": 400, "checkpoint": 400, "admin": 1500, "cli": 100, "config": 2000, "token": 300}


@pytest.mark.skipif(bool(os.environ.get("PYMQ_EXPECT_SANITIZED")),
                    reason="atheris' coverage does not work with gcc's libasan preloaded (make "
                           "test-sanitize); the targets are Python: the plain pass runs them")
@pytest.mark.parametrize("target", sorted(RUNS))
def test_parser_fuzzer_finds_nothing_new_in_a_seeded_run(target, tmp_path):
    pytest.importorskip("atheris")
    got = fuzz.run(target, runs=RUNS[target], seed=1, crashes=str(tmp_path))
    assert got["returncode"] == 0 and not got["crashes"], got["report"]
    assert got["execs"] == RUNS[target]


@pytest.mark.parametrize("target", sorted(set(RUNS) - {"cli"}))
def test_parser_fuzzer_seeds_are_handled(target):
    """Every seed input runs through its target in this process, also without
    atheris (but the command line's, which needs a broker of its own)."""
    try:
        for data in fuzz.seeds(target):
            fuzz.replay(target, data)
    finally:
        fuzz._cleanup()


# ---- regressions: the persistence log -------------------------------------------------

LINE = b'{"seq":%d,"ts":%s,"payload":"aGk="}\n'


def _log(tmp_path, *lines):
    d = tmp_path / "t"
    d.mkdir(mode=0o700)
    (d / f"{1:020d}.jsonl").write_bytes(b"".join(lines))
    return str(tmp_path)


def test_read_log_skips_a_line_whose_ts_is_infinite(tmp_path):
    root = _log(tmp_path, LINE % (1, b"1e999"), LINE % (2, b"1.5"))
    report = LogReport()
    assert list(read_log(root, "t", 1, report)) == [(2, 1_500_000_000, b"hi")]
    assert report.corrupt == 1


def test_read_log_skips_a_line_whose_ts_is_nan(tmp_path):
    root = _log(tmp_path, LINE % (1, b"NaN"), LINE % (2, b"1.5"))
    report = LogReport()
    assert list(read_log(root, "t", 1, report)) == [(2, 1_500_000_000, b"hi")]
    assert report.corrupt == 1


def _restart(name, root, **kw):
    """A Broker on a persistence folder: what it raises (None if it started)."""
    try:
        b = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=65536, persistence_enabled=True,
                                          persistence_dir=root, **kw))
    except Exception as e:  # noqa: BLE001 - what it is, is the question (the `name`
        return e                # fixture checks that a failed start leaves nothing)
    b.close()
    return None


def test_a_restart_skips_a_log_line_whose_ts_is_past_int64_nanoseconds(name, tmp_path):
    root = _log(tmp_path, LINE % (1, b"100000000000"), LINE % (2, b"1.5"))
    (tmp_path / "t" / "groups.json").write_text(json.dumps(
        {"version": 1, "next_seq": 3, "groups": [
            {"name": "g", "ack": True, "position": 1, "acked": []}]}))
    assert _restart(name, root) is None


@pytest.mark.parametrize("group", ["g" * 60, "", "\ud800"])
def test_a_restart_with_a_bad_group_name_in_groups_json_is_an_mq_error(name, tmp_path, group):
    root = _log(tmp_path, LINE % (1, b"1.5"))
    (tmp_path / "t" / "groups.json").write_text(json.dumps(
        {"version": 1, "next_seq": 2, "groups": [
            {"name": group, "ack": True, "position": 1, "acked": []}]}))
    e = _restart(name, root)
    assert e is None or isinstance(e, pymq.MQError), repr(e)


@pytest.mark.parametrize("field", ["position", "acked"])
def test_a_restart_with_a_seq_past_64_bits_in_groups_json_is_an_mq_error(name, tmp_path, field):
    root = _log(tmp_path, LINE % (1, b"1.5"))
    entry = {"name": "g", "ack": True, "position": 1, "acked": []}
    entry[field] = 1 << 64 if field == "position" else [1 << 64]
    (tmp_path / "t" / "groups.json").write_text(json.dumps(
        {"version": 1, "next_seq": 2, "groups": [entry]}))
    e = _restart(name, root)
    assert e is None or isinstance(e, pymq.MQError), repr(e)


def test_a_restart_with_an_acked_seq_twice_in_groups_json_redelivers_the_rest(name, tmp_path):
    """Found by the parser fuzzer: "acked": [4, 4] made the ring's restore
    refuse the group (seqs not increasing) with a bare ValueError out of
    Broker(). Each acked seq counts once."""
    root = _log(tmp_path, *(LINE % (i, b"1.5") for i in range(1, 6)))
    (tmp_path / "t" / "groups.json").write_text(json.dumps(
        {"version": 1, "next_seq": 6, "groups": [
            {"name": "g", "ack": True, "position": 2, "acked": [4, 4]}]}))
    b = pymq.Broker(pymq.BrokerConfig(name=name, ring_bytes=65536, persistence_enabled=True,
                                      persistence_dir=root))
    try:
        sub = b.subscribe_with_ack("t", group="g")
        got = sub.get_many(10, timeout=5)
        assert [m.seq for m in got] == [2, 3, 5]
    finally:
        b.close()


@pytest.mark.parametrize("groups", [
    [{"name": "g", "ack": True, "position": 1, "acked": []}] * 2,
    [{"name": "~persist", "ack": True, "position": 1, "acked": []}]])
def test_a_restart_with_a_group_named_twice_or_pymqs_own_is_a_persistence_error(name, tmp_path,
                                                                              groups):
    root = _log(tmp_path, LINE % (1, b"1.5"))
    (tmp_path / "t" / "groups.json").write_text(json.dumps(
        {"version": 1, "next_seq": 2, "groups": groups}))
    e = _restart(name, root)
    assert isinstance(e, pymq.PersistenceError) and "groups.json" in str(e), repr(e)


# ---- regressions: BrokerConfig ---------------------------------------------------------


@pytest.mark.parametrize("field, value", [("publish_timeout", float("inf")),
                                          ("ack_timeout", float("nan")),
                                          ("ack_timeout", float("inf")),
                                          ("persistence_fsync_interval", float("inf"))])
def test_broker_config_refuses_non_finite_seconds(field, value):
    with pytest.raises(ValueError):
        pymq.BrokerConfig(**{field: value})


def test_broker_config_from_env_refuses_nan():
    with pytest.raises(ValueError):
        pymq.BrokerConfig.from_env({"PYMQ_ACK_TIMEOUT": "nan"})


def test_broker_config_refuses_an_ack_timeout_past_int64_nanoseconds():
    with pytest.raises(ValueError):
        pymq.BrokerConfig(ack_timeout=1e10)


def test_broker_config_refuses_max_retries_the_ring_refuses():
    with pytest.raises(ValueError):
        pymq.BrokerConfig(max_retries=5000)


def test_a_broker_that_fails_to_start_leaves_nothing_in_dev_shm(name):
    try:
        pymq.Broker(pymq.BrokerConfig(name=name, publish_timeout=float("inf")))
    except Exception:  # noqa: BLE001 - any failure; what it leaves is the question
        pass
    left = segments.namespace_entries(name)
    segments.remove_namespace(name)  # not the fixture's failure: this test's
    assert left == []
