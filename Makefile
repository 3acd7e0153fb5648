# Set-up and everyday commands. `make train` and `make test` work on a fresh machine:
# each creates .venv when it is missing and installs the project into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstalled when pyproject.toml changes.
STAMP := $(VENV)/.installed-stamp
# Tests never touch the network.
TEST_ENV := HF_HUB_OFFLINE=1 WANDB_MODE=offline

.PHONY: install train test test-fast lint format benchmark clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)  ## the default experiment: resnet18 on the bundled digits
	$(PY) train.py $(ARGS)

# Two test processes (most of a tiny run is imports, which two cores overlap); a test file's
# shared runs stay in one process (--dist loadfile).
PYTEST_PROCS ?= 2

test: $(STAMP)  ## every test, the slow end-to-end ones included
	$(TEST_ENV) $(PY) -m pytest -n $(PYTEST_PROCS) --dist loadfile $(ARGS)

test-fast: $(STAMP)  ## unit tests and quick checks only
	$(TEST_ENV) $(PY) -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
