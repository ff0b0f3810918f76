# Two entry points: `make run` starts the dashboard, `make test` runs every check CI runs.
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 8000
# torch first, pinned: it is a CPU wheel on this machine's disk; an unpinned torch pulls CUDA.
TORCH_PIN ?= torch==2.13.0

.PHONY: run test install install-test system-deps lint bench clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	@echo "sparsescope dashboard: http://$(HOST):$(PORT)"
	$(PY) -m backend --host $(HOST) --port $(PORT)

# Debian's chromium (Playwright drives it; never a downloaded browser) and docker-compose
# (validates docker-compose.yml without a Docker engine).
system-deps:
	@if [ ! -x /usr/bin/chromium ] || ! command -v docker-compose >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium docker-compose; \
	fi

lint: install-test
	$(VENV)/bin/ruff check .
	docker-compose -f docker-compose.yml config -q

test: install-test system-deps lint
	$(PY) -m pytest

bench: install
	$(PY) bench/rewire.py
	$(PY) bench/train_overhead.py
	$(PY) bench/stream.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
