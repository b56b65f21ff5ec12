# Two commands on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make run    set everything up, open the app on the bundled model and sample document
#   make test   set everything up, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fraqtl-installed

.PHONY: run test setup engine model clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,serve]'
	touch $(STAMP)

setup: $(STAMP) engine model

engine: $(STAMP)
	$(BIN)/python -m engine.build

model: $(STAMP)
	$(BIN)/python -m engine.models fetch

run: setup
	$(BIN)/fraqtl-chat

test: setup
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
