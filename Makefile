# Set-up and the two everyday commands. Each target creates .venv if it is missing and installs
# torch==2.13.0 first (a bare `torch` requirement would pull a multi-GB CUDA build), then the project
# with its test tools and the study app's web stack.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast clean-demo

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,study]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded toy default (see README "Quick start").
demo: $(STAMP)
	DS_ACCELERATOR=cpu $(BIN)/python recipes/run.py recipes/toy/demo.yaml

# The whole test suite (CPU, fp32, tiny models). .ci/run calls exactly this.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -x tests -m "not slow"
