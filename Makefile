# The newcomer's commands: `make run` and `make test`. Everything installs into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install dev run test check lint format clean bench

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Solder needs Python 3.11 or newer; set PYTHON=/path/to/python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

# The tests also install an example connector plugin, to test the plugin interface.
$(VENV)/.dev-installed: pyproject.toml tests/plugin/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]' ./tests/plugin
	@touch $(VENV)/.installed $@

## install: install Solder into .venv (no dev tools)
install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

## run: start the server on SQLite with a dev tenant, key and demo workflow
run: install
	$(BIN)/solder serve --dev

## check: lint, format check and type check
check: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: the whole suite (lint, types, pytest) on SQLite, then on PostgreSQL
# The PostgreSQL pass is skipped, with its reason, when no server answers at
# SOLDER_TEST_POSTGRES_URL; with SOLDER_REQUIRE_SERVICES=1 (CI) that is a failure.
test: check
	$(BIN)/pytest -n auto
	SOLDER_TEST_DATABASE=postgres $(BIN)/pytest -n auto

format: dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## bench: run the benchmark suite (bench/run.py) and print its tables
# The load generator is wrk: installed here from Debian's packages when missing.
bench: dev
	@command -v wrk >/dev/null || { echo "make bench: wrk is missing; installing it (apt-get install -y wrk)"; \
		{ apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }; } || { echo "make bench: could not install wrk: install it (Debian/Ubuntu: apt-get install wrk) and rerun"; exit 1; }; }
	$(BIN)/python bench/run.py
