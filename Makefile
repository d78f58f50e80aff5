# scalekit developer commands. A fresh clone needs only python3.11 and make:
#
#   make lab        create .venv, install, open the quickstart notebook in JupyterLab
#   make test       create .venv, install, run the whole test suite (what CI runs)
#
# Installs are pinned by constraints.txt and remembered by stamp files inside .venv,
# so a second `make lab` / `make test` starts at once; editing pyproject.toml or
# constraints.txt (or deleting .venv) triggers a reinstall.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
NOTEBOOK ?= notebooks/01_quickstart.ipynb
LAB_ARGS ?=
# Jupyter refuses to run as root unless told (containers often run as root)
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root)
PYTEST_ARGS ?=
# The browser tests (tests/ui) drive Debian's Chromium through Playwright (Playwright's
# own browser download is not used); `make test` installs it once when it is missing.
CHROMIUM ?= $(or $(SCALEKIT_CHROMIUM),/usr/bin/chromium)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.DEFAULT_GOAL := help
.PHONY: help lab test test-fast test-gpu gpu-wheels demo lint install install-lab install-test constraints chromium

help:
	@echo "make lab        install (once) and open $(NOTEBOOK) in JupyterLab on 127.0.0.1"
	@echo "make test       install (once) and run the whole test suite, slow tests included"
	@echo "make test-fast  the test suite without tests marked slow"
	@echo "make demo       install (once) and run the headless demo: scalekit demo"
	@echo "make test-gpu   on a machine with a CUDA GPU: the GPU tests and the GPU benchmark"
	@echo "make gpu-wheels py3.12 wheels to carry to a GPU machine without a package index"
	@echo "make lint       ruff and the import-layer contracts (lint-imports)"
	@echo "make constraints  re-pin constraints.txt from the current .venv"

# -- environment ----------------------------------------------------------------------
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# One pip install per extra. The test extra includes the lab extra, so installing it
# also marks lab as installed.
$(VENV)/.installed-lab: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --disable-pip-version-check -c constraints.txt -e ".[lab]"
	@touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --disable-pip-version-check -c constraints.txt -e ".[test]"
	@touch $@ $(VENV)/.installed-lab

install-lab: $(VENV)/.installed-lab
install-test: $(VENV)/.installed-test chromium
install: install-test

# Idempotent: does nothing when $(CHROMIUM) exists. Without apt-get (not Debian/Ubuntu)
# it only says so; the browser tests then skip, except under CI=true, where they fail.
chromium:
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests (tests/ui)"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: $(CHROMIUM) missing and no apt-get; install Chromium and set" \
	         "SCALEKIT_CHROMIUM to run the browser tests"; \
	  fi; \
	fi

# -- the two main commands ------------------------------------------------------------
lab: $(VENV)/.installed-lab
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" $(ROOT_ARGS) $(LAB_ARGS) $(NOTEBOOK)

test: $(VENV)/.installed-test chromium
	$(BIN)/python -m pytest --durations=15 $(PYTEST_ARGS)

# -- the rest -------------------------------------------------------------------------
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not slow" --durations=10 $(PYTEST_ARGS)

# -- GPUs (never needed for CI: tests/gpu skip without CUDA) ------------------------------
# On a GPU machine: `make test-gpu`, or with that machine's own interpreter (and the
# wheels of `make gpu-wheels` on PYTHONPATH, see bench/gpu-check.sh):
# `make test-gpu GPU_PYTHON=python3`.
GPU_PYTHON ?= $(BIN)/python
GPU_BENCH_ARGS ?=
test-gpu:
	$(GPU_PYTHON) -m pytest -m gpu tests/gpu -p no:cacheprovider -v --durations=10
	$(GPU_PYTHON) bench/bench_training.py --device cuda $(GPU_BENCH_ARGS)

# What a GPU machine with torch (CUDA) but no package index lacks, as wheels for its
# Python (GPU_PY, default 3.12), pinned by constraints.txt; bench/gpu-check.sh installs
# them there.
GPU_PY ?= 3.12
GPU_WHEELS := dask distributed tornado zict tblib partd locket skorch ipywidgets comm \
	traitlets widgetsnbextension jupyterlab_widgets ipython ipython_pygments_lexers \
	decorator jedi parso matplotlib-inline pexpect ptyprocess prompt_toolkit wcwidth \
	stack_data asttokens executing pure_eval pytest pytest-timeout pluggy iniconfig \
	nvidia-ml-py pygments
gpu-wheels: | $(BIN)/python
	$(PIP) download --disable-pip-version-check --no-deps --only-binary=:all: \
	  --python-version $(GPU_PY) --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  --platform any -d build/gpu-wheels \
	  $$(for p in $(GPU_WHEELS); do grep -i "^$$p==" constraints.txt || echo $$p; done)

demo: $(VENV)/.installed-lab
	$(BIN)/scalekit demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check scalekit tests
	$(BIN)/lint-imports

# Exact pins for CI and dev installs, from what .venv holds now. torch loses its local
# label (+cpu) so the pin also matches the build a machine's own wheel index offers.
constraints: | $(BIN)/python
	@{ echo "# Exact pins for CI/dev installs: pip install -c constraints.txt -e '.[test]'"; \
	   echo "# Regenerate with: make constraints (pyproject.toml keeps the loose ranges)."; \
	   $(PIP) freeze --exclude-editable --disable-pip-version-check \
	     | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > constraints.txt.new
	@mv constraints.txt.new constraints.txt
	@echo "wrote constraints.txt"

# -- the JupyterLab extension (extensions/) --------------------------------------------
# The install builds it (pyproject's jupyter-builder hook: npm install + a production
# build, skipped while extensions/labextension is newer than extensions/src). Editing
# its sources, styles or dependencies drops the old build, so the next install rebuilds.
# The stamp is keyed on the *content* of those files: `npm install` rewrites
# package-lock.json on every install (same content, new mtime), which must not make the
# next `make lab` reinstall. The lock follows package.json, which is in the key.
EXT_SOURCES := $(sort $(wildcard extensions/src/*.ts extensions/style/*)) \
	extensions/package.json extensions/tsconfig.json
EXT_KEY := $(shell cat $(EXT_SOURCES) 2>/dev/null | $(PYTHON) -c \
	"import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
EXT_STAMP := extensions/.sources-$(EXT_KEY)
$(VENV)/.installed-lab $(VENV)/.installed-test: $(EXT_STAMP)
$(EXT_STAMP):
	rm -rf extensions/labextension extensions/.sources-*
	@touch $@
