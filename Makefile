# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first so a site-wide cap or a local wheel is honoured. PyPI's Linux x86_64 torch is the
# CUDA build (several GB); CPU=1 takes the CPU-only build from PyTorch's own index instead:
#   make test CPU=1        (same as TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu")
CPU ?=
TORCH_PACKAGES ?= torch torchvision
TORCH_INDEX ?= $(if $(CPU),--index-url https://download.pytorch.org/whl/cpu,)
# then phasestem with every extra (learn, tune, cluster, detectors, abtem) and the test tools: ".[dev]"; and PtyRAD's
# wheel alone (--no-deps: it is never imported, tests/test_convert_ptyrad.py reads the params files it ships)

.PHONY: install demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX) $(TORCH_PACKAGES)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps "ptyrad==1.0.0"
	touch $@

install: $(BIN)/.installed

# DEMO_ARGS: flags of 'phasestem demo', e.g.  make demo DEMO_ARGS=--skip-learned   (or --quick, --device cuda)
DEMO_ARGS ?=

demo: install
	$(BIN)/phasestem demo --out demo_output $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks scripts notebooks

clean:
	rm -rf demo_output .pytest_cache
