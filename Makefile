# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create their own virtualenv in .venv; nothing installed by hand is assumed.
# `make demo` installs the runtime dependencies only; `make test` adds the `dev` extra
# (test oracles mergekit and lm-eval, Ray, Playwright, ruff).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint venv venv-dev browser clean

$(BASE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	@# CPU build of torch unless a GPU is visible: the pinned version resolves to the CPU wheel
	@# from this environment's package sources (an unpinned torch pulls a multi-GB CUDA build).
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install torch; else $(PY) -m pip install torch==2.13.0; fi
	$(PY) -m pip install -e .
	touch $(BASE_STAMP)

$(DEV_STAMP): $(BASE_STAMP)
	$(PY) -m pip install -e '.[dev]'
	touch $(DEV_STAMP)

venv: $(BASE_STAMP)
venv-dev: $(DEV_STAMP)

# Debian's Chromium for the browser tests (Playwright's own download cannot work offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: venv
	$(VENV)/bin/workbench demo --out runs/demo

lint: venv-dev
	$(VENV)/bin/ruff check workbench tests benchmarks
	$(VENV)/bin/ruff format --check workbench tests benchmarks

test: venv-dev browser lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
