# make demo: install everything, then run the main job.
# make test: install everything, then lint and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: install lint
	$(BIN)/pytest

demo: install
	$(BIN)/fedzip bench --out results/bench

bench: install
	$(BIN)/python benchmarks/bench_codec.py --out results/bench

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache .hypothesis
