# The few commands that matter. `make help` lists them.
VENV ?= .venv
PYTHON ?= python3
# The torch build to install first: the CPU wheel by default. For a CUDA machine, e.g.
#   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

BIN := $(CURDIR)/$(VENV)/bin
# Stages in dvc.yaml call `mlpipe`; make it resolve to this project's environment.
export PATH := $(BIN):$(PATH)
STAMP := $(VENV)/.setup-complete

.PHONY: help setup repro verify test test-fast lint format bench bench-pipeline bench-fit bench-table dag mlflow-ui lock clean

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create $(VENV) with the project (editable) and its dev tools

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $@

repro: setup ## Run the pipeline (dvc repro): prepare → train → evaluate → package
	dvc repro

verify: setup ## Rebuild every stage from scratch in a temporary copy; compare with dvc.lock
	mlpipe verify

test: setup ## Run every test, end-to-end ones included, on two workers
	pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: setup ## Run the fast tests only (no servers, no dvc runs), on two workers
	pytest -m "not slow" -n 2 --dist loadgroup $(PYTEST_ARGS)

LINTED := src tests benchmarks harness

lint: setup ## Check style, formatting and types
	ruff check $(LINTED)
	ruff format --check $(LINTED)
	mypy

format: setup ## Fix formatting and the auto-fixable lint findings
	ruff format $(LINTED)
	ruff check --fix $(LINTED)

bench: bench-pipeline bench-fit bench-table bench-storage bench-serve ## Run every benchmark (figures in BENCHMARKS.md)

bench-pipeline: setup ## Time the full pipeline and a no-op `dvc repro` (needs hyperfine)
	benchmarks/pipeline.sh

bench-fit: setup ## Time train.fit against a bare PyTorch loop on the same model, data and schedule
	python -m benchmarks.fit

bench-table: setup ## Time the MLP on tables against scikit-learn pipelines on the same splits
	python -m benchmarks.table

dag: setup ## Draw the pipeline
	dvc dag

mlflow-ui: setup ## Browse the local MLflow store at http://127.0.0.1:5000
	mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000

lock: setup ## Re-pin requirements.lock from the current environment
	{ sed -n '1,3p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -viE '^(torch|nvidia-|triton|mlpipe)=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

# Targets for storage, serving, deployment and CI live beside this file, one topic each.
include $(sort $(wildcard mk/*.mk))

clean: ## Remove caches (not the environment, data or models)
	rm -rf .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
