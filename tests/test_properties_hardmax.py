"""Property-based tests (Hypothesis) of lib.hardmax: hull shrinkage, fixed points, leaders, and
agreement with exact rational arithmetic on lattice inputs (profile ``ci`` in conftest.py)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from hypothesis import given
from hypothesis import strategies as st

from lib.hardmax import (
    attention_sets,
    hardmax_layer,
    random_spd,
    run_dynamics,
    strict_leaders,
)

D64 = torch.float64
seeds = st.integers(0, 2**31 - 1)
alphas = st.sampled_from([0.25, 0.5, 1.0, 2.0])


def cloud(seed, n, d, spd):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=D64)
    return z, (random_spd(d, generator=g) if spd else None), g


@given(seed=seeds, n=st.integers(1, 12), d=st.integers(1, 4), alpha=alphas, spd=st.booleans())
def test_support_function_never_grows(seed, n, d, alpha, spd):
    """Every update is a convex combination: max_i <u, z_i> can only decrease, for every u."""
    z, A, g = cloud(seed, n, d, spd)
    out = hardmax_layer(z, alpha=alpha, A=A)
    u = torch.randn(16, d, generator=g, dtype=D64)
    assert ((out @ u.T).amax(0) <= (z @ u.T).amax(0) + 1e-12).all()
    assert ((out @ u.T).amin(0) >= (z @ u.T).amin(0) - 1e-12).all()


@given(seed=seeds, n=st.integers(1, 12), d=st.integers(2, 4), alpha=alphas)
def test_points_on_a_sphere_are_fixed_points(seed, n, d, alpha):
    """Distinct points of equal norm (A = I) are all strict leaders, so the layer fixes them."""
    z, _, _ = cloud(seed, n, d, False)
    z = 2.0 * z / z.norm(dim=-1, keepdim=True)
    assert strict_leaders(z).all()
    assert torch.allclose(hardmax_layer(z, alpha=alpha), z, atol=1e-15, rtol=0)


@given(seed=seeds, n=st.integers(1, 12), d=st.integers(1, 4), alpha=alphas, spd=st.booleans())
def test_strict_leaders_stay_put_and_equivariance(seed, n, d, alpha, spd):
    z, A, g = cloud(seed, n, d, spd)
    lead = strict_leaders(z, A=A)
    tr = run_dynamics(z, alpha=alpha, layers=12, A=A).trajectory
    assert (tr[:, lead] - z[lead]).abs().max() <= 1e-13 if bool(lead.any()) else True
    p = torch.randperm(n, generator=g)
    assert torch.allclose(hardmax_layer(z[p], alpha=alpha, A=A), hardmax_layer(z, alpha=alpha, A=A)[p], atol=1e-14)
    assert torch.equal(attention_sets(z[p], A=A), attention_sets(z, A=A)[p][:, p])


def exact_layer(z, a):
    new = []
    for zi in z:
        sc = [sum(x * y for x, y in zip(zi, zj)) for zj in z]
        top = max(sc)
        S = [zj for zj, v in zip(z, sc) if v == top]
        new.append(tuple(x + a * (sum(p[c] for p in S) / len(S) - x) for c, x in enumerate(zi)))
    return new


@given(pts=st.sets(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=1, max_size=7),
       alpha=st.sampled_from([Fraction(1, 2), Fraction(1), Fraction(1, 3), Fraction(2)]))
def test_lattice_inputs_match_exact_rational_arithmetic(pts, alpha):
    """Distinct lattice points (exact ties galore): float64 follows the exact dynamics for 100 layers."""
    z = [tuple(Fraction(c, 2) for c in p) for p in sorted(pts)]
    layers = 100
    dyn = run_dynamics(torch.tensor([[float(c) for c in p] for p in z], dtype=D64), alpha=float(alpha), layers=layers)
    a = alpha / (1 + alpha)
    worst = 0.0
    for k in range(1, layers + 1):
        z = exact_layer(z, a)
        ref = torch.tensor([[float(c) for c in p] for p in z], dtype=D64)
        worst = max(worst, float((dyn.trajectory[k] - ref).abs().max()))
    assert worst < 1e-12 * max(1.0, math.sqrt(2) * 1.5)
