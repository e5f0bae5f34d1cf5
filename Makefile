# agent-resilience: developer commands. `make help` lists them.

# Python 3.12 is the Lambda runtime. pyenv may have it installed without putting
# it first on PATH, so look there too, and fall back to python3 (3.11 works for
# everything but `sam build`).
# Each candidate is run, not just looked up, because a pyenv shim can exist on
# PATH and still fail for a version that is not selected.
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 python3; do \
	"$$p" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

VENV := .venv
BIN := $(VENV)/bin
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
SAM_CLI_VERSION := 1.170.0
# Each function directory has its own app.py, so mypy checks them one by one.
FUNCTION_DIRS := $(sort $(dir $(wildcard functions/*/*.py)))
ENV ?= dev
# ruff formats Python code blocks in Markdown too. The docs align their
# example comments by hand, so the formatter leaves Markdown alone.
RUFF_FORMAT := $(BIN)/ruff format --extend-exclude '*.md'
export AWS_DEFAULT_REGION ?= us-east-1
export SAM_CLI_TELEMETRY := 0

.DEFAULT_GOAL := help
.PHONY: help install dev test test-unit test-integration test-e2e test-browser lint \
	format build deploy migrate bench clean

help: ## List the commands
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/.installed: requirements.txt requirements-dev.txt
	@test -n "$(PYTHON)" || { echo "Python 3.11 or newer is required (3.12 preferred)"; exit 1; }
	@echo "Creating $(VENV) with $(PYTHON)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed ## Create .venv and install the pinned dependencies

dev: install ## Start the local stack on embedded defaults and serve the API on 127.0.0.1:3000 (PORT changes the port)
	$(BIN)/python -m local

test: install ## Run the whole test suite (unit, integration, end-to-end, browser)
	$(BIN)/python -m pytest

test-unit: install ## Run the unit tests only
	$(BIN)/python -m pytest tests/unit

test-integration: install ## Run the tests against real PostgreSQL and Redis
	$(BIN)/python -m pytest tests/integration

test-e2e: install ## Run the end-to-end tests against the local stack
	$(BIN)/python -m pytest tests/e2e

test-browser: install ## Run the approval-page tests in headless Chromium
	$(BIN)/python -m pytest tests/browser

# aws-sam-cli pins its own boto3, click and jsonschema, so it gets a virtualenv
# of its own instead of sharing .venv.
$(SAM):
	@test -n "$(PYTHON312)" || { echo "aws-sam-cli needs python3.12 on PATH or under ~/.pyenv/versions"; exit 1; }
	test -x $(SAM_VENV)/bin/python || $(PYTHON312) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli==$(SAM_CLI_VERSION)

lint: install $(SAM) ## Run ruff, mypy (library, local stack, layer check, each function), cfn-lint and sam validate
	$(BIN)/ruff check .
	$(RUFF_FORMAT) --check .
	$(BIN)/mypy shared/resilience local layers/resilience
	@for dir in $(FUNCTION_DIRS); do echo "$(BIN)/mypy $$dir"; $(BIN)/mypy "$$dir" || exit 1; done
	$(BIN)/cfn-lint template.yaml
	$(SAM) validate --lint
	$(SAM) validate

format: install ## Format the code with ruff
	$(RUFF_FORMAT) .
	$(BIN)/ruff check --fix .

build: $(SAM) ## Build the layer and functions into .aws-sam/, then import each handler against the built layer
	PATH="$(dir $(PYTHON312)):$$PATH" $(SAM) build
	$(SAM_VENV)/bin/python layers/resilience/check_build.py .aws-sam/build

deploy: build ## Deploy to AWS with the samconfig.toml environment ENV (dev, staging or prod; default dev)
	$(SAM) deploy --config-env $(ENV)

migrate: install ## Apply schema.sql to the database named by DATABASE_URL (safe to repeat)
	$(BIN)/python -m resilience db migrate

bench: install ## Run the benchmarks (installs the baselines they compare against)
	$(BIN)/pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/breaker.py
	$(BIN)/python bench/batches.py
	$(BIN)/python bench/llm_failover.py

clean: ## Remove the virtualenvs and build output
	rm -rf $(VENV) $(SAM_VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
