"""lib.claims: paper claims with controls, outcomes and seeds; book checks; the ledger files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lib import claims, provenance, scale
from lib.claims import ClaimFailed, check, control

ROOT = Path(__file__).resolve().parents[1]


def test_book_checks_pass_and_fail():
    claims.begin_chapter(9)
    assert check("9.1", "bound", 1e-13, ref="eq. 1", relation="<=", expected=1e-12, kind="book").passed
    assert check("9.2", "lower", 3, ref="eq. 2", relation=">=", expected=3, kind="book").outcome == "pass"
    assert check("9.3", "value", 0.871, ref="T1", relation="==", expected=0.872, tol=0.01, kind="book").passed
    assert check("9.4", "rel", 105.0, ref="F2", relation="rel==", expected=100.0, tol=0.05, kind="book").passed
    assert check("9.5b", "in", -0.5, ref="Thm 1", relation="in", expected=(-0.75, -0.35), kind="book").passed
    with pytest.raises(ClaimFailed, match="FAIL"):
        check("9.6", "too big", 2.0, ref="eq. 3", relation="<=", expected=1.0, kind="book")
    with pytest.raises(ClaimFailed):
        check("9.7", "nan never passes", math.nan, ref="eq. 3", relation="<=", expected=1.0, kind="book")
    data = json.loads((claims.claims_dir() / "chapter-9.json").read_text())
    assert set(data["claims"]) == {"9.1", "9.2", "9.3", "9.4", "9.5b", "9.6", "9.7"}
    assert data["claims"]["9.6"]["outcome"] == "FAIL" and data["claims"]["9.1"]["outcome"] == "pass"
    assert data["claims"]["9.5b"]["anchor"] == "claim-9-5"
    # numpy / torch scalars are accepted
    check("9.8", "np", np.float64(0.5), ref="x", relation="<=", expected=1, kind="book")
    check("9.9", "torch", torch.tensor(0.5), ref="x", relation="<=", expected=1, kind="book")
    md = claims.table(9).data
    assert "{ref}`9.3 <claim-9-3>`" in md and "**FAIL**" in md and "0.872 ± 0.01" in md
    assert "ledger-chapter-9" in md


def test_paper_claim_outcomes_and_controls():
    claims.begin_chapter(7)
    r = check("7.1", "loss below chance", 0.3, ref="Sec. 4", relation="<=", expected=0.5,
              control=control("shuffled labels", 0.69), paper_says="the model learns")
    assert (r.outcome, r.kind, r.control["holds"], r.paper_says) == ("reproduced", "paper", False, "the model learns")
    # a control that satisfies the bound makes the check uninformative: it fails
    with pytest.raises(ClaimFailed, match="control"):
        check("7.2", "x", 0.3, ref="r", relation="<=", expected=0.5, control=control("c", 0.4))
    # declared not reproduced: asserted, and a change of behaviour fails
    r = check("7.3", "x", 0.7, ref="r", relation="<=", expected=0.5, control=control("c", 0.9),
              expect="not reproduced", reason="gap stays")
    assert r.outcome == "not reproduced" and r.reason == "gap stays"
    with pytest.raises(ClaimFailed, match="declared 'not reproduced'"):
        check("7.4", "x", 0.3, ref="r", relation="<=", expected=0.5, control=control("c", 0.9),
              expect="not reproduced", reason="r")
    with pytest.raises(ClaimFailed, match="declared 'reproduced'"):
        check("7.5", "x", 0.7, ref="r", relation="<=", expected=0.5, control=control("c", 0.9))
    # partly: through a weaker statement (the control must fail it too) or through mixed seeds
    r = check("7.6", "enrichment", 1.5, ref="r", relation=">=", expected=2.0, control=control("c", 0.9),
              expect="partly", weaker=(">=", 1.0), reason="1.5x, not 2x")
    assert r.outcome == "partly" and r.weaker == [">=", 1.0]
    with pytest.raises(ClaimFailed, match="control"):
        check("7.7", "x", 1.5, ref="r", relation=">=", expected=2.0, control=control("c", 1.1),
              expect="partly", weaker=(">=", 1.0), reason="r")
    r = check("7.8", "x", seeds=[0.4, 0.6, 0.3], ref="r", relation="<=", expected=0.5,
              control=control("c", [0.9, 0.8, 0.95]), expect="partly", reason="one seed of three")
    assert r.measured == 0.6 and r.seeds == [0.4, 0.6, 0.3] and r.control["measured"] == 0.8
    s = claims.summary(7)
    assert (s["reproduced"], s["partly"], s["not reproduced"], s["failed"]) == (1, 2, 1, 4)
    assert "1 reproduced, 2 partly, 1 not reproduced" in s["text"]
    assert claims.validate_records(claims.load_ledger()) == [
        "7.2: FAIL", "7.2: paper claim without a failing control", "7.4: FAIL", "7.5: FAIL",
        "7.7: FAIL", "7.7: paper claim without a failing control",
    ]


def test_statistics_over_seeds():
    vals = [1.0, 2.0, 3.0]
    kw = dict(ref="r", relation=">=", expected=0.0, kind="book", record=False, quiet=True)
    assert check("6.1", "s", seeds=vals, **kw).measured == 1.0
    assert check("6.1", "s", seeds=vals, statistic="mean", **kw).measured == 2.0
    assert check("6.1", "s", seeds=vals, statistic="mean-2se", **kw).measured == pytest.approx(2 - 2 / math.sqrt(3))
    assert check("6.1", "s", seeds=np.array(vals), statistic="median", **kw).measured == 2.0
    kw["relation"] = "<="
    kw["expected"] = 9.0
    assert check("6.1", "s", seeds=torch.tensor(vals), statistic="mean-2se", **kw).measured == pytest.approx(2 + 2 / math.sqrt(3))
    r = check("6.2", "s", seeds=[0.9, 1.3, 1.05], ref="r", relation="in", expected=(0.8, 1.2),
              kind="book", expect="reproduced", record=False, quiet=True, statistic="median")
    assert r.measured == 1.05
    with pytest.raises(ClaimFailed):  # worst seed of an interval claim: every seed must be inside
        check("6.3", "s", seeds=[0.9, 1.3], ref="r", relation="in", expected=(0.8, 1.2), kind="book",
              record=False, quiet=True)


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=12), st.floats(-1e6, 1e6))
def test_worst_seed_is_the_binding_one(vals, bound):
    """Under 'worst' a '<=' claim holds iff every seed holds, and '>=' likewise."""
    for relation, holds in (("<=", all(v <= bound for v in vals)), (">=", all(v >= bound for v in vals))):
        try:
            check("6.9", "s", seeds=vals, ref="r", relation=relation, expected=bound, kind="book",
                  record=False, quiet=True)
            ok = True
        except ClaimFailed:
            ok = False
        assert ok == holds


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(cid="1", measured=1.0, relation="<=", expected=1.0), ValueError, "N.k"),
        (dict(statement="", measured=1.0, relation="<=", expected=1.0), ValueError, "statement"),
        (dict(ref="", measured=1.0, relation="<=", expected=1.0), ValueError, "ref"),
        (dict(measured=1.0, relation="~", expected=1.0), ValueError, "relation"),
        (dict(measured=1.0, relation="==", expected=1.0), ValueError, "tolerance"),
        (dict(measured=1.0, relation="<=", expected=1.0, tol=0.1), ValueError, "tol must be None"),
        (dict(measured=1.0, relation="in", expected=1.0), ValueError, "lo, hi"),
        (dict(measured=1.0, relation="in", expected=(2, 1)), ValueError, "empty"),
        (dict(measured="big", relation="<=", expected=1.0), TypeError, "measured"),
        (dict(relation="<=", expected=1.0), ValueError, "measured is required"),
        (dict(measured=1.0, seeds=[1.0], relation="<=", expected=1.0), ValueError, "not both"),
        (dict(seeds=[], relation="<=", expected=1.0), ValueError, "empty"),
        (dict(measured=1.0, relation="<=", expected=1.0, kind="other"), ValueError, "kind"),
        (dict(measured=1.0, relation="<=", expected=1.0, bound_source="me"), ValueError, "bound_source"),
        (dict(measured=1.0, relation="<=", expected=1.0, kind="paper"), ValueError, "negative control"),
        (dict(measured=1.0, relation="<=", expected=1.0, control=control("c", 2), expect="maybe"), ValueError, "expect"),
        (dict(measured=1.0, relation="<=", expected=1.0, control=control("c", 2), expect="partly"), ValueError, "reason"),
        (dict(measured=1.0, relation="<=", expected=1.0, control=control("c", 2), weaker=(">=", 0)), ValueError, "partly"),
        (dict(measured=1.0, relation="<=", expected=1.0, kind="book", control=control("c", 2)), ValueError, "no control"),
        (dict(measured=1.0, relation="<=", expected=1.0, kind="book", expect="partly"), ValueError, "must hold"),
        (dict(seeds=[1.0], relation="<=", expected=1.0, kind="book", statistic="mean-2se"), ValueError, "2 seeds"),
        (dict(seeds=[1.0, 2.0], relation="in", expected=(0, 3), kind="book", statistic="mean-2se"), ValueError, "'<=' or '>='"),
        (dict(seeds=[1.0, 2.0], relation="<=", expected=3, kind="book", statistic="max"), ValueError, "statistic"),
    ],
)
def test_bad_claims(kwargs, exc, match):
    base = dict(cid="1.1", statement="s", ref="r")
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        check(**base, record=False, quiet=True)


def test_control_validation():
    with pytest.raises(ValueError, match="description"):
        control("", 1.0)
    assert control("c", [1, 2]).values == (1, 2)


def test_begin_chapter_resets():
    claims.begin_chapter(8)
    check("8.1", "a", 0.0, ref="r", relation="<=", expected=1.0, kind="book")
    claims.begin_chapter(8)
    assert claims.results(8) == []
    assert json.loads((claims.claims_dir() / "chapter-8.json").read_text())["claims"] == {}


def test_check_ledger_script(tmp_path):
    claims.begin_chapter(9)
    check("9.1", "x", 0.3, ref="r", relation="<=", expected=0.5, control=control("c", 0.9))
    script = ROOT / "tools" / "check_ledger.py"
    out = subprocess.run([sys.executable, str(script), str(claims.claims_dir())], capture_output=True, text=True)
    assert "chapter 9: paper claims: 1 reproduced" in out.stdout
    # the chapters of the book wrote nothing to this folder: reported as problems
    assert out.returncode == 1 and "chapter 1 wrote no record" in out.stdout
    data = json.loads((claims.claims_dir() / "chapter-9.json").read_text())
    data["claims"]["9.1"]["control"]["holds"] = True
    (claims.claims_dir() / "chapter-9.json").write_text(json.dumps(data))
    out = subprocess.run([sys.executable, str(script), str(claims.claims_dir())], capture_output=True, text=True)
    assert "9.1: paper claim without a failing control" in out.stdout


def test_scale_switch(monkeypatch, tmp_path):
    assert scale.scale() == "ci" and scale.pick(ci=1, paper=2) == 1
    assert scale.device().type == "cpu"
    calls = []
    assert scale.cached("t-sec", lambda: calls.append(1) or 5) == 5 and scale.cache_dir() is None
    monkeypatch.setenv("BOOK_SCALE", "paper")
    monkeypatch.setenv("BOOK_PAPER_CACHE", str(tmp_path))
    assert scale.is_paper() and scale.pick(ci=1, paper=2) == 2
    assert scale.cached("t-sec", lambda: calls.append(1) or {"a": 1}) == {"a": 1}
    assert scale.cached("t-sec", lambda: calls.append(1) or {"a": 2}) == {"a": 1}  # resumed from disk
    assert len(calls) == 2 and (tmp_path / "t-sec.pt").exists()
    with pytest.raises(ValueError, match="cache name"):
        scale.cached("a/b", lambda: 1)
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError, match="BOOK_SCALE"):
        scale.scale()


def test_provenance_sources_and_staleness(tmp_path):
    srcs = provenance.chapter_sources(1)
    assert srcs[0].startswith("chapters/ch1_") and "lib/claims.py" in srcs and "lib/scale.py" in srcs
    assert provenance.is_stale(None, 1) == (True, "no paper-scale run recorded")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    rec = {"provenance": {"commit": head, "clean": True, "date": "2026-12-01T00:00:00Z"}, "claims": {}}
    stale, why = provenance.is_stale(rec, 1)
    dirty = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", *srcs], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    assert stale == bool(dirty)
    rec["provenance"]["commit"] = "0" * 40
    assert provenance.is_stale(rec, 1)[0] and "not in this repository" in provenance.is_stale(rec, 1)[1]
    rec["provenance"]["clean"] = False
    assert "uncommitted" in provenance.is_stale(rec, 1)[1]
    (tmp_path / "chapter-1.json").write_text(json.dumps(rec))
    assert provenance.paper_outcome_text(1, "1.1", tmp_path) == "not in the recorded run"
    assert provenance.paper_outcome_text(1, "1.1", tmp_path / "none") == "not run"
