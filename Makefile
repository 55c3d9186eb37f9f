# Fabric: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: setup demo test lint proto serve bench bench-quick chaos soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fabric demo $(DEMO_ARGS)

test: setup
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/pytest

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Full run (TPC-H SF1 in PostgreSQL, and split across PostgreSQL, MariaDB and DuckDB for
# scenario 10; several minutes); writes benchmarks/results/latest.*
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Same scenarios on small data in well under a minute; no ratio asserted.
bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

# The chaos suite's long versions (more clients, longer faults; several minutes), against
# private PostgreSQL and nats-server instances it starts itself; prints the results table.
CHAOS_REPORT ?= chaos-results.jsonl
chaos: setup
	rm -f $(CHAOS_REPORT)
	FABRIC_CHAOS=long FABRIC_CHAOS_REPORT=$(abspath $(CHAOS_REPORT)) CI=true \
		$(BIN)/pytest -p no:cacheprovider -q tests/chaos
	$(BIN)/python -m tests.chaos.report $(CHAOS_REPORT)

# Style, formatting, types (strict) and the package layers of pyproject.toml.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fabric connectors tests
	$(BIN)/lint-imports --no-cache

proto: setup
	$(BIN)/python scripts/gen_proto.py

serve: setup
	$(BIN)/fabric serve

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

# The soak run: `fabric serve` with a PostgreSQL of its own under mixed load from several
# client processes for SOAK_SECONDS (10 minutes); prints the windows table and the verdict
# on each criterion (tests/soak/run.py), and fails when one does not hold.
SOAK_SECONDS ?= 600
soak: setup
	CI=true $(BIN)/python -m tests.soak.run --seconds $(SOAK_SECONDS)
