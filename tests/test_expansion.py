"""lib.expansion: the expansion theorem on random instances, stacks, distances, Jacobian asymmetry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.expansion import (
    PostNormAttention,
    ascent_alignment,
    attention_step,
    attention_steps,
    diameter,
    distance_ratios,
    growth_rate,
    histogram_task,
    imbalance,
    jacobian_asymmetry,
    layer_factors,
    pairwise_distances,
    self_attention_stack,
    train_histogram,
)
from lib.lognormalizer import log_normalizer_grad

D64 = torch.float64


def test_attention_step_is_gradient_step_and_expands():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, dtype=D64, generator=g)
    q1, q2 = (
        torch.randn(500, 5, dtype=D64, generator=g),
        torch.randn(500, 5, dtype=D64, generator=g),
    )
    beta, eta = 0.8, 2.0
    t1 = attention_step(q1, x, beta=beta, eta=eta)
    assert torch.allclose(
        t1, q1 + eta / beta * log_normalizer_grad(q1, x, beta=beta), atol=1e-12
    )
    ratio = (t1 - attention_step(q2, x, beta=beta, eta=eta)).norm(dim=-1) / (
        q1 - q2
    ).norm(dim=-1)
    assert float(ratio.min()) >= 1 - 1e-12


def test_stack_shapes_and_norms():
    x = torch.randn(10, 4, dtype=D64)
    s = self_attention_stack(x, 5, beta=0.5, norm="post")
    assert s.shape == (6, 10, 4)
    assert torch.allclose(
        s[1:].norm(dim=-1), torch.full((5, 10), 2.0, dtype=D64), atol=1e-4
    )  # radius sqrt(d)
    w = torch.randn(5, 3, 4, 4, dtype=D64)
    assert self_attention_stack(x, 5, beta=0.5, weights=w, norm="pre").shape == (
        6,
        10,
        4,
    )
    with pytest.raises(ValueError, match="norm must be"):
        self_attention_stack(x, 5, beta=0.5, norm="batch")
    with pytest.raises(ValueError, match="weights must have shape"):
        self_attention_stack(x, 5, beta=0.5, weights=w[:2])


def test_distances_brute_force():
    x = torch.randn(7, 3, dtype=D64)
    d = pairwise_distances(x)
    ref = torch.tensor(
        [float((x[i] - x[j]).norm()) for i in range(7) for j in range(i + 1, 7)],
        dtype=D64,
    )
    assert torch.allclose(d, ref, atol=1e-12)
    assert abs(float(diameter(x)) - float(ref.max())) < 1e-12


def test_jacobian_asymmetry():
    # a gradient field has a symmetric Jacobian; a rotation field does not
    q = torch.randn(20, 2, dtype=D64)
    assert float(jacobian_asymmetry(lambda v: 2 * v + (v @ v) * v, q).max()) < 1e-14
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=D64)
    assert torch.allclose(
        jacobian_asymmetry(lambda v: rot @ v, q), torch.full((20,), 2.0, dtype=D64)
    )  # |2R| / |R|


def test_attention_steps_repeat_the_step():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 4, dtype=D64, generator=g)
    q = torch.randn(11, 4, dtype=D64, generator=g)
    w = torch.randn(4, 4, dtype=D64, generator=g)
    traj = attention_steps(q, x, beta=0.7, steps=3, eta=0.5, value_map=w)
    assert traj.shape == (4, 11, 4)
    ref = q
    for t in range(1, 4):
        ref = attention_step(ref, x, beta=0.7, eta=0.5, value_map=w)
        assert torch.allclose(traj[t], ref, atol=1e-14)
    with pytest.raises(ValueError):
        attention_steps(q, x, beta=0.7, steps=0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    beta=st.floats(0.05, 5.0),
    eta=st.floats(0.0, 5.0),
    scale=st.floats(0.1, 4.0),
)
def test_distance_ratios_at_least_one_for_keys_as_values(seed, beta, eta, scale):
    # the monotone-gradient theorem (chapter 1, claim 1.3) on random instances
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 3, dtype=D64, generator=g) * scale
    q1, q2 = torch.randn(2, 50, 3, dtype=D64, generator=g) * scale
    r = distance_ratios(q1, q2, x, beta=beta, eta=eta)
    assert float(r.min()) >= 1 - 1e-10
    brute = torch.stack(
        [
            (
                attention_step(q1[i : i + 1], x, beta=beta, eta=eta)
                - attention_step(q2[i : i + 1], x, beta=beta, eta=eta)
            ).norm()
            / (q1[i] - q2[i]).norm()
            for i in range(50)
        ]
    )
    assert torch.allclose(r, brute, atol=1e-12)


def test_distance_ratios_can_contract_with_a_value_map_and_reject_bad_pairs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 2, dtype=D64, generator=g)
    q1, q2 = torch.randn(2, 2000, 2, dtype=D64, generator=g) * 2
    minus = -torch.eye(2, dtype=D64) * 3  # W_V = -3 I: a descent step that overshoots
    assert float(distance_ratios(q1, q2, x, beta=1.0, value_map=minus).min()) < 1
    with pytest.raises(ValueError, match="same shape"):
        distance_ratios(q1, q2[:5], x, beta=1.0)
    with pytest.raises(ValueError, match="distinct"):
        distance_ratios(q1, q1, x, beta=1.0)


def test_growth_rate_of_a_geometric_sequence():
    r, d0 = 1.3, 2.5
    diams = d0 * r ** torch.arange(11, dtype=D64)
    assert abs(float(growth_rate(diams)) - math.log(r)) < 1e-14
    assert abs(float(growth_rate(diams, start=4)) - math.log(r)) < 1e-14
    batch = torch.stack([diams, torch.full((11,), 3.0, dtype=D64)])
    assert torch.allclose(
        growth_rate(batch), torch.tensor([math.log(r), 0.0], dtype=D64), atol=1e-14
    )
    with pytest.raises(ValueError, match="start"):
        growth_rate(diams, start=10)
    with pytest.raises(ValueError, match="positive"):
        growth_rate(torch.tensor([1.0, 0.0], dtype=D64))


def test_stack_without_residual_cannot_expand_and_prenorm_is_linear():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 12, 6, dtype=D64, generator=g) * 3
    # without the residual each token becomes a convex combination of the tokens
    diam = diameter(self_attention_stack(x, 8, beta=0.5, residual=False))  # (9, 5)
    assert bool((diam[1:] <= diam[:-1] * (1 + 1e-12)).all())
    # pre-norm: each layer moves a token by a convex combination of vectors of norm sqrt(d)
    pre = diameter(self_attention_stack(x, 8, beta=0.5, norm="pre"))
    bound = pre[:1] + 2 * math.sqrt(6) * torch.arange(9, dtype=D64)[:, None]
    assert bool((pre <= bound * (1 + 1e-12)).all())
    with pytest.raises(TypeError, match="residual"):
        self_attention_stack(x, 2, beta=0.5, residual=1)


def test_batched_stack_equals_one_cloud_at_a_time():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, 4, dtype=D64, generator=g)
    w = torch.randn(3, 6, 3, 4, 4, dtype=D64, generator=g) / 2
    for norm in ("none", "post", "pre"):
        batched = self_attention_stack(x, 6, beta=0.8, weights=w, norm=norm)
        for b in range(3):
            one = self_attention_stack(x[b], 6, beta=0.8, weights=w[b], norm=norm)
            assert torch.allclose(batched[:, b], one, atol=1e-12)
    # explicit per-layer maps against a hand-written layer
    wq, wk, wv = w[0, 0]
    ref = x[0] + torch.softmax(0.8 * (x[0] @ wq.T) @ (x[0] @ wk.T).T, -1) @ (
        x[0] @ wv.T
    )
    assert torch.allclose(
        self_attention_stack(x[0], 6, beta=0.8, weights=w[0])[1], ref, atol=1e-12
    )


def test_layer_factors_against_a_hand_written_post_norm_layer():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 4, dtype=D64, generator=g)
    w = torch.randn(3, 3, 4, 4, dtype=D64, generator=g) / 2
    gam = 1 + 0.3 * torch.randn(3, 4, dtype=D64, generator=g)
    b = 0.1 * torch.randn(3, 4, dtype=D64, generator=g)
    f = layer_factors(x, 3, beta=0.7, weights=w, ln_weight=gam, ln_bias=b)
    ref = x
    for layer in range(3):
        wq, wk, wov = w[layer]
        y = ref + torch.softmax(0.7 * (ref @ wq.T) @ (ref @ wk.T).transpose(-1, -2), -1) @ (
            ref @ wov.T
        )
        new = torch.nn.functional.layer_norm(y, (4,), gam[layer], b[layer], eps=1e-5)
        mean = lambda z: torch.stack(
            [torch.stack([(z[k, i] - z[k, j]).norm() for i in range(9) for j in range(i + 1, 9)]).mean()
             for k in range(2)])
        assert torch.allclose(f["expansion"][:, layer], mean(y) / mean(ref), atol=1e-12)
        assert torch.allclose(f["contraction"][:, layer], mean(new) / mean(y), atol=1e-12)
        ref = new
        assert torch.allclose(f["states"][layer + 1], ref, atol=1e-12)
    assert bool(f["live"].all())
    with pytest.raises(ValueError, match="ln_weight"):
        layer_factors(x, 3, beta=0.7, ln_weight=gam[:2])
    with pytest.raises(ValueError, match="weights"):
        layer_factors(x, 3, beta=0.7, weights=w[:2])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.05, 4.0), scale=st.floats(0.1, 4.0))
def test_every_identity_layer_is_expansive(seed, beta, scale):
    # the expansion theorem applied to each self-attention layer (chapter 1, claim 1.4)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, dtype=D64, generator=g) * scale
    f = layer_factors(x, 4, beta=beta)
    assert float(f["min_ratio"].min()) >= 1 - 1e-9
    assert float(f["expansion"].min()) >= 1 - 1e-9


def test_layer_factors_mark_collapsed_clouds():
    x = torch.ones(5, 4, dtype=D64) + 1e-12 * torch.randn(5, 4, dtype=D64)
    f = layer_factors(x, 2, beta=1.0, residual=False)
    assert not bool(f["live"].any())
    assert torch.equal(f["expansion"], torch.ones(2, dtype=D64))
    assert torch.equal(f["contraction"], torch.ones(2, dtype=D64))


def test_imbalance_closed_forms():
    e = torch.tensor([2.0, 1.5, 1.1], dtype=D64)
    assert float(imbalance(e, 1 / e)) < 1e-15  # exact balance
    assert abs(float(imbalance(e, torch.ones(3, dtype=D64))) - 1) < 1e-15  # no layer norm
    assert abs(float(imbalance(e, e**-2)) - 1) < 1e-14  # twice the contraction: a collapse
    assert abs(float(imbalance(e, e**-1.5)) - 0.5) < 1e-14
    with pytest.raises(ValueError, match="positive"):
        imbalance(e, torch.zeros(3, dtype=D64))
    with pytest.raises(ValueError, match="same shape"):
        imbalance(e, e[:2])


def test_ascent_alignment_and_the_gradient_it_stands_for():
    g = torch.Generator().manual_seed(6)
    wq, wk = torch.randn(2, 4, 4, dtype=D64, generator=g)
    beta = 0.5
    m = wq.T @ wk
    assert abs(float(ascent_alignment(wq, wk, 3 * beta * m)) - 1) < 1e-14
    assert abs(float(ascent_alignment(wq, wk, -m)) + 1) < 1e-14
    # with W_OV = beta W_Q^T W_K the sublayer is the gradient of A(x) = log sum exp(beta x^T M y_j)
    y = torch.randn(7, 4, dtype=D64, generator=g)
    x = torch.randn(4, dtype=D64, generator=g, requires_grad=True)
    a = torch.logsumexp(beta * (x @ m) @ y.T, -1)
    (grad_a,) = torch.autograd.grad(a, x)
    out = torch.softmax(beta * (wq @ x.detach()) @ (y @ wk.T).T, -1) @ (y @ (beta * m).T)
    assert torch.allclose(out, grad_a, atol=1e-12)


def test_histogram_task_brute_force():
    tokens, counts = histogram_task(20, 6, 3, generator=torch.Generator().manual_seed(7))
    for s in range(20):
        for i in range(6):
            assert int(counts[s, i]) == sum(int(tokens[s, j] == tokens[s, i]) for j in range(6)) - 1


def test_post_norm_model_matches_layer_factors_and_learns():
    torch.manual_seed(0)
    with torch.no_grad():
        model = PostNormAttention(5, 8, 2, 4, generator=torch.Generator().manual_seed(8))
        tokens = torch.randint(0, 5, (3, 4))
        w, gam, b = model.stack()
        f = layer_factors(model.embed[tokens], 2, beta=model.beta, weights=w, ln_weight=gam, ln_bias=b)
        assert torch.allclose(f["states"][-1] @ model.readout.T, model(tokens), atol=1e-5)
    _, acc = train_histogram(0, d=8, depth=2, vocab=4, length=4, steps=60, batch=32)
    # always answering the most frequent count (0 or 1 other copy) scores 27/64, about 0.42
    assert acc > 0.5
