# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first so a site-wide cap or a local wheel is honoured; override for a CPU-only build, e.g.
#   make TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu" test
TORCH_PACKAGES ?= torch torchvision
TORCH_INDEX ?=

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) $(TORCH_PACKAGES)
	$(BIN)/python -m pip install --quiet -e ".[learn,tune,dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/phasestem demo --out demo_output

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf demo_output .pytest_cache
