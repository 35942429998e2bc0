# Every target sets itself up from nothing: a virtual environment in .venv, the project installed in it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins exact versions of boto3 and others far below the dev tools': it gets a venv of its own.
SCAN := .venv-scan
SCAN_STAMP := $(SCAN)/.installed
# SAM builds for the Lambda runtime (python3.13); pyenv machines keep it beside the default Python.
SAM_PYENV ?= 3.11.7:3.13.0
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: help venv test unit integration lint build demo bench invoke clean schemas chaos lock

help:
	@echo "make test    set up and run the whole test suite"
	@echo "make lint    ruff, mypy, cfn-lint, sam validate --lint, asl-validator, checkov"
	@echo "make build   sam build (the deployable artifacts in .aws-sam/)"
	@echo "make demo    the whole pipeline on this machine: moto + the Anthropic emulator (ARGS=--help)"
	@echo "make chaos SEEDS=200   the promises under random faults, seed by seed"
	@echo "make invoke FN=BufferFunction EVENT=events/buffer.json   run one function, no Docker"
	@echo "make lock    recompile layers/relay/requirements.txt from layers/relay/requirements.in"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(SCAN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(SCAN)
	$(SCAN)/bin/pip install --quiet --upgrade pip
	$(SCAN)/bin/pip install --quiet $$($(PYTHON) scripts/extra.py scan)
	touch $(SCAN_STAMP)

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

test: $(STAMP)
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

lint: $(STAMP) $(SCAN_STAMP) node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	$(BIN)/sam validate --lint --template template.yaml
	npx --no-install asl-validator --json-path statemachine/poller.asl.json
	$(SCAN)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml

build: $(STAMP)
	PYENV_VERSION=$(SAM_PYENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/sam build --template template.yaml

demo: $(STAMP)
	$(BIN)/relay-local demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run 2>/dev/null | grep -v '^{"'

invoke: $(STAMP)
	$(BIN)/relay-local invoke $(FN) $(EVENT)

# The layer's pinned set, for the Lambda runtime (python3.13, arm64), from the floors in requirements.in.
lock: $(STAMP)
	$(BIN)/python scripts/lock.py

clean:
	rm -rf $(VENV) $(SCAN) node_modules .aws-sam .pytest_cache .mypy_cache .ruff_cache

schemas: $(STAMP)
	$(BIN)/python scripts/schemas.py

chaos: $(STAMP)
	$(BIN)/relay-local chaos --seeds $(or $(SEEDS),20) $(ARGS) 2>/dev/null | grep -v '^{"'
