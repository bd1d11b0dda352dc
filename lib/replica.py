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
from torch import nn

from . import _checks as C

Tensor = torch.Tensor

__all__ = [
    "GaussianFactoredLayer",
    "LearningCurve",
    "gaussian_potts_precision",
    "goe",
    "ridge_fit_all_sites",
    "ridge_generalization_error",
    "ridge_kappa",
    "sample_gaussian",
    "simulate_learning_curve",
    "site_problems",
    "site_test_errors",
    "theory_learning_curve",
    "train_factored_layer",
    "trained_learning_curve",
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
    f = lambda k: k - lam - (k / n) * np.sum(s / (s + k))
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


def _kappa_all(s: np.ndarray, n: np.ndarray, lam: float, iters: int = 200) -> np.ndarray:
    """Vectorised :func:`ridge_kappa`: bisection for every row of ``s`` ``(..., p)`` and ``n`` ``(...)``.

    The root is bracketed by ``[lam, lam + sum(s)/n]``; 200 halvings reach float64 resolution.
    """
    lo = np.full(np.broadcast_shapes(s.shape[:-1], n.shape), lam, dtype=float)
    hi = lam + s.sum(-1) / n + 1e-12
    hi = np.broadcast_to(hi, lo.shape).copy()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        f = mid - lam - (mid / n) * np.sum(s / (s + mid[..., None]), axis=-1)
        neg = f < 0
        lo = np.where(neg, mid, lo)
        hi = np.where(neg, hi, mid)
        if np.all(hi - lo <= 1e-15 * hi):
            break
    return 0.5 * (lo + hi)


def theory_learning_curve(K: Tensor, alphas: Sequence[float], lam: float, *,
                          spectrum: str = "exact") -> np.ndarray:
    r"""Theory :math:`\varepsilon_g(\alpha)` averaged over the :math:`L` sites, ``n = alpha * L`` samples.

    ``spectrum="exact"`` uses each site's feature-covariance eigenvalues :math:`s_k` and teacher
    components :math:`w_k` (the formula of the module docstring, all sites and :math:`\alpha` at
    once). ``spectrum="isotropic"`` replaces :math:`S_i` by :math:`\bar s_i I` (its mean
    eigenvalue) with the same teacher norm: the theory one would write ignoring the structure of
    the couplings (chapter 2 uses it as a mismatched theory, the control of claim 2.7).
    """
    lam = C.positive(lam, "lam")
    if spectrum not in ("exact", "isotropic"):
        raise ValueError(f"spectrum must be 'exact' or 'isotropic', got {spectrum!r}")
    P = site_problems(K)
    L = K.shape[0]
    evals, evecs = torch.linalg.eigh(P.S)  # (L, L-1), (L, L-1, L-1)
    wk = (evecs.mT @ P.w_star.unsqueeze(-1)).squeeze(-1)
    ev, wk, s2 = evals.numpy(), wk.numpy(), P.sigma2.numpy()
    if spectrum == "isotropic":
        p = ev.shape[1]
        ev = np.repeat(ev.mean(1, keepdims=True), p, axis=1)
        wk = np.repeat(np.linalg.norm(wk, axis=1, keepdims=True) / math.sqrt(p), p, axis=1)
    n_all = np.array([C.positive(float(a), "alpha") * L for a in alphas])[:, None]  # (A, 1)
    chunk = max(1, 2_000_000 // ev.size)  # bound the (chunk, L, p) temporaries to ~16 MB
    out = []
    for start in range(0, n_all.shape[0], chunk):
        n = n_all[start : start + chunk]
        k = _kappa_all(ev[None], n, lam)  # (A, L)
        sk = ev[None] / (ev[None] + k[..., None]) ** 2  # s/(s+k)^2, (A, L, p)
        df2 = np.sum(ev[None] * sk, axis=-1)
        bias = k**2 * np.sum(sk * wk[None] ** 2, axis=-1)
        eps = s2[None] + (bias + s2[None] * df2 / n) / (1.0 - df2 / n)
        out.append(eps.mean(1))
    return np.concatenate(out)


def ridge_fit_all_sites(x: Tensor, lam: float) -> Tensor:
    r"""Ridge estimates of every row at once: ``(..., L, L-1)``, :math:`\hat w_i = (G_{\setminus i\setminus i}+\lambda I)^{-1}G_{\setminus i, i}`, :math:`G = x^\top x/n`.

    ``x`` is ``(..., n, L)`` (leading dimensions: independent data sets). All :math:`L` regressions
    come from one inverse :math:`\Theta = (G+\lambda I)^{-1}`: by the block-inverse (Schur
    complement) formula :math:`\hat w_i = -\Theta_{\setminus i, i}/\Theta_{ii}`, which costs
    :math:`O(L^3)` instead of :math:`O(L^4)` for :math:`L` separate solves.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    lam = C.nonneg(lam, "lam")
    n, L = x.shape[-2], x.shape[-1]
    G = x.mT @ x / n
    theta = torch.linalg.inv(G + lam * torch.eye(L, dtype=x.dtype))
    w_full = -theta / torch.diagonal(theta, dim1=-2, dim2=-1).unsqueeze(-1)  # row i: -Theta_{i,.}/Theta_ii
    rows = torch.arange(L)[:, None].expand(L, L - 1)
    return w_full[..., rows, _others(L)]


def site_test_errors(w_hat: Tensor, K: Tensor) -> Tensor:
    r"""Exact test errors :math:`\varepsilon_i = \sigma_i^2 + (\hat w_i - w^*_i)^\top S_i(\hat w_i - w^*_i)` of every row, ``(..., L)``.

    ``w_hat`` is ``(..., L, L-1)`` (row :math:`i` indexed by the sites :math:`j\neq i`), ``K`` the
    precision ``(L, L)``. Computed without forming the :math:`S_i`: embed each error vector in
    :math:`\mathbb R^L` with a zero at site :math:`i`, then :math:`\delta_i^\top S_i\delta_i =
    (D\Sigma D^\top)_{ii}` with :math:`\Sigma = K^{-1}`.
    """
    w_hat = C.float_tensor(w_hat, "w_hat", min_dim=2)
    P = site_problems(K)
    L = K.shape[0]
    if tuple(w_hat.shape[-2:]) != (L, L - 1):
        raise ValueError(f"w_hat must end in shape {(L, L - 1)}, got {tuple(w_hat.shape)}")
    D = torch.zeros(*w_hat.shape[:-2], L, L, dtype=w_hat.dtype)
    rows = torch.arange(L)[:, None].expand(L, L - 1)
    D[..., rows, P.others] = w_hat - P.w_star
    Sigma = torch.linalg.inv(K)
    return P.sigma2 + ((D @ Sigma) * D).sum(-1)


@dataclass(frozen=True)
class LearningCurve:
    """Simulated learning curve: ``alphas``, mean test error ``mean``, its standard error ``sem``
    and the values of every repeat ``per_repeat`` ``(len(alphas), repeats)``."""

    alphas: np.ndarray
    mean: np.ndarray
    sem: np.ndarray
    per_repeat: np.ndarray


def simulate_learning_curve(K: Tensor, alphas: Sequence[float], lam: float, *, repeats: int,
                            generator: torch.Generator) -> LearningCurve:
    r"""Simulated :math:`\varepsilon_g(\alpha)`: fresh data ``repeats`` times, ridge on every site, exact test error.

    For each :math:`\alpha`, ``repeats`` independent data sets of :math:`n = \mathrm{round}(\alpha L)`
    samples are drawn at once; every site's ridge estimate (:func:`ridge_fit_all_sites`) gets its
    exact test error (:func:`site_test_errors`), averaged over sites. ``mean`` is the mean over
    repeats and ``sem`` its standard error (``repeats >= 2``); ``per_repeat`` keeps every value.
    """
    C.positive_int(repeats, "repeats")
    L = K.shape[0]
    means, sems, each = [], [], []
    for a in alphas:
        n = max(1, round(C.positive(float(a), "alpha") * L))
        x = torch.stack([sample_gaussian(K, n, generator=generator) for _ in range(repeats)])
        errs = site_test_errors(ridge_fit_all_sites(x, lam), K).mean(-1).numpy()
        each.append(errs)
        means.append(errs.mean())
        sems.append(errs.std(ddof=1) / math.sqrt(repeats) if repeats > 1 else float("nan"))
    return LearningCurve(np.asarray(alphas, dtype=float), np.array(means), np.array(sems), np.array(each))


class GaussianFactoredLayer(nn.Module):
    r"""The factored attention layer for real-valued spins: :math:`\hat x_i = \sum_{j\neq i} A_{ij}\,V x_j`.

    With one colour (:math:`C = 1`) the value map :math:`V` is a scalar; it is kept as a parameter
    (initialised to 1), so the couplings are the products :math:`J_{ij} = A_{ij}V`, and the
    penalty :meth:`penalty` is taken on those products, :math:`\|AV\|_F^2`, which is invariant
    under the scale freedom :math:`A\to cA`, :math:`V\to V/c`. The diagonal of :math:`A` is masked
    (a site does not see itself). ``forward`` maps ``x`` ``(..., n, L)`` to the predictions
    ``(..., n, L)``; a leading batch shape ``batch`` trains independent layers at once.
    Chapter 2, claim 2.7e.
    """

    def __init__(self, L: int, *, batch: tuple[int, ...] = (), dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        C.positive_int(L, "L")
        self.L = L
        self.A = nn.Parameter(torch.zeros(*batch, L, L, dtype=dtype))
        self.V = nn.Parameter(torch.ones(*batch, 1, 1, dtype=dtype))
        self.register_buffer("offdiag", (~torch.eye(L, dtype=torch.bool)).to(dtype))

    def couplings(self) -> Tensor:
        """The effective couplings :math:`A_{ij}V` ``(..., L, L)`` (zero diagonal)."""
        return self.A * self.offdiag * self.V

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.couplings().mT

    def penalty(self) -> Tensor:
        r""":math:`\|AV\|_F^2` summed over the batch."""
        return (self.couplings() ** 2).sum()


def train_factored_layer(x: Tensor, lam: float, *, max_iter: int = 500, tolerance_grad: float = 1e-10,
                         history_size: int = 50) -> GaussianFactoredLayer:
    r"""Train a :class:`GaussianFactoredLayer` by Gaussian pseudo-likelihood with a penalty, full-batch L-BFGS.

    ``x`` ``(..., n, L)`` (leading dimensions: independent training sets, one layer each). The
    objective is the mean over sites of the per-site ridge objective,

    .. math:: \frac1L\sum_i\Big[\frac1n\sum_\mu\big(x^\mu_i-\textstyle\sum_{j\ne i}A_{ij}Vx^\mu_j\big)^2
              + \lambda\sum_{j\ne i}(A_{ij}V)^2\Big],

    summed over the leading dimensions (the sum of independent problems). Its minimiser in
    :math:`AV` is the ridge estimate of every row (:func:`ridge_fit_all_sites`); the layer is
    trained by gradient-based optimisation of :math:`(A, V)` from :math:`A = 0`, :math:`V = 1`
    (the same kind of training as the chapter's discrete layer), not solved in closed form.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    lam = C.nonneg(lam, "lam")
    C.positive_int(max_iter, "max_iter")
    n, L = x.shape[-2], x.shape[-1]
    model = GaussianFactoredLayer(L, batch=tuple(x.shape[:-2]), dtype=x.dtype)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, max_eval=int(1.25 * max_iter),
                            tolerance_grad=tolerance_grad, tolerance_change=1e-14,
                            history_size=history_size, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = ((x - model(x)) ** 2).sum() / (n * L) + lam * model.penalty() / L
        loss.backward()
        return loss

    opt.step(closure)
    return model


def trained_learning_curve(K: Tensor, alphas: Sequence[float], lam: float, *, repeats: int, n_test: int,
                           generator: torch.Generator, max_iter: int = 500) -> LearningCurve:
    r"""Learning curve of the *trained* factored layer: held-out test error against :math:`\alpha = n/L`.

    For each :math:`\alpha`, ``repeats`` independent training sets of :math:`n = \mathrm{round}(\alpha L)`
    samples of :math:`\mathcal N(0, K^{-1})` train one :class:`GaussianFactoredLayer` each
    (:func:`train_factored_layer`, all repeats at once); each layer's test error is its mean squared
    prediction error over sites on ``n_test`` fresh samples (a held-out test set per repeat), not
    the exact formula of :func:`site_test_errors`. Returns a :class:`LearningCurve` (mean over
    repeats, standard error, every repeat).
    """
    C.positive_int(repeats, "repeats")
    C.positive_int(n_test, "n_test")
    L = K.shape[0]
    means, sems, each = [], [], []
    for a in alphas:
        n = max(1, round(C.positive(float(a), "alpha") * L))
        x = torch.stack([sample_gaussian(K, n, generator=generator) for _ in range(repeats)])
        xt = torch.stack([sample_gaussian(K, n_test, generator=generator) for _ in range(repeats)])
        model = train_factored_layer(x, lam, max_iter=max_iter)
        with torch.no_grad():
            errs = ((xt - model(xt)) ** 2).mean(dim=(-2, -1)).numpy()
        each.append(errs)
        means.append(errs.mean())
        sems.append(errs.std(ddof=1) / math.sqrt(repeats) if repeats > 1 else float("nan"))
    return LearningCurve(np.asarray(alphas, dtype=float), np.array(means), np.array(sems), np.array(each))
