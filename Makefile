# Two commands do all set-up on a fresh machine:  make demo  (the main job)  and  make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch must come first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install dev demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

dev: install
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	$(BIN)/genllava quickstart --out runs/quickstart

test: dev
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
