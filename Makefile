# Two commands on a fresh machine:  make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml requirements.txt requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps --require-hashes -r requirements-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/oscar-models fetch smollm2-135m
	$(VENV)/bin/oscar-demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/oscar-models fetch smollm2-135m
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) runs build *.egg-info
