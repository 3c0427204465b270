# tracer — the two commands a newcomer needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all demo bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first (a local wheel on the dev machine; from PyPI elsewhere) so nothing pulls a CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q --index-url https://download.pytorch.org/whl/cpu torch
	$(BIN)/pip install -q -e ".[test]"
	# Chromium for the explorer's browser tests, from Debian where apt works (the tests skip without it).
	command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
		echo "note: no chromium; tests/test_ui.py's browser tests will skip"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

demo: $(STAMP)
	$(BIN)/tracer demo --workdir runs/demo

bench: $(STAMP)
	$(BIN)/python eval/bench_featurize.py --json

clean:
	rm -rf $(VENV) runs
