# Two commands do all the set-up on a fresh machine:
#   make quickstart   create .venv, install, run searchspaces/quickstart.yaml, print the best
#   make test         create .venv, install, ruff + mypy + the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test lint typecheck pytest clean

setup: $(STAMP)

# pip (not uv/poetry): torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheels.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/normstudy run searchspaces/quickstart.yaml --overwrite

lint: $(STAMP)
	$(BIN)/ruff check platform tests benchmarks
	$(BIN)/ruff format --check platform tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) studies .pytest_cache .mypy_cache .ruff_cache
