r"""Provenance of the recorded paper-scale runs, and whether they are stale.

A paper-scale run (``make paper``, script ``tools/paper_run.py``) executes a chapter at
``BOOK_SCALE=paper`` and commits its claim records with their provenance to
``results/paper/chapter-<N>.json``. The book shows those records beside the claims of the build
(CI scale). A record is *stale* when the chapter's source, or a ``lib`` module it imports
(directly or through other ``lib`` modules), changed after the recorded commit, or when the tree
was not clean at that commit; staleness is computed from git at build time.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "chapter_source",
    "chapter_sources",
    "is_stale",
    "paper_outcome_text",
    "paper_record",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "paper"


def chapter_source(chapter: int) -> Path:
    """The jupytext source of chapter ``chapter`` (``chapters/ch<N>_*.md``)."""
    found = sorted((ROOT / "chapters").glob(f"ch{chapter}_*.md"))
    if not found:
        raise FileNotFoundError(f"no chapters/ch{chapter}_*.md")
    return found[0]


def _lib_imports(text: str, *, inside_lib: bool) -> set[str]:
    """Names of lib modules imported by Python source ``text``."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
    mods: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.module and (node.module == "lib" or node.module.startswith("lib.")):
                parts = node.module.split(".")[1:]
                if parts:
                    mods.add(parts[0])
                else:
                    mods.update(a.name for a in node.names)
            elif inside_lib and node.level == 1:
                if node.module:
                    mods.add(node.module.split(".")[0])
                else:
                    mods.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("lib."):
                    mods.add(a.name.split(".")[1])
    return mods


def _code_cells(path: Path) -> list[str]:
    """The code cells of a jupytext MyST chapter (cell options and IPython magics dropped)."""
    cells: list[list[str]] = []
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```{code-cell}"):
            inside = True
            cells.append([])
            continue
        if inside and line.startswith("```"):
            inside = False
            continue
        if inside and not line.startswith((":", "%", "!")):
            cells[-1].append(line)
    return ["\n".join(c) for c in cells]


def chapter_sources(chapter: int) -> list[str]:
    """Repository-relative paths the chapter's numbers depend on: its source and its lib modules."""
    src = chapter_source(chapter)
    todo: set[str] = set()
    for cell in _code_cells(src):
        todo |= _lib_imports(cell, inside_lib=False)
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        f = ROOT / "lib" / f"{mod}.py"
        if not f.exists():
            continue
        seen.add(mod)
        todo |= _lib_imports(f.read_text(encoding="utf-8"), inside_lib=True) - seen
    return [str(src.relative_to(ROOT))] + sorted(f"lib/{m}.py" for m in seen)


def paper_record(chapter: int, directory: Path | None = None) -> dict | None:
    """The committed paper-scale record of ``chapter``, or ``None`` when none was recorded."""
    p = (directory or RESULTS) / f"chapter-{chapter}.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)


@functools.lru_cache(maxsize=64)
def _changed_since(commit: str, paths: tuple[str, ...]) -> list[str] | None:
    """Paths among ``paths`` that differ between ``commit`` and the working tree (``None``: unknown)."""
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return None
    r = _git("diff", "--name-only", commit, "--", *paths)
    if r.returncode != 0:
        return None
    return [p for p in r.stdout.splitlines() if p]


def is_stale(record: dict | None, chapter: int) -> tuple[bool, str]:
    """Whether a paper-scale record is stale, and why (empty reason when current)."""
    if record is None:
        return True, "no paper-scale run recorded"
    prov = record.get("provenance", {})
    commit = prov.get("commit")
    if not commit:
        return True, "the record has no commit"
    if not prov.get("clean", False):
        return True, "recorded from a tree with uncommitted changes"
    paths = tuple(chapter_sources(chapter))
    changed = _changed_since(commit, paths)
    if changed is None:
        return True, f"commit {commit[:8]} is not in this repository's history"
    if changed:
        return True, "changed since: " + ", ".join(changed)
    return False, ""


def paper_outcome_text(chapter: int, cid: str, directory: Path | None = None) -> str:
    """Short text for the paper-scale column of a claims table."""
    from .claims import ClaimResult

    rec = paper_record(chapter, directory)
    if rec is None:
        return "not run"
    claim: Any = rec.get("claims", {}).get(cid)
    if claim is None:
        return "not in the recorded run"
    r = ClaimResult(**claim)
    stale, _ = is_stale(rec, chapter)
    date = rec.get("provenance", {}).get("date", "")[:10]
    return f"{r.outcome} ({r.measured_text}; {date}{', stale' if stale else ''})"
