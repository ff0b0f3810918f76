# Two entry points: `make run` starts the dashboard, `make test` runs every check CI runs.
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
HOST   ?= 127.0.0.1
PORT   ?= 8000
# torch first, pinned: it is a CPU wheel on this machine's disk; an unpinned torch pulls CUDA.
TORCH_PIN ?= torch==2.13.0

.PHONY: run test install install-test system-deps lint bench clean

# The stamps below say what was installed once; they are trusted only while the venv still
# works. Checked when make starts (find_spec imports nothing, so the check is cheap):
# - an interpreter that no longer runs or has no pip (the base Python went away, or an
#   earlier `python3 -m venv` was interrupted) → the venv is rebuilt from scratch;
# - a package gone missing (uninstalled by hand, an install cut short) → reinstalled.
HAS_MODULES = $(PY) -c 'import importlib.util as u, sys; \
	sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))'
ifneq ($(wildcard $(VENV)),)
ifneq ($(shell $(PY) -m pip --version >/dev/null 2>&1 && echo ok),ok)
$(info $(VENV) is broken or partial: recreating it)
$(shell rm -rf $(VENV))
else
ifneq ($(shell $(HAS_MODULES) torch numpy fastapi uvicorn pydantic_settings backend dst_core \
	2>/dev/null && echo ok),ok)
$(shell rm -f $(VENV)/.installed $(VENV)/.installed-test)
endif
ifneq ($(shell $(HAS_MODULES) pytest xdist httpx playwright hypothesis ruff transformers 2>/dev/null && echo ok),ok)
$(shell rm -f $(VENV)/.installed-test)
endif
endif
endif

$(VENV)/bin/python:
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# pip compiles what it installs to bytecode one file after another (half of a fresh install's
# time); installed without, the venv is then compiled on every core (files already compiled are
# skipped; one that does not compile, as in pip's own pass, is left as source). Compiled once
# here, no test or server process compiles torch again (PYTHONDONTWRITEBYTECODE, set on some
# machines, keeps each process's own compiling from being saved). Left out, a third of the
# files and ~10 s: the packages' own test suites and the transformers models nothing here
# builds (one imported anyway is compiled where it is imported, as without this step).
INSTALL = $(PIP) install -q --no-compile
COMPILE = $(PY) -c 'import compileall, re, sysconfig; \
	compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=2, workers=0, rx=re.compile( \
	r"/(tests?|testing/_internal)/|/transformers/models/(?!(auto|bert|gpt2|llama|vit)/)"))'

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(INSTALL) "$(TORCH_PIN)"
	$(INSTALL) -e .
	$(COMPILE)
	touch $@

# The package and its test extras in one install (one editable build, one compile), which is
# also everything `make run` needs.
$(VENV)/.installed-test: $(VENV)/bin/python pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(INSTALL) "$(TORCH_PIN)"
	$(INSTALL) -e ".[test]"
	$(COMPILE)
	touch $(VENV)/.installed $@

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

# Two test processes, each file's tests in one of them (module fixtures: one server per file);
# `make test TEST_WORKERS=0` runs them in this process, one after the other.
TEST_WORKERS ?= 2

test: install-test system-deps lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

# Every script in bench/ (each prints its own figures; minutes, not seconds: accuracy.py trains
# real models). `make bench BENCH=bench/service.py` runs one; bench/gpu.py needs CUDA, so it
# runs only when asked for (`make bench BENCH=bench/gpu.py` on a GPU machine).
BENCH ?= $(filter-out bench/gpu.py,$(sort $(wildcard bench/*.py)))
bench: install-test
	@set -e; for script in $(BENCH); do echo "== $$script"; $(PY) $$script; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
