"""Sphinx extension: the claims ledger, rendered from the records the chapters wrote.

Chapters check claims with :func:`lib.claims.check`, which writes
``<claims dir>/chapter-N.json`` while the chapter executes during the book build. The directive

    ```{claims-ledger}
    ```

leaves a placeholder; once every page has been read (and so every chapter executed), the
placeholder is replaced by one table of all records, with a summary line. Records older than the
current build are flagged as stale. The page holding the directive is re-read on every build.
"""

from __future__ import annotations

import time

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

_COLUMNS = ("claim", "statement", "paper", "measured", "expected", "result")
_WIDTHS = (5, 42, 16, 10, 14, 7)


class ledger_placeholder(nodes.General, nodes.Element):
    pass


class ClaimsLedgerDirective(SphinxDirective):
    has_content = False

    def run(self):
        env = self.env
        if not hasattr(env, "claims_ledger_docs"):
            env.claims_ledger_docs = set()
        env.claims_ledger_docs.add(env.docname)
        return [ledger_placeholder("")]


def _table(rows: list[list[str]]) -> nodes.table:
    table = nodes.table(classes=["claims-ledger"])
    group = nodes.tgroup(cols=len(_COLUMNS))
    table += group
    for w in _WIDTHS:
        group += nodes.colspec(colwidth=w)
    head = nodes.thead()
    group += head
    hrow = nodes.row()
    for c in _COLUMNS:
        hrow += nodes.entry("", nodes.paragraph(text=c))
    head += hrow
    body = nodes.tbody()
    group += body
    for r in rows:
        row = nodes.row()
        for cell in r:
            row += nodes.entry("", nodes.paragraph(text=cell))
        body += row
    return table


def _render(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    placeholders = list(doctree.findall(ledger_placeholder))
    if not placeholders:
        return
    from lib.claims import ClaimResult, load_ledger

    started = getattr(app, "claims_ledger_started", 0.0)
    records = [ClaimResult(**rec) for rec in load_ledger()]
    if not records:
        for ph in placeholders:
            ph.replace_self([nodes.paragraph(text="No claim records were found.")])
        return
    content: list[nodes.Node] = []
    n_pass = sum(r.passed for r in records)
    n_stale = sum(r.time < started for r in records)
    chapters = sorted({r.chapter for r in records})
    content.append(nodes.paragraph(text=(
        f"{len(records)} claims from {len(chapters)} chapter(s): {n_pass} pass, {len(records) - n_pass} fail"
        + (f", {n_stale} stale (not re-executed in this build)" if n_stale else "")
        + f". Generated at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."
    )))
    for ch in chapters:
        recs = [r for r in records if r.chapter == ch]
        ok = sum(r.passed for r in recs)
        content.append(nodes.rubric(text=f"Chapter {ch} — {ok}/{len(recs)} pass, scale: {', '.join(sorted({r.scale for r in recs}))}"))
        rows = []
        for res in recs:
            status = ("pass" if res.passed else "FAIL") + (" (stale)" if res.time < started else "")
            rows.append([res.id, res.statement, res.ref, res.measured_text, res.expected_text, status])
        content.append(_table(rows))
    for ph in placeholders:
        ph.replace_self([n.deepcopy() for n in content])


def _builder_inited(app: Sphinx) -> None:
    app.claims_ledger_started = time.time() - 1.0


def _always_outdated(app, env, added, changed, removed):
    return sorted(getattr(env, "claims_ledger_docs", set()))


def _purge(app, env, docname):
    if hasattr(env, "claims_ledger_docs"):
        env.claims_ledger_docs.discard(docname)


def setup(app: Sphinx):
    app.add_node(ledger_placeholder)
    app.add_directive("claims-ledger", ClaimsLedgerDirective)
    app.connect("builder-inited", _builder_inited)
    app.connect("env-get-outdated", _always_outdated)
    app.connect("env-purge-doc", _purge)
    app.connect("doctree-resolved", _render)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
