"""Shared pytest fixtures for the lib unit tests, and the Hypothesis profiles.

Torch runs one intra-op thread per test process (see below). Hypothesis profile ``ci`` (loaded by default; ``HYPOTHESIS_PROFILE=thorough`` selects the larger
one): a bounded number of examples, no per-example deadline (timings on a shared machine are
noisy), derandomized so that every run draws the same examples, and no example database on disk.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, database=None,
                          print_blob=True)
settings.register_profile("thorough", max_examples=300, deadline=None, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# One intra-op thread per test process. make test runs two pytest-xdist workers on CI's two cores,
# and the other worker is usually executing a chapter (which also runs on one thread at CI scale):
# a second torch thread per worker oversubscribes the cores, and OpenMP's spin-waiting then makes
# the small tensors of the unit tests about 20 times slower (a learning-rate selection test: 62 s
# with two threads beside a busy core, 3 s with one). No test depends on the thread count.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_isolate(tmp_path, monkeypatch):
    """Seed torch and send claim records of unit tests to a temporary folder."""
    torch.manual_seed(0)
    monkeypatch.setenv("BOOK_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("BOOK_SCALE", raising=False)
    yield
