"""Shared pytest fixtures for the lib unit tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_isolate(tmp_path, monkeypatch):
    """Seed torch and send claim records of unit tests to a temporary folder."""
    torch.manual_seed(0)
    monkeypatch.setenv("BOOK_CLAIMS_DIR", str(tmp_path / "claims"))
    monkeypatch.delenv("BOOK_SCALE", raising=False)
    yield
