r"""Modern Hopfield networks (Ramsauer et al. 2020), the energy picture behind chapter 1.

Stored patterns are the columns of :math:`X = (x_1,\dots,x_N)\in\mathbb R^{d\times N}`; here they
are passed as rows, ``patterns`` of shape ``(N, d)``. With :math:`M = \max_i\|x_i\|`,

.. math:: E(\xi) = -\mathrm{lse}(\beta, X^\top\xi) + \tfrac12\xi\cdot\xi + \beta^{-1}\log N + \tfrac12 M^2,
          \qquad \xi^{\text{new}} = X\,\mathrm{softmax}(\beta X^\top \xi).

The update is a concave-convex procedure step: it never increases :math:`E`. It is softmax
attention of the state over the patterns, with keys = values = patterns. The Transformer's
residual sublayer is :math:`\xi \mapsto \xi + \xi^{\text{new}}` instead
(:func:`residual_update`), which is not a CCCP step (chapter 1, claim 1.7). All functions work
under ``torch.func.vmap`` (batches of pattern sets).
"""

from __future__ import annotations

import math

import torch

from . import _checks as C
from .lognormalizer import lse

Tensor = torch.Tensor

__all__ = [
    "energy_trajectory",
    "hopfield_energy",
    "hopfield_update",
    "residual_update",
    "retrieval_bound",
    "separation",
]


def _check(xi: Tensor, patterns: Tensor, beta: float) -> tuple[Tensor, Tensor, float]:
    xi = C.float_tensor(xi, "xi")
    patterns = C.float_tensor(patterns, "patterns", min_dim=2)
    C.same_dtype([xi, patterns], ["xi", "patterns"])
    if patterns.dim() != 2:
        raise ValueError(f"patterns must be (N, d), got {tuple(patterns.shape)}")
    if xi.shape[-1] != patterns.shape[-1]:
        raise ValueError(
            f"xi has dimension {xi.shape[-1]} but patterns have {patterns.shape[-1]}"
        )
    return xi, patterns, C.positive(beta, "beta")


def hopfield_energy(xi: Tensor, patterns: Tensor, *, beta: float) -> Tensor:
    r"""Energy :math:`E(\xi)` of states ``xi`` ``(..., d)`` for ``patterns`` ``(N, d)``; bounded below by 0."""
    xi, patterns, beta = _check(xi, patterns, beta)
    n = patterns.shape[0]
    m2 = (
        (patterns * patterns).sum(-1).amax()
    )  # a tensor, so that vmap over pattern sets works
    return (
        -lse(xi @ patterns.T, beta=beta)
        + 0.5 * (xi * xi).sum(-1)
        + math.log(n) / beta
        + 0.5 * m2
    )


def hopfield_update(xi: Tensor, patterns: Tensor, *, beta: float) -> Tensor:
    r"""One retrieval step :math:`\xi \mapsto X\,\mathrm{softmax}(\beta X^\top\xi)` (batched over ``xi``)."""
    xi, patterns, beta = _check(xi, patterns, beta)
    return torch.softmax(beta * (xi @ patterns.T), dim=-1) @ patterns


def separation(patterns: Tensor) -> Tensor:
    r"""Separation :math:`\Delta_i = x_i\cdot x_i - \max_{j\ne i} x_i\cdot x_j` of each pattern.

    ``patterns`` ``(..., N, d)``; returns ``(..., N)``.
    """
    patterns = C.float_tensor(patterns, "patterns", min_dim=2)
    if patterns.shape[-2] < 2:
        raise ValueError("separation needs at least two patterns")
    g = patterns @ patterns.transpose(-1, -2)
    eye = torch.eye(g.shape[-1], dtype=torch.bool, device=g.device)
    others = torch.where(
        eye, torch.full_like(g, float("-inf")), g
    )  # no in-place: vmap-safe
    return g.diagonal(dim1=-2, dim2=-1) - others.amax(dim=-1)


def residual_update(xi: Tensor, patterns: Tensor, *, beta: float) -> Tensor:
    r"""The residual sublayer :math:`\xi \mapsto \xi + X\,\mathrm{softmax}(\beta X^\top\xi)`.

    This is the Transformer's attention sublayer with keys = values = patterns (no layer norm); a
    gradient-ascent step on :math:`A(\xi) = \log\sum_l e^{\beta x_l\cdot\xi}`, not the CCCP step
    of :func:`hopfield_update`.
    """
    return xi + hopfield_update(xi, patterns, beta=beta)


def energy_trajectory(
    xi: Tensor, patterns: Tensor, *, beta: float, steps: int, residual: bool = False
) -> Tensor:
    r"""Energies :math:`E(\xi_0), \dots, E(\xi_{\text{steps}})` along repeated updates, ``(steps + 1, ...)``.

    ``xi`` ``(..., d)`` are the start states :math:`\xi_0`; each step applies
    :func:`hopfield_update` (``residual=False``) or :func:`residual_update` (``residual=True``).
    """
    C.positive_int(steps, "steps")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    step = residual_update if residual else hopfield_update
    energies = [hopfield_energy(xi, patterns, beta=beta)]
    for _ in range(steps):
        xi = step(xi, patterns, beta=beta)
        energies.append(hopfield_energy(xi, patterns, beta=beta))
    return torch.stack(energies)


def retrieval_bound(patterns: Tensor, *, beta: float) -> Tensor:
    r"""The one-step retrieval bound :math:`2M(N-1)e^{-\beta\Delta_i}` for a state started at :math:`x_i`.

    With :math:`M = \max_j\|x_j\|`, :math:`N` patterns ``(N, d)`` and separations
    :math:`\Delta_i` (:func:`separation`): :math:`\|\xi^{\text{new}} - x_i\| \le 2M(N-1)e^{-\beta\Delta_i}`
    when :math:`\xi = x_i` (the :math:`\xi = x_i` case of Ramsauer et al.'s retrieval theorem).
    ``patterns`` ``(..., N, d)`` (one bound per pattern set); returns ``(..., N)``.
    """
    patterns = C.float_tensor(patterns, "patterns", min_dim=2)
    beta = C.positive(beta, "beta")
    n = patterns.shape[-2]
    m = patterns.norm(dim=-1).amax(dim=-1, keepdim=True)
    return 2 * m * (n - 1) * torch.exp(-beta * separation(patterns))
