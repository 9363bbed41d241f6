# The MemVir book. `make reproduce` is the main job; `make test` is what CI runs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch's OpenMP threads spin-wait and starve anything else on a 2-core machine: let them sleep.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup test bench clean-venv

# Create .venv, install the project with its extras, and register a Jupyter kernel named `memvir`.
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[book,dev]'
	$(PY) -m ipykernel install --user --name memvir --display-name "Python (memvir)" >/dev/null
	touch $@

# The whole test suite: two workers, one torch thread each (see README, "Tests").
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile

# Benchmarks print ratios measured in one run; they are never part of `make test`.
bench: setup
	$(PY) -m bench.memvir_step
	$(PY) -m bench.evaluation
