"""What the programs of the command line share (pymq/cliutil.py)."""

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

from pymq import cliutil


def test_sizes():
    size = cliutil.size_arg
    assert size("65536") == 65536 and size("64K") == size("64KiB") == 65536
    assert size("8M") == size("8mb") == 8 << 20 and size("1G") == 1 << 30
    for bad in ("lots", "-1", "1.5M", "8 TiB"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a size"):
            size(bad)


@pytest.mark.parametrize("parse, good, bad", [
    (cliutil.positive_int, {"1": 1, "12": 12}, ["0", "-1", "1.5", "x"]),
    (cliutil.nonneg_int, {"0": 0}, ["-1", "nan"]),
    (cliutil.nonneg_float, {"0": 0.0, "2.5": 2.5, "inf": float("inf")}, ["-0.1", "nan", "x"]),
    (cliutil.positive_float, {"0.001": 0.001, "1": 1.0}, ["0", "0.0009", "nan"]),
    (cliutil.port_arg, {"0": 0, "65535": 65535}, ["-1", "65536", "http"]),
])
def test_numbers_take_what_they_say_and_name_what_they_want(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{text!r} is not "):
            parse(text)


def test_names_are_checked_by_the_config_rules():
    assert cliutil.broker_name_arg("telemetry") == "telemetry"
    assert cliutil.topic_arg("gpu.telemetry-1") == "gpu.telemetry-1"
    for parse, bad in ((cliutil.broker_name_arg, "a.b"), (cliutil.topic_arg, ".hidden"),
                       (cliutil.group_arg, "a/b")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_usage_errors_are_one_line_with_exit_status_2(capsys):
    p = cliutil.ArgumentParser(prog="prog")
    p.add_argument("--n", type=cliutil.positive_int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "prog: error: argument --n: '0' is not an integer >= 1 (see 'prog --help')\n"


def test_run_main_turns_exceptions_into_one_line_and_exit_status_1(capsys, monkeypatch):
    monkeypatch.delenv("PYMQ_DEBUG", raising=False)

    def fail(e):
        def body():
            raise e
        return body

    assert cliutil.run_main("pymq x", lambda: 3) == 3
    assert cliutil.run_main("pymq x", fail(cliutil.Failure("it broke"))) == 1
    assert capsys.readouterr().err == "pymq x: error: it broke\n"
    assert cliutil.run_main("pymq x", fail(RuntimeError("odd"))) == 1
    assert capsys.readouterr().err == "pymq x: error: RuntimeError: odd\n"
    assert cliutil.run_main("pymq x", fail(KeyboardInterrupt())) == 1
    assert capsys.readouterr().err == "pymq x: interrupted\n"
    monkeypatch.setenv("PYMQ_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cliutil.run_main("pymq x", fail(RuntimeError("odd")))


def test_counts_and_bytes():
    assert cliutil.count_text(1) == "1 message" and cliutil.count_text(1234) == "1,234 messages"
    assert cliutil.count_text(2, "process", "processes") == "2 processes"
    assert cliutil.bytes_text(512) == "512 B" and cliutil.bytes_text(65536) == "64.0 KiB"
    assert cliutil.bytes_text(8 << 20) == "8.0 MiB"


def test_compact_counts_fit_five_characters():
    cases = {0: "0", 9_999: "9,999", 10_000: "10.0k", 12_345: "12.3k", 123_456: "123k",
             999_999: "1.00M", 1_234_567: "1.23M", 98_765_432: "98.8M", 4_000_000_000: "4.00G",
             -12_345: "-12.3k"}
    for n, text in cases.items():
        assert cliutil.compact(n) == text, n
    for n in (10 ** k - 1 for k in range(1, 16)):
        assert len(cliutil.compact(n)) <= 5, n


def test_table_aligns_and_compacts_only_to_fit():
    rows = [["gpu-telemetry", 1_234_567, 12, "45.0%"], ["u", 5, 0, "-"]]
    lines = cliutil.table(["TOPIC", "PUBLISHED", "DEPTH", "RING"], rows)
    assert lines == ["TOPIC          PUBLISHED  DEPTH   RING",
                     "gpu-telemetry  1,234,567     12  45.0%",
                     "u                      5      0      -"]
    assert cliutil.table(["TOPIC", "PUBLISHED", "DEPTH", "RING"], rows, width=38) == lines
    narrow = cliutil.table(["TOPIC", "PUBLISHED", "DEPTH", "RING"], rows, width=34)
    assert narrow[1] == "gpu-telemetry      1.23M     12  45.0%" and len(narrow[1]) <= 38
    assert max(map(len, cliutil.table(["A", "B"], [["x" * 50, 1_234_567]], width=20))) > 20


def test_stop_signals_set_a_flag_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with cliutil.StopSignals() as stop:
        assert not stop and stop.name == ""
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        t0 = time.monotonic()
        stop.sleep(30)
        assert time.monotonic() - t0 < 5
        assert stop and stop.count == 2 and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_stop_signals_write_their_notes_and_raise_when_asked():
    code = ("import os, signal; from pymq.cliutil import StopSignals\n"
            "with StopSignals(notes=('first', 'second'), raise_at=3) as s:\n"
            "    for _ in range(3):\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        print(s.count, flush=True)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["1", "2"]
    assert "SIGINT: first\n" in r.stderr and "SIGINT: second\n" in r.stderr
    assert "KeyboardInterrupt" in r.stderr
