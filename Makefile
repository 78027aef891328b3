# The two commands of the README quick start: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test lint reference bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

## Run the engine on the embedded default (SQLite under ./data, in-process queue).
run: $(VENV)/.installed
	$(VENV)/bin/interlink run

## Install what the tests need (Python deps, FHIR test server, PostgreSQL/Redis if absent) and run them.
test: $(VENV)/.installed
	bash scripts/test-services.sh
	$(VENV)/bin/ruff check engine tests bench
	$(VENV)/bin/ruff format --check engine tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

## Static checks: ruff (lint and format), mypy, and hadolint on the Dockerfile (all run under `make test` too).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check engine tests bench
	$(VENV)/bin/ruff format --check engine tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

## Regenerate docs/reference.md (every engine and channel setting) from the pydantic models.
reference: $(VENV)/.installed
	$(PY) -m engine.reference --output docs/reference.md

bench: $(VENV)/.installed
	$(PY) bench/ingest.py
	$(PY) bench/pipeline.py
