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

Speed and memory: :func:`softmax_attention` and :func:`l2_attention` reshape inputs of any rank to
the 4-D layout ``(B, H, N, d)`` of :func:`torch.nn.functional.scaled_dot_product_attention`, for
which the CPU runs its tiled (flash) kernel, and pass causal attention as ``is_causal`` rather than
as a mask: neither builds the ``n x m`` matrix, so memory grows linearly in ``n``. Masks are validated before use (a
mask must end in ``(n, m)`` and broadcast to the batch without enlarging it).
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
    "MultiHeadAttention",
    "SinkhornResult",
    "attention_scores",
    "attention_weights",
    "causal_mask",
    "factored_attention",
    "factored_weights",
    "hardmax_attention",
    "hardmax_weights",
    "l2_attention",
    "sigmoid_attention",
    "sinkhorn_attention",
    "sinkhorn_default_tol",
    "softmax_attention",
]


def _beta(beta: float | None, d: int) -> float:
    if beta is not None:
        return C.positive(beta, "beta")
    if d < 1:
        raise ValueError("the default beta = 1/sqrt(d) needs dimension d >= 1 (got d = 0); pass beta")
    return 1.0 / math.sqrt(d)


def causal_mask(n: int, m: int | None = None, *, device: torch.device | str | None = None) -> Tensor:
    r"""Boolean ``(n, m)`` mask with ``mask[i, j] = (j <= i + m - n)``: query ``i`` sees keys up to itself.

    For ``m = n`` (self-attention) this is the lower triangle including the diagonal; for ``m > n``
    the queries are the last ``n`` positions of the key sequence (lower-right alignment, as
    torch's ``causal_lower_right``).
    """
    m = n if m is None else m
    C.positive_int(n, "n")
    C.positive_int(m, "m")
    return torch.ones(n, m, dtype=torch.bool, device=device).tril(diagonal=m - n)


def _check_causal(n: int, m: int) -> None:
    if n > m:
        raise ValueError(f"causal attention with n = {n} queries and m = {m} < n keys leaves the first "
                         f"{n - m} queries with no key (lower-right alignment)")


def _combined_mask(mask: Tensor | None, causal: bool, n: int, m: int, batch: torch.Size, device) -> Tensor | None:
    """The user's mask, validated *first*, then merged with the causal mask (materialised)."""
    if mask is not None:
        C.bool_mask(mask, n, m, batch)
    if causal:
        _check_causal(n, m)
        cm = causal_mask(n, m, device=device)
        mask = cm if mask is None else (mask & cm)
        C.bool_mask(mask, n, m, batch)
    return mask


def _chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None:
        C.positive_int(chunk_size, "chunk_size")


def _to4(x: Tensor, batch: torch.Size) -> Tensor:
    """``(*batch, r, c)`` -> sdpa's 4-D layout ``(B, H, r, c)`` (a view whenever possible)."""
    if len(batch) == 2:
        return x
    return x.reshape(math.prod(batch), 1, x.shape[-2], x.shape[-1])


def _mask4(mask: Tensor, batch: torch.Size) -> Tensor:
    """A validated mask broadcastable to ``batch + (n, m)`` in the 4-D layout, without expanding
    dimensions that are broadcast over all of the batch."""
    n, m = mask.shape[-2:]
    mask = mask.reshape((1,) * (len(batch) + 2 - mask.dim()) + tuple(mask.shape))
    if len(batch) == 2:
        return mask
    if all(s == 1 for s in mask.shape[:-2]):
        return mask.reshape(1, 1, n, m)
    return mask.expand(*batch, n, m).reshape(math.prod(batch), 1, n, m)


def _fused(q: Tensor, k: Tensor, v: Tensor, *, scale: float, mask: Tensor | None, causal: bool) -> Tensor:
    r"""Softmax attention through :func:`torch.nn.functional.scaled_dot_product_attention` in its
    4-D layout ``(B, H, N, d)`` (the layout for which the CPU picks its tiled, memory-linear
    kernel), for validated inputs of any rank. Causal attention without a user mask uses the
    kernel's ``is_causal`` path (for ``n < m <= 2n`` after prepending ``m - n`` dummy queries,
    which gives the lower-right alignment): no ``n x m`` mask is built. Only for ``m > 2n`` (few
    queries) is the small ``n x m`` causal mask materialised. (Torch's own ``causal_lower_right``
    is avoided: importing it loads ``torch._dynamo``, seconds of start-up.)"""
    batch = q.shape[:-2]
    n, m = q.shape[-2], k.shape[-2]
    q4, k4, v4 = _to4(q, batch), _to4(k, batch), _to4(v, batch)
    e = v.shape[-1]
    # the CPU's fused kernel needs equal query/key and value widths: otherwise torch falls back to
    # its math path (4-5x slower, an n x m matrix). Zero columns change no logit and no output.
    width = max(q4.shape[-1], e)
    if q4.shape[-1] < width:
        q4, k4 = F.pad(q4, (0, width - q4.shape[-1])), F.pad(k4, (0, width - k4.shape[-1]))
    elif e < width:
        v4 = F.pad(v4, (0, width - e))
    kw: dict = {}
    if causal:
        _check_causal(n, m)
    if mask is not None:
        C.bool_mask(mask, n, m, batch)
        if causal:
            mask = mask & causal_mask(n, m, device=q.device)
            C.bool_mask(mask, n, m, batch)
        kw["attn_mask"] = _mask4(mask, batch)
    elif causal and 2 * n >= m:
        # lower-right alignment as the fused causal path: prepend m - n dummy queries (at most n),
        # run the square causal problem, drop their rows; no n x m mask
        if m > n:
            q4 = torch.cat([q4.new_zeros(*q4.shape[:-2], m - n, q4.shape[-1]), q4], dim=-2)
        out = F.scaled_dot_product_attention(q4, k4, v4, scale=scale, is_causal=True)[..., m - n :, :e]
        return out.reshape(*batch, n, e)
    elif causal:
        kw["attn_mask"] = causal_mask(n, m, device=q.device)  # few queries, many keys: n x m is small
    out = F.scaled_dot_product_attention(q4, k4, v4, scale=scale, **kw)[..., :e]
    return out.reshape(*batch, n, e)


def attention_scores(q: Tensor, k: Tensor, *, beta: float | None = None) -> Tensor:
    r"""Logits :math:`\beta\, q_i \cdot k_j`, shape ``(..., n, m)``; ``beta`` defaults to :math:`1/\sqrt d`."""
    q, k = C.qk(q, k)
    return _beta(beta, q.shape[-1]) * (q @ k.transpose(-1, -2))


def attention_weights(
    q: Tensor, k: Tensor, *, beta: float | None = None, mask: Tensor | None = None, causal: bool = False
) -> Tensor:
    r"""Row-stochastic softmax weights :math:`P_{ij} \propto \exp(\beta q_i\cdot k_j)` over allowed keys
    (the full ``n x m`` matrix; :func:`softmax_attention` never forms it)."""
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
        Queries ``(..., n, d)``, keys ``(..., m, d)``, values ``(..., m, e)``; any number of
        (equal) batch dimensions, including none.
    beta
        Inverse temperature :math:`\beta>0`; default :math:`1/\sqrt d` (the Transformer's scaling;
        ``d = 0`` then raises). Low temperature ``T`` is ``beta = 1/T``.
    mask
        Boolean, broadcastable to ``(..., n, m)``; ``True`` where query ``i`` may attend to key ``j``.
    causal
        Also apply :func:`causal_mask` (lower-right aligned; ``n > m`` raises). Without ``mask`` it
        runs through the fused kernel's own causal path: no ``n x m`` mask is built.
    chunk_size
        Accepted for compatibility and validated (``None`` or an int >= 1); it no longer changes
        anything: the fused kernel tiles the rows itself, so memory stays linear in ``n`` without
        chunking (float64, ``n = m = 10^5``, ``d = 8`` fits in well under 4 GB, causal or not).

    Inputs of every rank are reshaped to the 4-D layout ``(B, H, N, d)`` of
    :func:`torch.nn.functional.scaled_dot_product_attention`, for which the CPU uses its tiled
    (flash) kernel; with 2-D input torch would build the whole ``n x m`` matrix.
    """
    q, k, v = C.qkv(q, k, v)
    _chunk_size(chunk_size)
    b = _beta(beta, q.shape[-1])
    return _fused(q, k, v, scale=b, mask=mask, causal=causal)


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
        """Attend from tokens ``x`` ``(..., n, d_model)`` to ``context`` ``(..., m, d_model)`` (default
        ``x``); both in the module's dtype. ``mask``: boolean, broadcastable to ``(..., n, m)``."""
        x = C.float_tensor(x, "x", min_dim=2)
        y = x if context is None else C.float_tensor(context, "context", min_dim=2)
        d_model, dtype = self.w_q.in_features, self.w_q.weight.dtype
        for t, name in ((x, "x"), (y, "context")):
            if t.shape[-1] != d_model:
                raise ValueError(f"{name} must have last dimension d_model = {d_model}, got shape {tuple(t.shape)}")
            if t.dtype != dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but the module's weights have dtype {dtype}")
        if x.shape[:-2] != y.shape[:-2]:
            raise ValueError(f"batch shapes of x {tuple(x.shape)} and context {tuple(y.shape)} must match")
        if mask is not None:
            C.bool_mask(mask, x.shape[-2], y.shape[-2], x.shape[:-2])
            if mask.dim() >= 3:
                mask = mask.unsqueeze(-3)  # broadcast over heads
        q, k, v = self._split(self.w_q(x)), self._split(self.w_k(y)), self._split(self.w_v(y))
        out = softmax_attention(q, k, v, beta=self.beta, mask=mask, causal=causal)
        return self.w_o(out.transpose(-2, -3).flatten(-2))


def l2_attention(
    q: Tensor, k: Tensor, v: Tensor, *, beta: float | None = None, mask: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    r"""L2 (distance-based) attention: weights :math:`\propto \exp(-\beta \|q_i - k_j\|^2)`.

    The weights do not change when queries and keys are shifted by a common vector :math:`c`, and
    :math:`-\beta\|q-k\|^2 = 2\beta\, q\cdot k - \beta\|k\|^2 - \beta\|q\|^2`, whose last term
    cancels in the normalisation. With :math:`c` the mean of the keys (so nothing cancels
    catastrophically far from the origin: float32 stays accurate at any offset) this is softmax
    attention at inverse temperature :math:`2\beta` between the augmented vectors
    :math:`(q_i-c,\,1)` and :math:`(k_j-c,\,-\|k_j-c\|^2/2)`, so it runs through the fused kernel
    (:func:`softmax_attention`'s 4-D path, masks and causal included). ``beta`` defaults to
    :math:`1/\sqrt d`. Used by chapter 3 (L2 Transformer PDE) and, as the Gaussian kernel, chapter 4.
    """
    q, k, v = C.qkv(q, k, v)
    b = _beta(beta, q.shape[-1])
    c = k.detach().mean(dim=-2, keepdim=True)
    qc, kc = q - c, k - c
    qa = torch.cat([qc, torch.ones_like(qc[..., :1])], dim=-1)
    ka = torch.cat([kc, -0.5 * (kc * kc).sum(-1, keepdim=True)], dim=-1)
    return _fused(qa, ka, v, scale=2.0 * b, mask=mask, causal=causal)


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


def sinkhorn_default_tol(dtype: torch.dtype) -> float:
    r"""Default column-sum tolerance of :func:`sinkhorn_attention`: ``1e-9`` for float64,
    ``1000 * eps`` of the dtype otherwise (``1.2e-4`` in float32): reachable above round-off."""
    return 1e-9 if dtype == torch.float64 else 1e3 * torch.finfo(dtype).eps


def sinkhorn_attention(
    q: Tensor, k: Tensor, v: Tensor, *, beta: float | None = None, tol: float | None = None,
    max_iter: int = 10_000,
) -> SinkhornResult:
    r"""Sinkhorn (doubly stochastic) attention, computed in the log domain.

    Finds the matrix :math:`P_{ij} = \exp(\beta q_i\cdot k_j + f_i + g_j)` whose rows sum to 1 and
    whose columns sum to :math:`n/m` (uniform marginals; for self-attention ``n = m`` it is doubly
    stochastic), i.e. the entropic optimal-transport plan between the uniform measures on queries
    and keys for the cost :math:`-q\cdot k` at regularisation :math:`1/\beta`, scaled by :math:`n`.
    The output is :math:`P v`.

    Alternating row and column normalisation (in ``logsumexp`` form, stable at any temperature)
    stops once the largest column-sum error is below ``tol`` (rows are exact after each sweep).
    ``tol`` defaults to :func:`sinkhorn_default_tol` of the dtype (``1e-9`` in float64, about
    ``1.2e-4`` in float32, where ``1e-9`` is below round-off). Raises ``RuntimeError`` when
    ``max_iter`` sweeps do not reach ``tol``, ``ValueError`` for ``n = 0`` queries.
    """
    q, k, v = C.qkv(q, k, v)
    if q.shape[-2] == 0:
        raise ValueError("sinkhorn_attention needs at least one query (n >= 1): the plan's marginals are undefined")
    tol = sinkhorn_default_tol(q.dtype) if tol is None else C.positive(tol, "tol")
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
    ``tie_rtol = 0`` gives float ``==`` ties. For the clustering dynamics, where followers converge
    to leaders and a score tolerance would eventually count them as tied, :mod:`lib.hardmax` decides
    ties on positions instead (its module docstring).
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
