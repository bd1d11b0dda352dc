"""Property-based tests (Hypothesis) of lib.attention and lib.kernels: invariants that hold for
every input, checked on drawn shapes, seeds and temperatures (profile ``ci`` in conftest.py)."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from lib import attention as A
from lib.kernels import (
    RBF,
    ExpDot,
    FeatureMapKernel,
    Laplacian,
    Polynomial,
    elu_feature_map,
    kernel_attention,
)

D64 = torch.float64
sizes = st.integers(1, 9)
dims = st.integers(1, 5)
seeds = st.integers(0, 2**31 - 1)
betas = st.one_of(st.none(), st.floats(0.05, 5.0))
batches = st.sampled_from([(), (2,), (2, 3)])


def draw_qkv(seed, batch, n, m, d, e=3, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(*batch, n, d, generator=g, dtype=D64)
    k = scale * torch.randn(*batch, m, d, generator=g, dtype=D64)
    v = torch.randn(*batch, m, e, generator=g, dtype=D64)
    return q, k, v, g


def random_mask(g, batch, n, m):
    mask = torch.rand(*batch, n, m, generator=g) > 0.5
    mask[..., torch.randint(m, (1,), generator=g)] = True  # no empty row
    return mask


@given(seed=seeds, batch=batches, n=sizes, m=sizes, d=dims, beta=betas, masked=st.booleans())
def test_rows_are_convex_combinations(seed, batch, n, m, d, beta, masked):
    q, k, v, g = draw_qkv(seed, batch, n, m, d)
    mask = random_mask(g, batch, n, m) if masked else None
    w = A.attention_weights(q, k, beta=beta, mask=mask)
    assert (w >= 0).all() and torch.allclose(w.sum(-1), torch.ones((), dtype=D64), atol=1e-12)
    if mask is not None:
        assert (w[~mask] == 0).all()
    out = A.softmax_attention(q, k, v, beta=beta, mask=mask)
    assert torch.allclose(out, w @ v, atol=1e-12)
    lo, hi = v.amin(-2, keepdim=True), v.amax(-2, keepdim=True)
    assert (out >= lo - 1e-12).all() and (out <= hi + 1e-12).all()


@given(seed=seeds, batch=batches, n=sizes, m=sizes, d=dims, beta=betas,
       which=st.sampled_from(["softmax", "l2", "sigmoid", "hardmax", "rbf", "laplacian", "elu", "poly2"]))
def test_permutation_equivariance(seed, batch, n, m, d, beta, which):
    q, k, v, g = draw_qkv(seed, batch, n, m, d)
    kernels = {"rbf": RBF(), "laplacian": Laplacian(), "poly2": Polynomial(2),
               "elu": FeatureMapKernel(elu_feature_map, positive=True)}

    def f(q, k, v):
        if which == "softmax":
            return A.softmax_attention(q, k, v, beta=beta)
        if which == "l2":
            return A.l2_attention(q, k, v, beta=beta)
        if which == "sigmoid":
            return A.sigmoid_attention(q, k, v, beta=beta)
        if which == "hardmax":
            return A.hardmax_attention(q, k, v)
        return kernel_attention(q, k, v, kernels[which])

    pq, pk = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
    out = f(q, k, v)
    assert torch.allclose(f(q[..., pq, :], k, v), out[..., pq, :], atol=1e-11)  # queries: equivariant
    assert torch.allclose(f(q, k[..., pk, :], v[..., pk, :]), out, atol=1e-11)  # keys: invariant


@given(seed=seeds, batch=batches, n=sizes, m=sizes, d=dims, beta=betas)
def test_masked_keys_do_not_matter(seed, batch, n, m, d, beta):
    q, k, v, g = draw_qkv(seed, batch, n, m, d)
    mask = random_mask(g, batch, n, m)
    keymask = mask.all(dim=-2, keepdim=True)  # keys visible to every query
    hidden = ~mask.any(dim=-2)  # keys no query sees
    v2 = torch.where(hidden.unsqueeze(-1), v + 100.0, v)
    k2 = torch.where(hidden.unsqueeze(-1), k - 50.0, k)
    for f in (A.softmax_attention, A.l2_attention, A.sigmoid_attention):
        assert torch.allclose(f(q, k, v, beta=beta, mask=mask), f(q, k2, v2, beta=beta, mask=mask), atol=1e-11)
    full = torch.ones(n, m, dtype=torch.bool)
    assert torch.allclose(A.softmax_attention(q, k, v, beta=beta, mask=full), A.softmax_attention(q, k, v, beta=beta),
                          atol=1e-12)
    if bool(keymask.any(dim=-1).all()):
        ker = FeatureMapKernel(elu_feature_map, positive=True)
        km = keymask.expand(*batch, n, m)
        G = ker.gram(q, k) * km
        assert torch.allclose(kernel_attention(q, k, v, ker, mask=km), (G @ v) / G.sum(-1, keepdim=True), atol=1e-11)


@given(seed=seeds, batch=batches, n=sizes, extra=st.integers(0, 4), d=dims, beta=betas, masked=st.booleans())
def test_causal_is_the_explicit_lower_right_mask(seed, batch, n, extra, d, beta, masked):
    m = n + extra
    q, k, v, g = draw_qkv(seed, batch, n, m, d)
    cm = A.causal_mask(n, m)
    user = random_mask(g, batch, n, m) if masked else None
    if user is not None:
        user[..., :, 0] = True  # every query keeps key 0, which the causal mask allows
    ref_mask = cm if user is None else (user & cm)
    for f in (A.softmax_attention, A.l2_attention):
        out = f(q, k, v, beta=beta, mask=user, causal=True)
        assert torch.allclose(out, f(q, k, v, beta=beta, mask=ref_mask.expand(*batch, n, m)), atol=1e-12)


@given(seed=seeds, batch=batches, n=sizes, m=sizes, d=dims, chunk=st.integers(1, 12), causal=st.booleans())
def test_chunked_equals_unchunked(seed, batch, n, m, d, chunk, causal):
    m = max(m, n) if causal else m
    q, k, v, _ = draw_qkv(seed, batch, n, m, d)
    a = A.softmax_attention(q, k, v, causal=causal)
    b = A.softmax_attention(q, k, v, causal=causal, chunk_size=chunk)
    assert torch.equal(a, b)


@given(seed=seeds, n=sizes, m=sizes, d=dims, scale=st.floats(0.1, 3.0),
       which=st.sampled_from(["exp", "rbf", "lap1", "lap2", "poly3", "elu"]))
def test_kernels_match_brute_force(seed, n, m, d, scale, which):
    q, k, v, _ = draw_qkv(seed, (), n, m, d, scale=scale)
    s = 1 / math.sqrt(d)
    ker, f = {
        "exp": (ExpDot(), lambda a, b: math.exp(s * float(a @ b))),
        "rbf": (RBF(), lambda a, b: math.exp(-0.5 * s * float(((a - b) ** 2).sum()))),
        "lap1": (Laplacian(), lambda a, b: math.exp(-s * float((a - b).abs().sum()))),
        "lap2": (Laplacian(p=2), lambda a, b: math.exp(-s * float(((a - b) ** 2).sum().sqrt()))),
        "poly3": (Polynomial(3), lambda a, b: (1 + s * float(a @ b)) ** 3),
        "elu": (FeatureMapKernel(elu_feature_map, positive=True),
                lambda a, b: float(elu_feature_map(a) @ elu_feature_map(b))),
    }[which]
    G = torch.tensor([[f(q[i], k[j]) for j in range(m)] for i in range(n)], dtype=D64)
    assert torch.allclose(ker.gram(q, k), G, rtol=1e-10, atol=1e-12)
    den = G.sum(-1, keepdim=True)
    if bool((den.abs() > 1e-3).all()):
        assert torch.allclose(kernel_attention(q, k, v, ker), (G @ v) / den, rtol=1e-9, atol=1e-10)


@given(seed=seeds, batch=st.sampled_from([(), (2,)]), n=sizes, m=sizes, d=dims, beta=st.floats(0.1, 1.0))
def test_sinkhorn_marginals(seed, batch, n, m, d, beta):
    q, k, v, _ = draw_qkv(seed, batch, n, m, d)
    res = A.sinkhorn_attention(q, k, v, beta=beta)
    assert (res.plan >= 0).all()
    assert torch.allclose(res.plan.sum(-1), torch.ones((), dtype=D64), atol=1e-12)
    assert (res.plan.sum(-2) - n / m).abs().max() <= 1e-9
    assert torch.allclose(res.output, res.plan @ v, atol=1e-12)


@given(seed=seeds, batch=batches, n=sizes, extra=st.integers(0, 5), d=dims, signed=st.booleans())
def test_linear_attention_causal_matches_masked_gram(seed, batch, n, extra, d, signed):
    """phi(Q)(phi(K)^T V) by blocks with running sums equals the masked Gram-matrix smoother."""
    m = n + extra
    q, k, v, _ = draw_qkv(seed, batch, n, m, d)
    ker = FeatureMapKernel((lambda x: torch.cat([x, x * x + 1], -1)) if signed else elu_feature_map,
                           positive=not signed)
    G = ker.gram(q, k) * A.causal_mask(n, m)
    den = G.sum(-1, keepdim=True)
    if signed and bool((den.abs() < 1e-3).any()):
        return
    assert torch.allclose(kernel_attention(q, k, v, ker, causal=True), (G @ v) / den, atol=1e-10)
