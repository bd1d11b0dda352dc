r"""Attention as a kernel machine: feature maps, non-Mercer Gram matrices, the binary representer
theorem and universal approximation (chapter 4, after Wright & Gonzalez 2021).

The attention kernel of a Transformer head is

.. math:: \kappa(t, s) = \exp\!\big((W_Q t)^\top (W_K s)/\sqrt d\big),

with queries from a domain :math:`T` and keys from a domain :math:`S`. This module gives the
objects the chapter needs to look at :math:`\kappa` as a kernel:

* :func:`multi_indices`, :func:`taylor_features`, :func:`taylor_kernel`: the explicit (infinite)
  feature map of the exponentiated dot product, truncated at a total degree;
* :func:`positive_random_features`, :func:`random_feature_kernel`: Performer-style positive random
  features (an unbiased, finite-dimensional estimate of the same kernel);
* :func:`attention_gram`, :func:`asymmetry`, :func:`symmetric_part_eigvals`,
  :func:`numerical_rank`, :func:`polynomial_rank_bound`: non-Mercer and rank diagnostics;
* :func:`duality_map`, :func:`fit_binary_kernel_machine`, :func:`span_residual`: a binary kernel
  learning problem over a pair of :math:`\ell_p` / :math:`\ell_q` feature spaces (a reproducing
  kernel Banach space pair) and the check of its representer theorem;
* :class:`QueryKeyKernelModel`, :func:`fit_kernel_model`: fitting a target kernel by
  :math:`\exp(q(t)^\top k(s)/\sqrt d)` with linear or MLP query/key maps.

No plotting here; every random draw takes an explicit generator or seed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from . import _checks as C
from .kernels import FeatureMapKernel

Tensor = torch.Tensor

__all__ = [
    "BinaryKernelMachine",
    "KernelFit",
    "QueryKeyKernelModel",
    "TaylorKernel",
    "asymmetry",
    "attention_gram",
    "duality_map",
    "fit_binary_kernel_machine",
    "fit_kernel_model",
    "mercer_diagnostics",
    "multi_indices",
    "numerical_rank",
    "polynomial_rank_bound",
    "positive_random_features",
    "random_feature_kernel",
    "rank_curve",
    "rank_profile",
    "span_residual",
    "symmetric_part_eigvals",
    "taylor_feature_dim",
    "taylor_features",
    "taylor_kernel",
    "taylor_remainder",
    "truncated_exp_dot",
]


# --------------------------------------------------------------------------------------------
# Truncated Taylor feature map of exp(s q.k)
# --------------------------------------------------------------------------------------------

def taylor_feature_dim(d: int, degree: int) -> int:
    r"""Number of multi-indices :math:`p\in\mathbb N^d` with :math:`|p|\le N`: :math:`\binom{N+d}{d}`."""
    d = C.positive_int(d, "d")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be an int >= 0, got {degree!r}")
    return math.comb(degree + d, d)


@lru_cache(maxsize=64)
def _taylor_plan(d: int, degree: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """For each degree k >= 1: (parent index into degree k-1 monomials, variable index)."""
    plan = []
    prev = {(): 0}
    for k in range(1, degree + 1):
        combos = list(itertools.combinations_with_replacement(range(d), k))
        parent = np.array([prev[c[:-1]] for c in combos], dtype=np.int64)
        var = np.array([c[-1] for c in combos], dtype=np.int64)
        plan.append((parent, var))
        prev = {c: i for i, c in enumerate(combos)}
    return tuple(plan)


def multi_indices(d: int, degree: int) -> Tensor:
    r"""All multi-indices :math:`p\in\mathbb N^d` with :math:`|p|\le N`, ordered by total degree.

    Returns an int64 tensor of shape ``(binom(N+d, d), d)``; row ``r`` is the exponent vector of the
    ``r``-th feature of :func:`taylor_features`.
    """
    taylor_feature_dim(d, degree)  # validates
    rows = [np.zeros((1, d), dtype=np.int64)]
    for k in range(1, degree + 1):
        combos = np.array(list(itertools.combinations_with_replacement(range(d), k)), dtype=np.int64)
        counts = np.zeros((len(combos), d), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(combos)), k), combos.reshape(-1)), 1)
        rows.append(counts)
    return torch.from_numpy(np.concatenate(rows, axis=0))


def _scale(scale: float | None, d: int) -> float:
    r"""The dot-product scale :math:`s`: ``scale`` (checked positive) or, by default, the
    Transformer's :math:`1/\sqrt d`."""
    return 1.0 / math.sqrt(d) if scale is None else C.positive(scale, "scale")


def taylor_features(x: Tensor, degree: int, *, scale: float | None = None) -> Tensor:
    r"""Truncated feature map of the exponentiated dot product.

    .. math:: \varphi_p(x) = \sqrt{\frac{s^{|p|}}{p!}}\; x^p, \qquad |p| \le N,

    so that :math:`\varphi(q)\cdot\varphi(k) = \sum_{n=0}^N (s\,q\cdot k)^n/n! \to \exp(s\,q\cdot k)`
    (multinomial theorem), with :math:`x^p=\prod_a x_a^{p_a}`, :math:`p! = \prod_a p_a!`.

    Parameters
    ----------
    x
        Points ``(..., n, d)`` (the rows are :math:`q` or :math:`k`).
    degree
        Truncation degree :math:`N \ge 0`; the output has :math:`\binom{N+d}{d}` features.
    scale
        :math:`s`, default :math:`1/\sqrt d` (the Transformer's scaling).

    Returns
    -------
    Tensor ``(..., n, binom(N+d, d))`` ordered as :func:`multi_indices`. Monomials are built degree
    by degree (each one is a degree-:math:`(k-1)` monomial times one coordinate), so memory is
    linear in the number of features. Used in chapter 4 (claims 4.2, 4.3, 4.5).
    """
    x = C.float_tensor(x, "x", min_dim=2)
    d = x.shape[-1]
    taylor_feature_dim(d, degree)
    s = _scale(scale, d)
    feats = [torch.ones(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)]
    # running monomials without coefficients, and the log of the coefficient sqrt(s^k / p!)
    mono = feats[0]
    idx = torch.zeros(1, d, dtype=torch.int64)
    for k, (parent, var) in enumerate(_taylor_plan(d, degree), start=1):
        par = torch.from_numpy(parent)
        vv = torch.from_numpy(var)
        mono = mono[..., par.to(x.device)] * x[..., vv.to(x.device)]
        idx = idx[par].clone()
        idx[torch.arange(len(vv)), vv] += 1
        log_pfact = torch.lgamma(idx.to(torch.float64) + 1).sum(-1)
        coef = torch.exp(0.5 * (k * math.log(s) - log_pfact)).to(dtype=x.dtype, device=x.device)
        feats.append(mono * coef)
    return torch.cat(feats, dim=-1)


def truncated_exp_dot(q: Tensor, k: Tensor, degree: int, *, scale: float | None = None) -> Tensor:
    r"""Closed form of the truncated kernel :math:`\sum_{n=0}^N (s\, q_i\cdot k_j)^n / n!`, shape ``(..., n, m)``.

    The independent reference for :func:`taylor_features` (no multi-indices involved).
    """
    q = C.float_tensor(q, "q", min_dim=2)
    k = C.float_tensor(k, "k", min_dim=2)
    taylor_feature_dim(q.shape[-1], degree)
    s = _scale(scale, q.shape[-1])
    u = s * (q @ k.transpose(-1, -2))
    out = torch.ones_like(u)
    term = torch.ones_like(u)
    for n in range(1, degree + 1):
        term = term * u / n
        out = out + term
    return out


def taylor_remainder(q: Tensor, k: Tensor, degree: int, *, scale: float | None = None,
                     rtol: float = 1e-17, max_terms: int = 2000) -> Tensor:
    r"""Remainder of the degree-:math:`N` Taylor series of :math:`\exp(s\,q\cdot k)`, without cancellation.

    .. math:: R_N(u) = e^{u} - \sum_{n=0}^{N}\frac{u^n}{n!} = \sum_{n>N}\frac{u^n}{n!},
              \qquad u = s\, q_i\cdot k_j ,

    evaluated as the tail sum on the right (first term from :math:`\log|u|` and
    :math:`\log\Gamma`, then the ratio :math:`u/(n+1)`), until every new term is below ``rtol``
    times its running tail or ``max_terms`` terms were added. The difference on the left loses all
    digits once :math:`|R_N|` falls below the float64 round-off of :math:`e^u` (about
    :math:`10^{-16}e^{|u|}`); the tail sum keeps its relative accuracy down to underflow, so the
    decay of :math:`R_N` can be followed to any degree. ``q`` ``(..., n, d)``, ``k`` ``(..., m, d)``;
    returns ``(..., n, m)``. Chapter 4, claim 4.2c.
    """
    q = C.float_tensor(q, "q", min_dim=2)
    k = C.float_tensor(k, "k", min_dim=2)
    taylor_feature_dim(q.shape[-1], degree)
    max_terms = C.positive_int(max_terms, "max_terms")
    rtol = C.positive(rtol, "rtol")
    s = _scale(scale, q.shape[-1])
    u = s * (q @ k.transpose(-1, -2))
    n0 = degree + 1
    with torch.no_grad():
        log_first = n0 * torch.log(u.abs()) - math.lgamma(n0 + 1)
    term = torch.where(u == 0, torch.zeros_like(u), torch.sign(u) ** n0 * torch.exp(log_first))
    tail = term.clone()
    n = n0
    for _ in range(max_terms - 1):
        term = term * u / (n + 1)
        n += 1
        tail = tail + term
        if bool((term.abs() <= rtol * tail.abs()).all()):
            break
    return tail


class TaylorKernel(FeatureMapKernel):
    r"""The exponentiated dot product truncated at total degree :math:`N`, as a feature-map kernel.

    .. math:: \kappa_N(q,k) = \varphi_{\le N}(q)\cdot\varphi_{\le N}(k) = \sum_{n=0}^N \frac{(s\,q\cdot k)^n}{n!},

    feature dimension :math:`\binom{N+d}{d}` (:func:`taylor_features`). :meth:`gram` evaluates the
    right-hand side (the same function, without building the features: :math:`O(nmd)` instead of
    :math:`O(nm\binom{N+d}{d})`); :meth:`features` gives the explicit feature map. For even
    :math:`N` the truncated series is positive for every real argument, so the kernel is strictly
    positive and safe in :func:`~lib.kernels.kernel_attention`. Chapter 4 (claims 4.2, 4.5).
    """

    def __init__(self, degree: int, *, scale: float | None = None) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be an int >= 0, got {degree!r}")
        self.degree = degree
        self.scale = None if scale is None else C.positive(scale, "scale")
        super().__init__(lambda x: taylor_features(x, degree, scale=self.scale), name=f"taylor{degree}",
                         dim=lambda d: taylor_feature_dim(d, degree), positive=degree % 2 == 0)

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        return truncated_exp_dot(q, k, self.degree, scale=self.scale)


def taylor_kernel(degree: int, *, scale: float | None = None) -> TaylorKernel:
    r"""Shorthand for :class:`TaylorKernel` ``(degree, scale=scale)``."""
    return TaylorKernel(degree, scale=scale)


# --------------------------------------------------------------------------------------------
# Positive random features (Performer)
# --------------------------------------------------------------------------------------------

def positive_random_features(x: Tensor, omega: Tensor, *, scale: float | None = None,
                             stabilize: bool = False) -> Tensor:
    r"""Positive random features of :math:`\exp(s\,q\cdot k)` (Choromanski et al. 2021).

    .. math:: \varphi(x) = D^{-1/2}\exp\!\big(\omega_r^\top \tilde x - \|\tilde x\|^2/2\big)_{r=1}^D,
              \qquad \tilde x = \sqrt{s}\, x,

    with :math:`\omega_r\sim\mathcal N(0, I_d)`, so that
    :math:`\mathbb E[\varphi(q)\cdot\varphi(k)] = \exp(s\, q\cdot k)`.

    Parameters
    ----------
    x
        Points ``(..., n, d)``.
    omega
        Projection matrix ``(D, d)`` (rows :math:`\omega_r`), e.g. from :func:`random_feature_kernel`.
    scale
        :math:`s`, default :math:`1/\sqrt d`.
    stabilize
        Subtract the maximum exponent over the whole ``(n, D)`` slice of each batch entry (a
        constant that cancels in normalised attention, for queries and keys alike) to avoid
        overflow; the result is then no longer an unbiased kernel estimate.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    omega = C.float_tensor(omega, "omega", min_dim=2)
    if omega.dim() != 2 or omega.shape[1] != x.shape[-1]:
        raise ValueError(f"omega must have shape (D, {x.shape[-1]}), got {tuple(omega.shape)}")
    s = _scale(scale, x.shape[-1])
    xt = math.sqrt(s) * x
    om = omega.to(dtype=x.dtype, device=x.device)
    expo = xt @ om.T - 0.5 * (xt * xt).sum(-1, keepdim=True)
    if stabilize:
        expo = expo - expo.detach().amax(dim=(-1, -2), keepdim=True)
    return torch.exp(expo) / math.sqrt(omega.shape[0])


def random_feature_kernel(d: int, num_features: int, *, generator: torch.Generator,
                          scale: float | None = None, stabilize: bool = True,
                          orthogonal: bool = False) -> FeatureMapKernel:
    r"""Positive-random-feature approximation of :math:`\exp(s\,q\cdot k)` with ``D = num_features``.

    ``omega`` (``(D, d)``, float64) is drawn once from ``generator``; with ``orthogonal`` the rows
    are orthogonalised in blocks of ``d`` and rescaled to chi-distributed norms (Performer's ORF).
    Feature dimension ``D``. Used in chapter 4 (claims 4.2, 4.5).
    """
    d = C.positive_int(d, "d")
    D = C.positive_int(num_features, "num_features")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    g = torch.randn(D, d, generator=generator, dtype=torch.float64)
    if orthogonal:
        blocks = []
        for start in range(0, D, d):
            a = torch.randn(d, d, generator=generator, dtype=torch.float64)
            qm, _ = torch.linalg.qr(a)
            blocks.append(qm.T)
        norms = g.norm(dim=1, keepdim=True)
        g = torch.cat(blocks, 0)[:D] * norms
    sc = None if scale is None else C.positive(scale, "scale")
    kern = FeatureMapKernel(lambda x: positive_random_features(x, g, scale=sc, stabilize=stabilize),
                            name=f"prf{D}", dim=lambda _d: D, positive=True)
    kern.omega = g  # type: ignore[attr-defined]
    return kern


# --------------------------------------------------------------------------------------------
# Non-Mercer and rank diagnostics
# --------------------------------------------------------------------------------------------

def attention_gram(t: Tensor, s: Tensor, W_Q: Tensor, W_K: Tensor, *, log: bool = False) -> Tensor:
    r"""Gram matrix of the attention kernel :math:`K_{ij} = \exp((W_Q t_i)^\top (W_K s_j)/\sqrt d)`.

    ``t`` ``(n, d_t)``, ``s`` ``(m, d_s)``, ``W_Q`` ``(d, d_t)``, ``W_K`` ``(d, d_s)``; returns
    ``(n, m)`` (the log-kernel, i.e. the attention logits, with ``log=True``). Wright & Gonzalez
    (2021), the kernel of a dot-product attention head. Chapter 4, claim 4.1.
    """
    t = C.float_tensor(t, "t", min_dim=2)
    s = C.float_tensor(s, "s", min_dim=2)
    W_Q = C.float_tensor(W_Q, "W_Q", min_dim=2)
    W_K = C.float_tensor(W_K, "W_K", min_dim=2)
    C.same_dtype([t, s, W_Q, W_K], ["t", "s", "W_Q", "W_K"])
    if W_Q.shape[0] != W_K.shape[0]:
        raise ValueError(f"W_Q and W_K must map to the same head dimension, got {tuple(W_Q.shape)} and {tuple(W_K.shape)}")
    if W_Q.shape[1] != t.shape[-1]:
        raise ValueError(f"W_Q must have shape (d, {t.shape[-1]}), got {tuple(W_Q.shape)}")
    if W_K.shape[1] != s.shape[-1]:
        raise ValueError(f"W_K must have shape (d, {s.shape[-1]}), got {tuple(W_K.shape)}")
    logits = (t @ W_Q.T) @ (s @ W_K.T).T / math.sqrt(W_Q.shape[0])
    return logits if log else logits.exp()


def asymmetry(K: Tensor) -> float:
    r"""Relative asymmetry :math:`\|K-K^\top\|_F/\|K\|_F` of a square matrix."""
    K = C.float_tensor(K, "K", min_dim=2)
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be square, got {tuple(K.shape)}")
    return float(torch.linalg.norm(K - K.T) / torch.linalg.norm(K))


def symmetric_part_eigvals(K: Tensor) -> Tensor:
    r"""Eigenvalues (ascending) of the symmetric part :math:`(K+K^\top)/2`; negative ones mean indefinite."""
    K = C.float_tensor(K, "K", min_dim=2)
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K must be square, got {tuple(K.shape)}")
    return torch.linalg.eigvalsh(0.5 * (K + K.T))


def numerical_rank(M: Tensor, *, rtol: float = 1e-10) -> int:
    r"""Number of singular values above ``rtol`` times the largest (float64 recommended)."""
    M = C.float_tensor(M, "M", min_dim=2)
    rtol = C.positive(rtol, "rtol")
    sv = torch.linalg.svdvals(M)
    return int((sv > rtol * sv.max()).sum())


def rank_curve(kernel, q: Tensor, k: Tensor, sizes, *, rtol: float = 1e-10) -> list[int]:
    r"""Numerical rank (:func:`numerical_rank`) of the :math:`n\times n` Gram matrix
    :math:`[\kappa(q_i, k_j)]_{i,j<n}` for each ``n`` in ``sizes`` (the first ``n`` rows of ``q``
    ``(N, d)`` and ``k`` ``(N, d)``). ``kernel`` is a :class:`lib.kernels.Kernel`.

    A kernel with a :math:`D`-dimensional feature map has rank :math:`\min(n, D)` at most, so its
    curve saturates at :math:`D`; an infinite-dimensional kernel's rank keeps growing with
    :math:`n` (at a fixed ``rtol`` more slowly than :math:`n` when its spectrum decays fast).
    Chapter 4, claim 4.2e.
    """
    q = C.float_tensor(q, "q", min_dim=2)
    k = C.float_tensor(k, "k", min_dim=2)
    sizes = [C.positive_int(n, "size") for n in sizes]
    if not sizes:
        raise ValueError("sizes is empty")
    if max(sizes) > min(q.shape[-2], k.shape[-2]):
        raise ValueError(f"largest size {max(sizes)} exceeds the number of points {min(q.shape[-2], k.shape[-2])}")
    G = kernel.gram(q[..., : max(sizes), :], k[..., : max(sizes), :])
    return [numerical_rank(G[..., :n, :n], rtol=rtol) for n in sizes]


def rank_profile(kernel, q: Tensor, k: Tensor, sizes, *, rtol: float = 1e-10,
                 fixed_at: int | None = None) -> dict[str, list[int]]:
    r"""Three numerical ranks of the :math:`n\times n` Gram matrices :math:`K_n=[\kappa(q_i,k_j)]_{i,j<n}`.

    * ``"relative"``: singular values of :math:`K_n` above ``rtol`` times its largest
      (:func:`rank_curve`). One large entry of :math:`K_n` (a large logit) raises
      :math:`\sigma_{\max}` and with it the threshold, so this rank can *fall* as :math:`n` grows.
    * ``"row_normalised"``: the same rule applied to the attention matrix
      :math:`A_n = \operatorname{diag}(K_n\mathbf 1)^{-1}K_n` (same exact rank as :math:`K_n`); its
      rows sum to one, so :math:`1\le\sigma_{\max}(A_n)\le\sqrt n` whatever the entries.
    * ``"fixed"``: singular values of :math:`K_n` above one threshold
      :math:`\tau=\mathrm{rtol}\,\sigma_{\max}(K_{n_0})`, :math:`n_0` = ``fixed_at`` (default the
      second largest size), the same for every :math:`n`; by interlacing
      (:math:`\sigma_i(K_n)\le\sigma_i(K_{n'})` for :math:`n\le n'`) this rank never falls with :math:`n`.

    A kernel with :math:`D` features has exact rank at most :math:`\min(n, D)` in all three.
    ``q``, ``k`` ``(N, d)``; ``kernel`` a :class:`lib.kernels.Kernel` whose Gram rows sum to a
    positive number (a positive kernel). Chapter 4, claim 4.2e.
    """
    q = C.float_tensor(q, "q", min_dim=2)
    k = C.float_tensor(k, "k", min_dim=2)
    rtol = C.positive(rtol, "rtol")
    sizes = [C.positive_int(n, "size") for n in sizes]
    if not sizes:
        raise ValueError("sizes is empty")
    if max(sizes) > min(q.shape[-2], k.shape[-2]):
        raise ValueError(f"largest size {max(sizes)} exceeds the number of points {min(q.shape[-2], k.shape[-2])}")
    n0 = sorted(sizes)[-2] if fixed_at is None and len(sizes) > 1 else (fixed_at or sizes[0])
    n0 = C.positive_int(n0, "fixed_at")
    if n0 > max(sizes):
        raise ValueError(f"fixed_at={n0} exceeds the largest size {max(sizes)}")
    G = kernel.gram(q[..., : max(sizes), :], k[..., : max(sizes), :])
    tau = rtol * float(torch.linalg.svdvals(G[:n0, :n0]).max())
    out: dict[str, list[int]] = {"relative": [], "row_normalised": [], "fixed": []}
    for n in sizes:
        Kn = G[:n, :n]
        rows = Kn.sum(-1, keepdim=True)
        if not bool((rows > 0).all()):
            raise ValueError("row sums of the Gram matrix must be positive to row-normalise it")
        sv = torch.linalg.svdvals(Kn)
        sa = torch.linalg.svdvals(Kn / rows)
        out["relative"].append(int((sv > rtol * sv.max()).sum()))
        out["row_normalised"].append(int((sa > rtol * sa.max()).sum()))
        out["fixed"].append(int((sv > tau).sum()))
    return out


def mercer_diagnostics(x: Tensor, W_Q: Tensor, W_K: Tensor) -> dict[str, float]:
    r"""Non-Mercer diagnostics of the attention Gram matrix :math:`K = [\kappa(x_i, x_j)]` on shared points.

    Returns ``asymmetry`` (:func:`asymmetry`), ``min_eig_rel`` (smallest eigenvalue of
    :math:`(K+K^\top)/2` over the largest absolute one: negative = indefinite) and ``n_negative``
    (number of negative eigenvalues). ``x`` ``(n, d_x)``, ``W_Q``, ``W_K`` ``(d, d_x)``.
    Chapter 4, claim 4.1.
    """
    K = attention_gram(x, x, W_Q, W_K)
    ev = symmetric_part_eigvals(K)
    return {"asymmetry": asymmetry(K), "min_eig_rel": float(ev.min() / ev.abs().max()),
            "n_negative": int((ev < 0).sum())}


def polynomial_rank_bound(d: int, degree: int, *, homogeneous: bool = False) -> int:
    r"""Feature dimension of :math:`(c + q\cdot k)^p` in :math:`\mathbb R^d`, which caps the Gram rank:
    :math:`\binom{d+p}{p}` (:math:`c>0`) or :math:`\binom{d+p-1}{p}` (:math:`c=0`)."""
    d = C.positive_int(d, "d")
    p = C.positive_int(degree, "degree")
    return math.comb(d + p - 1, p) if homogeneous else math.comb(d + p, p)


# --------------------------------------------------------------------------------------------
# Binary kernel learning over an l_p / l_q pair and the representer theorem
# --------------------------------------------------------------------------------------------

def duality_map(v: np.ndarray | Tensor, p: float) -> np.ndarray:
    r"""Duality map (Gateaux derivative of :math:`\|v\|_p^p/p`) of :math:`\ell_p`: :math:`|v|^{p-1}\operatorname{sign}(v)`.

    Maps :math:`\ell_p` to its dual :math:`\ell_q`, :math:`1/p+1/q=1`; the identity for :math:`p=2`.
    """
    p = C.positive(p, "p")
    if p <= 1:
        raise ValueError(f"p must be > 1 (a smooth, strictly convex norm), got {p}")
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=np.float64)
    return np.abs(a) ** (p - 1) * np.sign(a)


def span_residual(v: np.ndarray, A: np.ndarray) -> float:
    r"""Relative residual :math:`\|v - P_A v\| / \|v\|` of the projection of ``v`` ``(F,)`` onto the
    column span of ``A`` ``(F, m)`` (least squares, float64)."""
    v = np.asarray(v, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or v.ndim != 1 or A.shape[0] != v.shape[0]:
        raise ValueError(f"need v of shape (F,) and A of shape (F, m), got {v.shape} and {A.shape}")
    nv = np.linalg.norm(v)
    if nv == 0:
        raise ValueError("v is zero; its direction is undefined")
    coef, *_ = np.linalg.lstsq(A, v, rcond=None)
    return float(np.linalg.norm(v - A @ coef) / nv)


@dataclass
class BinaryKernelMachine:
    r"""Solution of :func:`fit_binary_kernel_machine`.

    ``u`` (``(F,)``, :math:`\ell_p`) and ``w`` (``(F,)``, :math:`\ell_q`) are the coefficient
    vectors of :math:`f(t) = \langle u, \varphi(t)\rangle` and :math:`g(s) = \langle w, \psi(s)\rangle`;
    ``Phi`` ``(n, F)`` and ``Psi`` ``(m, F)`` are the data features; ``grad_norm`` the final
    gradient norm; ``objective`` the final objective value.
    """

    u: np.ndarray
    w: np.ndarray
    p: float
    q: float
    Phi: np.ndarray
    Psi: np.ndarray
    objective: float
    grad_norm: float
    iterations: int

    def predict(self, Phi: np.ndarray | None = None, Psi: np.ndarray | None = None) -> np.ndarray:
        """Predicted responses :math:`f(t_i)\\,g(s_j)`, shape ``(n, m)``."""
        Phi = self.Phi if Phi is None else Phi
        Psi = self.Psi if Psi is None else Psi
        return np.outer(Phi @ self.u, Psi @ self.w)

    def residuals(self) -> dict[str, float]:
        r"""Span residuals: of ``u`` and :math:`J_p(u)` on span :math:`\{\varphi(t_i)\}`, of ``w`` and
        :math:`J_q(w)` on span :math:`\{\psi(s_j)\}`."""
        return {
            "u": span_residual(self.u, self.Phi.T),
            "J(u)": span_residual(duality_map(self.u, self.p), self.Phi.T),
            "w": span_residual(self.w, self.Psi.T),
            "J(w)": span_residual(duality_map(self.w, self.q), self.Psi.T),
        }


def fit_binary_kernel_machine(Phi: np.ndarray | Tensor, Psi: np.ndarray | Tensor, Z: np.ndarray | Tensor,
                              *, p: float = 2.0, lam: float = 1e-2, seed: int = 0,
                              gtol: float = 1e-14, maxiter: int = 20_000) -> BinaryKernelMachine:
    r"""Solve the binary kernel learning problem over the RKBS pair built from two feature maps.

    With :math:`\kappa(t,s) = \langle\varphi(t), \psi(s)\rangle`, let
    :math:`\mathcal B_T = \{f_u = \langle u, \varphi(\cdot)\rangle : u\in\ell_p\}` and
    :math:`\mathcal B_S = \{g_w = \langle w, \psi(\cdot)\rangle : w\in\ell_q\}`, :math:`1/p+1/q = 1`
    (a dual pair: :math:`\kappa(t,\cdot)\in\mathcal B_S` has coefficients :math:`\varphi(t)`,
    :math:`\kappa(\cdot,s)\in\mathcal B_T` has coefficients :math:`\psi(s)`). Minimise

    .. math:: \frac12\sum_{i,j}\big(f(t_i)\,g(s_j) - z_{ij}\big)^2
              + \frac{\lambda}{p}\|u\|_p^p + \frac{\lambda}{q}\|w\|_q^q .

    The data enter only through :math:`\varphi(t_i)` and :math:`\psi(s_j)`, so at a stationary point
    :math:`\lambda J_p(u) = -\sum_{ij} r_{ij}\, g(s_j)\, \varphi(t_i)` and
    :math:`\lambda J_q(w) = -\sum_{ij} r_{ij}\, f(t_i)\, \psi(s_j)`: the duality maps lie in the
    spans of the kernel sections at the data (the book's reconstruction of the binary representer
    theorem of Wright & Gonzalez 2021; chapter 4, claim 4.3).

    Parameters
    ----------
    Phi, Psi
        Data features ``(n, F)`` and ``(m, F)`` (query and key side).
    Z
        Responses ``(n, m)``.
    p
        Exponent of the query-side norm, ``p > 1``; the key side uses the conjugate ``q``.
    lam
        Regularisation :math:`\lambda > 0`.
    seed
        Seed of the random start.
    gtol, maxiter
        Target gradient norm and L-BFGS iteration cap. L-BFGS (scipy) finds the basin, Newton steps
        with the exact Hessian polish the stationary point; the first-order condition then holds
        to about ``grad_norm / lam``.
    """
    from scipy.optimize import minimize

    def _np(a, name):
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be a finite 2-D array, got shape {a.shape}")
        return a

    Phi, Psi, Z = _np(Phi, "Phi"), _np(Psi, "Psi"), _np(Z, "Z")
    if Phi.shape[1] != Psi.shape[1]:
        raise ValueError(f"Phi and Psi must have the same number of features, got {Phi.shape} and {Psi.shape}")
    if Z.shape != (Phi.shape[0], Psi.shape[0]):
        raise ValueError(f"Z must have shape {(Phi.shape[0], Psi.shape[0])}, got {Z.shape}")
    p = C.positive(p, "p")
    if p <= 1:
        raise ValueError(f"p must be > 1, got {p}")
    q = p / (p - 1.0)
    lam = C.positive(lam, "lam")
    F = Phi.shape[1]

    def fun(x):
        u, w = x[:F], x[F:]
        fu, gw = Phi @ u, Psi @ w
        r = np.outer(fu, gw) - Z
        obj = 0.5 * np.sum(r * r) + lam * (np.sum(np.abs(u) ** p) / p + np.sum(np.abs(w) ** q) / q)
        gu = Phi.T @ (r @ gw) + lam * duality_map(u, p)
        gwv = Psi.T @ (r.T @ fu) + lam * duality_map(w, q)
        return obj, np.concatenate([gu, gwv])

    def hess(x):
        u, w = x[:F], x[F:]
        fu, gw = Phi @ u, Psi @ w
        huu = (gw @ gw) * Phi.T @ Phi + lam * (p - 1) * np.diag(np.abs(u) ** (p - 2))
        hww = (fu @ fu) * Psi.T @ Psi + lam * (q - 1) * np.diag(np.abs(w) ** (q - 2))
        huw = Phi.T @ (2 * np.outer(fu, gw) - Z) @ Psi
        return np.block([[huu, huw], [huw.T, hww]])

    rng = np.random.default_rng(seed)
    x0 = rng.normal(scale=0.5, size=2 * F)
    res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                   options={"maxiter": maxiter, "maxcor": 50, "gtol": 1e-7, "ftol": 1e-300, "maxfun": 4 * maxiter})
    x, it = res.x, int(res.nit)
    # Newton polish (exact Hessian, backtracking on the gradient norm): quadratic convergence to
    # the stationary point, so the first-order condition holds to round-off.
    obj, grad = fun(x)
    for _ in range(100):
        gn = np.linalg.norm(grad)
        if gn <= gtol:
            break
        try:
            step = np.linalg.solve(hess(x), grad)
        except np.linalg.LinAlgError:
            break
        a = 1.0
        while a > 1e-8:
            obj_new, grad_new = fun(x - a * step)
            if np.linalg.norm(grad_new) < gn:
                break
            a *= 0.5
        else:
            break
        x, obj, grad, it = x - a * step, obj_new, grad_new, it + 1
    return BinaryKernelMachine(u=x[:F].copy(), w=x[F:].copy(), p=p, q=q, Phi=Phi, Psi=Psi,
                               objective=float(obj), grad_norm=float(np.linalg.norm(grad)), iterations=it)


# --------------------------------------------------------------------------------------------
# Universal approximation: fitting a target kernel with exp(q(t).k(s)/sqrt d)
# --------------------------------------------------------------------------------------------

class QueryKeyKernelModel(nn.Module):
    r"""The learned kernel :math:`\hat\kappa(t, s) = \exp(q(t)^\top k(s)/\sqrt d)`.

    ``hidden = 0`` gives affine maps :math:`q(t) = W_Q t + b_Q` (the bilinear logits of one attention
    head, rank :math:`\le \min(d, d_t, d_s)+2`); ``hidden > 0`` gives MLPs with ``depth`` hidden tanh
    layers of that width (the "deep" query/key maps of Wright & Gonzalez's universal approximation
    theorem). Chapter 4, claim 4.4.
    """

    def __init__(self, d_t: int, d_s: int, d: int, *, hidden: int = 0, depth: int = 2,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        d_t, d_s, self.d = C.positive_int(d_t, "d_t"), C.positive_int(d_s, "d_s"), C.positive_int(d, "d")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden must be an int >= 0, got {hidden!r}")
        depth = C.positive_int(depth, "depth")
        self.d_t, self.d_s, self.hidden, self.depth, self.dtype = d_t, d_s, hidden, depth, dtype

        def make(d_in):
            if hidden == 0:
                return nn.Linear(d_in, d, dtype=dtype)
            layers, w = [], d_in
            for _ in range(depth):
                layers += [nn.Linear(w, hidden, dtype=dtype), nn.Tanh()]
                w = hidden
            layers.append(nn.Linear(w, d, dtype=dtype))
            return nn.Sequential(*layers)

        self.query, self.key = make(d_t), make(d_s)
        if generator is not None:
            with torch.no_grad():
                for prm in self.parameters():
                    bound = 1.0 / math.sqrt(prm.shape[-1]) if prm.dim() > 1 else 0.5
                    prm.copy_((torch.rand(prm.shape, generator=generator, dtype=prm.dtype) * 2 - 1) * bound)

    def log_kernel(self, t: Tensor, s: Tensor) -> Tensor:
        """Logits :math:`q(t_i)^\\top k(s_j)/\\sqrt d`, shape ``(n, m)``."""
        return self.query(t) @ self.key(s).T / math.sqrt(self.d)

    def forward(self, t: Tensor, s: Tensor) -> Tensor:
        return self.log_kernel(t, s).exp()

    def embed(self, d_big: int) -> QueryKeyKernelModel:
        r"""This model as one of head dimension ``d_big`` :math:`\ge d` with the same logits.

        Hidden layers are copied; the last layer of each map gets this model's rows scaled by
        :math:`c = (d_\text{big}/d)^{1/4}` and zero rows below them, so that
        :math:`c^2 q^\top k/\sqrt{d_\text{big}} = q^\top k/\sqrt d`: the models of head dimension
        :math:`d` are nested in those of any larger one (chapter 4, check 4.4b). The new model is
        built like any other (its layers draw their default initialisation from torch's global
        generator) and then overwritten.
        """
        d_big = C.positive_int(d_big, "d_big")
        if d_big < self.d:
            raise ValueError(f"d_big must be >= d = {self.d}, got {d_big}")
        big = QueryKeyKernelModel(self.d_t, self.d_s, d_big, hidden=self.hidden, depth=self.depth,
                                  dtype=self.dtype)
        c = (d_big / self.d) ** 0.25
        with torch.no_grad():
            for small_map, big_map in ((self.query, big.query), (self.key, big.key)):
                for p_small, p_big in zip(small_map.parameters(), big_map.parameters()):
                    if p_small.shape == p_big.shape:  # hidden layers: copied
                        p_big.copy_(p_small)
                    else:  # the last layer: rows copied and scaled, the others zero
                        p_big.zero_()
                        p_big[: self.d] = c * p_small
        return big


@dataclass
class KernelFit:
    """Result of :func:`fit_kernel_model`: the model, its sup and RMS errors on the test grid
    (relative to the sup of the target there) and the final training loss."""

    model: QueryKeyKernelModel
    sup_error: float
    rms_error: float
    train_loss: float


def fit_kernel_model(model: QueryKeyKernelModel, log_target, t_train: Tensor, s_train: Tensor,
                     t_test: Tensor, s_test: Tensor, *, steps: int = 300) -> KernelFit:
    r"""Fit ``model`` to a positive target kernel by least squares on the logits.

    Minimises :math:`\operatorname{mean}_{ij}\big(\log\hat\kappa(t_i,s_j) - \log\kappa^*(t_i,s_j)\big)^2`
    with L-BFGS (strong Wolfe line search), then reports
    :math:`\sup_{ij}|\hat\kappa - \kappa^*| / \sup|\kappa^*|` on the test pairs. ``log_target``
    maps ``(t (n, d_t), s (m, d_s))`` to ``(n, m)`` log-kernel values.
    """
    if not isinstance(model, QueryKeyKernelModel):
        raise TypeError("model must be a QueryKeyKernelModel")
    steps = C.positive_int(steps, "steps")
    for name, a in (("t_train", t_train), ("s_train", s_train), ("t_test", t_test), ("s_test", s_test)):
        C.float_tensor(a, name, min_dim=2)
    y = log_target(t_train, s_train)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, history_size=50,
                            tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((model.log_kernel(t_train, s_train) - y) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(((model.log_kernel(t_train, s_train) - y) ** 2).mean())
        kt = log_target(t_test, s_test).exp()
        err = model(t_test, s_test) - kt
        sup = float(err.abs().max() / kt.abs().max())
        rms = float(err.pow(2).mean().sqrt() / kt.abs().max())
    return KernelFit(model=model, sup_error=sup, rms_error=rms, train_loss=loss)
