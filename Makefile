# Every target sets itself up from nothing: a virtual environment in .venv, the project installed in it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Each venv installs exactly its lock (hashes checked): the dev one holds the layer's versions.
# checkov and the SAM CLI pin boto3 and others to versions of their own: each gets a venv apart.
SCAN := .venv-scan
SCAN_STAMP := $(SCAN)/.installed
SAM := .venv-sam
SAM_STAMP := $(SAM)/.installed
# SAM builds for the Lambda runtime (python3.13); pyenv machines keep it beside the default Python.
SAM_PYENV ?= 3.11.7:3.13.0
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: help venv test unit integration lint build deploy demo bench invoke clean schemas chaos lock outdated live

help:
	@echo "make test    set up and run the whole test suite"
	@echo "make lint    ruff, mypy, cfn-lint, sam validate --lint, asl-validator, checkov"
	@echo "make build   sam build (the deployable artifacts in .aws-sam/)"
	@echo "make deploy STACK=batch-relay KEY_ARN=<secret ARN> [OVERRIDES='Name=value ...']   build, then sam deploy"
	@echo "make demo    the whole pipeline on this machine: moto + the Anthropic emulator (ARGS=--help)"
	@echo "make chaos SEEDS=200   the promises under random faults, seed by seed"
	@echo "make live    a few real requests against the real API (needs ANTHROPIC_API_KEY; never in CI)"
	@echo "make invoke FN=BufferFunction EVENT=events/buffer.json   run one function, no Docker"
	@echo "make lock    refresh every lock from its floors (the layer's and the tools'); ARGS=--keep keeps pins"
	@echo "make outdated   what make lock would change, with the relay's packages' changelog lines"

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/dev.txt layers/relay/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

$(SCAN_STAMP): requirements/scan.txt
	$(PYTHON) -m venv $(SCAN)
	$(SCAN)/bin/pip install --quiet --require-hashes --no-deps -r requirements/scan.txt
	touch $(SCAN_STAMP)

$(SAM_STAMP): requirements/sam.txt
	$(PYTHON) -m venv $(SAM)
	$(SAM)/bin/pip install --quiet --require-hashes --no-deps -r requirements/sam.txt
	touch $(SAM_STAMP)

node_modules/.installed: package.json
	npm install --no-audit --no-fund --silent
	touch $@

test: $(STAMP)
	$(BIN)/pytest -q

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

lint: $(STAMP) $(SCAN_STAMP) $(SAM_STAMP) node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml
	$(SAM)/bin/sam validate --lint --template template.yaml
	npx --no-install asl-validator --json-path statemachine/poller.asl.json
	$(BIN)/pytest -q -p no:warnings tests/integration/test_deploy.py -k parliament
	$(SCAN)/bin/checkov --quiet --compact --skip-download --framework cloudformation -f template.yaml

build: $(SAM_STAMP)
	PYENV_VERSION=$(SAM_PYENV) PATH=$(CURDIR)/$(SAM)/bin:$$PATH $(SAM)/bin/sam build --template template.yaml

# The stack's name, and the ARN of the secret holding the Anthropic API key (README, Deploy).
STACK ?= batch-relay
deploy: build
	@test -n "$(KEY_ARN)" || { echo "make deploy needs KEY_ARN=<ARN of the secret holding the API key>" >&2; exit 2; }
	PATH=$(CURDIR)/$(SAM)/bin:$$PATH $(SAM)/bin/sam deploy --stack-name $(STACK) \
		--parameter-overrides ApiKeySecretArn=$(KEY_ARN) $(OVERRIDES) $(ARGS)

demo: $(STAMP)
	$(BIN)/relay-local demo $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run 2>/dev/null | grep -v '^{"'

invoke: $(STAMP)
	$(BIN)/relay-local invoke $(FN) $(EVENT)

# The locks (the layer's for python3.13 on arm64, and the tools'), from their floors; see scripts/lock.py.
lock: $(STAMP)
	$(BIN)/python scripts/lock.py $(ARGS)

outdated: $(STAMP)
	$(BIN)/python scripts/lock.py --outdated

clean:
	rm -rf $(VENV) $(SCAN) $(SAM) node_modules .aws-sam .pytest_cache .mypy_cache .ruff_cache

schemas: $(STAMP)
	$(BIN)/python scripts/schemas.py

live: $(STAMP)
	$(BIN)/relay-local live $(ARGS)

chaos: $(STAMP)
	$(BIN)/relay-local chaos --seeds $(or $(SEEDS),20) $(ARGS) 2>/dev/null | grep -v '^{"'
