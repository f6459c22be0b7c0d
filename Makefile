# The two commands of the README: `make up` runs the whole system on the embedded default, `make test` runs every
# test. Both create the virtual environment and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: up test install install-dev lint typecheck pytest chromium clean

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
	$(BIN)/mypy cvm streams scoring sinks schemas

# Three processes on two cores: most integration tests wait on brokers, groups and stream time more than they compute
# (the suite's processes used ~40% of both cores with two: 864 s of pytest; 667 s with three). A file runs in one
# process, in order, with its module fixtures (handing tests out one by one was slower: 932 s of pytest against 885 s).
# PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 3
pytest: install-dev chromium
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=20 $(ARGS)

# The dashboard's page test drives Debian's headless Chromium (tests/sinks/test_dashboard_page.py). Installed when
# missing, with apt-get as root or through passwordless sudo; when neither can, the test skips and says why.
CHROMIUM_PACKAGES := chromium chromium-driver fonts-liberation
chromium:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		exit 0; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "chromium: no apt-get here, install $(CHROMIUM_PACKAGES) yourself; the dashboard page test will skip"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "installing $(CHROMIUM_PACKAGES) (apt-get)"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(CHROMIUM_PACKAGES) >/dev/null) || echo "chromium: apt-get failed; the dashboard page test will skip"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		echo "installing $(CHROMIUM_PACKAGES) (sudo apt-get)"; \
		(sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $(CHROMIUM_PACKAGES) >/dev/null) \
			|| echo "chromium: apt-get failed; the dashboard page test will skip"; \
	else \
		echo "chromium: not installed and this user cannot apt-get install it; the dashboard page test will skip"; \
	fi

test: lint typecheck pytest

clean:
	rm -rf $(VENV) data build *.egg-info
