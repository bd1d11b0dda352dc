r"""Claims: a reproduced statement is a checked number.

A chapter states each claim it reproduces with :func:`check`. The call compares a *measured*
number with the paper's *expected* value or bound, records the result, and raises
:class:`ClaimFailed` (an ``AssertionError``) when the claim does not hold, so that a failed claim
fails the notebook, the test run and the book build.

Each result is also written to ``$BOOK_CLAIMS_DIR/chapter-<N>.json`` (default:
``<repository>/_build/claims``). The book's claims ledger (``book/claims.md``) is rendered from
those files by the Sphinx extension in ``book/_ext/claims_ledger.py`` after every chapter of the
same build has executed, so the ledger is never typed by hand.

Claim ids are ``"N.k"``: chapter ``N``, claim ``k`` as numbered in the chapter's issue; a letter
suffix (``"3.2b"``) splits one claim into parts.

Relations
---------
``"<="`` / ``">="``
    ``measured <= expected`` / ``measured >= expected``; the bound is the tolerance.
``"=="``
    ``|measured - expected| <= tol`` (absolute tolerance; ``tol=0`` for exact integers).
``"rel=="``
    ``|measured - expected| <= tol * |expected|``.
``"in"``
    ``lo <= measured <= hi`` with ``expected=(lo, hi)``.

Example
-------
>>> from lib.claims import check
>>> r = check("1.1", "attention = grad of log-normalizer / beta", 3e-16,
...           ref="Sec. 2", relation="<=", expected=1e-12, record=False)
>>> r.passed
True
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import scale as _scale

__all__ = [
    "ClaimFailed",
    "ClaimResult",
    "begin_chapter",
    "check",
    "claims_dir",
    "results",
    "table",
    "load_ledger",
]

_ID = re.compile(r"^(\d+)\.(\d+)([a-z]?)$")
RELATIONS = ("<=", ">=", "==", "rel==", "in")


class ClaimFailed(AssertionError):
    """Raised by :func:`check` when a measured number does not satisfy its claim."""


@dataclass
class ClaimResult:
    """One checked claim, as recorded in the ledger."""

    id: str
    chapter: int
    statement: str
    ref: str
    measured: float
    relation: str
    expected: Any
    tol: float | None
    passed: bool
    scale: str
    unit: str = ""
    note: str = ""
    time: float = field(default_factory=time.time)

    def _digits(self) -> int:
        """Significant digits needed to tell the measured value from a bound (4 to 12)."""
        if self.relation not in ("<=", ">="):
            return 4
        m, e = self.measured, self.expected
        for p in range(4, 13):
            if f"{m:.{p}g}" != f"{e:.{p}g}":
                return p
        return 12

    @property
    def expected_text(self) -> str:
        """The expected value or bound as a short human-readable string."""
        u = f" {self.unit}" if self.unit else ""
        if self.relation == "<=":
            return f"≤ {_fmt(self.expected, self._digits())}{u}"
        if self.relation == ">=":
            return f"≥ {_fmt(self.expected, self._digits())}{u}"
        if self.relation == "==":
            return f"{_fmt(self.expected)} ± {_fmt(self.tol)}{u}" if self.tol else f"= {_fmt(self.expected)}{u}"
        if self.relation == "rel==":
            return f"{_fmt(self.expected)}{u} ± {_fmt(100 * self.tol)}%"
        lo, hi = self.expected
        return f"∈ [{_fmt(lo)}, {_fmt(hi)}]{u}"

    def _ipython_display_(self) -> None:
        """Show nothing in notebooks: :func:`check` has already printed the verdict line."""

    @property
    def measured_text(self) -> str:
        return _fmt(self.measured, self._digits()) + (f" {self.unit}" if self.unit else "")


_RESULTS: dict[str, ClaimResult] = {}


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == 0.0:
            return "0"
        if math.isnan(x) or math.isinf(x):
            return str(x)
        a = abs(x)
        if 1e-3 <= a < 1e4:
            return f"{x:.{digits}g}"
        return f"{x:.{max(digits - 2, 2)}e}"
    return str(x)


def claims_dir() -> Path:
    """Folder the claim records are written to: ``$BOOK_CLAIMS_DIR`` or ``<repo>/_build/claims``."""
    env = os.environ.get("BOOK_CLAIMS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "_build" / "claims"


def _parse_id(cid: str) -> int:
    if not isinstance(cid, str):
        raise TypeError(f"claim id must be a string like '1.3', got {type(cid).__name__}")
    m = _ID.match(cid)
    if not m:
        raise ValueError(f"claim id must look like 'N.k' (e.g. '1.3' or '3.2b'), got {cid!r}")
    return int(m.group(1))


def _as_number(x: Any, name: str) -> float:
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        x = x.item()
    if isinstance(x, bool):
        return float(x)
    if not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x) if isinstance(x, float) else x


def _path(chapter: int) -> Path:
    return claims_dir() / f"chapter-{chapter}.json"


def begin_chapter(chapter: int) -> None:
    """Start a fresh record for ``chapter``: forget its earlier results (in memory and on disk).

    Call once at the top of a chapter so that claims removed from a chapter do not linger in the
    ledger.
    """
    if isinstance(chapter, bool) or not isinstance(chapter, int) or chapter < 1:
        raise ValueError(f"chapter must be a positive int, got {chapter!r}")
    for key in [k for k, r in _RESULTS.items() if r.chapter == chapter]:
        del _RESULTS[key]
    p = _path(chapter)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"chapter": chapter, "scale": _scale.scale(), "started": time.time(), "claims": {}}))


def _write(res: ClaimResult) -> None:
    p = _path(res.chapter)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(p.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {"chapter": res.chapter, "scale": res.scale, "started": res.time, "claims": {}}
    data["claims"][res.id] = asdict(res)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(p)


def check(
    cid: str,
    statement: str,
    measured: Any,
    *,
    ref: str,
    relation: str,
    expected: Any,
    tol: float | None = None,
    unit: str = "",
    note: str = "",
    record: bool = True,
    quiet: bool = False,
) -> ClaimResult:
    r"""Check one claim and record it; raise :class:`ClaimFailed` if it does not hold.

    Parameters
    ----------
    cid
        Claim id ``"N.k"`` (chapter ``N``, claim ``k`` of the chapter's issue).
    statement
        One line saying what is claimed, e.g. ``"Hessian of A is PSD"``.
    measured
        The measured number (float, int, numpy or torch scalar). NaN always fails.
    ref
        Where the paper states it, e.g. ``"Sec. 3, eq. (7)"``.
    relation
        One of ``"<=", ">=", "==", "rel==", "in"`` (see the module docstring).
    expected
        The bound, the expected value, or ``(lo, hi)`` for ``"in"``.
    tol
        Absolute (``"=="``) or relative (``"rel=="``) tolerance; must be ``None`` otherwise.
    unit, note
        Optional unit of the measured number and a free-text remark for the ledger.
    record
        Write the result to the ledger file (default ``True``).
    quiet
        Do not print the one-line summary.
    """
    chapter = _parse_id(cid)
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("statement must be a non-empty string")
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError("ref must name where the paper states the claim (e.g. 'Sec. 2, eq. (3)')")
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    m = _as_number(measured, "measured")
    if relation == "in":
        if not (isinstance(expected, (tuple, list)) and len(expected) == 2):
            raise ValueError("relation 'in' needs expected=(lo, hi)")
        lo, hi = (_as_number(e, "expected") for e in expected)
        if lo > hi:
            raise ValueError(f"expected interval is empty: lo={lo} > hi={hi}")
        exp: Any = (lo, hi)
    else:
        exp = _as_number(expected, "expected")
    if relation in ("==", "rel=="):
        if tol is None:
            raise ValueError(f"relation {relation!r} needs a tolerance tol")
        tol = _as_number(tol, "tol")
        if tol < 0 or math.isnan(tol):
            raise ValueError(f"tol must be >= 0, got {tol}")
    elif tol is not None:
        raise ValueError(f"relation {relation!r} takes its bound from expected; tol must be None")

    if isinstance(m, float) and math.isnan(m):
        passed = False
    elif relation == "<=":
        passed = m <= exp
    elif relation == ">=":
        passed = m >= exp
    elif relation == "==":
        passed = abs(m - exp) <= tol
    elif relation == "rel==":
        passed = abs(m - exp) <= tol * abs(exp)
    else:
        passed = exp[0] <= m <= exp[1]

    res = ClaimResult(
        id=cid, chapter=chapter, statement=statement.strip(), ref=ref.strip(), measured=m,
        relation=relation, expected=exp, tol=tol, passed=bool(passed), scale=_scale.scale(),
        unit=unit, note=note,
    )
    _RESULTS[cid] = res
    if record:
        _write(res)
    line = f"[claim {cid}] {'PASS' if passed else 'FAIL'}: measured {res.measured_text}, expected {res.expected_text} — {res.statement}"
    if not quiet:
        print(line)
    if not passed:
        raise ClaimFailed(line)
    return res


def results(chapter: int | None = None) -> list[ClaimResult]:
    """Results checked in this process, optionally for one chapter, sorted by id."""
    rs = [r for r in _RESULTS.values() if chapter is None or r.chapter == chapter]
    return sorted(rs, key=_sort_key)


def _sort_key(r: Any) -> tuple:
    cid = r.id if isinstance(r, ClaimResult) else r["id"]
    m = _ID.match(cid)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else (0, 0, cid)


def table(chapter: int):
    """The chapter's claims as a Markdown table (an IPython display object), for the chapter's end."""
    from IPython.display import Markdown

    rows = ["| claim | statement | paper | measured | expected | scale | result |", "|---|---|---|---|---|---|---|"]
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    for r in results(chapter):
        rows.append(
            f"| {r.id} | {cell(r.statement)} | {cell(r.ref)} | {r.measured_text} | {r.expected_text} | {r.scale} | "
            f"{'pass' if r.passed else '**FAIL**'} |"
        )
    if len(rows) == 2:
        rows.append("| – | no claim was checked | | | | | |")
    return Markdown("\n".join(rows))


def load_ledger(directory: str | os.PathLike | None = None) -> list[dict]:
    """All records on disk (every chapter), as dicts sorted by claim id."""
    d = Path(directory) if directory is not None else claims_dir()
    out: list[dict] = []
    for p in sorted(d.glob("chapter-*.json")):
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        out.extend(data.get("claims", {}).values())
    return sorted(out, key=_sort_key)
