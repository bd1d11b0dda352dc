"""Unit tests for lib.wasserstein (chapter 3, claim 3.12): the energy of Sinkhorn attention."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from lib import pde
from lib import wasserstein as wg

DT = torch.float64


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=DT)


def _gaussian(d, seed):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((d, d))
    S = G @ G.T / d + 0.3 * np.eye(d)
    m = 0.5 * rng.standard_normal(d)
    A = rng.standard_normal((d, d))
    return m, S, (A + A.T) / 2, A


# ------------------------------------------------------------------ Gaussian closed forms


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_gaussian_gradient_is_the_authors_sinkhorn_field(d):
    """Autograd of the closed-form energy = the authors' Sinkhorn closure with V = Q^T K = A."""
    for seed in range(5):
        m, S, A, _ = _gaussian(d, seed)
        Bg, cg = wg.gaussian_gradient_field(m, S, A)
        # Q = I, K = A: K^T Q = A = Q^T K (symmetric), V = A
        B, c = pde.affine_field(m, S, Q=np.eye(d), K=A, V=A, variant="sinkhorn")
        assert np.abs(B - Bg).max() <= 1e-10 * np.abs(B).max()
        assert np.abs(c - cg).max() <= 1e-10 * max(np.abs(c).max(), 1.0)
        assert wg.energy_rate(m, S, A, B, c) == pytest.approx(-1.0, abs=1e-10)


def test_gaussian_gradient_matches_finite_differences():
    m, S, A, _ = _gaussian(3, 7)
    B, c = wg.gaussian_gradient_field(m, S, A)
    G, gm = -B / 2, 2 * (-B / 2) @ m - c
    h = 1e-6
    rng = np.random.default_rng(0)
    for _ in range(4):
        D = rng.standard_normal((3, 3))
        D = (D + D.T) / 2
        fd = (wg.gaussian_energy(m, S + h * D, A) - wg.gaussian_energy(m, S - h * D, A)) / (2 * h)
        assert fd == pytest.approx(np.sum(G * D), rel=1e-6, abs=1e-9)
        u = rng.standard_normal(3)
        fd = (wg.gaussian_energy(m + h * u, S, A) - wg.gaussian_energy(m - h * u, S, A)) / (2 * h)
        assert fd == pytest.approx(gm @ u, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("d", [2, 3])
def test_cross_covariance_matches_authors_closure_nonsymmetric(d):
    """C^T S^{-1} is the authors' rhs_sinkhorn field (V = I), also for non-symmetric A."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        Q, K = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        _, S, _, _ = _gaussian(d, seed)
        C = wg.gaussian_cross_covariance(S, K.T @ Q)
        B, _ = pde.affine_field(np.zeros(d), S, Q=Q, K=K, V=np.eye(d), variant="sinkhorn")
        assert np.abs(C.T @ np.linalg.inv(S) - B).max() <= 1e-9 * np.abs(B).max()
        # plan covariance [[S, C], [C^T, S]] is positive definite
        assert np.linalg.eigvalsh(np.block([[S, C], [C.T, S]]))[0] > 0


def test_gaussian_energy_is_the_entropic_ot_of_samples():
    """Closed form against POT's entropic plan on samples, at the samples' own mean and
    covariance (what is left is the non-Gaussian sampling error, well under 2%)."""
    m, S, A, _ = _gaussian(2, 3)
    A = 0.5 * A
    rng = np.random.default_rng(1)
    n = 300
    x = m + rng.standard_normal((n, 2)) @ np.linalg.cholesky(S).T
    M = -(x @ A.T @ x.T)  # cost c_ij = -x_j^T A x_i
    a = np.full(n, 1.0 / n)
    pi = ot.sinkhorn(a, a, M, reg=1.0, method="sinkhorn_log", numItermax=5000, stopThr=1e-9)
    value = 0.5 * float(np.sum(pi * M) + np.sum(pi * np.log(pi * n * n + 1e-300)))
    closed = wg.gaussian_energy(x.mean(0), np.cov(x.T, bias=True), A)
    assert value == pytest.approx(closed, rel=0.02)
    assert value != pytest.approx(wg.gaussian_energy(x.mean(0), np.cov(x.T, bias=True), 1.2 * A), rel=0.02)
    # the library's particle energy gives the same number from the same points
    assert float(wg.particle_energy(_t(x), _t(A), tol=1e-10)) == pytest.approx(value, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 3.0))
def test_energy_decreases_along_the_gradient_flow(seed, scale):
    """Property: V = A symmetric gives rate -1 (energy-dissipation identity) on random Gaussians."""
    m, S, A, _ = _gaussian(2, seed)
    A = scale * A
    B, c = pde.affine_field(m, S, Q=np.eye(2), K=A, V=A, variant="sinkhorn")
    assert wg.energy_rate(m, S, A, B, c) == pytest.approx(-1.0, abs=1e-8)


def _sym2(a):
    return np.array([[a[0], a[1]], [a[1], a[2]]])


def test_adversary_cannot_increase_the_gradient_flow_energy_but_finds_nonsymmetric_increase():
    def grad_flow(m, S, a):
        A = _sym2(a)
        return (A, *pde.affine_field(m, S, Q=np.eye(2), K=A, V=A, variant="sinkhorn"))

    def nonsym(m, S, a):
        K = a.reshape(2, 2)
        return (K.T, *pde.affine_field(m, S, Q=np.eye(2), K=K, V=K, variant="sinkhorn"))

    best, arg = wg.adversarial_energy_rate(grad_flow, d=2, n_params=3, rng=np.random.default_rng(0),
                                           n_starts=2, max_evals=200)
    assert best <= -1.0 + 1e-9 and np.all(np.array(arg["start_rates"]) <= -1.0 + 1e-9)
    bad, _ = wg.adversarial_energy_rate(nonsym, d=2, n_params=4, rng=np.random.default_rng(0),
                                        n_starts=2, max_evals=200)
    assert bad > 0.0


def test_gaussian_inputs_are_checked():
    m, S, A, _ = _gaussian(2, 0)
    with pytest.raises(ValueError, match="positive definite"):
        wg.gaussian_energy(m, np.zeros((2, 2)), A)
    with pytest.raises(ValueError, match="symmetric"):
        wg.gaussian_energy(m, np.array([[1.0, 0.5], [0.0, 1.0]]), A)
    with pytest.raises(ValueError, match="shape"):
        wg.gaussian_energy(np.zeros(3), S, A)
    with pytest.raises(ValueError, match="non-finite"):
        wg.gaussian_energy(m, S, np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="A must be"):
        wg.gaussian_cross_covariance(S, np.eye(3))


# ------------------------------------------------------------------ particles


@pytest.mark.parametrize("d", [1, 2, 3])
def test_particle_gradient_is_the_sinkhorn_attention_field(d):
    """-N grad E_N (autograd through the envelope) = Sinkhorn attention with V = A, A symmetric."""
    _, _, A, _ = _gaussian(d, d)
    A = 0.5 * A
    x = torch.randn(2, 30, d, dtype=DT, generator=torch.Generator().manual_seed(d))
    v = pde.particle_velocity(x, Q=_t(np.eye(d)), K=_t(A), V=_t(A), variant="sinkhorn", sinkhorn_tol=1e-12)
    vg = wg.particle_gradient_velocity(x, _t(A))
    assert (v - vg).abs().max() <= 1e-9 * v.abs().max()


def test_particle_gradient_matches_finite_differences():
    _, _, A, _ = _gaussian(2, 5)
    x = torch.randn(12, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    v = wg.particle_gradient_velocity(x, _t(A))
    h = 1e-6
    for i, k in [(0, 0), (3, 1), (11, 0)]:
        e = torch.zeros_like(x)
        e[i, k] = h
        fd = (wg.particle_energy(x + e, _t(A)) - wg.particle_energy(x - e, _t(A))) / (2 * h)
        assert float(-12 * fd) == pytest.approx(float(v[i, k]), rel=1e-5, abs=1e-8)


def test_particle_adversary_over_clouds():
    """Optimise a 5-token cloud to make the energy rise: impossible for the gradient flow
    (rate = -1), found for a non-symmetric Q^T K with V = Q^T K."""
    A = _t([[0.6, 0.2], [0.2, -0.4]])
    Kn = _t([[0.3, 1.2], [-0.9, 0.2]])

    def rate(z, K, A_energy):
        x = _t(1.5 * np.tanh(z.reshape(5, 2)))  # a bounded box keeps Sinkhorn well conditioned
        v = pde.particle_velocity(x, Q=_t(np.eye(2)), K=K, V=K, variant="sinkhorn", sinkhorn_tol=1e-12)
        g = -wg.particle_gradient_velocity(x, A_energy) / 5  # grad of E_N
        return float((g * v).sum() / ((v**2).sum() / 5))

    rng = np.random.default_rng(0)
    worst, best_bad = -np.inf, -np.inf
    for _ in range(2):
        z0 = rng.standard_normal(10)
        worst = max(worst, rate(z0, A, A))
        r = minimize(lambda z: -rate(z, A, A), z0, method="Nelder-Mead", options={"maxfev": 150})
        worst = max(worst, -r.fun)
        r = minimize(lambda z: -rate(z, Kn, Kn.T), z0, method="Nelder-Mead", options={"maxfev": 150})
        best_bad = max(best_bad, -r.fun)
    assert worst <= -1.0 + 1e-8
    assert best_bad > 0.0


def test_particle_inputs_are_checked():
    with pytest.raises(ValueError, match="A must be"):
        wg.particle_energy(torch.zeros(4, 2, dtype=DT), torch.eye(3, dtype=DT))
    with pytest.raises(TypeError):
        wg.particle_energy(np.zeros((4, 2)), torch.eye(2, dtype=DT))
