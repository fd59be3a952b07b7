# Quick start: `make demo` (set up + run the main job), `make test` (set up + run the tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch and torchvision are pinned to the builds this machine class serves from local disk.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint format clean

$(STAMP): pyproject.toml
	@# System packages: the real Fashion-MNIST, and chromium for the report's browser checks
	@# (tests/report/test_browser.py); installed as root with apt-get, announced by a line.
	@if ! test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || ! command -v chromium >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: dataset-fashion-mnist (the demo's data) and chromium (for the report's browser checks in the tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium >/dev/null; \
	  else echo "note: install Debian's dataset-fashion-mnist (the demo's data) and chromium (the report's browser checks in the tests) as root for the full demo and tests"; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tvc demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check tvc tests benchmarks
	$(VENV)/bin/ruff format --check tvc tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format tvc tests benchmarks
	$(VENV)/bin/ruff check --fix tvc tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
