"""Run chapters at the papers' scale and record their claims with provenance.

    python -m repro paper                 # every chapter
    python -m repro paper --chapter 3     # one chapter (also: make paper CHAPTER=3)

Each chapter's jupytext source is executed cell by cell in a Jupyter kernel with
``BOOK_SCALE=paper``. Its claim records, the git commit, whether the tree was clean, the date, the
device (CPU model and threads, or GPU), the torch threads of the chapter's kernel, the most worker
processes it ran at once, the torch version and the wall time per chapter and per section are written to ``results/paper/chapter-<N>.json``, which is committed. Sections that wrap
their work in :func:`repro.scale.cached` resume from the paper cache (``$BOOK_PAPER_CACHE_ROOT``,
default ``_build/paper-cache``; ``ch<N>/`` per chapter) after an interruption, and the run lists the
sections it reused; the cache is wiped when the chapter's fingerprint changes. The record carries
the fingerprint (:func:`repro.provenance.fingerprint`) and the environment
(:func:`repro.records.environment`: CPU model, torch's CPU capability, torch and numpy versions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .provenance import ROOT, chapter_source, chapter_sources, fingerprint
from .records import environment


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()


def _device() -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine()}
    if torch.cuda.is_available():
        info["device"] = f"GPU: {torch.cuda.get_device_name(0)}"
    else:
        info["device"] = f"CPU: {environment()['cpu']}, {os.cpu_count()} cores"
    info["threads"] = torch.get_num_threads()
    return info


class ProcessPeak(threading.Thread):
    """Count, every ``every`` seconds, the live processes below this one (the chapter's kernel and
    the worker processes it starts, not multiprocessing's resource tracker); ``peak`` is the
    largest count seen. Needs psutil (installed
    with Jupyter); without it ``peak`` stays ``None``."""

    def __init__(self, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every, self.peak = every, None
        self._stop_event = threading.Event()

    def sample(self) -> int | None:
        try:
            import psutil
        except ImportError:
            return None
        n = 0
        for child in psutil.Process().children(recursive=True):
            try:  # multiprocessing's resource tracker is a helper, not a worker
                if "resource_tracker" not in " ".join(child.cmdline()):
                    n += 1
            except psutil.Error:  # gone between listing and reading
                pass
        return n

    def run(self) -> None:
        while not self._stop_event.is_set():
            n = self.sample()
            if n is not None:
                self.peak = n if self.peak is None else max(self.peak, n)
            self._stop_event.wait(self.every)

    def stop(self) -> int | None:
        self._stop_event.set()
        self.join()
        return self.peak


def _kernel_threads(client) -> int | None:
    """Torch's thread count inside the chapter's kernel after the run (the chapter may set it).
    The probe cell is appended to the client's notebook (nbclient stores outputs there)."""
    import nbformat

    cell = nbformat.v4.new_code_cell("import torch; print(torch.get_num_threads())")
    client.nb.cells.append(cell)
    try:
        client.execute_cell(cell, len(client.nb.cells) - 1)
        return int("".join(o.get("text", "") for o in cell.outputs).strip())
    except Exception:  # noqa: BLE001 - provenance is best effort here
        return None


def _stamp(chapter: int) -> str:
    return hashlib.sha256(json.dumps(fingerprint(chapter), sort_keys=True).encode()).hexdigest()


def cache_root() -> Path:
    """Where resumable paper-scale sections are kept: ``$BOOK_PAPER_CACHE_ROOT`` or
    ``<repository>/_build/paper-cache`` (one folder per chapter)."""
    env = os.environ.get("BOOK_PAPER_CACHE_ROOT")
    return Path(env) if env else ROOT / "_build" / "paper-cache"


def run_chapter(chapter: int, out_dir: Path, timeout: float | None) -> dict:
    import jupytext
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    src = chapter_source(chapter)
    cache = cache_root() / f"ch{chapter}"
    stamp = _stamp(chapter)
    stamp_file = cache / "STAMP"
    if cache.exists() and (not stamp_file.exists() or stamp_file.read_text() != stamp):
        shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)
    reused = sorted(p.stem for p in cache.glob("*.pt"))
    if reused:
        print(f"[chapter {chapter}] resuming: {len(reused)} finished section(s) in {cache}: {', '.join(reused)}", flush=True)

    claims_tmp = Path(tempfile.mkdtemp(prefix=f"paper-claims-{chapter}-"))
    keys = ("BOOK_SCALE", "BOOK_CLAIMS_DIR", "BOOK_PAPER_CACHE", "PYTHONPATH")
    env_before = {k: os.environ.get(k) for k in keys}
    # the kernel imports this checkout's lib (also from a git worktree beside an editable install)
    path = os.pathsep.join(p for p in (str(ROOT), env_before["PYTHONPATH"]) if p)
    os.environ.update(BOOK_SCALE="paper", BOOK_CLAIMS_DIR=str(claims_tmp), BOOK_PAPER_CACHE=str(cache), PYTHONPATH=path)
    commit = _git("rev-parse", "HEAD")
    clean = _git("status", "--porcelain", "--untracked-files=no") == ""
    nb = jupytext.read(src)
    workdir = Path(tempfile.mkdtemp(prefix=f"paper-run-{chapter}-"))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    sections: dict[str, float] = {}
    errors: list[dict] = []
    section = "(start)"
    t0 = time.perf_counter()
    error = None
    kernel_threads = None
    peak = ProcessPeak()
    peak.start()
    try:
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                if cell.cell_type == "markdown":
                    for line in cell.source.splitlines():
                        if line.startswith("## "):
                            section = line[3:].strip()
                            print(f"[chapter {chapter}] {section}  ({time.perf_counter() - t0:.0f} s)", flush=True)
                    continue
                if cell.cell_type != "code":
                    continue
                t = time.perf_counter()
                try:
                    client.execute_cell(cell, i)
                except CellExecutionError as e:
                    # keep going: later sections are independent measurements; the record keeps
                    # the error, and a failed claim is in the records as FAIL
                    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
                    errors.append({"section": section, "cell": i, "error": msg[-1][-500:] if msg else "?"})
                    print(f"[chapter {chapter}] cell {i} failed: {errors[-1]['error']}", flush=True)
                sections[section] = sections.get(section, 0.0) + time.perf_counter() - t
            kernel_threads = _kernel_threads(client)
    except Exception as e:  # noqa: BLE001 - the record says what broke
        error = f"{type(e).__name__}: {str(e)[-2000:]}"
        print(f"[chapter {chapter}] stopped: {error}", flush=True)
    if errors and error is None:
        error = f"{len(errors)} cell(s) failed; first: {errors[0]['error']}"
    wall = time.perf_counter() - t0
    n_proc = peak.stop()
    for k, v in env_before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    claims_file = claims_tmp / f"chapter-{chapter}.json"
    claims = json.loads(claims_file.read_text())["claims"] if claims_file.exists() else {}
    record = {
        "chapter": chapter,
        "source": str(src.relative_to(ROOT)),
        "provenance": {
            "commit": commit,
            "clean": clean,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scale": "paper",
            "wall_s": round(wall, 1),
            "sections_s": {k: round(v, 1) for k, v in sections.items()},
            "sources": chapter_sources(chapter),
            "fingerprint": fingerprint(chapter),
            "environment": environment(),
            "reused_sections": reused,
            "completed": error is None,
            "error": error,
            "cell_errors": errors,
            **_device(),
            "kernel_threads": kernel_threads,
            # processes below the runner at once, less the kernel: the chapter's worker processes
            "worker_processes": None if n_proc is None else max(0, n_proc - 1),
        },
        "claims": claims,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"chapter-{chapter}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"[chapter {chapter}] {'done' if error is None else 'FAILED'} in {wall:.0f} s, {len(claims)} records", flush=True)
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chapter", type=int, action="append", help="chapter number (repeatable); default: all")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "paper", help="where the records go")
    ap.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds (default: none)")
    args = ap.parse_args(argv)
    from .ledger import book_chapters

    chapters = args.chapter or book_chapters()
    failed = [c for c in chapters if run_chapter(c, args.out, args.timeout)["provenance"]["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
