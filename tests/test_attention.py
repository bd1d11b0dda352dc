"""lib.attention against independent references: brute-force loops and torch's fused kernel."""

from __future__ import annotations

import math

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
    assert all(e2 < e1 for e1, e2 in zip(errs, errs[1:])) and errs[-1] < 1e-10


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
