# Corral: one place for setup, checks, tests and the demo.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test check lint typecheck demo bench lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff format --check corral tests bench
	$(BIN)/ruff check corral tests bench

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test

demo: setup
	$(BIN)/python -m corral.demo

bench: setup
	$(BIN)/python bench/fanout.py

lock:
	rm -rf /tmp/corral-lock && $(PYTHON) -m venv /tmp/corral-lock
	/tmp/corral-lock/bin/pip install --quiet -e '.[dev]'
	/tmp/corral-lock/bin/pip freeze --exclude-editable | sed '1i # Pinned versions of every package the project and its tests install (make installs exactly these).\n# Regenerate: make lock' > requirements.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
