"""lib.expansion: the expansion theorem on random instances, stacks, distances, Jacobian asymmetry."""

from __future__ import annotations


import pytest
import torch

from lib.expansion import attention_step, diameter, jacobian_asymmetry, pairwise_distances, self_attention_stack
from lib.lognormalizer import log_normalizer_grad

D64 = torch.float64


def test_attention_step_is_gradient_step_and_expands():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, dtype=D64, generator=g)
    q1, q2 = torch.randn(500, 5, dtype=D64, generator=g), torch.randn(500, 5, dtype=D64, generator=g)
    beta, eta = 0.8, 2.0
    t1 = attention_step(q1, x, beta=beta, eta=eta)
    assert torch.allclose(t1, q1 + eta / beta * log_normalizer_grad(q1, x, beta=beta), atol=1e-12)
    ratio = (t1 - attention_step(q2, x, beta=beta, eta=eta)).norm(dim=-1) / (q1 - q2).norm(dim=-1)
    assert float(ratio.min()) >= 1 - 1e-12


def test_stack_shapes_and_norms():
    x = torch.randn(10, 4, dtype=D64)
    s = self_attention_stack(x, 5, beta=0.5, norm="post")
    assert s.shape == (6, 10, 4)
    assert torch.allclose(s[1:].norm(dim=-1), torch.full((5, 10), 2.0, dtype=D64), atol=1e-4)  # radius sqrt(d)
    w = torch.randn(5, 3, 4, 4, dtype=D64)
    assert self_attention_stack(x, 5, beta=0.5, weights=w, norm="pre").shape == (6, 10, 4)
    with pytest.raises(ValueError, match="norm must be"):
        self_attention_stack(x, 5, beta=0.5, norm="batch")
    with pytest.raises(ValueError, match="weights must have shape"):
        self_attention_stack(x, 5, beta=0.5, weights=w[:2])


def test_distances_brute_force():
    x = torch.randn(7, 3, dtype=D64)
    d = pairwise_distances(x)
    ref = torch.tensor([float((x[i] - x[j]).norm()) for i in range(7) for j in range(i + 1, 7)], dtype=D64)
    assert torch.allclose(d, ref, atol=1e-12)
    assert abs(float(diameter(x)) - float(ref.max())) < 1e-12


def test_jacobian_asymmetry():
    # a gradient field has a symmetric Jacobian; a rotation field does not
    q = torch.randn(20, 2, dtype=D64)
    assert float(jacobian_asymmetry(lambda v: 2 * v + (v @ v) * v, q).max()) < 1e-14
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=D64)
    assert torch.allclose(jacobian_asymmetry(lambda v: rot @ v, q), torch.full((20,), 2.0, dtype=D64))  # |2R| / |R|
