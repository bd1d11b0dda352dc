"""The chapters as notebooks a reader can open and run: jupytext's contents manager, `make lab`.

- every chapter opens through jupytext's contents manager (the one `make lab` gives JupyterLab)
  as a notebook with its code cells, and nothing ``.ipynb`` is written;
- a small notebook in the chapters' format (MyST markdown with the jupytext header) opened that
  way executes in the python3 kernel, importing the book's package; saved back, it stays MyST
  markdown, without outputs, and no ``.ipynb`` appears (the ``.md`` is the source);
- ``make lab`` starts JupyterLab headless (``LAB_ARGS=--no-browser``), answers on localhost,
  serves a chapter as a notebook through its contents API, and stops on SIGTERM.

These need JupyterLab and jupytext (the lab extra, in the lock): without them they skip, except
under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
START_TIMEOUT_S = 120

TINY = """\
---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A tiny chapter

Some prose, then code.

```{code-cell} ipython3
import lib

total = sum(range(5))
print("total", total)
```

```{code-cell} ipython3
assert total == 10
lib.__name__
```
"""


def _contents_manager_class():
    try:
        from jupytext.sync_contentsmanager import TextFileContentsManager
    except ImportError as exc:  # jupyter_server missing: the lab extra is not installed
        if IN_CI:
            pytest.fail(f"JupyterLab / jupytext contents manager unavailable: {exc}")
        pytest.skip(f"JupyterLab / jupytext contents manager unavailable: {exc}")
    return TextFileContentsManager


def _ipynb_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.ipynb"))


def test_chapters_open_as_notebooks():
    manager = _contents_manager_class()(root_dir=str(ROOT))
    assert CHAPTERS
    before = _ipynb_files(ROOT / "chapters")
    for path in CHAPTERS:
        model = manager.get(f"chapters/{path.name}", content=True)
        assert model["type"] == "notebook", path.name
        nb = model["content"]
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, f"{path.name}: no code cells"
        assert nb.metadata["kernelspec"]["name"] == "python3"
    assert _ipynb_files(ROOT / "chapters") == before


def test_a_notebook_in_the_chapters_format_runs_and_stays_markdown(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    (tmp_path / "tiny.md").write_text(TINY, encoding="utf-8")
    manager = _contents_manager_class()(root_dir=str(tmp_path))
    model = manager.get("tiny.md", content=True)
    assert model["type"] == "notebook"
    nb = nbformat.from_dict(model["content"])
    NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].outputs[0]["text"] == "total 10\n"
    assert code[1].outputs[0]["data"]["text/plain"] == "'lib'"

    # saved from JupyterLab: the .md keeps the source, outputs are not written, no .ipynb
    manager.save({"type": "notebook", "format": "json", "content": nb}, "tiny.md")
    text = (tmp_path / "tiny.md").read_text(encoding="utf-8")
    assert "format_name: myst" in text and "```{code-cell} ipython3" in text
    assert "total 10" not in text
    assert _ipynb_files(tmp_path) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to make and JupyterLab (their own process group), SIGKILL after 30 s."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # already gone
            pass
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def test_make_lab_starts_headless_and_stops(tmp_path):
    _contents_manager_class()
    if not (Path(sys.prefix) / "bin" / "jupyter-lab").is_file():
        if IN_CI:
            pytest.fail("jupyter-lab is not installed: `make install`")
        pytest.skip("jupyter-lab is not installed (`make install` installs the lock)")
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
    )
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # not a sub-make of `make test`
        env.pop(key, None)
    args = (
        f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 "
        f"--IdentityProvider.token={token}"
    )
    # -o: take the installed environment as up to date (never reinstall from a test)
    proc = subprocess.Popen(
        [
            "make",
            "-o",
            f"{sys.prefix}/.installed",
            "lab",
            f"VENV={sys.prefix}",
            f"LAB_ARGS={args}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    chapter = CHAPTERS[0].name
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"make lab exited ({proc.returncode}): {proc.stdout.read().decode()}"
                )
            try:
                status, body = _get(f"{base}/api/status", token)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"make lab did not answer on {base} in {START_TIMEOUT_S} s")
            time.sleep(1)
        status, body = _get(f"{base}/lab", token)
        assert status == 200 and b"JupyterLab" in body
        status, body = _get(f"{base}/api/contents/chapters/{chapter}?content=1", token)
        assert status == 200, body[:300]
        model = json.loads(body)
        assert model["type"] == "notebook", model["type"]
        assert any(c["cell_type"] == "code" for c in model["content"]["cells"])
        # a double click opens a .md as a notebook (the settings `make lab` writes)
        url = f"{base}/lab/api/settings/@jupyterlab/docmanager-extension:plugin"
        status, body = _get(url, token)
        assert status == 200, body[:300]
        viewers = json.loads(body)["settings"]["defaultViewers"]
        assert viewers["markdown"] == viewers["myst"] == "Jupytext Notebook"
    finally:
        _stop(proc)
    with pytest.raises(OSError):
        _get(f"{base}/api/status", token)
