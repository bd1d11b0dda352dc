r"""Claims: a reproduced statement is a checked number, with a control that fails.

A chapter states each claim with :func:`check`. There are two kinds of record:

*paper claim* (``kind="paper"``)
    A statement the paper makes (or its code shows). It keeps the paper's own words
    (``paper_says``) and carries a **negative control**: the same measurement, by the same code,
    relation and bound, on a setting where the claim must not hold (an untrained model, permuted
    labels, uniform attention, a non-Gaussian start...). The control must *fail* the bound, or the
    check is uninformative and :func:`check` raises. Its outcome is one of ``"reproduced"``,
    ``"partly"`` or ``"not reproduced"``: the chapter declares the outcome it observed
    (``expect=``) and :func:`check` asserts it, so a change of behaviour fails the notebook, the
    test run and the book build, while a claim that does not reproduce is shown as such, never as
    a pass.
*book check* (``kind="book"``)
    This book's own identity, derivation, sanity property or implementation test. It must hold;
    its outcome is ``"pass"``.

Stochastic claims pass their per-seed values as ``seeds=[...]``; the bound then applies to a
stated ``statistic`` of them (default ``"worst"``: the largest value for ``"<="``, the smallest
for ``">="``, every seed for the other relations). Every record says where its bound comes from
(``bound_source``): ``"paper"``, ``"specification"`` (the chapter's specification) or ``"book"``
(chosen here; any bound set after seeing data is the book's).

Each result is written to ``$BOOK_CLAIMS_DIR/chapter-<N>.json`` (default
``<repository>/_build/claims``). The claims ledger (``book/claims.md``) is rendered from those
files by the Sphinx extension ``book/_ext/claims_ledger.py`` after every chapter of the same build
has executed, so the ledger is never typed by hand.

Claim ids are ``"N.k"``: chapter ``N``, claim ``k``; a letter suffix (``"3.2b"``) splits one claim
into parts. The chapter marks where claim ``N.k`` is checked with a MyST target ``(claim-N-k)=``
(the record's ``anchor``), and the ledger links each row there.

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
>>> from lib.claims import check, control
>>> r = check("9.1", "the loss falls below chance", 0.31, ref="Sec. 4", relation="<=",
...           expected=0.5, control=control("shuffled labels", 0.69), record=False, quiet=True)
>>> r.outcome
'reproduced'
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics as _stats
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import scale as _scale

__all__ = [
    "BOUND_SOURCES",
    "KINDS",
    "OUTCOMES",
    "RELATIONS",
    "STATISTICS",
    "ClaimFailed",
    "ClaimResult",
    "Control",
    "begin_chapter",
    "check",
    "claims_dir",
    "control",
    "fmt",
    "load_ledger",
    "results",
    "summary",
    "table",
    "validate_records",
]

_ID = re.compile(r"^(\d+)\.(\d+)([a-z]?)$")
RELATIONS = ("<=", ">=", "==", "rel==", "in")
KINDS = ("paper", "book")
OUTCOMES = ("reproduced", "partly", "not reproduced")
BOUND_SOURCES = ("paper", "specification", "book")
STATISTICS = ("worst", "mean-2se", "mean", "median")
_CHAPTER_CLOCK: dict[int, float] = {}


class ClaimFailed(AssertionError):
    """Raised by :func:`check` when a record does not come out as the chapter declared."""


@dataclass(frozen=True)
class Control:
    """A negative control: the same measurement on a setting where the claim must not hold.

    Build it with :func:`control`. ``values`` holds the per-seed values (one entry when
    deterministic).
    """

    description: str
    values: tuple[float, ...]


def control(description: str, measured: Any) -> Control:
    """A negative control for :func:`check`.

    Parameters
    ----------
    description
        What the control is, e.g. ``"untrained model"``, ``"labels permuted"``.
    measured
        The control's measured value, or a sequence of per-seed values (the same statistic as the
        claim is applied to them).
    """
    if not isinstance(description, str) or not description.strip():
        raise ValueError("a control needs a non-empty description")
    return Control(description.strip(), _values(measured, "control measured"))


@dataclass
class ClaimResult:
    """One checked record, as written to the ledger."""

    id: str
    chapter: int
    kind: str
    outcome: str
    statement: str
    ref: str
    measured: float
    relation: str
    expected: Any
    tol: float | None
    bound_source: str
    scale: str
    anchor: str
    passed: bool
    paper_says: str | None = None
    seeds: list[float] = field(default_factory=list)
    statistic: str = "value"
    control: dict | None = None
    weaker: list | None = None
    reason: str = ""
    unit: str = ""
    note: str = ""
    time: float = field(default_factory=time.time)

    def _digits(self, value: float | None = None) -> int:
        """Significant digits needed to tell a value from its bound (4 to 12)."""
        if self.relation not in ("<=", ">="):
            return 4
        m = self.measured if value is None else value
        e = self.expected
        if not isinstance(m, (int, float)) or not isinstance(e, (int, float)):
            return 4
        for p in range(4, 13):
            if f"{m:.{p}g}" != f"{e:.{p}g}":
                return p
        return 12

    @property
    def expected_text(self) -> str:
        """The expected value or bound as a short human-readable string."""
        return _expected_text(self.relation, self.expected, self.tol, self.unit, self._digits())

    @property
    def measured_text(self) -> str:
        """The measured statistic, with the seeds' range when there are several."""
        u = f" {self.unit}" if self.unit else ""
        text = fmt(self.measured, self._digits()) + u
        if len(self.seeds) > 1:
            lo, hi = min(self.seeds), max(self.seeds)
            stat = {"worst": "worst", "mean-2se": "mean∓2se", "mean": "mean", "median": "median"}
            text += (
                f" ({stat.get(self.statistic, self.statistic)} of {len(self.seeds)} seeds;"
                f" range {fmt(lo)}–{fmt(hi)})"
            )
        return text

    @property
    def control_text(self) -> str:
        """The control's value and description, or an en dash for book checks."""
        if not self.control:
            return "–"
        return f"{fmt(self.control['measured'], self._digits(self.control['measured']))} ({self.control['description']})"

    @property
    def outcome_text(self) -> str:
        return self.outcome if self.outcome != "FAIL" else "**FAIL**"

    def _ipython_display_(self) -> None:
        """Show nothing in notebooks: :func:`check` has already printed the verdict line."""


_RESULTS: dict[str, ClaimResult] = {}


def fmt(x: Any, digits: int = 4) -> str:
    """A number as short text: ``digits`` significant digits, scientific outside [1e-3, 1e4)."""
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


def _expected_text(relation: str, expected: Any, tol: Any, unit: str, digits: int = 4) -> str:
    u = f" {unit}" if unit else ""
    if relation == "<=":
        return f"≤ {fmt(expected, digits)}{u}"
    if relation == ">=":
        return f"≥ {fmt(expected, digits)}{u}"
    if relation == "==":
        return f"{fmt(expected)} ± {fmt(tol)}{u}" if tol else f"= {fmt(expected)}{u}"
    if relation == "rel==":
        return f"{fmt(expected)}{u} ± {fmt(100 * tol)}%"
    lo, hi = expected
    return f"∈ [{fmt(lo)}, {fmt(hi)}]{u}"


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


def _default_anchor(cid: str) -> str:
    m = _ID.match(cid)
    assert m is not None
    return f"claim-{m.group(1)}-{m.group(2)}"


def _as_number(x: Any, name: str) -> float:
    if hasattr(x, "item") and callable(x.item):  # numpy / torch scalars
        try:
            x = x.item()
        except (ValueError, RuntimeError) as e:
            raise TypeError(f"{name} must be a scalar, got an array ({e})") from None
    if isinstance(x, bool):
        return float(x)
    if not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    return float(x) if isinstance(x, float) else x


def _values(x: Any, name: str) -> tuple[float, ...]:
    """A scalar or a sequence (list, tuple, 1-D array or tensor) as a tuple of numbers."""
    if hasattr(x, "tolist") and callable(x.tolist) and not isinstance(x, (int, float)):
        x = x.tolist()
    if isinstance(x, Sequence) and not isinstance(x, str):
        vals = tuple(_as_number(v, name) for v in x)
        if not vals:
            raise ValueError(f"{name}: an empty list of seeds")
        return vals
    return (_as_number(x, name),)


def _path(chapter: int) -> Path:
    return claims_dir() / f"chapter-{chapter}.json"


def begin_chapter(chapter: int) -> None:
    """Start a fresh record for ``chapter``: forget its earlier results (in memory and on disk).

    Call once at the top of a chapter so that claims removed from a chapter do not linger in the
    ledger. It also starts the chapter's clock (see :func:`table`).
    """
    if isinstance(chapter, bool) or not isinstance(chapter, int) or chapter < 1:
        raise ValueError(f"chapter must be a positive int, got {chapter!r}")
    for key in [k for k, r in _RESULTS.items() if r.chapter == chapter]:
        del _RESULTS[key]
    _CHAPTER_CLOCK[chapter] = time.perf_counter()
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


def _holds(value: float, relation: str, expected: Any, tol: float | None) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    if relation == "<=":
        return value <= expected
    if relation == ">=":
        return value >= expected
    if relation == "==":
        return abs(value - expected) <= tol
    if relation == "rel==":
        return abs(value - expected) <= tol * abs(expected)
    return expected[0] <= value <= expected[1]


def _centre(relation: str, expected: Any) -> float:
    return (expected[0] + expected[1]) / 2 if relation == "in" else expected


def _statistic(vals: Sequence[float], statistic: str, relation: str, expected: Any, *, mirror: bool = False) -> float:
    """Reduce per-seed values to the one number the bound applies to.

    ``mirror=True`` reduces a negative control's values: the control must fail the bound for the
    *best* seed (``"worst"`` mirrored), or with the standard-error margin on its favourable side
    (``"mean-2se"`` mirrored), so that one unlucky control seed cannot make a check look sound.
    """
    if len(vals) == 1:
        return vals[0]
    if any(isinstance(v, float) and math.isnan(v) for v in vals):
        return math.nan
    if statistic == "mean":
        return _stats.fmean(vals)
    if statistic == "median":
        return _stats.median(vals)
    if statistic == "mean-2se":
        se = _stats.stdev(vals) / math.sqrt(len(vals))
        sign = (1 if relation == "<=" else -1) * (-1 if mirror else 1)
        return _stats.fmean(vals) + sign * 2 * se
    # worst (mirrored: best)
    if relation == "<=":
        return min(vals) if mirror else max(vals)
    if relation == ">=":
        return max(vals) if mirror else min(vals)
    c = _centre(relation, expected)
    return (min if mirror else max)(vals, key=lambda v: abs(v - c))


def check(
    cid: str,
    statement: str,
    measured: Any = None,
    *,
    ref: str,
    relation: str,
    expected: Any,
    tol: float | None = None,
    kind: str = "paper",
    paper_says: str | None = None,
    bound_source: str = "paper",
    expect: str = "reproduced",
    weaker: tuple[str, Any] | None = None,
    reason: str = "",
    seeds: Any = None,
    statistic: str | None = None,
    control: Control | None = None,
    anchor: str | None = None,
    unit: str = "",
    note: str = "",
    record: bool = True,
    quiet: bool = False,
) -> ClaimResult:
    r"""Check one record, write it to the ledger, raise :class:`ClaimFailed` if it comes out wrong.

    Parameters
    ----------
    cid
        Claim id ``"N.k"`` (chapter ``N``, claim ``k``; ``"N.kb"`` for a part).
    statement
        One line saying what is measured and claimed, e.g. ``"Hessian of A is PSD"``.
    measured
        The measured number (float, int, numpy or torch scalar), or ``None`` when ``seeds`` is
        given. NaN never satisfies a bound.
    ref
        Where the paper states it (``"Thm 3.1"``), or the book's own source for a book check.
    relation, expected, tol
        The bound: ``relation`` in ``"<=", ">=", "==", "rel==", "in"`` (module docstring);
        ``tol`` only with ``"=="`` / ``"rel=="``.
    kind
        ``"paper"`` (default) or ``"book"``.
    paper_says
        Paper claims: the paper's own statement (defaults to ``statement``).
    bound_source
        ``"paper"``, ``"specification"`` or ``"book"``: where the bound comes from.
    expect
        Paper claims: the outcome observed and asserted. ``"reproduced"``: the statistic satisfies
        the bound. ``"not reproduced"``: it does not. ``"partly"``: it does not, but some seeds
        do, or the ``weaker`` statement holds.
    weaker
        ``(relation, expected)`` of a weaker statement that holds (with ``expect="partly"``).
    reason
        Why a claim is partly or not reproduced (shown in the ledger).
    seeds
        Per-seed values of a stochastic measurement; the bound applies to ``statistic`` of them.
    statistic
        ``"worst"`` (default), ``"mean-2se"`` (mean + 2 s.e. for ``"<="``, mean - 2 s.e. for
        ``">="``), ``"mean"`` or ``"median"``.
    control
        Paper claims (required): a :func:`control` that must fail the same bound (and the
        ``weaker`` one).
    anchor
        Label of the place in the chapter where the claim is checked; default ``"claim-N-k"``.
    unit, note
        Unit of the measured number and a free remark for the ledger.
    record, quiet
        Write the record to the ledger file; suppress the printed summary line.
    """
    chapter = _parse_id(cid)
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("statement must be a non-empty string")
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError("ref must name where the paper states the claim (e.g. 'Sec. 2, eq. (3)')")
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if bound_source not in BOUND_SOURCES:
        raise ValueError(f"bound_source must be one of {BOUND_SOURCES}, got {bound_source!r}")
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

    if seeds is not None and measured is not None:
        raise ValueError("give either measured or seeds (per-seed values), not both")
    if seeds is None and measured is None:
        raise ValueError("measured is required (or seeds=[per-seed values])")
    vals = _values(seeds if seeds is not None else measured, "measured")
    if statistic is None:
        statistic = "worst" if len(vals) > 1 else "value"
    elif statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    if statistic == "mean-2se":
        if relation not in ("<=", ">="):
            raise ValueError("statistic 'mean-2se' needs relation '<=' or '>='")
        if len(vals) < 2:
            raise ValueError("statistic 'mean-2se' needs at least 2 seeds")
    m = _statistic(vals, statistic, relation, exp)
    holds = _holds(m, relation, exp, tol)

    weaker_rec: list | None = None
    ctrl_rec: dict | None = None
    if kind == "book":
        for name, val in (("paper_says", paper_says), ("control", control), ("weaker", weaker)):
            if val is not None:
                raise ValueError(f"a book check takes no {name}")
        if expect != "reproduced" or reason:
            raise ValueError("a book check must hold: it takes no expect or reason")
        ok = holds
        outcome = "pass" if ok else "FAIL"
        why = "" if ok else "the book check does not hold"
    else:
        if expect not in OUTCOMES:
            raise ValueError(f"expect must be one of {OUTCOMES}, got {expect!r}")
        if not isinstance(control, Control):
            raise ValueError(
                f"paper claim {cid} needs a negative control: control('description', value) measured "
                "where the claim must not hold (or make it a book check, kind='book')"
            )
        if expect != "reproduced" and not (isinstance(reason, str) and reason.strip()):
            raise ValueError(f"a claim recorded as {expect!r} needs a reason")
        if weaker is not None:
            if expect != "partly":
                raise ValueError("weaker=(relation, expected) goes with expect='partly'")
            if not (isinstance(weaker, (tuple, list)) and len(weaker) == 2 and weaker[0] in ("<=", ">=")):
                raise ValueError("weaker must be ('<=' or '>=', bound)")
            weaker_rec = [weaker[0], _as_number(weaker[1], "weaker bound")]
        c_stat = _statistic(control.values, statistic, relation, exp, mirror=True)
        c_holds = _holds(c_stat, relation, exp, tol)
        if weaker_rec is not None:
            c_holds = c_holds or _holds(c_stat, weaker_rec[0], weaker_rec[1], None)
        ctrl_rec = {
            "description": control.description,
            "measured": c_stat,
            "seeds": list(control.values),
            "holds": bool(c_holds),
        }
        if expect == "reproduced":
            observed_ok = holds
        elif expect == "not reproduced":
            observed_ok = not holds
        else:
            partial = any(_holds(v, relation, exp, tol) for v in vals) if len(vals) > 1 else False
            if weaker_rec is not None:
                partial = partial or _holds(m, weaker_rec[0], weaker_rec[1], None)
            observed_ok = (not holds) and partial
        ok = observed_ok and not c_holds
        outcome = expect if ok else "FAIL"
        if not observed_ok:
            got = "holds" if holds else "does not hold"
            why = f"declared {expect!r}, but the bound {got} for the measurement"
        elif c_holds:
            why = f"the control ({control.description}) does not fail the bound: the check cannot tell"
        else:
            why = ""

    res = ClaimResult(
        id=cid,
        chapter=chapter,
        kind=kind,
        outcome=outcome,
        statement=statement.strip(),
        ref=ref.strip(),
        measured=m,
        relation=relation,
        expected=exp,
        tol=tol,
        bound_source=bound_source,
        scale=_scale.scale(),
        anchor=anchor or _default_anchor(cid),
        passed=bool(ok),
        paper_says=(paper_says or statement).strip() if kind == "paper" else None,
        seeds=list(vals),
        statistic=statistic,
        control=ctrl_rec,
        weaker=weaker_rec,
        reason=reason.strip() if isinstance(reason, str) else "",
        unit=unit,
        note=note,
    )
    _RESULTS[cid] = res
    if record:
        _write(res)
    line = (
        f"[{'claim' if kind == 'paper' else 'check'} {cid}] {outcome.upper() if not ok else outcome}: "
        f"measured {res.measured_text}, expected {res.expected_text}"
    )
    if ctrl_rec is not None:
        line += f"; control {res.control_text} {'holds' if ctrl_rec['holds'] else 'fails'}"
    line += f" — {res.statement}"
    if not ok:
        line += f"  [{why}]"
    if not quiet:
        print(line)
    if not ok:
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


def _count(records: Sequence[Any]) -> dict:
    def get(r: Any, key: str) -> Any:
        return getattr(r, key) if isinstance(r, ClaimResult) else r.get(key)

    paper = [r for r in records if get(r, "kind") == "paper"]
    book = [r for r in records if get(r, "kind") == "book"]
    out = {
        "paper": len(paper),
        "reproduced": sum(get(r, "outcome") == "reproduced" for r in paper),
        "partly": sum(get(r, "outcome") == "partly" for r in paper),
        "not reproduced": sum(get(r, "outcome") == "not reproduced" for r in paper),
        "book": sum(get(r, "outcome") == "pass" for r in book),
        "book_total": len(book),
        "failed": sum(get(r, "outcome") == "FAIL" for r in records),
    }
    text = (
        f"paper claims: {out['reproduced']} reproduced, {out['partly']} partly, "
        f"{out['not reproduced']} not reproduced (of {out['paper']}); "
        f"book checks: {out['book']} pass"
    )
    if out["book"] != out["book_total"]:
        text += f" (of {out['book_total']})"
    if out["failed"]:
        text += f"; {out['failed']} FAILED"
    out["text"] = text
    return out


def summary(chapter: int | None = None) -> dict:
    """Outcome counts of the records checked so far (one chapter, or all).

    Returns a dict with keys ``paper``, ``reproduced``, ``partly``, ``not reproduced``, ``book``,
    ``book_total``, ``failed`` and ``text`` (one line in the ledger's words).
    """
    return _count(results(chapter))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(chapter: int):
    """The chapter's claims as a Markdown table (an IPython display object), for the chapter's end.

    Also glues ``ch<N>_runtime_s`` (seconds since :func:`begin_chapter`) and ``ch<N>_summary``
    (the outcome counts) for the chapter's prose, when running in a notebook.
    """
    from IPython.display import Markdown

    from .provenance import paper_outcome_text

    s = summary(chapter)
    runtime = time.perf_counter() - _CHAPTER_CLOCK.get(chapter, time.perf_counter())
    try:  # glue only inside a notebook kernel
        from myst_nb import glue

        glue(f"ch{chapter}_runtime_s", runtime, display=False)
        glue(f"ch{chapter}_summary", s["text"], display=False)
    except Exception:  # noqa: BLE001 - outside a kernel there is nothing to glue into
        pass
    lines = [
        f"This build ({_scale.scale()} scale): {s['text']}. The same records, with the book's other "
        f"chapters, are in the {{ref}}`claims ledger <ledger-chapter-{chapter}>`.",
        "",
        "| claim | kind | statement | measured | bound (source) | control | outcome | paper scale |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results(chapter):
        link = f"{{ref}}`{r.id} <{r.anchor}>`"
        outcome = r.outcome_text + (f": {r.reason}" if r.reason else "")
        lines.append(
            f"| {link} | {r.kind} | {_cell(r.statement)} | {_cell(r.measured_text)} | "
            f"{_cell(r.expected_text)} ({r.bound_source}) | {_cell(r.control_text)} | {_cell(outcome)} | "
            f"{_cell(paper_outcome_text(chapter, r.id))} |"
        )
    if len(lines) == 4:
        lines.append("| – | | no claim was checked | | | | | |")
    return Markdown("\n".join(lines))


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


_REQUIRED = (
    "id", "kind", "outcome", "statement", "measured", "relation", "expected", "bound_source",
    "seeds", "scale", "anchor",
)


def validate_records(records: Sequence[dict]) -> list[str]:
    """Problems with ledger records: missing keys, failed records, paper claims without a failing
    control. An empty list means the ledger is sound."""
    problems = []
    for r in records:
        cid = r.get("id", "?")
        missing = [k for k in _REQUIRED if k not in r]
        if missing:
            problems.append(f"{cid}: missing keys {missing}")
            continue
        if r["outcome"] == "FAIL":
            problems.append(f"{cid}: FAIL")
        if r["kind"] == "paper":
            c = r.get("control")
            if not c or c.get("holds") is not False:
                problems.append(f"{cid}: paper claim without a failing control")
            if r["outcome"] not in OUTCOMES and r["outcome"] != "FAIL":
                problems.append(f"{cid}: outcome {r['outcome']!r} is not a paper outcome")
            if not r.get("paper_says"):
                problems.append(f"{cid}: paper claim without paper_says")
        elif r["kind"] == "book":
            if r["outcome"] not in ("pass", "FAIL"):
                problems.append(f"{cid}: book check with outcome {r['outcome']!r}")
        else:
            problems.append(f"{cid}: unknown kind {r['kind']!r}")
    return problems
