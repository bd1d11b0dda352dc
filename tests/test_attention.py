"""lib.attention against independent references: brute-force loops and torch's fused kernel."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from lib import attention as A

D64 = torch.float64


def brute_softmax_attention(q, k, v, beta, mask=None):
    """Loop-by-loop reference: for each query, normalised exp weights over allowed keys."""
    n, m = q.shape[0], k.shape[0]
    out = torch.zeros(n, v.shape[1], dtype=q.dtype)
    for i in range(n):
        w = torch.tensor([math.exp(beta * float(q[i] @ k[j])) if (mask is None or mask[i, j]) else 0.0 for j in range(m)], dtype=q.dtype)
        w = w / w.sum()
        out[i] = (w[:, None] * v).sum(0)
    return out


def rand(*shape, g=None):
    return torch.randn(*shape, dtype=D64, generator=g)


def test_softmax_attention_matches_brute_force_and_sdpa():
    g = torch.Generator().manual_seed(1)
    q, k, v = rand(5, 3, g=g), rand(7, 3, g=g), rand(7, 4, g=g)
    for beta in (None, 0.3, 2.0):
        b = 1 / math.sqrt(3) if beta is None else beta
        out = A.softmax_attention(q, k, v, beta=beta)
        ref = brute_softmax_attention(q, k, v, b)
        assert torch.allclose(out, ref, atol=1e-12, rtol=0)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=b)
        assert torch.allclose(out, sdpa, atol=1e-12, rtol=0)
        # the weights route gives the same output
        w = A.attention_weights(q, k, beta=beta)
        assert torch.allclose(w @ v, ref, atol=1e-12, rtol=0)
        assert torch.allclose(w.sum(-1), torch.ones(5, dtype=D64), atol=1e-14)


def test_masks_causal_and_boolean():
    g = torch.Generator().manual_seed(2)
    x = rand(6, 4, g=g)
    cm = A.causal_mask(6)
    assert cm.dtype == torch.bool and bool(cm.tril().eq(cm).all()) and bool(cm.diagonal().all())
    out = A.softmax_attention(x, x, x, causal=True)
    ref = brute_softmax_attention(x, x, x, 0.5, mask=cm)
    assert torch.allclose(out, ref, atol=1e-12)
    # first token sees itself only
    assert torch.allclose(out[0], x[0], atol=1e-14)
    mask = torch.rand(6, 6, generator=g) > 0.5
    mask[:, 0] = True
    out = A.softmax_attention(x, x, x, mask=mask, beta=0.7)
    assert torch.allclose(out, brute_softmax_attention(x, x, x, 0.7, mask=mask), atol=1e-12)
    # rectangular causal: query i sees keys j <= i + m - n
    assert A.causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]


def test_chunked_equals_unchunked_batched():
    g = torch.Generator().manual_seed(3)
    q, k, v = rand(2, 3, 50, 4, g=g), rand(2, 3, 40, 4, g=g), rand(2, 3, 40, 5, g=g)
    full = A.softmax_attention(q, k, v, beta=1.3)
    chunked = A.softmax_attention(q, k, v, beta=1.3, chunk_size=7)
    assert torch.allclose(full, chunked, atol=1e-13)
    x = rand(30, 4, g=g)
    assert torch.allclose(A.softmax_attention(x, x, x, causal=True, chunk_size=8),
                          A.softmax_attention(x, x, x, causal=True), atol=1e-13)


def test_multihead_matches_per_head_loop():
    torch.manual_seed(0)
    mha = A.MultiHeadAttention(8, 2, dtype=D64)
    x = rand(3, 5, 8)
    out = mha(x)
    ref = torch.zeros_like(out)
    with torch.no_grad():
        _mha_loop(mha, x, ref)
    assert torch.allclose(out, ref, atol=1e-12)
    _check_against_torch(mha, x, out)


def _mha_loop(mha, x, ref):
    for h in range(2):
        sl = slice(4 * h, 4 * (h + 1))
        q = x @ mha.w_q.weight[sl].T
        k = x @ mha.w_k.weight[sl].T
        v = x @ mha.w_v.weight[sl].T
        for b in range(3):
            head = brute_softmax_attention(q[b], k[b], v[b], 1 / 2.0)
            ref[b] += head @ mha.w_o.weight[:, sl].T


def _check_against_torch(mha, x, out):
    # agrees with torch.nn.MultiheadAttention when the weights are copied
    tm = torch.nn.MultiheadAttention(8, 2, bias=False, batch_first=True, dtype=D64)
    with torch.no_grad():
        tm.in_proj_weight.copy_(torch.cat([mha.w_q.weight, mha.w_k.weight, mha.w_v.weight]))
        tm.out_proj.weight.copy_(mha.w_o.weight)
    ref2, _ = tm(x, x, x, need_weights=False)
    assert torch.allclose(out, ref2, atol=1e-12)
    # causal multi-head: first token's output depends on itself only
    y = mha(x, causal=True)
    x2 = x.clone()
    x2[:, 1:] += 1.0
    assert torch.allclose(mha(x2, causal=True)[:, 0], y[:, 0], atol=1e-13)


def test_l2_attention_brute_force():
    g = torch.Generator().manual_seed(4)
    q, k, v = rand(4, 3, g=g), rand(6, 3, g=g), rand(6, 2, g=g)
    beta = 0.8
    d2 = torch.cdist(q, k) ** 2
    ref = torch.softmax(-beta * d2, -1) @ v
    assert torch.allclose(A.l2_attention(q, k, v, beta=beta), ref, atol=1e-12)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[:, 2] = False
    ref_m = torch.softmax((-beta * d2).masked_fill(~mask, -math.inf), -1) @ v
    assert torch.allclose(A.l2_attention(q, k, v, beta=beta, mask=mask), ref_m, atol=1e-12)


def test_sigmoid_attention_brute_force():
    g = torch.Generator().manual_seed(5)
    q, k, v = rand(4, 3, g=g), rand(6, 3, g=g), rand(6, 2, g=g)
    ref = torch.zeros(4, 2, dtype=D64)
    for i in range(4):
        for j in range(6):
            ref[i] += v[j] / (1 + math.exp(-(0.5 * float(q[i] @ k[j]) - 0.2))) / 6
    assert torch.allclose(A.sigmoid_attention(q, k, v, beta=0.5, bias=-0.2), ref, atol=1e-12)
    # causal: mean over the allowed prefix
    x = rand(5, 3, g=g)
    out = A.sigmoid_attention(x, x, x, beta=1.0, causal=True)
    assert torch.allclose(out[0], torch.sigmoid(x[0] @ x[0]) * x[0], atol=1e-13)


def test_sinkhorn_is_doubly_stochastic_and_matches_pot():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(6)
    x = rand(30, 3, g=g)
    res = A.sinkhorn_attention(x, x, x, beta=1.0, tol=1e-12)
    p = res.plan
    assert torch.allclose(p.sum(-1), torch.ones(30, dtype=D64), atol=1e-12)
    assert torch.allclose(p.sum(-2), torch.ones(30, dtype=D64), atol=1e-12)
    assert res.marginal_error <= 1e-12
    # independent reference: POT's entropic OT plan for cost -q.k, reg = 1/beta, times n
    cost = -(x @ x.T).numpy()
    a = torch.full((30,), 1 / 30, dtype=D64).numpy()
    plan = ot.sinkhorn(a, a, cost, reg=1.0, method="sinkhorn_log", stopThr=1e-14, numItermax=100000)
    assert torch.allclose(p, 30 * torch.from_numpy(plan), atol=1e-9)
    assert torch.allclose(res.output, p @ x, atol=1e-14)
    # rectangular: rows sum to 1, columns to n/m
    r = A.sinkhorn_attention(rand(4, 2, g=g), rand(8, 2, g=g), rand(8, 2, g=g), tol=1e-12)
    assert torch.allclose(r.plan.sum(-2), torch.full((8,), 0.5, dtype=D64), atol=1e-11)


def test_sinkhorn_raises_when_not_converged():
    x = rand(20, 3) * 10
    with pytest.raises(RuntimeError, match="did not reach"):
        A.sinkhorn_attention(x, x, x, beta=1.0, tol=1e-14, max_iter=2)


def test_hardmax_ties_and_limit_of_softmax():
    q = torch.tensor([[1.0, 0.0]], dtype=D64)
    k = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 1.0]], dtype=D64)
    v = torch.tensor([[2.0], [4.0], [100.0]], dtype=D64)
    # keys 0 and 1 tie exactly: the output is their average
    assert torch.allclose(A.hardmax_attention(q, k, v), torch.tensor([[3.0]], dtype=D64))
    # a tie broken by round-off still counts as a tie (relative tolerance), order-independent
    k2 = k.clone()
    k2[1, 0] += 1e-14
    assert torch.allclose(A.hardmax_attention(q, k2, v), torch.tensor([[3.0]], dtype=D64))
    assert torch.allclose(A.hardmax_attention(q, k2.flip(0), v.flip(0)), torch.tensor([[3.0]], dtype=D64))
    # with tie_rtol=0 the perturbed key wins alone
    assert torch.allclose(A.hardmax_attention(q, k2, v, tie_rtol=0.0), torch.tensor([[4.0]], dtype=D64))
    # softmax tends to hardmax as beta -> inf (unique argmax)
    g = torch.Generator().manual_seed(7)
    qq, kk, vv = rand(5, 3, g=g), rand(9, 3, g=g), rand(9, 2, g=g)
    hard = A.hardmax_attention(qq, kk, vv)
    errs = [float((A.softmax_attention(qq, kk, vv, beta=b) - hard).abs().max()) for b in (1, 10, 100, 1000)]
    assert all(e2 < e1 for e1, e2 in pairwise(errs)) and errs[-1] < 1e-10


def test_factored_attention():
    g = torch.Generator().manual_seed(8)
    logits = rand(5, 5, g=g)
    w = A.factored_weights(logits)
    assert torch.allclose(w.diagonal(), torch.zeros(5, dtype=D64))
    assert torch.allclose(w.sum(-1), torch.ones(5, dtype=D64), atol=1e-14)
    free = A.factored_weights(logits, normalize="none")
    assert torch.equal(free.diagonal(), torch.zeros(5, dtype=D64))
    v = rand(3, 5, 4, g=g)
    out = A.factored_attention(w, v)
    for b in range(3):
        for i in range(5):
            assert torch.allclose(out[b, i], sum(w[i, j] * v[b, j] for j in range(5)), atol=1e-13)
    # per-head weights broadcast over the batch
    wh = A.factored_weights(rand(2, 5, 5, g=g))
    assert A.factored_attention(wh, rand(3, 2, 5, 4, g=g)).shape == (3, 2, 5, 4)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: A.softmax_attention(torch.ones(3, 2), torch.ones(4, 3), torch.ones(4, 1)), ValueError, "last dimension"),
        (lambda: A.softmax_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(5, 1)), ValueError, "same number of rows"),
        (lambda: A.softmax_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1), beta=0.0), ValueError, "beta"),
        (lambda: A.softmax_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1), beta=-1.0), ValueError, "beta"),
        (lambda: A.softmax_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1),
                                     mask=torch.zeros(3, 4, dtype=torch.bool)), ValueError, "blanks a whole row"),
        (lambda: A.softmax_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1),
                                     mask=torch.ones(3, 4)), TypeError, "torch.bool"),
        (lambda: A.softmax_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1),
                                     mask=torch.ones(3, 3, dtype=torch.bool)), ValueError, "mask must end"),
        (lambda: A.softmax_attention(torch.tensor([[float("nan"), 0.0]]), torch.ones(4, 2), torch.ones(4, 1)), ValueError, "q contains non-finite"),
        (lambda: A.softmax_attention(torch.ones(3, 2, dtype=torch.int64), torch.ones(4, 2), torch.ones(4, 1)), TypeError, "floating"),
        (lambda: A.softmax_attention([[1.0]], torch.ones(4, 1), torch.ones(4, 1)), TypeError, "torch.Tensor"),
        (lambda: A.softmax_attention(torch.ones(3, 2, dtype=D64), torch.ones(4, 2), torch.ones(4, 1)), TypeError, "dtypes must match"),
        (lambda: A.softmax_attention(torch.ones(2, 3, 2), torch.ones(3, 4, 2), torch.ones(3, 4, 1)), ValueError, "batch shapes"),
        (lambda: A.l2_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1), beta=float("inf")), ValueError, "beta"),
        (lambda: A.sigmoid_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1), bias=float("nan")), ValueError, "bias"),
        (lambda: A.sinkhorn_attention(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 1), tol=0.0), ValueError, "tol"),
        (lambda: A.hardmax_weights(torch.ones(3, 4), tie_rtol=-1.0), ValueError, "tie_rtol"),
        (lambda: A.factored_weights(torch.ones(3, 4)), ValueError, "square"),
        (lambda: A.factored_weights(torch.ones(3, 3), normalize="sparsemax"), ValueError, "normalize"),
        (lambda: A.factored_attention(torch.ones(3, 3), torch.ones(2, 4, 5)), ValueError, "positions"),
        (lambda: A.MultiHeadAttention(6, 4), ValueError, "divisible"),
        (lambda: A.causal_mask(0), ValueError, "n must be >= 1"),
    ],
)
def test_bad_input_raises_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- regression tests (issue: lib/ hardened) ---------------------------------------------------

def test_l2_attention_float32_far_from_origin():
    """|q|^2 - 2 q.k + |k|^2 cancels catastrophically at an offset of 1000 in float32."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(16, 4, generator=g, dtype=D64) for _ in range(3))
    for off in (1e3, 1e4):
        q32, k32, v32 = (q + off).float(), (k + off).float(), v.float()
        ref = A.l2_attention(q32.double(), k32.double(), v32.double(), beta=0.5)  # same inputs, float64
        out = A.l2_attention(q32, k32, v32, beta=0.5)
        assert (out.double() - ref).abs().max() < 1e-5


def test_sinkhorn_float32_default_tol_converges():
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        q, k, v = (torch.randn(n, 8, generator=g) for n in (16, 8, 8))
        res = A.sinkhorn_attention(q, k, v)
        tol = A.sinkhorn_default_tol(torch.float32)
        assert res.marginal_error <= tol and res.plan.sum(-1).sub(1).abs().max() < 1e-5
        assert res.plan.sum(-2).sub(2).abs().max() < 2 * tol


def test_sinkhorn_zero_queries_raises_valueerror():
    with pytest.raises(ValueError, match="query"):
        A.sinkhorn_attention(torch.zeros(0, 3, dtype=D64), rand(4, 3), rand(4, 2))


def test_mask_validated_before_causal_merge():
    q, k, v = rand(4, 3), rand(4, 3), rand(4, 2)
    for bad in (torch.ones(4, 1, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool), torch.ones(4, 4)):
        for causal in (False, True):
            with pytest.raises((ValueError, TypeError), match="mask"):
                A.softmax_attention(q, k, v, mask=bad, causal=causal)
            with pytest.raises((ValueError, TypeError), match="mask"):
                A.l2_attention(q, k, v, mask=bad, causal=causal)


def test_mask_with_extra_leading_dims_is_refused():
    q, k, v = rand(2, 4, 3), rand(2, 4, 3), rand(2, 4, 2)
    with pytest.raises(ValueError, match="broadcast"):
        A.softmax_attention(q, k, v, mask=torch.ones(3, 2, 4, 4, dtype=torch.bool))
    ok = A.softmax_attention(q, k, v, mask=torch.ones(1, 4, 4, dtype=torch.bool))
    assert torch.allclose(ok, A.softmax_attention(q, k, v))


def test_zero_dimension_default_beta_is_valueerror():
    q, k, v = torch.zeros(3, 0, dtype=D64), torch.zeros(4, 0, dtype=D64), rand(4, 2)
    for f in (A.softmax_attention, A.l2_attention):
        with pytest.raises(ValueError, match="d >= 1|dimension"):
            f(q, k, v)
    out = A.softmax_attention(q, k, v, beta=1.0)  # with an explicit beta, uniform weights
    assert torch.allclose(out, v.mean(0).expand(3, 2))


@pytest.mark.parametrize("chunk", [0, -1, 2.5, "4"])
def test_chunk_size_always_validated(chunk):
    q, k, v = rand(4, 3), rand(4, 3), rand(4, 2)
    with pytest.raises((ValueError, TypeError), match="chunk_size"):
        A.softmax_attention(q, k, v, chunk_size=chunk)  # 4 < n is irrelevant: checked anyway
    with pytest.raises((ValueError, TypeError), match="chunk_size"):
        A.softmax_attention(q, k, v, chunk_size=chunk if chunk != 0 else -5)


def test_multihead_input_checks():
    mha = A.MultiHeadAttention(8, 2, dtype=D64)
    with pytest.raises(ValueError, match="d_model|last dimension"):
        mha(rand(5, 6))
    with pytest.raises(ValueError, match="context"):
        mha(rand(5, 8), rand(4, 6))
    with pytest.raises(TypeError, match="dtype"):
        mha(torch.randn(5, 8))
    with pytest.raises(TypeError, match="mask"):
        mha(rand(5, 8), mask=[[True] * 5] * 5)
    with pytest.raises(TypeError, match="mask"):
        mha(rand(5, 8), mask=torch.ones(5, 5))


@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 7), (2, 1, 3, 7)])
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_any_rank_matches_sdpa_4d(shape, causal):
    g = torch.Generator().manual_seed(5)
    lead, n = shape[:-1], shape[-1]
    q, k, v = (torch.randn(*lead, n, 3, generator=g, dtype=D64) for _ in range(3))
    out = A.softmax_attention(q, k, v, causal=causal)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.reshape(-1, 1, n, 3), k.reshape(-1, 1, n, 3), v.reshape(-1, 1, n, 3), is_causal=causal,
        scale=1 / math.sqrt(3)).reshape(out.shape)
    assert out.shape == q.shape[:-1] + (3,)
    assert torch.allclose(out, ref, atol=1e-13)
    if len(lead) == 0:
        mask = A.causal_mask(n) if causal else None
        assert torch.allclose(out, brute_softmax_attention(q, k, v, 1 / math.sqrt(3), mask), atol=1e-12)


def test_causal_lower_right_for_n_less_than_m_and_refused_for_n_greater():
    q, k, v = rand(3, 2), rand(5, 2), rand(5, 4)
    out = A.softmax_attention(q, k, v, causal=True)
    ref = brute_softmax_attention(q, k, v, 1 / math.sqrt(2), A.causal_mask(3, 5))
    assert torch.allclose(out, ref, atol=1e-12)
    with pytest.raises(ValueError, match="no key|blanks"):
        A.softmax_attention(rand(5, 2), rand(3, 2), rand(3, 4), causal=True)


def test_causal_and_mask_combined():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 6, 3, generator=g, dtype=D64) for _ in range(3))
    mask = torch.rand(2, 6, 6, generator=g) > 0.4
    mask[..., 0] = True
    out = A.softmax_attention(q, k, v, mask=mask, causal=True)
    for b in range(2):
        ref = brute_softmax_attention(q[b], k[b], v[b], 1 / math.sqrt(3), mask[b] & A.causal_mask(6))
        assert torch.allclose(out[b], ref, atol=1e-12)


@pytest.mark.parametrize("dq, e", [(2, 4), (8, 2), (3, 3), (5, 64)])
@pytest.mark.parametrize("causal", [False, True])
def test_unequal_value_width_matches_brute_force(dq, e, causal):
    """Zero-padding to equal widths (the fused kernel's fast path) changes no output."""
    g = torch.Generator().manual_seed(dq * 100 + e)
    q = torch.randn(2, 7, dq, generator=g, dtype=torch.float64)
    k = torch.randn(2, 9, dq, generator=g, dtype=torch.float64)
    v = torch.randn(2, 9, e, generator=g, dtype=torch.float64)
    s = q @ k.transpose(-1, -2) / dq**0.5
    if causal:
        s = s.masked_fill(~torch.ones(7, 9, dtype=torch.bool).tril(9 - 7), float("-inf"))
    ref = torch.softmax(s, -1) @ v
    out = A.softmax_attention(q, k, v, causal=causal)
    assert out.shape == (2, 7, e)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
