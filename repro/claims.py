r"""Claims: a reproduced statement is a checked number, with controls and a noise band.

A chapter states each claim with :func:`check` (or :func:`not_tested`). Kinds of record:

*paper claim* (``kind="paper"``)
    A statement the paper makes (or its code shows), in the paper's words (``paper_says``). It
    says where it was tested (``setting``):

    ``setting="paper"``
        the paper's own data, model, sizes and protocol as far as the book reaches them, each
        remaining difference listed in ``deviations``. Only such a record is a verdict on the
        paper: *reproduced*, *partly*, *not reproduced*, or *inconclusive* when a negative outcome
        has no positive control (``positive=``) showing that the test can see the effect.
    ``setting="book"``
        substitute data, a toy task, a stricter or other reading, another paper's result. The
        record says whether the statement *holds*, *partly holds* or *does not hold* there, and is
        shown apart ("beyond the papers' settings"); it is never a verdict on the paper.

    Every paper claim carries a **negative control**: the same statistic, over the same number of
    seeds, by the same code path, where the claim must not hold. It must fail the bound.
*not tested in the paper's setting* (:func:`not_tested`)
    A paper statement the book cannot test in the paper's setting (data not available offline, a
    model too large, text not readable), with the reason and what the paper reports.
*book check* (``kind="book"``)
    The book's own identity, derivation or sanity test; it says what would make it fail
    (``fails_if``). *pass* or *FAIL*.

The outcome comes from :func:`repro.rules.judge` (the rules are written there once): the chapter
declares the outcome it observed (``expect=``), :func:`check` asserts it, and a statistic within
its noise band (``noise=``, the cross-machine spread of the statistic) of the bound is
*borderline*, compatible with both neighbouring outcomes, so it can never fail a build by moving
inside the band.

Records keep the raw per-seed numbers and are written to ``$BOOK_CLAIMS_DIR/chapter-<N>.json``
(default ``<repository>/_build/claims``) in the schema ``repro/record.schema.json``; the ledger
page and ``python -m repro check`` judge them again by the current rules when they read them.

Claim ids are ``"N.k"`` (``"N.kb"`` for a part); the chapter marks where a claim is checked with a
MyST target ``(claim-N-k)=``. An id names one claim per chapter run: checking another statement
under an id already used raises (running the same check again, as a reader re-executing a cell
does, replaces its record).

Relations: ``"<="``, ``">="`` (the bound is ``expected``), ``"=="`` (``|m - e| <= tol``),
``"rel=="`` (``|m - e| <= tol |e|``), ``"in"`` (``expected=(lo, hi)``).

Example
-------
>>> from repro.claims import check, control
>>> r = check("9.1", "the loss falls below chance", seeds=[0.31, 0.29, 0.33], ref="Sec. 4",
...           relation="<=", expected=0.5, setting="paper",
...           control=control("shuffled labels", [0.69, 0.70, 0.69]), record=False, quiet=True)
>>> r.outcome
'reproduced'
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import rules
from . import scale as _scale
from .records import claims_dir, environment, load_ledger, validate_schema, write_record

__all__ = [
    "BOUND_SOURCES",
    "KINDS",
    "SETTINGS",
    "ClaimFailed",
    "ClaimResult",
    "Control",
    "begin_chapter",
    "check",
    "claims_dir",
    "control",
    "fmt",
    "load_ledger",
    "not_tested",
    "results",
    "summary",
    "table",
]

_ID = re.compile(r"^(\d+)\.(\d+)([a-z]?)$")
RELATIONS = rules.RELATIONS
KINDS = ("paper", "book")
SETTINGS = ("paper", "book")
BOUND_SOURCES = ("paper", "specification", "book")
_CHAPTER_CLOCK: dict[int, float] = {}


class ClaimFailed(AssertionError):
    """Raised by :func:`check` when a record does not come out as the chapter declared."""


@dataclass(frozen=True)
class Control:
    """A control: the same measurement on another setting. Build it with :func:`control`."""

    description: str
    values: tuple[float, ...]


def control(description: str, measured: Any) -> Control:
    """A control for :func:`check` (negative: ``control=``; positive: ``positive=``).

    ``measured`` is a value or per-seed values; the claim's statistic is applied to them, so give
    as many seeds as the claim has.
    """
    if not isinstance(description, str) or not description.strip():
        raise ValueError("a control needs a non-empty description")
    return Control(description.strip(), _values(measured, "control measured"))


def fmt(x: Any, digits: int = 4) -> str:
    """A number as short text: ``digits`` significant digits, scientific outside [1e-3, 1e4)."""
    if isinstance(x, (bool, int)):
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


_STAT_WORDS = {"worst": "worst", "mean-2se": "mean∓2se", "mean": "mean", "median": "median"}


@dataclass
class ClaimResult:
    """One record with its verdict, for display. ``record`` is the stored dict."""

    record: dict
    verdict: rules.Verdict = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["record"][name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def from_record(cls, rec: dict) -> ClaimResult:
        return cls(rec, rules.judge(rec))

    @property
    def outcome(self) -> str:
        return self.verdict.outcome

    @property
    def measured(self) -> float | None:
        return self.verdict.measured

    @property
    def passed(self) -> bool:
        return self.verdict.ok

    @property
    def group(self) -> str:
        """Where the ledger shows the record: ``paper``, ``beyond`` (book setting),
        ``untested`` or ``book``."""
        if self.record["kind"] == "book":
            return "book"
        if self.verdict.outcome == "not tested":
            return "untested"
        return "paper" if self.record.get("setting", "paper") == "paper" else "beyond"

    def _digits(self, value: float | None = None) -> int:
        if self.record.get("relation") not in ("<=", ">="):
            return 4
        m = self.measured if value is None else value
        e = self.record["expected"]
        if not isinstance(m, (int, float)) or not isinstance(e, (int, float)):
            return 4
        for p in range(4, 13):
            if f"{m:.{p}g}" != f"{e:.{p}g}":
                return p
        return 12

    @property
    def expected_text(self) -> str:
        if self.verdict.outcome == "not tested":
            return "–"
        r = self.record
        text = _expected_text(r["relation"], r["expected"], r.get("tol"), r.get("unit", ""), self._digits())
        if self.verdict.band and r.get("noise"):
            text += f" (band ±{fmt(self.verdict.band, 2)})"
        return text

    @property
    def measured_text(self) -> str:
        if self.verdict.outcome == "not tested":
            return "not measured"
        r = self.record
        u = f" {r['unit']}" if r.get("unit") else ""
        text = fmt(self.measured, self._digits()) + u
        seeds = r["seeds"]
        if len(seeds) > 1:
            stat = _STAT_WORDS.get(r.get("statistic", "worst"), r.get("statistic"))
            text += f" ({stat} of {len(seeds)} seeds; range {fmt(min(seeds))}–{fmt(max(seeds))})"
        return text

    @property
    def control_text(self) -> str:
        c = self.verdict.control
        if not c:
            return "–"
        text = f"{fmt(c['measured'], self._digits(c['measured']))} ({self.record['control']['description']})"
        if c["state"] != "fails":
            text += f" [{c['state']}]"
        p = self.verdict.positive
        if p:
            text += (f"; positive: {fmt(p['measured'], self._digits(p['measured']))} "
                     f"({self.record['positive']['description']}) [{p['state']}]")
        return text

    @property
    def outcome_text(self) -> str:
        v = self.verdict
        if v.outcome == "borderline":
            return "borderline (" + " or ".join(v.possible) + ")"
        if v.outcome == "FAIL":
            return "**FAIL**"
        return v.outcome

    def _ipython_display_(self) -> None:
        """Show nothing in notebooks: :func:`check` has already printed the verdict line."""


_RESULTS: dict[str, ClaimResult] = {}


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
    return float(x)


def _values(x: Any, name: str) -> tuple[float, ...]:
    """A scalar or a sequence (list, tuple, 1-D array or tensor) as a tuple of floats."""
    if hasattr(x, "tolist") and callable(x.tolist) and not isinstance(x, (int, float)):
        x = x.tolist()
    if isinstance(x, Sequence) and not isinstance(x, str):
        vals = tuple(_as_number(v, name) for v in x)
        if not vals:
            raise ValueError(f"{name}: an empty list of seeds")
        return vals
    return (_as_number(x, name),)


def begin_chapter(chapter: int) -> None:
    """Start a fresh record for ``chapter``: forget its earlier results (in memory and on disk).

    Call once at the top of a chapter so that removed claims do not linger. It also starts the
    chapter's clock (see :func:`table`).
    """
    if isinstance(chapter, bool) or not isinstance(chapter, int) or chapter < 1:
        raise ValueError(f"chapter must be a positive int, got {chapter!r}")
    for key in [k for k, r in _RESULTS.items() if r.record["chapter"] == chapter]:
        del _RESULTS[key]
    _CHAPTER_CLOCK[chapter] = time.perf_counter()
    p = claims_dir() / f"chapter-{chapter}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({
        "schema": 2, "chapter": chapter, "scale": _scale.scale(), "started": time.time(),
        "environment": environment(), "claims": {},
    }))


def _text(value: Any, name: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise ValueError(f"{name} must be a non-empty string")
    return value.strip()


def _bound(relation: str, expected: Any, tol: Any) -> tuple[Any, float | None]:
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    if relation == "in":
        if not (isinstance(expected, (tuple, list)) and len(expected) == 2):
            raise ValueError("relation 'in' needs expected=(lo, hi)")
        lo, hi = (_as_number(e, "expected") for e in expected)
        if lo > hi:
            raise ValueError(f"expected interval is empty: lo={lo} > hi={hi}")
        exp: Any = [lo, hi]
    else:
        exp = _as_number(expected, "expected")
        if math.isnan(exp):
            raise ValueError("expected must not be NaN")
    if relation in ("==", "rel=="):
        if tol is None:
            raise ValueError(f"relation {relation!r} needs a tolerance tol")
        tol = _as_number(tol, "tol")
        if tol < 0 or math.isnan(tol):
            raise ValueError(f"tol must be >= 0, got {tol}")
    elif tol is not None:
        raise ValueError(f"relation {relation!r} takes its bound from expected; tol must be None")
    return exp, tol


def _emit(res: ClaimResult, record: bool, quiet: bool) -> ClaimResult:
    rec, v = res.record, res.verdict
    cid = rec["id"]
    prev = _RESULTS.get(cid)
    if record and prev is not None and (prev.record["statement"], prev.record["ref"]) != (rec["statement"], rec["ref"]):
        # the same check run again (a reader re-executing a cell) replaces its record; another
        # claim under an id already used is an error
        raise ValueError(f"claim {cid} was already checked in this chapter run ({prev.record['statement']!r}): "
                         "ids are unique")
    validate_schema(rec)
    if record:
        _RESULTS[cid] = res
        write_record(rec)
    label = {"book": "check", "paper": "claim", "beyond": "claim, book's setting", "untested": "claim"}[res.group]
    if v.outcome == "not tested":
        line = f"[{label} {cid}] not tested in the paper's setting: {rec['reason']} — {rec['statement']}"
    else:
        line = (f"[{label} {cid}] {res.outcome_text.replace('**', '')}: measured {res.measured_text}, "
                f"expected {res.expected_text}")
        if v.control is not None:
            line += f"; control {res.control_text}"
        line += f" — {rec['statement']}"
        if not v.ok:
            line += f"  [{v.why}]"
    if not quiet:
        print(line)
    if not v.ok:
        raise ClaimFailed(line)
    return res


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
    setting: str | None = None,
    deviations: Sequence[str] = (),
    paper_says: str | None = None,
    bound_source: str = "paper",
    expect: str = "reproduced",
    weaker: tuple[str, Any, str] | None = None,
    reason: str = "",
    seeds: Any = None,
    statistic: str | None = None,
    control: Control | None = None,
    positive: Control | None = None,
    noise: float | None = None,
    noise_source: str = "",
    fails_if: str = "",
    params: dict | None = None,
    anchor: str | None = None,
    unit: str = "",
    note: str = "",
    record: bool = True,
    quiet: bool = False,
) -> ClaimResult:
    r"""Check one record, write it, raise :class:`ClaimFailed` if it comes out wrong.

    Parameters
    ----------
    cid, statement, ref
        Claim id ``"N.k"``; one line saying what is measured; where the paper states it (or the
        book's own source for a book check).
    measured, seeds
        The measured number, or per-seed values (``seeds=[...]``); NaN never holds.
    relation, expected, tol
        The bound (module docstring).
    kind
        ``"paper"`` (default) or ``"book"``.
    setting
        Paper claims (required): ``"paper"`` (the paper's setting; list what still differs in
        ``deviations``) or ``"book"`` (the book's setting: substitute data, a toy task, a
        stricter reading, another paper's result; ``deviations`` says which).
    paper_says, bound_source
        The paper's own words (paper claims); where the bound comes from: ``"paper"``,
        ``"specification"`` or ``"book"`` (a bound set after seeing data is the book's).
    expect
        The declared outcome, asserted: ``"reproduced"`` / ``"partly"`` / ``"not reproduced"`` /
        ``"inconclusive"`` (the book-setting words ``"holds"`` / ``"partly holds"`` / ``"does not
        hold"`` are accepted as synonyms). A borderline measurement never contradicts it.
    weaker
        ``(relation, bound, source)``: a weaker statement that the paper or the specification
        makes (``source`` is ``"paper"`` or ``"specification"``; a weaker bound chosen by the book
        is a moved bound, never allowed).
    reason
        Why a claim is not fully reproduced; required then.
    statistic
        ``"worst"`` (default over seeds) or ``"mean-2se"`` (claims about an average); book
        checks may also use ``"mean"``, ``"median"``.
    control, positive
        The negative control (paper claims, required: must fail the bound) and the positive
        control (the same test where the effect is known to be present; needed for a negative
        outcome in the paper's setting). Both over the same number of seeds as the claim.
    noise, noise_source
        Half-width of the noise band of the statistic (its measured cross-machine spread) and
        how it was measured.
    fails_if
        Book checks (required): what would make the check fail.
    params
        Settings of the measurement worth keeping in the record (sizes, epochs, ...).
    anchor, unit, note, record, quiet
        Target label in the chapter (default ``claim-N-k``); unit; a free remark; write the record;
        suppress the printed line.
    """
    chapter = _parse_id(cid)
    statement = _text(statement, "statement")
    ref = _text(ref, "ref (where the paper states the claim, e.g. 'Sec. 2, eq. (3)')")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if bound_source not in BOUND_SOURCES:
        raise ValueError(f"bound_source must be one of {BOUND_SOURCES}, got {bound_source!r}")
    exp, tol = _bound(relation, expected, tol)
    if seeds is not None and measured is not None:
        raise ValueError("give either measured or seeds (per-seed values), not both")
    if seeds is None and measured is None:
        raise ValueError("measured is required (or seeds=[per-seed values])")
    vals = _values(seeds if seeds is not None else measured, "measured")
    allowed = rules.STATISTICS if kind == "book" else rules.PAPER_STATISTICS
    if statistic is None:
        statistic = "worst" if len(vals) > 1 else "value"
    elif statistic not in allowed:
        raise ValueError(f"statistic of a {kind} record must be one of {allowed}, got {statistic!r}")
    if statistic == "mean-2se":
        if relation not in ("<=", ">="):
            raise ValueError("statistic 'mean-2se' needs relation '<=' or '>='")
        if len(vals) < 2:
            raise ValueError("statistic 'mean-2se' needs at least 2 seeds")
    if noise is not None:
        noise = _as_number(noise, "noise")
        if not (noise >= 0 and math.isfinite(noise)):
            raise ValueError(f"noise must be a finite number >= 0, got {noise}")
    rec: dict[str, Any] = {
        "id": cid, "chapter": chapter, "kind": kind, "statement": statement, "ref": ref,
        "relation": relation, "expected": exp, "tol": tol, "bound_source": bound_source,
        "statistic": statistic, "seeds": list(vals), "noise": noise or 0.0,
        "noise_source": _text(noise_source, "noise_source", required=False),
        "scale": _scale.scale(), "anchor": anchor or _default_anchor(cid), "unit": unit, "note": note,
        "params": dict(params or {}), "time": time.time(),
    }
    if kind == "book":
        for name, val in (("paper_says", paper_says), ("control", control), ("weaker", weaker),
                          ("positive", positive), ("setting", setting)):
            if val is not None:
                raise ValueError(f"a book check takes no {name}")
        if expect != "reproduced" or reason or deviations:
            raise ValueError("a book check must hold: it takes no expect, reason or deviations")
        rec["fails_if"] = _text(fails_if, "fails_if (what would make this book check fail)")
    else:
        if fails_if:
            raise ValueError("fails_if is for book checks; a paper claim has its negative control")
        if setting not in SETTINGS:
            raise ValueError(f"paper claim {cid}: setting must be 'paper' or 'book', got {setting!r}")
        level = rules.level_of(expect)
        if not isinstance(control, Control):
            raise ValueError(
                f"paper claim {cid} needs a negative control: control('description', values) measured "
                "where the claim must not hold (or make it a book check, kind='book')")
        for name, c in (("control", control), ("positive", positive)):
            if c is not None and len(c.values) != len(vals):
                raise ValueError(
                    f"claim {cid}: the {name} has {len(c.values)} value(s) and the claim {len(vals)}: "
                    "a control is the same statistic over the same number of seeds")
        if positive is not None and not isinstance(positive, Control):
            raise ValueError("positive must be a control(...)")
        if level != "ok" and not _text(reason, "reason", required=False):
            raise ValueError(f"a claim recorded as {expect!r} needs a reason")
        wk = None
        if weaker is not None:
            if not (isinstance(weaker, (tuple, list)) and len(weaker) == 3 and weaker[0] in ("<=", ">=")):
                raise ValueError("weaker must be ('<=' or '>=', bound, source)")
            if weaker[2] not in ("paper", "specification"):
                raise ValueError("a weaker bound comes from the paper or the specification, never the book")
            wk = [weaker[0], _as_number(weaker[1], "weaker bound"), weaker[2]]
        devs = [_text(d, "deviation") for d in deviations]
        if setting == "book" and not devs:
            raise ValueError(f"claim {cid} in the book's setting: say in deviations how it differs from the paper's")
        rec.update({
            "setting": setting, "deviations": devs,
            "paper_says": _text(paper_says or statement, "paper_says"),
            "expect": rules.PAPER_WORDS[level], "reason": _text(reason, "reason", required=False),
            "weaker": wk,
            "control": {"description": control.description, "seeds": list(control.values)},
            "positive": None if positive is None else {"description": positive.description,
                                                       "seeds": list(positive.values)},
        })
    res = ClaimResult.from_record(rec)
    rec["measured"] = res.measured
    rec["outcome"] = res.outcome
    return _emit(res, record, quiet)


def not_tested(
    cid: str,
    statement: str,
    *,
    ref: str,
    reason: str,
    paper_reports: str,
    paper_says: str | None = None,
    how: str = "",
    anchor: str | None = None,
    note: str = "",
    record: bool = True,
    quiet: bool = False,
) -> ClaimResult:
    """Record a paper statement the book cannot test in the paper's setting.

    ``reason`` says why (data not available offline, model too large, ...); ``paper_reports`` what
    the paper reports (its numbers); ``how`` how a reader can test it where the obstacle is gone
    (an environment variable pointing at the data, ...).
    """
    chapter = _parse_id(cid)
    rec = {
        "id": cid, "chapter": chapter, "kind": "paper", "setting": "paper", "untested": True,
        "statement": _text(statement, "statement"), "ref": _text(ref, "ref"),
        "paper_says": _text(paper_says or statement, "paper_says"),
        "reason": _text(reason, "reason"), "paper_reports": _text(paper_reports, "paper_reports"),
        "how": _text(how, "how", required=False), "scale": _scale.scale(),
        "anchor": anchor or _default_anchor(cid), "note": note, "time": time.time(),
        "outcome": "not tested", "seeds": [], "deviations": [],
    }
    return _emit(ClaimResult.from_record(rec), record, quiet)


def results(chapter: int | None = None) -> list[ClaimResult]:
    """Results checked in this process, optionally for one chapter, sorted by id."""
    rs = [r for r in _RESULTS.values() if chapter is None or r.record["chapter"] == chapter]
    return sorted(rs, key=lambda r: sort_key(r.record["id"]))


def sort_key(cid: str) -> tuple:
    m = _ID.match(cid)
    return (int(m.group(1)), int(m.group(2)), m.group(3)) if m else (0, 0, cid)


def counts(items: Sequence[ClaimResult]) -> dict:
    """Outcome counts in the ledger's words, the four groups kept apart."""
    out: dict[str, Any] = {}
    for group in ("paper", "beyond", "untested", "book"):
        out[group] = {}
        for r in items:
            if r.group == group:
                out[group][r.outcome] = out[group].get(r.outcome, 0) + 1
    out["failed"] = sum(r.outcome == "FAIL" for r in items)

    def part(group: str, order: Sequence[str]) -> str:
        c = out[group]
        words = [f"{c[w]} {w}" for w in order if c.get(w)]
        words += [f"{n} {w}" for w, n in c.items() if w not in order]
        return ", ".join(words) if words else "none"

    text = (
        "verdicts on the papers (papers' settings): "
        + part("paper", ("reproduced", "partly", "not reproduced", "inconclusive", "borderline"))
        + "; not tested in the papers' settings: " + str(sum(out["untested"].values()))
        + "; beyond the papers' settings: "
        + part("beyond", ("holds", "partly holds", "does not hold", "inconclusive", "borderline"))
        + "; book checks: " + part("book", ("pass", "borderline"))
    )
    if out["failed"]:
        text += f"; {out['failed']} FAILED"
    out["text"] = text
    return out


def summary(chapter: int | None = None) -> dict:
    """Outcome counts of the records checked so far (one chapter, or all), with ``text``."""
    return counts(results(chapter))


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(chapter: int):
    """The chapter's claims as Markdown tables (an IPython display object), for the chapter's end.

    Four groups, as in the ledger: verdicts in the paper's setting, statements not tested in the
    paper's setting, findings in the book's setting, book checks. Also glues
    ``ch<N>_runtime_s`` and ``ch<N>_summary`` for the chapter's prose.
    """
    from IPython.display import Markdown

    from .provenance import paper_outcome_text

    rs = results(chapter)
    s = counts(rs)
    runtime = time.perf_counter() - _CHAPTER_CLOCK.get(chapter, time.perf_counter())
    try:  # glue only inside a notebook kernel
        from myst_nb import glue

        glue(f"ch{chapter}_runtime_s", runtime, display=False)
        glue(f"ch{chapter}_summary", s["text"], display=False)
    except Exception:  # noqa: BLE001, S110 - outside a kernel there is nothing to glue into
        pass
    lines = [
        (f"This build ({_scale.scale()} scale): {s['text']}. The same records, with the book's other "
        f"chapters, are in the {{ref}}`claims ledger <ledger-chapter-{chapter}>`."),
    ]
    titles = {
        "paper": "Verdicts on the paper, in the paper's setting",
        "untested": "Not tested in the paper's setting",
        "beyond": "Beyond the paper's setting (the book's setting; not a verdict on the paper)",
        "book": "Book checks",
    }
    for group, title in titles.items():
        grp = [r for r in rs if r.group == group]
        if not grp:
            continue
        lines += ["", f"**{title}**", ""]
        if group == "untested":
            lines += ["| claim | statement (the paper says) | the paper reports | why not tested here |", "|---|---|---|---|"]
            for r in grp:
                lines.append(f"| {{ref}}`{r.id} <{r.anchor}>` | {_cell(r.paper_says)} | "
                             f"{_cell(r.paper_reports)} | {_cell(r.reason)} |")
            continue
        lines += ["| claim | statement | measured | bound (source) | control | outcome | paper scale |",
                  "|---|---|---|---|---|---|---|"]
        for r in grp:
            outcome = r.outcome_text + (f": {r.record.get('reason')}" if r.record.get("reason") else "")
            lines.append(
                f"| {{ref}}`{r.id} <{r.anchor}>` | {_cell(r.statement)} | {_cell(r.measured_text)} | "
                f"{_cell(r.expected_text)} ({r.bound_source}) | {_cell(r.control_text)} | {_cell(outcome)} | "
                f"{_cell(paper_outcome_text(chapter, r.id))} |")
    if not rs:
        lines += ["", "No claim was checked."]
    return Markdown("\n".join(lines))
