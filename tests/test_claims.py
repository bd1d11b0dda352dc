"""lib.claims: the checks assert, record and render; lib.scale reads the switch."""

from __future__ import annotations

import json
import math

import pytest

from lib import claims, scale


def test_relations_pass_and_fail(tmp_path):
    claims.begin_chapter(9)
    assert claims.check("9.1", "bound", 1e-13, ref="eq. 1", relation="<=", expected=1e-12).passed
    assert claims.check("9.2", "lower bound", 3, ref="eq. 2", relation=">=", expected=3).passed
    assert claims.check("9.3", "value", 0.871, ref="Tab. 1", relation="==", expected=0.872, tol=0.01).passed
    assert claims.check("9.4", "relative", 105.0, ref="Fig. 2", relation="rel==", expected=100.0, tol=0.05).passed
    assert claims.check("9.5b", "interval", -0.5, ref="Thm 1", relation="in", expected=(-0.75, -0.35)).passed
    with pytest.raises(claims.ClaimFailed, match="FAIL"):
        claims.check("9.6", "too big", 2.0, ref="eq. 3", relation="<=", expected=1.0)
    with pytest.raises(AssertionError):
        claims.check("9.7", "nan never passes", math.nan, ref="eq. 3", relation="<=", expected=1.0)
    data = json.loads((claims.claims_dir() / "chapter-9.json").read_text())
    assert set(data["claims"]) == {"9.1", "9.2", "9.3", "9.4", "9.5b", "9.6", "9.7"}
    assert data["claims"]["9.6"]["passed"] is False and data["claims"]["9.1"]["passed"] is True
    ledger = claims.load_ledger()
    assert [r["id"] for r in ledger] == ["9.1", "9.2", "9.3", "9.4", "9.5b", "9.6", "9.7"]
    # numpy / torch scalars are accepted
    import numpy as np
    import torch
    claims.check("9.8", "np", np.float64(0.5), ref="x", relation="<=", expected=1)
    claims.check("9.9", "torch", torch.tensor(0.5), ref="x", relation="<=", expected=1)
    md = claims.table(9).data
    assert "| 9.3 |" in md and "**FAIL**" in md and "0.872 ± 0.01" in md


def test_begin_chapter_resets():
    claims.begin_chapter(8)
    claims.check("8.1", "a", 0.0, ref="r", relation="<=", expected=1.0)
    claims.begin_chapter(8)
    assert claims.results(8) == []
    assert json.loads((claims.claims_dir() / "chapter-8.json").read_text())["claims"] == {}


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(cid="1", statement="s", measured=1.0, ref="r", relation="<=", expected=1.0), ValueError, "N.k"),
        (dict(cid="1.1", statement="", measured=1.0, ref="r", relation="<=", expected=1.0), ValueError, "statement"),
        (dict(cid="1.1", statement="s", measured=1.0, ref="", relation="<=", expected=1.0), ValueError, "ref"),
        (dict(cid="1.1", statement="s", measured=1.0, ref="r", relation="~", expected=1.0), ValueError, "relation"),
        (dict(cid="1.1", statement="s", measured=1.0, ref="r", relation="==", expected=1.0), ValueError, "tolerance"),
        (dict(cid="1.1", statement="s", measured=1.0, ref="r", relation="<=", expected=1.0, tol=0.1), ValueError, "tol must be None"),
        (dict(cid="1.1", statement="s", measured=1.0, ref="r", relation="in", expected=1.0), ValueError, "lo, hi"),
        (dict(cid="1.1", statement="s", measured=1.0, ref="r", relation="in", expected=(2, 1)), ValueError, "empty"),
        (dict(cid="1.1", statement="s", measured="big", ref="r", relation="<=", expected=1.0), TypeError, "measured"),
    ],
)
def test_bad_claims(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        claims.check(**kwargs, record=False)


def test_scale_switch(monkeypatch):
    assert scale.scale() == "ci" and scale.pick(ci=1, paper=2) == 1
    assert scale.device().type == "cpu"
    monkeypatch.setenv("BOOK_SCALE", "paper")
    assert scale.is_paper() and scale.pick(ci=1, paper=2) == 2
    monkeypatch.setenv("BOOK_SCALE", "huge")
    with pytest.raises(ValueError, match="BOOK_SCALE"):
        scale.scale()
