"""Tests of lib.binary_attention: the two-domain attention head, its kernel expansion, the PSD
completion of a rectangular Gram matrix, the D/n bound on a trained head and the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib import binary_attention as ba
from lib.kernel_machines import random_feature_kernel
from lib.kernel_transformer import EarlyStopping
from lib.kernels import ExpDot, FeatureMapKernel, Laplacian, Polynomial, elu_feature_map


def _elu():
    return FeatureMapKernel(elu_feature_map, name="elu+1", dim=lambda d: d, positive=True)


def _values(B, n, V, seed=0):
    return ba.keyed_retrieval(B, n_key=n, n_values=V, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the head


@pytest.mark.parametrize("kernel", [ExpDot(), _elu(), Polynomial(2), Laplacian()], ids=lambda k: k.name)
def test_output_is_the_kernel_expansion_per_example(kernel):
    """Brute force, one example at a time, with the kernel's closed-form Gram in float64."""
    torch.manual_seed(0)
    m = ba.CrossKernelAttention(5, 9, 4, kernel, d_query=6, d_key=7, d_value=3).double()
    vals = _values(4, 9, 4)
    y = m.attend(vals)
    q, k = m.queries(), m.keys()
    for b in range(vals.shape[0]):
        K = kernel.gram(q, k)
        ref = (K / K.sum(-1, keepdim=True)) @ m.E_V(vals[b])
        torch.testing.assert_close(y[b], ref, rtol=1e-10, atol=1e-12)
    assert ba.expansion_residual(m, vals) < 1e-12


def test_float32_head_matches_the_float64_expansion_to_round_off():
    torch.manual_seed(1)
    m = ba.CrossKernelAttention(24, 40, 8, ExpDot(), d_query=12, d_key=20)
    assert ba.expansion_residual(m, _values(16, 40, 8)) < 1e-5


def test_joint_head_is_not_an_expansion_over_the_key_domain():
    """The control of 4.6a: attending to the query domain as well must show in the residual."""
    torch.manual_seed(2)
    m = ba.CrossKernelAttention(6, 10, 4, ExpDot(), joint=True).double()
    assert m.weights().shape == (6, 16)
    assert ba.expansion_residual(m, _values(8, 10, 4)) > 1e-2


def test_weights_are_row_stochastic_and_match_the_gram():
    torch.manual_seed(3)
    m = ba.CrossKernelAttention(7, 11, 3, ExpDot()).double()
    A = m.weights()
    assert A.shape == (7, 11)
    torch.testing.assert_close(A.sum(-1), torch.ones(7, dtype=torch.float64))
    K = m.gram()
    torch.testing.assert_close(A, K / K.sum(-1, keepdim=True))
    assert m.gram().shape == (7, 11)


def test_bad_inputs_raise():
    with pytest.raises(TypeError):
        ba.CrossKernelAttention(3, 4, 2, "exp")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ba.CrossKernelAttention(0, 4, 2, ExpDot())
    m = ba.CrossKernelAttention(3, 4, 2, ExpDot())
    with pytest.raises(ValueError):
        m(torch.zeros(2, 5, dtype=torch.long))  # wrong number of keys
    with pytest.raises(ValueError):
        m(torch.zeros(2, 4))  # not long
    with pytest.raises(TypeError):
        ba.expansion_residual("model", torch.zeros(1, 4, dtype=torch.long))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ba.train_retrieval(ExpDot(), seed=0, n_key=4, n_query=5, n_values=2, steps=1)
    with pytest.raises(TypeError):
        ba.train_retrieval(ExpDot(), seed=0.5, n_key=4, n_values=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ba.train_retrieval(ExpDot(), seed=0, n_key=4, n_values=2, steps=-1)


# ---------------------------------------------------------------- rank bound D / n


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(9, 40), scale=st.floats(0.1, 20.0))
def test_finite_kernel_mass_on_the_matching_key_is_at_most_D_over_n(seed, n, scale):
    """Any positive D-feature kernel, any embeddings: mean weight on the matching key <= D / n."""
    torch.manual_seed(seed)
    m = ba.CrossKernelAttention(n, n, 2, _elu(), d_head=8).double()
    with torch.no_grad():
        m.E_T.weight.mul_(scale)
        m.E_S.weight.mul_(scale)
    assert float(torch.diagonal(m.weights()).mean()) <= 8 / n + 1e-12


@pytest.mark.parametrize("make", [_elu, lambda: random_feature_kernel(8, 8, generator=torch.Generator().manual_seed(0))],
                         ids=["elu+1", "prf8"])
def test_adversarial_search_cannot_beat_D_over_n(make):
    """Gradient ascent on the mass itself (several random starts) stays under the bound."""
    n, best = 32, 0.0
    for start in range(3):
        torch.manual_seed(100 + start)
        m = ba.CrossKernelAttention(n, n, 2, make(), d_head=8).double()
        opt = torch.optim.Adam([m.E_T.weight, m.E_S.weight, m.W_Q.weight, m.W_K.weight], lr=0.05)
        for _ in range(150):
            loss = -torch.diagonal(m._weights()).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        best = max(best, float(torch.diagonal(m.weights()).mean()))
    assert best <= 8 / n + 1e-9
    assert best > 0.5 * 8 / n  # the search did climb towards the bound


def test_exp_kernel_can_exceed_D_over_n():
    """The infinite kernel is not bound: orthogonal-ish keys at high sharpness single out their key."""
    n = 32
    torch.manual_seed(0)
    m = ba.CrossKernelAttention(n, n, 2, ExpDot(), d_head=8, d_query=8, d_key=8).double()
    with torch.no_grad():
        E = torch.randn(n, 8, dtype=torch.float64)
        E = 8.0 * E / E.norm(dim=1, keepdim=True)
        m.E_T.weight.copy_(E)
        m.E_S.weight.copy_(E)
        m.W_Q.weight.copy_(torch.eye(8, dtype=torch.float64))
        m.W_K.weight.copy_(torch.eye(8, dtype=torch.float64))
    assert float(torch.diagonal(m.weights()).mean()) > 0.5


# ---------------------------------------------------------------- PSD completion


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), a=st.integers(1, 12), b=st.integers(1, 12))
def test_psd_completion_is_psd_and_holds_K(seed, a, b):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(a, b, generator=g, dtype=torch.float64).exp()
    M = ba.psd_completion(K)
    assert M.shape == (a + b, a + b)
    torch.testing.assert_close(M[:a, a:], K)
    torch.testing.assert_close(M, M.T)
    s1 = torch.linalg.matrix_norm(K, ord=2)
    assert float(torch.linalg.eigvalsh(M)[0]) >= -1e-12 * float(s1)


def test_psd_completion_rejects_non_matrices():
    with pytest.raises(ValueError):
        ba.psd_completion(torch.ones(2, 3, 4))


# ---------------------------------------------------------------- training


def test_training_learns_small_retrieval_and_is_deterministic():
    kw = {"seed": 0, "n_key": 8, "n_values": 4, "steps": 200, "n_test": 64}
    r1 = ba.train_retrieval(ExpDot(), **kw)
    r2 = ba.train_retrieval(ExpDot(), **kw)
    assert r1.accuracy > 0.95
    assert r1.accuracy == r2.accuracy and r1.mass == r2.mass
    assert r1.relation is not None and sorted(r1.relation.tolist()) == list(range(8))


def test_budget_reading_equals_a_run_of_that_length():
    """The fixed-budget score is the model after ``budget`` steps of the same trajectory."""
    es = EarlyStopping(eval_every=10, patience=100, n_val=128)  # the fixed-budget run validates on 128
    long = ba.train_retrieval(_elu(), seed=1, n_key=16, n_values=4, steps=60, budget=30, n_test=32,
                              early_stopping=es)
    short = ba.train_retrieval(_elu(), seed=1, n_key=16, n_values=4, steps=30, n_test=32, eval_every=10)
    assert long.accuracy_budget == short.accuracy
    assert math.isclose(long.mass_budget, short.mass, rel_tol=1e-12)
    assert long.accuracy_at(30) == short.accuracy_at(30)
    with pytest.raises(ValueError):
        long.accuracy_at(5)


def test_untrained_and_early_stopped_runs():
    r0 = ba.train_retrieval(ExpDot(), seed=0, n_key=6, n_values=3, steps=0, n_test=16)
    assert r0.steps == 0 and r0.stop == "fixed" and r0.model is not None
    es = EarlyStopping(eval_every=10, patience=2, n_val=32)
    r = ba.train_retrieval(ExpDot(), seed=0, n_key=6, n_values=3, steps=400, budget=1000, n_test=16,
                           early_stopping=es)
    assert r.stop in ("solved", "plateau") and r.steps < 400
    assert not math.isnan(r.accuracy_budget)  # stopped before the budget: scored as it stopped
