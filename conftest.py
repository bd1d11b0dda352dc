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


# CI seconds of each chapter at CI scale on two cores (from the cell timestamps of a CI run);
# make test runs pytest-xdist with --dist loadfile, which hands files to the workers in collection
# order, so the chapters go first, longest first, and the short unit-test files fill the gaps:
# the run then ends close to (total work) / (workers) instead of waiting on a long chapter
# started last.
_CHAPTER_COST = {"ch2": 300, "ch5": 220, "ch3": 175, "ch4": 150, "ch6": 75, "ch1": 25}


def pytest_collection_modifyitems(session, config, items):
    def key(item):
        stem = Path(str(item.fspath)).stem
        if Path(str(item.fspath)).parent.name == "chapters" or stem.startswith("ch"):
            return (0, -_CHAPTER_COST.get(stem.split("_")[0], 100))
        return (1, 0)

    items.sort(key=key)  # stable: unit tests keep their order
