# Glass Box: every command a learner, teacher or CI needs.
# `make lab` and `make test` set up .venv themselves; the set-up is skipped while
# .venv is up to date with requirements.txt and pyproject.toml (the stamp file),
# so a second run starts at once and needs no network.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.glassbox-installed
NB     ?=

.PHONY: help install lab test test-quick run outputs exercises check bench tinygpt clean provider colab test-browser book

help:
	@echo "make lab        install (first time only) and open the course in JupyterLab"
	@echo "make test       install (first time only) and run every test, notebooks included (both cores)"
	@echo "make test-quick the tests that execute no notebook and start no provider: unit tests, checks (about 2 minutes)"
	@echo "make run        execute every notebook headlessly and write HTML into build/"
	@echo "make outputs    re-execute the notebooks to refresh their stored outputs (TinyGPT, offline)"
	@echo "make exercises  generate exercises/ from solutions/"
	@echo "make check NB=exercises/02_anatomy.ipynb   check your own exercise notebook"
	@echo "make bench      time every notebook and print a table (model from GLASSBOX_MODEL)"
	@echo "make tinygpt    retrain TinyGPT from scratch (about 10 minutes on 2 CPU cores)"
	@echo "make tinygpt-chat  retrain TinyGPT-chat from TinyGPT base with TRL: SFT, then DPO (budget 10 minutes on 2 CPU cores)"
	@echo "make colab      stamp the Colab badge and set-up cell into every notebook (URL: glassbox/course_url.py)"
	@echo "make test-browser  run every lesson in a real JupyterLab in headless Chromium; screenshots in build/screenshots/"
	@echo "make provider   start the course's provider for a class (ARGS=\"--host 0.0.0.0 --keys-file keys.txt\")"
	@echo "make book       build the rendered course from the stored outputs into build/book/ (offline)"
	@echo "make gguf       export the model (TinyGPT; GGUF_MODEL=gpt2 or a folder) to GGUF in build/gguf/ with llama.cpp's converter"
	@echo "make test-servers  maintainers, not CI (~11 min build): serve the GGUF with llama-cpp-python, probe it, run 06-08"

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

# JupyterLab settings for the course (no "official Jupyter news?" pop-up), in .venv's app settings.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.json
$(LAB_SETTINGS): lab/overrides.json $(STAMP)
	mkdir -p $(dir $@)
	cp lab/overrides.json $@

install: $(STAMP) $(LAB_SETTINGS)

lab: install
	$(VENV)/bin/jupyter lab notebooks/00_setup_check.ipynb

# Both cores: each notebook's cells, and each test module, stay on one worker; the plugin's
# scheduler decides (tests/notebook_plugin.py), in its order (longest units first).
XDIST := -n 2 --no-loadscope-reorder

test: install
	$(PY) -m pytest $(XDIST) --durations=15

test-quick: install
	$(PY) -m pytest $(XDIST) -m "not notebook and not slow" tests

run: install
	$(PY) scripts/run_notebooks.py --html build

outputs: install colab
	$(PY) scripts/run_notebooks.py --in-place

exercises: install colab
	$(PY) scripts/make_exercises.py

check: install
	@test -n "$(NB)" || { echo "Say which notebook to check, e.g. make check NB=exercises/02_anatomy.ipynb"; exit 2; }
	$(PY) -m glassbox.check "$(NB)"

bench: install
	$(PY) scripts/bench.py

tinygpt: install
	$(PY) -m glassbox.tinygpt.train

tinygpt-chat: install
	$(PY) -m glassbox.tinygpt.chat_train

# The course's OpenAI-compatible provider, e.g. for a class:
#   make provider ARGS="--model tinygpt --host 0.0.0.0 --keys-file keys.txt --rpm 60"
# (all flags: .venv/bin/python -m glassbox.provider --help)
provider: install
	$(PY) -m glassbox.provider $(ARGS)

colab: install
	$(PY) scripts/stamp_colab.py

test-browser: install
	GLASSBOX_BROWSER_TESTS=1 $(PY) -m pytest tests/browser

book: install
	$(PY) scripts/build_book.py --out build/book

# Self-hosting with the tools people use (scripts/test_servers.sh says what each step does).
# `make gguf` downloads llama-cpp-python's source package (it vendors llama.cpp's converter; no build).
GGUF_MODEL ?= tinygpt
.PHONY: gguf test-servers
gguf: install
	bash scripts/test_servers.sh source
	$(PY) scripts/export_gguf.py --model "$(GGUF_MODEL)" --check

test-servers: install
	bash scripts/test_servers.sh

clean:
	rm -rf build .bench
