# Two commands on a fresh machine with Python >= 3.11:
#   make demo [DIR=/path/to/images]   set up, then ingest DIR (or a generated demo set) on the embedded broker
#   make test                         set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo up test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "damflow needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/damflow run $(DIR)

up: setup
	$(BIN)/damflow up

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/tier1_throughput.py

clean:
	rm -rf $(VENV) damflow-data .pytest_cache
