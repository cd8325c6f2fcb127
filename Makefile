# One command sets everything up and does the job:
#   make bench   create .venv, install pytest-energy, run the benchmark with --energy
#   make test    create .venv, install pytest-energy with its test extra, lint, run the tests
#   make gpu-check  on a GPU machine, with its own python3 and nothing installed: check the
#                   meters on the real GPU; report in GPU_CHECK_OUT (see scripts/GPU_RUN.md)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
GPU_CHECK_OUT ?= gpu-check-out
GPU_CHECK_PYTHON ?= python3

.PHONY: install bench test lint overhead gpu-check clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
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

gpu-check:
	PYTHONPATH=. $(GPU_CHECK_PYTHON) -m scripts.gpu_check --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
