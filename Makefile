# inference-engine: `make serve` serves the default model repository; `make test` runs everything.
# Both create .venv and install the locked dependencies first (requirements/*.txt, hashed; `make lock`
# refreshes them): `make serve` the slim server (ONNX Runtime, no torch), `make test` the dev set.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
ENV ?= dev
MODEL_REPOSITORY ?= models
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install install-torch install-dev lock serve lint format test test-fast bench bench-quick bench-check bench-levers bench-fairness bench-admission stress soak fuzz docs proto docker clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# tools/install.sh installs a lock with --require-hashes, then the client (clients/python, which
# the server depends on at the same version) and the server, editable and without dependencies.
# Where torch is wanted it picks torch's CPU build on a machine without an NVIDIA driver (the CPU
# index only where download.pytorch.org resolves), PyPI's CUDA build on one with a driver
# (TORCH_VARIANT=cpu|cuda overrides).
CLIENT := clients/python
INSTALL := PYTHON=$(PYTHON) tools/install.sh $(VENV)

$(BIN)/.installed: requirements/slim.txt pyproject.toml $(CLIENT)/pyproject.toml tools/install.sh
	$(INSTALL) slim
	@touch $@

$(BIN)/.installed-torch: $(BIN)/.installed requirements/torch-cpu.txt requirements/torch-cuda.txt
	$(INSTALL) torch
	@touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements/dev-cpu.txt requirements/dev-cuda.txt
	$(INSTALL) dev
	@touch $@

install: $(BIN)/.installed ## Create .venv and install the server (slim: ONNX Runtime, no torch) from its lock

install-torch: $(BIN)/.installed-torch ## Also torch (CPU build without an NVIDIA driver) for CLIP, FLAVA, TorchScript

install-dev: $(BIN)/.installed-dev ## Also torch and the test, lint and benchmark tools (CI's set)

UPGRADE ?=
lock: ## Refresh requirements/*.txt and constraints.txt from pyproject.toml with uv (UPGRADE=1: newest releases)
	$(PYTHON) tools/lock.py $(if $(UPGRADE),--upgrade)

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
bench: install-dev ## Benchmark suite: served vs raw model as ratios, plots in bench/results (~22 min; ARGS=--quick)
	$(BIN)/python -m bench.run $(ARGS)

bench-quick: install-dev ## The benchmark suite's quick mode (~4 min), a smoke run; results in bench/results/quick.*
	$(BIN)/python -m bench.run --quick $(ARGS)

CHECK_MARGIN ?=
bench-check: install-dev ## Performance regression check (~2.5 min): ratios of one short run vs bench/floors.json (CHECK_MARGIN=0.5: gross only)
	$(BIN)/python -m bench.check $(if $(CHECK_MARGIN),--margin $(CHECK_MARGIN)) $(ARGS)

bench-levers: install-dev ## A/B runs of the performance levers (~16 min), into bench/results/levers.json
	$(BIN)/python -m bench.levers $(ARGS)

bench-fairness: install-dev ## Fair queuing: a light tenant's latency alone and under a heavy tenant's flood (~2 min); bench/results/fairness.*
	$(BIN)/python -m bench.fairness $(ARGS)

bench-admission: install-dev ## Predictive admission past capacity: refusal latency, forward passes, prediction error (~30 s); bench/results/admission.*
	$(BIN)/python -m bench.admission $(ARGS)

stress: install-dev ## Ramp open-loop load on EfficientNet-Lite0 to the latency knee (~2 min); bench/results/stress.*
	$(BIN)/python -m bench.stress $(ARGS)

FUZZ_EXAMPLES ?= 250
fuzz: install-dev ## Schemathesis fuzz of the HTTP API with FUZZ_EXAMPLES (250) cases per inference slice (~3 min)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q -s -p no:cacheprovider --no-cov tests/integration/test_fuzz.py

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
