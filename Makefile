# The two commands a newcomer needs: `make book` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctxlab-installed
# The CPU wheel is installed first so that the torch range in requirements.txt is already met.
TORCH_SPEC ?= torch==2.13.0
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg
BUILD := $(VENV)/bin/jupyter-book build . -W -n --keep-going

.PHONY: install book test unit nbval bookcheck lab execute gpucheck clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

book: $(STAMP)
	$(BUILD)
	@echo "Book built: $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(MAKE) unit
	$(MAKE) nbval
	$(MAKE) bookcheck

unit: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

nbval: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(NBVAL) book

bookcheck: $(STAMP)
	rm -rf _build
	$(BUILD)
	@echo "Book built: $(CURDIR)/_build/html/index.html"

lab: $(STAMP)
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install -q "jupyterlab>=4,<5"
	$(VENV)/bin/jupyter lab book

execute: $(STAMP)
	for nb in book/*.ipynb; do $(VENV)/bin/jupyter execute --inplace "$$nb" || exit 1; done

gpucheck: $(STAMP)
	$(PY) -m ctxlab.gpucheck --out book/data/gpucheck.json

clean:
	rm -rf _build
