"""Progress bars for long runs (tqdm's text bar, throttled).

Bars go to stderr, which the book build drops from rendered pages (``nb_output_stderr: remove``),
so they help a reader who runs a chapter interactively without cluttering the book.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from tqdm.std import tqdm

T = TypeVar("T")

__all__ = ["progress"]


def progress(iterable: Iterable[T], *, desc: str | None = None, total: int | None = None, **kwargs) -> Iterable[T]:
    """Wrap ``iterable`` in a text progress bar updated at most every 2 seconds."""
    kwargs.setdefault("mininterval", 2.0)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=desc, total=total, **kwargs)
