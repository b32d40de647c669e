# pulse-fm developer commands. Everything runs inside ./.venv, created on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
STORE  ?= stores/syn200

.PHONY: install run test test-fast test-slow lint format type-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

## the main job on the embedded default: a SYNTHETIC cohort -> segment store -> tiny pretraining
run: install
	$(BIN)/pulse-fm prepare --synthetic 200 --out $(STORE)
	$(BIN)/pulse-fm train --preset tiny --store $(STORE) --out runs/tiny

## what CI runs: lint, type-check, then the fast test suite
test: install lint type-check
	$(BIN)/python -m pytest -m "not slow" -q

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not real_data" -q -x

test-slow: install
	$(BIN)/python -m pytest -m slow -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

type-check: install
	$(BIN)/mypy pulsefm training service tests benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
