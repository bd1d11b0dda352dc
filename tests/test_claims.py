"""repro.claims and repro.rules: settings, power, noise bands, controls, the loopholes they close."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from repro import claims, ledger, rules, scale
from repro.claims import ClaimFailed, check, control, not_tested
from repro.records import load_ledger, schema_errors

ROOT = Path(__file__).resolve().parents[1]
C3 = control("c", [0.9, 0.8, 0.95])


def _paper(cid, seeds, **kw):
    base = {"ref": "r", "relation": "<=", "expected": 0.5, "setting": "paper", "control": C3, "quiet": True}
    base.update(kw)
    return check(cid, "s", seeds=seeds, **base)


def test_book_checks_pass_and_fail():
    claims.begin_chapter(9)
    kw = {"kind": "book", "fails_if": "a wrong sign"}
    assert check("9.1", "bound", 1e-13, ref="eq. 1", relation="<=", expected=1e-12, **kw).passed
    assert check("9.2", "lower", 3, ref="eq. 2", relation=">=", expected=3, **kw).outcome == "pass"
    assert check("9.3", "value", 0.871, ref="T1", relation="==", expected=0.872, tol=0.01, **kw).passed
    assert check("9.4", "rel", 105.0, ref="F2", relation="rel==", expected=100.0, tol=0.05, **kw).passed
    assert check("9.5b", "in", -0.5, ref="Thm 1", relation="in", expected=(-0.75, -0.35), **kw).passed
    with pytest.raises(ClaimFailed, match="FAIL"):
        check("9.6", "too big", 2.0, ref="eq. 3", relation="<=", expected=1.0, **kw)
    with pytest.raises(ClaimFailed):
        check("9.7", "nan never passes", math.nan, ref="eq. 3", relation="<=", expected=1.0, **kw)
    data = json.loads((claims.claims_dir() / "chapter-9.json").read_text())
    assert set(data["claims"]) == {"9.1", "9.2", "9.3", "9.4", "9.5b", "9.6", "9.7"}
    assert data["claims"]["9.6"]["outcome"] == "FAIL" and data["claims"]["9.1"]["outcome"] == "pass"
    assert data["claims"]["9.5b"]["anchor"] == "claim-9-5"
    assert data["schema"] == 2 and "cpu_capability" in data["environment"]
    check("9.8", "np", np.float64(0.5), ref="x", relation="<=", expected=1, **kw)
    check("9.9", "torch", torch.tensor(0.5), ref="x", relation="<=", expected=1, **kw)
    md = claims.table(9).data
    assert "{ref}`9.3 <claim-9-3>`" in md and "**FAIL**" in md and "0.872 ± 0.01" in md
    assert "ledger-chapter-9" in md and "**Book checks**" in md


def test_book_check_must_say_how_it_could_fail():
    with pytest.raises(ValueError, match="fails_if"):
        check("9.1", "s", 0.1, ref="r", relation="<=", expected=1, kind="book", record=False, quiet=True)


def test_paper_outcomes_need_settings_controls_and_power():
    claims.begin_chapter(7)
    r = _paper("7.1", [0.3, 0.4, 0.35], paper_says="the model learns")
    assert (r.outcome, r.group, r.verdict.control["state"], r.paper_says) == ("reproduced", "paper", "fails", "the model learns")
    # a control that satisfies the bound: the check cannot tell, it fails
    with pytest.raises(ClaimFailed, match="control"):
        _paper("7.2", [0.3, 0.3, 0.3], control=control("c", [0.4, 0.45, 0.9]))
    # not reproduced in the paper's setting without a positive control: inconclusive
    with pytest.raises(ClaimFailed, match="declared 'not reproduced', observed 'inconclusive'"):
        _paper("7.3", [0.7, 0.8, 0.9], expect="not reproduced", reason="gap stays")
    r = _paper("7.4", [0.7, 0.8, 0.9], expect="inconclusive", reason="no positive control")
    assert r.outcome == "inconclusive"
    # with a positive control that holds, the negative outcome is a verdict
    pos = control("planted effect", [0.1, 0.2, 0.1])
    r = _paper("7.5", [0.7, 0.8, 0.9], expect="not reproduced", reason="gap stays", positive=pos)
    assert r.outcome == "not reproduced" and r.verdict.positive["state"] == "holds"
    # a positive control that does not hold cannot show power
    r = _paper("7.6", [0.7, 0.8, 0.9], expect="inconclusive", reason="r", positive=control("p", [0.6, 0.7, 0.6]))
    assert r.outcome == "inconclusive"
    # partly: one seed holds (the same rule in check and in the ledger)
    r = _paper("7.7", [0.4, 0.6, 0.3], expect="partly", reason="one seed of three", positive=pos)
    assert r.measured == 0.6 and r.verdict.control["measured"] == 0.8
    with pytest.raises(ClaimFailed, match="declared 'not reproduced', observed 'partly'"):
        _paper("7.8", [0.4, 0.6, 0.3], expect="not reproduced", reason="r", positive=pos)
    # the book's setting: findings, not verdicts, and no power needed
    r = _paper("7.9", [0.7, 0.8, 0.9], setting="book", deviations=["toy task"], expect="does not hold", reason="r")
    assert (r.outcome, r.group) == ("does not hold", "beyond")
    s = claims.summary(7)
    assert s["paper"] == {"reproduced": 1, "FAIL": 3, "inconclusive": 2, "not reproduced": 1, "partly": 1}
    assert s["beyond"] == {"does not hold": 1}
    assert "beyond the papers' settings: 1 does not hold" in s["text"]


def test_not_tested_in_the_papers_setting():
    claims.begin_chapter(8)
    r = not_tested("8.1", "test accuracy 79-88% on IMDb", ref="Table 1", reason="IMDb is not available offline",
                   paper_reports="79% (d=2) to 88% (d=16)", how="BOOK_IMDB_CSV=path", quiet=True)
    assert (r.outcome, r.group) == ("not tested", "untested")
    assert "Not tested in the paper's setting" in claims.table(8).data
    assert ledger.validate(load_ledger()) == []


def test_loopholes_closed():
    claims.begin_chapter(6)
    # paper claims: no free mean or median
    for stat in ("mean", "median"):
        with pytest.raises(ValueError, match="statistic"):
            _paper("6.1", [0.1, 0.2, 0.3], statistic=stat, record=False)
    # a control is the same statistic over the same number of seeds
    with pytest.raises(ValueError, match="same number of seeds"):
        _paper("6.1", [0.1, 0.2, 0.3], control=control("one value", 0.9), record=False)
    # weaker bounds come from the paper or the specification, never the book
    with pytest.raises(ValueError, match="never the book"):
        _paper("6.1", [0.6, 0.6, 0.6], weaker=("<=", 0.7, "book"), expect="partly", reason="r", record=False)
    r = _paper("6.2", [0.6, 0.6, 0.6], weaker=("<=", 0.7, "paper"), expect="partly", reason="r",
               positive=control("p", [0.1, 0.1, 0.1]))
    assert r.outcome == "partly"
    # the setting is stated, and the book's setting says how it differs
    with pytest.raises(ValueError, match="setting"):
        _paper("6.3", [0.1, 0.2, 0.3], setting=None, record=False)
    with pytest.raises(ValueError, match="deviations"):
        _paper("6.3", [0.1, 0.2, 0.3], setting="book", record=False)
    # a duplicate id in one chapter run is an error; the same check run again replaces its record
    _paper("6.4", [0.1, 0.2, 0.3])
    _paper("6.4", [0.1, 0.2, 0.25])
    assert claims.results(6)[-1].seeds == [0.1, 0.2, 0.25]
    with pytest.raises(ValueError, match="already checked"):
        check("6.4", "another claim", seeds=[0.1, 0.2, 0.3], ref="r", relation="<=", expected=0.5,
              setting="paper", control=C3, quiet=True)


def test_noise_band_makes_borderline_never_a_failure():
    claims.begin_chapter(5)
    pos = control("p", [0.0] * 6)
    c6 = control("untrained", [0.3] * 6)
    gaps = [0.0060, 0.0013, 0.0011, 0.00085, 0.0098, 0.0024]
    kw = {"relation": "<=", "expected": 0.01, "control": c6, "positive": pos, "noise": 0.002}
    # the Intel numbers (0.0098) and the AMD numbers (0.0103) both come out borderline, under any
    # declaration among the two neighbours
    a = _paper("5.1", gaps, expect="reproduced", **kw)
    b = _paper("5.2", gaps[:4] + [0.0103, 0.0024], expect="partly", reason="r", **kw)
    assert a.outcome == b.outcome == "borderline"
    assert set(a.verdict.possible) == {"reproduced", "partly"}
    # outside the band the observed outcome is asserted
    with pytest.raises(ClaimFailed, match="declared 'reproduced'"):
        _paper("5.3", gaps[:4] + [0.02, 0.0024], expect="reproduced", **kw)
    # a negative control inside the band: inconclusive is among the outcomes, never a failure
    r = _paper("5.4", gaps, expect="reproduced", **{**kw, "control": control("c", [0.011] * 6)})
    assert "inconclusive" in r.verdict.possible and r.outcome == "borderline"


def test_statistics_over_seeds():
    vals = [1.0, 2.0, 3.0]
    kw = {"ref": "r", "relation": ">=", "expected": 0.0, "kind": "book", "fails_if": "f", "record": False, "quiet": True}
    assert check("6.1", "s", seeds=vals, **kw).measured == 1.0
    assert check("6.1", "s", seeds=vals, statistic="mean", **kw).measured == 2.0
    assert check("6.1", "s", seeds=vals, statistic="mean-2se", **kw).measured == pytest.approx(2 - 2 / math.sqrt(3))
    assert check("6.1", "s", seeds=np.array(vals), statistic="median", **kw).measured == 2.0
    kw.update(relation="<=", expected=9.0)
    assert check("6.1", "s", seeds=torch.tensor(vals), statistic="mean-2se", **kw).measured == pytest.approx(2 + 2 / math.sqrt(3))
    with pytest.raises(ClaimFailed):  # worst seed of an interval claim: every seed must be inside
        check("6.3", "s", seeds=[0.9, 1.3], relation="in", expected=(0.8, 1.2),
              **{k: v for k, v in kw.items() if k not in ("relation", "expected")})


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=12), st.floats(-1e6, 1e6))
def test_worst_seed_is_the_binding_one(vals, bound):
    """Under 'worst' a '<=' claim holds iff every seed holds (outside the round-off band)."""
    for relation, sign in (("<=", 1), (">=", -1)):
        rec = {"kind": "book", "relation": relation, "expected": bound, "statistic": "worst", "seeds": vals}
        v = rules.judge(rec)
        if v.outcome == "borderline":
            continue
        assert (v.outcome == "pass") == all(sign * (bound - x) >= 0 for x in vals)


@settings(max_examples=200)
@given(
    st.lists(st.floats(0, 1), min_size=3, max_size=8),
    st.floats(0.05, 0.95),
    st.floats(0, 0.05),
    st.floats(-1, 1),
)
def test_moving_inside_the_band_never_fails(vals, bound, noise, shift):
    """A record that passes as declared still passes when its statistic moves within its band."""
    rec = {"kind": "paper", "setting": "paper", "relation": "<=", "expected": bound, "statistic": "worst",
           "seeds": vals, "noise": noise, "control": {"description": "c", "seeds": [2.0] * len(vals)},
           "positive": {"description": "p", "seeds": [-1.0] * len(vals)}}
    v = rules.judge(rec)
    rec["expect"] = v.possible[0]
    moved = dict(rec, seeds=[x + shift * noise / 2 for x in vals])  # half a band at most
    if v.outcome != "borderline" and abs(v.margin) > noise:  # clearly on one side: may cross into the band only
        mv = rules.judge(moved)
        assert mv.ok, (v, mv)


def test_ledger_recomputes_from_the_stored_numbers(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CLAIMS_DIR", str(tmp_path))
    claims.begin_chapter(12)
    check("12.1", "x", seeds=[0.3, 0.2, 0.1], ref="r", relation="<=", expected=0.5, setting="paper",
          control=control("c", [0.9, 0.9, 0.9]), quiet=True)
    check("12.2", "y", seeds=[0.3, 0.2], ref="r", relation="<=", expected=0.5, kind="book", fails_if="f",
          quiet=True)
    recs = load_ledger(tmp_path)
    problems = ledger.validate(recs, chapters=ledger.book_chapters() + [12])
    assert "12.2: 2 seeds; the ledger promises at least 3 at ci scale" in problems
    assert any(p == "chapter 1 wrote no record" for p in problems)  # nothing of the book here
    # an edited record: measured 99 against <= 0.5 with the stored flags unchanged
    data = json.loads((tmp_path / "chapter-12.json").read_text())
    data["claims"]["12.1"]["seeds"] = [99.0, 0.2, 0.1]
    (tmp_path / "chapter-12.json").write_text(json.dumps(data))
    problems = ledger.validate(load_ledger(tmp_path))
    assert any(p.startswith("12.1: stored outcome 'reproduced'") for p in problems)
    assert any(p.startswith("12.1: stored statistic") for p in problems)
    # a control edited to hold is found from its numbers, not from a flag
    data["claims"]["12.1"]["seeds"] = [0.3, 0.2, 0.1]
    data["claims"]["12.1"]["control"]["seeds"] = [0.1, 0.1, 0.1]
    (tmp_path / "chapter-12.json").write_text(json.dumps(data))
    assert "12.1: paper claim without a failing control" in ledger.validate(load_ledger(tmp_path))


def test_book_chapters_counts_two_digit_numbers(tmp_path):
    (tmp_path / "chapters").mkdir()
    for name in ("ch1_a.md", "ch10_b.md", "ch2_c.md", "notes.md"):
        (tmp_path / "chapters" / name).write_text("")
    assert ledger.book_chapters(tmp_path) == [1, 2, 10]


def test_cli_check_and_diff(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, worst in ((a, 0.0098), (b, 0.0103)):
        monkeypatch.setenv("BOOK_CLAIMS_DIR", str(d))
        claims.begin_chapter(11)
        check("11.1", "gap", seeds=[0.001, 0.002, worst], ref="r", relation="<=", expected=0.01, setting="paper",
              control=control("c", [0.3] * 3), positive=control("p", [0.0] * 3), noise=0.002, quiet=True)
        check("11.2", "id", 1e-15 if d == a else 2e-15, ref="r", relation="<=", expected=1e-12, kind="book",
              fails_if="f", quiet=True)
        check("11.3", "moved", seeds=[0.1, 0.2, 0.3 if d == a else 0.7], ref="r", relation="<=", expected=0.5,
              setting="book", deviations=["toy"], control=control("c", [0.9] * 3),
              expect="holds" if d == a else "partly holds", reason="" if d == a else "r", quiet=True)
    rows = {r["id"]: r for r in ledger.diff(a, b)}
    assert rows["11.1"]["kind"] == "statistic"  # both borderline
    assert rows["11.2"]["kind"] == "statistic" and rows["11.3"]["kind"] == "outcome"
    run = [sys.executable, "-m", "repro"]
    out = subprocess.run([*run, "diff", str(a), str(b)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 1 and "OUTCOME CHANGED (1)" in out.stdout and "11.3" in out.stdout
    out = subprocess.run([*run, "check", str(a), "--no-chapters"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0 and "chapter 11: verdicts on the papers" in out.stdout, out.stdout + out.stderr
    out = subprocess.run([*run, "check", str(a)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 1 and "chapter 1 wrote no record" in out.stdout


def test_every_written_record_follows_the_schema(tmp_path, monkeypatch):
    monkeypatch.setenv("BOOK_CLAIMS_DIR", str(tmp_path))
    claims.begin_chapter(13)
    _paper("13.1", [0.1, 0.2, 0.3])
    not_tested("13.2", "s", ref="r", reason="why", paper_reports="0.9", quiet=True)
    check("13.3", "s", 0.1, ref="r", relation="<=", expected=1, kind="book", fails_if="f", quiet=True)
    for rec in load_ledger(tmp_path):
        assert schema_errors(rec) == []
    assert schema_errors({"id": "13.4", "kind": "paper"})  # missing everything


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"cid": "1", "measured": 1.0}, ValueError, "N.k"),
        ({"statement": "", "measured": 1.0}, ValueError, "statement"),
        ({"ref": "", "measured": 1.0}, ValueError, "ref"),
        ({"measured": 1.0, "relation": "~"}, ValueError, "relation"),
        ({"measured": 1.0, "relation": "=="}, ValueError, "tolerance"),
        ({"measured": 1.0, "tol": 0.1}, ValueError, "tol must be None"),
        ({"measured": 1.0, "relation": "in"}, ValueError, "lo, hi"),
        ({"measured": 1.0, "relation": "in", "expected": (2, 1)}, ValueError, "empty"),
        ({"measured": "big"}, TypeError, "measured"),
        ({}, ValueError, "measured is required"),
        ({"measured": 1.0, "seeds": [1.0]}, ValueError, "not both"),
        ({"seeds": []}, ValueError, "empty"),
        ({"measured": 1.0, "kind": "other"}, ValueError, "kind"),
        ({"measured": 1.0, "bound_source": "me"}, ValueError, "bound_source"),
        ({"measured": 1.0, "kind": "paper", "setting": "paper"}, ValueError, "negative control"),
        ({"measured": 1.0, "setting": "paper", "control": control("c", 2), "expect": "maybe"}, ValueError, "unknown outcome"),
        ({"measured": 1.0, "setting": "paper", "control": control("c", 2), "expect": "partly"}, ValueError, "reason"),
        ({"measured": 1.0, "kind": "book", "fails_if": "f", "control": control("c", 2)}, ValueError, "no control"),
        ({"measured": 1.0, "kind": "book", "fails_if": "f", "expect": "partly"}, ValueError, "must hold"),
        ({"measured": 1.0, "setting": "paper", "control": control("c", 2), "fails_if": "f"}, ValueError, "fails_if"),
        ({"measured": 1.0, "kind": "book", "fails_if": "f", "noise": -1}, ValueError, "noise"),
        ({"seeds": [1.0], "kind": "book", "fails_if": "f", "statistic": "mean-2se"}, ValueError, "2 seeds"),
        ({"seeds": [1.0, 2.0], "relation": "in", "expected": (0, 3), "kind": "book", "fails_if": "f", "statistic": "mean-2se"},
         ValueError, "'<=' or '>='"),
        ({"seeds": [1.0, 2.0], "kind": "book", "fails_if": "f", "statistic": "max"}, ValueError, "statistic"),
    ],
)
def test_bad_claims(kwargs, exc, match):
    base = {"cid": "1.1", "statement": "s", "ref": "r", "relation": "<=", "expected": 1.0}
    base.update(kwargs)
    with pytest.raises(exc, match=match):
        check(**base, record=False, quiet=True)


def test_control_validation():
    with pytest.raises(ValueError, match="description"):
        control("", 1.0)
    assert control("c", [1, 2]).values == (1.0, 2.0)


def test_begin_chapter_resets():
    claims.begin_chapter(8)
    check("8.1", "a", 0.0, ref="r", relation="<=", expected=1.0, kind="book", fails_if="f", quiet=True)
    claims.begin_chapter(8)
    assert claims.results(8) == []
    assert json.loads((claims.claims_dir() / "chapter-8.json").read_text())["claims"] == {}
    check("8.1", "a", 0.0, ref="r", relation="<=", expected=1.0, kind="book", fails_if="f", quiet=True)


def test_scale_switch(monkeypatch, tmp_path, capsys):
    assert scale.scale() == "ci" and scale.pick(ci=1, paper=2) == 1
    assert scale.device().type == "cpu"
    calls = []
    assert scale.cached("t-sec", lambda: calls.append(1) or 5) == 5 and scale.cache_dir() is None
    monkeypatch.setenv("BOOK_SCALE", "paper")
    monkeypatch.setenv("BOOK_PAPER_CACHE", str(tmp_path))
    assert scale.is_paper() and scale.pick(ci=1, paper=2) == 2
    assert scale.cached("t-sec", lambda: calls.append(1) or {"a": 1}) == {"a": 1}
    assert scale.cached("t-sec", lambda: calls.append(1) or {"a": 2}) == {"a": 1}  # resumed from disk
    assert "reusing finished section 't-sec'" in capsys.readouterr().out
    assert len(calls) == 2 and (tmp_path / "t-sec.pt").exists()
    with pytest.raises(ValueError, match="cache name"):
        scale.cached("a/b", lambda: 1)
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError, match="BOOK_SCALE"):
        scale.scale()


def test_environments_reads_build_files_and_paper_records(tmp_path):
    """`repro diff` names the CPU of both kinds of file: a build's (top level) and a paper
    record's (under provenance)."""
    from repro.ledger import environments

    env = {"cpu": "AMD EPYC", "cpu_capability": "AVX2"}
    (tmp_path / "chapter-1.json").write_text(json.dumps({"chapter": 1, "environment": env, "claims": {}}))
    (tmp_path / "chapter-2.json").write_text(
        json.dumps({"chapter": 2, "provenance": {"environment": env}, "claims": {}})
    )
    assert environments(tmp_path) == {1: env, 2: env}


def test_paper_seed_cuts_are_declared_and_shown(tmp_path, monkeypatch):
    # a declared cut lowers the count for its chapter at the paper scale only
    assert ledger.min_seeds("paper", 1) == ledger.MIN_SEEDS["paper"]
    assert ledger.min_seeds("ci", 5) == ledger.MIN_SEEDS["ci"]
    monkeypatch.setenv("BOOK_CLAIMS_DIR", str(tmp_path))
    monkeypatch.setenv("BOOK_SCALE", "paper")
    page = (ledger.ROOT / "book" / "claims.md").read_text().replace("\n", " ")
    for ch, (n, why) in ledger.PAPER_SEED_CUTS.items():
        assert ledger.min_seeds("paper", ch) == n
        assert ledger.MIN_SEEDS["ci"] <= n < ledger.MIN_SEEDS["paper"] and why
        other = next(c for c in range(1, 20) if c not in ledger.PAPER_SEED_CUTS)
        for c in (ch, other):
            claims.begin_chapter(c)
            for k, m in ((1, n - 1), (2, n)):
                check(f"{c}.{k}", "x", seeds=[0.1] * m, ref="r", relation="<=", expected=0.5,
                      kind="book", fails_if="f", quiet=True)
        probs = [p for p in ledger.validate(load_ledger(tmp_path)) if "seeds;" in p]
        full = ledger.MIN_SEEDS["paper"]
        assert sorted(probs) == sorted([
            f"{ch}.1: {n - 1} seeds; the ledger promises at least {n} at paper scale",
            f"{other}.1: {n - 1} seeds; the ledger promises at least {full} at paper scale",
            f"{other}.2: {n} seeds; the ledger promises at least {full} at paper scale",
        ])
        # the ledger page says so
        assert f"chapter {ch} trains {n} seeds" in page
