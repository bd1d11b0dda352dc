r"""Modern Hopfield networks (Ramsauer et al. 2020), the energy picture behind chapter 1.

Stored patterns are the columns of :math:`X = (x_1,\dots,x_N)\in\mathbb R^{d\times N}`; here they
are passed as rows, ``patterns`` of shape ``(N, d)``. With :math:`M = \max_i\|x_i\|`,

.. math:: E(\xi) = -\mathrm{lse}(\beta, X^\top\xi) + \tfrac12\xi\cdot\xi + \beta^{-1}\log N + \tfrac12 M^2,
          \qquad \xi^{\text{new}} = X\,\mathrm{softmax}(\beta X^\top \xi).

The update is a concave-convex procedure step: it never increases :math:`E`. It is softmax
attention of the state over the patterns, with keys = values = patterns.
"""

from __future__ import annotations

import math

import torch

from . import _checks as C
from .lognormalizer import lse

Tensor = torch.Tensor

__all__ = ["hopfield_energy", "hopfield_update", "separation"]


def _check(xi: Tensor, patterns: Tensor, beta: float) -> tuple[Tensor, Tensor, float]:
    xi = C.float_tensor(xi, "xi")
    patterns = C.float_tensor(patterns, "patterns", min_dim=2)
    C.same_dtype([xi, patterns], ["xi", "patterns"])
    if patterns.dim() != 2:
        raise ValueError(f"patterns must be (N, d), got {tuple(patterns.shape)}")
    if xi.shape[-1] != patterns.shape[-1]:
        raise ValueError(f"xi has dimension {xi.shape[-1]} but patterns have {patterns.shape[-1]}")
    return xi, patterns, C.positive(beta, "beta")


def hopfield_energy(xi: Tensor, patterns: Tensor, *, beta: float) -> Tensor:
    r"""Energy :math:`E(\xi)` of states ``xi`` ``(..., d)`` for ``patterns`` ``(N, d)``; bounded below by 0."""
    xi, patterns, beta = _check(xi, patterns, beta)
    n = patterns.shape[0]
    m2 = float((patterns * patterns).sum(-1).max())
    return -lse(xi @ patterns.T, beta=beta) + 0.5 * (xi * xi).sum(-1) + math.log(n) / beta + 0.5 * m2


def hopfield_update(xi: Tensor, patterns: Tensor, *, beta: float) -> Tensor:
    r"""One retrieval step :math:`\xi \mapsto X\,\mathrm{softmax}(\beta X^\top\xi)` (batched over ``xi``)."""
    xi, patterns, beta = _check(xi, patterns, beta)
    return torch.softmax(beta * (xi @ patterns.T), dim=-1) @ patterns


def separation(patterns: Tensor) -> Tensor:
    r"""Separation :math:`\Delta_i = x_i\cdot x_i - \max_{j\ne i} x_i\cdot x_j` of each pattern, shape ``(N,)``."""
    patterns = C.float_tensor(patterns, "patterns", min_dim=2)
    g = patterns @ patterns.T
    diag = g.diagonal().clone()
    g.fill_diagonal_(float("-inf"))
    return diag - g.max(dim=-1).values
