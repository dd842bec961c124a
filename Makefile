# Set-up and everyday commands. `make demo` and `make test` are the README's two commands:
# each creates the virtual environment (.venv) on first use, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
SEED ?= 0

.PHONY: install demo test clean

$(BIN)/unveil: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/unveil

# Main job on the default data. Until the synthetic benchmark and demo exist, it checks and
# summarises the real samples in ../shared/data (or any folder given as SHARED_DATA=...).
demo: install
	$(BIN)/python scripts/data_summary.py --data $(SHARED_DATA) --seed $(SEED)

# The whole test suite (CI runs exactly this: see .ci/run).
test: install
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
