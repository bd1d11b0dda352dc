"""Sphinx extension: the claims ledger, rendered from the records the chapters wrote.

Chapters check claims with :func:`lib.claims.check`, which writes
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

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in kernel tracebacks

_COLUMNS = ("claim", "kind", "statement (the paper says)", "measured (CI scale)", "bound (source)",
            "negative control", "outcome", "paper scale")
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
    option_spec = {"chapter": directives.positive_int}

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
    from lib.claims import ClaimResult, load_ledger

    out = []
    for rec in load_ledger():
        try:
            out.append(ClaimResult(**rec))
        except TypeError:  # a record written by an older version of lib.claims
            continue
    return out


def _outcome_cell(r, stale: bool) -> str:
    text = r.outcome if r.outcome != "FAIL" else "FAIL"
    if r.reason:
        text += f": {r.reason}"
    if stale:
        text += " (stale: not re-executed in this build)"
    return text


def observed_outcome(claim: dict) -> str:
    """What a recorded paper claim shows, whatever was declared: ``reproduced``, ``partly`` or
    ``not reproduced`` (with ``inconclusive`` when its control does not fail the bound).

    A record whose declared outcome did not hold is stored as ``FAIL`` with its numbers; the ledger
    reads the outcome those numbers show with the rule :func:`lib.claims.check` applies.
    """
    from lib.claims import _holds

    rel, exp, tol = claim["relation"], claim["expected"], claim.get("tol")
    if claim.get("kind") != "paper":
        return "does not hold" if not _holds(claim["measured"], rel, exp, tol) else "holds"
    seeds = claim.get("seeds") or []
    weaker = claim.get("weaker")
    if _holds(claim["measured"], rel, exp, tol):
        out = "reproduced"
    elif (len(seeds) > 1 and any(_holds(v, rel, exp, tol) for v in seeds)) or (
        weaker is not None and _holds(claim["measured"], weaker[0], weaker[1], None)
    ):
        out = "partly"
    else:
        out = "not reproduced"
    if (claim.get("control") or {}).get("holds"):
        out += ", inconclusive: its control does not fail the bound"
    return out


def _paper_cell(chapter: int, cid: str) -> str:
    """The paper-scale column: the recorded outcome, and for a FAIL what the numbers show."""
    from lib.provenance import paper_outcome_text, paper_record

    text = paper_outcome_text(chapter, cid)
    rec = paper_record(chapter)
    claim = (rec or {}).get("claims", {}).get(cid)
    if claim is not None and claim.get("outcome") == "FAIL":
        if claim.get("kind") == "paper":
            why = f"the declared outcome did not hold; observed {observed_outcome(claim)}"
        else:
            why = "the book check does not hold at this scale"
        text = f"FAIL: {why}. " + text[4:].strip()
    return text


def _statement_cell(r) -> str:
    text = r.statement
    if r.kind == "paper" and r.paper_says and r.paper_says != r.statement:
        text += f" — the paper says: {r.paper_says}"
    return text + f" [{r.ref}]"


def _chapter_table(app: Sphinx, docname: str, chapter: int, records, started: float) -> list[nodes.Node]:
    from lib.claims import _count
    from lib.provenance import is_stale, paper_record

    recs = [r for r in records if r.chapter == chapter]
    out: list[nodes.Node] = []
    if not recs:
        out.append(nodes.paragraph(text="No record of this chapter was written in this build."))
        return out
    counts = _count(recs)
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
    para += nodes.Text(f"This build ({', '.join(sorted({r.scale for r in recs}))} scale): {counts['text']}. {paper_line} ")
    para += nodes.Text("Each claim id links to the place in ")
    para += _ref(app, docname, f"ch-{_CHAPTER_LABELS.get(chapter, '')}", f"chapter {chapter}")
    para += nodes.Text(" where it is checked.")
    out.append(para)
    rows = []
    for r in recs:
        rows.append([
            _link(app, docname, r.anchor, r.id),
            r.kind,
            _statement_cell(r),
            r.measured_text,
            f"{r.expected_text} ({r.bound_source})",
            r.control_text,
            _outcome_cell(r, r.time < started),
            _paper_cell(chapter, r.id),
        ])
    out.append(_table(rows))
    return out


_CHAPTER_LABELS = {1: "probabilistic", 2: "potts", 3: "pde", 4: "kernel-machines", 5: "hardmax", 6: "lenses"}


def _summary(app: Sphinx, docname: str, records) -> list[nodes.Node]:
    from lib.claims import _count

    total = _count(records)
    out: list[nodes.Node] = [nodes.paragraph(text=f"The whole book, this build: {total['text']}.")]
    items = nodes.bullet_list()
    for ch in sorted({r.chapter for r in records}):
        c = _count([r for r in records if r.chapter == ch])
        item = nodes.list_item()
        para = _link(app, docname, f"ledger-chapter-{ch}", f"Chapter {ch}")
        para += nodes.Text(f": {c['text']}.")
        item += para
        items += item
    out.append(items)
    not_rep = [r for r in records if r.kind == "paper" and r.outcome in ("not reproduced", "partly")]
    if not_rep:
        out.append(nodes.paragraph(text="Paper claims that did not fully reproduce:"))
        lst = nodes.bullet_list()
        for r in not_rep:
            item = nodes.list_item()
            para = _link(app, docname, r.anchor, r.id)
            para += nodes.Text(f" ({r.outcome}): {r.paper_says or r.statement}" + (f" — {r.reason}" if r.reason else ""))
            item += para
            lst += item
        out.append(lst)
    out.extend(_scale_differences(app, docname, records))
    return out


def _scale_differences(app: Sphinx, docname: str, records) -> list[nodes.Node]:
    """The paper claims whose recorded paper-scale outcome differs from this build's."""
    from lib.provenance import paper_record

    rows = []
    for r in records:
        rec = paper_record(r.chapter)
        claim = (rec or {}).get("claims", {}).get(r.id)
        if r.kind != "paper" or claim is None:
            continue
        paper = claim["outcome"] if claim["outcome"] != "FAIL" else f"FAIL (observed {observed_outcome(claim)})"
        if paper != r.outcome:
            rows.append((r, paper))
    if not rows:
        return [nodes.paragraph(text="No paper claim has a recorded paper-scale outcome that differs from this build's.")]
    out: list[nodes.Node] = [nodes.paragraph(text="Paper claims whose recorded paper-scale outcome differs from this build's:")]
    lst = nodes.bullet_list()
    for r, paper in rows:
        item = nodes.list_item()
        para = _link(app, docname, r.anchor, r.id)
        para += nodes.Text(f": {r.outcome} here, {paper} at paper scale.")
        item += para
        lst += item
    out.append(lst)
    return out


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
            for ch in sorted({r.chapter for r in records}):
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
