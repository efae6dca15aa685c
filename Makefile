# The two commands a new developer needs: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: dev dev-reset deploy checkov test lint typecheck openapi bench bench-cold-start package dynamodb-local clean

$(STAMP): requirements-dev.txt $(wildcard layers/*/requirements.txt) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

## Serve the whole API on http://127.0.0.1:$${PORT:-3000} with embedded AWS; the store
## persists in $(DEV_STORE) across restarts.
DEV_STORE ?= .dev/store
dev: $(STAMP)
	LLMCREDITS_DEV_STORE=$(DEV_STORE) $(BIN)/llmcredits dev

## Empty the dev store (every account, ledger entry and BYOK key of `make dev`).
dev-reset:
	rm -rf $(DEV_STORE)
	@echo "emptied $(DEV_STORE)"

## Lint, type-check and run every test (DynamoDB Local tests included when Java is here).
test: $(STAMP) lint typecheck checkov
	$(BIN)/python scripts/dynamodb_local.py install
	$(BIN)/python -m pytest; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

## checkov on template.yaml (own venv: checkov pins boto3/botocore versions that clash
## with the dev venv's): 0 failed checks, every skip with its reason on the resource.
CHECKOV_VENV := .cache/checkov
$(CHECKOV_VENV)/.installed: requirements-checkov.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet -r requirements-checkov.txt
	touch $@

checkov: $(STAMP) $(CHECKOV_VENV)/.installed
	$(BIN)/python scripts/checkov_template.py --checkov $(CHECKOV_VENV)/bin/checkov

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

## Apply each curated money/security mutant (tests/mutants/mutants.toml) to a scratch copy; fail if one survives.
.PHONY: mutants
mutants: $(STAMP)
	# The console-folder test reads functions/console/static (a symlink) and fails in the
	# scratch copy: deselected so it can never count as a kill.
	$(BIN)/python scripts/mutants.py --deselect tests/unit/test_console_site.py::test_the_function_serves_the_repository_console_folder

## Regenerate the OpenAPI document served by GET /openapi.json.
openapi: $(STAMP)
	$(BIN)/llmcredits openapi --write

## Print the chat benchmark figures (calls per request, latency ratio, req/s on DynamoDB Local).
bench: $(STAMP)
	POWERTOOLS_METRICS_DISABLED=true $(BIN)/python bench/chat.py 2>/dev/null

## Import time of each function in a fresh Lambda-like interpreter vs `import boto3` alone.
bench-cold-start: $(STAMP)
	$(BIN)/python bench/cold_start.py

## Build the layers (python3.13, arm64 wheels, no Docker) and function zips into build/.
package: $(STAMP)
	$(BIN)/python scripts/package.py

## sam build (layers via BuildMethod: makefile: arm64 wheels, no Docker) then sam deploy:
## guided by default; `make deploy CONFIG_ENV=prod` deploys with samconfig.toml's [prod].
deploy: $(STAMP)
	$(BIN)/sam build
	$(if $(CONFIG_ENV),$(BIN)/sam deploy --config-env $(CONFIG_ENV),$(BIN)/sam deploy --guided)

## Run DynamoDB Local in the foreground on :8000 (use with DYNAMODB_ENDPOINT=http://127.0.0.1:8000).
dynamodb-local: $(STAMP)
	$(BIN)/python scripts/dynamodb_local.py run --port 8000

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
