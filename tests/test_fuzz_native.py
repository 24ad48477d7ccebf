"""tests/test_fuzz_native.py - owns the bounded CI run of the coverage-guided
fuzzers of native/ (libFuzzer targets tools/fuzz/*.c, driven by
tools/fuzz_native.py: segment validation and record reading, the namespace's
validation, the log's encoder), and the regression tests of what they found.

Each runs a fixed number of executions from a fixed seed; they need clang
(with libFuzzer), and skip without it. docs/reliability.md ("Fuzzing") has
the long run.
"""

import importlib.util
import os
import sys

import pytest

_spec = importlib.util.spec_from_file_location(
    "fuzz_native", os.path.join(os.path.dirname(__file__), "..", "tools", "fuzz_native.py"))
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["fuzz_native"] = fuzz
_spec.loader.exec_module(fuzz)

needs_clang = pytest.mark.skipif(fuzz.clang() is None,
                                 reason="clang with libFuzzer is not installed (apt-get install clang)")
# The targets carry clang's ASan and UBSan themselves: the sanitized pass of
# the suite (make test-sanitize) would run the same executions again.
once = pytest.mark.skipif(bool(os.environ.get("PYMQ_EXPECT_SANITIZED")),
                          reason="sanitized already: run by the plain pass")

RUNS = {"ring": 20000, "ns": 20000, "jsonl": 20000}


@needs_clang
@once
@pytest.mark.parametrize("target", sorted(RUNS))
def test_native_fuzzer_finds_nothing_in_a_seeded_run(target, tmp_path):
    got = fuzz.run(target, runs=RUNS[target], seed=1, crashes=str(tmp_path))
    assert got["returncode"] == 0 and not got["crashes"], got["report"]
    assert got["execs"] == RUNS[target]
