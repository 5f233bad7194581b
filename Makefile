# Paying Attention — two commands do everything:
#   make lab    set up (once) and open the series in JupyterLab
#   make test   set up (once) and run the unit tests and every notebook (nbval)
# Headless JupyterLab: make lab ARGS=--no-browser

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=
# Extra pip options, e.g. a CPU-only PyTorch on a machine without a GPU:
#   make lab PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_EXTRA ?=

# Offline copy of the data (CI, development machines without internet): use it when present.
SHARED_DATA := $(wildcard $(CURDIR)/../shared/data/deu-eng-50k.tsv)
ifneq ($(SHARED_DATA),)
export PAYING_ATTENTION_DATA ?= $(abspath $(SHARED_DATA))
endif
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: lab test setup data unit notebooks lint format bench results reproducibility clean help

help:
	@echo "make lab    - set up and open JupyterLab on notebooks/ (ARGS=--no-browser for headless)"
	@echo "make test   - set up and run unit tests, lint and every notebook"
	@echo "make bench  - training speed: the article's loop against ours"
	@echo "make format - ruff format + fix, notebooks included"

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] >= (3, 11), "Python 3.11+ needed, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $@

# The test-only pins (Playwright, repo2docker) on top, for `make test` only.
$(VENV)/.installed-test: requirements-test.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) -r requirements-test.txt
	@touch $@

setup: $(VENV)/.installed data

data: $(VENV)/.installed
	@$(BIN)/python -m helpers fetch >/dev/null && echo "data: $$($(BIN)/python -m helpers where)"

# Jupyter refuses to start as root (containers, some CI machines) without --allow-root.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

# Where JupyterLab opens (the browser test points it at a temporary copy).
NOTEBOOK_DIR ?= notebooks

# `env -u MPLBACKEND`: a backend inherited from the shell (Agg, say) would stop the
# kernels from switching to inline plotting, and no figure would ever show.
# The reading path (00_index) opens first, where the notebook folder has it.
FIRST_PAGE := $(if $(wildcard $(NOTEBOOK_DIR)/00_index.ipynb),--LabApp.default_url=/lab/tree/00_index.ipynb,)

lab: setup
	env -u MPLBACKEND $(BIN)/jupyter lab --notebook-dir=$(NOTEBOOK_DIR) $(ROOT_FLAG) $(FIRST_PAGE) $(ARGS)

unit: setup $(VENV)/.installed-test
	$(BIN)/python -m pytest tests

notebooks: setup
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) -p no:randomly notebooks

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Progress bars off under nbval: it reads a cell's outputs only after the cell ends, and
# minutes of widget updates overflow the kernel's output queue (messages get dropped).
test notebooks: export PAYING_ATTENTION_PROGRESS = 0

# Agg (no display) only where nothing is shown: never for `lab`, whose kernels must
# stay free to pick Jupyter's inline backend (an exported MPLBACKEND=Agg there would
# silently blank every figure). The browser test checks exactly that.
test notebooks unit bench results reproducibility: export MPLBACKEND = Agg

# nbval's per-cell limit guards against a hung cell; it is not a speed target. Training
# cells are defined by epochs, so a slow or busy machine must finish them, only later:
# beside a busy loop on one of two cores, torch's two threads run several times slower.
NBVAL_CELL_TIMEOUT ?= 3600

# One pytest run: unit tests and nbval re-executing every notebook, one summary line.
test: setup lint $(VENV)/.installed-test
	$(BIN)/python -m pytest --durations=15 --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NBVAL_CELL_TIMEOUT) tests notebooks

bench: setup
	$(BIN)/python -m helpers.benchmark

# The full-budget experiments behind notebooks 07 and 08 (hours on a 2-core CPU;
# resumable). 08's speed figures need an idle machine: run
# `python -m helpers.experiments --experiment transformer --measure-speed` by itself.
results: setup
	$(BIN)/python -m helpers.experiments
	$(BIN)/python -m helpers.experiments --experiment transformer

# Same numbers on a busy machine: 04's recipe unloaded, beside a busy loop, on 1 thread.
reproducibility: setup
	$(BIN)/python -m helpers.reproducibility

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache checkpoints
