"""Tests of lib.kernel_machines against independent references (closed forms, brute force, scipy)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lib import kernel_machines as km
from lib.kernels import ExpDot, FeatureMapKernel, Polynomial, kernel_attention

D64 = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


# ---------------------------------------------------------------- Taylor features

@pytest.mark.parametrize("d,N", [(1, 5), (2, 4), (3, 3), (4, 2)])
def test_multi_indices_are_all_bounded_multi_indices(d, N):
    mi = km.multi_indices(d, N)
    brute = {p for p in itertools.product(range(N + 1), repeat=d) if sum(p) <= N}
    assert mi.shape == (math.comb(N + d, d), d)
    assert {tuple(r) for r in mi.tolist()} == brute
    assert (mi.sum(-1)[1:] >= mi.sum(-1)[:-1]).all()  # ordered by total degree


def test_taylor_features_match_brute_force_monomials():
    x = _rand(7, 3)
    N, s = 4, 0.37
    mi = km.multi_indices(3, N).to(D64)
    pfact = torch.exp(torch.lgamma(mi + 1).sum(-1))
    brute = (x[:, None, :] ** mi).prod(-1) * torch.sqrt(torch.tensor(s, dtype=D64) ** mi.sum(-1) / pfact)
    torch.testing.assert_close(km.taylor_features(x, N, scale=s), brute, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("N", [0, 1, 3, 6])
def test_taylor_gram_equals_truncated_series(N):
    q, k = _rand(5, 3, seed=1), _rand(6, 3, seed=2)
    G = km.taylor_features(q, N) @ km.taylor_features(k, N).T
    u = q @ k.T / math.sqrt(3)
    ref = sum(u ** n / math.factorial(n) for n in range(N + 1))
    torch.testing.assert_close(G, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(km.truncated_exp_dot(q, k, N), ref, rtol=1e-12, atol=1e-12)


def test_taylor_converges_to_exp_kernel():
    q, k = _rand(5, 2, seed=3), _rand(5, 2, seed=4)
    err = (km.taylor_features(q, 25) @ km.taylor_features(k, 25).T - ExpDot().gram(q, k)).abs().max()
    assert err < 1e-12


def test_taylor_kernel_object():
    kern = km.taylor_kernel(4)
    assert isinstance(kern, FeatureMapKernel) and kern.feature_dim(8) == math.comb(12, 8)
    q, k = _rand(2, 5, 3, seed=5), _rand(2, 6, 3, seed=6)
    torch.testing.assert_close(kern.gram(q, k), kern.features(q) @ kern.features(k).transpose(-1, -2))
    # even degree: strictly positive even for large negative logits
    assert (km.truncated_exp_dot(10 * q, -10 * q, 4) > 0).all()
    v = _rand(2, 6, 4, seed=7)
    y = kernel_attention(q, k, v, kern)
    w = kern.gram(q, k)
    torch.testing.assert_close(y, (w / w.sum(-1, keepdim=True)) @ v)


# ---------------------------------------------------------------- random features

def test_positive_random_features_unbiased():
    q, k = 0.5 * _rand(4, 3, seed=8), 0.5 * _rand(5, 3, seed=9)
    kern = km.random_feature_kernel(3, 200_000, generator=torch.Generator().manual_seed(0), stabilize=False)
    assert kern.feature_dim(3) == 200_000
    phi = kern.features(q)
    assert (phi > 0).all()
    rel = ((kern.gram(q, k) - ExpDot().gram(q, k)).abs() / ExpDot().gram(q, k)).max()
    assert rel < 0.02


def test_random_features_stabilised_attention_equals_unstabilised():
    q, k, v = _rand(2, 5, 4, seed=10), _rand(2, 7, 4, seed=11), _rand(2, 7, 3, seed=12)
    a = km.random_feature_kernel(4, 64, generator=torch.Generator().manual_seed(1), stabilize=True)
    b = km.random_feature_kernel(4, 64, generator=torch.Generator().manual_seed(1), stabilize=False)
    torch.testing.assert_close(kernel_attention(q, k, v, a, eps=1e-300), kernel_attention(q, k, v, b, eps=1e-300))


def test_orthogonal_random_features_have_orthogonal_blocks():
    kern = km.random_feature_kernel(4, 8, generator=torch.Generator().manual_seed(2), orthogonal=True)
    om = kern.omega[:4] / kern.omega[:4].norm(dim=1, keepdim=True)
    torch.testing.assert_close(om @ om.T, torch.eye(4, dtype=D64), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- non-Mercer and rank

def test_attention_gram_and_mercer_properties():
    X = _rand(20, 4, seed=13)
    WQ, WK = _rand(3, 4, seed=14), _rand(3, 4, seed=15)
    K = km.attention_gram(X, X, WQ, WK)
    ref = torch.exp((X @ WQ.T) @ (X @ WK.T).T / math.sqrt(3))
    torch.testing.assert_close(K, ref)
    torch.testing.assert_close(km.attention_gram(X, X, WQ, WK, log=True), ref.log())
    assert km.asymmetry(K) > 0.05
    Kt = km.attention_gram(X, X, WQ, WQ)
    assert km.asymmetry(Kt) < 1e-14
    ev = km.symmetric_part_eigvals(Kt)
    np.testing.assert_allclose(ev.numpy(), np.linalg.eigvalsh(Kt.numpy()), rtol=0, atol=1e-12 * float(ev.abs().max()))
    assert ev.min() > -1e-10 * ev.max()


@pytest.mark.parametrize("p,c", [(2, 1.0), (2, 0.0), (3, 1.0)])
def test_polynomial_rank_bound_is_attained(p, c):
    q, k = _rand(40, 3, seed=16), _rand(40, 3, seed=17)
    G = Polynomial(p, c=c).gram(q, k)
    bound = km.polynomial_rank_bound(3, p, homogeneous=(c == 0))
    assert km.numerical_rank(G) == bound == np.linalg.matrix_rank(G.numpy(), tol=1e-10 * np.linalg.norm(G.numpy(), 2))


def test_exp_kernel_full_rank():
    q, k = 1.5 * _rand(30, 3, seed=18), 1.5 * _rand(30, 3, seed=19)
    assert km.numerical_rank(ExpDot().gram(q, k)) == 30


# ---------------------------------------------------------------- binary representer theorem

def test_duality_map():
    v = np.array([-2.0, -0.5, 0.0, 0.3, 4.0])
    np.testing.assert_allclose(km.duality_map(v, 2.0), v)
    np.testing.assert_allclose(km.duality_map(v, 3.0), np.abs(v) ** 2 * np.sign(v))
    # gradient of ||v||_p^p / p (finite differences)
    p, h = 1.5, 1e-6
    f = lambda x: np.sum(np.abs(x) ** p) / p
    w = np.array([0.7, -1.3, 2.1])
    fd = np.array([(f(w + h * e) - f(w - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(km.duality_map(w, p), fd, rtol=1e-7)


def test_span_residual():
    A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    assert km.span_residual(np.array([2.0, -1.0, 0.0]), A) < 1e-15
    assert abs(km.span_residual(np.array([0.0, 3.0, 4.0]), A) - 0.8) < 1e-12


def _problem():
    g = torch.Generator().manual_seed(3)
    t, s = torch.rand(4, 2, generator=g, dtype=D64), torch.rand(5, 2, generator=g, dtype=D64)
    W = torch.randn(2, 2, generator=g, dtype=D64)
    Phi, Psi = km.taylor_features(t, 5), km.taylor_features(s @ W.T, 5)
    Z = torch.sin(3 * t[:, :1] * s[:, 1:].T)
    return Phi, Psi, Z


@pytest.mark.parametrize("p", [2.0, 1.5, 3.0])
def test_binary_machine_first_order_condition(p):
    Phi, Psi, Z = _problem()
    m = km.fit_binary_kernel_machine(Phi, Psi, Z, p=p, lam=0.05)
    assert m.grad_norm < 1e-10
    r = m.residuals()
    assert r["J(u)"] < 1e-9 and r["J(w)"] < 1e-9
    if p == 2.0:
        assert r["u"] < 1e-9 and r["w"] < 1e-9
    else:
        assert min(r["u"], r["w"]) > 1e-4
    # independent check of stationarity with scipy's finite-difference gradient
    from scipy.optimize import approx_fprime
    F = Phi.shape[1]
    P, S, Zn = Phi.numpy(), Psi.numpy(), Z.numpy()

    def obj(x):
        r_ = np.outer(P @ x[:F], S @ x[F:]) - Zn
        return 0.5 * np.sum(r_ ** 2) + 0.05 * (np.sum(np.abs(x[:F]) ** p) / p + np.sum(np.abs(x[F:]) ** m.q) / m.q)

    gfd = approx_fprime(np.concatenate([m.u, m.w]), obj, 1e-7)
    assert np.abs(gfd).max() < 1e-5
    assert m.predict().shape == (4, 5)


def test_binary_machine_bad_inputs():
    Phi, Psi, Z = _problem()
    with pytest.raises(ValueError, match="p must be > 1"):
        km.fit_binary_kernel_machine(Phi, Psi, Z, p=1.0)
    with pytest.raises(ValueError, match="Z must have shape"):
        km.fit_binary_kernel_machine(Phi, Psi, Z.T)
    with pytest.raises(ValueError, match="same number of features"):
        km.fit_binary_kernel_machine(Phi, Psi[:, :3], Z)
    with pytest.raises(ValueError, match="lam"):
        km.fit_binary_kernel_machine(Phi, Psi, Z, lam=0.0)


# ---------------------------------------------------------------- universal approximation

def test_query_key_model_fits_a_rank_one_log_kernel_exactly():
    g = torch.Generator().manual_seed(0)
    t = 2 * torch.rand(20, 2, generator=g, dtype=D64) - 1
    s = 2 * torch.rand(20, 2, generator=g, dtype=D64) - 1

    def log_target(a, b):  # bilinear: representable by linear maps with d = 2
        return 0.7 * a[:, :1] * b[:, 1:].T - 0.4 * a[:, 1:] * b[:, :1].T

    model = km.QueryKeyKernelModel(2, 2, 2, hidden=0, generator=torch.Generator().manual_seed(1))
    fit = km.fit_kernel_model(model, log_target, t, s, t, s, steps=200)
    assert fit.sup_error < 1e-6 and fit.train_loss < 1e-12
    out = model(t, s)
    torch.testing.assert_close(out, torch.exp(model.query(t) @ model.key(s).T / math.sqrt(2)))


def test_query_key_model_validation():
    with pytest.raises(ValueError, match="hidden"):
        km.QueryKeyKernelModel(2, 2, 2, hidden=-1)
    with pytest.raises(TypeError, match="model"):
        km.fit_kernel_model("not a model", lambda a, b: a @ b.T, _rand(2, 2), _rand(2, 2), _rand(2, 2), _rand(2, 2))


# ---------------------------------------------------------------- bad inputs

def test_bad_inputs():
    with pytest.raises(ValueError, match="degree"):
        km.taylor_features(_rand(3, 2), -1)
    with pytest.raises(TypeError, match="x"):
        km.taylor_features([[1.0, 2.0]], 2)
    with pytest.raises(ValueError, match="omega"):
        km.positive_random_features(_rand(3, 2), _rand(5, 3))
    with pytest.raises(TypeError, match="generator"):
        km.random_feature_kernel(2, 4, generator=0)
    with pytest.raises(ValueError, match="W_Q"):
        km.attention_gram(_rand(3, 2), _rand(3, 2), _rand(2, 3), _rand(2, 2))
    with pytest.raises(ValueError, match="square"):
        km.asymmetry(_rand(3, 2))
    with pytest.raises(ValueError, match="p must be > 1"):
        km.duality_map(np.ones(3), 0.5)
    with pytest.raises(ValueError, match="v is zero"):
        km.span_residual(np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="degree"):
        km.taylor_kernel(-2)


# ---------------------------------------------------------------- stable Taylor remainder, rank curves

def _remainder_decimal(u: float, N: int) -> float:
    """exp(u) - sum_{n<=N} u^n/n! in 80-digit decimal arithmetic (independent reference)."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 80
        U = Decimal(u)
        term, total = Decimal(1), Decimal(1)
        for n in range(1, N + 1):
            term = term * U / n
            total += term
        return float(U.exp() - total)


@pytest.mark.parametrize("N", [0, 1, 5, 20, 30, 40])
def test_taylor_remainder_matches_high_precision_reference(N):
    q, k = 1.5 * _rand(5, 3, seed=31), 1.5 * _rand(4, 3, seed=32)
    R = km.taylor_remainder(q, k, N)
    u = (q @ k.T) / math.sqrt(3)
    ref = torch.tensor([[_remainder_decimal(float(x), N) for x in row] for row in u], dtype=torch.float64)
    # relative accuracy in the Frobenius norm, far below what exp(u) - T_N(u) can give in float64
    assert float(torch.linalg.norm(R - ref) / torch.linalg.norm(ref)) < 1e-13


def test_taylor_remainder_agrees_with_direct_difference_where_that_is_accurate():
    q, k = _rand(6, 3, seed=33), _rand(7, 3, seed=34)
    for N in (0, 2, 6):
        direct = ExpDot().gram(q, k) - km.truncated_exp_dot(q, k, N)
        torch.testing.assert_close(km.taylor_remainder(q, k, N), direct, rtol=1e-10, atol=1e-13)


def test_taylor_remainder_bad_inputs():
    q = _rand(3, 2, seed=35)
    with pytest.raises(ValueError, match="degree"):
        km.taylor_remainder(q, q, -1)
    with pytest.raises(ValueError):
        km.taylor_remainder(q, q, 3, max_terms=0)


def test_rank_curve_saturates_for_finite_kernels_and_grows_for_exp():
    q, k = 1.5 * _rand(200, 3, seed=36), 1.5 * _rand(200, 3, seed=37)
    sizes = [10, 25, 50, 100, 200]
    poly = km.rank_curve(Polynomial(2), q, k, sizes)
    assert poly == [min(n, 10) for n in sizes]
    t4 = km.rank_curve(km.taylor_kernel(4), q, k, sizes)
    assert t4 == [min(n, math.comb(7, 3)) for n in sizes]
    ex = km.rank_curve(ExpDot(), q, k, sizes)
    assert ex[:3] == sizes[:3] and ex[-1] > ex[-2] > 35
    # each entry is numerical_rank of the leading block
    G = ExpDot().gram(q[:50], k[:50])
    assert ex[2] == km.numerical_rank(G)
    with pytest.raises(ValueError, match="exceeds"):
        km.rank_curve(ExpDot(), q, k, [300])
    with pytest.raises(ValueError, match="empty"):
        km.rank_curve(ExpDot(), q, k, [])


def test_rank_profile_against_numpy_and_under_one_large_entry():
    q, k = 1.5 * _rand(120, 3, seed=41), 1.5 * _rand(120, 3, seed=42)
    sizes = [30, 60, 120]
    prof = km.rank_profile(ExpDot(), q, k, sizes)
    G = ExpDot().gram(q, k).numpy()
    # independent reference: numpy's SVD, thresholds written out
    tau = 1e-10 * np.linalg.svd(G[:60, :60], compute_uv=False).max()
    for i, n in enumerate(sizes):
        sv = np.linalg.svd(G[:n, :n], compute_uv=False)
        A = G[:n, :n] / G[:n, :n].sum(1, keepdims=True)
        sa = np.linalg.svd(A, compute_uv=False)
        assert prof["relative"][i] == int((sv > 1e-10 * sv.max()).sum())
        assert prof["row_normalised"][i] == int((sa > 1e-10 * sa.max()).sum())
        assert prof["fixed"][i] == int((sv > tau).sum())
    assert prof["relative"] == km.rank_curve(ExpDot(), q, k, sizes)
    # the fixed threshold never lets the rank fall (interlacing)
    assert all(b >= a for a, b in zip(prof["fixed"], prof["fixed"][1:]))
    # a finite kernel stays at its feature dimension in every variant
    t4 = km.rank_profile(km.taylor_kernel(4), q, k, sizes)
    for v in t4.values():
        assert v == [min(n, math.comb(7, 3)) for n in sizes]
    # one point with a huge norm (one large logit) in the last block: the relative rank of the
    # largest matrix drops, the row-normalised one does not
    q2 = q.clone()
    q2[100] = 12.0 * k[110] / k[110].norm()
    big = km.rank_profile(ExpDot(), q2, k, sizes)
    assert big["relative"][-1] < prof["relative"][-1]
    assert big["row_normalised"][-1] >= prof["row_normalised"][-1] - 1
    with pytest.raises(ValueError, match="exceeds"):
        km.rank_profile(ExpDot(), q, k, [30], fixed_at=60)
    with pytest.raises(ValueError, match="positive"):
        km.rank_profile(Polynomial(1, c=0.0), q, k, [30])


def test_mercer_diagnostics():
    X = _rand(25, 4, seed=38)
    WQ, WK = _rand(4, 4, seed=39), _rand(4, 4, seed=40)
    out = km.mercer_diagnostics(X, WQ, WK)
    K = km.attention_gram(X, X, WQ, WK)
    ev = np.linalg.eigvalsh(0.5 * (K + K.T).numpy())
    assert out["asymmetry"] == pytest.approx(km.asymmetry(K))
    assert out["n_negative"] == int((ev < 0).sum()) > 0
    assert out["min_eig_rel"] == pytest.approx(ev.min() / np.abs(ev).max())
    tied = km.mercer_diagnostics(X, WQ, WQ)
    assert tied["asymmetry"] < 1e-14 and tied["min_eig_rel"] > -1e-12


# ---------------------------------------------------------------- properties (Hypothesis)

from hypothesis import given
from hypothesis import strategies as st


@given(
    seed=st.integers(0, 10_000),
    degree=st.integers(0, 14),
    d=st.integers(1, 4),
    spread=st.floats(0.1, 2.0),
)
def test_property_truncation_plus_remainder_is_the_kernel(seed, degree, d, spread):
    """Invariant: T_N(u) + R_N(u) = exp(u) for every degree, dimension and scale of the points."""
    g = torch.Generator().manual_seed(seed)
    q = spread * torch.randn(4, d, generator=g, dtype=torch.float64)
    k = spread * torch.randn(3, d, generator=g, dtype=torch.float64)
    total = km.truncated_exp_dot(q, k, degree) + km.taylor_remainder(q, k, degree)
    exact = ExpDot().gram(q, k)
    # absolute error at the round-off of the largest partial sums, exp(|u|)
    u = (q @ k.T).abs() / math.sqrt(d)
    assert bool(((total - exact).abs() <= 1e-13 * torch.exp(u)).all())


@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), degree=st.integers(1, 3))
def test_property_rank_never_exceeds_the_feature_dimension(seed, n, degree):
    """Invariant: a D-feature kernel's Gram matrix has rank <= min(n, D) at every size."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 2, generator=g, dtype=torch.float64)
    k = torch.randn(n, 2, generator=g, dtype=torch.float64)
    kern = Polynomial(degree)
    ranks = km.rank_curve(kern, q, k, list(range(1, n + 1)))
    assert all(r <= min(m, kern.feature_dim(2)) for m, r in zip(range(1, n + 1), ranks))
    assert ranks == sorted(ranks)  # adding points never lowers the rank of the leading block


@given(
    seed=st.integers(0, 10_000),
    d=st.integers(1, 6),
    extra=st.integers(0, 10),
    hidden=st.sampled_from([0, 5]),
    depth=st.integers(1, 3),
)
def test_property_embedding_keeps_the_logits(seed, d, extra, hidden, depth):
    """Invariant: a model of head dimension d, embedded into d + extra (zero rows, copied rows
    scaled by ((d + extra)/d)^(1/4)), gives the same logits: the smaller models are nested."""
    g = torch.Generator().manual_seed(seed)
    small = km.QueryKeyKernelModel(2, 3, d, hidden=hidden, depth=depth, generator=g)
    big = small.embed(d + extra)
    assert big.d == d + extra and (big.d_t, big.d_s, big.hidden, big.depth) == (2, 3, hidden, depth)
    t = torch.rand(7, 2, generator=g, dtype=torch.float64) * 2 - 1
    s = torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        diff = big.log_kernel(t, s) - small.log_kernel(t, s)
    assert float(diff.abs().max()) <= 1e-13
    rows = big.query[-1] if hidden else big.query
    assert bool((rows.weight[d:] == 0).all() and (rows.bias[d:] == 0).all())


def test_embedding_by_hand_and_bad_sizes():
    """Linear maps: the embedded W_Q has the scaled rows of the small one over zero rows."""
    small = km.QueryKeyKernelModel(2, 2, 2, generator=torch.Generator().manual_seed(3))
    big = small.embed(8)
    c = (8 / 2) ** 0.25
    torch.testing.assert_close(big.query.weight[:2], c * small.query.weight, rtol=0, atol=0)
    assert bool((big.key.weight[2:] == 0).all())
    assert small.embed(2) is not small
    with pytest.raises(ValueError, match="d_big must be >= d"):
        small.embed(1)
    with pytest.raises(ValueError):
        small.embed(0)
