# Set-up and everyday commands. `make demo` and `make test` are the README's two commands:
# each creates the virtual environment (.venv) on first use, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
SEED ?= 0

.PHONY: install demo data-summary test clean

$(BIN)/unveil: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/unveil

# Main job on the embedded default data: the synthetic `paper` benchmark (outputs in runs/demo).
demo: install
	$(BIN)/python scripts/demo.py --out runs/demo --seed $(SEED)

# Check and summarise the real samples in ../shared/data (or SHARED_DATA=...).
data-summary: install
	$(BIN)/python scripts/data_summary.py --data $(SHARED_DATA) --seed $(SEED)

# The whole test suite (CI runs exactly this: see .ci/run).
test: install
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
