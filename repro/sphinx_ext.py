"""Sphinx extension: the claims ledger, rendered from the records the chapters wrote.

Chapters check claims with :func:`repro.claims.check`, which writes
``<claims dir>/chapter-N.json`` while the chapter executes during the book build. Two directives
leave placeholders that are filled once every page has been read (and so every chapter executed):

    ```{claims-ledger}
    :chapter: 3
    ```

one chapter's table (every record, with its kind, outcome, seeds, control, bound source, the
recorded paper-scale outcome, and a link to the place in the chapter where it is checked), and

    ```{claims-summary}
    ```

the counts per chapter and for the book, in the ledger's words. Records older than the current
build are flagged as stale. Pages holding a directive are re-read on every build.
"""

from __future__ import annotations

import os
import re
import time
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in kernel tracebacks

_COLUMNS = ("claim", "where tested", "statement (the paper says)", "measured (this build)", "bound (source)",
            "controls", "outcome", "paper scale")
_WIDTHS = (5, 5, 30, 14, 10, 14, 12, 14)


class ledger_placeholder(nodes.General, nodes.Element):
    pass


class summary_placeholder(nodes.General, nodes.Element):
    pass


def _remember(env, docname: str) -> None:
    if not hasattr(env, "claims_ledger_docs"):
        env.claims_ledger_docs = set()
    env.claims_ledger_docs.add(docname)


class ClaimsLedgerDirective(SphinxDirective):
    has_content = False
    option_spec: ClassVar[dict] = {"chapter": directives.positive_int}

    def run(self):
        _remember(self.env, self.env.docname)
        return [ledger_placeholder("", chapter=self.options.get("chapter"))]


class ClaimsSummaryDirective(SphinxDirective):
    has_content = False

    def run(self):
        _remember(self.env, self.env.docname)
        return [summary_placeholder("")]


def _entry(content: nodes.Node | str) -> nodes.entry:
    if isinstance(content, str):
        content = nodes.paragraph(text=content)
    return nodes.entry("", content)


def _table(rows: list[list[nodes.Node | str]]) -> nodes.table:
    table = nodes.table(classes=["claims-ledger"])
    group = nodes.tgroup(cols=len(_COLUMNS))
    table += group
    for w in _WIDTHS:
        group += nodes.colspec(colwidth=w)
    head = nodes.thead()
    group += head
    hrow = nodes.row()
    for c in _COLUMNS:
        hrow += _entry(c)
    head += hrow
    body = nodes.tbody()
    group += body
    for r in rows:
        row = nodes.row()
        for cell in r:
            row += _entry(cell)
        body += row
    return table


def _ref(app: Sphinx, fromdoc: str, anchor: str, text: str) -> nodes.Node:
    """An inline link to label ``anchor`` (wherever it is defined), or plain text."""
    std = app.env.get_domain("std")
    target = std.labels.get(anchor) or std.anonlabels.get(anchor)
    if not target:
        logger.warning(f"claims ledger: no label {anchor!r} for {text!r}: add the target ({anchor})= to the chapter")
        return nodes.Text(text)
    docname, labelid = target[0], target[1]
    uri = app.builder.get_relative_uri(fromdoc, docname) + "#" + labelid
    return nodes.reference("", text, refuri=uri, internal=True)


def _link(app: Sphinx, fromdoc: str, anchor: str, text: str) -> nodes.paragraph:
    """A paragraph holding :func:`_ref`."""
    para = nodes.paragraph()
    para += _ref(app, fromdoc, anchor, text)
    return para


def _records():
    """This build's records, each checked against the record schema and judged by the rules."""
    from repro.ledger import judged
    from repro.records import load_ledger, schema_errors

    good = []
    for rec in load_ledger():
        errs = schema_errors(rec)
        if errs:
            logger.warning(f"claims ledger: record {rec.get('id', '?')} breaks the record schema: {'; '.join(errs)}")
            continue
        good.append(rec)
    return judged(good)


def _outcome_cell(r, stale: bool) -> str:
    text = r.outcome_text.replace("**", "")
    if r.outcome == "FAIL":
        text += f" ({r.verdict.why})"
    reason = r.record.get("reason")
    if reason:
        text += f": {reason}"
    if r.outcome == "not tested" and r.record.get("how"):
        text += f" To test it: {r.record['how']}"
    if stale:
        text += " (stale: not re-executed in this build)"
    return text


_WHERE = {
    "paper": "paper's setting",
    "beyond": "book's setting",
    "untested": "not tested in the paper's setting",
    "book": "book check",
}


def _where_cell(r) -> str:
    text = _WHERE[r.group]
    devs = r.record.get("deviations") or []
    if devs:
        text += " (differs: " + "; ".join(devs) + ")"
    return text


def _paper_cell(chapter: int, cid: str) -> str:
    from repro.provenance import paper_outcome_text

    return paper_outcome_text(chapter, cid)


def _statement_cell(r) -> str:
    rec = r.record
    text = rec["statement"]
    if rec["kind"] == "paper" and rec.get("paper_says") and rec["paper_says"] != rec["statement"]:
        text += f" — the paper says: {rec['paper_says']}"
    if rec.get("paper_reports"):
        text += f" — the paper reports: {rec['paper_reports']}"
    if rec.get("fails_if"):
        text += f" — fails if: {rec['fails_if']}"
    return text + f" [{rec['ref']}]"


def _chapter_table(app: Sphinx, docname: str, chapter: int, records, started: float) -> list[nodes.Node]:
    from repro.claims import counts
    from repro.provenance import is_stale, paper_record

    recs = [r for r in records if r.record["chapter"] == chapter]
    out: list[nodes.Node] = []
    if not recs:
        out.append(nodes.paragraph(text="No record of this chapter was written in this build."))
        return out
    cnt = counts(recs)
    prec = paper_record(chapter)
    if prec is None:
        paper_line = "No paper-scale run is recorded for this chapter."
    else:
        prov = prec.get("provenance", {})
        stale, why = is_stale(prec, chapter)
        paper_line = (
            f"Paper-scale run recorded at commit {str(prov.get('commit', '?'))[:8]} on {prov.get('date', '?')[:10]}, "
            f"{prov.get('device', '?')}, {prov.get('wall_s', '?')} s"
            + ("" if prov.get("completed", True) else f", did not complete ({_ANSI.sub('', prov.get('error') or '')[:200]})")
            + (f"; stale: {why}" if stale else "; current (no chapter source or lib module it imports changed since)")
            + "."
        )
    para = nodes.paragraph()
    para += nodes.Text(f"This build ({', '.join(sorted({r.record['scale'] for r in recs}))} scale): {cnt['text']}. {paper_line} ")
    para += nodes.Text("Each claim id links to the place in ")
    para += _ref(app, docname, f"ch-{_CHAPTER_LABELS.get(chapter, '')}", f"chapter {chapter}")
    para += nodes.Text(" where it is checked.")
    out.append(para)
    order = {"paper": 0, "untested": 1, "beyond": 2, "book": 3}
    rows = []
    for r in sorted(recs, key=lambda r: order[r.group]):
        rows.append([
            _link(app, docname, r.anchor, r.id),
            _where_cell(r),
            _statement_cell(r),
            r.measured_text,
            "–" if r.outcome == "not tested" else f"{r.expected_text} ({r.record['bound_source']})",
            r.control_text,
            _outcome_cell(r, r.record["time"] < started),
            _paper_cell(chapter, r.id),
        ])
    out.append(_table(rows))
    return out


_CHAPTER_LABELS = {1: "probabilistic", 2: "potts", 3: "pde", 4: "kernel-machines", 5: "hardmax", 6: "lenses"}


def _bullets(app: Sphinx, docname: str, title: str, items) -> list[nodes.Node]:
    """A titled bullet list of records, each linked to where its chapter checks it."""
    if not items:
        return []
    out: list[nodes.Node] = [nodes.paragraph(text=title)]
    lst = nodes.bullet_list()
    for r, text in items:
        item = nodes.list_item()
        para = _link(app, docname, r.anchor, r.id)
        para += nodes.Text(" " + text)
        item += para
        lst += item
    out.append(lst)
    return out


def _summary(app: Sphinx, docname: str, records) -> list[nodes.Node]:
    from repro.claims import counts

    total = counts(records)
    out: list[nodes.Node] = [nodes.paragraph(text=f"The whole book, this build: {total['text']}.")]
    items = nodes.bullet_list()
    for ch in sorted({r.record["chapter"] for r in records}):
        c = counts([r for r in records if r.record["chapter"] == ch])
        item = nodes.list_item()
        para = _link(app, docname, f"ledger-chapter-{ch}", f"Chapter {ch}")
        para += nodes.Text(f": {c['text']}.")
        item += para
        items += item
    out.append(items)

    def said(r):
        rec = r.record
        text = f"({r.outcome_text.replace('**', '')}): {rec.get('paper_says') or rec['statement']}"
        return text + (f" — {rec['reason']}" if rec.get("reason") else "")

    out += _bullets(app, docname, "In the papers' settings, paper claims that did not fully reproduce "
                    "(each with a positive control showing the test can see the effect, or marked inconclusive):",
                    [(r, said(r)) for r in records if r.group == "paper"
                     and r.outcome in ("partly", "not reproduced", "inconclusive")])
    out += _bullets(app, docname, "Not tested in the papers' settings (why, and what the paper reports):",
                    [(r, (f"{r.record['paper_says']} — {r.record['reason']}; the paper reports "
                      f"{r.record['paper_reports']}")) for r in records if r.group == "untested"])
    out += _bullets(app, docname, "Beyond the papers' settings: statements tested in the book's setting "
                    "that do not fully hold there (findings about that setting, not verdicts on the papers):",
                    [(r, said(r)) for r in records if r.group == "beyond"
                     and r.outcome not in ("holds", "borderline")])
    out += _bullets(app, docname, "Borderline: statistics within their noise band of the bound, "
                    "which another machine may put on either side:",
                    [(r, f"{r.measured_text} against {r.expected_text}: {' or '.join(r.verdict.possible)}")
                     for r in records if r.outcome == "borderline"])
    out.extend(_scale_differences(app, docname, records))
    return out


def _scale_differences(app: Sphinx, docname: str, records) -> list[nodes.Node]:
    """The paper claims whose recorded paper-scale outcome differs from this build's."""
    from repro.provenance import paper_claim

    rows = []
    for r in records:
        if r.record["kind"] != "paper":
            continue
        p = paper_claim(r.record["chapter"], r.id)
        if p is None:
            continue
        paper = p.outcome_text.replace("**", "")
        if paper != r.outcome_text.replace("**", ""):
            rows.append((r, f"{r.outcome_text.replace('**', '')} here, {paper} at paper scale."))
    if not rows:
        return [nodes.paragraph(text="No paper claim has a recorded paper-scale outcome that differs from this build's.")]
    return _bullets(app, docname, "Paper claims whose recorded paper-scale outcome differs from this build's "
                    "(judged by the current rules):", rows)


def _render(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    ledgers = list(doctree.findall(ledger_placeholder))
    summaries = list(doctree.findall(summary_placeholder))
    if not ledgers and not summaries:
        return
    started = getattr(app, "claims_ledger_started", 0.0)
    records = _records()
    if not records:
        for ph in ledgers + summaries:
            ph.replace_self([nodes.paragraph(text="No claim records were found.")])
        return
    for ph in summaries:
        ph.replace_self(_summary(app, docname, records))
    for ph in ledgers:
        chapter = ph.get("chapter")
        if chapter:
            ph.replace_self(_chapter_table(app, docname, chapter, records, started))
        else:
            content: list[nodes.Node] = []
            for ch in sorted({r.record["chapter"] for r in records}):
                content.append(nodes.rubric(text=f"Chapter {ch}"))
                content.extend(_chapter_table(app, docname, ch, records, started))
            ph.replace_self(content)
    stamp = nodes.paragraph(text=f"Generated at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    if ledgers:
        doctree += stamp


def _builder_inited(app: Sphinx) -> None:
    # `make book` executes the chapters before Sphinx starts and exports when it began
    started = os.environ.get("BOOK_STARTED")
    app.claims_ledger_started = (float(started) if started else time.time()) - 1.0


def _always_outdated(app, env, added, changed, removed):
    return sorted(getattr(env, "claims_ledger_docs", set()))


def _purge(app, env, docname):
    if hasattr(env, "claims_ledger_docs"):
        env.claims_ledger_docs.discard(docname)


def _merge(app, env, docnames, other):
    if not hasattr(env, "claims_ledger_docs"):
        env.claims_ledger_docs = set()
    env.claims_ledger_docs |= getattr(other, "claims_ledger_docs", set())


def setup(app: Sphinx):
    app.add_node(ledger_placeholder)
    app.add_node(summary_placeholder)
    app.add_directive("claims-ledger", ClaimsLedgerDirective)
    app.add_directive("claims-summary", ClaimsSummaryDirective)
    app.connect("builder-inited", _builder_inited)
    app.connect("env-get-outdated", _always_outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("doctree-resolved", _render)
    return {"version": "0.2", "parallel_read_safe": True, "parallel_write_safe": True}
