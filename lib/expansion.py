r"""Attention as a gradient step: expansion, depth stacks and layer-norm contraction (chapter 1).

With keys :math:`x_1..x_n` held fixed, the residual attention step of a query is

.. math:: T(q) = q + \eta\,\beta^{-1}\nabla A(q) = q + \eta\,\mathrm{Attn}(q; X, X),

a gradient-ascent step on the convex log-normalizer :math:`A` of :mod:`lib.lognormalizer`.
Because :math:`\nabla A` is monotone, :math:`\|T(q)-T(q')\| \ge \|q-q'\|`: the step never brings
two queries closer ("parallel expansion", Shim 2022). This module provides the step, deep stacks of
self-attention with and without layer norm, and the measurements used by chapter 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import _checks as C
from .attention import softmax_attention
from .norms import layer_norm

Tensor = torch.Tensor

__all__ = [
    "attention_step",
    "attention_steps",
    "diameter",
    "distance_ratios",
    "growth_rate",
    "jacobian_asymmetry",
    "pairwise_distances",
    "self_attention_stack",
]


def attention_step(
    q: Tensor,
    x: Tensor,
    *,
    beta: float,
    eta: float = 1.0,
    value_map: Tensor | None = None,
) -> Tensor:
    r"""Residual step :math:`q + \eta\, W_V\,\mathrm{Attn}(q; X, X)` for queries ``q`` ``(n, d)`` over fixed keys ``x`` ``(m, d)``.

    With ``value_map=None`` (:math:`W_V = I`, keys as values) this is the gradient step
    :math:`q + (\eta/\beta)\nabla A(q)`. ``value_map`` is a ``(d, d)`` matrix :math:`W_V`.
    """
    q = C.float_tensor(q, "q", min_dim=2)
    x = C.float_tensor(x, "x", min_dim=2)
    eta = C.nonneg(eta, "eta")
    v = (
        x
        if value_map is None
        else x @ C.float_tensor(value_map, "value_map", min_dim=2).T
    )
    return q + eta * softmax_attention(q, x, v, beta=beta)


def attention_steps(
    q: Tensor,
    x: Tensor,
    *,
    beta: float,
    steps: int,
    eta: float = 1.0,
    value_map: Tensor | None = None,
) -> Tensor:
    r"""``steps`` repeated :func:`attention_step` of queries ``q`` ``(n, d)`` over the same keys ``x``.

    Gradient ascent on the one convex :math:`A` of the fixed keys (``value_map=None``). Returns
    ``(steps + 1, n, d)``, the start included.
    """
    C.positive_int(steps, "steps")
    states = [C.float_tensor(q, "q", min_dim=2)]
    for _ in range(steps):
        states.append(
            attention_step(states[-1], x, beta=beta, eta=eta, value_map=value_map)
        )
    return torch.stack(states)


def distance_ratios(
    q1: Tensor,
    q2: Tensor,
    x: Tensor,
    *,
    beta: float,
    eta: float = 1.0,
    value_map: Tensor | None = None,
) -> Tensor:
    r"""Ratios :math:`\|T(q_1) - T(q_2)\| / \|q_1 - q_2\|` of paired queries through one residual step.

    ``q1``, ``q2`` are ``(n, d)`` (row ``i`` of each forms a pair), ``x`` the fixed keys ``(m, d)``,
    and :math:`T` is :func:`attention_step` with the same ``beta``, ``eta`` and ``value_map``.
    With ``value_map=None`` every ratio is at least 1 (chapter 1, claim 1.3); with a general value
    map it need not be. Returns ``(n,)``.
    """
    q1 = C.float_tensor(q1, "q1", min_dim=2)
    q2 = C.float_tensor(q2, "q2", min_dim=2)
    if q1.shape != q2.shape:
        raise ValueError(
            f"q1 and q2 must have the same shape, got {tuple(q1.shape)} and {tuple(q2.shape)}"
        )
    before = (q1 - q2).norm(dim=-1)
    if bool((before == 0).any()):
        raise ValueError("each pair q1[i], q2[i] must consist of two distinct queries")
    t1 = attention_step(q1, x, beta=beta, eta=eta, value_map=value_map)
    t2 = attention_step(q2, x, beta=beta, eta=eta, value_map=value_map)
    return (t1 - t2).norm(dim=-1) / before


def self_attention_stack(
    x: Tensor,
    depth: int,
    *,
    beta: float,
    weights: Tensor | None = None,
    norm: str = "none",
    eta: float = 1.0,
    residual: bool = True,
) -> Tensor:
    r"""Apply ``depth`` residual self-attention layers to tokens ``x`` ``(..., n, d)``; return all states.

    Layer :math:`\ell` maps :math:`X \mapsto X + \eta\,\mathrm{Attn}(X W_Q^\ell{}^\top, X W_K^\ell{}^\top, X W_V^\ell{}^\top)`
    where ``weights`` is ``(depth, 3, d, d)``, or ``(..., depth, 3, d, d)`` with the batch shape of
    ``x`` for one set of maps per cloud (``None``: identity maps, keys = queries = values). Leading
    dimensions of ``x`` are independent clouds, run together.
    ``norm`` is ``"none"`` (no normalisation: the original residual stream), ``"post"``
    (:math:`X \mapsto \mathrm{LN}(X + \eta\,\mathrm{Attn})`, the original Transformer) or ``"pre"``
    (:math:`X \mapsto X + \eta\,\mathrm{Attn}(\mathrm{LN}(X))`). ``residual=False`` drops the
    residual connection, :math:`X \mapsto \eta\,\mathrm{Attn}(\cdot)` (with identity maps and
    ``eta=1`` the Hopfield update of every token: a convex combination, so the cloud cannot
    expand). Returns ``(depth + 1, ..., n, d)``.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    C.positive_int(depth, "depth")
    if norm not in ("none", "post", "pre"):
        raise ValueError(f"norm must be 'none', 'post' or 'pre', got {norm!r}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    d = x.shape[-1]
    if weights is not None:
        weights = C.float_tensor(weights, "weights", min_dim=4)
        batch = tuple(x.shape[:-2])
        if tuple(weights.shape[-4:]) != (depth, 3, d, d) or tuple(
            weights.shape[:-4]
        ) not in ((), batch):
            raise ValueError(
                f"weights must have shape ({depth}, 3, {d}, {d}) or {batch + (depth, 3, d, d)}, "
                f"got {tuple(weights.shape)}"
            )
    states = [x]
    for layer in range(depth):
        h = layer_norm(x) if norm == "pre" else x
        if weights is None:
            q = k = v = h
        else:
            w = weights[..., layer, :, :, :].transpose(
                -1, -2
            )  # (..., 3, d, d), transposed maps
            q, k, v = h @ w[..., 0, :, :], h @ w[..., 1, :, :], h @ w[..., 2, :, :]
        out = eta * softmax_attention(q, k, v, beta=beta)
        x = x + out if residual else out
        if norm == "post":
            x = layer_norm(x)
        states.append(x)
    return torch.stack(states)


def pairwise_distances(x: Tensor) -> Tensor:
    """Distances :math:`\\|x_i - x_j\\|` for all pairs ``i < j`` of the rows of ``x`` ``(..., n, d)``."""
    x = C.float_tensor(x, "x", min_dim=2)
    n = x.shape[-2]
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    return torch.cdist(x, x)[..., iu[0], iu[1]]


def diameter(x: Tensor) -> Tensor:
    """Diameter :math:`\\max_{i,j}\\|x_i - x_j\\|` of the token cloud(s) ``x`` ``(..., n, d)``."""
    return pairwise_distances(x).amax(dim=-1)


def growth_rate(diameters: Tensor, *, start: int = 0) -> Tensor:
    r"""Mean log growth per layer, :math:`\log(D_L / D_s) / (L - s)`, of diameters ``(..., L + 1)``.

    ``diameters[..., l]`` is the diameter after layer ``l`` (as from :func:`diameter` applied to
    :func:`self_attention_stack`), :math:`s` = ``start``. A geometric growth :math:`D_l = D_0 r^l`
    gives :math:`\log r`; a cloud that does not grow gives a value :math:`\le 0`.
    """
    diameters = C.float_tensor(diameters, "diameters")
    n_layers = diameters.shape[-1] - 1
    if (
        isinstance(start, bool)
        or not isinstance(start, int)
        or not 0 <= start < n_layers
    ):
        raise ValueError(f"start must be an int in [0, {n_layers}), got {start!r}")
    if bool((diameters[..., [start, -1]] <= 0).any()):
        raise ValueError("diameters at the start and the end must be positive")
    return torch.log(diameters[..., -1] / diameters[..., start]) / (n_layers - start)


def jacobian_asymmetry(f: Callable[[Tensor], Tensor], q: Tensor) -> Tensor:
    r"""Relative asymmetry :math:`\|J - J^\top\|_F / \|J\|_F` of the Jacobian of ``f`` at each query.

    ``f`` maps one query ``(d,)`` to ``(d,)``; ``q`` is ``(n, d)``. A field is (locally) the gradient
    of a scalar potential only if its Jacobian is symmetric, so a value of order one says that no
    energy can describe the update. Computed with ``torch.func.jacrev`` and ``vmap``.
    """
    q = C.float_tensor(q, "q", min_dim=2)
    jac = torch.func.vmap(torch.func.jacrev(f))(q)
    return torch.linalg.matrix_norm(
        jac - jac.transpose(-1, -2)
    ) / torch.linalg.matrix_norm(jac)
