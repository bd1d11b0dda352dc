r"""The log-normalizer of softmax attention, its gradient and Hessian.

For keys :math:`x_1,\dots,x_n\in\mathbb R^d` and inverse temperature :math:`\beta`, the softmax
weights of a query :math:`q` are an exponential family over the keys with natural parameter
:math:`\beta q` and sufficient statistic the key itself,

.. math:: p_q(j) = \exp\big(\beta q\cdot x_j - A(q)\big), \qquad
          A(q) = \log\sum_{j=1}^n \exp(\beta\, q\cdot x_j).

Its derivatives are moments of :math:`p_q` (Shim 2022, chapter 1):

.. math:: \nabla A(q) = \beta\,\mathbb E_{p_q}[x], \qquad \nabla^2 A(q) = \beta^2\,\mathrm{Cov}_{p_q}[x] \succeq 0,

so attention with keys as values is :math:`\beta^{-1}\nabla A` and :math:`A` is convex. The
functions here take batched queries ``q`` of shape ``(..., d)`` and keys ``(n, d)`` (shared) or
``(..., n, d)``; everything is computed from ``logsumexp`` (no overflow).
"""

from __future__ import annotations

import torch

from . import _checks as C

Tensor = torch.Tensor

__all__ = [
    "gibbs",
    "infonce_loss",
    "log_normalizer",
    "log_normalizer_grad",
    "log_normalizer_hessian",
    "lse",
]


def _qx(q: Tensor, x: Tensor, beta: float) -> tuple[Tensor, Tensor, float]:
    q = C.float_tensor(q, "q")
    x = C.float_tensor(x, "x", min_dim=2)
    C.same_dtype([q, x], ["q", "x"])
    beta = C.positive(beta, "beta")
    if q.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"q and the keys x must share the last dimension, got {tuple(q.shape)} and {tuple(x.shape)}"
        )
    if x.dim() > 2 and x.shape[:-2] != q.shape[:-1]:
        raise ValueError(
            f"batched keys x {tuple(x.shape)} must have batch shape {tuple(q.shape[:-1])}"
        )
    return q, x, beta


def _logits(q: Tensor, x: Tensor, beta: float) -> Tensor:
    return beta * (x @ q.unsqueeze(-1)).squeeze(-1) if x.dim() > 2 else beta * (q @ x.T)


def log_normalizer(q: Tensor, x: Tensor, *, beta: float = 1.0) -> Tensor:
    r""":math:`A(q) = \log\sum_j \exp(\beta q\cdot x_j)`; ``q`` ``(..., d)``, keys ``x`` ``(n, d)`` or ``(..., n, d)``."""
    q, x, beta = _qx(q, x, beta)
    return torch.logsumexp(_logits(q, x, beta), dim=-1)


def lse(z: Tensor, *, beta: float = 1.0) -> Tensor:
    r"""The Hopfield log-sum-exp :math:`\mathrm{lse}(\beta, z) = \beta^{-1}\log\sum_l \exp(\beta z_l)` (last dim)."""
    z = C.float_tensor(z, "z")
    beta = C.positive(beta, "beta")
    return torch.logsumexp(beta * z, dim=-1) / beta


def gibbs(q: Tensor, x: Tensor, *, beta: float = 1.0) -> Tensor:
    r"""The softmax (Gibbs) distribution :math:`p_q(j)` over the keys, shape ``(..., n)``."""
    q, x, beta = _qx(q, x, beta)
    return torch.softmax(_logits(q, x, beta), dim=-1)


def log_normalizer_grad(q: Tensor, x: Tensor, *, beta: float = 1.0) -> Tensor:
    r""":math:`\nabla A(q) = \beta\sum_j p_q(j)\, x_j` (closed form, no autograd), shape ``(..., d)``."""
    p = gibbs(q, x, beta=beta)
    mean = (p.unsqueeze(-2) @ x).squeeze(-2) if x.dim() > 2 else p @ x
    return beta * mean


def log_normalizer_hessian(q: Tensor, x: Tensor, *, beta: float = 1.0) -> Tensor:
    r""":math:`\nabla^2 A(q) = \beta^2\,\mathrm{Cov}_{p_q}[x]`, shape ``(..., d, d)``; positive semi-definite."""
    p = gibbs(q, x, beta=beta)
    xs = x if x.dim() > 2 else x.expand(*p.shape[:-1], *x.shape)
    mean = p.unsqueeze(-2) @ xs  # (..., 1, d)
    xc = xs - mean
    cov = xc.transpose(-1, -2) @ (p.unsqueeze(-1) * xc)
    return beta**2 * cov


def infonce_loss(
    q: Tensor, x: Tensor, positive: Tensor, *, beta: float = 1.0
) -> Tensor:
    r"""InfoNCE loss :math:`-\log p_q(j_+) = A(q) - \beta\, q\cdot x_{j_+}` for each query.

    ``positive`` holds the index :math:`j_+` of each query's positive key (integer tensor of the
    batch shape of ``q``). This is the negative log-likelihood of the softmax exponential family;
    its gradient is :math:`\beta(\mathbb E_{p_q}[x] - x_{j_+})`.
    """
    q, x, beta = _qx(q, x, beta)
    if not isinstance(positive, torch.Tensor) or positive.dtype not in (
        torch.int64,
        torch.int32,
    ):
        raise TypeError("positive must be an integer tensor of key indices")
    if positive.shape != q.shape[:-1]:
        raise ValueError(
            f"positive must have shape {tuple(q.shape[:-1])}, got {tuple(positive.shape)}"
        )
    n = x.shape[-2]
    if bool(((positive < 0) | (positive >= n)).any()):
        raise ValueError(f"positive indices must lie in [0, {n})")
    logits = _logits(q, x, beta)
    return torch.logsumexp(logits, -1) - logits.gather(
        -1, positive.long().unsqueeze(-1)
    ).squeeze(-1)
