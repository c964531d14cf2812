# The README's two commands, test-fast: the suite without the tests that train (`slow`: notebooks, longer training;
# `trains`: a step or a few), and report. The tests run on three processes (pytest-xdist; tests/conftest.py says how
# they share the cores): on 2 cores a third keeps them busy while the slow tests start kernels and processes and wait
# on them (the suite 6:13 on two, 5:37 on three, idle); `.venv/bin/python -m pytest -p no:xdist tests/test_x.py -k
# name` debugs one alone.
# All create .venv/ on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
OUT ?= outputs/quickstart
# Python caches compiled modules (in .venv/ and __pycache__/, both git-ignored) even where the environment
# says not to (PYTHONDONTWRITEBYTECODE, common in containers): without the cache every process -- a test's
# subprocess, a notebook kernel, a torchrun worker -- compiles torch's and fastai's sources again (~8 s each here).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast report clean-venv

# A recent pip first: the pip a new venv brings (23.2 with Python 3.11) takes ~45 s to resolve the ~230 packages
# where pip 26 takes ~15 s (the same versions chosen; benchmarks/results.md, the fresh-clone table with a recent pip).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e ".[test,tracking]"
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(OUT)
	$(VENV)/bin/papermill notebooks/quickstart.ipynb $(OUT)/quickstart.ipynb --cwd . -p output_dir $(OUT)
	@echo "Executed notebook, tables and figures: $(OUT)/"

# One HTML page of every run under outputs/ (tables vs the paper, departures apart, figures): outputs/report.html
report: $(STAMP)
	$(PY) -m sddlib.report_page outputs

test: $(STAMP)
	$(PY) -m pytest -q -n 3

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 3 -m "not slow and not trains"

clean-venv:
	rm -rf $(VENV)
