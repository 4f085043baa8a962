# unisweep front door. Every target is one line that calls a module, so the logic stays in
# testable Python. `make setup` is idempotent: it reinstalls only when the lock file changes.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unisweep-installed
SPEC ?= sweeps/demo.yaml
SWEEP ?= demo
NAME ?= $(SWEEP)
UI_PORT ?= 5000
export UNISWEEP_HOME ?= $(CURDIR)

.PHONY: setup system-deps test test-fast demo demo-shapes sweep resume status analyze report reproduce ui bench \
        cluster-up cluster-submit cluster-down clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)
	@echo "setup: $(VENV) is ready"

# Debian packages the suite needs: the PostgreSQL server behind the integration tests' MLflow
# server and headless Chromium for the report's browser checks. Installed when missing, so plain
# `make test` passes on a fresh machine.
system-deps:
	@scripts/ci_system_deps.sh --with-chromium

test: setup system-deps
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not integration" tests

demo: setup
	$(PY) -m sweeps demo $(SPEC)

# The universality demo on the generated shapes dataset (SPEC §11): sweep `shapes`, 8 trials.
demo-shapes: setup
	$(PY) -m sweeps demo sweeps/shapes.yaml

sweep: setup
	$(PY) -m sweeps run $(SPEC)

resume: setup
	$(PY) -m sweeps resume $(NAME)

status: setup
	$(PY) -m sweeps status $(NAME)

analyze: setup
	$(PY) -m analysis run $(SWEEP)

report: setup
	$(PY) -m analysis report $(SWEEP)

reproduce: setup
	$(PY) -m analysis reproduce $(SWEEP)

ui: setup
	$(PY) -m sweeps ui --port $(UI_PORT)

bench: setup
	$(PY) -m bench

cluster-up: setup
	RAY_AUTH_MODE=token $(VENV)/bin/ray up -y cluster.yaml

cluster-submit: setup
	$(PY) -m sweeps submit $(SPEC)

cluster-down: setup
	RAY_AUTH_MODE=token $(VENV)/bin/ray down -y cluster.yaml

clean:
	rm -rf reports ray_results .pytest_cache
