r"""Sinkhorn attention as a Wasserstein gradient flow: the entropic self-transport energy.

Chapter 3 (:ref:`ch-pde`). Sinkhorn attention (:func:`lib.pde.particle_velocity`,
``variant="sinkhorn"``) moves a token cloud :math:`\mu` with the field
:math:`\Gamma_\mu(x) = V\,\mathbb E_\pi[y\mid x]`, where :math:`\pi` is the entropic optimal
transport plan (regularisation :math:`\varepsilon = 1`) of :math:`\mu` with itself for the cost
:math:`c(x, y) = -\langle Qx, Ky\rangle = -y^\top A x`, :math:`A = K^\top Q`. Its energy is half
the entropic self-transport cost,

.. math::

   \mathcal E(\mu) = \tfrac12\,\mathrm{OT}_1(\mu,\mu),\qquad
   \mathrm{OT}_1(\mu,\nu) = \min_{\pi\in\Pi(\mu,\nu)} \int c\,d\pi + \mathrm{KL}(\pi\,|\,\mu\otimes\nu).

**Derivation (this book's, following Sander et al. 2022, Sinkformers).** With the Schrödinger
potentials :math:`(f, g)` of :math:`\mathrm{OT}_1(\mu,\mu)`, the first variation of
:math:`\mu\mapsto\mathrm{OT}_1(\mu,\mu)` (``\mu`` in both marginals) is :math:`f + g` up to a
constant, and :math:`\nabla f(x) = -A^\top\mathbb E_\pi[y\mid x]`,
:math:`\nabla g(y) = -A\,\mathbb E_\pi[x\mid y]`. The Wasserstein gradient flow
:math:`\dot x = -\nabla\frac{\delta\mathcal E}{\delta\mu}(x)` therefore has velocity
:math:`\tfrac12\big(A^\top\mathbb E_\pi[y\mid x] + A\,\mathbb E_\pi[x'\mid y = x]\big)`. When
:math:`A` is **symmetric** the plan is symmetric, both terms agree, and the velocity is
:math:`A\,\mathbb E_\pi[y\mid x]`: Sinkhorn attention with :math:`V = Q^\top K\,(= K^\top Q = A)`.
So the theory requires symmetric :math:`Q^\top K` **and** :math:`V = Q^\top K` (or a positive
multiple, which rescales time); :math:`V = I` is a gradient flow only when :math:`A` is a
positive multiple of the identity. Along such a flow
:math:`\frac{d}{dt}\mathcal E(\mu_t) = -\int|\Gamma_{\mu_t}|^2 d\mu_t \le 0`.

*Particles.* For :math:`\mu = \frac1N\sum_i\delta_{x_i}`, :func:`particle_energy` runs the
log-domain Sinkhorn loop of :func:`lib.attention.sinkhorn_attention` and returns
:math:`\mathcal E` as a differentiable function of the positions at the optimal plan (Danskin's
envelope theorem: the plan's own dependence does not contribute to the gradient); the
Wasserstein gradient at token :math:`i` is :math:`N\nabla_{x_i}\mathcal E`
(:func:`particle_gradient_velocity`).

*Gaussians.* For :math:`\mu = \mathcal N(m,\Sigma)` the plan is Gaussian. With
:math:`\tilde A = \Sigma^{1/2}A\Sigma^{1/2}` and :math:`\lambda_k` the eigenvalues of
:math:`\tilde A\tilde A^\top` (those of :math:`\Sigma A\Sigma A^\top`), the optimal
cross-covariance is :math:`C = \Sigma^{1/2}\tilde C\Sigma^{1/2}`,
:math:`\tilde C = 2\tilde A^\top\big(I + (I + 4\tilde A\tilde A^\top)^{1/2}\big)^{-1}`
(:func:`gaussian_cross_covariance`), and

.. math::

   \mathrm{OT}_1 = -m^\top A m + \sum_k h(\lambda_k),\qquad
   h(\lambda) = -\frac{s-1}{2} + \frac12\log\frac{1+s}{2},\quad s = \sqrt{1 + 4\lambda}

(:func:`gaussian_energy`; this book's derivation: whiten, then the stationarity condition
:math:`\tilde C = \tilde A^\top(I - \tilde C^\top\tilde C)` decouples along the singular vectors
of :math:`\tilde A`). On Gaussians the Wasserstein gradient of :math:`\mathcal E` is the affine
field :math:`v(x) = -2G(x - m) - \partial_m\mathcal E` with :math:`G = \partial_\Sigma\mathcal E`
(symmetric): :func:`gaussian_gradient_field` computes it by automatic differentiation, to be
compared with the authors' Sinkhorn closure (:func:`lib.pde.affine_field`).
:func:`energy_rate` is the normalised rate :math:`\dot{\mathcal E}/\int|v|^2d\mu` of any affine
flow (``-1`` for the gradient flow), the objective of the adversarial search
:func:`adversarial_energy_rate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize

from . import _checks as C
from .attention import sinkhorn_attention

Tensor = torch.Tensor
DT = torch.float64

__all__ = [
    "adversarial_energy_rate",
    "energy_rate",
    "gaussian_cross_covariance",
    "gaussian_energy",
    "gaussian_gradient_field",
    "particle_energy",
    "particle_gradient_velocity",
]


# ------------------------------------------------------------------ Gaussians


def _sym_matrix(a, name: str, d: int | None = None) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {a.shape}")
    if d is not None and a.shape[0] != d:
        raise ValueError(f"{name} must be ({d}, {d}), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return a


def _gaussian_args(m, S, A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    S = _sym_matrix(S, "S")
    d = S.shape[0]
    if np.abs(S - S.T).max() > 1e-8 * max(1.0, np.abs(S).max()):
        raise ValueError("S must be symmetric")
    if np.linalg.eigvalsh((S + S.T) / 2)[0] <= 0:
        raise ValueError("S must be positive definite (the energy needs a non-degenerate Gaussian)")
    A = _sym_matrix(A, "A", d)
    m = np.asarray(m, dtype=float)
    if m.shape != (d,) or not np.all(np.isfinite(m)):
        raise ValueError(f"m must be a finite vector of shape ({d},), got shape {m.shape}")
    return m, (S + S.T) / 2, A


def _energy_t(m: Tensor, S: Tensor, A: Tensor) -> Tensor:
    """Differentiable :math:`\\tfrac12\\mathrm{OT}_1` of N(m, S) with itself (torch)."""
    S = (S + S.T) / 2  # the gradient in S is then the symmetric one
    L = torch.linalg.cholesky(S)
    At = L.T @ A @ L  # same singular values as S^{1/2} A S^{1/2} (L = S^{1/2} U, U orthogonal)
    lam = torch.linalg.eigvalsh(At @ At.T).clamp_min(0.0)
    s = torch.sqrt(1.0 + 4.0 * lam)
    h = -(s - 1.0) / 2.0 + 0.5 * torch.log((1.0 + s) / 2.0)
    return 0.5 * (-(m @ A @ m) + h.sum())


def gaussian_energy(m, S, A) -> float:
    r"""The energy :math:`\mathcal E = \tfrac12\mathrm{OT}_1(\mu,\mu)` of :math:`\mu=\mathcal N(m,\Sigma)`.

    Closed form of the module docstring, for the cost :math:`-y^\top A x` (any square ``A``;
    the gradient-flow structure needs ``A`` symmetric). ``m`` ``(d,)``, ``S`` ``(d, d)``
    symmetric positive definite, ``A`` = :math:`K^\top Q` ``(d, d)``. Chapter 3, claim 3.12.
    """
    m, S, A = _gaussian_args(m, S, A)
    return float(_energy_t(torch.as_tensor(m, dtype=DT), torch.as_tensor(S, dtype=DT),
                           torch.as_tensor(A, dtype=DT)))


def gaussian_cross_covariance(S, A) -> np.ndarray:
    r"""Cross-covariance :math:`C = \mathrm{Cov}(x, y)` of the entropic self-plan of :math:`\mathcal N(m,\Sigma)`.

    :math:`C = \Sigma^{1/2}\tilde C\Sigma^{1/2}` with
    :math:`\tilde C = 2\tilde A^\top(I + (I + 4\tilde A\tilde A^\top)^{1/2})^{-1}`,
    :math:`\tilde A = \Sigma^{1/2}A\Sigma^{1/2}` (no inverse of ``A`` needed). The Sinkhorn
    field is then :math:`V(m + C^\top\Sigma^{-1}(x - m))`. Chapter 3, claim 3.12.
    """
    _, S, A = _gaussian_args(np.zeros(np.asarray(S).shape[0]), S, A)
    lam, U = np.linalg.eigh(S)
    r = (U * np.sqrt(lam)) @ U.T
    At = r @ A @ r
    w, W = np.linalg.eigh(At @ At.T)
    root = (W * np.sqrt(1.0 + 4.0 * np.clip(w, 0.0, None))) @ W.T
    Ct = 2.0 * At.T @ np.linalg.inv(np.eye(len(S)) + root)
    return r @ Ct @ r


def gaussian_gradient_field(m, S, A) -> tuple[np.ndarray, np.ndarray]:
    r"""Wasserstein gradient flow of :func:`gaussian_energy` restricted to Gaussians: ``(B, c)``.

    For a Gaussian the first variation of :math:`\mathcal E` is the quadratic
    :math:`x^\top Gx + h^\top x` with :math:`G = \partial_\Sigma\mathcal E` and
    :math:`h = \partial_m\mathcal E - 2Gm`, so :math:`-\nabla\frac{\delta\mathcal E}{\delta\mu}(x) = Bx + c`
    with :math:`B = -2G`, :math:`c = 2Gm - \partial_m\mathcal E`. The partial derivatives come from
    automatic differentiation of the closed form (an independent route from the authors' Sinkhorn
    closure, :func:`lib.pde.affine_field`, which it must equal for symmetric ``A`` and ``V = A``).
    """
    m, S, A = _gaussian_args(m, S, A)
    mt = torch.as_tensor(m, dtype=DT).requires_grad_(True)
    St = torch.as_tensor(S, dtype=DT).requires_grad_(True)
    gm, gS = torch.autograd.grad(_energy_t(mt, St, torch.as_tensor(A, dtype=DT)), (mt, St))
    G = gS.numpy()
    G = (G + G.T) / 2
    return -2.0 * G, 2.0 * G @ m - gm.numpy()


def energy_rate(m, S, A, B, c) -> float:
    r"""Normalised energy rate of the affine flow :math:`\dot x = Bx + c` at :math:`\mathcal N(m,\Sigma)`.

    :math:`\dot{\mathcal E} = \mathrm{tr}(G\dot\Sigma) + \partial_m\mathcal E\cdot\dot m` with
    :math:`\dot\Sigma = B\Sigma + \Sigma B^\top`, :math:`\dot m = Bm + c`, divided by the kinetic
    energy :math:`\int|Bx+c|^2d\mu = \mathrm{tr}(B\Sigma B^\top) + |Bm+c|^2`. Equal to ``-1`` for
    the Wasserstein gradient flow of :math:`\mathcal E` (energy-dissipation identity); a positive
    value means the energy *increases* along the flow. ``B`` ``(d, d)``, ``c`` ``(d,)``.
    """
    m, S, A = _gaussian_args(m, S, A)
    B = _sym_matrix(B, "B", len(m))
    c = np.asarray(c, dtype=float)
    Bg, cg = gaussian_gradient_field(m, S, A)
    G, gm = -Bg / 2, 2 * (-Bg / 2) @ m - cg
    Sdot, mdot = B @ S + S @ B.T, B @ m + c
    kinetic = float(np.trace(B @ S @ B.T) + mdot @ mdot)
    if kinetic <= 0:
        raise ValueError("the flow does not move this Gaussian (zero kinetic energy)")
    return float((np.sum(G * Sdot) + gm @ mdot) / kinetic)


def _unpack(z: np.ndarray, d: int, n_a: int):
    tri = np.tril_indices(d)
    L = np.zeros((d, d))
    L[tri] = z[: len(tri[0])]
    L[np.diag_indices(d)] = np.exp(L[np.diag_indices(d)])  # positive diagonal: S = L L^T is PD
    k = len(tri[0])
    m = z[k: k + d]
    a = z[k + d: k + d + n_a]
    return m, L @ L.T, a


def adversarial_energy_rate(
    flow: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    d: int,
    n_params: int,
    rng: np.random.Generator,
    n_starts: int = 4,
    max_evals: int = 400,
) -> tuple[float, dict]:
    r"""Search for a Gaussian start on which a flow *increases* the energy (largest :func:`energy_rate`).

    ``flow(m, S, a) -> (A, B, c)`` maps a Gaussian and free parameters ``a`` (``n_params``
    numbers, e.g. the entries of :math:`Q` and :math:`K`) to the energy's matrix ``A`` and the
    flow's affine field ``(B, c)``. The search runs Nelder-Mead from ``n_starts`` random starts
    (drawn from ``rng``) over :math:`\Sigma = LL^\top` (log-diagonal Cholesky factor), ``m`` and
    ``a``, maximising the normalised rate. Returns the largest rate found and its argument
    ``{"m", "S", "a", "rate", "start_rates"}`` (``start_rates``: the rates at the random starts).
    Chapter 3, claim 3.12b; a gradient flow must never exceed ``-1`` by more than round-off.
    """
    d = C.positive_int(d, "d")
    n_params = C.positive_int(n_params, "n_params")
    n_z = d * (d + 1) // 2 + d + n_params

    def neg_rate(z):
        m, S, a = _unpack(z, d, n_params)
        try:
            A, B, c = flow(m, S, a)
            return -energy_rate(m, S, A, B, c)
        except (ValueError, np.linalg.LinAlgError, torch.linalg.LinAlgError):
            return 1e3  # outside the flow's domain (e.g. a singular A for Sinkhorn)

    best, arg, start_rates = -math.inf, None, []
    for _ in range(n_starts):
        z0 = 0.5 * rng.standard_normal(n_z)
        start_rates.append(-neg_rate(z0))
        res = minimize(neg_rate, z0, method="Nelder-Mead",
                       options={"maxfev": max_evals, "xatol": 1e-8, "fatol": 1e-12})
        if -res.fun > best:
            best, arg = -float(res.fun), res.x
    m, S, a = _unpack(arg, d, n_params)
    return best, {"m": m, "S": S, "a": a, "rate": best, "start_rates": start_rates}


# ------------------------------------------------------------------ particles


def particle_energy(x: Tensor, A: Tensor, *, tol: float = 1e-12, max_iter: int = 20_000) -> Tensor:
    r"""The energy :math:`\tfrac12\mathrm{OT}_1(\mu_N,\mu_N)` of token clouds ``x`` ``(..., N, d)``.

    The plan :math:`P` (rows and columns summing to 1, :math:`\pi = P/N`) comes from
    :func:`lib.attention.sinkhorn_attention` with queries ``x`` and keys ``x @ A`` (scores
    :math:`x_j^\top A x_i`), run to the column tolerance ``tol``. The value
    :math:`\tfrac1N\sum_{ij}P_{ij}\big(-s_{ij} + \log(NP_{ij})\big)` is returned as a function of
    ``x`` at the fixed optimal plan, so ``autograd`` gives the envelope gradient. ``A`` ``(d, d)``.
    Returns ``(...)``.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    A = C.float_tensor(A, "A", min_dim=2)
    d, n = x.shape[-1], x.shape[-2]
    if A.shape != (d, d):
        raise ValueError(f"A must be ({d}, {d}), got {tuple(A.shape)}")
    with torch.no_grad():
        P = sinkhorn_attention(x, x @ A, x, beta=1.0, tol=tol, max_iter=max_iter).plan
        logP = torch.log(P.clamp_min(1e-300))
    s = x @ A.T @ x.transpose(-1, -2)  # s_ij = x_j^T A x_i  (query i, key j)
    ent = (P * (logP + math.log(n))).sum((-1, -2)) / n
    return 0.5 * (-(P * s).sum((-1, -2)) / n + ent)


def particle_gradient_velocity(x: Tensor, A: Tensor, *, tol: float = 1e-12) -> Tensor:
    r"""Wasserstein gradient-flow velocity :math:`-N\nabla_{x_i}\mathcal E(\mu_N)` of every token.

    Automatic differentiation of :func:`particle_energy`. For symmetric ``A`` it must equal the
    Sinkhorn attention field with :math:`V = A` (:func:`lib.pde.particle_velocity`). Shape of ``x``.
    """
    x = C.float_tensor(x, "x", min_dim=2).detach().requires_grad_(True)
    E = particle_energy(x, A, tol=tol)
    (g,) = torch.autograd.grad(E.sum(), x)
    return -x.shape[-2] * g
