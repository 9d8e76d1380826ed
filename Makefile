# Two entry points for a fresh machine (see README):
#   make demo   - installs the pinned requirements into .venv and runs the whole job
#                 (synthetic COVIDx -> training -> evaluation) on 2 CPU cores in minutes
#   make test   - installs requirements + test requirements, runs ruff (rules in pyproject.toml)
#                 and the test suite on 2 processes (pytest-xdist; worksteal: an idle worker takes queued tests
#                 from the busy one, so the long end-to-end tests do not leave one core idle at the end)
#   make torch  - optional: PyTorch (CPU) for the tests that compare with real torch (CI runs it
#                 before make test; without it those tests skip with a message)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast torch venv clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

$(VENV)/.installed-torch: $(VENV)/.installed requirements-torch.txt
	$(PY) -m pip install --quiet -r requirements-torch.txt
	touch $@

venv: $(VENV)/.installed

torch: $(VENV)/.installed-torch

demo: $(VENV)/.installed
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) demo.py --out demo_output

test: $(VENV)/.installed-test
	$(PY) -m ruff check .
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n 2 --dist worksteal

# The inner loop while changing code: everything but the end-to-end runs marked slow (CI runs all).
test-fast: $(VENV)/.installed-test
	$(PY) -m ruff check .
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n 2 --dist worksteal -m "not slow"

clean:
	rm -rf demo_output output .pytest_cache
