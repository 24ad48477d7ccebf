# make demo / make test do all the set-up: a .venv, the dependencies, the native build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
DEPS   := $(VENV)/.deps-installed
NATIVE := pymq/.native-built
SAN    := build/sanitize

.PHONY: all build demo test test-unit test-types test-sanitize sanitize-build fuzz-segments fuzz-native fuzz-parsers test-wheel bench bench-quick bench-throughput bench-micro clean chromium system-packages

all: build

$(DEPS): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(NATIVE): $(DEPS) build.py $(wildcard native/*/*.c native/*/*.h)
	$(PY) build.py
	touch $@

# Bytecode written once, up front: the environment may set PYTHONDONTWRITEBYTECODE,
# and then every interpreter a run starts (the suite starts about 550: supervisors,
# command lines, spawned workers) would compile pymq again, 80 ms of each under
# the sanitizers.
build: $(NATIVE)
	$(PY) -m compileall -q pymq tests tools benchmarks

demo: build
	$(PY) -m pymq.demo

# The two runs of the suite (plain, and under the sanitizers) at once, one per core:
# most of a run is waiting on the processes it starts, and together they take about
# as long as the slower one alone; the types and the wheel follow the plain run on
# its core while the sanitized one (the longer) goes on. (Three at once, with the
# sanitized run in two parts, was faster here by about 40 s, but the one CI run of
# it ended in make's "wait: No child processes" and CI's time limit: two is the
# shape CI has run green.)
test:
	$(MAKE) --no-print-directory -j2 --output-sync=target test-sanitize test-unit test-types \
	  test-wheel

# The public modules pass mypy --strict (files and settings: [tool.mypy] in pyproject.toml).
test-types: build
	$(BIN)/mypy

REQUIRE := $(if $(filter 0,$(shell id -u)),PYMQ_REQUIRE_SYSTEM_PACKAGES=1,)

test-unit: build system-packages
	$(REQUIRE) $(PY) -m pytest -q tests benchmarks --benchmark-disable

# A copy of pymq in $(SAN) whose native core is built with AddressSanitizer +
# UndefinedBehaviorSanitizer, and the environment that runs Python against it.
sanitize-build: $(DEPS)
	rm -rf $(SAN) && mkdir -p $(SAN)
	cp -r pymq $(SAN)/pymq && rm -f $(SAN)/pymq/*.so
	PYMQ_SANITIZE=1 PYMQ_BUILD_DIR=$(SAN)/ext $(PY) build.py --into $(SAN)/pymq
	$(PY) -m compileall -q $(SAN)/pymq

SAN_ENV = PYTHONPATH=$(CURDIR)/$(SAN) \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  PYTHONMALLOC=malloc PYMQ_EXPECT_SANITIZED=1

# The whole suite again against the sanitized build.
test-sanitize: sanitize-build system-packages
	cd $(SAN) && $(SAN_ENV) $(REQUIRE) $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider $(CURDIR)/tests

# The mutation fuzzer of live segments (tools/fuzz_segments.py) against the
# sanitized build: FUZZ_MUTATIONS mutations from FUZZ_SEED, figures and
# findings in build/fuzz-segments.json (docs/reliability.md, "Fuzzing").
FUZZ_MUTATIONS ?= 100000
FUZZ_SEED ?= 1
FUZZ_ARGS ?=
fuzz-segments: sanitize-build
	cd $(SAN) && $(SAN_ENV) nice -n 19 $(CURDIR)/$(PY) $(CURDIR)/tools/fuzz_segments.py \
	  --mutations $(FUZZ_MUTATIONS) --seed $(FUZZ_SEED) --json $(CURDIR)/build/fuzz-segments.json \
	  $(FUZZ_ARGS)

# The coverage-guided fuzzers, FUZZ_SECONDS each: native/ with libFuzzer
# (tools/fuzz_native.py; clang, installed with apt when running as root) and
# the Python parsers with atheris (tools/fuzz_parsers.py). Both grow their
# corpus in build/fuzz/corpus and leave what crashed them in build/fuzz/crashes.
FUZZ_SECONDS ?= 600
fuzz-native: system-packages
	nice -n 19 $(PY) tools/fuzz_native.py --seconds $(FUZZ_SECONDS) --keep-corpus \
	  --json build/fuzz-native.json

fuzz-parsers: build
	nice -n 19 $(PY) tools/fuzz_parsers.py --seconds $(FUZZ_SECONDS) --keep-corpus \
	  --json build/fuzz-parsers.json

# pip install . on a clean venv builds the native core (PEP 517) and works; the
# installed command line too: its demo package is there, `pymq bench --quick`
# runs (and exits 0: every payload checked, nothing left), and `pymq bench
# --compare`, which needs a source checkout, says so (exit 1) instead. setuptools'
# build/lib.* goes first: files deleted or moved in the tree would stay in the wheel.
test-wheel: $(DEPS)
	rm -rf build/wheel build/lib.* build/bdist.* && $(BIN)/pip wheel -q --no-deps -w build/wheel .
	$(PYTHON) -m venv build/wheel/venv
	build/wheel/venv/bin/pip install -q build/wheel/*.whl
	cd build/wheel && venv/bin/python -c "import pymq, os; \
	  b = pymq.Broker(pymq.BrokerConfig(name='wheel%d' % os.getpid())); s = b.subscribe('t'); \
	  b.publish('t', b'ok'); assert s.get(timeout=5) == b'ok'; b.close(); \
	  assert os.path.exists(os.path.join(os.path.dirname(pymq.__file__), 'py.typed')); \
	  print('pip install . works:', pymq.__file__)"
	cd build/wheel && venv/bin/python -c "import pymq.demo.__main__, pymq.bench, pymq.logfmt"
	cd build/wheel && venv/bin/pymq bench --quick
	cd build/wheel && ! venv/bin/pymq bench --compare 2> compare.err && grep -q "source checkout" compare.err

# System packages the suite runs against for real: headless Chromium (the admin
# dashboard, tests/test_admin.py), nats-server (the bridge, tests/test_bridge.py) and
# clang with libFuzzer (the native fuzzers, tests/test_fuzz_native.py),
# installed with apt when running as root; elsewhere those tests skip with the reason.
# As root, `make test` then requires them (PYMQ_REQUIRE_SYSTEM_PACKAGES): a test that
# would skip fails instead, so CI cannot pass by skipping.
SYSTEM_PACKAGES := chromium nats-server clang
system-packages:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v nats-server >/dev/null || missing="$$missing nats-server"; \
	  command -v clang >/dev/null || missing="$$missing clang"; \
	  [ -z "$$missing" ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing); \
	else \
	  echo "note: not root; install $(SYSTEM_PACKAGES) yourself (apt-get install ...) or their tests skip"; \
	fi

chromium: system-packages

bench-micro: build
	$(PY) -m pytest -q benchmarks --benchmark-only

# The side-by-side comparison with Python IPC peers (table, targets, docs/benchmarks.png).
bench: build
	$(BIN)/pip install -q -e '.[bench]'
	$(PY) benchmarks/compare.py --json build/compare.json --chart docs/benchmarks.png

bench-quick: build
	$(BIN)/pip install -q -e '.[bench]'
	$(PY) benchmarks/compare.py --quick

bench-throughput: build
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/ack_throughput.py

# Every file a build made: both extension modules (and any older ones), the
# generated C, objects, wheels, the sanitizer's copy.
clean:
	rm -rf build dist *.egg-info pymq/*.so $(NATIVE) .hypothesis
	find native pymq tests benchmarks -name '*.o' -delete -o -name __pycache__ -prune -exec rm -rf {} +
