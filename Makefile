# Two commands set up a fresh machine: `make run` (the whole graph on the embedded default) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU torch wheel lies here on this kind of machine; elsewhere uv falls back to the package index.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

export DAGSTER_HOME ?= $(CURDIR)/dagster_home
export S2VEC_WAREHOUSE ?= $(CURDIR)/warehouse

.PHONY: venv run lint test test-system test-fast bench dev taxonomy-doc tables-doc clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install --python $(BIN)/python $(FIND_LINKS) -e '.[dev]'
	touch $(STAMP)

# `make run CONFIG=deploy/paper_scale.yaml REGIONS=monaco`: a run config file and a subset of regions
# (both optional: empty = the defaults, every catalog region).
CONFIG ?=
REGIONS ?=
# `make dev PORT=3001`: the UI's port on 127.0.0.1.
PORT ?= 3000

run: venv
	$(BIN)/s2vec run $(if $(strip $(REGIONS)),--regions $(strip $(REGIONS))) $(if $(strip $(CONFIG)),--config $(strip $(CONFIG)))

# The formatter and the linter (rules in pyproject.toml) gate the tests: `ruff format .` fixes the first.
lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# `make test` leaves out the whole-system runs (marker `system`, ~9 min more); CI runs both.
test: lint
	$(BIN)/python -m pytest -q -m "not system"

test-system: venv
	$(BIN)/python -m pytest -q -m system

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not system"

bench: venv
	$(BIN)/python bench/run_all.py

dev: venv
	$(BIN)/s2vec dev --host 127.0.0.1 --port $(PORT)

taxonomy-doc: venv
	$(BIN)/python -m s2vec_core.taxonomy > TAXONOMY.md

tables-doc: venv
	$(BIN)/python -m s2vec_core.tables --write README.md

clean:
	rm -rf warehouse dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
