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



# CI seconds of each chapter at CI scale on two cores (cell timestamps of a fresh-clone CI run).
# make test runs pytest-xdist with --dist loadfile --no-loadscope-reorder: files are handed out in
# collection order; at the start each worker gets one file and then a second one if it holds at
# most two pending tests, and later a worker gets the next file whenever it holds at most two. A
# chapter is one test, so a worker holding a lone chapter takes the next file at once: were that
# file another chapter, it would wait behind the first while the other worker idles (a CI run lost
# a minute that way). So the order is: the first JOBS chapters (one per worker), then one short
# unit-test file of several tests per worker, then chapter, file, chapter, file, ... and the
# remaining unit-test files last. A worker then holds one chapter and a file behind it, takes the
# next chapter only once it is nearly done, and the chapters go longest first to whichever
# worker frees first (list scheduling). (--dist loadgroup would say this directly, but pytest 9
# moved the node id that pytest-xdist 3.8 rewrites to add the group, so its groups are ignored.)
_CHAPTER_COST = {"ch2": 335, "ch5": 228, "ch4": 213, "ch3": 167, "ch6": 61, "ch1": 23}


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
    # the number of xdist workers (collection runs in each worker, where xdist has reset -n)
    workerinput = getattr(config, "workerinput", None)
    jobs = workerinput["workercount"] if workerinput else (config.getoption("numprocesses", None) or 1)
    jobs = jobs if isinstance(jobs, int) and jobs > 0 else 1
    order = chapters[:jobs] + fillers[:jobs]
    for c, f in zip(chapters[jobs:], fillers[jobs:] + [None] * len(chapters)):
        order += [c] if f is None else [c, f]
    rank = {f: k for k, f in enumerate(order)}
    items.sort(key=lambda i: rank.get(file_of(i), len(rank)))  # stable within a file and the rest
