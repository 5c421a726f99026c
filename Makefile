# Set-up and everyday commands. `make test` and `make quickstart` work on a fresh machine:
# they create .venv, install the CPU build of torch 2.13.0 first (a GPU machine can use `pip install .`
# instead and get PyPI's CUDA build), then the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/enja_bahdanau.yaml
# A local corpus mirror is used before any download when it exists (these machines are offline).
export NMT_DATA_MIRROR ?= $(abspath $(wildcard ../shared/data))

.PHONY: install test test-slow test-portable test-all lint quickstart bench clean notebooks docs

$(BIN)/nmt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/nmt

# The fast tier (the README's test command): every module, no long trainings.
test: install
	$(BIN)/python -m pytest -m "not slow"

# Long trainings and end-to-end runs.
test-slow: install
	$(BIN)/python -m pytest -m slow

# The numerics-sensitive tests again on another kernel path (AVX2 instead of this CPU's best): a threshold or an
# equality that holds on one CPU only fails here before it fails on a user's machine.
test-portable: install
	ATEN_CPU_CAPABILITY=avx2 $(BIN)/python -m pytest -m numerics

test-all: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check nmt tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

quickstart: install
	$(BIN)/nmt data --config $(CONFIG)
	$(BIN)/nmt train --config $(CONFIG)
	$(BIN)/nmt evaluate --config $(CONFIG) --split dev
	$(BIN)/nmt translate --config $(CONFIG) "i like tennis ."

# The attention chapter's notebooks, executed end to end in a Jupyter kernel (stored without outputs). Each trains
# its small models on the real corpora into runs/notebooks/ and reuses them when they are there.
notebooks: install
	$(BIN)/python -m pytest -m slow tests/test_notebooks.py

$(BIN)/mkdocs: pyproject.toml $(BIN)/nmt
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

# The documentation site (site/): the README, RELIABILITY.md, BENCHMARKS.md and the API's docstrings, built in strict
# mode, so a broken link or reference fails.
docs: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf runs data/cache data/downloads
