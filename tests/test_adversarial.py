"""Adversarial searches for the inequalities of chapter 1.

Each test minimises (with Adam, from many random starts) the margin of one inequality the chapter
checks on random draws, over the inputs of that inequality, and asserts that the best the
optimiser finds still satisfies it (or, where the inequality is not a theorem, records what the
optimiser finds). Parameters that must stay positive (temperatures, step sizes) are optimised in
log space.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lib.attention import softmax_attention
from lib.expansion import attention_step, layer_factors, pairwise_distances
from lib.hopfield import hopfield_energy, hopfield_update, retrieval_bound
from lib.lognormalizer import log_normalizer_hessian
from lib.norms import layer_norm

D64 = torch.float64


def search(
    objective: Callable[..., torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    *,
    starts: int = 6,
    steps: int = 80,
    lr: float = 0.05,
    scale: float = 1.0,
    seed: int = 0,
) -> float:
    """The smallest value of ``objective(**params)`` found by Adam from ``starts`` random starts."""
    g = torch.Generator().manual_seed(seed)
    best = math.inf
    for _ in range(starts):
        params = {
            k: (scale * torch.randn(s, dtype=D64, generator=g)).requires_grad_(True)
            for k, s in shapes.items()
        }
        opt = torch.optim.Adam(params.values(), lr=lr)
        for _ in range(steps):
            val = objective(**params)
            if torch.isfinite(val):
                best = min(best, float(val.detach()))
            opt.zero_grad()
            val.backward()
            opt.step()
        with torch.no_grad():
            val = objective(**params)
            if torch.isfinite(val):
                best = min(best, float(val.detach()))
    return best


def test_log_normalizer_hessian_has_no_negative_eigenvalue():
    # claim 1.2b: min eigenvalue of beta^2 Cov_p[x] over queries, keys and temperatures
    def obj(q, x, log_beta):
        beta = float(torch.exp(log_beta.detach().clamp(-3, 3)))
        h = log_normalizer_hessian(q, x, beta=beta)
        return torch.linalg.eigvalsh(h)[0]

    best = search(obj, {"q": (3,), "x": (4, 3), "log_beta": ()}, scale=2.0)
    assert best >= -1e-12, best


def test_ascent_step_never_brings_two_queries_closer():
    # claims 1.3 and 1.3b: distance ratio through one step q + eta Attn(q; X, X)
    def obj(q1, q2, x, log_beta, log_eta):
        beta = torch.exp(log_beta.clamp(-3, 3))
        eta = torch.exp(log_eta.clamp(-3, 3))
        t = [q + eta * torch.softmax(beta * q @ x.T, -1) @ x for q in (q1, q2)]
        return (t[0] - t[1]).norm() / (q1 - q2).norm()

    best = search(obj, {"q1": (3,), "q2": (3,), "x": (5, 3), "log_beta": (), "log_eta": ()}, scale=2.0)
    assert best >= 1 - 1e-9, best
    # the same search with the descent sign finds contraction at once (the search has power)
    minus = search(
        lambda q1, q2, x: (q1 - attention_step(q1[None], x, beta=1.0)[0] + q1
                           - (q2 - attention_step(q2[None], x, beta=1.0)[0] + q2)).norm()
        / (q1 - q2).norm(),
        {"q1": (3,), "q2": (3,), "x": (5, 3)}, starts=4, steps=50, scale=2.0,
    )
    assert minus < 0.9


def test_self_attention_layer_is_expansive():
    # claim 1.4: one self-attention layer X + Attn(X; X, X), min pair distance ratio over X
    def obj(x, log_beta):
        beta = torch.exp(log_beta.clamp(-3, 3))
        y = x + torch.softmax(beta * x @ x.T, -1) @ x
        return (pairwise_distances(y) / pairwise_distances(x)).min()

    best = search(obj, {"x": (5, 3), "log_beta": ()}, scale=2.0)
    assert best >= 1 - 1e-9, best


def test_prenorm_layer_moves_the_diameter_by_at_most_2_sqrt_d():
    # claim 1.4c: (D(X + Attn(LN X)) - D(X)) / (2 sqrt d) <= 1
    d = 4

    def obj(x, log_beta):
        beta = float(torch.exp(log_beta.detach().clamp(-3, 3)))
        h = layer_norm(x)
        y = x + softmax_attention(h, h, h, beta=beta)
        grow = pairwise_distances(y).max() - pairwise_distances(x).max()
        return -grow / (2 * math.sqrt(d))

    best = search(obj, {"x": (6, d), "log_beta": ()}, scale=3.0)
    assert -best <= 1.0, -best


def test_hopfield_update_never_raises_the_energy():
    # claim 1.5: E(update(xi)) - E(xi) <= 0 over states, patterns and temperatures
    def obj(xi, p, log_beta):
        beta = float(torch.exp(log_beta.detach().clamp(-2, 2)))
        e0 = hopfield_energy(xi, p, beta=beta)
        e1 = hopfield_energy(hopfield_update(xi, p, beta=beta), p, beta=beta)
        return -(e1 - e0) / (1 + e0.abs())

    best = search(obj, {"xi": (3,), "p": (4, 3), "log_beta": ()}, scale=2.0)
    assert -best <= 1e-12, -best


def test_retrieval_error_stays_under_the_bound():
    # claim 1.5c: |update(x_i) - x_i| / (2 M (N - 1) exp(-beta Delta_i)) <= 1, every pattern
    def obj(p, log_beta):
        beta = float(torch.exp(log_beta.detach().clamp(-2, 2)))
        err = (hopfield_update(p, p, beta=beta) - p).norm(dim=-1)
        return -(err / retrieval_bound(p, beta=beta)).max()

    best = search(obj, {"p": (5, 3), "log_beta": ()}, scale=2.0)
    assert -best <= 1.0, -best


def test_post_norm_layer_norm_contracts():
    # claim 1.4e: the contraction factor c of a post-norm layer (identity maps) on clouds that
    # layer norm has produced; the optimiser maximises c over the cloud
    d = 4

    def obj(x):
        f = layer_factors(layer_norm(x), 1, beta=1 / math.sqrt(d))
        return -f["contraction"][0]

    best = search(obj, {"x": (6, d)}, scale=1.0)
    assert -best <= 1.0, -best


def test_general_value_map_jacobian_stays_asymmetric():
    # claim 1.7b: relative asymmetry of the Jacobian of q -> W_V Attn(q), minimised over q for a
    # fixed random W_V and keys (plain softmax, so that the search can differentiate twice)
    g = torch.Generator().manual_seed(0)
    d = 6
    x = torch.randn(12, d, dtype=D64, generator=g)
    w = torch.randn(d, d, dtype=D64, generator=g) / math.sqrt(d)

    def obj(q):
        jac = torch.func.jacrev(lambda v: torch.softmax(x @ v / math.sqrt(d), -1) @ (x @ w.T))(q)
        return torch.linalg.matrix_norm(jac - jac.T) / torch.linalg.matrix_norm(jac)

    best = min(search(obj, {"q": (d,)}, scale=s, starts=3) for s in (1.0, 5.0))
    assert best >= 1e-3, best
