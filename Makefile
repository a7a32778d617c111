# Two commands do all set-up on a fresh machine:  make demo  (the main job)  and  make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel of torch must come first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install dev browser demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

# lmms-eval goes in without its deps: they are the eval extra's (in dev), less torchvision, whose
# PyPI wheels do not load beside the CPU torch (pyproject.toml, docs/evaluation.md).
dev: install browser
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps "lmms-eval==0.7.3"

# Chromium for the web app's browser test (tests/test_web.py): Debian's package, installed when run
# as root with apt; otherwise that test skips and says why (pytest -rs prints the reason).
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "note: apt-get could not install chromium; tests/test_web.py will skip"; \
	else echo "note: no chromium (apt-get install chromium, as root); tests/test_web.py will skip"; fi

demo: install
	$(BIN)/genllava quickstart --out runs/quickstart

# The serving tests that need right answers (tests/test_serve_trained.py) use the demo's trained
# model: a clean clone trains it first (about 15 CPU minutes), a later run reuses it.
DEMO_MODEL := runs/quickstart/model/config.json
$(DEMO_MODEL): | install
	$(BIN)/genllava quickstart --out runs/quickstart

test: dev $(DEMO_MODEL)
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf runs .pytest_cache
