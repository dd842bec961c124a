# Set-up and everyday commands. `make demo` and `make test` are the README's two commands:
# each creates the virtual environment (.venv) on first use, then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data
SEED ?= 0

# TORCH_INDEX: a package index to take torch and torchvision from before everything else, e.g. PyTorch's
# CPU-only wheels (`make install-cpu`); empty (the default): PyPI's, which on x86-64 Linux bring CUDA.
TORCH_INDEX ?=
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# the pins of pyproject.toml (tests/test_install.py holds them equal)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install install-cpu demo public public-scale data-summary lung-model test clean

$(BIN)/unveil: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet --index-url $(TORCH_INDEX) $(TORCH_PINS))
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/unveil

# The same environment with CPU-only torch and torchvision (no CUDA libraries): on a fresh clone, or after
# `make clean`, since an existing .venv is kept as it is.
install-cpu:
	$(MAKE) install TORCH_INDEX=$(TORCH_CPU_INDEX)

# Main job on the embedded default data: the shipped `demo` experiment on the synthetic `paper`
# benchmark, end to end (outputs and runs/demo/report.html; a rerun continues where it stopped).
demo: install
	$(BIN)/unveil demo --out runs/demo --seed $(SEED)

# The paper's design on public data (src/unveil/experiments/public.yaml) read from ../shared/data:
# 4-8 minutes on 2 CPU cores (conv8, 128 px; measured 7 min 46 s on a shared 2-core machine, README);
# outputs and runs/public/report.html.
# Data paths in the shipped file resolve against this folder; rebind a role with
# `unveil reproduce public --data ROLE=SOURCE:PATH`.
public: install
	$(BIN)/unveil reproduce public --out runs/public --seed $(SEED)

# The paper's question at a scale that concludes (src/unveil/experiments/public-scale.yaml): COVID-QU-Ex and
# Kermany from ../shared/data/scale, seeds 0, 1, 2 (the file's; no --seed, which would run one), a mitigated
# arm; under 90 minutes on 2 CPU cores (README). Resumes when rerun. Outputs and runs/public-scale/report.html.
public-scale: install
	$(BIN)/unveil reproduce public-scale --out runs/public-scale

# Check and summarise the real samples in ../shared/data (or SHARED_DATA=...).
data-summary: install
	$(BIN)/python scripts/data_summary.py --data $(SHARED_DATA) --seed $(SEED)

# Re-train the shipped lung model from ../shared/data (CPU, 1 thread: faster than 2 on a busy machine;
# see the model card for the measured time) and install it into the package
# (src/unveil/segmentation/weights/MODEL_CARD.md).
LUNG_DATA = --data covid-chestxray:$(SHARED_DATA)/covid-chestxray \
	--data lung-segmentation:$(SHARED_DATA)/lung-segmentation --data covid-qu-ex:$(SHARED_DATA)/covid-qu-ex
lung-model: install
	$(BIN)/unveil lungs train $(LUNG_DATA) --architecture unet16 --samples-per-epoch 160 --epochs 75 \
		--out runs/lung-model --seed 0 --threads 1
	cp runs/lung-model/lung_unet.safetensors runs/lung-model/lung_unet.json src/unveil/segmentation/weights/
	cp runs/lung-model/parts.csv src/unveil/segmentation/weights/lung_unet.parts.csv

# The static checks, then the whole test suite (CI runs exactly this: see .ci/run). The checks come
# first because they take seconds and fail fast: ruff (rule sets in pyproject.toml [tool.ruff.lint])
# and mypy (pyproject.toml [tool.mypy]), both at zero findings.
test: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
