# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create their own virtualenv in .venv; nothing installed by hand is assumed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	@# CPU build of torch unless a GPU is visible: the pinned version resolves to the CPU wheel
	@# from this environment's package sources (an unpinned torch pulls a multi-GB CUDA build).
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install torch; else $(PY) -m pip install torch==2.13.0; fi
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium for the browser tests (Playwright's own download cannot work offline).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

demo: venv
	$(VENV)/bin/workbench demo --out runs/demo

test: venv browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
