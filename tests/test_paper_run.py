"""The paper-scale runner's process count (provenance of chapters that train in worker processes)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from repro import paper as paper_run


def test_process_peak_counts_children_and_stops():
    pytest.importorskip("psutil")
    peak = paper_run.ProcessPeak(every=0.02)
    peak.start()
    children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"]) for _ in range(2)]
    try:
        deadline = time.time() + 5
        while (peak.peak or 0) < 2 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        for c in children:
            c.wait()
    assert peak.stop() >= 2
    assert not peak.is_alive()


def test_kernel_threads_reads_the_kernels_setting():
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import torch; torch.set_num_threads(1)")]
    client = NotebookClient(nb, kernel_name="python3")
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        assert paper_run._kernel_threads(client) == 1
    assert len(nb.cells) == 2  # the probe is appended, the chapter's cells are untouched


def test_cli_hands_options_to_the_paper_runner(monkeypatch):
    """`python -m repro paper --chapter 3` reaches the runner with its options (argparse's
    REMAINDER alone drops a leading option)."""
    import repro.__main__ as cli
    import repro.paper

    seen = {}
    monkeypatch.setattr(repro.paper, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    cli.main(["paper", "--chapter", "3", "--timeout", "10"])
    assert seen["argv"] == ["--chapter", "3", "--timeout", "10"]
