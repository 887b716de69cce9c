# Two commands do everything on a fresh machine:
#   make demo   create .venv if missing, install, run the whole pipeline on the sample corpus
#   make test   create .venv if missing, install, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/demo.yaml
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export SPARK_LOCAL_IP := 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN))/python
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN))/python
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv demo check test test-fast test-e2e stack stack-down bench clean

venv: $(STAMP)

# Reinstalls whenever a requirements file or pyproject.toml changes.
$(STAMP): requirements.txt requirements-common.txt requirements-dev.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	@touch $@

demo: venv
	$(BIN)/climb run --config $(CONFIG)

# The code's standing checks: lint and format (ruff), the layers and family-independence
# contracts (import-linter), types of libs/mixture (mypy), all configured in pyproject.toml; and
# the shape of the code (tests/test_architecture.py: no cycle, short functions, module sizes).
check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_architecture.py

test: venv check
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# The deployment on this machine, started by the project's scripts (docs/OPERATIONS.md):
# PostgreSQL, moto's S3 server, a Spark standalone master and two workers, an MLflow server and
# Airflow 3 on fixed ports of 127.0.0.1; state under out/stack/. `make stack-down` stops it.
stack: venv
	bash infra/stack/up.sh

stack-down:
	bash infra/stack/down.sh

# The end-to-end test against the running stack (make stack): fails when it is not up.
test-e2e: venv
	CLIMB_E2E_REQUIRED=1 $(BIN)/python -m pytest -q -m e2e tests/e2e

clean:
	rm -rf out/ .pytest_cache
