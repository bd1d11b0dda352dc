"""lib.kernels against closed forms, scikit-learn's pairwise kernels and brute-force smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import laplacian_kernel, polynomial_kernel, rbf_kernel

from lib import kernels as K
from lib.attention import softmax_attention

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
