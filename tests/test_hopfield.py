"""lib.hopfield against brute-force formulas, the CCCP descent property and the retrieval bound."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from lib import hopfield as H

D64 = torch.float64


def problem(seed: int, n: int = 6, d: int = 4, states: int = 5, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    pats = torch.randn(n, d, dtype=D64, generator=g) * scale
    xi = torch.randn(states, d, dtype=D64, generator=g) * scale
    return pats, xi


def brute_energy(xi: torch.Tensor, pats: torch.Tensor, beta: float) -> float:
    """E(xi) written out with Python floats, term by term."""
    z = [float(p @ xi) for p in pats]
    lse = math.log(sum(math.exp(beta * v) for v in z)) / beta
    m2 = max(float(p @ p) for p in pats)
    return -lse + 0.5 * float(xi @ xi) + math.log(len(pats)) / beta + 0.5 * m2


def test_energy_and_update_against_brute_force():
    pats, xi = problem(0)
    for beta in (0.3, 1.0, 3.0):
        e = H.hopfield_energy(xi, pats, beta=beta)
        ref = torch.tensor([brute_energy(x, pats, beta) for x in xi], dtype=D64)
        assert torch.allclose(e, ref, atol=1e-12)
        new = H.hopfield_update(xi, pats, beta=beta)
        for i, x in enumerate(xi):
            w = [math.exp(beta * float(p @ x)) for p in pats]
            ref_new = sum(wj * p for wj, p in zip(w, pats)) / sum(w)
            assert torch.allclose(new[i], ref_new, atol=1e-13)
        assert torch.allclose(
            H.residual_update(xi, pats, beta=beta), xi + new, atol=1e-15
        )


def test_separation_and_retrieval_bound_brute_force():
    pats, _ = problem(1, n=7, d=5)
    sep = H.separation(pats)
    bound = H.retrieval_bound(pats, beta=0.8)
    m = max(float(p.norm()) for p in pats)
    for i in range(7):
        others = [float(pats[i] @ pats[j]) for j in range(7) if j != i]
        delta = float(pats[i] @ pats[i]) - max(others)
        assert abs(float(sep[i]) - delta) < 1e-13
        assert abs(float(bound[i]) - 2 * m * 6 * math.exp(-0.8 * delta)) < 1e-12
    batched = H.separation(torch.stack([pats, 2 * pats]))
    assert torch.allclose(batched[1], 4 * sep, atol=1e-12)
    with pytest.raises(ValueError, match="two patterns"):
        H.separation(pats[:1])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), beta=st.floats(0.05, 10.0), scale=st.floats(0.2, 4.0)
)
def test_update_never_increases_energy(seed, beta, scale):
    # the concave-convex procedure descends E (Ramsauer et al.), on random instances
    pats, xi = problem(seed, n=8, d=3, states=20, scale=scale)
    e = H.energy_trajectory(xi, pats, beta=beta, steps=4)
    assert e.shape == (5, 20)
    assert bool((e[1:] <= e[:-1] + 1e-10 * (1 + e[:-1].abs())).all())
    assert bool((e >= -1e-10).all())  # E is bounded below by 0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), beta=st.floats(0.1, 5.0), radius=st.floats(0.5, 4.0)
)
def test_retrieval_bound_holds_from_each_pattern(seed, beta, radius):
    g = torch.Generator().manual_seed(seed)
    pats = torch.randn(9, 12, dtype=D64, generator=g)
    pats = radius * pats / pats.norm(dim=-1, keepdim=True)
    err = (H.hopfield_update(pats, pats, beta=beta) - pats).norm(dim=-1)
    assert bool((err <= H.retrieval_bound(pats, beta=beta) * (1 + 1e-10) + 1e-14).all())


def test_residual_trajectory_and_vmap_over_pattern_sets():
    pats, xi = problem(2, states=8)
    e = H.energy_trajectory(xi, pats, beta=1.0, steps=3, residual=True)
    x = xi
    for t in range(1, 4):
        x = x + H.hopfield_update(x, pats, beta=1.0)
        assert torch.allclose(e[t], H.hopfield_energy(x, pats, beta=1.0), atol=1e-11)
    many_p = torch.stack([problem(s)[0] for s in range(3)])
    many_x = torch.stack([problem(s)[1] for s in range(3)])
    batched = vmap(lambda a, b: H.energy_trajectory(a, b, beta=0.5, steps=2))(
        many_x, many_p
    )
    for b in range(3):
        one = H.energy_trajectory(many_x[b], many_p[b], beta=0.5, steps=2)
        assert torch.allclose(batched[b], one, atol=1e-13)


def test_bad_input():
    pats, xi = problem(3)
    with pytest.raises(ValueError):
        H.energy_trajectory(xi, pats, beta=1.0, steps=0)
    with pytest.raises(TypeError, match="residual"):
        H.energy_trajectory(xi, pats, beta=1.0, steps=2, residual="yes")
    with pytest.raises(ValueError, match="beta"):
        H.retrieval_bound(pats, beta=-1.0)
    with pytest.raises(ValueError, match="dimension"):
        H.hopfield_energy(xi[:, :2], pats, beta=1.0)
