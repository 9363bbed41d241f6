# The MemVir book. `make reproduce` is the main job; `make test` is what CI runs; `make lab` to read and edit it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
KERNEL := $(PY) -m ipykernel install --user --name memvir --display-name "Python (memvir)"
# Torch's OpenMP threads spin-wait and starve anything else on a 2-core machine: let them sleep.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup browser test lab bench clean-venv

# Everything the tests and the book need: .venv with the project and its extras (JupyterLab included) at the exact
# versions of constraints.txt, the Jupyter kernel `memvir`, and headless Chromium for the browser tests.
setup: $(VENV)/.installed browser

# jupytext's Lab extension comes with jupytext; the overrides make a chapter's .py open as a notebook in Lab.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d
$(VENV)/.installed: pyproject.toml constraints.txt tools/jupyterlab-overrides.json
	@$(SHELL) tools/check_disk.sh . 7000 "the set-up (.venv is 6.3 GB)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,vision,book,dev]'
	$(KERNEL) >/dev/null
	mkdir -p $(LAB_SETTINGS) && cp tools/jupyterlab-overrides.json $(LAB_SETTINGS)/memvir.json
	touch $@

# Debian's chromium, installed with apt-get when none is found and we are root. Not root: the script prints one line
# naming the command to run, and the set-up goes on, so that the browser tests fail with that same line.
browser:
	@$(SHELL) tools/ensure_browser.sh || true

# The whole test suite: two workers, one torch thread each (see README, "Tests"); nbval re-executes the committed
# notebooks (their default parameters) and checks the outputs marked NBVAL_CHECK_OUTPUT. --dist loadfile keeps a
# notebook's cells on one worker; python3 is the kernel of the interpreter running pytest (.venv's).
test: setup
	@$(SHELL) tools/check_disk.sh "$${TMPDIR:-/tmp}" 500 "the test suite's temporary files"
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile --nbval-lax --nbval-kernel-name python3 tests notebooks

# JupyterLab on notebooks/ with the `memvir` kernel (re-registered here, so that it is this checkout's .venv); no
# browser pop-up, localhost only: open the URL with its token that it prints. Ctrl-C stops it.
LAB_PORT ?= 8888
lab: setup
	@$(KERNEL) >/dev/null
	@$(SHELL) tools/lab.sh $(PY) notebooks $(LAB_PORT)

# Benchmarks print ratios measured in one run; they are never part of `make test`.
bench: setup
	$(PY) -m bench.memvir_step
	$(PY) -m bench.evaluation

# Remove .venv; the next `make setup` installs it anew.
clean-venv:
	rm -rf $(VENV)

# ---- The book: runs -> report -> chapters -> HTML. Results flow one way (memvir/pipeline.py, memvir/report/) ------
# `make -j2 reproduce` runs every experiment of configs/$(PROFILE).yml through papermill (one folder per run in
# results/runs/$(PROFILE)/; finished runs are skipped, a killed one resumes from its checkpoint), builds the tables
# and figures (results/report/$(PROFILE)/, not in git: the committed results/reference/$(PROFILE)/ is never written
# over, and `make report` says whether yours equals it bit for bit), executes the chapters on them
# (book/_build/chapters/$(PROFILE)/; the results chapter lays yours beside ours) and
# builds the book from exactly those chapters (book/_build/html).
# PROFILE=paper (CARS196, a GPU) also needs DATA=<prepared folder> and PRETRAINED=<BN-Inception weights>.
# On a cluster: `python -m memvir pipeline --profile P --print-commands` prints one shell line per unfinished run.
PROFILE ?= cpu
BOOK_SRC := book/_build/src
EXECUTED := book/_build/chapters/$(PROFILE)
CHAPTERS_FROM ?= $(EXECUTED)
PIPELINE = OMP_NUM_THREADS=1 $(PY) -m memvir pipeline --profile $(PROFILE)
CHAPTERS := $(basename $(notdir $(wildcard notebooks/[0-9][0-9]_*.py)))
export DATA PRETRAINED

.PHONY: reproduce runs data-ready keep report reference chapters book sync

# The steps run as sub-makes (each reads the run list it needs); -o setup: the set-up is done once, here.
reproduce: setup
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory -o setup runs PROFILE=$(PROFILE) && \
	$(MAKE) --no-print-directory -o setup report PROFILE=$(PROFILE) && \
	$(MAKE) --no-print-directory -o setup chapters PROFILE=$(PROFILE) && \
	$(MAKE) --no-print-directory -o setup book PROFILE=$(PROFILE) && \
	echo "make reproduce PROFILE=$(PROFILE): done in $$(( $$(date +%s) - start )) s;" \
	     "results: book/_build/html/chapters/06_results.html"

# One Make target per unfinished run, so that -j2 trains two at once; each run uses one thread (OMP_NUM_THREADS=1).
# Finished runs are not listed: a finished profile of 126 runs would otherwise start Python 126 times to skip them.
# Runs kept in git (results/kept/, `make keep`) are laid back into results/runs/ first, so a fresh machine skips them.
KEEP = OMP_NUM_THREADS=1 $(PY) -m memvir keep --profile $(PROFILE)
ifneq ($(filter runs,$(MAKECMDGOALS)),)
RUN_NAMES := $(shell $(KEEP) --restore >&2 && $(PIPELINE) --list-runs --unfinished)
ifneq ($(.SHELLSTATUS),0)
$(error cannot list the runs of PROFILE=$(PROFILE) (the message above says why; `make setup` first?))
endif
endif
runs: data-ready $(addprefix run/,$(RUN_NAMES))
run/%: data-ready
	@$(PIPELINE) --run $*

# A long profile spans sessions: copy its finished runs' small files (no checkpoints) into results/kept/ to commit.
keep: setup
	@$(KEEP)

# The glyph profile renders its data set once here, before the parallel runs would each render it.
data-ready: setup
	@$(PIPELINE) --warm-data

# Tables (CSV, Markdown) and figures (PNG, SVG) from the run folders only. Every `python -m memvir` command caps the
# CPU kernels first (memvir/portable.py; MEMVIR_PORTABLE=0 turns it off). Maintainers: `make reference` copies the
# checked report over the committed reference.
report: setup
	OMP_NUM_THREADS=1 $(PY) -m memvir report --profile $(PROFILE)

reference: setup
	OMP_NUM_THREADS=1 $(PY) -m memvir report --profile $(PROFILE) --promote

# The chapters, executed with papermill on this profile's runs and report.
chapters: $(addprefix chapter/,$(CHAPTERS))
chapter/%: setup
	@$(PIPELINE) --chapters $(EXECUTED) --only $*

# Build the book from executed chapters only (warnings are errors): exactly those of $(CHAPTERS_FROM), the
# profile's by default; a missing one is an error. `make book CHAPTERS_FROM=notebooks`: the committed notebooks.
book: setup
	@$(PIPELINE) --stage-book $(BOOK_SRC) --from $(CHAPTERS_FROM)
	$(VENV)/bin/jupyter-book build -W --keep-going --path-output book $(BOOK_SRC)
	@echo "open book/_build/html/intro.html"

# After editing notebooks/NN_*.py (the source): pair it with its .ipynb and re-execute that with the default
# parameters, which gives the outputs nbval checks in `make test` and `make book CHAPTERS_FROM=notebooks` shows.
sync: setup
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py
	OMP_NUM_THREADS=1 $(PY) -m memvir pipeline --execute-defaults notebooks/[0-9][0-9]_*.ipynb
	$(VENV)/bin/jupytext --sync notebooks/[0-9][0-9]_*.py
