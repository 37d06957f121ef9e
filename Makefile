# Glass Box: every command a learner, teacher or CI needs.
# `make lab` and `make test` set up .venv themselves; the set-up is skipped while
# .venv is up to date with requirements.txt and pyproject.toml (the stamp file),
# so a second run starts at once and needs no network.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.glassbox-installed
NB     ?=

.PHONY: help install lab test run outputs exercises check bench tinygpt clean

help:
	@echo "make lab        install (first time only) and open the course in JupyterLab"
	@echo "make test       install (first time only) and run every test, notebooks included"
	@echo "make run        execute every notebook headlessly and write HTML into build/"
	@echo "make outputs    re-execute the notebooks to refresh their stored outputs (TinyGPT, offline)"
	@echo "make exercises  generate exercises/ from solutions/"
	@echo "make check NB=exercises/02_anatomy.ipynb   check your own exercise notebook"
	@echo "make bench      time every notebook and print a table (model from GLASSBOX_MODEL)"
	@echo "make tinygpt    retrain TinyGPT from scratch (about 10 minutes on 2 CPU cores)"

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

lab: install
	$(VENV)/bin/jupyter lab notebooks/00_setup_check.ipynb

test: install
	$(PY) -m pytest

run: install
	$(PY) scripts/run_notebooks.py --html build

outputs: install
	$(PY) scripts/run_notebooks.py --in-place

exercises: install
	$(PY) scripts/make_exercises.py

check: install
	@test -n "$(NB)" || { echo "Say which notebook to check, e.g. make check NB=exercises/02_anatomy.ipynb"; exit 2; }
	$(PY) -m glassbox.check "$(NB)"

bench: install
	$(PY) scripts/bench.py

tinygpt: install
	$(PY) -m glassbox.tinygpt.train

clean:
	rm -rf build .bench
