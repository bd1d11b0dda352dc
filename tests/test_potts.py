"""Tests of lib.potts against brute-force references (chapter 2)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lib import potts as P
from lib.attention import factored_attention, factored_weights


def small_model(L=4, C=3, seed=0, fields=True):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(L, L, generator=g, dtype=torch.float64)
    J = (G + G.T).fill_diagonal_(0.0) * 0.5
    U = P.random_colour_couplings(C, generator=g)
    h = 0.3 * torch.randn(L, C, generator=g, dtype=torch.float64) if fields else None
    return P.PottsModel(J, U, 0.8, h=h)


def brute_log_weight(m, s):
    out = []
    for seq in s.tolist():
        e = 0.0
        for i in range(m.L):
            if m.h is not None:
                e += float(m.h[i, seq[i]])
            for j in range(m.L):
                if i != j:
                    e += 0.5 * m.beta * float(m.J[i, j] * m.U[seq[i], seq[j]])
        out.append(e)
    return torch.tensor(out, dtype=torch.float64)


def test_log_weight_matches_double_loop():
    m = small_model()
    s = torch.randint(m.C, (7, m.L), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(P.log_weight(m, s), brute_log_weight(m, s), atol=1e-12)


def test_conditionals_match_ratio_of_joint_probabilities():
    m = small_model()
    s = torch.randint(m.C, (5, m.L), generator=torch.Generator().manual_seed(2))
    logits = P.conditional_logits(m, s)
    for i in range(m.L):
        alts = s.unsqueeze(1).repeat(1, m.C, 1)
        alts[:, :, i] = torch.arange(m.C)
        lw = P.log_weight(m, alts.reshape(-1, m.L)).reshape(5, m.C)
        ref = torch.log_softmax(lw, -1)
        assert torch.allclose(torch.log_softmax(logits[:, i], -1), ref, atol=1e-12)


def test_exact_marginals_consistent():
    m = small_model(L=4, C=3)
    states, lp = P.exact_log_probs(m)
    assert states.shape == (81, 4)
    assert abs(float(lp.exp().sum()) - 1) < 1e-12
    p1, p2 = P.exact_marginals(m)
    assert torch.allclose(p1.sum(-1), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(p2[0, 1].sum(-1), p1[0])
    assert torch.allclose(torch.diagonal(p2[2, 2]), p1[2])


def test_empirical_marginals_match_counts():
    s = torch.randint(3, (50, 4), generator=torch.Generator().manual_seed(3))
    p1, p2 = P.empirical_marginals(s, 3)
    sn = s.numpy()
    assert abs(float(p1[1, 2]) - np.mean(sn[:, 1] == 2)) < 1e-12
    assert abs(float(p2[0, 3, 1, 2]) - np.mean((sn[:, 0] == 1) & (sn[:, 3] == 2))) < 1e-12


def test_greedy_colouring_gives_independent_sets():
    J = P.chain_couplings(20, generator=torch.Generator().manual_seed(0))
    classes = P.greedy_colouring(J)
    assert sorted(torch.cat(classes).tolist()) == list(range(20))
    for c in classes:
        assert float(J[c][:, c].abs().sum()) == 0.0


@pytest.mark.parametrize("fields", [True, False])
def test_heat_bath_matches_enumeration(fields):
    m = small_model(L=4, C=3, seed=4, fields=fields)
    n = 20_000
    S = P.heat_bath(m, n, 20, generator=torch.Generator().manual_seed(5), snapshots=[20, 10])
    assert S.shape == (2, n, 4)
    p1, p2 = P.exact_marginals(m)
    q1, q2 = P.empirical_marginals(S[0], 3)
    iu = torch.triu_indices(4, 4, offset=1)
    z = torch.cat([P.marginal_z(q1, p1, n).flatten(), P.marginal_z(q2[iu[0], iu[1]], p2[iu[0], iu[1]], n).flatten()])
    assert float(z.abs().max()) < 5.0


def test_heat_bath_is_deterministic_given_generator():
    m = small_model()
    a = P.heat_bath(m, 10, 3, generator=torch.Generator().manual_seed(9))
    b = P.heat_bath(m, 10, 3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_hamming_fraction_brute_force():
    s = torch.randint(4, (30, 6), generator=torch.Generator().manual_seed(6))
    d = [(s[a] != s[b]).double().mean().item() for a, b in itertools.combinations(range(30), 2)]
    assert abs(P.hamming_fraction(s) - np.mean(d)) < 1e-12


def test_mlm_one_mask_equals_pseudo_likelihood():
    m = small_model(L=5, C=3, fields=False)
    s = torch.randint(3, (40, 5), generator=torch.Generator().manual_seed(7))
    A = factored_weights(m.beta * m.J, normalize="none")
    layer = lambda X: factored_attention(A, X @ m.U.T)
    reps = s.repeat_interleave(5, dim=0)
    sites = torch.arange(5).repeat(40)
    mlm = P.mlm_loss(layer, reps, sites, 3)
    pl = P.pseudo_likelihood_loss(P.conditional_logits(m, s), s)
    assert abs(float(mlm - pl)) < 1e-13
    # several masked sites: a different (larger context-free) objective
    mask = torch.zeros(40, 5, dtype=torch.bool)
    mask[:, :2] = True
    assert abs(float(P.mlm_loss(layer, s, mask, 3) - pl)) > 1e-3


def test_factored_attention_reproduces_potts_conditionals():
    m = small_model(L=5, C=4, fields=True)
    fa = P.FactoredAttention(5, 4)
    with torch.no_grad():
        fa.a.copy_(m.beta * m.J[None])
        fa.V.copy_(m.U[None])
        fa.b.copy_(m.h)
    s = torch.randint(4, (9, 5), generator=torch.Generator().manual_seed(8))
    assert torch.allclose(fa(P.one_hot(s, 4)), P.conditional_logits(m, s), atol=1e-12)
    assert torch.allclose(fa.couplings(), m.couplings(), atol=1e-12)


def test_softmax_factored_weights_are_row_stochastic():
    fa = P.FactoredAttention(6, 3, n_heads=2, attention="softmax")
    A = fa.weights()
    assert torch.allclose(A.sum(-1), torch.ones(2, 6, dtype=torch.float64))
    assert float(torch.diagonal(A.detach(), dim1=-2, dim2=-1).abs().max()) == 0.0


def test_plm_dense_and_sparse_paths_agree_with_einsum():
    plm = P.PseudoLikelihoodPotts(5, 3)
    with torch.no_grad():
        plm.W.normal_(generator=torch.Generator().manual_seed(1))
        plm.b.normal_(generator=torch.Generator().manual_seed(2))
    s = torch.randint(3, (11, 5), generator=torch.Generator().manual_seed(3))
    X = P.one_hot(s, 3)
    W = plm.couplings()
    ref = torch.einsum("iajb,njb->nia", W, X) + plm.b
    assert torch.allclose(plm(X), ref, atol=1e-12)
    assert torch.allclose(plm(s), ref, atol=1e-12)
    assert float(W[2, :, 2, :].abs().max()) == 0.0


def test_fit_lbfgs_recovers_teacher_loss_closely():
    m = small_model(L=5, C=3, seed=3, fields=False)
    s = P.heat_bath(m, 4000, 30, generator=torch.Generator().manual_seed(0))[-1]
    fa = P.FactoredAttention(5, 3, generator=torch.Generator().manual_seed(1))
    train = P.fit_lbfgs(fa, P.one_hot(s, 3), s, max_iter=200)
    H = float(P.conditional_entropy(m, s))
    assert train <= H + 1e-6  # the fit beats the teacher on its own training data
    assert P.coupling_correlation(fa.couplings(), m.couplings()) > 0.9


def test_fit_with_validation_picks_best_lambda():
    m = small_model(L=4, C=3, seed=5, fields=False)
    s = P.heat_bath(m, 600, 20, generator=torch.Generator().manual_seed(0))[-1]
    _model, lam, scores = P.fit_with_validation(lambda: P.PseudoLikelihoodPotts(4, 3), s[:300], s[300:], 3,
                                               l2_grid=[1e-1, 1e-3], max_iter=50)
    assert lam == min(scores, key=scores.get)


def test_zero_sum_gauge_removes_colour_shifts():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 3, 4, 3, generator=g, dtype=torch.float64)
    f = torch.randn(4, 3, 4, 1, generator=g, dtype=torch.float64)
    gg = torch.randn(4, 1, 4, 3, generator=g, dtype=torch.float64)
    G = P.zero_sum_gauge(W)
    assert float(G.sum(1).abs().max()) < 1e-12 and float(G.sum(3).abs().max()) < 1e-12
    assert torch.allclose(P.zero_sum_gauge(W + f + gg), G, atol=1e-12)


def test_coupling_correlation_is_scale_and_gauge_invariant():
    m = small_model(L=5, C=3, fields=False)
    fa = P.FactoredAttention(5, 3)
    with torch.no_grad():
        fa.a.copy_(2.5 * m.beta * m.J[None])
        fa.V.copy_(m.U[None] / 2.5 + torch.arange(3.0, dtype=torch.float64)[None, :, None])
    assert abs(P.coupling_correlation(fa.couplings(), m.couplings()) - 1) < 1e-12


def test_vanilla_transformer_and_masked_site_loss():
    vt = P.VanillaTransformer(6, 3, d_model=8, n_layers=2, n_heads=2, generator=torch.Generator().manual_seed(0))
    s = torch.randint(3, (4, 6), generator=torch.Generator().manual_seed(1))
    out = vt(s)
    assert out.shape == (4, 6, 3)
    ref = 0.0
    with torch.no_grad():
        for n in range(4):
            for i in range(6):
                tok = s[n:n + 1].clone()
                tok[0, i] = 3
                ref += float(torch.nn.functional.cross_entropy(vt(tok)[0, i:i + 1].double(), s[n, i:i + 1]))
    assert abs(P.masked_site_loss(vt, s, batch_size=5) - ref / 24) < 1e-5
    losses = P.train_vanilla(vt, s, steps=3, batch_size=4, generator=torch.Generator().manual_seed(2))
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_coupling_constructors():
    g = torch.Generator().manual_seed(0)
    ring = P.ring_couplings(12, generator=g)
    assert torch.equal(ring, ring.T) and float(ring.diagonal().abs().max()) == 0
    assert torch.allclose(ring.sum(1), torch.full((12,), 3.75, dtype=torch.float64))
    chain = P.chain_couplings(12, long_sign=-1.0, generator=g)
    assert torch.equal(chain, chain.T) and int((chain < 0).sum()) == 2 * 3


def test_bad_inputs():
    J = torch.zeros(3, 3, dtype=torch.float64)
    U = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="symmetric"):
        P.PottsModel(J + torch.triu(torch.ones(3, 3, dtype=torch.float64), 1), U)
    with pytest.raises(ValueError, match="diagonal"):
        P.PottsModel(torch.eye(3, dtype=torch.float64), U)
    with pytest.raises(ValueError, match="h must"):
        P.PottsModel(J, U, 1.0, h=torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        P.PottsModel(J, U, -1.0)
    m = P.PottsModel(J, U)
    with pytest.raises(ValueError, match="snapshots"):
        P.heat_bath(m, 4, 3, generator=torch.Generator(), snapshots=[5])
    with pytest.raises(TypeError, match="generator"):
        P.heat_bath(m, 4, 3, generator=None)
    with pytest.raises(ValueError, match="colours"):
        P.conditional_logits(m, torch.tensor([[0, 1, 2]]))
    with pytest.raises(TypeError, match="integer"):
        P.conditional_logits(m, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="too many"):
        P.enumerate_states(30, 3)
    with pytest.raises(ValueError, match="sites"):
        P.mask_sites(torch.zeros(2, 3, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention"):
        P.FactoredAttention(3, 2, attention="linear")
    with pytest.raises(ValueError, match="X must"):
        P.FactoredAttention(3, 2)(torch.zeros(1, 4, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="W must"):
        P.zero_sum_gauge(torch.zeros(2, 3, 4, 3))
    with pytest.raises(ValueError, match="even"):
        P.ring_couplings(7, generator=torch.Generator())


def test_coupling_logits_matches_double_loop_asymmetric():
    g = torch.Generator().manual_seed(21)
    L, C = 4, 3
    W = torch.randn(L, C, L, C, generator=g, dtype=torch.float64)  # no symmetry at all
    h = torch.randn(L, C, generator=g, dtype=torch.float64)
    s = torch.randint(C, (6, L), generator=g)
    z = P.coupling_logits(W, s, h)
    for n in range(6):
        for i in range(L):
            for a in range(C):
                ref = float(h[i, a]) + sum(float(W[i, a, j, s[n, j]]) for j in range(L) if j != i)
                assert abs(float(z[n, i, a]) - ref) < 1e-12


def test_coupling_logits_agrees_with_potts_conditionals():
    m = small_model(L=5, C=4, fields=True)
    s = torch.randint(4, (8, 5), generator=torch.Generator().manual_seed(22))
    assert torch.allclose(P.coupling_logits(m.couplings(), s, m.h), P.conditional_logits(m, s), atol=1e-12)


def test_factored_layer_with_asymmetric_weights_is_a_general_potts_conditional():
    g = torch.Generator().manual_seed(23)
    L, C = 5, 3
    fa = P.FactoredAttention(L, C, n_heads=2)
    with torch.no_grad():
        fa.a.normal_(generator=g)
        fa.V.normal_(generator=g)
        fa.b.normal_(generator=g)
    s = torch.randint(C, (7, L), generator=g)
    W = fa.couplings()
    assert float((W - W.permute(2, 3, 0, 1)).abs().max()) > 0.1  # genuinely asymmetric
    assert torch.allclose(fa(P.one_hot(s, C)), P.coupling_logits(W, s, fa.b.detach()), atol=1e-12)
    # transposing V is visible
    W_T = torch.einsum("hij,hba->iajb", fa.weights().detach(), fa.V.detach())
    assert float((P.coupling_logits(W_T, s) - P.coupling_logits(W, s)).abs().max()) > 1e-3


def test_masked_logits_and_loss_factored_equal_pseudo_likelihood():
    m = small_model(L=5, C=3, fields=True)
    fa = P.FactoredAttention(5, 3)
    with torch.no_grad():
        fa.a.copy_(m.beta * m.J[None] + torch.eye(5)[None])  # the diagonal is masked anyway
        fa.V.copy_(m.U[None])
        fa.b.copy_(m.h)
    s = torch.randint(3, (9, 5), generator=torch.Generator().manual_seed(24))
    pl = float(P.pseudo_likelihood_loss(P.conditional_logits(m, s), s))
    assert abs(P.masked_site_loss(fa, s, batch_size=7) - pl) < 1e-12


def test_vanilla_last_block_shortcut_matches_full_forward():
    vt = P.VanillaTransformer(7, 4, d_model=16, n_layers=3, n_heads=2, generator=torch.Generator().manual_seed(3))
    s = torch.randint(5, (11, 7), generator=torch.Generator().manual_seed(4))
    sites = torch.randint(7, (11,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = vt(s)[torch.arange(11), sites]
        short = vt(s, sites)
    assert float((full - short).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="sites"):
        vt(s, sites[:3])


def test_train_mlm_early_stops_restores_best_and_is_deterministic():
    m = small_model(L=5, C=3, fields=True)
    s = P.heat_bath(m, 700, 30, generator=torch.Generator().manual_seed(25))[-1]
    tr, va = s[:500], s[500:]

    def run():
        fa = P.FactoredAttention(5, 3, generator=torch.Generator().manual_seed(0))
        res = P.train_mlm(fa, tr, va, generator=torch.Generator().manual_seed(1), lr=0.05,
                          batch_size=64, max_steps=3000, eval_every=20, patience=3)
        return fa, res

    fa, res = run()
    assert res.converged and res.steps < 3000
    assert res.steps == res.best_step + 3 * 20
    assert abs(P.masked_site_loss(fa, va) - res.val_loss) < 1e-12  # best parameters restored
    assert res.val_loss == min(v for _, v in res.history)
    # a trained layer beats the untrained one and approaches the teacher on validation
    H = float(P.conditional_entropy(m, va))
    assert res.val_loss < res.history[0][1] and res.val_loss - H < 0.05
    _, res2 = run()
    assert res2 == res


def test_train_mlm_vanilla_runs_and_hits_budget():
    vt = P.VanillaTransformer(4, 3, d_model=8, n_layers=1, n_heads=2, generator=torch.Generator().manual_seed(0))
    s = torch.randint(3, (40, 4), generator=torch.Generator().manual_seed(1))
    res = P.train_mlm(vt, s[:30], s[30:], generator=torch.Generator().manual_seed(2), max_steps=5,
                      eval_every=2, patience=100, batch_size=8)
    assert res.steps == 5 and not res.converged
    assert [st for st, _ in res.history] == [0, 2, 4, 5]
    with pytest.raises(TypeError, match="generator"):
        P.train_mlm(vt, s[:30], s[30:], generator=None)
    with pytest.raises(ValueError, match="lengths"):
        P.train_mlm(vt, s[:30], s[30:, :3], generator=torch.Generator())


@given(seed=st.integers(0, 2**31 - 1), L=st.integers(2, 6), C=st.integers(2, 4))
def test_mlm_equals_pseudo_likelihood_for_any_factored_layer(seed, L, C):
    """Property: for any A (diagonal masked), V, fields and data, MLM with every site masked once
    equals -log PL of the general Potts model W_ij(a, b) = A_ij V_ab (chapter 2, claim 2.2)."""
    g = torch.Generator().manual_seed(seed)
    A = factored_weights(torch.randn(L, L, generator=g, dtype=torch.float64), normalize="none")
    V = torch.randn(C, C, generator=g, dtype=torch.float64)
    h = torch.randn(L, C, generator=g, dtype=torch.float64)
    s = torch.randint(C, (5, L), generator=g)
    layer = lambda X: factored_attention(A, X @ V.T) + h
    mlm = P.mlm_loss(layer, s.repeat_interleave(L, 0), torch.arange(L).repeat(5), C)
    W = A[:, None, :, None] * V[None, :, None, :]
    pl = P.pseudo_likelihood_loss(P.coupling_logits(W, s, h), s)
    assert abs(float(mlm - pl)) < 1e-12


def test_heat_bath_block_update_matches_exact_enumeration_on_a_sparse_chain():
    """A sparse J (a chain with next-nearest and one long link) puts several sites in each
    independent set, so the block update redraws many sites at once: its one- and two-site
    marginals must still match exact enumeration (3^8 states) within Monte-Carlo error."""
    L, C = 8, 3
    g = torch.Generator().manual_seed(7)
    J = P.chain_couplings(L, n_long=1, generator=g)
    classes = P.greedy_colouring(J)
    assert len(classes) < L and max(c.numel() for c in classes) >= 2  # a real block update
    for c in classes:  # each class is an independent set
        assert bool((J[c][:, c] == 0).all())
    m = P.PottsModel(J, P.random_colour_couplings(C, generator=g), 0.8,
                     h=0.3 * torch.randn(L, C, generator=g, dtype=torch.float64))
    n = 40_000
    s = P.heat_bath(m, n, 40, generator=torch.Generator().manual_seed(8))[-1]
    p1, p2 = P.exact_marginals(m)
    q1, q2 = P.empirical_marginals(s, C)
    iu = torch.triu_indices(L, L, offset=1)
    z = torch.cat([P.marginal_z(q1, p1, n).flatten(),
                   P.marginal_z(q2[iu[0], iu[1]], p2[iu[0], iu[1]], n).flatten()])
    assert z.numel() == L * C + L * (L - 1) // 2 * C * C
    assert float(z.abs().max()) < 4.5  # P(max |z| > 4.5) ~ 2e-3 under the null for 276 tests
    # the test has power: a sampler that skips the block update of one class fails it
    stale = P.heat_bath(m, n, 1, generator=torch.Generator().manual_seed(9))[-1]
    z_bad = P.marginal_z(P.empirical_marginals(stale, C)[0], p1, n)
    assert float(z_bad.abs().max()) > 10


def test_train_mlm_drops_learning_rate_on_plateau_before_converging():
    m = small_model(L=5, C=3, fields=True)
    s = P.heat_bath(m, 700, 30, generator=torch.Generator().manual_seed(25))[-1]
    tr, va = s[:500], s[500:]
    fa = P.FactoredAttention(5, 3, generator=torch.Generator().manual_seed(0))
    res = P.train_mlm(fa, tr, va, generator=torch.Generator().manual_seed(1), lr=0.05, batch_size=64,
                      max_steps=5000, eval_every=20, patience=3, warmup=40, lr_drops=2)
    assert res.converged and res.drops == 2 and res.lr == 0.05
    assert abs(P.masked_site_loss(fa, va) - res.val_loss) < 1e-12
    # no worse than constant-rate early stopping from the same start
    fa0 = P.FactoredAttention(5, 3, generator=torch.Generator().manual_seed(0))
    res0 = P.train_mlm(fa0, tr, va, generator=torch.Generator().manual_seed(1), lr=0.05, batch_size=64,
                       max_steps=5000, eval_every=20, patience=3)
    assert res.val_loss <= res0.val_loss + 1e-3 and res.steps > res0.steps
    with pytest.raises(ValueError, match="drop_factor"):
        P.train_mlm(fa, tr, va, generator=torch.Generator(), drop_factor=1.5)
    with pytest.raises(ValueError, match="warmup"):
        P.train_mlm(fa, tr, va, generator=torch.Generator(), warmup=-1)


def test_train_mlm_select_lr_keeps_the_best_validation_run():
    m = small_model(L=5, C=3, fields=True)
    s = P.heat_bath(m, 600, 30, generator=torch.Generator().manual_seed(26))[-1]
    tr, va = s[:400], s[400:]
    make = lambda: P.FactoredAttention(5, 3, generator=torch.Generator().manual_seed(0))
    model, res, scores = P.train_mlm_select_lr(make, tr, va, lrs=[1e-4, 0.05], seed=3, batch_size=64,
                                               max_steps=400, eval_every=20, patience=3)
    assert set(scores) == {1e-4, 0.05} and res.val_loss == min(scores.values())
    assert res.lr == 0.05  # a rate of 1e-4 barely moves in 400 steps
    assert abs(P.masked_site_loss(model, va) - res.val_loss) < 1e-12
    with pytest.raises(ValueError, match="lrs"):
        P.train_mlm_select_lr(make, tr, va, lrs=[], seed=0)


def test_factored_window_restricts_attention_to_a_band():
    fa = P.FactoredAttention(7, 3, window=1, generator=torch.Generator().manual_seed(0))
    A = fa.weights()[0]
    i, j = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    assert bool((A[(i - j).abs() != 1] == 0).all()) and bool((A[(i - j).abs() == 1] != 0).all())
    X = P.one_hot(torch.randint(3, (4, 7), generator=torch.Generator().manual_seed(1)), 3)
    ref = torch.einsum("ij,njb,ab->nia", A, X, fa.V[0]) + fa.b
    assert float((fa(X) - ref).abs().max()) < 1e-12
    full = P.FactoredAttention(7, 3, generator=torch.Generator().manual_seed(0))
    assert float(full.weights()[0].abs().sum()) > float(A.abs().sum())
    with pytest.raises(ValueError, match="window"):
        P.FactoredAttention(7, 3, window=1, attention="softmax")


def test_conditional_entropy_per_sequence_averages_to_the_conditional_entropy():
    m = small_model(L=5, C=3)
    s = torch.randint(3, (13, 5), generator=torch.Generator().manual_seed(2))
    per = P.conditional_entropy_per_sequence(m, s)
    assert per.shape == (13,)
    assert abs(float(per.mean() - P.conditional_entropy(m, s))) < 1e-12
    lp = P.exact_log_probs(m)  # brute force: log P(s_i | rest) from the joint
    states, logp = lp
    table = dict(zip(map(tuple, states.tolist()), logp.tolist()))
    seq = s[0].tolist()
    ref = 0.0
    for i in range(5):
        num = table[tuple(seq)]
        den = math.log(sum(math.exp(table[tuple(seq[:i] + [a] + seq[i + 1:])]) for a in range(3)))
        ref -= (num - den) / 5
    assert abs(float(per[0]) - ref) < 1e-10


def test_contact_scores_rank_the_teacher_contacts_first():
    L, C = 12, 4
    g = torch.Generator().manual_seed(3)
    J = P.chain_couplings(L, generator=g)
    m = P.PottsModel(J, P.random_colour_couplings(C, generator=g), 1.0)
    S = P.contact_scores(m.couplings())
    assert torch.allclose(S, S.T) and bool((S.diagonal() == 0).all())
    assert P.contact_precision(S, J) == 1.0  # the teacher's own couplings: a perfect ranking
    # brute-force APC on one entry
    Wt = P.symmetrize_couplings(P.zero_sum_gauge(m.couplings()))
    F = torch.tensor([[float(Wt[i, :, j, :].norm()) if i != j else 0.0 for j in range(L)] for i in range(L)],
                     dtype=torch.float64)
    row = F.sum(1) / (L - 1)
    ref = F[2, 7] - row[2] * row[7] / (F.sum() / (L * (L - 1)))
    assert abs(float(S[2, 7] - ref)) < 1e-12
    # a ranking that puts every non-contact first scores 0
    assert P.contact_precision(-S.abs() * (J != 0) + (J == 0).double(), J) == 0.0
    with pytest.raises(ValueError, match="same"):
        P.contact_precision(S[:3, :3], J)
