# Set-up and everyday commands. `make test` and `make quickstart` work on a fresh machine:
# they create .venv, install the CPU build of torch 2.13.0 first (a GPU machine can use `pip install .`
# instead and get PyPI's CUDA build), then the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/enja_bahdanau.yaml
# A local corpus mirror is used before any download when it exists (these machines are offline).
export NMT_DATA_MIRROR ?= $(abspath $(wildcard ../shared/data))

.PHONY: install test test-slow test-portable test-all lint quickstart clean notebook-runs notebooks docs

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
	$(BIN)/ruff check nmt tests scripts notebooks
	$(BIN)/mypy
	$(BIN)/lint-imports

quickstart: install
	$(BIN)/nmt data --config $(CONFIG)
	$(BIN)/nmt train --config $(CONFIG)
	$(BIN)/nmt evaluate --config $(CONFIG) --split dev
	$(BIN)/nmt translate --config $(CONFIG) "i like tennis ."

# The attention chapter's runs (notebooks/chapter.py), trained once into runs/notebooks/ for NMT_NOTEBOOK_MINUTES
# per model (default 2) and reused by every notebook: `NMT_NOTEBOOK_MINUTES=10 make notebook-runs` trains sharper ones.
notebook-runs: install
	$(BIN)/python notebooks/chapter.py

# The chapter's notebooks, executed end to end in a Jupyter kernel (stored without outputs; the executed copies go to
# build/notebooks/ for `make docs`). Runs not trained yet are trained on the way.
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
EXECUTED := $(NOTEBOOKS:notebooks/%=build/notebooks/%)
notebooks: install
	NMT_NOTEBOOKS_ONLINE=1 $(BIN)/python -m pytest -m slow tests/test_notebooks.py

$(EXECUTED) &: $(NOTEBOOKS) notebooks/chapter.py
	$(MAKE) notebooks

$(BIN)/mkdocs: pyproject.toml $(BIN)/nmt
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

# The documentation site (site/): the README, RELIABILITY.md, BENCHMARKS.md, the API's docstrings and the executed
# notebooks (executed first when build/notebooks/ lacks a notebook or is older), built in strict mode, so a broken link
# or reference fails.
docs: $(BIN)/mkdocs $(EXECUTED)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf runs data/cache data/downloads build
