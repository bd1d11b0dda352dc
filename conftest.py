"""Collect the book's chapters (jupytext MyST notebooks) as nbmake tests.

nbmake only collects ``*.ipynb``. Each ``chapters/*.md`` with a jupytext header is converted to
``build/notebooks/<name>.ipynb`` (atomically, since every pytest-xdist worker collects) and handed
to nbmake's own notebook item, so ``pytest --nbmake chapters`` and
``pytest --nbmake chapters/ch1_probabilistic.md`` work directly. A failing cell (a failed claim)
fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
BUILD = ROOT / "build" / "notebooks"


def _is_chapter(path: Path) -> bool:
    if path.suffix != ".md" or path.parent.name != "chapters":
        return False
    head = path.read_text(encoding="utf-8")[:600]
    return head.startswith("---") and "jupytext" in head and "format_name: myst" in head


class JupytextNotebook(pytest.File):
    def collect(self):
        import jupytext
        from nbmake.pytest_items import NotebookItem

        BUILD.mkdir(parents=True, exist_ok=True)
        target = BUILD / (self.path.stem + ".ipynb")
        nb = jupytext.read(self.path)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(jupytext.writes(nb, fmt="ipynb"), encoding="utf-8")
        os.replace(tmp, target)
        yield NotebookItem.from_parent(self, filename=str(target))


def pytest_collect_file(file_path: Path, parent):
    if parent.config.option.nbmake and _is_chapter(file_path):
        return JupytextNotebook.from_parent(parent, path=file_path)
    return None



# CI seconds of each chapter at CI scale on two cores (from the cell timestamps of a CI run).
# make test runs pytest-xdist with --dist loadfile --no-loadscope-reorder: files are handed out in
# collection order, and a worker takes the next file while it holds at most two pending tests, so
# a worker given a one-test chapter at once takes the next file too. The chapters therefore go
# first, longest first, each followed by a unit-test file of several tests: a worker runs one
# chapter (and a short file) at a time, the next chapter goes to whichever worker is free first,
# and the remaining unit-test files fill the gaps at the end (list scheduling, longest first).
_CHAPTER_COST = {"ch2": 315, "ch4": 200, "ch5": 215, "ch3": 170, "ch6": 55, "ch1": 25}


def pytest_collection_modifyitems(session, config, items):
    def file_of(item):
        return Path(str(item.fspath))

    def is_chapter(f):
        return f.parent.name in ("chapters", "notebooks") and f.stem.split("_")[0] in _CHAPTER_COST

    chapters = sorted({file_of(i) for i in items if is_chapter(file_of(i))},
                      key=lambda f: -_CHAPTER_COST[f.stem.split("_")[0]])
    sizes: dict[Path, int] = {}
    for i in items:
        if not is_chapter(file_of(i)):
            sizes[file_of(i)] = sizes.get(file_of(i), 0) + 1
    fillers = [f for f in sizes if sizes[f] >= 3][: len(chapters)]
    rank = {}
    for k, f in enumerate(chapters):
        rank[f] = 2 * k
    for k, f in enumerate(fillers):
        rank[f] = 2 * k + 1
    items.sort(key=lambda i: rank.get(file_of(i), len(rank)))  # stable within a file and the rest
