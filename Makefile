# Fabric: `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint proto serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fabric demo

test: setup
	$(BIN)/python scripts/gen_proto.py --check
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy fabric connectors

proto: setup
	$(BIN)/python scripts/gen_proto.py

serve: setup
	$(BIN)/fabric serve

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
