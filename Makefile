# inference-engine: `make serve` serves the default model repository; `make test` runs everything.
# Both create .venv and install the pinned dependencies first (constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
ENV ?= dev
MODEL_REPOSITORY ?= models
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-dev serve lint format test test-fast bench bench-quick bench-levers stress soak docs proto docker clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# The client (clients/python) is named in the same pip call as the server, which depends on it
# at the same version: pip takes it from the folder, not from an index.
CLIENT := clients/python

$(BIN)/.installed: pyproject.toml constraints.txt $(CLIENT)/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ./$(CLIENT) -e .
	@touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ./$(CLIENT) -e '.[dev]'
	@touch $@

install: $(BIN)/.installed ## Create .venv and install the server with pinned dependencies

install-dev: $(BIN)/.installed-dev ## Also install the test, lint and benchmark tools

serve: install ## Serve the model repository (HOST, PORT, ENV, MODEL_REPOSITORY overridable)
	$(BIN)/inference-engine serve --host $(HOST) --port $(PORT) --env $(ENV) --model-repository $(MODEL_REPOSITORY)

lint: install-dev ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check src tests clients bench tools service.py locustfile.py
	$(BIN)/ruff format --check src tests clients bench tools service.py locustfile.py
	$(BIN)/mypy --strict src $(CLIENT)/src

format: install-dev ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests clients bench tools service.py locustfile.py
	$(BIN)/ruff format src tests clients bench tools service.py locustfile.py

test: lint ## Lint, type-check, then the whole test suite with coverage (fails under 85%)
	rm -f .coverage .coverage.*
	$(BIN)/python -m pytest --cov --cov-report=term $(PYTEST_ARGS)

test-fast: install-dev ## Tests only, no coverage
	$(BIN)/python -m pytest -q -x $(PYTEST_ARGS)

ARGS ?=
bench: install-dev ## Benchmark suite: served vs raw model as ratios, plots in bench/results (~16 min; ARGS=--quick)
	$(BIN)/python -m bench.run $(ARGS)

bench-quick: install-dev ## The benchmark suite's quick mode (~3.5 min), a smoke run; results in bench/results/quick.*
	$(BIN)/python -m bench.run --quick $(ARGS)

bench-levers: install-dev ## A/B runs of the performance levers (~15 min), into bench/results/levers.json
	$(BIN)/python -m bench.levers $(ARGS)

stress: install-dev ## Ramp open-loop load on EfficientNet-Lite0 to the latency knee (~2 min); bench/results/stress.*
	$(BIN)/python -m bench.stress $(ARGS)

SOAK_SECONDS ?= 600
soak: install-dev ## Soak test: mixed load for SOAK_SECONDS (600), flat memory/fds/threads/tasks; bench/results/soak.json
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_REPORT=bench/results/soak.json \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider --no-cov tests/chaos/test_soak.py

docs: install-dev ## Regenerate docs/CONFIGURATION.md (settings) and the Helm chart's values table (schema)
	$(BIN)/inference-engine config docs > docs/CONFIGURATION.md
	$(BIN)/python tools/helm_values_table.py

proto: install-dev ## Regenerate the gRPC modules and their type stubs from the .proto (tools/generate_proto.py)
	$(BIN)/python tools/generate_proto.py

VARIANT ?= cpu
docker: ## Build the container image (VARIANT=cpu or cuda); needs a Docker engine
	docker build --build-arg VARIANT=$(VARIANT) -t inference-engine:$(VARIANT) .

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov
