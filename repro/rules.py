r"""The judging rules: from stored measurements to an outcome, the same everywhere.

A record keeps raw numbers (per-seed values of the measurement, of its negative control and of its
positive control) and the judging parameters (relation, bound, statistic, noise band, setting,
declared outcome). :func:`judge` turns them into an outcome. The chapter (through
:func:`repro.claims.check`), the ledger page and ``python -m repro check`` all call it, so a rule
is written once and a stored record is judged by the current rules whenever it is read.

Statistic
    The one number the bound applies to. ``"worst"``: the largest value for ``"<="``, the
    smallest for ``">="``, the farthest from the bound's centre otherwise. ``"mean-2se"``: the
    mean moved two standard errors towards failing (mean + 2 s.e. for ``"<="``, mean - 2 s.e. for
    ``">="``), for claims about an average. Paper claims use one of these two; book checks may also
    use ``"mean"`` or ``"median"``. A negative control is reduced *mirrored* (its best seed, or
    two standard errors towards holding), so that one unlucky control seed cannot make a check
    look sound.
Margin
    The signed distance of a value from its bound: positive when it holds, negative when it fails
    (``e - m`` for ``"<="``, ``m - e`` for ``">="``, ``tol - |m - e|`` for ``"=="``, and so on).
Noise band
    ``band = max(noise, ROUNDOFF_REL * max(|bound|, |m|))``: ``noise`` is the record's own
    half-width (the cross-machine spread of its statistic measured by the chapter), the second
    term a floor for round-off in the last digits. A quantity whose margin lies within the band is
    *borderline*: it may fall on either side on another machine.
Outcome
    Every borderline quantity (the statistic, a seed, the weaker bound, the negative or the
    positive control) is flipped to both of its sides, and the outcome is computed for every
    combination. One possible outcome: that is the outcome. Several: the record is
    ``"borderline"`` and lists them; a declared outcome among them is never contradicted. So a
    statistic moving inside its band cannot fail a build, and outside the band the observed
    outcome is asserted.

The outcome of one combination, for a paper claim
    The statistic holds: *reproduced*. Else, when a seed holds (several seeds) or the ``weaker``
    bound holds: *partly*; else *not reproduced*. In the paper's setting "partly" and "not
    reproduced" also need a positive control (the same test where the effect is known to be
    present) that holds, or the outcome is *inconclusive*: the test did not show it can see the
    effect. A negative control that holds makes the check unable to tell: *inconclusive* when
    that is only possible inside the band, a failure of the check otherwise. In the book's
    setting the words are *holds*, *partly holds* and *does not hold*.
A book check
    *pass* when it holds, *FAIL* when it does not, *borderline* inside the band.
"""

from __future__ import annotations

import itertools
import math
import statistics as _stats
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BOOK_WORDS",
    "PAPER_STATISTICS",
    "PAPER_WORDS",
    "RELATIONS",
    "ROUNDOFF_REL",
    "STATISTICS",
    "Verdict",
    "band",
    "holds",
    "judge",
    "margin",
    "reduce",
]

RELATIONS = ("<=", ">=", "==", "rel==", "in")
STATISTICS = ("worst", "mean-2se", "mean", "median", "value")
PAPER_STATISTICS = ("worst", "mean-2se", "value")
#: relative round-off floor of every band: float64 sums taken in another order (another BLAS
#: branch, another CPU) differ far below this; trained models need their own measured ``noise``.
ROUNDOFF_REL = 1e-9

# canonical levels -> words, per setting
PAPER_WORDS = {"ok": "reproduced", "partial": "partly", "fail": "not reproduced", "inconclusive": "inconclusive"}
BOOK_WORDS = {"ok": "holds", "partial": "partly holds", "fail": "does not hold", "inconclusive": "inconclusive"}
_LEVEL_OF_WORD = {w: lvl for words in (PAPER_WORDS, BOOK_WORDS) for lvl, w in words.items()}


def level_of(word: str) -> str:
    """The canonical level (``ok``, ``partial``, ``fail``, ``inconclusive``) of an outcome word."""
    try:
        return _LEVEL_OF_WORD[word]
    except KeyError:
        raise ValueError(f"unknown outcome {word!r}; one of {sorted(_LEVEL_OF_WORD)}") from None


def margin(value: float, relation: str, expected: Any, tol: float | None = None) -> float:
    """Signed distance of ``value`` from its bound: > 0 holds, < 0 fails, NaN for NaN."""
    if isinstance(value, float) and math.isnan(value):
        return math.nan
    if relation == "<=":
        return float(expected - value)
    if relation == ">=":
        return float(value - expected)
    if relation == "==":
        return float(tol - abs(value - expected))
    if relation == "rel==":
        return float(tol * abs(expected) - abs(value - expected))
    if relation == "in":
        lo, hi = expected
        return float(min(value - lo, hi - value))
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


def holds(value: float, relation: str, expected: Any, tol: float | None = None) -> bool:
    """Whether ``value`` satisfies the bound exactly (no band). NaN never holds."""
    m = margin(value, relation, expected, tol)
    return not math.isnan(m) and m >= 0


def _centre(relation: str, expected: Any) -> float:
    return (expected[0] + expected[1]) / 2 if relation == "in" else expected


def reduce(values: Sequence[float], statistic: str, relation: str, expected: Any, *, mirror: bool = False) -> float:
    """Reduce per-seed values to the number the bound applies to (module docstring)."""
    vals = list(values)
    if not vals:
        raise ValueError("no values to reduce")
    if len(vals) == 1:
        return float(vals[0])
    if any(isinstance(v, float) and math.isnan(v) for v in vals):
        return math.nan
    if statistic == "mean":
        return _stats.fmean(vals)
    if statistic == "median":
        return float(_stats.median(vals))
    if statistic == "mean-2se":
        se = _stats.stdev(vals) / math.sqrt(len(vals))
        sign = (1 if relation == "<=" else -1) * (-1 if mirror else 1)
        return _stats.fmean(vals) + sign * 2 * se
    if relation == "<=":
        return float(min(vals) if mirror else max(vals))
    if relation == ">=":
        return float(max(vals) if mirror else min(vals))
    c = _centre(relation, expected)
    return float((min if mirror else max)(vals, key=lambda v: abs(v - c)))


def band(noise: float | None, expected: Any, value: float) -> float:
    """Half-width of the noise band around a bound (module docstring)."""
    scale = max(abs(e) for e in expected) if isinstance(expected, (tuple, list)) else abs(expected)
    if not math.isnan(value) and not math.isinf(value):
        scale = max(scale, abs(value))
    return max(float(noise or 0.0), ROUNDOFF_REL * scale)


def _sides(m: float, b: float, noise: float | None = None) -> tuple[bool, ...]:
    """The sides (holds?) a quantity with margin ``m`` and band ``b`` can take.

    A value exactly on its bound holds when the record declares no noise (integer counts and
    exact identities land there); any other value within the band may fall on either side."""
    if math.isnan(m):
        return (False,)
    if m == 0 and not noise:
        return (True,)
    if abs(m) <= b:
        return (True, False)
    return (m > 0,)


@dataclass
class Verdict:
    """What :func:`judge` finds for one record."""

    measured: float | None
    outcome: str  # the word shown: reproduced / ... / borderline / not tested / pass / FAIL
    possible: list[str]  # outcome words reachable by flipping borderline quantities
    ok: bool  # consistent with the declaration (and, for a book check, not failed)
    why: str = ""
    band: float = 0.0
    margin: float | None = None
    control: dict | None = None  # {"measured", "margin", "state": fails|holds|borderline}
    positive: dict | None = None
    details: dict = field(default_factory=dict)

    @property
    def borderline(self) -> bool:
        return self.outcome == "borderline"


def _side_state(sides: tuple[bool, ...]) -> str:
    return "borderline" if len(sides) == 2 else ("holds" if sides[0] else "fails")


def judge(rec: Mapping[str, Any]) -> Verdict:
    """Judge one stored record (a dict in the record schema) by the current rules."""
    kind = rec["kind"]
    if rec.get("outcome") == "not tested" or rec.get("untested"):
        return Verdict(None, "not tested", ["not tested"], True)
    rel, exp, tol = rec["relation"], rec["expected"], rec.get("tol")
    if rel == "in":
        exp = tuple(exp)
    stat = rec.get("statistic") or "worst"
    vals = list(rec["seeds"])
    m = reduce(vals, stat, rel, exp)
    b = band(rec.get("noise"), exp, m)
    mg = margin(m, rel, exp, tol)
    main = _sides(mg, b, rec.get("noise"))
    if kind == "book":
        if len(main) == 2:
            return Verdict(m, "borderline", ["pass", "FAIL"], True, band=b, margin=mg)
        ok = main[0]
        return Verdict(m, "pass" if ok else "FAIL", ["pass" if ok else "FAIL"], ok,
                       "" if ok else "the book check does not hold", band=b, margin=mg)

    words = PAPER_WORDS if rec.get("setting", "paper") == "paper" else BOOK_WORDS
    need_power = rec.get("setting", "paper") == "paper"
    # seeds that could hold (for "partly"): any seed clearly holding, or borderline
    seed_sides: tuple[bool, ...] = (False,)
    if len(vals) > 1:
        states = [_sides(margin(v, rel, exp, tol), band(rec.get("noise"), exp, v), rec.get("noise")) for v in vals]
        if any(s == (True,) for s in states):
            seed_sides = (True,)
        elif any(len(s) == 2 for s in states):
            seed_sides = (True, False)
    weaker = rec.get("weaker")
    weak_sides: tuple[bool, ...] = (False,)
    if weaker:
        weak_sides = _sides(margin(m, weaker[0], weaker[1]), band(rec.get("noise"), weaker[1], m), rec.get("noise"))

    ctrl = rec.get("control")
    c_info = None
    c_sides: tuple[bool, ...] = (False,)
    if ctrl:
        cm = reduce(ctrl["seeds"], stat, rel, exp, mirror=True)
        cmg = margin(cm, rel, exp, tol)
        c_sides = _sides(cmg, band(rec.get("noise"), exp, cm), rec.get("noise"))
        if weaker:
            wsides = _sides(margin(cm, weaker[0], weaker[1]), band(rec.get("noise"), weaker[1], cm), rec.get("noise"))
            c_sides = tuple(sorted({a or w for a in c_sides for w in wsides}, reverse=True))
        c_info = {"measured": cm, "margin": cmg, "state": _side_state(c_sides)}
    pos = rec.get("positive")
    p_info = None
    p_sides: tuple[bool, ...] = (False,)
    if pos:
        pm = reduce(pos["seeds"], stat, rel, exp)
        pmg = margin(pm, rel, exp, tol)
        p_sides = _sides(pmg, band(rec.get("noise"), exp, pm), rec.get("noise"))
        p_info = {"measured": pm, "margin": pmg, "state": _side_state(p_sides)}

    possible: list[str] = []
    for h, s, w, c, p in itertools.product(main, seed_sides, weak_sides, c_sides, p_sides):
        if c:
            level = "inconclusive"
        elif h:
            level = "ok"
        else:
            level = "partial" if (s or w) else "fail"
            if need_power and not p:
                level = "inconclusive"
        word = words[level]
        if word not in possible:
            possible.append(word)

    declared = rec.get("expect")
    if c_sides == (True,):
        why = f"the negative control ({ctrl['description']}) does not fail the bound: the check cannot tell"
        return Verdict(m, "FAIL", possible, False, why, b, mg, c_info, p_info)
    outcome = possible[0] if len(possible) == 1 else "borderline"
    ok, why = True, ""
    if declared is not None:
        dword = words[level_of(declared)]
        if dword not in possible:
            ok = False
            why = f"declared {dword!r}, observed {' or '.join(repr(p) for p in possible)}"
    if not ok:
        outcome = "FAIL"
    return Verdict(m, outcome, possible, ok, why, b, mg, c_info, p_info)
