# The two commands that matter: `make demo` and `make test`. Both set everything up first.
# While editing: `make check` (lint, types and the tests that start no server, browser or Airflow; a minute or so).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The browser tests drive Debian's Chromium; Playwright (a Python package of the dev extras) never downloads one.
CHROMIUM := /usr/bin/chromium
# The Celery deployment test starts Debian's PostgreSQL (any installed major version) and Redis servers itself.
POSTGRES := $(firstword $(wildcard /usr/lib/postgresql/*/bin/postgres) /usr/lib/postgresql/15/bin/postgres)
REDIS    := /usr/bin/redis-server
# R services run in the local server's workers with R embedded by rpy2 (the `r` extra, built against Debian's R:
# r-base-dev brings its headers and compiler; fonts-dejavu-core the font of png() drawings).
RSCRIPT  := /usr/bin/Rscript
R_PACKAGES := r-base-core r-base-dev fonts-dejavu-core
R_STAMP  := $(VENV)/.r-installed
# The built wheel is also tested on Python 3.13, installed into a fresh venv (tests/test_wheel.py): pyenv's Python
# 3.13, or Debian's (Debian 13 has it; on Debian 12, `pyenv install 3.13`). The venv installs with no index from a
# local wheelhouse of the package's requirements for Python 3.13, built again when pyproject.toml changes.
PYTHON313  ?= $(firstword $(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null) \
                $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) /usr/bin/python3.13)
WHEELHOUSE := .wheelhouse-py313
WHEELHOUSE_STAMP := $(WHEELHOUSE)/.built

.PHONY: demo demo-ui test check lint typecheck pytest pytest-fast bench serve clean r-optional wheelhouse

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-liberation; \
	else \
		echo "The browser tests need Debian's chromium: run 'sudo apt-get install -y chromium', then make test again." >&2; \
		exit 1; \
	fi

$(POSTGRES) $(REDIS) &:
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql redis-server; \
	else \
		echo "The Celery deployment test needs Debian's PostgreSQL and Redis: run 'sudo apt-get install -y postgresql redis-server', then make test again." >&2; \
		exit 1; \
	fi

$(RSCRIPT):
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(R_PACKAGES); \
	else \
		echo "The R services' tests need Debian's R: run 'sudo apt-get install -y $(R_PACKAGES)', then make test again." >&2; \
		exit 1; \
	fi

$(PYTHON313):
	@if [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get update \
		&& DEBIAN_FRONTEND=noninteractive apt-get install -y python3.13 python3.13-venv; then :; \
	else \
		echo "The wheel test needs Python 3.13: run 'sudo apt-get install -y python3.13 python3.13-venv' on Debian 13, or 'pyenv install 3.13' (Debian 12 has none), then make test again." >&2; \
		exit 1; \
	fi

# The build requirements and the runtime requirements of pyproject.toml, as wheels for Python 3.13, resolved
# together by pip (run by the dev venv's pip on Python 3.13, which needs no pip of its own); built anew, then swapped in.
$(WHEELHOUSE_STAMP): pyproject.toml $(PYTHON313) | $(STAMP)
	rm -rf $(WHEELHOUSE).new && mkdir -p $(WHEELHOUSE).new
	$(BIN)/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print(*p["build-system"]["requires"], *p["project"]["dependencies"], sep="\n")' \
		> $(WHEELHOUSE).new/requirements.txt
	$(BIN)/python -m pip --python $(PYTHON313) wheel --quiet --wheel-dir $(WHEELHOUSE).new -r $(WHEELHOUSE).new/requirements.txt
	touch $(WHEELHOUSE).new/.built
	rm -rf $(WHEELHOUSE) && mv $(WHEELHOUSE).new $(WHEELHOUSE)

wheelhouse: $(WHEELHOUSE_STAMP)

$(R_STAMP): $(STAMP) $(RSCRIPT)
	$(BIN)/python -m pip install --quiet -e '.[r]'
	touch $(R_STAMP)

# The demo runs its R example when R is there or can be installed (as root); otherwise it says so and goes on.
r-optional: $(STAMP)
	@if [ -x $(RSCRIPT) ] || [ "$$(id -u)" = 0 ]; then \
		$(MAKE) --no-print-directory $(R_STAMP); \
	else \
		echo "make demo: the R example is skipped: R is not installed (run 'sudo apt-get install -y $(R_PACKAGES)' to include it)."; \
	fi

demo: $(STAMP) r-optional
	$(BIN)/python dags_examples/demo.py

demo-ui: $(STAMP) r-optional
	$(BIN)/python dags_examples/demo.py --ui

test: lint typecheck pytest

check: lint typecheck pytest-fast

lint: $(STAMP)
	$(BIN)/ruff check airflow_mlserver tests bench dags_examples
	$(BIN)/ruff format --check airflow_mlserver tests bench dags_examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) $(R_STAMP) $(CHROMIUM) $(POSTGRES) $(REDIS) $(WHEELHOUSE_STAMP)
	PYTHON313=$(PYTHON313) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that start nothing: tests/conftest.py marks `slow` those that start a server, a browser, Airflow's
# database or DAG runs, or a deployment (by the fixtures they use and the calls in their code).
pytest-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP) r-optional
	$(BIN)/python -m bench $(BENCH_ARGS)

serve: $(STAMP)
	$(BIN)/airflow-mlserver serve

clean:
	rm -rf $(VENV) .demo .bench .pytest_cache .mypy_cache .ruff_cache $(WHEELHOUSE) $(WHEELHOUSE).new
