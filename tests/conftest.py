"""Shared pytest fixtures for the lib unit tests, and the Hypothesis profiles.

Hypothesis profile ``ci`` (loaded by default; ``HYPOTHESIS_PROFILE=thorough`` selects the larger
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


@pytest.fixture(autouse=True)
def _seed_and_isolate(tmp_path, monkeypatch):
    """Seed torch and send claim records of unit tests to a temporary folder."""
    torch.manual_seed(0)
    monkeypatch.setenv("BOOK_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("BOOK_SCALE", raising=False)
    yield
