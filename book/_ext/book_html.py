"""HTML details of the built book that the configuration alone cannot set.

- Every executed chapter offers its notebook for download (the theme's ``.ipynb`` button), with
  the outputs of this build: the notebook MyST-NB wrote to ``_build/jupyter_execute`` goes next
  to the page sources, its outputs merged from the execution cache when it came from there
  (MyST-NB writes cached notebooks without them). The book theme offers the download only when
  a launch service (Binder, Colab, ...) is configured, and this book has none.
- Inline scripts are written once per page. sphinx-thebe (loaded by Jupyter Book) registers its
  inline configuration (``const THEBE_JS_URL = ...``) while the builder already holds it, so
  with Sphinx 7.4 each page carried it twice, and the second ``const`` declaration is a
  SyntaxError in the browser console.
- Every page's footer names the book's version (``pyproject.toml``) and the commit it was built
  from (with a note when the tree had uncommitted changes), so a reader can cite what they read.
- The execution-status table (``{nb-exec-table}``) says "passed" / "failed" in words: MyST-NB
  writes the emoji U+2705 / U+274C, which a machine without an emoji font draws as empty boxes.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform

from repro.buildinfo import git, pyproject_version

ROOT = Path(__file__).resolve().parents[2]
# MyST-NB's execution-table status symbols, in words
EXEC_STATUS_WORDS = {"\u2705": "passed", "\u274c": "failed"}


def build_stamp(root: Path = ROOT) -> dict[str, Any]:
    """The book's version and the commit of the tree being built."""
    version = pyproject_version(root)
    commit = git(root, "rev-parse", "HEAD")
    status = (
        git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    )
    return {"version": version, "commit": commit, "dirty": bool(status)}


def footer_html(stamp: dict[str, Any]) -> str:
    """The footer line: version, commit (linkless: the book reads offline), local changes."""
    commit = stamp.get("commit")
    parts = [f"Attention, Reproduced, version {html.escape(stamp['version'])}"]
    if commit:
        built = f"built from commit <code>{html.escape(commit[:12])}</code>"
        if stamp.get("dirty"):
            built += " with uncommitted changes"
        parts.append(built)
    else:
        parts.append("built outside a git checkout (commit unknown)")
    return f'<p class="book-version">{", ".join(parts)}</p>'


def _stamp_footer(app, config) -> None:
    stamp = build_stamp()
    options = dict(config.html_theme_options or {})
    extra = options.get("extra_footer") or ""
    options["extra_footer"] = f"{extra}{footer_html(stamp)}"
    config.html_theme_options = options
    context = dict(config.html_context or {})
    context.update(book_version=stamp["version"], book_commit=stamp["commit"] or "")
    config.html_context = context


class ExecStatusWords(SphinxPostTransform):
    """After MyST-NB filled its execution table (priority 8): the status symbols as words."""

    default_priority = 9

    def run(self, **kwargs) -> None:
        for table in list(self.document.findall(nodes.table)):
            for text in list(table.findall(nodes.Text)):
                word = EXEC_STATUS_WORDS.get(text.astext().strip())
                if word is not None:
                    text.parent.replace(text, nodes.Text(word))


def _with_outputs(app, text: str) -> str:
    """The notebook ``text`` with its outputs, merged from the execution cache if it has none."""
    import nbformat

    nb = nbformat.reads(text, as_version=4)
    if any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        return text
    config = getattr(app.env, "mystnb_config", None)
    cache_path = getattr(config, "execution_cache_path", "") or Path(
        app.outdir
    ).parent / (".jupyter_cache")
    if not Path(cache_path).is_dir():
        return text
    from jupyter_cache import get_cache

    try:
        _, merged = get_cache(cache_path).merge_match_into_notebook(nb)
    except KeyError:  # not in the cache: executed here, or not at all
        return text
    return nbformat.writes(merged)


def _offer_notebook(app, pagename, templatename, context, doctree) -> None:
    if "kernelspec" not in app.env.metadata.get(pagename, {}):
        return
    written = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not written.is_file():
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        _with_outputs(app, written.read_text(encoding="utf-8")), encoding="utf-8"
    )
    context["ipynb_source"] = f"{pagename}.ipynb"


def _script_key(script: Any) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    return (
        getattr(script, "filename", str(script)) or "",
        tuple(sorted(attributes.items())),
    )


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("config-inited", _stamp_footer)
    app.add_post_transform(ExecStatusWords)
    # before the book theme builds its download button (priority 501)
    app.connect("html-page-context", _offer_notebook, priority=450)
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
