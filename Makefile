# Quickstart targets: each creates the virtual environment and installs what it needs.
#   make demo   runs the main job on its embedded default (bundled real X-rays, demo protocol)
#   make test   runs the test suite (CPU only)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test install clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision come in the same pip command as everything else, so that a later
	# install cannot swap torch for another build.
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) benchmark/run.py

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) output
