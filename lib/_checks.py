"""Input validation shared by the numerical modules.

Every public function of :mod:`lib` validates its inputs with these helpers so that bad input
raises a ``TypeError``/``ValueError`` naming the offending argument instead of returning NaNs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def as_tensor(x: object, name: str) -> Tensor:
    """Return ``x`` if it is a floating-point tensor, else raise ``TypeError`` naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def _functorch_wrapped(x: Tensor) -> bool:
    """True inside ``torch.func`` transforms (vmap/grad), where data-dependent checks cannot run."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover - very old torch
        return False
    return bool(is_functorch_wrapped_tensor(x))


def finite(x: Tensor, name: str) -> Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite entries.

    Skipped inside ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``): the inputs were
    checked before entering the transform, and a data-dependent check cannot run there.
    """
    if _functorch_wrapped(x):
        return x
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return x


def float_tensor(x: object, name: str, *, min_dim: int = 1, check_finite: bool = True) -> Tensor:
    """Validate a floating tensor with at least ``min_dim`` dimensions (and finite entries)."""
    t = as_tensor(x, name)
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s), got shape {tuple(t.shape)}")
    if check_finite:
        finite(t, name)
    return t


def _real(value: object) -> bool:
    """A real number of any Python or NumPy type (``np.float32``, ``np.int64``, ...), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def positive(value: float, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise ``ValueError``.

    Any real scalar type is accepted (Python ``int``/``float``, NumPy ``float32``/``float64``/ints).
    """
    if not _real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def nonneg(value: float, name: str) -> float:
    """Return ``value`` as a float if it is a finite number >= 0, else raise ``ValueError``."""
    if not _real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def positive_int(value: int, name: str) -> int:
    """Return ``value`` as an ``int`` if it is an integer >= 1 (Python or NumPy integer), else raise."""
    if not (isinstance(value, numbers.Integral) and _real(value)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def same_dtype(tensors: Sequence[Tensor], names: Sequence[str]) -> None:
    """Raise ``TypeError`` if the tensors do not share one dtype."""
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        desc = ", ".join(f"{n}: {t.dtype}" for n, t in zip(names, tensors))
        raise TypeError(f"dtypes must match ({desc})")


def qk(q: object, k: object) -> tuple[Tensor, Tensor]:
    r"""Validate queries ``(..., n, d)`` and keys ``(..., m, d)``: floating, finite, one dtype,
    equal batch shapes (no broadcasting, to keep mistakes loud) and a shared last dimension."""
    q = float_tensor(q, "q", min_dim=2)
    k = float_tensor(k, "k", min_dim=2)
    same_dtype([q, k], ["q", "k"])
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"batch shapes of q {tuple(q.shape)} and k {tuple(k.shape)} must match")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the last dimension, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    return q, k


def qkv(q: object, k: object, v: object) -> tuple[Tensor, Tensor, Tensor]:
    r"""Validate query/key/value tensors of shapes ``(..., n, d)``, ``(..., m, d)``, ``(..., m, e)``.

    Batch dimensions must be equal (no broadcasting, to keep mistakes loud); at least one key.
    """
    q, k = qk(q, k)
    v = float_tensor(v, "v", min_dim=2)
    same_dtype([q, k, v], ["q", "k", "v"])
    if k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            f"batch shapes of q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must match"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of rows (keys), got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[-2] == 0:
        raise ValueError("k must contain at least one key")
    return q, k, v


def bool_mask(mask: object, n: int, m: int, batch: torch.Size) -> Tensor:
    """Validate a boolean attention mask broadcastable to ``batch + (n, m)``; ``True`` = may attend.

    The mask must end in exactly ``(n, m)`` and broadcast to ``batch + (n, m)`` without enlarging
    it (no extra leading dimensions). A mask that leaves some query with no key to attend to raises
    ``ValueError``: the softmax of an empty set is undefined and would silently produce NaN.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of dtype bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = may attend), got {mask.dtype}")
    full = tuple(batch) + (n, m)
    if mask.dim() < 2 or tuple(mask.shape[-2:]) != (n, m):
        raise ValueError(f"mask must end in shape ({n}, {m}), got {tuple(mask.shape)}")
    try:
        ok = tuple(torch.broadcast_shapes(mask.shape, full)) == full
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {full}")
    if not _functorch_wrapped(mask) and not bool(mask.any(dim=-1).all()):
        raise ValueError("mask blanks a whole row: some query may attend to no key")
    return mask
