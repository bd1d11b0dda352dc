"""Tests of lib/lenses.py against independent references (brute force, closed forms, autograd)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib import lenses as LN
from lib.attention import factored_weights
from lib.hardmax import random_spd, run_dynamics, softmax_layer
from lib.kernel_machines import random_feature_kernel
from lib.kernels import ExpDot
from lib.pde import sphere_velocity
from lib.potts import conditional_logits

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _brute_consensus(x: torch.Tensor, beta: float, A: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    out = torch.zeros_like(x)
    for i in range(n):
        s = torch.tensor([beta * float((A @ x[i]) @ x[j]) for j in range(n)], dtype=F64)
        w = torch.exp(s - s.max())
        w = w / w.sum()
        out[i] = (w[:, None] * x).sum(0) - x[i]
    return out


def test_consensus_field_matches_brute_force_with_asymmetric_A():
    g = _gen(1)
    x = torch.randn(7, 3, generator=g, dtype=F64)
    A = torch.randn(
        3, 3, generator=g, dtype=F64
    )  # not symmetric: a transposition would show
    for beta in (0.3, 2.0, 40.0):
        err = (
            (LN.consensus_field(x, beta=beta, A=A) - _brute_consensus(x, beta, A))
            .abs()
            .max()
        )
        assert float(err) < 1e-12
    # the transposed convention differs
    assert (
        float(
            (LN.consensus_field(x, beta=2.0, A=A.T) - _brute_consensus(x, 2.0, A))
            .abs()
            .max()
        )
        > 1e-3
    )


def test_euler_step_is_chapter5_softmax_layer():
    g = _gen(2)
    z = torch.randn(4, 9, 2, generator=g, dtype=F64)
    A = random_spd(
        2, generator=g
    )  # chapter 5's layer takes a symmetric positive definite A
    for alpha, beta in ((0.5, 1.0), (2.0, 50.0)):
        ours = LN.consensus_euler_step(z, beta=beta, alpha=alpha, A=A)
        ref = softmax_layer(z, alpha=alpha, temperature=1.0 / beta, A=A)
        assert float((ours - ref).abs().max()) < 1e-12
    wrong = LN.consensus_euler_step(z, beta=1.0, alpha=0.5, h=0.5)
    assert (
        float((wrong - softmax_layer(z, alpha=0.5, temperature=1.0)).abs().max()) > 1e-2
    )


def test_score_gaps_brute_force():
    g = _gen(3)
    z0 = torch.randn(6, 2, generator=g, dtype=F64)
    tr = run_dynamics(z0, alpha=1.0, layers=3).trajectory
    gaps = LN.score_gaps(tr)
    assert gaps.shape == (3, 6, 6)
    for k in range(3):
        s = tr[k] @ tr[k].T
        for i in range(6):
            top = float(s[i].max())
            for j in range(6):
                gap = top - float(s[i, j])
                if gap <= 1e-12 * max(1.0, float(s[i].abs().max())):
                    assert math.isinf(float(gaps[k, i, j]))
                else:
                    assert abs(float(gaps[k, i, j]) - gap) < 1e-14


def test_decay_rate_exact_and_fallback():
    b = np.linspace(10, 200, 30)
    e = 3.0 * np.exp(-0.17 * b)
    assert abs(LN.decay_rate(b, e) - 0.17) < 1e-10
    flat = np.full_like(b, 0.9)  # never decays: fitted on the largest betas, rate ~ 0
    assert abs(LN.decay_rate(b, flat)) < 1e-12
    with pytest.raises(ValueError):
        LN.decay_rate(b[:2], e[:2])
    with pytest.raises(ValueError):
        LN.decay_rate(b, e, window=(1e-3, 1e-6))


def test_temperature_sweep_rate_matches_gap_and_ties_break_it():
    z0 = torch.randn(6, 2, generator=_gen(4), dtype=F64)
    sw = LN.temperature_sweep(z0, alpha=1.0, layers=3, betas=np.geomspace(1, 1e5, 31))
    assert sw.errors[-1] < 1e-12
    assert abs(sw.ratio - 1.0) < 0.1
    # an exact tie point (the edge midpoint (1, 0) between (1, 1) and (1, -1)) is unstable for
    # softmax: after 40 layers the softmax token has left it for a vertex
    tie = torch.tensor(
        [[1, 1], [1, -1], [-1, -1], [-1, 1], [0.5, 0.0], [0.1, 0.2]], dtype=F64
    )
    sw_tie = LN.temperature_sweep(
        tie, alpha=0.5, layers=40, betas=np.geomspace(1, 1e4, 13)
    )
    assert sw_tie.errors[-1] > 0.5


def test_interaction_energy_and_log_normalizer_brute_force():
    g = _gen(5)
    x = torch.randn(2, 5, 3, generator=g, dtype=F64)
    beta = 0.7
    E = LN.interaction_energy(x, beta=beta)
    Fv = LN.summed_log_normalizer(x, beta=beta)
    for b in range(2):
        e_ref = sum(
            math.exp(beta * float(x[b, i] @ x[b, j]))
            for i in range(5)
            for j in range(5)
        ) / (2 * beta)
        f_ref = sum(
            math.log(sum(math.exp(beta * float(x[b, i] @ x[b, j])) for j in range(5)))
            for i in range(5)
        )
        assert abs(float(E[b]) - e_ref) < 1e-12 * e_ref
        assert abs(float(Fv[b]) - f_ref) < 1e-12 * abs(f_ref)


def test_sphere_field_identity_is_sphere_velocity_and_tangent():
    g = _gen(6)
    x = torch.randn(3, 8, 4, generator=g, dtype=F64)
    x = x / x.norm(dim=-1, keepdim=True)
    v = LN.sphere_field(x, beta=2.0)
    assert float((v - sphere_velocity(x, beta=2.0)).abs().max()) < 1e-13
    V = torch.randn(4, 4, generator=g, dtype=F64)
    vV = LN.sphere_field(x, beta=2.0, V=V)
    assert float((vV * x).sum(-1).abs().max()) < 1e-13


def test_energy_rate_against_finite_differences():
    g = _gen(7)
    x = torch.randn(6, 3, generator=g, dtype=F64)
    x = x / x.norm(dim=-1, keepdim=True)
    V = torch.randn(3, 3, generator=g, dtype=F64)
    v = LN.sphere_field(x, beta=1.5, V=V)
    rate, cos = LN.energy_rate(lambda y: LN.interaction_energy(y, beta=1.5), x, v)
    eps = 1e-6
    fd = (
        LN.interaction_energy(x + eps * v, beta=1.5)
        - LN.interaction_energy(x - eps * v, beta=1.5)
    ) / (2 * eps)
    assert abs(float(rate) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))
    assert -1.0 <= float(cos) <= 1.0
    with pytest.raises(ValueError):
        LN.energy_rate(lambda y: LN.interaction_energy(y, beta=1.0), x, v[:3])


def test_interaction_energy_rises_for_identity_value_map():
    # dE/dt = sum_i Z_i |P_perp Gamma_i|^2 >= 0 on the sphere for V = I
    g = _gen(8)
    x = torch.randn(200, 6, 3, generator=g, dtype=F64)
    x = x / x.norm(dim=-1, keepdim=True)
    for beta in (0.5, 4.0):
        _, cos = LN.energy_rate(
            lambda y, b=beta: LN.interaction_energy(y, beta=b),
            x,
            LN.sphere_field(x, beta=beta),
        )
        assert float(cos.min()) >= -1e-12


def test_kernel_factored_attention_exp_is_masked_softmax():
    L, C_ = 6, 3
    m = LN.KernelFactoredAttention(
        L, C_, ExpDot(scale=1.0), generator=_gen(9), init_scale=0.5
    )
    W = m.weights()[0].detach()
    ref = factored_weights((m.p @ m.r.T).detach())
    assert float((W - ref).abs().max()) < 1e-12
    assert (
        float((W.sum(-1) - 1).abs().max()) < 1e-12
        and float(W.diagonal().abs().max()) == 0.0
    )
    X = torch.nn.functional.one_hot(
        torch.randint(C_, (5, L), generator=_gen(10)), C_
    ).to(F64)
    logits = m(X)
    ref_logits = torch.einsum("ij,njb,ab->nia", ref, X, m.V[0].detach()) + m.b.detach()
    assert float((logits.detach() - ref_logits).abs().max()) < 1e-12
    # only the embeddings, V and the fields are trained
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert names == {"p", "r", "V", "b"}


def test_kernel_factored_attention_feature_rank():
    L, D = 10, 3
    k = random_feature_kernel(L, D, generator=_gen(11))
    m = LN.KernelFactoredAttention(L, 3, k, generator=_gen(12), init_scale=0.5)
    G = k.gram(m.p.detach(), m.r.detach())  # unnormalised kernel matrix
    assert int(torch.linalg.matrix_rank(G)) <= D
    W = m.weights()[0].detach()
    assert float((W.sum(-1) - 1).abs().max()) < 1e-12 and bool((W >= 0).all())
    with pytest.raises(TypeError):
        LN.KernelFactoredAttention(L, 3, "exp")


def test_potts_view_conditionals_are_attention_weights():
    g = _gen(13)
    x = torch.randn(7, 2, generator=g, dtype=F64)
    beta = 1.3
    model, s = LN.potts_view(x, beta=beta)
    P = torch.softmax(conditional_logits(model, s)[0], dim=-1)
    S = beta * (x @ x.T)
    ref = torch.exp(S - S.max(-1, keepdim=True).values)
    ref = ref / ref.sum(-1, keepdim=True)
    assert float((P - ref).abs().max()) < 1e-12
    assert (
        float((P - ref.T).abs().max()) > 1e-3
    )  # the transposed weights are not the conditionals
    with pytest.raises(ValueError):
        LN.potts_view(x[:1], beta=1.0)


def test_bad_inputs():
    x = torch.randn(5, 2, dtype=F64)
    with pytest.raises(ValueError):
        LN.consensus_field(x, beta=-1.0)
    with pytest.raises(ValueError):
        LN.consensus_field(x, beta=1.0, A=torch.eye(3, dtype=F64))
    with pytest.raises(ValueError):
        LN.score_gaps(x)
    with pytest.raises(ValueError):
        LN.temperature_sweep(x, alpha=1.0, layers=2, betas=[1.0, 2.0])


# --------------------------------------------------------------------------------------------
# Energies: identities, signs under an adversarial search
# --------------------------------------------------------------------------------------------


def _energy(beta: float):
    return lambda y: LN.interaction_energy(y, beta=beta)


def _F(beta: float):
    return lambda y: LN.summed_log_normalizer(y, beta=beta)


def _field(beta: float, V=None):
    return lambda y: LN.sphere_field(y, beta=beta, V=V)


def test_random_sphere_clouds_unit_and_clustered():
    x = LN.random_sphere_clouds(10, 5, 3, generator=_gen(20))
    assert x.shape == (10, 5, 3)
    assert float((x.norm(dim=-1) - 1).abs().max()) < 1e-14
    # the clustered half has tokens closer together than the uniform half
    spread = (x - x.mean(-2, keepdim=True)).norm(dim=-1).mean(-1)
    assert float(spread[5:].mean()) < float(spread[:5].mean())
    with pytest.raises(ValueError):
        LN.random_sphere_clouds(4, 5, 3, generator=_gen(0), clustered=1.5)


def test_projected_gradient_and_geshkovski_identity():
    # v_i = P_perp grad_i E / Z_i, with the gradient of E in closed form (Z_i Gamma_i)
    x = LN.random_sphere_clouds(6, 7, 3, generator=_gen(21))
    for beta in (0.5, 3.0):
        g = LN.projected_gradient(_energy(beta), x)
        S = torch.exp(beta * x @ x.transpose(-1, -2))
        closed = S @ x
        closed = closed - (closed * x).sum(-1, keepdim=True) * x
        assert float((g - closed).abs().max()) < 1e-12 * float(closed.abs().max())
        Z = S.sum(-1, keepdim=True)
        assert float((LN.sphere_field(x, beta=beta) - g / Z).abs().max()) < 1e-13
        # the same identity with F fails: the field is not a gradient flow of F
        gF = LN.projected_gradient(_F(beta), x)
        assert float((LN.sphere_field(x, beta=beta) - gF / beta).abs().max()) > 1e-2
    assert float((g * x).sum(-1).abs().max()) < 1e-12  # tangent


def test_pattern_log_normalizer_and_frozen_field():
    g = _gen(22)
    x = LN.random_sphere_clouds(3, 4, 3, generator=g)
    y = torch.randn(3, 6, 3, generator=g, dtype=F64)
    beta = 1.7
    Fp = LN.pattern_log_normalizer(x, y, beta=beta)
    ref = torch.logsumexp(beta * x @ y.transpose(-1, -2), dim=-1).sum(-1)
    assert float((Fp - ref).abs().max()) < 1e-12
    # with y = x it is the summed log-normalizer
    assert float((LN.pattern_log_normalizer(x, x, beta=beta) - LN.summed_log_normalizer(x, beta=beta)).abs().max()) < 1e-12
    # the frozen-pattern field is beta^-1 times the tangential gradient in the states
    v = LN.frozen_pattern_field(x, y, beta=beta)
    gp = LN.projected_gradient(lambda s: LN.pattern_log_normalizer(s, y, beta=beta), x)
    assert float((v - gp / beta).abs().max()) < 1e-13
    # with y = x it is the attention flow on the sphere
    assert float((LN.frozen_pattern_field(x, x, beta=beta) - LN.sphere_field(x, beta=beta)).abs().max()) < 1e-13


def test_adversary_keeps_the_sign_of_dE_and_breaks_dF():
    """The chapter's setting (n = 8, d = 3, beta = 2): E rises under the adversary, F does not."""
    x0 = LN.random_sphere_clouds(24, 8, 3, generator=_gen(23))
    resE = LN.adversarial_energy_rate(_energy(2.0), _field(2.0), x0, steps=60)
    assert resE.min_cos >= -1e-12
    resF = LN.adversarial_energy_rate(_F(2.0), _field(2.0), x0, steps=60)
    assert float(resF.start_cos.min()) > 0  # random starts all look monotone
    assert resF.min_cos < -1e-3 and resF.best_rate < 0  # the adversary finds a decrease
    # the reported configuration is on the sphere and its rate is negative by finite differences
    xb = resF.best_x
    assert float((xb.norm(dim=-1) - 1).abs().max()) < 1e-12
    v = LN.sphere_field(xb, beta=2.0)
    eps = 1e-6
    fd = (LN.summed_log_normalizer(xb + eps * v, beta=2.0) - LN.summed_log_normalizer(xb - eps * v, beta=2.0)) / (2 * eps)
    assert float(fd) < 0
    # a random value map loses the sign of dE/dt
    V = torch.randn(3, 3, generator=_gen(24), dtype=F64)
    assert LN.adversarial_energy_rate(_energy(2.0), _field(2.0, V), x0, steps=30).min_cos < -1e-2


def test_two_tokens_F_rises_under_the_adversary():
    # n = 2: F = 2 log(e^beta + e^{beta <x1, x2>}) increases with <x1, x2>, which the flow increases
    x0 = LN.random_sphere_clouds(16, 2, 3, generator=_gen(25))
    for beta in (0.5, 4.0):
        assert LN.adversarial_energy_rate(_F(beta), _field(beta), x0, steps=40).min_cos >= -1e-12


def test_frozen_patterns_keep_the_sign_under_the_adversary():
    n = 5

    def energy(y):
        return LN.pattern_log_normalizer(y[..., :n, :], y[..., n:, :], beta=2.0)

    def field(y):
        v = LN.frozen_pattern_field(y[..., :n, :], y[..., n:, :], beta=2.0)
        return torch.cat([v, torch.zeros_like(v)], dim=-2)

    x0 = LN.random_sphere_clouds(16, 2 * n, 3, generator=_gen(26))
    assert LN.adversarial_energy_rate(energy, field, x0, steps=40).min_cos >= -1e-12


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), beta=st.floats(0.1, 10.0), n=st.integers(2, 9))
def test_property_dE_nonnegative_for_identity_value_map(seed, beta, n):
    x = LN.random_sphere_clouds(8, n, 3, generator=_gen(seed))
    rate, _ = LN.energy_rate(_energy(beta), x, LN.sphere_field(x, beta=beta))
    S = torch.exp(beta * x @ x.transpose(-1, -2))
    G = (S @ x) / S.sum(-1, keepdim=True)
    u = G - (G * x).sum(-1, keepdim=True) * x
    closed = (S.sum(-1) * (u * u).sum(-1)).sum(-1)  # sum_i Z_i |P_perp Gamma_i|^2
    assert float((rate - closed).abs().max()) < 1e-10 * max(1.0, float(closed.abs().max()))
    assert float(rate.min()) >= -1e-12


def test_adversarial_search_bad_inputs():
    x = LN.random_sphere_clouds(2, 3, 3, generator=_gen(27))
    with pytest.raises(ValueError):
        LN.adversarial_energy_rate(_energy(1.0), _field(1.0), x[0], steps=5)
    with pytest.raises(ValueError):
        LN.adversarial_energy_rate(_energy(1.0), _field(1.0), x, steps=0)
