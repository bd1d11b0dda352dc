"""The book's sources: jupytext chapters without outputs, a toc that lists them, claims in each."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))


def test_every_chapter_is_a_jupytext_myst_notebook_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    assert CHAPTERS, "no chapter found"
    for ch in CHAPTERS:
        head = ch.read_text()[:600]
        assert head.startswith("---") and "format_name: myst" in head and "kernelspec" in head, ch.name
        assert f"chapters/{ch.stem}" in toc, f"{ch.name} is not in _toc.yml"
    assert not list((ROOT / "chapters").glob("*.ipynb")), "chapters are .md sources, not .ipynb"


def test_chapters_check_claims_and_never_touch_sys_path():
    for ch in CHAPTERS:
        text = ch.read_text()
        n = int(re.match(r"ch(\d+)_", ch.name).group(1))
        assert f"begin_chapter({n})" in text, ch.name
        assert re.search(rf"(check|not_tested)\(\s*[\"']{n}\.\d+", text), f"{ch.name} checks no claim"
        assert "sys.path" not in text and "matplotlib.use" not in text, ch.name


LABELS = {1: "ch-probabilistic", 2: "ch-potts", 3: "ch-pde", 4: "ch-kernel-machines", 5: "ch-hardmax", 6: "ch-lenses"}


def test_claims_have_targets_and_chapters_link_to_each_other():
    """Each claim number has its `(claim-N-k)=` target; each chapter links to two others at least."""
    for ch in CHAPTERS:
        text = ch.read_text()
        n = int(re.match(r"ch(\d+)_", ch.name).group(1))
        ids = set(re.findall(rf"(?:check|not_tested)\(\s*[\"']({n}\.\d+)[a-z]?[\"']", text))
        missing = [i for i in sorted(ids) if f"(claim-{i.replace('.', '-')})=" not in text]
        assert not missing, f"{ch.name}: no target for claims {missing}"
        others = {m for m, label in LABELS.items() if m != n and (f"<{label}>" in text or f"`{label}`" in text)}
        assert len(others) >= 2, f"{ch.name} links to chapters {sorted(others)} only"


def test_chapters_link_forward_to_chapter_six():
    for ch in CHAPTERS:
        if not ch.name.startswith("ch6_"):
            assert "ch-lenses" in ch.read_text(), f"{ch.name} does not link to chapter 6"
