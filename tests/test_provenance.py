"""repro.provenance: fingerprints track what a chapter measures, not its wording or the rules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from repro import provenance

ROOT = Path(__file__).resolve().parents[1]

CHAPTER = '''---
jupytext:
  text_representation:
    format_name: myst
---
# A chapter

```{code-cell} ipython3
---
tags: [remove-cell]
---
from lib import potts as P
from repro.claims import check, control
```

```{code-cell} ipython3
:tags: [hide-input]
import lib.hardmax
import lib
x = lib.kernels.ExpDot
%matplotlib inline
value = MEASURE
check("1.1", "STATEMENT", value, ref="REF", relation="<=", expected=BOUND, setting="paper",
      control=control("DESCRIPTION", 2.0), reason="REASON", noise=NOISE)
print(f"value {value}")
```
'''


def _chapter(tmp_path, monkeypatch, **subs):
    text = CHAPTER
    defaults = {"MEASURE": "0.1", "STATEMENT": "s", "REF": "r", "BOUND": "0.5", "DESCRIPTION": "d", "REASON": "", "NOISE": "0.0"}
    for k, v in {**defaults, **subs}.items():
        text = text.replace(k, v)
    (tmp_path / "chapters").mkdir(exist_ok=True)
    (tmp_path / "chapters" / "ch1_x.md").write_text(text)
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    for mod in ("potts", "hardmax", "kernels", "attention"):
        (lib / f"{mod}.py").write_text('"""doc"""\nfrom . import attention\n' if mod != "attention" else "A = 1\n")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    return provenance.fingerprint(1)


def test_imports_in_yaml_headed_cells_and_attribute_access_are_tracked(tmp_path, monkeypatch):
    fp = _chapter(tmp_path, monkeypatch)
    assert {"lib/potts.py", "lib/hardmax.py", "lib/kernels.py", "lib/attention.py"} <= set(fp)
    assert "torch" in fp


def test_wording_and_rules_do_not_stale_but_measurements_do(tmp_path, monkeypatch):
    base = _chapter(tmp_path, monkeypatch)
    same = _chapter(tmp_path, monkeypatch, STATEMENT="another statement", REF="Thm 2", DESCRIPTION="other",
                    REASON="because", NOISE="0.01")
    assert same == base
    assert _chapter(tmp_path, monkeypatch, MEASURE="0.2")["chapter code"] != base["chapter code"]
    assert _chapter(tmp_path, monkeypatch, BOUND="0.4")["chapter code"] != base["chapter code"]
    # a docstring edit in lib is not a change of what is measured; code is
    assert _chapter(tmp_path, monkeypatch) == base
    (tmp_path / "lib" / "potts.py").write_text('"""another doc"""\nfrom . import attention\n')
    assert provenance.fingerprint(1) == base
    (tmp_path / "lib" / "potts.py").write_text('"""doc"""\nfrom . import attention\nB = 2\n')
    assert provenance.fingerprint(1)["lib/potts.py"] != base["lib/potts.py"]


def test_staleness_reads_the_fingerprint(tmp_path, monkeypatch):
    fp = _chapter(tmp_path, monkeypatch)
    provenance._current_fingerprint.cache_clear()
    rec = {"provenance": {"commit": "0" * 40, "clean": True, "fingerprint": fp}, "claims": {}}
    assert provenance.is_stale(rec, 1) == (False, "")
    rec["provenance"]["fingerprint"] = {**fp, "lib/potts.py": "x"}
    assert provenance.is_stale(rec, 1) == (True, "changed since: lib/potts.py")
    rec["provenance"]["clean"] = False
    assert "uncommitted" in provenance.is_stale(rec, 1)[1]
    provenance._current_fingerprint.cache_clear()


def test_records_without_fingerprint_fall_back_to_git(tmp_path):
    assert provenance.is_stale(None, 1) == (True, "no paper-scale run recorded")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=False, capture_output=True, text=True).stdout.strip()
    rec = {"provenance": {"commit": head, "clean": True, "date": "2026-12-01T00:00:00Z"}, "claims": {}}
    srcs = provenance.chapter_sources(1)
    assert srcs[0].startswith("chapters/ch1_") and not any("claims" in s or "scale" in s for s in srcs)
    dirty = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", *srcs], cwd=ROOT, check=False,
                           capture_output=True, text=True).stdout.strip()
    assert provenance.is_stale(rec, 1)[0] == bool(dirty)
    rec["provenance"]["commit"] = "0" * 40
    assert "not in this repository" in provenance.is_stale(rec, 1)[1]
    (tmp_path / "chapter-1.json").write_text(json.dumps(rec))
    assert provenance.paper_outcome_text(1, "1.1", tmp_path) == "not in the recorded run"
    assert provenance.paper_outcome_text(1, "1.1", tmp_path / "none") == "not run"


@pytest.mark.parametrize("chapter", [1, 2, 3, 4, 5, 6])
def test_every_chapter_has_a_fingerprint(chapter):
    fp = provenance.fingerprint(chapter)
    assert "chapter code" in fp and any(k.startswith("lib/") for k in fp)
