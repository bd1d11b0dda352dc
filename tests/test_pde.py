"""Unit tests for lib.pde (chapter 3): particle fields, RK4, Gaussian closures, closed forms."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from scipy.linalg import expm

from lib import pde

DT = torch.float64


def _params(d=2, seed=0):
    rng = np.random.default_rng(seed)
    Q = 0.5 * rng.standard_normal((d, d))
    K = 0.5 * rng.standard_normal((d, d))
    V = rng.standard_normal((d, d))
    G = rng.standard_normal((d, d))
    S = G @ G.T / d + 0.3 * np.eye(d)
    m = 0.3 * rng.standard_normal(d)
    return Q, K, V, S, m


def _t(a):
    return torch.as_tensor(a, dtype=DT)


# ------------------------------------------------------------------ particle fields

def test_softmax_field_matches_brute_force():
    Q, K, V, _, _ = _params(3)
    x = torch.randn(2, 50, 3, dtype=DT)
    F = pde.particle_velocity(x, Q=_t(Q), K=_t(K), V=_t(V), chunk_size=7)
    logits = (x @ _t(Q).T) @ (x @ _t(K).T).transpose(-1, -2)
    ref = torch.softmax(logits, -1) @ (x @ _t(V).T)
    assert torch.allclose(F, ref, atol=1e-12)


def test_causal_and_l2_and_sigmoid_fields_match_brute_force():
    Q, K, V, _, _ = _params(2, 1)
    x = torch.randn(40, 2, dtype=DT)
    q, k, v = x @ _t(Q).T, x @ _t(K).T, x @ _t(V).T
    mask = torch.ones(40, 40, dtype=torch.bool).tril()
    logits = (q @ k.T).masked_fill(~mask, -math.inf)
    ref = torch.softmax(logits, -1) @ v
    got = pde.particle_velocity(x, Q=_t(Q), K=_t(K), V=_t(V), causal=True, chunk_size=9)
    assert torch.allclose(got, ref, atol=1e-12)
    ref_l2 = torch.softmax(-torch.cdist(q, k) ** 2, -1) @ v
    assert torch.allclose(pde.particle_velocity(x, Q=_t(Q), K=_t(K), V=_t(V), variant="l2", chunk_size=16), ref_l2, atol=1e-12)
    ref_sig = torch.sigmoid(q @ k.T - 0.5) @ v / 40
    assert torch.allclose(pde.particle_velocity(x, Q=_t(Q), K=_t(K), V=_t(V), variant="sigmoid", bias=-0.5), ref_sig, atol=1e-12)


def test_multihead_field_is_sum_of_heads():
    Qh, Kh, Vh = pde.split_heads(*_params(4, 2)[:3], 2)
    x = torch.randn(30, 4, dtype=DT)
    got = pde.particle_velocity(x, Q=_t(Qh), K=_t(Kh), V=_t(Vh), variant="multihead")
    ref = sum(pde.particle_velocity(x, Q=_t(Qh[h]), K=_t(Kh[h]), V=_t(Vh[h])) for h in range(2))
    assert torch.allclose(got, ref, atol=1e-12)


def test_sinkhorn_plan_is_doubly_stochastic_and_matches_pot():
    Q, K, V, _, _ = _params(2, 3)
    x = torch.randn(60, 2, dtype=DT)
    from lib.attention import sinkhorn_attention
    res = sinkhorn_attention(x @ _t(Q).T, x @ _t(K).T, x @ _t(V).T, beta=1.0, tol=1e-12)
    P = res.plan.numpy()
    assert np.abs(P.sum(0) - 1).max() < 1e-10 and np.abs(P.sum(1) - 1).max() < 1e-10
    M = -((x @ _t(Q).T) @ (x @ _t(K).T).T).numpy()
    a = np.full(60, 1 / 60)
    P_ot = ot.sinkhorn(a, a, M - M.min(), reg=1.0, stopThr=1e-13, numItermax=100000) * 60
    assert np.abs(P - P_ot).max() < 1e-8
    F = pde.particle_velocity(x, Q=_t(Q), K=_t(K), V=_t(V), variant="sinkhorn")
    assert torch.allclose(F.mean(0), x.mean(0) @ _t(V).T, atol=1e-10)   # dm/dt = V m


def test_sphere_velocity_is_tangent():
    x = torch.nn.functional.normalize(torch.randn(3, 20, 4, dtype=DT), dim=-1)
    v = pde.sphere_velocity(x, beta=2.0)
    assert (v * x).sum(-1).abs().max() < 1e-13


# ------------------------------------------------------------------ RK4

def test_rk4_order_on_linear_ode():
    rng = np.random.default_rng(0)
    M = rng.standard_normal((3, 3))
    x0 = torch.randn(5, 3, dtype=DT)
    exact = x0.numpy() @ expm(M).T
    errs = []
    for n in (10, 20, 40):
        xT = pde.rk4(lambda t, x: x @ _t(M).T, x0, t1=1.0, n_steps=n).numpy()
        errs.append(np.abs(xT - exact).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 3.8) & (orders < 4.2)), orders


def test_rk4_time_dependent_and_saving():
    times, xs = pde.rk4(lambda t, x: torch.full_like(x, 2 * t), torch.zeros(1, dtype=DT), t1=1.0, n_steps=4, save_every=2)
    assert torch.allclose(times, torch.tensor([0.0, 0.5, 1.0], dtype=DT))
    assert abs(xs[-1].item() - 1.0) < 1e-14   # x = t^2, integrated exactly by RK4


# ------------------------------------------------------------------ Gaussian closure vs Monte Carlo

@pytest.mark.parametrize("variant", ["softmax", "l2", "multihead"])
def test_closed_form_field_matches_monte_carlo(variant):
    """E_y[w(x, y) V y] / E_y[w(x, y)] with y ~ N(m, S) by Monte Carlo at fixed queries x."""
    Q, K, V, S, m = _params(2, 4)
    if variant == "multihead":
        Q, K, V = pde.split_heads(Q, K, V, 2)
    B, c = pde.affine_field(m, S, Q=Q, K=K, V=V, variant=variant)
    rng = np.random.default_rng(1)
    y = m + rng.standard_normal((400_000, 2)) @ np.linalg.cholesky(S).T
    xq = np.array([[0.3, -0.4], [-0.5, 0.2], [0.0, 0.0]])
    heads = [(Q[h], K[h], V[h]) for h in range(2)] if variant == "multihead" else [(Q, K, V)]
    mc = 0.0
    for Qh, Kh, Vh in heads:
        if variant == "l2":
            logw = -(((xq @ Qh.T)[:, None, :] - (y @ Kh.T)[None]) ** 2).sum(-1)
        else:
            logw = (xq @ Qh.T) @ (y @ Kh.T).T
        w = np.exp(logw - logw.max(1, keepdims=True))
        mc = mc + (w @ y) / w.sum(1, keepdims=True) @ Vh.T
    closed = xq @ B.T + c
    assert np.abs(mc - closed).max() < 0.02


def test_sinkhorn_closure_scalar_case():
    """d = 1: the Gaussian entropic plan has cross-covariance c solving a = c / (s^2 - c^2)."""
    a, s, v = 0.7, 1.3, -0.4
    B, c0 = pde.affine_field(np.array([0.2]), np.array([[s]]), Q=np.array([[1.0]]), K=np.array([[a]]),
                             V=np.array([[v]]), variant="sinkhorn")
    c = (-1 + math.sqrt(1 + 4 * a * a * s * s)) / (2 * a)
    assert abs(B[0, 0] - v * c / s) < 1e-12
    assert abs(B[0, 0] * 0.2 + c0[0] - v * 0.2) < 1e-12   # mean velocity V m


def test_covariance_rhs_softmax_formula():
    Q, K, V, S, _ = _params(3, 5)
    A = K.T @ Q
    assert np.allclose(pde.covariance_rhs(S, Q=Q, K=K, V=V), V @ S @ A @ S + S @ A.T @ S @ V.T, atol=1e-13)
    m = np.ones(3)
    assert np.allclose(pde.mean_rhs(m, S, Q=Q, K=K, V=V), V @ (np.eye(3) + S @ A) @ m, atol=1e-13)


# ------------------------------------------------------------------ exact solutions

def test_exact_solution_matches_integrator_and_rk4():
    Q, K, _, S0, _ = _params(3, 6)
    A = K.T @ Q
    ts = np.linspace(0, 0.5 * min(pde.blowup_time(S0, A), 1.0), 5)
    tr = pde.evolve_covariance(S0, Q=Q, K=K, V=np.eye(3), t_max=ts[-1], t_eval=ts, method="DOP853", rtol=1e-12, atol=1e-14)
    ex = pde.exact_covariance_identity_v(S0, A, ts)
    assert np.abs(tr.S - ex).max() < 1e-9
    f = lambda t, S: S @ _t(A + A.T) @ S
    S_rk = pde.rk4(f, _t(S0), t1=ts[-1], n_steps=200).numpy()
    assert np.abs(S_rk - ex[-1]).max() < 1e-8


def test_schur_limit_and_blowup_time():
    Q, _K, _, S0, _ = _params(3, 7)
    q = Q[:1]
    Sinf = pde.schur_limit(S0, q)
    assert np.linalg.matrix_rank(Sinf, tol=1e-10) == 2 and np.abs(q @ Sinf).max() < 1e-12
    assert np.abs(pde.exact_covariance_identity_v(S0, -q.T @ q, 1e9) - Sinf).max() < 1e-7
    A = np.eye(3)
    ts = pde.blowup_time(S0, A)
    assert abs(ts - 1 / (2 * np.linalg.eigvalsh(S0).max())) < 1e-12
    tr = pde.evolve_covariance(S0, Q=np.eye(3), K=np.eye(3), V=np.eye(3), t_max=10.0, stop_trace=1e7, rtol=1e-11, atol=1e-12)
    assert tr.status == "blow-up" and abs(tr.t[-1] - ts) / ts < 1e-5
    assert pde.blowup_time(S0, -np.eye(3)) == math.inf


def test_convergence_event_and_psd():
    Q, _, _, S0, _ = _params(2, 8)
    tr = pde.evolve_covariance(S0, Q=Q, K=-Q, V=np.eye(2), t_max=1e6, stop_rhs=1e-6)
    assert tr.status == "converged" and tr.psd_violation < 1e-10
    assert np.linalg.norm(pde.covariance_rhs(tr.final, Q=Q, K=-Q, V=np.eye(2))) < 2e-6


def test_gaussian_flow_characteristics_consistent():
    Q, K, V, S0, m0 = _params(2, 9)
    fl = pde.gaussian_flow(m0, S0, Q=Q, K=K, V=V, t_eval=np.array([0.0, 0.1, 0.2]))
    # S(t) = Phi S0 Phi^T for an affine flow
    assert np.abs(fl.Phi[-1] @ S0 @ fl.Phi[-1].T - fl.S[-1]).max() < 1e-9
    assert np.allclose(fl.transport(m0[None]), fl.m[-1])


def test_cone_coordinates_roundtrip_and_grid():
    g = pde.covariance_grid(5, radius=0.5)
    assert g.shape == (25, 2, 2) and np.all(np.linalg.eigvalsh(g)[:, 0] > 0)
    z = pde.cone_coordinates(g)
    assert np.allclose(z[:, 2], 1.0) and np.allclose(pde.from_cone_coordinates(z), g)
    u = np.array([0.6, 0.8])
    assert abs(np.linalg.norm(pde.disk_coordinates(np.outer(u, u))) - 1) < 1e-12


def test_helpers():
    x0 = np.random.default_rng(0).standard_normal((50, 2))
    assert pde.affine_fit_residual(x0, x0 @ np.array([[1, 2], [3, 4.0]]) + 1) < 1e-12
    n = np.array([10, 100, 1000])
    assert abs(pde.loglog_slope(n, n ** -0.5) + 0.5) < 1e-12
    tr = pde.CovarianceTrajectory(t=np.array([0.0, 1.0, 2.0]), S=np.array([np.eye(2) * s for s in (0.5, 5, 50)]),
                                  status="t_max", psd_violation=0.0, nfev=0)
    assert np.allclose(pde.trace_crossing_times(tr, np.array([10.0, 1e3])), [1.0, np.nan], equal_nan=True)
    assert pde.numerical_rank(np.diag([1.0, 1e-3, 1e-9]), threshold=1e-6) == 2


# ------------------------------------------------------------------ bad input

def test_bad_inputs_raise_clear_errors():
    Q, K, V, S, m = _params(2, 10)
    with pytest.raises(ValueError, match="positive semi-definite"):
        pde.affine_field(m, np.array([[1.0, 0.0], [0.0, -1.0]]), Q=Q, K=K, V=V)
    with pytest.raises(ValueError, match="symmetric"):
        pde.covariance_rhs(np.array([[1.0, 0.5], [0.0, 1.0]]), Q=Q, K=K, V=V)
    with pytest.raises(ValueError, match="non-finite"):
        pde.evolve_covariance(np.array([[np.nan, 0], [0, 1.0]]), Q=Q, K=K, V=V, t_max=1.0)
    with pytest.raises(ValueError, match="invertible"):
        pde.covariance_rhs(S, Q=np.array([[1.0, 0.0]]), K=np.array([[1.0, 0.0]]), V=V, variant="sinkhorn")
    with pytest.raises(ValueError, match="variant"):
        pde.affine_field(m, S, Q=Q, K=K, V=V, variant="sigmoid")
    with pytest.raises(ValueError, match="non-finite"):
        pde.particle_velocity(torch.tensor([[math.nan, 0.0]], dtype=DT), Q=_t(Q), K=_t(K), V=_t(V))
    with pytest.raises(ValueError, match="causal"):
        pde.particle_velocity(torch.randn(5, 2, dtype=DT), Q=_t(Q), K=_t(K), V=_t(V), variant="sinkhorn", causal=True)
    with pytest.raises(ValueError, match="V must"):
        pde.particle_velocity(torch.randn(5, 2, dtype=DT), Q=_t(Q), K=_t(K), V=torch.eye(3, dtype=DT))
    with pytest.raises(ValueError, match="blow-up"):
        pde.exact_covariance_identity_v(S, np.eye(2), 1e3)
    with pytest.raises(TypeError):
        pde.rk4(lambda t, x: x, np.zeros(2), t1=1.0, n_steps=3)
    with pytest.raises(ValueError, match="t0 < t1"):
        pde.rk4(lambda t, x: x, torch.zeros(2, dtype=DT), t1=0.0, n_steps=3)


# ------------------------------------------------------------------ regressions (lib issue, bug group 6)

def test_evolve_covariance_stops_at_blowup_instead_of_returning_nan():
    """S0 = [[1, .3], [.3, .5]], Q = K = V = I blows up at t* = 0.438 < t_max = 10."""
    S0 = np.array([[1.0, 0.3], [0.3, 0.5]])
    I2 = np.eye(2)
    t_star = pde.blowup_time(S0, I2)
    tr = pde.evolve_covariance(S0, Q=I2, K=I2, V=I2, t_max=10.0)
    assert np.all(np.isfinite(tr.S)), "states past the blow-up must not be returned"
    assert tr.status == "blow-up"
    assert tr.t[-1] <= t_star * (1 + 1e-6) and tr.t[-1] > 0.99 * t_star
    # with output times the trajectory also stops at the event
    tr = pde.evolve_covariance(S0, Q=I2, K=I2, V=I2, t_max=10.0, t_eval=np.linspace(0, 10, 101))
    assert tr.status == "blow-up" and np.all(np.isfinite(tr.S)) and tr.t[-1] < t_star * (1 + 1e-6)


def test_multihead_closure_refuses_head_count_mismatch():
    Qh, Kh, Vh = pde.split_heads(np.eye(4), np.eye(4), np.eye(4), 2)
    with pytest.raises(ValueError, match="heads"):
        pde.covariance_rhs(np.eye(4), Q=Qh, K=Kh, V=Vh[:1], variant="multihead")
    with pytest.raises(ValueError, match="heads"):
        pde.affine_field(np.zeros(4), np.eye(4), Q=Qh, K=Kh, V=Vh[:1], variant="multihead")


def test_split_heads_rejects_non_square_v():
    with pytest.raises(ValueError, match="V must be square"):
        pde.split_heads(np.eye(4), np.eye(4), np.ones((4, 3)), 2)
    with pytest.raises(ValueError, match="Q and K"):
        pde.split_heads(np.eye(4)[:, :3], np.eye(4), np.eye(4), 2)


def test_non_finite_mean_message_names_the_problem():
    S0 = np.eye(2)
    with pytest.raises(ValueError, match="non-finite"):
        pde.affine_field(np.array([np.nan, 0.0]), S0, Q=S0, K=S0, V=S0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        pde.affine_field(np.zeros(3), S0, Q=S0, K=S0, V=S0)


# ------------------------------------------------------------------ the authors' convention and integrator

def _authors_rhs(S, Q, K, V, variant, H=1):
    """The authors' covariance right-hand sides, transcribed from their formulas (paper note 1.2-1.4)."""
    d = S.shape[0]
    if variant == "softmax":
        A = K.T @ Q / np.sqrt(d)
        R = V @ S @ A @ S
    elif variant == "l2":
        A = K.T @ Q / np.sqrt(d)
        R = 2 * V @ S @ np.linalg.inv(np.eye(d) + 2 * K.T @ K @ S) @ A @ S
    else:
        k = d // H
        R = np.zeros((d, d))
        for h in range(H):
            rows = slice(k * h, k * (h + 1))
            A = K[rows].T @ Q[rows] / np.sqrt(k)
            R = R + np.eye(d)[rows].T @ V[rows] @ S @ A @ S
    return R + R.T


@pytest.mark.parametrize("variant,H,r", [("softmax", 1, 2), ("l2", 1, 2), ("l2", 1, 3),
                                         ("multihead", 2, 4), ("multihead", 2, 1)])
def test_authors_params_reproduce_their_right_hand_sides(variant, H, r):
    rng = np.random.default_rng(11)
    d = 4
    Q, K, V = rng.standard_normal((r, d)), rng.standard_normal((r, d)), rng.standard_normal((d, d))
    G = rng.standard_normal((d, d))
    S = G @ G.T
    Qo, Ko, Vo = pde.authors_params(Q, K, V, variant=variant, n_heads=H)
    got = pde.covariance_rhs(S, Q=Qo, K=Ko, V=Vo, variant=variant)
    assert np.abs(got - _authors_rhs(S, Q, K, V, variant, H)).max() < 1e-10 * np.abs(got).max()


def test_euler_psd_small_step_matches_exact_solution():
    Q, K, _, S0, _ = _params(3, 12)
    A = K.T @ Q
    t1 = 0.3 * min(pde.blowup_time(S0, A), 1.0)
    h = t1 / 4000
    r = pde.euler_psd(S0, Q=Q, K=K, V=np.eye(3), step=h, tol_low=1e-30, max_iter=4000)
    ex = pde.exact_covariance_identity_v(S0, A, t1)
    assert r.status[0] == "max_iter" and np.abs(r.S[0] - ex).max() < 1e-3 * np.abs(ex).max()


def test_euler_psd_projection_overshoot_and_blowup():
    one = np.ones((1, 1))
    # dS/dt = -2 S^2 from S0 = 10 with h = 0.1: the first step lands at -10, clipped to 1e-14
    r = pde.euler_psd(10 * one, Q=one, K=-one, V=one, step=0.1, tol_low=1e-6)
    assert r.first_clipped[0] == 1 and r.S_first[0, 0, 0] == 1e-14
    assert r.status[0] == "converged" and r.steps[0] == 1 and r.S[0, 0, 0] == 1e-14
    # dS/dt = 2 S^2 blows up at t* = 1/2
    r = pde.euler_psd(one, Q=one, K=one, V=one, step=1e-3, tol_low=1e-9)
    assert r.status[0] == "blow-up" and abs(r.steps[0] * 1e-3 - 0.5) < 0.01


def test_euler_psd_batched_equals_single_runs():
    rng = np.random.default_rng(13)
    Qs = rng.standard_normal((3, 1, 3))
    S0 = np.stack([g @ g.T for g in rng.standard_normal((3, 3, 3))])
    Vs = np.stack([g.T @ g for g in rng.standard_normal((3, 3, 3))])
    for variant in ("softmax", "l2"):
        kw = {"variant": variant, "step": 0.02, "tol_low": 1e-2, "max_iter": 400}
        batch = pde.euler_psd(S0, Q=Qs, K=-Qs, V=Vs, **kw)
        for i in range(3):
            one = pde.euler_psd(S0[i], Q=Qs[i], K=-Qs[i], V=Vs[i], **kw)
            assert one.status[0] == batch.status[i] and one.steps[0] == batch.steps[i]
            assert np.abs(one.S[0] - batch.S[i]).max() < 1e-12


def test_euler_psd_bad_input():
    with pytest.raises(ValueError, match="heads"):
        Qh, Kh, Vh = pde.split_heads(np.eye(2), np.eye(2), np.eye(2), 2)
        pde.euler_psd(np.eye(2), Q=Qh, K=Kh, V=Vh[:1], variant="multihead", step=0.1, tol_low=1e-3)
    with pytest.raises(ValueError, match="positive semi-definite"):
        pde.euler_psd(-np.eye(2), Q=np.eye(2), K=np.eye(2), V=np.eye(2), step=0.1, tol_low=1e-3)


# ------------------------------------------------------------------ property: closure = affine fit of the field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

_entries = st.floats(-0.6, 0.6, allow_nan=False, allow_infinity=False)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    Q=arrays(float, (2, 2), elements=_entries),
    K=arrays(float, (2, 2), elements=_entries),
    V=arrays(float, (2, 2), elements=st.floats(-2, 2)),
    L=arrays(float, (2, 2), elements=st.floats(-0.8, 0.8)),
    m=arrays(float, (2,), elements=st.floats(-1, 1)),
    variant=st.sampled_from(["softmax", "l2"]),
)
def test_property_closure_is_the_affine_fit_of_the_field(Q, K, V, L, m, variant):
    """The field of N(m, S), computed by Gauss-Hermite quadrature (an independent reference),
    is affine in x, and the least-squares affine fit of it equals the closed form (B, c)."""
    S = L @ L.T + 0.2 * np.eye(2)
    z, w = np.polynomial.hermite_e.hermegauss(40)              # nodes/weights for N(0, 1)
    Z = np.stack(np.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    W = np.outer(w, w).ravel()
    y = m + Z @ np.linalg.cholesky(S).T                        # quadrature nodes of N(m, S)
    xq = np.stack(np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 4)), -1).reshape(-1, 2)
    if variant == "softmax":
        logk = (xq @ Q.T) @ (y @ K.T).T
    else:
        logk = -(((xq @ Q.T)[:, None, :] - (y @ K.T)[None]) ** 2).sum(-1)
    k = W * np.exp(logk - logk.max(1, keepdims=True))
    F = (k @ y) / k.sum(1, keepdims=True) @ V.T
    X = np.concatenate([xq, np.ones((len(xq), 1))], 1)
    coef, *_ = np.linalg.lstsq(X, F, rcond=None)
    B, c = pde.affine_field(m, S, Q=Q, K=K, V=V, variant=variant)
    scale = 1 + np.abs(F).max()
    assert np.abs(X @ coef - F).max() < 1e-8 * scale               # the field is affine
    assert np.abs(coef[:2].T - B).max() < 1e-8 * scale and np.abs(coef[2] - c).max() < 1e-8 * scale


def test_mark_rhs_equals_the_stopping_rule():
    Q, _, _, S0, _ = _params(2, 14)
    kw = {"Q": Q, "K": -Q, "V": np.eye(2), "rtol": 1e-10, "atol": 1e-14}
    stop = pde.evolve_covariance(S0, **kw, t_max=1e6, stop_rhs=1e-4)
    mark = pde.evolve_covariance(S0, **kw, t_max=1e6, mark_rhs=1e-4, t_eval=np.array([0.0, 1e6]))
    assert stop.status == "converged" and mark.status == "t_max"
    assert abs(mark.t_mark - stop.t[-1]) < 1e-6 * stop.t[-1]
    assert np.abs(mark.S_mark - stop.final).max() < 1e-7


def test_field_of_cloud_matches_brute_force_and_particle_velocity():
    Q, K, V, _, _ = _params(2, 15)
    x = torch.randn(60, 2, dtype=DT)
    y = torch.randn(7, 2, dtype=DT)
    q, k, v = y @ _t(Q).T, x @ _t(K).T, x @ _t(V).T
    ref = torch.softmax(q @ k.T, -1) @ v
    assert torch.allclose(pde.field_of_cloud(y, x, Q=_t(Q), K=_t(K), V=_t(V)), ref, atol=1e-12)
    ref_sig = torch.sigmoid(q @ k.T + 0.3) @ v / 60
    got = pde.field_of_cloud(y, x, Q=_t(Q), K=_t(K), V=_t(V), variant="sigmoid", bias=0.3)
    assert torch.allclose(got, ref_sig, atol=1e-12)
    # on the cloud itself with positions 0..N-1 it is the causal particle field
    pos = torch.arange(60)
    got = pde.field_of_cloud(x, x, Q=_t(Q), K=_t(K), V=_t(V), variant="l2", positions=(pos, pos))
    assert torch.allclose(got, pde.particle_velocity(x, Q=_t(Q), K=_t(K), V=_t(V), variant="l2", causal=True), atol=1e-12)
    with pytest.raises(ValueError, match="see at least one"):
        pde.field_of_cloud(y, x, Q=_t(Q), K=_t(K), V=_t(V), positions=(torch.zeros(7), torch.ones(60)))


def test_field_of_cloud_multihead_is_the_particle_field_on_the_cloud():
    rng = np.random.default_rng(3)
    Qm, Km, Vm = pde.split_heads(rng.standard_normal((4, 4)), rng.standard_normal((4, 4)),
                                 rng.standard_normal((4, 4)), 2)
    x = torch.randn(2, 50, 4, dtype=DT)
    got = pde.field_of_cloud(x, x, Q=_t(Qm), K=_t(Km), V=_t(Vm), variant="multihead")
    ref = pde.particle_velocity(x, Q=_t(Qm), K=_t(Km), V=_t(Vm), variant="multihead")
    assert torch.allclose(got, ref, atol=1e-12)
    with pytest.raises(ValueError, match="split_heads"):
        pde.field_of_cloud(x, x, Q=_t(Qm[0]), K=_t(Km[0]), V=_t(Vm[0]), variant="multihead")


def test_mardia_kurtosis_z():
    rng = np.random.default_rng(16)
    g = rng.standard_normal((20000, 2))
    zs = [pde.mardia_kurtosis_z(rng.standard_normal((4000, 2))) for _ in range(20)]
    assert abs(np.mean(zs)) < 0.8 and 0.6 < np.std(zs) < 1.5          # approximately N(0, 1)
    M = np.array([[2.0, 1.0], [0.0, 0.5]])
    assert abs(pde.mardia_kurtosis_z(g @ M.T + 3) - pde.mardia_kurtosis_z(g)) < 1e-8  # affine invariant
    u = rng.uniform(-1, 1, (4000, 2))
    b2 = 5.6                                                           # uniform square
    assert abs(pde.mardia_kurtosis_z(u) - (b2 - 8) / np.sqrt(64 / 4000)) < 5


def test_authors_histogram_instances_follow_their_recipe():
    inst = pde.authors_histogram_instances("softmax", "SPD", n_per_dim=3)
    Q, K, V, S0 = inst[4]
    rs = np.random.RandomState(40)
    first = [rs.randn(d // 2, d) for d in np.repeat([3, 4, 5], 100)]
    assert np.array_equal(Q[0], first[100]) and np.array_equal(K, -Q)
    rv = np.random.RandomState(26)
    g = [rv.randn(d, d) for d in np.repeat([3, 4, 5], 100)][100]
    assert np.allclose(V[0], g.T @ g)
    g = np.random.RandomState(41).randn(4, 4)
    assert np.allclose(S0[0], g @ g.T)
    assert np.array_equal(pde.authors_histogram_instances("l2", "I", n_per_dim=2)[5][2][1], np.eye(5))


# ----------------------------------------------------------------------------------------------
# Adversarial searches for the chapter's inequalities (an optimiser over configurations, started
# from random points): the Lyapunov function of claim 3.6 and the growth of the covariance when
# V = Q^T K. Each search maximises a normalised violation; the inequality holds when the best
# value found stays at round-off.
# ----------------------------------------------------------------------------------------------

from scipy.optimize import minimize


def _unpack(p, d, r):
    """Parameters -> (S, Q, V): S = L L^T, V = M M^T + 1e-3 I (SPD), Q (r, d)."""
    L = p[: d * d].reshape(d, d)
    M = p[d * d: 2 * d * d].reshape(d, d)
    Q = p[2 * d * d:].reshape(r, d)
    return L @ L.T + 1e-9 * np.eye(d), Q, M @ M.T + 1e-3 * np.eye(d)


def _adversarial_max(objective, n_params, *, starts=8, seed=0):
    rng = np.random.default_rng(seed)
    best = -np.inf
    for _ in range(starts):
        p0 = rng.standard_normal(n_params)
        res = minimize(lambda p: -objective(p), p0, method="L-BFGS-B", options={"maxiter": 200})
        best = max(best, objective(res.x), objective(p0))
    return best


@pytest.mark.parametrize("variant", ["softmax", "l2"])
@pytest.mark.parametrize("d,r", [(2, 1), (3, 1), (3, 2)])
def test_adversarial_lyapunov_never_increases(variant, d, r):
    """Claim 3.6: with V SPD and K = -Q, d/dt tr(V^-1 S) <= 0. Maximise it, normalised by
    norm(V^-1) norm(Q)^2 norm(S)^2 (the scale of the right-hand side), over S, Q, V."""

    def objective(p):
        S, Q, V = _unpack(p, d, r)
        rhs = pde.covariance_rhs(S, Q=Q, K=-Q, V=V, variant=variant)
        Vi = np.linalg.inv(V)
        scale = np.linalg.norm(Vi) * np.linalg.norm(V) * np.linalg.norm(Q) ** 2 * np.linalg.norm(S) ** 2
        return float(np.trace(Vi @ rhs) / scale)

    best = _adversarial_max(objective, 2 * d * d + r * d)
    assert best <= 1e-10, f"tr(V^-1 S) increases: normalised rate {best:.3e}"


@pytest.mark.parametrize("variant", ["softmax", "l2"])
def test_adversarial_lyapunov_search_finds_an_increase_without_spd_v(variant):
    """Positive control of the search above: with a V that is not symmetric, tr(V^-1 S) can
    grow, and the same optimiser, with the same normalisation, must find it."""
    d, r = 3, 1

    def objective(p):
        S, Q, V = _unpack(p, d, r)
        V = V + np.triu(np.ones((d, d)), 1) * 3.0  # the SPD V plus a non-symmetric part
        rhs = pde.covariance_rhs(S, Q=Q, K=-Q, V=V, variant=variant)
        Vi = np.linalg.inv(V)
        scale = np.linalg.norm(Vi) * np.linalg.norm(V) * np.linalg.norm(Q) ** 2 * np.linalg.norm(S) ** 2
        return float(np.trace(Vi @ rhs) / scale)

    assert _adversarial_max(objective, 2 * d * d + r * d, starts=3) > 1e-3


def _gradient_case(p, d):
    """S (SPD), Q, K (d, d) and V = Q^T K in this module's convention (A = K^T Q, V = A^T)."""
    L = p[: d * d].reshape(d, d)
    Q = p[d * d: 2 * d * d].reshape(d, d)
    K = p[2 * d * d:].reshape(d, d)
    return L @ L.T + 1e-9 * np.eye(d), Q, K, Q.T @ K


@pytest.mark.parametrize("d", [2, 3])
def test_adversarial_gradient_case_trace_and_volume_grow(d):
    """V = Q^T K makes B = V S A = Q^T K S K^T Q symmetric PSD, so d/dt tr S = 2 tr(BS)
    = 2 norm(S^1/2 A S^1/2)_F^2 >= 0 and d/dt log det S = 2 tr B >= 0. Minimise both
    (normalised) over S, Q, K."""

    def neg_growth(p, which):
        S, Q, K, V = _gradient_case(p, d)
        rhs = pde.covariance_rhs(S, Q=Q, K=K, V=V)
        scale = np.linalg.norm(Q) ** 2 * np.linalg.norm(K) ** 2 * np.linalg.norm(S) ** 2
        if which == "trace":
            return float(-np.trace(rhs) / (scale * np.linalg.norm(S)))
        return float(-np.trace(np.linalg.solve(S, rhs)) / scale)

    for which in ("trace", "logdet"):
        worst = _adversarial_max(lambda p, w=which: neg_growth(p, w), 3 * d * d)
        assert worst <= 1e-10, f"{which} decreases when V = Q^T K: {worst:.3e}"


def test_adversarial_gradient_case_covariance_does_not_grow_in_every_direction():
    """The stronger reading, S(t) increasing in the Loewner order (dS/dt PSD), is false:
    the search finds a direction v with v^T (dS/dt) v < 0 although B is PSD."""
    d = 2

    def violation(p):
        S, Q, K, V = _gradient_case(p, d)
        rhs = pde.covariance_rhs(S, Q=Q, K=K, V=V)
        scale = np.linalg.norm(Q) ** 2 * np.linalg.norm(K) ** 2 * np.linalg.norm(S) ** 3
        return float(-np.linalg.eigvalsh(rhs)[0] / scale)

    assert _adversarial_max(violation, 3 * d * d, starts=4) > 1e-3
