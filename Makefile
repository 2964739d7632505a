# Two commands do all the set-up and work on a fresh machine:
#   make test   creates .venv, installs torch (CPU wheel by default), lowpeft with its extension and the test
#               extras, then runs the test suite
#   make demo   same set-up, then runs `lowpeft demo` (on the CPU when there is no GPU)
# On a machine whose Python already has a CUDA torch, use it: `make test PYTHON_FOR_VENV=python3 VENV_FLAGS=--system-site-packages TORCH_SPEC=`
PYTHON_FOR_VENV ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.lowpeft-installed

.PHONY: test demo install clean

$(STAMP): pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null)
	$(PYTHON_FOR_VENV) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q setuptools wheel
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install -q "$(TORCH_SPEC)")
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/lowpeft demo

clean:
	rm -rf $(VENV) build lowpeft/_C*.so *.egg-info
