"""lib.kernels against closed forms, scikit-learn's pairwise kernels and brute-force smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import laplacian_kernel, polynomial_kernel, rbf_kernel

from lib import kernels as K
from lib.attention import softmax_attention
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


def pts(n, d, seed):
    return torch.randn(n, d, dtype=D64, generator=torch.Generator().manual_seed(seed))


def test_grams_match_sklearn_and_closed_forms():
    q, k = pts(6, 3, 0), pts(5, 3, 1)
    qn, kn = q.numpy(), k.numpy()
    assert np.allclose(K.RBF(gamma=0.4)(q, k).numpy(), rbf_kernel(qn, kn, gamma=0.4), atol=1e-13)
    assert np.allclose(K.Laplacian(gamma=0.4)(q, k).numpy(), laplacian_kernel(qn, kn, gamma=0.4), atol=1e-13)
    assert np.allclose(K.Polynomial(3, c=1.0, scale=0.5)(q, k).numpy(),
                       polynomial_kernel(qn, kn, degree=3, gamma=0.5, coef0=1.0), atol=1e-12)
    assert torch.allclose(K.ExpDot()(q, k), torch.exp(q @ k.T / math.sqrt(3)), atol=1e-13)
    assert torch.allclose(K.Linear(scale=1.0)(q, k), q @ k.T, atol=1e-14)
    l2 = K.Laplacian(gamma=0.4, p=2)(q, k)
    assert torch.allclose(l2, torch.exp(-0.4 * torch.cdist(q, k)), atol=1e-13)
    # defaults follow the documented scalings
    assert torch.allclose(K.RBF()(q, k), torch.exp(-torch.cdist(q, k) ** 2 / (2 * math.sqrt(3))), atol=1e-13)


def test_feature_dims():
    assert K.ExpDot().feature_dim(3) is None and K.RBF().feature_dim(3) is None
    assert K.Polynomial(2).feature_dim(3) == math.comb(5, 2) == 10
    assert K.Polynomial(2, c=0.0).feature_dim(3) == math.comb(4, 2) == 6
    assert K.Linear().feature_dim(7) == 7
    # the Gram matrix rank never exceeds the feature dimension (brute-force check)
    x = pts(40, 3, 2)
    for ker in (K.Polynomial(2), K.Polynomial(2, c=0.0), K.Polynomial(3), K.Linear()):
        assert int(torch.linalg.matrix_rank(ker(x, x))) == ker.feature_dim(3)
    assert int(torch.linalg.matrix_rank(K.ExpDot()(x, x))) == 40


def brute_kernel_attention(q, k, v, ker):
    g = ker(q, k)
    return torch.stack([(g[i][:, None] * v).sum(0) / g[i].sum() for i in range(q.shape[0])])


@pytest.mark.parametrize("ker", [K.ExpDot(), K.RBF(), K.Laplacian(), K.Polynomial(2), K.Linear(),
                                 K.FeatureMapKernel(K.elu_feature_map, name="elu")])
def test_kernel_attention_brute_force(ker):
    q, k, v = pts(5, 4, 3), pts(7, 4, 4), pts(7, 2, 5)
    if isinstance(ker, K.Linear):
        q, k = q.abs(), k.abs()  # keep the normaliser away from 0 for the reference
    assert torch.allclose(K.kernel_attention(q, k, v, ker), brute_kernel_attention(q, k, v, ker), atol=1e-11)


def test_exp_kernel_attention_is_softmax_attention_and_stable():
    q, k, v = pts(6, 4, 6), pts(8, 4, 7), pts(8, 3, 8)
    assert torch.allclose(K.kernel_attention(q, k, v, K.ExpDot()), softmax_attention(q, k, v), atol=1e-13)
    big = 1e3 * q  # exp would overflow; the log-space path does not
    out = K.kernel_attention(big, k, v, K.ExpDot())
    assert bool(torch.isfinite(out).all())
    assert torch.allclose(out, softmax_attention(big, k, v), atol=1e-10)
    # masks: causal kernel attention equals masked brute force
    x = pts(6, 4, 9)
    out = K.kernel_attention(x, x, x, K.RBF(), causal=True)
    assert torch.allclose(out[0], x[0], atol=1e-14)


def test_rbf_attention_is_softmax_with_key_bias():
    """RBF attention = softmax attention with a key-norm bias: the query factor cancels."""
    q, k, v = pts(5, 4, 10), pts(9, 4, 11), pts(9, 2, 12)
    g = 0.3
    w = torch.softmax(2 * g * q @ k.T - g * (k * k).sum(-1), -1)
    assert torch.allclose(K.kernel_attention(q, k, v, K.RBF(gamma=g)), w @ v, atol=1e-13)


def test_polynomial_normaliser_guard():
    q = torch.tensor([[1.0, 0.0]], dtype=D64)
    k = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D64)
    v = torch.tensor([[1.0], [2.0]], dtype=D64)
    out = K.kernel_attention(q, k, v, K.Linear(scale=1.0), eps=1e-6)  # weights 1 and -1 sum to 0
    assert bool(torch.isfinite(out).all())
    assert torch.allclose(out, torch.tensor([[-1.0 / 1e-6]], dtype=D64))


def test_bad_input():
    with pytest.raises(TypeError, match="Kernel"):
        K.kernel_attention(pts(2, 2, 0), pts(2, 2, 0), pts(2, 2, 0), kernel=lambda a, b: a @ b.T)
    with pytest.raises(ValueError, match="gamma"):
        K.RBF(gamma=-1.0)
    with pytest.raises(ValueError, match="degree"):
        K.Polynomial(0)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        K.Laplacian(p=3)
    with pytest.raises(ValueError, match="last dimension"):
        K.ExpDot()(pts(2, 2, 0), pts(2, 3, 0))
    with pytest.raises(ValueError, match="non-finite"):
        K.RBF()(torch.full((2, 2), float("nan"), dtype=D64), pts(2, 2, 0))
    with pytest.raises(ValueError, match="eps"):
        K.kernel_attention(pts(2, 2, 0), pts(2, 2, 0), pts(2, 2, 0), K.Linear(), eps=0.0)
    with pytest.raises(NotImplementedError, match="log_gram"):
        K.Polynomial(2).log_gram(pts(2, 2, 0), pts(2, 2, 0))


# --- regression tests (issue: lib/ hardened) ---------------------------------------------------

def _all_kernels(d):
    from lib.kernel_machines import random_feature_kernel, taylor_kernel

    return [ExpDot(), ExpDot(0.3), RBF(), RBF(0.7), Laplacian(), Laplacian(p=2), Polynomial(2),
            Polynomial(4, c=0.5), taylor_kernel(2), taylor_kernel(4),
            FeatureMapKernel(elu_feature_map, name="elu+1", dim=lambda d: d, positive=True),
            random_feature_kernel(d, 64, generator=torch.Generator().manual_seed(2)),
            random_feature_kernel(d, 64, generator=torch.Generator().manual_seed(2), stabilize=False)]


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_rows_sum_to_one_for_every_kernel(scale):
    """Positive random features at logit scale 3 lost the normalisation (bug: positive flag unread)."""
    g = torch.Generator().manual_seed(1)
    d = 4
    q, k = (scale * torch.randn(2, 40, d, generator=g, dtype=torch.float64) for _ in range(2))
    ones = torch.ones(2, 40, 1, dtype=torch.float64)
    for ker in _all_kernels(d):
        out = kernel_attention(q, k, ones, ker)
        assert (out - 1).abs().max() < 1e-10, ker
        out = kernel_attention(q, k, ones, ker, causal=True)
        assert (out - 1).abs().max() < 1e-10, ker


def test_feature_map_positive_flag_is_read():
    ker = FeatureMapKernel(elu_feature_map, positive=True)
    assert ker.positive and ker.positive_features
    assert not FeatureMapKernel(lambda x: x).positive


def test_laplacian_p2_gradient_finite_where_query_equals_key():
    q = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    k = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, -1.0]], dtype=torch.float64, requires_grad=True)
    for ker in (Laplacian(p=2), Laplacian(p=1), RBF()):
        q.grad = k.grad = None
        ker.gram(q, k).sum().backward()
        assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all(), ker
        v = torch.randn(3, 2, dtype=torch.float64)
        q.grad = None
        kernel_attention(q, k, v, ker).sum().backward()
        assert torch.isfinite(q.grad).all(), ker


def test_distance_kernels_float32_far_from_origin():
    g = torch.Generator().manual_seed(4)
    q, k = (torch.randn(10, 3, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(10, 2, generator=g, dtype=torch.float64)
    for ker in (RBF(0.5), Laplacian(0.5, p=2)):
        for off in (1e3, 1e4):
            qo, ko = (q + off).float(), (k + off).float()
            ref_g = ker.gram(qo.double(), ko.double())  # the same (rounded) inputs in float64
            ref_a = kernel_attention(qo.double(), ko.double(), v.float().double(), ker)
            assert (ker.gram(qo, ko).double() - ref_g).abs().max() < 1e-5, ker
            assert (kernel_attention(qo, ko, v.float(), ker).double() - ref_a).abs().max() < 1e-5, ker


def test_zero_dimension_default_scale_is_valueerror():
    q = torch.zeros(3, 0, dtype=torch.float64)
    for ker in (ExpDot(), RBF(), Laplacian(), Polynomial(2)):
        with pytest.raises(ValueError, match="d >= 1|dimension"):
            ker.gram(q, q)


def test_feature_map_linear_attention_matches_gram_route():
    g = torch.Generator().manual_seed(7)
    from lib.kernel_machines import random_feature_kernel

    ker = random_feature_kernel(5, 32, generator=torch.Generator().manual_seed(0))
    q, k = (torch.randn(2, 3, 30, 5, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(2, 3, 30, 4, generator=g, dtype=torch.float64)
    G = ker.gram(q, k)
    for causal in (False, True):
        Gm = G * torch.ones(30, 30, dtype=torch.bool).tril() if causal else G
        ref = (Gm @ v) / Gm.sum(-1, keepdim=True)
        assert torch.allclose(kernel_attention(q, k, v, ker, causal=causal), ref, atol=1e-12)
    km = torch.ones(2, 3, 1, 30, dtype=torch.bool)
    km[..., 20:] = False  # a key padding mask
    mask = km.expand(2, 3, 30, 30)
    Gm = G * mask
    assert torch.allclose(kernel_attention(q, k, v, ker, mask=mask), (Gm @ v) / Gm.sum(-1, keepdim=True), atol=1e-12)
