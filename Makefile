# Two entry points: `make demo` and `make test`. Both create .venv on first use and install
# histoguard with the exact versions in constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= histoguard-demo
# The demo runs on real data when the shared data folder sits next to the repository.
DEMO_DATA ?= $(if $(wildcard ../shared/data/DATA.md),--data ../shared/data)

.PHONY: demo test lint typecheck pytest install install-dev docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/histoguard demo --out $(DEMO_OUT) $(DEMO_DATA)

lint: install-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: install-dev
	$(BIN)/mypy

pytest: install-dev
	$(BIN)/pytest

test: lint typecheck pytest

docs: install
	$(BIN)/python -m histoguard.cli._docs > docs/cli.md

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
