r"""The book's scale switch.

Every chapter runs at one of two scales, chosen by the environment variable ``BOOK_SCALE``:

``ci`` (default)
    small sizes so that each chapter runs in at most a few minutes on 2 CPU cores;
``paper``
    the paper's own sizes, on a GPU when torch sees one.

Claims are asserted at both scales. Chapters read the scale through :func:`scale` and choose sizes
with :func:`pick`::

    from repro.scale import pick, device
    n_samples = pick(ci=2_000, paper=30_000)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")

SCALES = ("ci", "paper")
ENV_VAR = "BOOK_SCALE"


def scale() -> str:
    """Return the active scale, ``"ci"`` or ``"paper"``, read from ``$BOOK_SCALE`` (default ``ci``)."""
    value = os.environ.get(ENV_VAR, "ci").strip().lower() or "ci"
    if value not in SCALES:
        raise ValueError(f"{ENV_VAR} must be one of {SCALES}, got {value!r}")
    return value


def is_paper() -> bool:
    """True when running at the paper's scale."""
    return scale() == "paper"


def pick(*, ci: T, paper: T) -> T:
    """Return ``ci`` or ``paper`` according to the active scale."""
    return paper if is_paper() else ci


def device() -> torch.device:
    """The device for heavy computations: CUDA at paper scale when available, else CPU.

    At CI scale the CPU is always used so that numbers do not depend on the machine.
    """
    if is_paper() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def describe() -> str:
    """A one-line description of the scale and device, for chapter headers."""
    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    return f"scale = {scale()!r}, device = {name}, torch {torch.__version__}"


def cache_dir() -> Path | None:
    """Folder of the resumable paper-scale cache, or ``None`` when caching is off.

    Caching is on at paper scale only: ``$BOOK_PAPER_CACHE`` when set (``python -m repro paper``
    sets it per chapter and wipes it when the chapter's sources change), else
    ``<repository>/_build/paper-cache``.
    """
    if not is_paper():
        return None
    env = os.environ.get("BOOK_PAPER_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "_build" / "paper-cache"


def cached(name: str, fn: Callable[[], T]) -> T:
    """Return ``fn()``, computed once per paper-scale run of a section and kept on disk.

    At paper scale a long section wraps its computation as ``res = cached("ch3-particles", run)``
    so that an interrupted run resumes from the sections it has finished. At CI scale this is
    just ``fn()``. ``name`` must be unique in the book (prefix it with the chapter).
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"cache name must be a non-empty string without '/', got {name!r}")
    d = cache_dir()
    if d is None:
        return fn()
    path = d / f"{name}.pt"
    if path.exists():
        print(f"[paper cache] reusing finished section {name!r} from {path}", flush=True)
        return torch.load(path, weights_only=False)
    out = fn()
    d.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(out, tmp)
    tmp.replace(path)
    return out
