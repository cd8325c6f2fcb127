# One command sets everything up and does the job:
#   make bench   create .venv, install pytest-energy with the bench extra, run the benchmark
#   make test    create .venv, install pytest-energy with its test and bench extras (tests/test_bench_*
#                exercise the benchmark), lint, run the tests
#   make lock    re-resolve the dependencies in a scratch venv and rewrite constraints.txt
# Every install takes the exact versions pinned in constraints.txt (torch included).
#   make gpu-check  on a GPU machine, with its own python3 and nothing installed: check the
#                   meters on the real GPU; report in GPU_CHECK_OUT (see scripts/GPU_RUN.md)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CONSTRAINTS ?= constraints.txt
LOCK_VENV ?= .lock-venv
PIP_FLAGS := --quiet --disable-pip-version-check --no-cache-dir
PYTEST_ARGS ?=
BENCH_ARGS ?=
# Two pytest-xdist workers of one torch thread each on a CPU-only machine: the smoke suite then
# fits in 10 minutes on 2 cores. Serial where a machine-wide meter (a GPU's nvml, RAPL) would
# read both workers' work at once (the plugin refuses that under xdist without pinning).
BENCH_WORKERS ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 || ls -d /sys/class/powercap/intel-rapl* >/dev/null 2>&1; then echo 0; else echo 2; fi)
GPU_CHECK_OUT ?= gpu-check-out
GPU_CHECK_PYTHON ?= python3

.PHONY: install bench test lint overhead lock gpu-check clean

$(INSTALLED): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) -c $(CONSTRAINTS) -e '.[test,bench]'
	touch $(INSTALLED)

install: $(INSTALLED)

bench: $(INSTALLED)
	$(BIN)/python -m pytest benchmarks/ -n $(BENCH_WORKERS) --energy --energy-json energy-results.json $(BENCH_ARGS)

test: $(INSTALLED) lint
	$(BIN)/python -m pytest tests/ $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

overhead: $(INSTALLED)
	$(BIN)/python -m benchmarks.overhead

gpu-check:
	PYTHONPATH=. $(GPU_CHECK_PYTHON) -m scripts.gpu_check --out $(GPU_CHECK_OUT)

lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install $(PIP_FLAGS) -e '.[test,bench]'
	{ sed -n '/^#/p' $(CONSTRAINTS); \
	  $(LOCK_VENV)/bin/python -m pip freeze $(PIP_FLAGS) --exclude-editable --exclude pytest-energy \
	  | grep -v '^#'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)
	@echo "$(CONSTRAINTS) rewritten: review the diff, re-record the baselines with it, commit both"

clean:
	rm -rf $(VENV) $(LOCK_VENV) .pytest_cache .ruff_cache build *.egg-info
