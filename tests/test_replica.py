"""Tests of lib.replica (Gaussian pseudo-likelihood learning curves, chapter 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from lib import replica as R


def test_goe_and_precision():
    g = torch.Generator().manual_seed(0)
    O = R.goe(50, generator=g)
    assert torch.equal(O, O.T)
    K = R.gaussian_potts_precision(50, nu=3.0, generator=g)
    assert float(torch.linalg.eigvalsh(K)[0]) > 0


def test_sample_gaussian_covariance():
    K = R.gaussian_potts_precision(5, generator=torch.Generator().manual_seed(1))
    x = R.sample_gaussian(K, 200_000, generator=torch.Generator().manual_seed(2))
    cov = x.T @ x / x.shape[0]
    assert float((cov - torch.linalg.inv(K)).abs().max()) < 0.01


def test_site_problems_are_the_gaussian_conditionals():
    K = R.gaussian_potts_precision(6, generator=torch.Generator().manual_seed(3))
    Sig = torch.linalg.inv(K)
    P = R.site_problems(K)
    i = 2
    rest = [j for j in range(6) if j != i]
    w_ref = torch.linalg.solve(Sig[rest][:, rest], Sig[rest, i])      # regression coefficients
    s2_ref = Sig[i, i] - Sig[i, rest] @ w_ref                          # conditional variance
    assert torch.allclose(P.w_star[i], w_ref, atol=1e-12)
    assert abs(float(P.sigma2[i] - s2_ref)) < 1e-12
    assert torch.allclose(P.S[i], Sig[rest][:, rest])


def test_ridge_fit_matches_sklearn():
    K = R.gaussian_potts_precision(8, generator=torch.Generator().manual_seed(4))
    x = R.sample_gaussian(K, 30, generator=torch.Generator().manual_seed(5))
    lam = 0.05
    W = R.ridge_fit_all_sites(x, lam)
    xn = x.numpy()
    for i in (0, 5):
        rest = [j for j in range(8) if j != i]
        ref = Ridge(alpha=lam * 30, fit_intercept=False).fit(xn[:, rest], xn[:, i]).coef_
        assert np.allclose(W[i].numpy(), ref, atol=1e-10)


def test_ridge_fit_batched_and_exact_test_errors():
    K = R.gaussian_potts_precision(9, generator=torch.Generator().manual_seed(11))
    x = torch.stack([R.sample_gaussian(K, 14, generator=torch.Generator().manual_seed(s)) for s in (1, 2)])
    W = R.ridge_fit_all_sites(x, 0.02)
    assert W.shape == (2, 9, 8)
    P = R.site_problems(K)
    for b in range(2):
        G = x[b].T @ x[b] / 14
        for i in (0, 4, 8):
            r = P.others[i]
            ref = torch.linalg.solve(G[r][:, r] + 0.02 * torch.eye(8, dtype=x.dtype), G[r, i])
            assert torch.allclose(W[b, i], ref, atol=1e-10)
        d = W[b] - P.w_star
        ref_e = P.sigma2 + torch.einsum("ik,ikl,il->i", d, P.S, d)
        assert torch.allclose(R.site_test_errors(W[b], K), ref_e, atol=1e-12)


def test_vectorised_theory_matches_scalar_solver():
    K = R.gaussian_potts_precision(30, generator=torch.Generator().manual_seed(12))
    P = R.site_problems(K)
    ev, evec = torch.linalg.eigh(P.S)
    wk = (evec.mT @ P.w_star.unsqueeze(-1)).squeeze(-1)
    al = [0.6, 1.0, 2.5]
    for lam in (1e-3, 0.1):
        ref = [np.mean([R.ridge_generalization_error(ev[i].numpy(), wk[i].numpy(), float(P.sigma2[i]), a * 30, lam)
                        for i in range(30)]) for a in al]
        assert np.allclose(R.theory_learning_curve(K, al, lam), ref, rtol=1e-10)
    iso = R.theory_learning_curve(K, al, 1e-3, spectrum="isotropic")
    assert iso.shape == (3,) and not np.allclose(iso, R.theory_learning_curve(K, al, 1e-3), rtol=1e-3)
    with pytest.raises(ValueError, match="spectrum"):
        R.theory_learning_curve(K, al, 1e-3, spectrum="flat")


def test_simulation_keeps_every_repeat():
    K = R.gaussian_potts_precision(12, generator=torch.Generator().manual_seed(13))
    sim = R.simulate_learning_curve(K, [1.0, 3.0], 1e-2, repeats=4, generator=torch.Generator().manual_seed(14))
    assert sim.per_repeat.shape == (2, 4)
    assert np.allclose(sim.per_repeat.mean(1), sim.mean)
    assert np.allclose(sim.per_repeat.std(1, ddof=1) / 2, sim.sem)


def test_kappa_fixed_point_and_isotropic_limit():
    s = np.ones(50)
    k = R.ridge_kappa(s, 200.0, 1e-3)
    assert abs(k - 1e-3 - (k / 200) * np.sum(s / (s + k))) < 1e-12
    # isotropic features, tiny ridge, n = 4p: eps = sigma^2 / (1 - p/n) (+ vanishing bias)
    eps = R.ridge_generalization_error(s, np.zeros(50), 0.5, 200.0, 1e-9)
    assert abs(eps - 0.5 / (1 - 50 / 200)) < 1e-6


def test_theory_matches_simulation_at_moderate_size():
    K = R.gaussian_potts_precision(60, generator=torch.Generator().manual_seed(6))
    alphas = [0.5, 3.0]
    th = R.theory_learning_curve(K, alphas, 1e-2)
    sim = R.simulate_learning_curve(K, alphas, 1e-2, repeats=4, generator=torch.Generator().manual_seed(7))
    assert np.all(np.abs(sim.mean / th - 1) < 0.06)


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive definite"):
        R.gaussian_potts_precision(200, nu=0.5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="lam"):
        R.ridge_kappa(np.ones(3), 10.0, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        R.ridge_generalization_error(np.ones(3), np.ones(4), 1.0, 10.0, 0.1)
    with pytest.raises(TypeError, match="generator"):
        R.goe(3, generator=None)
    with pytest.raises(ValueError, match="alpha"):
        R.theory_learning_curve(torch.eye(3, dtype=torch.float64) * 3, [-1.0], 0.1)


def test_trained_factored_layer_reaches_the_ridge_estimate():
    """L-BFGS on the factored parametrisation (A, V) lands on the closed-form ridge rows."""
    K = R.gaussian_potts_precision(12, generator=torch.Generator().manual_seed(21))
    x = torch.stack([R.sample_gaussian(K, n, generator=torch.Generator().manual_seed(s))
                     for s, n in ((1, 30), (2, 30))])
    lam = 0.02
    model = R.train_factored_layer(x, lam, max_iter=500)
    J = model.couplings().detach()
    assert torch.equal(torch.diagonal(J, dim1=-2, dim2=-1), torch.zeros(2, 12, dtype=J.dtype))
    W = R.ridge_fit_all_sites(x, lam)
    rows = torch.arange(12)[:, None].expand(12, 11)
    assert float((J[..., rows, R._others(12)] - W).abs().max()) < 1e-5  # L-BFGS tolerance


def test_factored_layer_penalty_is_scale_invariant():
    m = R.GaussianFactoredLayer(5)
    with torch.no_grad():
        m.A.copy_(torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
        p0 = float(m.penalty())
        x = torch.randn(7, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        y0 = m(x)
        m.A.mul_(2.5)
        m.V.div_(2.5)
        assert abs(float(m.penalty()) - p0) < 1e-12 * max(1.0, p0)
        assert torch.allclose(m(x), y0, atol=1e-12)
        # the diagonal is masked: a site never predicts itself
        m.A.zero_()
        m.A.fill_diagonal_(1.0)
        assert float(m(x).abs().max()) == 0.0


def test_trained_learning_curve_matches_theory_far_from_the_peak():
    K = R.gaussian_potts_precision(40, generator=torch.Generator().manual_seed(8))
    cur = R.trained_learning_curve(K, [4.0], 1e-2, repeats=3, n_test=4000,
                                   generator=torch.Generator().manual_seed(9))
    th = R.theory_learning_curve(K, [4.0], 1e-2)
    assert cur.per_repeat.shape == (1, 3)
    assert abs(cur.mean[0] / th[0] - 1) < 0.05
    with pytest.raises(ValueError, match="n_test"):
        R.trained_learning_curve(K, [4.0], 1e-2, repeats=2, n_test=0,
                                 generator=torch.Generator().manual_seed(9))
    with pytest.raises(ValueError, match="lam"):
        R.train_factored_layer(torch.zeros(5, 3, dtype=torch.float64), -1.0)
