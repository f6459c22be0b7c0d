# The two commands of the README: `make up` runs the whole system on the embedded default, `make test` runs every
# test. Both create the virtual environment and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: up test install install-dev lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

up: install
	$(BIN)/cvm up $(ARGS)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check --quiet . || (echo "ruff format would change files: run '$(BIN)/ruff format .'"; exit 1)

typecheck: install-dev
	$(BIN)/mypy cvm streams scoring sinks

pytest: install-dev
	$(BIN)/python -m pytest -q $(ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) data build *.egg-info
