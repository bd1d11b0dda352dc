r"""The Transformer PDE: attention as a velocity field on a cloud of tokens, and its Gaussian closure.

Chapter 3 (:ref:`ch-pde`) reproduces Castin, Ablin, Carrillo and Peyré, *A Unified Perspective on
the Dynamics of Deep Transformers* (arXiv:2501.18322). A Transformer of infinite depth moves its
tokens :math:`x_1,\dots,x_N\in\mathbb R^d` with the velocity field of self-attention against their
own empirical measure :math:`\mu = \frac1N\sum_j\delta_{x_j}`,

.. math::

   \dot x_i = \Gamma_\mu(x_i), \qquad
   \Gamma_\mu(x) = \frac{\int e^{\langle Qx, Ky\rangle}\, V y\, d\mu(y)}{\int e^{\langle Qx, Ky\rangle}\, d\mu(y)},

and as :math:`N\to\infty` the law :math:`\mu_t` solves the Vlasov equation
:math:`\partial_t\mu + \operatorname{div}(\mu\,\Gamma_\mu) = 0`.

Conventions (the paper's, no :math:`1/\sqrt d`; a temperature is absorbed into ``Q``):
``Q`` and ``K`` are ``(r, d)`` (query/key dimension ``r``), ``V`` is ``(d, d)`` and
:math:`A := K^\top Q` (``(d, d)``) so that :math:`\langle Qx, Ky\rangle = y^\top A x`.
Multi-head parameters are stacked: ``Q``, ``K`` of shape ``(H, r, d)``, ``V`` of shape
``(H, d, d)`` (head ``h`` writes :math:`V_h\,\mathbb E[y]` into the residual stream; see
:func:`split_heads`).

The module has two halves.

*Particles (torch).* :func:`particle_velocity` evaluates the field of every variant (softmax, L2,
sigmoid, Sinkhorn, multi-head, with an optional causal mask) on batched clouds ``(..., N, d)``
through :mod:`lib.attention` (softmax, multi-head and L2 as one call to the fused kernel,
sigmoid in query chunks) so that ``N = 10^5`` fits;
:func:`sphere_velocity` is the tangential field of tokens on the sphere; :func:`rk4` integrates a
particle system with the classical fixed-step Runge-Kutta scheme.

*Gaussian closure (numpy/scipy).* For :math:`\mu = \mathcal N(m, \Sigma)` every variant except
sigmoid gives an *affine* field :math:`\Gamma(x) = Bx + c` (:func:`affine_field`), so Gaussians
stay Gaussian with :math:`\dot m = Bm + c`, :math:`\dot\Sigma = B\Sigma + \Sigma B^\top`
(:func:`covariance_rhs`, :func:`mean_rhs`); :func:`evolve_covariance` integrates the covariance
ODE with :func:`scipy.integrate.solve_ivp` (stiff solvers, events for convergence and blow-up);
:func:`gaussian_flow` also carries the mean and the flow map of the characteristics.
Closed forms: :func:`exact_covariance_identity_v`, :func:`blowup_time`, :func:`schur_limit`.

*The authors' experiments.* :func:`authors_params` maps the parameters of the authors' code
(``vcastin/2025-transformers-PDEs``: their :math:`1/\sqrt d` and their L2 kernel) to this
module's convention, :func:`authors_histogram_instances` regenerates the random instances of
their rank histograms, and :func:`euler_psd` is their integrator (explicit Euler with a
projection onto the PSD cone), batched, for comparison with :func:`evolve_covariance`.
:func:`field_of_cloud` evaluates a cloud's field at other points (tracers of the mean-field
flow) and :func:`mardia_kurtosis_z` tests a cloud for Gaussianity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from . import _checks as C
from .attention import (
    l2_attention,
    sigmoid_attention,
    sinkhorn_attention,
    softmax_attention,
)

Tensor = torch.Tensor

__all__ = [
    "AUTHORS_HISTOGRAM",
    "CLOSED_VARIANTS",
    "VARIANTS",
    "CovarianceTrajectory",
    "EulerResult",
    "GaussianFlow",
    "affine_field",
    "affine_fit_residual",
    "authors_histogram_instances",
    "authors_params",
    "blowup_time",
    "check_covariance",
    "cone_coordinates",
    "covariance_grid",
    "covariance_rhs",
    "disk_coordinates",
    "euler_psd",
    "evolve_covariance",
    "exact_covariance_identity_v",
    "field_of_cloud",
    "from_cone_coordinates",
    "gaussian_flow",
    "loglog_slope",
    "mardia_kurtosis_z",
    "mean_rhs",
    "numerical_rank",
    "particle_velocity",
    "psd_project",
    "rk4",
    "schur_limit",
    "sphere_velocity",
    "split_heads",
    "trace_crossing_times",
]

VARIANTS = ("softmax", "l2", "sigmoid", "sinkhorn", "multihead")
CLOSED_VARIANTS = ("softmax", "l2", "sinkhorn", "multihead")


# ----------------------------------------------------------------------------------------------
# Particles (torch)
# ----------------------------------------------------------------------------------------------

def _variant(variant: str, allowed: tuple[str, ...]) -> str:
    if variant not in allowed:
        raise ValueError(f"variant must be one of {allowed}, got {variant!r}")
    return variant


def _qkv_params(Q, K, V, d: int, multihead: bool, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    Q = C.float_tensor(Q, "Q", min_dim=2)
    K = C.float_tensor(K, "K", min_dim=2)
    V = C.float_tensor(V, "V", min_dim=2)
    nd = 3 if multihead else 2
    for t, name in ((Q, "Q"), (K, "K"), (V, "V")):
        if t.dim() != nd:
            raise ValueError(f"{name} must have {nd} dimensions for this variant, got shape {tuple(t.shape)}")
    if Q.shape != K.shape:
        raise ValueError(f"Q and K must have the same shape, got {tuple(Q.shape)} and {tuple(K.shape)}")
    if Q.shape[-1] != d:
        raise ValueError(f"Q must act on R^{d} (last dimension {d}), got shape {tuple(Q.shape)}")
    if V.shape[-2:] != (d, d):
        raise ValueError(f"V must end in shape ({d}, {d}), got {tuple(V.shape)}")
    if multihead and V.shape[0] != Q.shape[0]:
        raise ValueError(f"Q has {Q.shape[0]} heads but V has {V.shape[0]}")
    return tuple(t.to(dtype=like.dtype, device=like.device) for t in (Q, K, V))  # type: ignore[return-value]


def _row_chunks(n: int, chunk_size: int | None):
    if chunk_size is None or chunk_size >= n:
        yield 0, n
        return
    C.positive_int(chunk_size, "chunk_size")
    for s in range(0, n, chunk_size):
        yield s, min(s + chunk_size, n)


def _same_width(q: Tensor, k: Tensor, v: Tensor, extra: int) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-pad queries/keys (no logit changes) or values (extra columns, sliced off afterwards)
    so that values have the queries' width plus ``extra``: the CPU fused kernel takes its fast
    path only when the widths agree (3-4x faster for d = 2 and 4, float64)."""
    r, e = q.shape[-1] + extra, v.shape[-1]
    if e > r:
        pad = (0, e - r)
        return torch.nn.functional.pad(q, pad), torch.nn.functional.pad(k, pad), v
    if e < r:
        return q, k, torch.nn.functional.pad(v, (0, r - e))
    return q, k, v


def particle_velocity(
    x: Tensor,
    *,
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    variant: str = "softmax",
    causal: bool = False,
    bias: float = 0.0,
    sinkhorn_tol: float = 1e-10,
    sinkhorn_max_iter: int = 10_000,
    chunk_size: int | None = None,
) -> Tensor:
    r"""The attention velocity field :math:`\Gamma_\mu(x_i)` of a token cloud against itself.

    With queries :math:`q_i = Qx_i`, keys :math:`k_j = Kx_j` and values :math:`v_j = Vx_j`
    (no :math:`1/\sqrt d`: ``beta = 1`` in :mod:`lib.attention`):

    * ``"softmax"``: :math:`\Gamma_i = \sum_j \mathrm{softmax}_j(q_i\cdot k_j)\, v_j`
      (:func:`~lib.attention.softmax_attention`, the fused kernel);
    * ``"l2"``: weights :math:`\propto e^{-\|q_i - k_j\|^2}` (:func:`~lib.attention.l2_attention`);
    * ``"sigmoid"``: :math:`\Gamma_i = \frac1N\sum_j \sigma(q_i\cdot k_j + b)\, v_j`, unnormalised
      (:func:`~lib.attention.sigmoid_attention`, ``bias`` is :math:`b`);
    * ``"sinkhorn"``: the doubly stochastic plan :math:`P` (entropic OT of :math:`\mu` with itself
      for the cost :math:`-\langle Qx, Ky\rangle`, :math:`\varepsilon=1`), :math:`\Gamma_i=\sum_j P_{ij} v_j`
      (:func:`~lib.attention.sinkhorn_attention`, log domain, to ``sinkhorn_tol``);
    * ``"multihead"``: :math:`\Gamma_i = \sum_h \sum_j \mathrm{softmax}_j(\langle Q_hx_i, K_hx_j\rangle) V_h x_j`.

    ``causal=True`` lets token ``i`` attend to tokens ``j <= i`` only (masked attention; not for
    Sinkhorn, whose plan is defined for the whole cloud).

    Parameters
    ----------
    x
        Tokens, ``(..., N, d)``, any float dtype (float64 for the book's checks).
    Q, K
        ``(r, d)``; for ``"multihead"`` ``(H, r, d)``.
    V
        ``(d, d)``; for ``"multihead"`` ``(H, d, d)``.
    causal
        Masked attention: token ``i`` attends to tokens ``j <= i`` (row order = position).
    bias
        The sigmoid's bias :math:`b` (``"sigmoid"`` only).
    sinkhorn_tol, sinkhorn_max_iter
        Column-marginal tolerance and iteration cap of the log-domain Sinkhorn loop.
    chunk_size
        Sigmoid only: evaluate this many query rows at a time (never holds the ``N x N``
        weights; exact). Softmax, multi-head and L2 always run as one fused call (no ``N x N``
        matrix); Sinkhorn needs the whole plan. They ignore it.

    Returns
    -------
    Tensor ``(..., N, d)``. Source: the paper's particle system (Sec. 2); used by chapter 3.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    _variant(variant, VARIANTS)
    d = x.shape[-1]
    Q, K, V = _qkv_params(Q, K, V, d, variant == "multihead", x)
    if variant == "sinkhorn" and causal:
        raise ValueError("causal=True is not defined for Sinkhorn attention (a doubly stochastic plan needs all keys)")
    n = x.shape[-2]
    if variant == "multihead":
        q = torch.einsum("...nd,hrd->...hnr", x, Q)
        k = torch.einsum("...nd,hrd->...hnr", x, K)
        v = torch.einsum("...nd,hed->...hne", x, V)
    else:
        q, k, v = x @ Q.T, x @ K.T, x @ V.T
    if variant == "sinkhorn":
        return sinkhorn_attention(q, k, v, beta=1.0, tol=sinkhorn_tol, max_iter=sinkhorn_max_iter).output
    if variant in ("softmax", "multihead"):
        # One call on the whole cloud: lib.attention hands it to the fused (tiled) kernel, which
        # never holds the N x N weights, with the causal structure passed as a flag.
        qp, kp, vp = _same_width(q, k, v, 0)
        out = softmax_attention(qp, kp, vp, beta=1.0, causal=causal)[..., : v.shape[-1]]
        return out.sum(dim=-3) if variant == "multihead" else out
    if variant == "l2":  # also one fused call (lib.attention adds one key coordinate)
        _, _, vp = _same_width(q, k, v, 1)
        return l2_attention(q, k, vp, beta=1.0, causal=causal)[..., : v.shape[-1]]
    outs = []
    for s, e in _row_chunks(n, chunk_size):
        mask = None
        if causal:
            mask = torch.arange(n, device=x.device)[None, :] <= torch.arange(s, e, device=x.device)[:, None]
        outs.append(sigmoid_attention(q[..., s:e, :], k, v, beta=1.0, bias=bias, mask=mask))
    return torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0]


def field_of_cloud(
    y: Tensor,
    x: Tensor,
    *,
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    variant: str = "softmax",
    bias: float = 0.0,
    positions: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    r"""The attention field of the cloud ``x`` evaluated at other points ``y``: :math:`\Gamma_{\mu_x}(y_i)`.

    Queries :math:`Qy_i`, keys :math:`Kx_j`, values :math:`Vx_j`, with
    :math:`\mu_x = \frac1M\sum_j\delta_{x_j}` (softmax, L2 or sigmoid as in
    :func:`particle_velocity`; ``"multihead"`` sums the softmax fields of the heads of
    :func:`split_heads`, as :func:`particle_velocity` does). Tracer points ``y`` moved by this field follow the characteristics
    of the mean-field flow approximated by ``x``: the synchronous coupling used to measure the
    mean-field limit against an *independent* reference cloud (chapter 3, claim 3.11).

    ``y`` ``(..., n, d)``, ``x`` ``(..., m, d)``; ``positions = (s_y, s_x)`` (``(n,)``, ``(m,)``)
    makes it masked: point ``i`` sees the tokens ``j`` with :math:`s_{x,j} \le s_{y,i}`.
    """
    y = C.float_tensor(y, "y", min_dim=2)
    x = C.float_tensor(x, "x", min_dim=2)
    _variant(variant, ("softmax", "l2", "sigmoid", "multihead"))
    if variant == "multihead":
        # sum over heads of softmax fields; Q, K (H, k, d), V (H, d, d) as from split_heads
        Qs, Ks, Vs = (torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a,
                                      dtype=x.dtype, device=x.device) for a in (Q, K, V))
        if Qs.ndim != 3 or Ks.shape != Qs.shape or Vs.ndim != 3 or Vs.shape[0] != Qs.shape[0]:
            raise ValueError("multihead needs Q, K (H, k, d) and V (H, d, d) as from split_heads, got "
                             f"{tuple(Qs.shape)}, {tuple(Ks.shape)}, {tuple(Vs.shape)}")
        return sum(field_of_cloud(y, x, Q=Qs[h], K=Ks[h], V=Vs[h], variant="softmax", positions=positions)
                   for h in range(Qs.shape[0]))
    if y.shape[-1] != x.shape[-1]:
        raise ValueError(f"y and x must share the last dimension, got {tuple(y.shape)} and {tuple(x.shape)}")
    Q, K, V = _qkv_params(Q, K, V, x.shape[-1], False, x)
    mask = None
    if positions is not None:
        sy, sx = (torch.as_tensor(p, device=x.device) for p in positions)
        if sy.shape != (y.shape[-2],) or sx.shape != (x.shape[-2],):
            raise ValueError(f"positions must be ({y.shape[-2]},) and ({x.shape[-2]},), got {tuple(sy.shape)}, {tuple(sx.shape)}")
        mask = sx[None, :] <= sy[:, None]
        if not bool(mask.any(-1).all()):
            raise ValueError("every point must see at least one token (positions)")
    q, k, v = y @ Q.T, x @ K.T, x @ V.T
    e = v.shape[-1]
    if variant == "softmax":
        qp, kp, vp = _same_width(q, k, v, 0)
        return softmax_attention(qp, kp, vp, beta=1.0, mask=mask)[..., :e]
    if variant == "l2":
        _, _, vp = _same_width(q, k, v, 1)
        return l2_attention(q, k, vp, beta=1.0, mask=mask)[..., :e]
    return sigmoid_attention(q, k, v, beta=1.0, bias=bias, mask=mask)


def sphere_velocity(x: Tensor, *, beta: float = 1.0, chunk_size: int | None = None) -> Tensor:
    r"""Tangential attention field of tokens on the unit sphere (Q = K = V = I).

    .. math:: \dot x_i = P^\perp_{x_i}\Big(\sum_j \frac{e^{\beta\langle x_i, x_j\rangle}}{\sum_l e^{\beta\langle x_i, x_l\rangle}}\, x_j\Big),
       \qquad P^\perp_x y = y - \langle x, y\rangle x,

    the model of Geshkovski, Letrouit, Polyanskiy and Rigollet (arXiv:2312.10794, eq. (SA)).
    ``x`` is ``(..., N, d)`` with unit rows; ``beta`` the inverse temperature; one call to the
    fused kernel (``chunk_size`` is accepted and ignored). Chapter 3, claim 3.10.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    beta = C.positive(beta, "beta")
    if chunk_size is not None:
        C.positive_int(chunk_size, "chunk_size")   # accepted for compatibility: one fused call
    a = softmax_attention(x, x, x, beta=beta)
    return a - (a * x).sum(-1, keepdim=True) * x


def rk4(
    f: Callable[[float, Tensor], Tensor],
    x0: Tensor,
    *,
    t1: float,
    n_steps: int,
    t0: float = 0.0,
    project: Callable[[Tensor], Tensor] | None = None,
    save_every: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Classical fixed-step Runge-Kutta scheme (order 4) for a particle system :math:`\dot x = f(t, x)`.

    .. math:: x_{n+1} = x_n + \tfrac h6(k_1 + 2k_2 + 2k_3 + k_4),\quad
       k_1 = f(t_n, x_n),\ k_2 = f(t_n+\tfrac h2, x_n+\tfrac h2 k_1),\ k_3 = f(t_n+\tfrac h2, x_n+\tfrac h2 k_2),\
       k_4 = f(t_n+h, x_n+hk_3),

    with :math:`h = (t_1 - t_0)/n_\text{steps}`. The state is one tensor (e.g. all particles
    ``(..., N, d)``): every stage is one vectorised call of ``f``. ``project`` (optional) is
    applied after every step (e.g. back onto the sphere). With ``save_every = s`` returns
    ``(times, states)`` with the state every ``s`` steps (and the initial one), else the final state.
    Used by chapter 3 for every particle system.
    """
    x = C.float_tensor(x0, "x0", min_dim=1)
    C.positive_int(n_steps, "n_steps")
    if not (math.isfinite(t0) and math.isfinite(t1)) or t1 <= t0:
        raise ValueError(f"need finite t0 < t1, got t0={t0}, t1={t1}")
    if save_every is not None:
        C.positive_int(save_every, "save_every")
    h = (t1 - t0) / n_steps
    times, states = [t0], [x]
    t = t0
    for i in range(n_steps):
        k1 = f(t, x)
        k2 = f(t + h / 2, x + (h / 2) * k1)
        k3 = f(t + h / 2, x + (h / 2) * k2)
        k4 = f(t + h, x + h * k3)
        x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
        if project is not None:
            x = project(x)
        t = t0 + (i + 1) * h
        if save_every is not None and ((i + 1) % save_every == 0 or i + 1 == n_steps):
            times.append(t)
            states.append(x)
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError("rk4: the state became non-finite (step too large or the solution blows up)")
    if save_every is None:
        return x
    return torch.tensor(times, dtype=x.dtype), torch.stack(states)


def split_heads(Q: np.ndarray, K: np.ndarray, V: np.ndarray, n_heads: int, *, scale: bool = True):
    r"""Multi-head parameters in the authors' layout (``rhs_multihead`` of their repository).

    Head ``h`` takes the rows :math:`[hk, (h+1)k)` of ``Q``, ``K`` and ``V`` (``k = d // H``) and
    writes into the same coordinates of the residual stream (output map :math:`W = I`):
    :math:`Q_h = Q_{[h]}/k^{1/4}`, :math:`K_h = K_{[h]}/k^{1/4}` (so the logits carry
    :math:`1/\sqrt k` when ``scale``), :math:`V_h = I_{[:, h]} V_{[h]}` (``(d, d)``, zero outside
    the head's rows). Returns stacked numpy arrays ``(H, k, d)``, ``(H, k, d)``, ``(H, d, d)``;
    a ``Q`` with fewer rows than ``d`` leaves later heads empty (zero), as in the authors' code.
    """
    Q, K, V = (np.asarray(a, dtype=float) for a in (Q, K, V))
    C.positive_int(n_heads, "n_heads")
    if V.ndim != 2 or V.shape[0] != V.shape[1]:
        raise ValueError(f"V must be square (d, d), got shape {V.shape}")
    d = V.shape[0]
    if Q.ndim != 2 or Q.shape != K.shape or Q.shape[1] != d:
        raise ValueError(f"Q and K must both be (r, {d}) with the same shape, got {Q.shape} and {K.shape}")
    for a, name in ((Q, "Q"), (K, "K"), (V, "V")):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if d % n_heads:
        raise ValueError(f"d={d} is not divisible by n_heads={n_heads}")
    k = d // n_heads
    s = k ** -0.25 if scale else 1.0
    Qh = np.zeros((n_heads, k, d))
    Kh = np.zeros((n_heads, k, d))
    Vh = np.zeros((n_heads, d, d))
    for h in range(n_heads):
        rows = Q[h * k:(h + 1) * k]
        Qh[h, : rows.shape[0]] = s * rows
        Kh[h, : rows.shape[0]] = s * K[h * k:(h + 1) * k]
        Vh[h, h * k:(h + 1) * k] = V[h * k:(h + 1) * k]
    return Qh, Kh, Vh


# ----------------------------------------------------------------------------------------------
# Gaussian closure (numpy)
# ----------------------------------------------------------------------------------------------

def check_covariance(S: np.ndarray, name: str = "S", *, rtol: float = 1e-8) -> np.ndarray:
    """Return ``S`` as a float array if it is a finite symmetric PSD ``(d, d)`` matrix, else raise ``ValueError``.

    Symmetry and the smallest eigenvalue are judged relative to :math:`\\max(1, \\|S\\|)` with ``rtol``.
    """
    S = np.asarray(S, dtype=float)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    scale = max(1.0, float(np.abs(S).max()))
    if np.abs(S - S.T).max() > rtol * scale:
        raise ValueError(f"{name} must be symmetric (max asymmetry {np.abs(S - S.T).max():.3g})")
    lam = np.linalg.eigvalsh(S).min()
    if lam < -rtol * scale:
        raise ValueError(f"{name} must be positive semi-definite, its smallest eigenvalue is {lam:.3g}")
    return S


def _params_np(Q, K, V, d: int, variant: str):
    Q, K, V = (np.asarray(a, dtype=float) for a in (Q, K, V))
    nd = 3 if variant == "multihead" else 2
    for a, name in ((Q, "Q"), (K, "K"), (V, "V")):
        if a.ndim != nd:
            raise ValueError(f"{name} must have {nd} dimensions for variant {variant!r}, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if Q.shape != K.shape or Q.shape[-1] != d or V.shape[-2:] != (d, d):
        raise ValueError(f"shapes do not fit d={d}: Q {Q.shape}, K {K.shape}, V {V.shape}")
    if variant == "multihead" and V.shape[0] != Q.shape[0]:
        raise ValueError(f"Q and K have {Q.shape[0]} heads but V has {V.shape[0]} heads")
    return Q, K, V


def _sym_sqrt(M: np.ndarray, inverse: bool = False) -> np.ndarray:
    lam, U = np.linalg.eigh((M + M.T) / 2)
    lam = np.clip(lam, 0.0, None)
    if inverse:
        if lam.min() <= 1e-300:
            raise ValueError("the covariance is singular: the Sinkhorn closure needs S invertible")
        lam = 1.0 / lam
    return (U * np.sqrt(lam)) @ U.T


def _sinkhorn_B(S: np.ndarray, A: np.ndarray, V: np.ndarray) -> np.ndarray:
    # Entropic OT (eps = 1) of N(m,S) with itself for the cost -y^T A x: the plan is Gaussian with
    # cross-covariance C, E[y|x] = m + C^T S^{-1} (x - m). Authors' form: C^T S^{-1} = A^{-T} S^{-1} C_S,
    # C_S = (S^{1/2} (I + 4 S^{1/2} A^T S A S^{1/2})^{1/2} S^{-1/2} - I) / 2.
    d = S.shape[0]
    r = _sym_sqrt(S)
    ri = _sym_sqrt(S, inverse=True)
    M = np.eye(d) + 4.0 * r @ A.T @ S @ A @ r
    CS = 0.5 * (r @ _sym_sqrt(M) @ ri - np.eye(d))
    return V @ np.linalg.solve(A.T, ri @ ri @ CS)


def _field(m: np.ndarray | None, S: np.ndarray, Q, K, V, variant: str):
    d = S.shape[0]
    I = np.eye(d)
    if variant == "softmax":
        B = V @ S @ (K.T @ Q)
        c = None if m is None else V @ m
    elif variant == "l2":
        G = np.linalg.solve(I + 2.0 * S @ K.T @ K, np.concatenate([S, I], axis=1))
        B = 2.0 * V @ G[:, :d] @ (K.T @ Q)
        c = None if m is None else V @ G[:, d:] @ m
    elif variant == "multihead":
        B = np.einsum("hij,jk,hlk,hlm->im", V, S, K, Q)
        c = None if m is None else V.sum(0) @ m
    elif variant == "sinkhorn":
        B = _sinkhorn_B(S, K.T @ Q, V)
        c = None if m is None else V @ m - B @ m
    else:
        raise ValueError(f"variant must be one of {CLOSED_VARIANTS} for the Gaussian closure, got {variant!r}")
    return B, c


def _sinkhorn_guard(Q, K, variant):
    if variant == "sinkhorn":
        A = K.T @ Q
        if A.shape[0] != A.shape[1] or np.linalg.cond(A) > 1e12:
            raise ValueError("the Sinkhorn closure needs A = K^T Q invertible (got a singular A); "
                             "use a full-rank Q and K")


def _gaussian_inputs(m, S, Q, K, V, variant: str, *, names: tuple[str, str]):
    """Validate a Gaussian N(m, S) and the attention parameters for a closed-form variant."""
    _variant(variant, CLOSED_VARIANTS)
    S = check_covariance(S, names[1])
    d = S.shape[0]
    m = np.asarray(m, dtype=float)
    if m.shape != (d,):
        raise ValueError(f"{names[0]} must be a vector of shape ({d},), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{names[0]} contains non-finite values (NaN or inf)")
    Q, K, V = _params_np(Q, K, V, d, variant)
    _sinkhorn_guard(Q, K, variant)
    return m, S, Q, K, V


def affine_field(m: np.ndarray, S: np.ndarray, *, Q, K, V, variant: str = "softmax") -> tuple[np.ndarray, np.ndarray]:
    r"""The attention field of :math:`\mu=\mathcal N(m,\Sigma)`, which is affine: :math:`\Gamma_\mu(x) = Bx + c`.

    Write :math:`A = K^\top Q` (``(d, d)``). Tilting :math:`\mathcal N(m,\Sigma)` by
    :math:`e^{y^\top b}` gives :math:`\mathcal N(m + \Sigma b, \Sigma)`, hence

    * softmax: :math:`\Gamma(x) = V(m + \Sigma A x)`, so :math:`B = V\Sigma A`, :math:`c = Vm`;
    * L2 (kernel :math:`e^{-\|Qx-Ky\|^2}`): :math:`\Gamma(x) = V(I + 2\Sigma K^\top K)^{-1}(m + 2\Sigma A x)`;
    * multi-head: :math:`\Gamma(x) = \sum_h V_h(m + \Sigma A_h x)`, :math:`A_h = K_h^\top Q_h`;
    * Sinkhorn (:math:`\varepsilon = 1`): the entropic plan is Gaussian with cross-covariance
      :math:`C`, :math:`\Gamma(x) = V(m + C^\top\Sigma^{-1}(x - m))`, with the authors' closed form
      :math:`C^\top\Sigma^{-1} = A^{-\top}\Sigma^{-1}C_\Sigma`,
      :math:`C_\Sigma = \tfrac12(\Sigma^{1/2}(I + 4\Sigma^{1/2}A^\top\Sigma A\Sigma^{1/2})^{1/2}\Sigma^{-1/2} - I)`
      (needs :math:`A` and :math:`\Sigma` invertible).

    Parameters: ``m`` ``(d,)``, ``S`` = :math:`\Sigma` ``(d, d)`` symmetric PSD; ``Q``, ``K``
    ``(r, d)`` and ``V`` ``(d, d)`` (multi-head: ``(H, r, d)``, ``(H, r, d)``, ``(H, d, d)``).
    Returns ``(B, c)``. Source: the paper's Gaussian closure (Sec. on Gaussian initial data) and
    the authors' ``rhs_*`` functions; chapter 3, claim 3.1.
    """
    m, S, Q, K, V = _gaussian_inputs(m, S, Q, K, V, variant, names=("m", "S"))
    return _field(m, S, Q, K, V, variant)


def covariance_rhs(S: np.ndarray, *, Q, K, V, variant: str = "softmax") -> np.ndarray:
    r"""Right-hand side of the covariance ODE :math:`\dot\Sigma = B\Sigma + \Sigma B^\top` (:func:`affine_field`).

    For softmax this is :math:`V\Sigma A\Sigma + \Sigma A^\top\Sigma V^\top`. It does not involve the mean.
    """
    _variant(variant, CLOSED_VARIANTS)
    S = check_covariance(S, "S")
    Q, K, V = _params_np(Q, K, V, S.shape[0], variant)
    _sinkhorn_guard(Q, K, variant)
    B, _ = _field(None, S, Q, K, V, variant)
    return B @ S + S @ B.T


def mean_rhs(m: np.ndarray, S: np.ndarray, *, Q, K, V, variant: str = "softmax") -> np.ndarray:
    r"""Right-hand side of the mean ODE :math:`\dot m = Bm + c`; softmax: :math:`V(I + \Sigma A)m`, Sinkhorn: :math:`Vm`."""
    B, c = affine_field(m, S, Q=Q, K=K, V=V, variant=variant)
    return B @ np.asarray(m, dtype=float) + c


def psd_project(S: np.ndarray) -> tuple[np.ndarray, float]:
    """Nearest symmetric PSD matrix (eigenvalues clipped at 0) and the largest clipped amount.

    Works on ``(..., d, d)``; the second output is the most negative eigenvalue removed (>= 0).
    """
    S = np.asarray(S, dtype=float)
    Ss = (S + np.swapaxes(S, -1, -2)) / 2
    lam, U = np.linalg.eigh(Ss)
    neg = float(max(0.0, -lam.min()))
    return (U * np.clip(lam, 0.0, None)[..., None, :]) @ np.swapaxes(U, -1, -2), neg


@dataclass
class CovarianceTrajectory:
    """Output of :func:`evolve_covariance`.

    ``t`` ``(n,)`` times, ``S`` ``(n, d, d)`` covariances (projected onto the PSD cone),
    ``status`` one of ``"converged"`` (``||dS/dt||_F`` fell below ``stop_rhs``), ``"blow-up"``
    (``tr S`` reached ``stop_trace``), ``"t_max"``; ``psd_violation`` the largest negative
    eigenvalue the projection removed (round-off, should be tiny); ``nfev`` right-hand side calls;
    ``t_mark``, ``S_mark`` the first time and state at which ``||dS/dt||_F`` fell to ``mark_rhs``
    (``None`` if it never did or no ``mark_rhs`` was given).
    """

    t: np.ndarray
    S: np.ndarray
    status: str
    psd_violation: float
    nfev: int
    t_mark: float | None = None
    S_mark: np.ndarray | None = None

    @property
    def final(self) -> np.ndarray:
        return self.S[-1]

    @property
    def trace(self) -> np.ndarray:
        return np.trace(self.S, axis1=-2, axis2=-1)


def evolve_covariance(
    S0: np.ndarray,
    *,
    Q,
    K,
    V,
    variant: str = "softmax",
    t_max: float,
    t_eval: np.ndarray | None = None,
    method: str = "LSODA",
    rtol: float = 1e-8,
    atol: float = 1e-12,
    stop_rhs: float | None = None,
    stop_trace: float | None = None,
    mark_rhs: float | None = None,
) -> CovarianceTrajectory:
    r"""Integrate :math:`\dot\Sigma = B(\Sigma)\Sigma + \Sigma B(\Sigma)^\top` with :func:`scipy.integrate.solve_ivp`.

    A stiff-capable solver (default ``LSODA``; ``Radau``/``BDF``/``DOP853`` also work) on the
    ``d*d`` entries, symmetrised at every evaluation. Terminal events: ``||dS/dt||_F <= stop_rhs``
    (the authors' stopping rule, status ``"converged"``) and ``tr S >= stop_trace`` (status
    ``"blow-up"``); otherwise it runs to ``t_max`` (status ``"t_max"``).

    A finite-time blow-up is always caught: without ``stop_trace`` a guard event stops the
    integration at :math:`\mathrm{tr}\,\Sigma \ge 10^{12}\max(1, \mathrm{tr}\,\Sigma_0)`, and a
    solver that fails or returns non-finite states while the trace grows is also reported as
    ``"blow-up"``, with the trajectory cut at its last finite state (never NaN states past the
    event). ``mark_rhs`` records, without stopping, the first state with
    :math:`\|\dot\Sigma\|_F \le` ``mark_rhs`` (``t_mark``, ``S_mark``): one run then gives the
    authors' stopping rule and a long-time state. ``S0`` must be symmetric PSD (``ValueError`` otherwise); the returned covariances are
    projected onto the PSD cone and the size of that correction is reported.
    Chapter 3, claims 3.4 to 3.7.
    """
    _variant(variant, CLOSED_VARIANTS)
    S0 = check_covariance(S0, "S0")
    d = S0.shape[0]
    Q, K, V = _params_np(Q, K, V, d, variant)
    _sinkhorn_guard(Q, K, variant)
    t_max = C.positive(t_max, "t_max")
    if t_eval is not None:
        t_eval = np.asarray(t_eval, dtype=float)
        if t_eval.ndim != 1 or np.any(np.diff(t_eval) <= 0) or t_eval[0] < 0 or t_eval[-1] > t_max:
            raise ValueError("t_eval must be increasing, within [0, t_max]")

    def rhs_mat(S):
        S = (S + S.T) / 2
        B, _ = _field(None, S, Q, K, V, variant)
        return B @ S + S @ B.T

    def f(t, y):
        with np.errstate(over="ignore", invalid="ignore"):
            return rhs_mat(y.reshape(d, d)).ravel()

    events = []
    if stop_rhs is not None:
        stop_rhs = C.positive(stop_rhs, "stop_rhs")

        def ev_conv(t, y):
            with np.errstate(over="ignore", invalid="ignore"):
                return np.linalg.norm(rhs_mat(y.reshape(d, d))) - stop_rhs

        ev_conv.terminal, ev_conv.direction = True, -1
        events.append(ev_conv)
    if mark_rhs is not None:
        mark_rhs = C.positive(mark_rhs, "mark_rhs")

        def ev_mark(t, y):
            with np.errstate(over="ignore", invalid="ignore"):
                return np.linalg.norm(rhs_mat(y.reshape(d, d))) - mark_rhs

        ev_mark.terminal, ev_mark.direction = False, -1
    guard = 1e12 * max(1.0, float(np.trace(S0)))
    level = guard if stop_trace is None else C.positive(stop_trace, "stop_trace")

    def ev_blow(t, y):
        return np.trace(y.reshape(d, d)) - level

    ev_blow.terminal, ev_blow.direction = True, 1
    events.append(ev_blow)
    if mark_rhs is not None:
        events.append(ev_mark)
    sol = solve_ivp(f, (0.0, t_max), S0.ravel(), method=method, rtol=rtol, atol=atol, t_eval=t_eval, events=events)
    ts, ys = sol.t, sol.y.T
    finite = np.all(np.isfinite(ys), axis=1)
    if not finite.all():  # cut at the last finite state
        k = int(np.argmin(finite))
        ts, ys = ts[:k], ys[:k]
    status = "t_max"
    if sol.status == 1:
        conv_fired = stop_rhs is not None and sol.t_events[0].size > 0
        status = "converged" if conv_fired else "blow-up"
        nterm = len(events) - (mark_rhs is not None)
        te = np.concatenate([e for e in sol.t_events[:nterm] if e.size])[:1]
        ye = np.concatenate([e for e in sol.y_events[:nterm] if e.size])[:1]
        if ts.size == 0 or ts[-1] < te[0]:
            ts, ys = np.concatenate([ts, te]), np.concatenate([ys, ye])
    grew = ts.size > 0 and np.trace(ys[-1].reshape(d, d)) > 1e3 * max(1.0, float(np.trace(S0)))
    if sol.status == -1 or not finite.all():
        if not grew:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        status = "blow-up"
    if ts.size == 0:
        raise RuntimeError("solve_ivp returned no finite state")
    Ss, neg = psd_project(ys.reshape(-1, d, d))
    t_mark = S_mark = None
    if mark_rhs is not None and sol.t_events[-1].size:
        t_mark = float(sol.t_events[-1][0])
        S_mark = psd_project(sol.y_events[-1][0].reshape(d, d))[0]
    return CovarianceTrajectory(t=ts, S=Ss, status=status, psd_violation=neg, nfev=int(sol.nfev),
                                t_mark=t_mark, S_mark=S_mark)


@dataclass
class GaussianFlow:
    r"""Output of :func:`gaussian_flow`: times ``t`` ``(n,)``, means ``m`` ``(n, d)``, covariances
    ``S`` ``(n, d, d)`` and the flow map ``Phi`` ``(n, d, d)`` of the characteristics,
    :math:`y(t) = m(t) + \Phi(t)(y(0) - m(0))`."""

    t: np.ndarray
    m: np.ndarray
    S: np.ndarray
    Phi: np.ndarray

    def transport(self, y0: np.ndarray, index: int = -1) -> np.ndarray:
        """Move points ``y0`` ``(N, d)`` along the characteristics to time ``t[index]``."""
        y0 = np.asarray(y0, dtype=float)
        return self.m[index] + (y0 - self.m[0]) @ self.Phi[index].T


def gaussian_flow(
    m0: np.ndarray, S0: np.ndarray, *, Q, K, V, variant: str = "softmax", t_eval: np.ndarray,
    method: str = "DOP853", rtol: float = 1e-11, atol: float = 1e-13,
) -> GaussianFlow:
    r"""Solve the closed Gaussian system and its characteristics:

    .. math:: \dot m = Bm + c,\quad \dot\Sigma = B\Sigma + \Sigma B^\top,\quad \dot\Phi = B\Phi,\ \Phi(0) = I,

    with :math:`(B, c)` from :func:`affine_field`. A token :math:`y` of the mean-field flow
    moves with :math:`\dot y = By + c`, so :math:`y(t) - m(t) = \Phi(t)(y(0) - m(0))`: the Gaussian
    pushes forward by an affine map. ``t_eval`` (increasing, starting at 0) are the output times.
    Chapter 3, claims 3.2, 3.3, 3.8.
    """
    m0, S0, Q, K, V = _gaussian_inputs(m0, S0, Q, K, V, variant, names=("m0", "S0"))
    d = S0.shape[0]
    t_eval = np.asarray(t_eval, dtype=float)
    if t_eval.ndim != 1 or t_eval[0] != 0.0 or np.any(np.diff(t_eval) <= 0):
        raise ValueError("t_eval must be increasing and start at 0")

    def f(t, y):
        m, S, P = y[:d], y[d:d + d * d].reshape(d, d), y[d + d * d:].reshape(d, d)
        S = (S + S.T) / 2
        B, c = _field(m, S, Q, K, V, variant)
        return np.concatenate([B @ m + c, (B @ S + S @ B.T).ravel(), (B @ P).ravel()])

    y0 = np.concatenate([m0, S0.ravel(), np.eye(d).ravel()])
    if t_eval[-1] == 0.0:
        ys = y0[None]
    else:
        sol = solve_ivp(f, (0.0, t_eval[-1]), y0, method=method, rtol=rtol, atol=atol, t_eval=t_eval)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        ys = sol.y.T
    return GaussianFlow(t=t_eval, m=ys[:, :d], S=ys[:, d:d + d * d].reshape(-1, d, d),
                        Phi=ys[:, d + d * d:].reshape(-1, d, d))


def authors_params(Q, K, V, *, variant: str, n_heads: int = 1):
    r"""Map the authors' parameters (their ``rhs_*`` functions) to this module's convention.

    The authors' repository (``vcastin/2025-transformers-PDEs``, ``utils.py``) scales the logits
    by :math:`1/\sqrt d` for softmax and L2 and by :math:`1/\sqrt k` per head of dimension
    :math:`k = d/H` for multi-head attention, and not at all for Sinkhorn. For L2 only the cross
    term carries the scale: their field is the kernel
    :math:`e^{2\langle Qx, Ky\rangle/\sqrt d - \|Ky\|^2}`, which after normalisation is the
    L2 kernel :math:`e^{-\|Q'x - Ky\|^2}` of this module with :math:`Q' = Q/\sqrt d` (the
    :math:`\|Q'x\|^2` factor cancels). So their system is this module's with

    * ``"softmax"``, ``"l2"``: :math:`(Q/\sqrt d, K, V)`;
    * ``"multihead"``: :func:`split_heads` with ``n_heads`` and ``scale=True``;
    * ``"sinkhorn"``: :math:`(Q, K, V)` unchanged.

    ``Q``, ``K`` ``(r, d)``, ``V`` ``(d, d)`` as in the authors' scripts; ``n_heads`` is their
    ``H`` (multi-head only, ignored otherwise). Returns ``(Q, K, V)``
    for :func:`evolve_covariance`, :func:`covariance_rhs` etc. (stacked per head for
    ``"multihead"``). Chapter 3 uses it wherever it runs the authors' instances.
    """
    _variant(variant, CLOSED_VARIANTS)
    Q, K, V = (np.asarray(a, dtype=float) for a in (Q, K, V))
    if variant == "multihead":
        return split_heads(Q, K, V, n_heads, scale=True)
    if Q.ndim != 2 or Q.shape != K.shape or V.shape != (Q.shape[1], Q.shape[1]):
        raise ValueError(f"need Q, K (r, d) and V (d, d), got {Q.shape}, {K.shape}, {V.shape}")
    if variant in ("softmax", "l2"):
        return Q / math.sqrt(Q.shape[1]), K, V
    return Q, K, V


def _batched(a: np.ndarray, n: int, nd: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim == nd:
        a = np.broadcast_to(a, (n, *a.shape))
    if a.ndim != nd + 1 or a.shape[0] != n:
        raise ValueError(f"{name} must be shared ({nd}-D) or one per instance ({n}, ...), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return a


def _rhs_batched(S: np.ndarray, Q, K, V, variant: str) -> np.ndarray:
    """dS/dt for a batch ``S`` ``(n, d, d)`` with per-instance parameters (softmax, L2, multi-head)."""
    d = S.shape[-1]
    if variant == "softmax":
        B = V @ S @ (np.swapaxes(K, -1, -2) @ Q)
    elif variant == "l2":
        KK = np.swapaxes(K, -1, -2) @ K
        B = 2.0 * V @ np.linalg.solve(np.eye(d) + 2.0 * S @ KK, S) @ (np.swapaxes(K, -1, -2) @ Q)
    elif variant == "multihead":
        B = np.einsum("nhij,njk,nhlk,nhlm->nim", V, S, K, Q)
    else:  # sinkhorn: per instance
        B = np.stack([_field(None, S[i], Q[i], K[i], V[i], variant)[0] for i in range(S.shape[0])])
    return B @ S + S @ np.swapaxes(B, -1, -2)


@dataclass
class EulerResult:
    r"""Output of :func:`euler_psd` for ``n`` instances.

    ``S`` ``(n, d, d)``: the last iterate each run recorded (the authors keep the iterate whose
    right-hand side fell below ``tol_low``); ``status`` ``(n,)``: ``"converged"``, ``"blow-up"``
    (trace above ``tol_high``) or ``"max_iter"``; ``steps`` ``(n,)`` iterations taken;
    ``S_first`` ``(n, d, d)`` the iterate after the first step; ``clipped`` ``(n,)`` how many
    steps had an eigenvalue clipped by the PSD projection; ``first_clipped`` ``(n,)`` how many
    eigenvalues the first step clipped.
    """

    S: np.ndarray
    status: np.ndarray
    steps: np.ndarray
    S_first: np.ndarray
    clipped: np.ndarray
    first_clipped: np.ndarray


def euler_psd(
    S0: np.ndarray,
    *,
    Q,
    K,
    V,
    variant: str = "softmax",
    step: float,
    tol_low: float,
    tol_high: float = 1e3,
    max_iter: int = 50_000,
    floor: float = 1e-14,
) -> EulerResult:
    r"""The authors' integrator: explicit Euler with a projection onto the PSD cone, batched.

    .. math:: \Sigma_{k+1} = \Pi\big(\Sigma_k + h\,F(\Sigma_k)\big),

    where :math:`F` is :func:`covariance_rhs` and :math:`\Pi` replaces every negative eigenvalue
    by ``floor`` (their ``psd_projection``, ``1e-14``). A run stops when
    :math:`\|F(\Sigma_k)\|_F <` ``tol_low`` (converged: :math:`\Sigma_k` is kept),
    :math:`\mathrm{tr}\,\Sigma_{k+1} >` ``tol_high`` (blow-up) or after ``max_iter`` steps, as in
    their ``evolution``. Steps are vectorised over the ``n`` instances; finished ones are frozen.

    Parameters
    ----------
    S0
        ``(n, d, d)`` (or ``(d, d)``) symmetric PSD initial covariances.
    Q, K, V
        Shared (``(r, d)``, ``(r, d)``, ``(d, d)``; multi-head stacked) or one per instance (a
        leading axis of length ``n``), in this module's convention (:func:`authors_params`).
    step
        The Euler step :math:`h`.
    """
    _variant(variant, CLOSED_VARIANTS)
    S0 = np.asarray(S0, dtype=float)
    if S0.ndim == 2:
        S0 = S0[None]
    if S0.ndim != 3 or S0.shape[1] != S0.shape[2]:
        raise ValueError(f"S0 must be (n, d, d) or (d, d), got shape {S0.shape}")
    for i in range(S0.shape[0]):
        check_covariance(S0[i], f"S0[{i}]")
    n, d = S0.shape[0], S0.shape[1]
    nd = 3 if variant == "multihead" else 2
    Q, K, V = (_batched(a, n, nd, name) for a, name in ((Q, "Q"), (K, "K"), (V, "V")))
    if Q.shape != K.shape or Q.shape[-1] != d or V.shape[-2:] != (d, d):
        raise ValueError(f"shapes do not fit d={d}: Q {Q.shape}, K {K.shape}, V {V.shape}")
    if variant == "multihead" and V.shape[1] != Q.shape[1]:
        raise ValueError(f"Q and K have {Q.shape[1]} heads but V has {V.shape[1]} heads")
    for i in range(n if variant == "sinkhorn" else 0):
        _sinkhorn_guard(Q[i], K[i], variant)
    step = C.positive(step, "step")
    tol_low = C.positive(tol_low, "tol_low")
    tol_high = C.positive(tol_high, "tol_high")
    C.positive_int(max_iter, "max_iter")
    KT = np.swapaxes(K, -1, -2)
    A = KT @ Q if variant in ("softmax", "l2") else None
    KK = KT @ K if variant == "l2" else None
    eye = np.eye(d)

    def rhs(S):
        if variant == "softmax":
            B = V @ S @ A
        elif variant == "l2":
            B = 2.0 * V @ np.linalg.solve(eye + 2.0 * S @ KK, S) @ A
        else:
            B = None
        if B is None:
            return _rhs_batched(S, Q, K, V, variant)
        return B @ S + S @ np.swapaxes(B, -1, -2)

    S = S0.copy()
    out = S0.copy()
    status = np.full(n, "max_iter", dtype=object)
    steps = np.full(n, max_iter)
    clipped = np.zeros(n, dtype=int)
    first_clipped = np.zeros(n, dtype=int)
    S_first = S0.copy()
    live = np.ones(n, dtype=bool)
    for it in range(max_iter):
        F = rhs(S)
        norm = np.sqrt((F * F).sum((-2, -1)))
        Y = S + step * F
        Y = (Y + np.swapaxes(Y, -1, -2)) / 2
        try:  # every iterate positive definite: the projection is the identity (fast path)
            np.linalg.cholesky(Y)
            neg = np.zeros((n, d), dtype=bool)
            Sn, trace = Y, np.trace(Y, axis1=-2, axis2=-1)
        except np.linalg.LinAlgError:
            lam, U = np.linalg.eigh(Y)
            neg = lam < 0
            lam = np.where(neg, floor, lam)
            Sn = (U * lam[:, None, :]) @ np.swapaxes(U, -1, -2)
            trace = lam.sum(-1)
        clipped += neg.any(-1) & live
        if it == 0:
            first_clipped = neg.sum(-1)
            S_first = Sn.copy()
        conv = live & (norm < tol_low)
        blow = live & ~conv & (trace > tol_high)
        out[conv] = S[conv]
        out[blow] = Sn[blow]
        status[conv] = "converged"
        status[blow] = "blow-up"
        steps[conv | blow] = it
        live &= ~(conv | blow)
        S = np.where(live[:, None, None], Sn, S)
        if not live.any():
            break
    out[live] = S[live]
    return EulerResult(S=out, status=status, steps=steps, S_first=S_first, clipped=clipped,
                       first_clipped=first_clipped)


#: The authors' histogram protocol (``histograms.py``): Euler step per dimension (3, 4, 5),
#: stopping tolerance on ``||dS/dt||_F`` and iteration cap, per (variant, V kind).
AUTHORS_HISTOGRAM = {
    ("softmax", "I"): {"step": (0.09, 0.05, 0.02), "tol": 1e-4, "max_iter": 60_000},
    ("softmax", "SPD"): {"step": (0.09, 0.06, 0.02), "tol": 5e-5, "max_iter": 90_000},
    ("l2", "I"): {"step": (0.09, 0.06, 0.02), "tol": 1e-4, "max_iter": 60_000},
    ("l2", "SPD"): {"step": (0.15, 0.15, 0.15), "tol": 5e-5, "max_iter": 50_000},
}


def authors_histogram_instances(variant: str, v_kind: str, *, n_per_dim: int = 100,
                                dims: tuple[int, ...] = (3, 4, 5)) -> dict:
    r"""The random instances of the authors' rank histograms (``histograms.py``), regenerated.

    Their script draws, with numpy's legacy generator, ``Q`` ``(d//2, d)`` standard normal for
    100 instances per dimension (seed 40), ``K = -Q``, ``V = I`` or ``V = G^\top G`` with ``G``
    standard normal (seed 26 for softmax, 27 for L2), and per dimension one initial covariance
    ``S0 = G G^\top`` per instance (seed 41, reset for each dimension). The first
    ``n_per_dim`` instances of each dimension are returned as ``{d: (Q, K, V, S0)}`` with stacked
    arrays, in the authors' convention (map them with :func:`authors_params`). When one of their
    runs did not converge, their script drew a further ``S0`` for the same ``Q``; the sequence
    here assumes every run converged. Chapter 3, claim 3.6.
    """
    _variant(variant, ("softmax", "l2"))
    if v_kind not in ("I", "SPD"):
        raise ValueError(f"v_kind must be 'I' or 'SPD', got {v_kind!r}")
    C.positive_int(n_per_dim, "n_per_dim")
    if n_per_dim > 100:
        raise ValueError("the authors drew 100 instances per dimension")
    rs = np.random.RandomState(40)
    dim_rep = np.repeat(np.asarray(dims), 100)
    Qs = [rs.randn(d // 2, d) for d in dim_rep]
    if v_kind == "SPD":
        rv = np.random.RandomState(26 if variant == "softmax" else 27)
        Vs = [g.T @ g for g in (rv.randn(d, d) for d in dim_rep)]
    else:
        Vs = [np.eye(d) for d in dim_rep]
    out = {}
    for j, d in enumerate(dims):
        ri = np.random.RandomState(41)
        S0 = np.stack([g @ g.T for g in (ri.randn(d, d) for _ in range(n_per_dim))])
        Q = np.stack(Qs[100 * j:100 * j + n_per_dim])
        out[d] = (Q, -Q, np.stack(Vs[100 * j:100 * j + n_per_dim]), S0)
    return out


# ----------------------------------------------------------------------------------------------
# Closed forms for V = I and K = -Q
# ----------------------------------------------------------------------------------------------

def _square(A: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    A = np.asarray(A, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1] or (d is not None and A.shape[0] != d):
        raise ValueError(f"{name} must be a square matrix{'' if d is None else f' of size {d}'}, got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return A


def blowup_time(S0: np.ndarray, A: np.ndarray) -> float:
    r"""Blow-up time of the softmax covariance ODE with :math:`V = I`:

    .. math:: t^* = 1/\lambda_{\max}\big(\Sigma_0^{1/2}(A + A^\top)\Sigma_0^{1/2}\big)

    (``inf`` when that eigenvalue is :math:`\le 0`: no blow-up). ``S0`` ``(d, d)`` PSD, ``A`` = :math:`K^\top Q`.
    Follows from :func:`exact_covariance_identity_v`; chapter 3, claim 3.5.
    """
    S0 = check_covariance(S0, "S0")
    A = _square(A, "A", S0.shape[0])
    r = _sym_sqrt(S0)
    lam = np.linalg.eigvalsh(r @ (A + A.T) @ r).max()
    return math.inf if lam <= 0 else float(1.0 / lam)


def exact_covariance_identity_v(S0: np.ndarray, A: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    r"""Exact covariance of the softmax Gaussian closure when :math:`V = I`.

    :math:`\dot\Sigma = \Sigma A\Sigma + \Sigma A^\top\Sigma` gives
    :math:`\frac{d}{dt}\Sigma^{-1} = -(A + A^\top)`, hence

    .. math:: \Sigma(t) = \big(\Sigma_0^{-1} - t(A + A^\top)\big)^{-1},\qquad 0 \le t < t^*.

    ``S0`` must be positive definite; ``t`` a scalar or ``(n,)`` array (returns ``(d, d)`` or
    ``(n, d, d)``); ``ValueError`` for ``t >= t*`` (:func:`blowup_time`). Book's derivation
    (numerically checked in chapter 3, claim 3.4).
    """
    S0 = check_covariance(S0, "S0")
    A = _square(A, "A", S0.shape[0])
    if np.linalg.eigvalsh(S0).min() <= 0:
        raise ValueError("S0 must be positive definite for the exact formula")
    ts = np.atleast_1d(np.asarray(t, dtype=float))
    if np.any(ts < 0) or not np.all(np.isfinite(ts)):
        raise ValueError("t must be finite and >= 0")
    tstar = blowup_time(S0, A)
    if np.any(ts >= tstar):
        raise ValueError(f"t must be below the blow-up time t* = {tstar:.6g}")
    P = np.linalg.inv(S0)[None] - ts[:, None, None] * (A + A.T)[None]
    out = np.linalg.inv(P)
    out = (out + np.swapaxes(out, -1, -2)) / 2
    return out[0] if np.ndim(t) == 0 else out


def schur_limit(S0: np.ndarray, Q: np.ndarray) -> np.ndarray:
    r"""Limit of the softmax covariance for :math:`V = I`, :math:`K = -Q`, :math:`Q\in\mathbb R^{r\times d}` of rank ``r``:

    .. math:: \Sigma_\infty = \Sigma_0 - \Sigma_0 Q^\top (Q\Sigma_0 Q^\top)^{-1} Q\Sigma_0,

    the Schur complement (conditional covariance of :math:`x` given :math:`Qx`), of rank
    :math:`d - r`, with :math:`Q\Sigma_\infty = 0`. For ``d = 2``, ``r = 1`` it is a multiple of
    :math:`q^\perp q^{\perp\top}`: the paper's "convergence to a line". Book's derivation
    (:math:`\Sigma(t) = (\Sigma_0^{-1} + 2tQ^\top Q)^{-1}` and Woodbury), chapter 3, claim 3.4.
    """
    S0 = check_covariance(S0, "S0")
    Q = np.asarray(Q, dtype=float)
    if Q.ndim != 2 or Q.shape[1] != S0.shape[0]:
        raise ValueError(f"Q must be (r, {S0.shape[0]}), got {Q.shape}")
    M = Q @ S0 @ Q.T
    if np.linalg.cond(M) > 1e12:
        raise ValueError("Q S0 Q^T is singular: Q must have full row rank and S0 be positive definite on its range")
    out = S0 - S0 @ Q.T @ np.linalg.solve(M, Q @ S0)
    return (out + out.T) / 2


# ----------------------------------------------------------------------------------------------
# 2 x 2 covariances: cone coordinates, grids
# ----------------------------------------------------------------------------------------------

def cone_coordinates(S: np.ndarray) -> np.ndarray:
    r"""Map :math:`\Sigma = \begin{pmatrix} a & c\\ c & b\end{pmatrix}` to :math:`(a - b, 2c, a + b)`.

    The PSD cone becomes the Lorentz cone :math:`z \ge \sqrt{x^2 + y^2}`; rank-one matrices lie on
    its surface. ``S`` is ``(..., 2, 2)``; returns ``(..., 3)``. As in the authors' ``to_3d``.
    """
    S = np.asarray(S, dtype=float)
    if S.shape[-2:] != (2, 2):
        raise ValueError(f"S must end in shape (2, 2), got {S.shape}")
    a, b, c = S[..., 0, 0], S[..., 1, 1], (S[..., 0, 1] + S[..., 1, 0]) / 2
    return np.stack([a - b, 2 * c, a + b], axis=-1)


def disk_coordinates(S: np.ndarray) -> np.ndarray:
    r""":math:`\Sigma/\mathrm{tr}\,\Sigma` in the unit disk: :math:`((a-b)/(a+b), 2c/(a+b))`; rank one = unit circle."""
    z = cone_coordinates(S)
    tr = z[..., 2:3]
    if np.any(tr <= 0):
        raise ValueError("disk coordinates need tr S > 0")
    return z[..., :2] / tr


def from_cone_coordinates(z: np.ndarray) -> np.ndarray:
    """Inverse of :func:`cone_coordinates`: ``(..., 3)`` to ``(..., 2, 2)``."""
    z = np.asarray(z, dtype=float)
    x, y, s = z[..., 0], z[..., 1], z[..., 2]
    a, b, c = (s + x) / 2, (s - x) / 2, y / 2
    return np.stack([np.stack([a, c], -1), np.stack([c, b], -1)], -2)


def covariance_grid(n: int, *, radius: float = 0.5, trace: float = 1.0) -> np.ndarray:
    r"""Initial 2x2 covariances on an ``n x n`` grid of the slice :math:`\mathrm{tr}\,\Sigma` = ``trace``:
    :math:`(a-b, 2c) \in [-r, r]^2` (``r`` = ``radius``), keeping the strictly positive definite ones
    (:math:`(a-b)^2 + 4c^2 < \mathrm{tr}^2`). Returns ``(k, 2, 2)``. As the authors' ``init_grid``."""
    C.positive_int(n, "n")
    radius = C.positive(radius, "radius")
    trace = C.positive(trace, "trace")
    u = np.linspace(-radius, radius, n)
    X, Y = np.meshgrid(u, u, indexing="ij")
    keep = X**2 + Y**2 < (trace * (1 - 1e-9)) ** 2
    z = np.stack([X[keep], Y[keep], np.full(keep.sum(), trace)], -1)
    return from_cone_coordinates(z)


# ----------------------------------------------------------------------------------------------
# Small measurement helpers
# ----------------------------------------------------------------------------------------------

def affine_fit_residual(x0: np.ndarray | Tensor, x1: np.ndarray | Tensor) -> float:
    r"""Relative residual of the least-squares affine fit :math:`x_1 \approx W x_0 + b`:
    :math:`\|x_1 - \hat x_1\|_F / \|x_1 - \bar x_1\|_F`. Zero iff the cloud moved by an affine map.
    ``x0``, ``x1`` are ``(N, d)`` with ``N > d + 1``."""
    x0 = np.asarray(x0.detach().cpu() if isinstance(x0, torch.Tensor) else x0, dtype=float)
    x1 = np.asarray(x1.detach().cpu() if isinstance(x1, torch.Tensor) else x1, dtype=float)
    if x0.ndim != 2 or x1.shape[0] != x0.shape[0] or x0.shape[0] <= x0.shape[1] + 1:
        raise ValueError(f"need x0 (N, d) and x1 (N, e) with N > d + 1, got {x0.shape} and {x1.shape}")
    X = np.concatenate([x0, np.ones((x0.shape[0], 1))], axis=1)
    W, *_ = np.linalg.lstsq(X, x1, rcond=None)
    return float(np.linalg.norm(x1 - X @ W) / np.linalg.norm(x1 - x1.mean(0)))


def mardia_kurtosis_z(x: np.ndarray | Tensor) -> float:
    r"""Mardia's multivariate kurtosis test statistic of a sample ``x`` ``(N, d)``:

    .. math:: b_{2,d} = \frac1N\sum_i \big((x_i-\bar x)^\top \hat\Sigma^{-1}(x_i-\bar x)\big)^2,\qquad
       z = \frac{b_{2,d} - d(d+2)}{\sqrt{8d(d+2)/N}},

    with :math:`\hat\Sigma` the sample covariance (divisor ``N``). For a Gaussian sample
    :math:`z` is approximately standard normal; it is affine invariant, so a cloud moved by an
    affine map keeps it, and a non-Gaussian law (e.g. uniform: :math:`b_{2,2} = 5.6` instead of 8)
    drives :math:`|z|` up like :math:`\sqrt N`. Mardia (1970), Biometrika 57; chapter 3, claim 3.3.
    """
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=float)
    if x.ndim != 2 or x.shape[0] <= x.shape[1] + 1:
        raise ValueError(f"need a sample (N, d) with N > d + 1, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x contains non-finite values (NaN or inf)")
    n, d = x.shape
    z = x - x.mean(0)
    S = z.T @ z / n
    r = np.einsum("ni,ij,nj->n", z, np.linalg.inv(S), z)
    return float((np.mean(r**2) - d * (d + 2)) / math.sqrt(8 * d * (d + 2) / n))


def loglog_slope(n: np.ndarray, e: np.ndarray) -> float:
    """Least-squares slope of ``log e`` against ``log n`` (a rate exponent); inputs positive, same length >= 2."""
    n, e = np.asarray(n, dtype=float), np.asarray(e, dtype=float)
    if n.shape != e.shape or n.ndim != 1 or n.size < 2 or np.any(n <= 0) or np.any(e <= 0):
        raise ValueError("n and e must be positive 1-D arrays of the same length >= 2")
    return float(np.polyfit(np.log(n), np.log(e), 1)[0])


def trace_crossing_times(traj: CovarianceTrajectory, levels: np.ndarray) -> np.ndarray:
    r"""First times at which :math:`\mathrm{tr}\,\Sigma(t)` reaches each of ``levels`` (``nan`` if never).

    Linear interpolation of :math:`\log\mathrm{tr}\,\Sigma` between the solver's steps (run
    :func:`evolve_covariance` without ``t_eval`` to get every step). Used in chapter 3 to time
    each decade of growth (finite-time blow-up: the decades get shorter; exponential growth: they
    take a constant time).
    """
    levels = np.asarray(levels, dtype=float)
    if np.any(levels <= 0):
        raise ValueError("levels must be > 0")
    lt = np.log(np.maximum(traj.trace, 1e-300))
    out = np.full(levels.shape, np.nan)
    for i, lev in enumerate(np.log(levels)):
        k = np.flatnonzero(lt >= lev)
        if k.size == 0:
            continue
        k = k[0]
        if k == 0:
            out[i] = traj.t[0]
        else:
            w = (lev - lt[k - 1]) / (lt[k] - lt[k - 1])
            out[i] = traj.t[k - 1] + w * (traj.t[k] - traj.t[k - 1])
    return out


def numerical_rank(S: np.ndarray, *, threshold: float, relative: bool = True) -> np.ndarray:
    r"""Number of eigenvalues of ``S`` ``(..., d, d)`` above ``threshold`` (times :math:`\lambda_{\max}` if ``relative``).

    The authors count eigenvalues above the absolute threshold 0.1; since the low-rank limits are
    reached only like :math:`1/t` the count depends on the stopping time and the threshold, which
    chapter 3 states with each histogram.
    """
    threshold = C.positive(threshold, "threshold")
    lam = np.linalg.eigvalsh(np.asarray(S, dtype=float))
    ref = lam.max(-1, keepdims=True) if relative else 1.0
    return (lam > threshold * ref).sum(-1)
