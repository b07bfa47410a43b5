# The two commands a newcomer needs: `make book` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctxlab-installed
BOOK_STAMP := $(VENV)/.ctxlab-book-installed
# The CPU wheel is installed first so that the torch range in requirements.txt is already met.
TORCH_SPEC ?= torch==2.13.0
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg
BUILD := $(VENV)/bin/jupyter-book build . -W -n --keep-going

.PHONY: install book test unit nbval bookcheck browserdeps lab execute format gpucheck clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-book.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP) $(BOOK_STAMP)

# Building the HTML renders the stored outputs: it needs jupyter-book alone, not torch.
$(BOOK_STAMP): requirements-book.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-book.txt
	touch $(BOOK_STAMP)

book: $(BOOK_STAMP)
	$(BUILD)
	@echo "Book built: $(CURDIR)/_build/html/index.html"

# The book is built first: the unit tests include the browser test, which opens the built pages.
test: $(STAMP) browserdeps
	$(MAKE) bookcheck
	$(MAKE) unit
	$(MAKE) nbval

# Two test workers, one per core, one thread each: more threads than cores only makes them wait on each other.
unit: $(STAMP) browserdeps
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 tests

# Two notebooks run at once, one per core; one thread each keeps their timings free of oversubscription.
# The stored outputs are written with the CPU's native kernels (make execute); nbval checks them under
# the portable kernel path that every x86 and ARM CPU has, so a printed digit that depends on the
# machine fails here, on the machine that wrote it (see CONTRIBUTING.md). Override to try another:
# make nbval NBVAL_CPU=avx2 NBVAL_THREADS=2.
NBVAL_CPU ?= default
NBVAL_THREADS ?= 1
nbval: $(STAMP)
	ATEN_CPU_CAPABILITY=$(NBVAL_CPU) OMP_NUM_THREADS=$(NBVAL_THREADS) $(PY) -m pytest -q -n 2 --dist loadfile $(NBVAL) book

bookcheck: $(STAMP)
	rm -rf _build
	$(BUILD)
	@echo "Book built: $(CURDIR)/_build/html/index.html"

# Notebook code in one style, each line within the page's column (tests/book/test_notebooks.py checks the
# lengths). A string that black cannot split fails that test: split it by hand.
format: $(STAMP)
	$(PY) -c "import black" 2>/dev/null || $(PY) -m pip install -q "black[jupyter]>=24,<27"
	$(PY) -m black -q --line-length 88 --ipynb book/*.ipynb

lab: $(STAMP)
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install -q "jupyterlab>=4,<5"
	$(VENV)/bin/jupyter lab book

# Stored outputs come from the native kernels, one notebook after another;
# make execute NOTEBOOKS="book/03_clipping.ipynb" re-runs only the ones named.
execute: $(STAMP)
	for nb in $(or $(NOTEBOOKS),book/*.ipynb); do env -u ATEN_CPU_CAPABILITY $(VENV)/bin/jupyter execute --inplace "$$nb" || exit 1; done

gpucheck: $(STAMP)
	$(PY) -m ctxlab.gpucheck --out book/data/gpucheck.json

# The browser test's tools, installed when missing: Debian's chromium, and the JavaScript that the
# pages load from jsDelivr (RequireJS, the widget manager, MathJax), taken from the npm registry
# into .browser/ (ignored). Without them tests/book/test_browser.py skips, except under CI=true.
BROWSER_JS ?= requirejs@2.3.8 @jupyter-widgets/html-manager@1.0.15 mathjax@3
browserdeps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
		|| echo "browserdeps: could not install chromium (needs root and Debian's package registry)"
	@echo "$(BROWSER_JS)" | cmp -s - .browser/installed 2>/dev/null || { rm -rf .browser && mkdir -p .browser \
		&& for spec in $(BROWSER_JS); do dir=.browser/npm/$${spec%@*} && mkdir -p $$dir \
		&& tgz=$$(cd .browser && npm pack --silent $$spec) && tar xzf .browser/$$tgz -C $$dir --strip-components=1 \
		&& rm .browser/$$tgz || exit 1; done && echo "$(BROWSER_JS)" > .browser/installed; } \
		|| echo "browserdeps: could not fetch $(BROWSER_JS) from the npm registry"

clean:
	rm -rf _build artifacts
