"""The ledger page, built by Sphinx from crafted records of every kind (repro.sphinx_ext)."""

from __future__ import annotations

import io

import pytest

from repro import claims
from repro.claims import check, control, not_tested

IDS = ("14.1", "14.2", "14.3", "14.4", "14.5", "14.6", "14.7")


def _records():
    claims.begin_chapter(14)
    c3, pos = control("untrained", [0.9, 0.8, 0.95]), control("planted effect", [0.1, 0.1, 0.2])
    kw = {"ref": "Sec. 1", "relation": "<=", "expected": 0.5, "control": c3, "quiet": True}
    check("14.1", "verdict: reproduced", seeds=[0.1, 0.2, 0.3], setting="paper", **kw)
    check("14.2", "verdict: not reproduced", seeds=[0.7, 0.8, 0.9], setting="paper", positive=pos,
          expect="not reproduced", reason="the gap stays", deviations=["fewer epochs"], **kw)
    check("14.3", "verdict: inconclusive", seeds=[0.7, 0.8, 0.9], setting="paper", expect="inconclusive",
          reason="no positive control", **kw)
    not_tested("14.4", "accuracy on IMDb", ref="Table 1", reason="IMDb is not available offline",
               paper_reports="79% to 88%", how="BOOK_IMDB_CSV=path", quiet=True)
    check("14.5", "finding: does not hold on a toy task", seeds=[0.7, 0.8, 0.9], setting="book",
          deviations=["toy task"], expect="does not hold", reason="toy", **kw)
    check("14.6", "borderline gap", seeds=[0.1, 0.2, 0.499], setting="paper", noise=0.01, **kw)
    check("14.7", "identity", 1e-15, ref="eq. 2", relation="<=", expected=1e-12, kind="book",
          fails_if="a sign error", quiet=True)


def test_ledger_page_keeps_the_groups_apart(tmp_path):
    sphinx = pytest.importorskip("sphinx.application")
    _records()
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text('extensions = ["repro.sphinx_ext"]\nexclude_patterns = []\n')
    targets = "\n".join(f".. _claim-14-{i}:\n\nClaim 14.{i}\n----------\n\ntext\n" for i in range(1, 8))
    (src / "index.rst").write_text(
        "Ledger\n======\n\n.. claims-summary::\n\n.. _ledger-chapter-14:\n\nChapter 14\n----------\n\n"
        ".. claims-ledger::\n   :chapter: 14\n\n" + targets
    )
    warnings = io.StringIO()
    app = sphinx.Sphinx(str(src), str(src), str(tmp_path / "out"), str(tmp_path / "doctrees"), "html",
                        status=None, warning=warnings, freshenv=True)
    app.build()
    html = (tmp_path / "out" / "index.html").read_text()
    text = " ".join(html.split())
    assert "verdicts on the papers (papers' settings): 1 reproduced, 1 not reproduced, 1 inconclusive, 1 borderline" in text
    assert "not tested in the papers' settings: 1" in text
    assert "beyond the papers' settings: 1 does not hold" in text and "book checks: 1 pass" in text
    assert "Not tested in the papers' settings" in text and "IMDb is not available offline" in text
    assert "Beyond the papers' settings" in text and "Borderline: statistics within their noise band" in text
    assert "book's setting (differs: toy task)" in text and "paper's setting (differs: fewer epochs)" in text
    assert "positive: 0.2 (planted effect) [holds]" in text
    assert "fails if: a sign error" in text
    assert "borderline (reproduced or inconclusive)" in text
    for cid in IDS:
        assert f'href="#claim-{cid.replace(".", "-")}"' in html
