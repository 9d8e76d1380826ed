# Two entry points for a fresh machine (see README):
#   make demo   - installs the pinned requirements into .venv and runs the whole job
#                 (synthetic COVIDx -> training -> evaluation) on 2 CPU cores in minutes
#   make test   - installs requirements + test requirements and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) demo.py --out demo_output

test: $(VENV)/.installed-test
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q

clean:
	rm -rf demo_output output .pytest_cache
