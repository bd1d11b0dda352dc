r"""Learning curves of pseudo-likelihood in a Gaussian (high-temperature) Potts scenario: theory and simulation.

Scenario (chapter 2, claim 2.7). Positional couplings from the Gaussian orthogonal ensemble,
:math:`K = \nu I + \Omega/\sqrt L` with :math:`\Omega\sim\mathrm{GOE}(L)` (off-diagonal
:math:`\mathcal N(0,1)`, diagonal :math:`\mathcal N(0,2)`), and Gaussian "spins"
:math:`x\sim\mathcal N(0, K^{-1})`: the quadratic (high-temperature) limit of a Potts model with
:math:`P(x)\propto\exp(-\tfrac12 x^\top K x)`. Each conditional is linear-Gaussian,

.. math:: x_i \mid x_{\setminus i} \sim \mathcal N\big(w^{*}\cdot x_{\setminus i},\ \sigma_i^2\big),
          \qquad w^*_j = -K_{ij}/K_{ii},\quad \sigma_i^2 = 1/K_{ii},

so learning row :math:`i` of a (linear) factored-attention matrix :math:`A_{i\cdot}` by Gaussian
pseudo-likelihood with an :math:`\ell_2` penalty is ridge regression of :math:`x_i` on
:math:`x_{\setminus i}` with :math:`n = \alpha L` samples:

.. math:: \hat w = \arg\min_w \frac1n\sum_{\mu=1}^n (x^\mu_i - w\cdot x^\mu_{\setminus i})^2 + \lambda\|w\|^2 .

Its test error :math:`\varepsilon_g = \mathbb E(x_i - \hat w\cdot x_{\setminus i})^2 = \sigma_i^2 +
(\hat w - w^*)^\top S(\hat w - w^*)`, with :math:`S = (K^{-1})_{\setminus i,\setminus i}` the
feature covariance, concentrates for large :math:`L` on the replica-symmetric /
deterministic-equivalent formula (eigenvalues :math:`s_k` of :math:`S`, teacher components
:math:`w_k` in its eigenbasis):

.. math:: \kappa = \lambda + \frac{\kappa}{n}\sum_k\frac{s_k}{s_k+\kappa},\qquad
          \mathrm{df}_2 = \sum_k\frac{s_k^2}{(s_k+\kappa)^2},

.. math:: \varepsilon_g = \sigma^2 + \frac{\kappa^2\sum_k s_k w_k^2/(s_k+\kappa)^2 + \sigma^2\,\mathrm{df}_2/n}{1-\mathrm{df}_2/n}.

This is the standard ridge result (e.g. Hastie et al. 2022; Bach 2024), applied here by the book to
the Gaussian pseudo-likelihood problem; it is *not* the paper's discrete-Potts replica computation,
whose equations the book did not have. Used by chapter 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq

from . import _checks as C

Tensor = torch.Tensor

__all__ = [
    "goe",
    "gaussian_potts_precision",
    "sample_gaussian",
    "site_problems",
    "ridge_kappa",
    "ridge_generalization_error",
    "theory_learning_curve",
    "ridge_fit_all_sites",
    "simulate_learning_curve",
    "LearningCurve",
]


def goe(L: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""A GOE matrix :math:`\Omega = (G + G^\top)/\sqrt2`, :math:`G_{ij}\sim\mathcal N(0,1)`: off-diagonal variance 1, diagonal 2."""
    C.positive_int(L, "L")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    G = torch.randn(L, L, generator=generator, dtype=dtype)
    return (G + G.T) / math.sqrt(2.0)


def gaussian_potts_precision(L: int, *, nu: float = 3.0, generator: torch.Generator,
                             dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Precision matrix :math:`K = \nu I + \Omega/\sqrt L` of the Gaussian scenario (``(L, L)``).

    The spectrum of :math:`\Omega/\sqrt L` fills :math:`[-2, 2]`, so :math:`\nu > 2` keeps :math:`K`
    positive definite for large :math:`L` (checked; ``ValueError`` otherwise).
    """
    nu = C.positive(nu, "nu")
    K = nu * torch.eye(L, dtype=dtype) + goe(L, generator=generator, dtype=dtype) / math.sqrt(L)
    if float(torch.linalg.eigvalsh(K)[0]) <= 0:
        raise ValueError(f"K = nu I + GOE/sqrt(L) is not positive definite for nu={nu}; take nu > 2")
    return K


def sample_gaussian(K: Tensor, n: int, *, generator: torch.Generator) -> Tensor:
    r"""``n`` samples ``(n, L)`` of :math:`x\sim\mathcal N(0, K^{-1})` (via the Cholesky factor of :math:`K`)."""
    K = C.float_tensor(K, "K", min_dim=2)
    C.positive_int(n, "n")
    R = torch.linalg.cholesky(K).mT  # K = R^T R, R upper triangular
    z = torch.randn(K.shape[0], n, generator=generator, dtype=K.dtype)
    return torch.linalg.solve_triangular(R, z, upper=True).T  # cov = R^{-1} R^{-T} = K^{-1}


def _others(L: int) -> Tensor:
    # (L, L-1): row i lists the sites j != i
    ar = torch.arange(L)
    return torch.stack([torch.cat([ar[:i], ar[i + 1:]]) for i in range(L)])


@dataclass(frozen=True)
class SiteProblems:
    """Per-site ridge problems: teacher rows ``w_star`` ``(L, L-1)``, noise ``sigma2`` ``(L,)``,
    feature covariances ``S`` ``(L, L-1, L-1)`` and the index of the other sites ``others`` ``(L, L-1)``."""

    w_star: Tensor
    sigma2: Tensor
    S: Tensor
    others: Tensor


def site_problems(K: Tensor) -> SiteProblems:
    r"""The :math:`L` linear-Gaussian conditionals of :math:`\mathcal N(0,K^{-1})`: :math:`w^*_i = -K_{i,\setminus i}/K_{ii}`, :math:`\sigma^2_i = 1/K_{ii}`, :math:`S_i = (K^{-1})_{\setminus i\setminus i}`."""
    K = C.float_tensor(K, "K", min_dim=2)
    L = K.shape[0]
    if K.dim() != 2 or K.shape[1] != L:
        raise ValueError(f"K must be square, got {tuple(K.shape)}")
    idx = _others(L)
    d = K.diagonal()
    w = -K[torch.arange(L)[:, None], idx] / d[:, None]
    Kinv = torch.linalg.inv(K)
    S = Kinv[idx[:, :, None], idx[:, None, :]]
    return SiteProblems(w_star=w, sigma2=1.0 / d, S=S, others=idx)


def ridge_kappa(s: np.ndarray, n: float, lam: float) -> float:
    r"""Solve :math:`\kappa = \lambda + \frac{\kappa}{n}\sum_k s_k/(s_k+\kappa)` for :math:`\kappa>0` (``lam > 0``)."""
    s = np.asarray(s, dtype=float)
    lam = C.positive(lam, "lam")
    n = C.positive(n, "n")
    f = lambda k: k - lam - (k / n) * np.sum(s / (s + k))  # noqa: E731
    hi = lam + s.sum() / n + 1e-12
    return float(brentq(f, lam, hi, xtol=1e-15, rtol=1e-13, maxiter=500))


def ridge_generalization_error(s: np.ndarray, w: np.ndarray, sigma2: float, n: float, lam: float) -> float:
    r"""Deterministic-equivalent test error of ridge regression (see the module docstring).

    ``s`` are the feature-covariance eigenvalues, ``w`` the teacher's components in that eigenbasis,
    ``sigma2`` the noise variance, ``n`` the number of samples, ``lam`` the ridge :math:`\lambda`.
    """
    s = np.asarray(s, dtype=float)
    w = np.asarray(w, dtype=float)
    if s.shape != w.shape:
        raise ValueError(f"s {s.shape} and w {w.shape} must have the same shape")
    sigma2 = C.nonneg(sigma2, "sigma2")
    k = ridge_kappa(s, n, lam)
    df2 = np.sum(s**2 / (s + k) ** 2)
    bias = k**2 * np.sum(s * w**2 / (s + k) ** 2)
    return float(sigma2 + (bias + sigma2 * df2 / n) / (1.0 - df2 / n))


def theory_learning_curve(K: Tensor, alphas: Sequence[float], lam: float) -> np.ndarray:
    r"""Theory :math:`\varepsilon_g(\alpha)` averaged over the :math:`L` sites, ``n = alpha * L`` samples."""
    P = site_problems(K)
    L = K.shape[0]
    evals, evecs = torch.linalg.eigh(P.S)  # (L, L-1), (L, L-1, L-1)
    wk = (evecs.mT @ P.w_star.unsqueeze(-1)).squeeze(-1)
    ev, wk, s2 = evals.numpy(), wk.numpy(), P.sigma2.numpy()
    out = []
    for a in alphas:
        a = C.positive(float(a), "alpha")
        n = a * L
        out.append(np.mean([ridge_generalization_error(ev[i], wk[i], s2[i], n, lam) for i in range(L)]))
    return np.array(out)


def ridge_fit_all_sites(x: Tensor, lam: float) -> Tensor:
    r"""Ridge estimates of every row at once: ``(L, L-1)``, :math:`\hat w_i = (G_{\setminus i\setminus i}+\lambda I)^{-1}G_{\setminus i, i}`, :math:`G = x^\top x/n`."""
    x = C.float_tensor(x, "x", min_dim=2)
    lam = C.nonneg(lam, "lam")
    n, L = x.shape
    idx = _others(L)
    G = x.T @ x / n
    A = G[idx[:, :, None], idx[:, None, :]] + lam * torch.eye(L - 1, dtype=x.dtype)
    b = G[idx, torch.arange(L)[:, None]]
    return torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class LearningCurve:
    """Simulated learning curve: ``alphas``, mean test error ``mean`` and its standard error ``sem``."""

    alphas: np.ndarray
    mean: np.ndarray
    sem: np.ndarray


def simulate_learning_curve(K: Tensor, alphas: Sequence[float], lam: float, *, repeats: int,
                            generator: torch.Generator) -> LearningCurve:
    r"""Simulated :math:`\varepsilon_g(\alpha)`: fresh data ``repeats`` times, ridge on every site, exact test error.

    The test error of each site is computed exactly from the model,
    :math:`\sigma_i^2 + (\hat w_i - w^*_i)^\top S_i (\hat w_i - w^*_i)`, then averaged over sites;
    ``sem`` is the standard error over repeats.
    """
    C.positive_int(repeats, "repeats")
    P = site_problems(K)
    L = K.shape[0]
    means, sems = [], []
    for a in alphas:
        n = max(1, int(round(C.positive(float(a), "alpha") * L)))
        errs = []
        for _ in range(repeats):
            x = sample_gaussian(K, n, generator=generator)
            d = ridge_fit_all_sites(x, lam) - P.w_star
            e = P.sigma2 + (d.unsqueeze(1) @ P.S @ d.unsqueeze(-1)).squeeze(-1).squeeze(-1)
            errs.append(float(e.mean()))
        errs = np.array(errs)
        means.append(errs.mean())
        sems.append(errs.std(ddof=1) / math.sqrt(repeats) if repeats > 1 else float("nan"))
    return LearningCurve(np.asarray(alphas, dtype=float), np.array(means), np.array(sems))
