# Two set-up commands for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv on first use, installing the CPU build of torch before everything else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow test-all bench-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,bfcl]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/soce

# the tests in one worker per core (a test file's tests stay together), the 15 slowest listed
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile --durations=15

test-slow: $(STAMP)  # pytest exits 5 when no test is marked slow: that is not a failure
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# mergekit and psutil, for the benchmarks in scripts/
bench-deps: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bfcl,bench]'

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
