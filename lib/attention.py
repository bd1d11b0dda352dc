r"""Dot-product attention and the variants the book studies.

Shapes follow PyTorch: queries ``q`` are ``(..., n, d)``, keys ``k`` are ``(..., m, d)``, values
``v`` are ``(..., m, e)``; the output is ``(..., n, e)``. Leading batch dimensions must match.
A boolean ``mask`` of shape broadcastable to ``(..., n, m)`` says which keys each query *may*
attend to (``True`` = attend). A mask that leaves a query with no key raises ``ValueError``.

Softmax attention (all chapters):

.. math::  \mathrm{Attn}(q, k, v)_i = \sum_j \frac{\exp(\beta\, q_i\cdot k_j)}{\sum_l \exp(\beta\, q_i\cdot k_l)}\, v_j,

with inverse temperature ``beta`` (default :math:`1/\sqrt d`). The variants replace the
weights: :func:`l2_attention` (:math:`\exp(-\beta\|q_i-k_j\|^2)`, chapter 3), :func:`sigmoid_attention`
(unnormalised, chapter 3), :func:`sinkhorn_attention` (doubly stochastic, chapter 3),
:func:`hardmax_attention` (the :math:`\beta\to\infty` limit, chapter 5) and
:func:`factored_attention` (weights depending on positions only, chapter 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as C

Tensor = torch.Tensor

__all__ = [
    "causal_mask",
    "attention_scores",
    "attention_weights",
    "softmax_attention",
    "MultiHeadAttention",
    "l2_attention",
    "sigmoid_attention",
    "SinkhornResult",
    "sinkhorn_attention",
    "hardmax_weights",
    "hardmax_attention",
    "factored_weights",
    "factored_attention",
]


def _beta(beta: float | None, d: int) -> float:
    return 1.0 / math.sqrt(d) if beta is None else C.positive(beta, "beta")


def causal_mask(n: int, m: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    r"""Boolean ``(n, m)`` mask with ``mask[i, j] = (j <= i + m - n)``: query ``i`` sees keys up to itself.

    For ``m = n`` (self-attention) this is the lower triangle including the diagonal.
    """
    m = n if m is None else m
    C.positive_int(n, "n")
    C.positive_int(m, "m")
    return torch.ones(n, m, dtype=torch.bool, device=device).tril(diagonal=m - n)


def _combined_mask(mask: Tensor | None, causal: bool, n: int, m: int, batch: torch.Size, device) -> Tensor | None:
    if causal:
        cm = causal_mask(n, m, device=device)
        mask = cm if mask is None else (mask & cm)
    if mask is not None:
        C.bool_mask(mask, n, m, batch)
    return mask


def attention_scores(q: Tensor, k: Tensor, *, beta: float | None = None) -> Tensor:
    r"""Logits :math:`\beta\, q_i \cdot k_j`, shape ``(..., n, m)``; ``beta`` defaults to :math:`1/\sqrt d`."""
    q = C.float_tensor(q, "q", min_dim=2)
    k = C.float_tensor(k, "k", min_dim=2)
    C.same_dtype([q, k], ["q", "k"])
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the last dimension, got {tuple(q.shape)} and {tuple(k.shape)}")
    return _beta(beta, q.shape[-1]) * (q @ k.transpose(-1, -2))


def attention_weights(
    q: Tensor, k: Tensor, *, beta: float | None = None, mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    r"""Row-stochastic softmax weights :math:`P_{ij} \propto \exp(\beta q_i\cdot k_j)` over allowed keys."""
    s = attention_scores(q, k, beta=beta)
    mask = _combined_mask(mask, causal, q.shape[-2], k.shape[-2], q.shape[:-2], q.device)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1)


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    beta: float | None = None,
    mask: Tensor | None = None,
    causal: bool = False,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Softmax dot-product attention :math:`\sum_j \mathrm{softmax}_j(\beta q_i\cdot k_j) v_j`.

    Parameters
    ----------
    q, k, v
        Queries ``(..., n, d)``, keys ``(..., m, d)``, values ``(..., m, e)``.
    beta
        Inverse temperature :math:`\beta>0`; default :math:`1/\sqrt d` (the Transformer's scaling).
        Low temperature ``T`` is ``beta = 1/T``.
    mask
        Boolean, broadcastable to ``(..., n, m)``; ``True`` where query ``i`` may attend to key ``j``.
    causal
        Also apply :func:`causal_mask`.
    chunk_size
        Process this many query rows at a time, so that the ``n x m`` weight matrix is never held
        whole (for ``n = m = 10^5`` on a GPU). Exact: rows are independent.

    Calls :func:`torch.nn.functional.scaled_dot_product_attention`, the fused kernel.
    """
    q, k, v = C.qkv(q, k, v)
    b = _beta(beta, q.shape[-1])
    n, m = q.shape[-2], k.shape[-2]
    mask = _combined_mask(mask, causal, n, m, q.shape[:-2], q.device)
    if chunk_size is None or chunk_size >= n:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=b)
    C.positive_int(chunk_size, "chunk_size")
    outs = []
    for s in range(0, n, chunk_size):
        mk = None if mask is None else mask[..., s : s + chunk_size, :]
        outs.append(F.scaled_dot_product_attention(q[..., s : s + chunk_size, :], k, v, attn_mask=mk, scale=b))
    return torch.cat(outs, dim=-2)


class MultiHeadAttention(nn.Module):
    r"""Multi-head softmax attention with separate query, key, value and output maps.

    .. math:: \mathrm{MHA}(X, Y) = \sum_{h=1}^{H} \mathrm{Attn}(X W_Q^h, Y W_K^h, Y W_V^h)\, W_O^h

    Parameters
    ----------
    d_model
        Token dimension :math:`d`.
    n_heads
        Number of heads :math:`H`.
    d_head
        Per-head query/key/value dimension (default ``d_model // n_heads``).
    beta
        Inverse temperature (default :math:`1/\sqrt{d_\text{head}}`).
    bias
        Whether the four linear maps have biases.
    """

    def __init__(self, d_model: int, n_heads: int, *, d_head: int | None = None, beta: float | None = None,
                 bias: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        C.positive_int(d_model, "d_model")
        C.positive_int(n_heads, "n_heads")
        if d_head is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pass d_head")
            d_head = d_model // n_heads
        C.positive_int(d_head, "d_head")
        self.n_heads, self.d_head = n_heads, d_head
        self.beta = _beta(beta, d_head)
        inner = n_heads * d_head
        self.w_q = nn.Linear(d_model, inner, bias=bias, dtype=dtype)
        self.w_k = nn.Linear(d_model, inner, bias=bias, dtype=dtype)
        self.w_v = nn.Linear(d_model, inner, bias=bias, dtype=dtype)
        self.w_o = nn.Linear(inner, d_model, bias=bias, dtype=dtype)

    def _split(self, x: Tensor) -> Tensor:  # (..., n, H*dh) -> (..., H, n, dh)
        return x.unflatten(-1, (self.n_heads, self.d_head)).transpose(-2, -3)

    def forward(self, x: Tensor, context: Tensor | None = None, *, mask: Tensor | None = None,
                causal: bool = False) -> Tensor:
        """Attend from tokens ``x`` ``(..., n, d_model)`` to ``context`` (default ``x``)."""
        x = C.float_tensor(x, "x", min_dim=2)
        y = x if context is None else C.float_tensor(context, "context", min_dim=2)
        q, k, v = self._split(self.w_q(x)), self._split(self.w_k(y)), self._split(self.w_v(y))
        if mask is not None and mask.dim() >= 3:
            mask = mask.unsqueeze(-3)  # broadcast over heads
        out = softmax_attention(q, k, v, beta=self.beta, mask=mask, causal=causal)
        return self.w_o(out.transpose(-2, -3).flatten(-2))


def l2_attention(
    q: Tensor, k: Tensor, v: Tensor, *, beta: float | None = None, mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    r"""L2 (distance-based) attention: weights :math:`\propto \exp(-\beta \|q_i - k_j\|^2)`.

    Since :math:`-\beta\|q-k\|^2 = 2\beta\, q\cdot k - \beta\|k\|^2 - \beta\|q\|^2` and the last
    term cancels in the normalisation, this is softmax attention at inverse temperature
    :math:`2\beta` with an additive key bias :math:`-\beta\|k_j\|^2`; it runs through the fused
    kernel. ``beta`` defaults to :math:`1/\sqrt d`. Used by chapter 3 (L2 Transformer PDE).
    """
    q, k, v = C.qkv(q, k, v)
    b = _beta(beta, q.shape[-1])
    n, m = q.shape[-2], k.shape[-2]
    mask = _combined_mask(mask, causal, n, m, q.shape[:-2], q.device)
    bias = (-b * (k * k).sum(-1)).unsqueeze(-2).expand(*k.shape[:-2], n, m)
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=2.0 * b)


def sigmoid_attention(
    q: Tensor, k: Tensor, v: Tensor, *, beta: float | None = None, bias: float = 0.0,
    mask: Tensor | None = None, causal: bool = False,
) -> Tensor:
    r"""Sigmoid attention :math:`\frac{1}{|\mathcal N_i|}\sum_{j\in\mathcal N_i} \sigma(\beta q_i\cdot k_j + b)\, v_j`.

    The weights are not normalised to sum to one; the average over the allowed keys
    :math:`\mathcal N_i` is the integral against the empirical measure of the tokens (chapter 3's
    convention, so the field has a mean-field limit). ``bias`` is :math:`b`.
    """
    q, k, v = C.qkv(q, k, v)
    if not math.isfinite(float(bias)):
        raise ValueError(f"bias must be finite, got {bias!r}")
    s = attention_scores(q, k, beta=beta) + float(bias)
    w = torch.sigmoid(s)
    mask = _combined_mask(mask, causal, q.shape[-2], k.shape[-2], q.shape[:-2], q.device)
    if mask is not None:
        w = w * mask
        count = mask.sum(-1, keepdim=True).to(w.dtype)
    else:
        count = torch.tensor(float(k.shape[-2]), dtype=w.dtype, device=w.device)
    return (w @ v) / count


@dataclass
class SinkhornResult:
    """Output of :func:`sinkhorn_attention`: the attention output, the plan and convergence data."""

    output: Tensor
    plan: Tensor
    iterations: int
    marginal_error: float


def sinkhorn_attention(
    q: Tensor, k: Tensor, v: Tensor, *, beta: float | None = None, tol: float = 1e-9, max_iter: int = 10_000,
) -> SinkhornResult:
    r"""Sinkhorn (doubly stochastic) attention, computed in the log domain.

    Finds the matrix :math:`P_{ij} = \exp(\beta q_i\cdot k_j + f_i + g_j)` whose rows sum to 1 and
    whose columns sum to :math:`n/m` (uniform marginals; for self-attention ``n = m`` it is doubly
    stochastic), i.e. the entropic optimal-transport plan between the uniform measures on queries
    and keys for the cost :math:`-q\cdot k` at regularisation :math:`1/\beta`, scaled by :math:`n`.
    The output is :math:`P v`.

    Alternating row and column normalisation (in ``logsumexp`` form, stable at any temperature)
    stops once the largest column-sum error is below ``tol`` (rows are exact after each sweep).
    Raises ``RuntimeError`` when ``max_iter`` sweeps do not reach ``tol``.
    """
    q, k, v = C.qkv(q, k, v)
    tol = C.positive(tol, "tol")
    C.positive_int(max_iter, "max_iter")
    s = attention_scores(q, k, beta=beta)
    n, m = s.shape[-2], s.shape[-1]
    log_col = math.log(n / m)
    g = torch.zeros(*s.shape[:-2], 1, m, dtype=s.dtype, device=s.device)
    err = float("inf")
    for it in range(1, max_iter + 1):
        f = -torch.logsumexp(s + g, dim=-1, keepdim=True)
        col = torch.logsumexp(s + f, dim=-2, keepdim=True)  # log column sums without g
        err = float(((col + g).exp() - n / m).abs().max())
        if err <= tol:
            break
        g = log_col - col
    else:
        raise RuntimeError(f"Sinkhorn did not reach tol={tol:g} in {max_iter} iterations (column error {err:.3g})")
    plan = torch.exp(s + f + g)
    return SinkhornResult(output=plan @ v, plan=plan, iterations=it, marginal_error=err)


def hardmax_weights(scores: Tensor, *, tie_rtol: float = 1e-9, mask: Tensor | None = None) -> Tensor:
    r"""Hardmax weights: uniform over the argmax set of each row of ``scores``, zero elsewhere.

    Row :math:`i` attends to :math:`C_i = \{j : s_{ij} \ge \max_l s_{il} - \tau_i\}` with
    :math:`\tau_i = \texttt{tie\_rtol}\cdot\max(1, \max_l |s_{il}|)`: scores within that relative
    tolerance of the maximum count as tied, so ties that exact arithmetic would produce survive
    round-off, and the result does not depend on the order of the keys. Ties are broken by
    *sharing*: every tied key gets weight :math:`1/|C_i|` (the convention of chapter 5's model).
    ``tie_rtol = 0`` gives float ``==`` ties.
    """
    scores = C.float_tensor(scores, "scores", min_dim=2)
    tie_rtol = C.nonneg(tie_rtol, "tie_rtol")
    if mask is not None:
        C.bool_mask(mask, scores.shape[-2], scores.shape[-1], scores.shape[:-2])
        scores = scores.masked_fill(~mask, float("-inf"))
    top = scores.max(dim=-1, keepdim=True).values
    scale = scores.masked_fill(~torch.isfinite(scores), 0.0).abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
    sel = scores >= top - tie_rtol * scale
    w = sel.to(scores.dtype)
    return w / w.sum(dim=-1, keepdim=True)


def hardmax_attention(
    q: Tensor, k: Tensor, v: Tensor, *, tie_rtol: float = 1e-9, mask: Tensor | None = None
) -> Tensor:
    r"""Hardmax attention :math:`\frac{1}{|C_i|}\sum_{j\in C_i} v_j`, :math:`C_i = \arg\max_j q_i\cdot k_j`.

    The zero-temperature limit of :func:`softmax_attention` (``beta -> inf``) when the argmax is
    unique; ties are shared uniformly (see :func:`hardmax_weights` for the tolerance).
    """
    q, k, v = C.qkv(q, k, v)
    return hardmax_weights(q @ k.transpose(-1, -2), tie_rtol=tie_rtol, mask=mask) @ v


def factored_weights(logits: Tensor, *, normalize: str = "softmax", mask_diagonal: bool = True) -> Tensor:
    r"""Positional attention weights :math:`A_{ij}` from an ``(..., L, L)`` parameter matrix.

    ``normalize="softmax"``: :math:`A_{ij} = \mathrm{softmax}_j(\text{logits}_{ij})`;
    ``normalize="none"``: :math:`A_{ij} = \text{logits}_{ij}` (free, signed weights).
    With ``mask_diagonal`` a site never attends to itself (:math:`A_{ii}=0`), as needed when
    site :math:`i` is the one being predicted (chapter 2).
    """
    logits = C.float_tensor(logits, "logits", min_dim=2)
    L = logits.shape[-1]
    if logits.shape[-2] != L:
        raise ValueError(f"logits must be square in its last two dimensions, got {tuple(logits.shape)}")
    if normalize not in ("softmax", "none"):
        raise ValueError(f"normalize must be 'softmax' or 'none', got {normalize!r}")
    eye = torch.eye(L, dtype=torch.bool, device=logits.device)
    if normalize == "softmax":
        if mask_diagonal:
            if L < 2:
                raise ValueError("with mask_diagonal a softmax needs at least 2 positions")
            logits = logits.masked_fill(eye, float("-inf"))
        return torch.softmax(logits, dim=-1)
    return logits.masked_fill(eye, 0.0) if mask_diagonal else logits


def factored_attention(weights: Tensor, v: Tensor) -> Tensor:
    r"""Factored attention :math:`y_i = \sum_j A_{ij} v_j`: positions choose, tokens supply values.

    ``weights`` is ``(L, L)`` or ``(H, L, L)`` and does not depend on the sequence (see
    :func:`factored_weights`); ``v`` holds the value vectors :math:`v_j = V x_j` of a batch of
    sequences, ``(B, L, e)``, or per head ``(B, H, L, e)``. In chapter 2 this layer has exactly
    the form of the conditional distribution of a generalised Potts model.
    """
    weights = C.float_tensor(weights, "weights", min_dim=2)
    v = C.float_tensor(v, "v", min_dim=2)
    C.same_dtype([weights, v], ["weights", "v"])
    if weights.shape[-1] != weights.shape[-2]:
        raise ValueError(f"weights must be square (L, L), got {tuple(weights.shape)}")
    if v.shape[-2] != weights.shape[-1]:
        raise ValueError(f"v has {v.shape[-2]} positions but weights are for L={weights.shape[-1]}")
    return weights @ v
