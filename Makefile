# One command sets everything up and does the job:
#   make bench   create .venv, install pytest-energy with the bench extra, run the benchmark
#   make test    create .venv, install pytest-energy with its test and bench extras (tests/test_bench_*
#                exercise the benchmark), lint, run the tests

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install bench test lint overhead clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(INSTALLED)

install: $(INSTALLED)

bench: $(INSTALLED)
	$(BIN)/python -m pytest benchmarks/ --energy --energy-json energy-results.json $(BENCH_ARGS)

test: $(INSTALLED) lint
	$(BIN)/python -m pytest tests/ $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

overhead: $(INSTALLED)
	$(BIN)/python -m benchmarks.overhead

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
