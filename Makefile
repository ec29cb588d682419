# make # The oldest Flower fedzip supports (pyproject.toml's range), in a venv of its own: constraints.txt
# with this one pin changed, then the tests that run Flower.
FLWR_OLDEST := 1.41.0
OLDEST := .venv-oldest
FLOWER_TESTS := tests/test_flower.py tests/test_traffic.py tests/test_cross_device.py \
	tests/test_flower_apps.py tests/test_simulation.py tests/test_hostile_simulation.py tests/test_deployment.py

$(OLDEST)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --upgrade --quiet pip
	sed 's/^flwr==.*/flwr==$(FLWR_OLDEST)/' constraints.txt > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/pip install --quiet -c $(OLDEST)/constraints.txt -e ".[dev]"
	$(OLDEST)/bin/python -c "import flwr; assert flwr.__version__ == '$(FLWR_OLDEST)', flwr.__version__"
	touch $@

test-flower-oldest: $(OLDEST)/.installed data
	$(OLDEST)/bin/pytest -n 4 $(FLOWER_TESTS)

demo: install everything, then run the main job (FedAvg vs FedZip on Fashion-MNIST).
# make test: install everything, then lint and run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install data test test-flower-oldest lint demo bench reproduce clean

install: $(STAMP) data

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

# Fashion-MNIST from Debian's dataset-fashion-mnist (nothing downloads at run time).
data:
	bash scripts/install-data.sh

lint: install
	$(BIN)/ruff check src tests benchmarks examples research
	$(BIN)/ruff format --check src tests benchmarks examples research

# Most of the suite waits (Flower's polling, SuperLink start-up, Ray): four workers on two cores
# overlap the waits; tests sharing one Flower session stay on one worker (tests/conftest.py).
test: install lint
	$(BIN)/pytest -n 4

demo: install
	$(BIN)/fedzip compare --plan experiments/demo.toml --out results/demo

bench: install
	$(BIN)/fedzip bench --out results/bench

# The paper's setting to convergence (experiments/converge-*, extreme-* and curve-*.toml; hours
# on 2 cores), resumable per run and seed (runs are kept in docs/results/runs); rewrites
# docs/results.md.
reproduce: install
	$(BIN)/python -m research

clean:
	rm -rf $(VENV) $(OLDEST) results runs .pytest_cache .ruff_cache .hypothesis
