"""lib.lognormalizer and lib.hopfield against autograd and brute force."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import hessian, jacobian

from lib import hopfield as H
from lib import lognormalizer as L
from lib.attention import softmax_attention

D64 = torch.float64


def data(seed, n=7, d=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, dtype=D64, generator=g), torch.randn(
        n, d, dtype=D64, generator=g
    )


def test_log_normalizer_brute_force_and_lse():
    q, x = data(0)
    ref = math.log(sum(math.exp(0.7 * float(q @ xj)) for xj in x))
    assert abs(float(L.log_normalizer(q, x, beta=0.7)) - ref) < 1e-13
    assert abs(float(L.lse(x @ q, beta=0.7)) - ref / 0.7) < 1e-13


def test_gradient_is_attention_and_matches_autograd():
    q, x = data(1)
    for beta in (0.3, 1.0, 4.0):
        g_auto = jacobian(lambda z, b=beta: L.log_normalizer(z, x, beta=b), q)
        g = L.log_normalizer_grad(q, x, beta=beta)
        assert torch.allclose(g, g_auto, atol=1e-13)
        att = softmax_attention(q[None], x, x, beta=beta)[0]
        assert torch.allclose(g / beta, att, atol=1e-13)


def test_hessian_is_beta2_covariance_and_psd():
    q, x = data(2)
    h_auto = hessian(lambda z: L.log_normalizer(z, x, beta=1.5), q)
    h = L.log_normalizer_hessian(q, x, beta=1.5)
    assert torch.allclose(h, h_auto, atol=1e-12)
    p = L.gibbs(q, x, beta=1.5)
    mean = p @ x
    cov = sum(p[j] * torch.outer(x[j] - mean, x[j] - mean) for j in range(len(x)))
    assert torch.allclose(h, 1.5**2 * cov, atol=1e-13)
    assert float(torch.linalg.eigvalsh(h).min()) >= -1e-12


def test_batched_queries_and_batched_keys():
    g = torch.Generator().manual_seed(3)
    qs = torch.randn(4, 3, dtype=D64, generator=g)
    xs = torch.randn(4, 6, 3, dtype=D64, generator=g)
    hb = L.log_normalizer_hessian(qs, xs)
    gb = L.log_normalizer_grad(qs, xs)
    for b in range(4):
        assert torch.allclose(hb[b], L.log_normalizer_hessian(qs[b], xs[b]), atol=1e-13)
        assert torch.allclose(gb[b], L.log_normalizer_grad(qs[b], xs[b]), atol=1e-13)
    shared = torch.randn(6, 3, dtype=D64, generator=g)
    hs = L.log_normalizer_hessian(qs, shared)
    assert hs.shape == (4, 3, 3)
    assert torch.allclose(hs[2], L.log_normalizer_hessian(qs[2], shared), atol=1e-13)


def test_infonce_gradient():
    q, x = data(4)
    q = q.clone().requires_grad_(True)
    pos = torch.tensor(2)
    loss = L.infonce_loss(q, x, pos, beta=0.9)
    (grad,) = torch.autograd.grad(loss, q)
    p = L.gibbs(q.detach(), x, beta=0.9)
    assert torch.allclose(grad, 0.9 * (p @ x - x[2]), atol=1e-13)
    assert abs(float(loss.detach()) + math.log(float(p[2]))) < 1e-13


def test_hopfield_update_never_increases_energy():
    g = torch.Generator().manual_seed(5)
    pats = torch.randn(10, 4, dtype=D64, generator=g)
    xi = torch.randn(200, 4, dtype=D64, generator=g) * 3
    for beta in (0.5, 2.0, 8.0):
        e0 = H.hopfield_energy(xi, pats, beta=beta)
        e1 = H.hopfield_energy(H.hopfield_update(xi, pats, beta=beta), pats, beta=beta)
        assert bool((e1 <= e0 + 1e-12).all())
        assert bool((e0 >= -1e-12).all())  # bounded below by 0
    sep = H.separation(pats)
    gram = pats @ pats.T
    assert abs(float(sep[0]) - float(gram[0, 0] - gram[0, 1:].max())) < 1e-13


def test_bad_input():
    q, x = data(6)
    with pytest.raises(ValueError, match="beta"):
        L.log_normalizer(q, x, beta=0.0)
    with pytest.raises(ValueError, match="last dimension"):
        L.log_normalizer(q, x[:, :2])
    with pytest.raises(ValueError, match="non-finite"):
        L.gibbs(q * float("nan"), x)
    with pytest.raises(ValueError, match="positive indices"):
        L.infonce_loss(q, x, torch.tensor(7))
    with pytest.raises(TypeError, match="integer"):
        L.infonce_loss(q, x, torch.tensor(1.0))
    with pytest.raises(ValueError, match="patterns must be"):
        H.hopfield_update(q, x[None], beta=1.0)
