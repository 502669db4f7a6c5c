# CareWatch: `make demo` runs the whole pipeline; `make test` proves it.
# Both create .venv and install what they need on first use (Python 3.11 or newer).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint format bench clean-demo help

help:
	@echo "make demo   - run the pipeline with simulated homes; open the clinician workspace"
	@echo "make test   - unit and integration tests against a real PostgreSQL and broker"
	@echo "make lint   - ruff"
	@echo "make test-fast - the tests that need no process-level setup"
	@echo "make bench  - benchmarks: figures and ratios to the targets, in bench/results/"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "CareWatch needs Python 3.11 or newer; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: $(STAMP)
	$(BIN)/python -m devstack demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not embedded"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m bench

clean-demo:
	rm -rf .carewatch
