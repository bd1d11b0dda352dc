r"""Attention as a gradient step: expansion, depth stacks and layer-norm contraction (chapter 1).

With keys :math:`x_1..x_n` held fixed, the residual attention step of a query is

.. math:: T(q) = q + \eta\,\beta^{-1}\nabla A(q) = q + \eta\,\mathrm{Attn}(q; X, X),

a gradient-ascent step on the convex log-normalizer :math:`A` of :mod:`lib.lognormalizer`.
Because :math:`\nabla A` is monotone, :math:`\|T(q)-T(q')\| \ge \|q-q'\|`: the step never brings
two queries closer ("parallel expansion", Shim 2022). This module provides the step, deep stacks of
self-attention with and without layer norm, the per-layer expansion factor of attention and
contraction factor of layer norm (:func:`layer_factors`, :func:`imbalance`), the test of whether
value and key maps form an ascent step (:func:`ascent_alignment`), a small post-norm
attention-only model trained on a toy task (:class:`PostNormAttention`, :func:`train_histogram`),
and the measurements used by chapter 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks as C
from .attention import softmax_attention
from .norms import layer_norm

Tensor = torch.Tensor

__all__ = [
    "PostNormAttention",
    "ascent_alignment",
    "attention_step",
    "attention_steps",
    "diameter",
    "distance_ratios",
    "growth_rate",
    "histogram_task",
    "imbalance",
    "jacobian_asymmetry",
    "layer_factors",
    "pairwise_distances",
    "self_attention_stack",
    "train_histogram",
]


def attention_step(
    q: Tensor,
    x: Tensor,
    *,
    beta: float,
    eta: float = 1.0,
    value_map: Tensor | None = None,
) -> Tensor:
    r"""Residual step :math:`q + \eta\, W_V\,\mathrm{Attn}(q; X, X)` for queries ``q`` ``(n, d)`` over fixed keys ``x`` ``(m, d)``.

    With ``value_map=None`` (:math:`W_V = I`, keys as values) this is the gradient step
    :math:`q + (\eta/\beta)\nabla A(q)`. ``value_map`` is a ``(d, d)`` matrix :math:`W_V`.
    """
    q = C.float_tensor(q, "q", min_dim=2)
    x = C.float_tensor(x, "x", min_dim=2)
    eta = C.nonneg(eta, "eta")
    v = (
        x
        if value_map is None
        else x @ C.float_tensor(value_map, "value_map", min_dim=2).T
    )
    return q + eta * softmax_attention(q, x, v, beta=beta)


def attention_steps(
    q: Tensor,
    x: Tensor,
    *,
    beta: float,
    steps: int,
    eta: float = 1.0,
    value_map: Tensor | None = None,
) -> Tensor:
    r"""``steps`` repeated :func:`attention_step` of queries ``q`` ``(n, d)`` over the same keys ``x``.

    Gradient ascent on the one convex :math:`A` of the fixed keys (``value_map=None``). Returns
    ``(steps + 1, n, d)``, the start included.
    """
    C.positive_int(steps, "steps")
    states = [C.float_tensor(q, "q", min_dim=2)]
    for _ in range(steps):
        states.append(
            attention_step(states[-1], x, beta=beta, eta=eta, value_map=value_map)
        )
    return torch.stack(states)


def distance_ratios(
    q1: Tensor,
    q2: Tensor,
    x: Tensor,
    *,
    beta: float,
    eta: float = 1.0,
    value_map: Tensor | None = None,
) -> Tensor:
    r"""Ratios :math:`\|T(q_1) - T(q_2)\| / \|q_1 - q_2\|` of paired queries through one residual step.

    ``q1``, ``q2`` are ``(n, d)`` (row ``i`` of each forms a pair), ``x`` the fixed keys ``(m, d)``,
    and :math:`T` is :func:`attention_step` with the same ``beta``, ``eta`` and ``value_map``.
    With ``value_map=None`` every ratio is at least 1 (chapter 1, claim 1.3); with a general value
    map it need not be. Returns ``(n,)``.
    """
    q1 = C.float_tensor(q1, "q1", min_dim=2)
    q2 = C.float_tensor(q2, "q2", min_dim=2)
    if q1.shape != q2.shape:
        raise ValueError(
            f"q1 and q2 must have the same shape, got {tuple(q1.shape)} and {tuple(q2.shape)}"
        )
    before = (q1 - q2).norm(dim=-1)
    if bool((before == 0).any()):
        raise ValueError("each pair q1[i], q2[i] must consist of two distinct queries")
    t1 = attention_step(q1, x, beta=beta, eta=eta, value_map=value_map)
    t2 = attention_step(q2, x, beta=beta, eta=eta, value_map=value_map)
    return (t1 - t2).norm(dim=-1) / before


def self_attention_stack(
    x: Tensor,
    depth: int,
    *,
    beta: float,
    weights: Tensor | None = None,
    norm: str = "none",
    eta: float = 1.0,
    residual: bool = True,
) -> Tensor:
    r"""Apply ``depth`` residual self-attention layers to tokens ``x`` ``(..., n, d)``; return all states.

    Layer :math:`\ell` maps :math:`X \mapsto X + \eta\,\mathrm{Attn}(X W_Q^\ell{}^\top, X W_K^\ell{}^\top, X W_V^\ell{}^\top)`
    where ``weights`` is ``(depth, 3, d, d)``, or ``(..., depth, 3, d, d)`` with the batch shape of
    ``x`` for one set of maps per cloud (``None``: identity maps, keys = queries = values). Leading
    dimensions of ``x`` are independent clouds, run together.
    ``norm`` is ``"none"`` (no normalisation: the original residual stream), ``"post"``
    (:math:`X \mapsto \mathrm{LN}(X + \eta\,\mathrm{Attn})`, the original Transformer) or ``"pre"``
    (:math:`X \mapsto X + \eta\,\mathrm{Attn}(\mathrm{LN}(X))`). ``residual=False`` drops the
    residual connection, :math:`X \mapsto \eta\,\mathrm{Attn}(\cdot)` (with identity maps and
    ``eta=1`` the Hopfield update of every token: a convex combination, so the cloud cannot
    expand). Returns ``(depth + 1, ..., n, d)``.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    C.positive_int(depth, "depth")
    if norm not in ("none", "post", "pre"):
        raise ValueError(f"norm must be 'none', 'post' or 'pre', got {norm!r}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    d = x.shape[-1]
    if weights is not None:
        weights = C.float_tensor(weights, "weights", min_dim=4)
        batch = tuple(x.shape[:-2])
        if tuple(weights.shape[-4:]) != (depth, 3, d, d) or tuple(
            weights.shape[:-4]
        ) not in ((), batch):
            raise ValueError(
                f"weights must have shape ({depth}, 3, {d}, {d}) or {batch + (depth, 3, d, d)}, "
                f"got {tuple(weights.shape)}"
            )
    states = [x]
    for layer in range(depth):
        h = layer_norm(x) if norm == "pre" else x
        if weights is None:
            q = k = v = h
        else:
            w = weights[..., layer, :, :, :].transpose(
                -1, -2
            )  # (..., 3, d, d), transposed maps
            q, k, v = h @ w[..., 0, :, :], h @ w[..., 1, :, :], h @ w[..., 2, :, :]
        out = eta * softmax_attention(q, k, v, beta=beta)
        x = x + out if residual else out
        if norm == "post":
            x = layer_norm(x)
        states.append(x)
    return torch.stack(states)


def pairwise_distances(x: Tensor) -> Tensor:
    """Distances :math:`\\|x_i - x_j\\|` for all pairs ``i < j`` of the rows of ``x`` ``(..., n, d)``.

    Computed from the differences themselves (not from :math:`|x|^2 + |y|^2 - 2x\\cdot y`), so
    distances far below the tokens' norms keep their relative precision.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    n = x.shape[-2]
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    return (x[..., iu[0], :] - x[..., iu[1], :]).norm(dim=-1)


def diameter(x: Tensor) -> Tensor:
    """Diameter :math:`\\max_{i,j}\\|x_i - x_j\\|` of the token cloud(s) ``x`` ``(..., n, d)``."""
    return pairwise_distances(x).amax(dim=-1)


def growth_rate(diameters: Tensor, *, start: int = 0) -> Tensor:
    r"""Mean log growth per layer, :math:`\log(D_L / D_s) / (L - s)`, of diameters ``(..., L + 1)``.

    ``diameters[..., l]`` is the diameter after layer ``l`` (as from :func:`diameter` applied to
    :func:`self_attention_stack`), :math:`s` = ``start``. A geometric growth :math:`D_l = D_0 r^l`
    gives :math:`\log r`; a cloud that does not grow gives a value :math:`\le 0`.
    """
    diameters = C.float_tensor(diameters, "diameters")
    n_layers = diameters.shape[-1] - 1
    if (
        isinstance(start, bool)
        or not isinstance(start, int)
        or not 0 <= start < n_layers
    ):
        raise ValueError(f"start must be an int in [0, {n_layers}), got {start!r}")
    if bool((diameters[..., [start, -1]] <= 0).any()):
        raise ValueError("diameters at the start and the end must be positive")
    return torch.log(diameters[..., -1] / diameters[..., start]) / (n_layers - start)


def jacobian_asymmetry(f: Callable[[Tensor], Tensor], q: Tensor) -> Tensor:
    r"""Relative asymmetry :math:`\|J - J^\top\|_F / \|J\|_F` of the Jacobian of ``f`` at each query.

    ``f`` maps one query ``(d,)`` to ``(d,)``; ``q`` is ``(n, d)``. A field is (locally) the gradient
    of a scalar potential only if its Jacobian is symmetric, so a value of order one says that no
    energy can describe the update. Computed with ``torch.func.jacrev`` and ``vmap``.
    """
    q = C.float_tensor(q, "q", min_dim=2)
    jac = torch.func.vmap(torch.func.jacrev(f))(q)
    return torch.linalg.matrix_norm(
        jac - jac.transpose(-1, -2)
    ) / torch.linalg.matrix_norm(jac)


def _split_weights(weights: Tensor | None, depth: int, d: int) -> Tensor | None:
    if weights is None:
        return None
    weights = C.float_tensor(weights, "weights", min_dim=4)
    if tuple(weights.shape[-4:]) != (depth, 3, d, d):
        raise ValueError(f"weights must end in ({depth}, 3, {d}, {d}), got {tuple(weights.shape)}")
    return weights


def layer_factors(
    x: Tensor,
    depth: int,
    *,
    beta: float,
    weights: Tensor | None = None,
    ln_weight: Tensor | None = None,
    ln_bias: Tensor | None = None,
    sign: float = 1.0,
    residual: bool = True,
    floor: float = 1e-9,
) -> dict[str, Tensor]:
    r"""Per-layer expansion of attention and contraction of layer norm through a post-norm stack.

    Layer :math:`\ell` maps the tokens :math:`X` ``(..., n, d)`` to
    :math:`Y = X + s\,\mathrm{Attn}(XW_Q^\top, XW_K^\top, XW_{OV}^\top)` (``sign`` :math:`s`;
    without ``residual``, :math:`Y = s\,\mathrm{Attn}`) and then to
    :math:`X' = \gamma_\ell\odot\mathrm{LN}(Y) + b_\ell` (layer norm with its affine part).
    ``weights`` ``(depth, 3, d, d)`` (or with the batch shape of ``x`` in front) holds
    :math:`W_Q, W_K, W_{OV} = W_O W_V` per layer (``None``: identity maps, keys = queries =
    values); ``ln_weight``, ``ln_bias`` are ``(depth, d)`` (``None``: no affine part).

    With :math:`\bar D(Z)` the mean distance over the token pairs of :math:`Z`, returns
    ``expansion`` :math:`e_\ell = \bar D(Y)/\bar D(X)` and ``contraction``
    :math:`c_\ell = \bar D(X')/\bar D(Y)` (``(..., depth)``; their product is the layer's net
    factor), ``min_ratio``: the smallest :math:`\|y_i-y_j\|/\|x_i-x_j\|` over the pairs of the
    layer, which is at least 1 for identity maps, ``sign=1`` (the ascent step over the layer's
    own tokens as fixed keys, chapter 1, claim 1.3), counting only pairs farther apart than
    ``floor`` times the cloud's largest norm (collapsed pairs carry only round-off), and
    ``states`` ``(depth + 1, ..., n, d)``. A layer whose input (or attention output) cloud has
    collapsed (mean pair distance at most ``floor`` times its largest norm) gets
    :math:`e_\ell = c_\ell = 1` and ``live`` ``(..., depth)`` False there.
    """
    x = C.float_tensor(x, "x", min_dim=2)
    C.positive_int(depth, "depth")
    d = x.shape[-1]
    weights = _split_weights(weights, depth, d)
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is not None and tuple(t.shape) != (depth, d):
            raise ValueError(f"{name} must have shape ({depth}, {d}), got {tuple(t.shape)}")
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be a bool, got {type(residual).__name__}")
    e, c, mr, lv, states = [], [], [], [], [x]
    for layer in range(depth):
        if weights is None:
            q = k = v = x
        else:
            w = weights[..., layer, :, :, :].transpose(-1, -2)
            q, k, v = x @ w[..., 0, :, :], x @ w[..., 1, :, :], x @ w[..., 2, :, :]
        a = sign * softmax_attention(q, k, v, beta=beta)
        y = x + a if residual else a
        xn = layer_norm(
            y,
            weight=None if ln_weight is None else ln_weight[layer],
            bias=None if ln_bias is None else ln_bias[layer],
        )
        dx, dy, dn = pairwise_distances(x), pairwise_distances(y), pairwise_distances(xn)
        scale = x.norm(dim=-1).amax(-1, keepdim=True)
        # a cloud collapsed to round-off (or a cloud y collapsed by attention) has no factor:
        # it counts as unchanged, e = c = 1
        ok_x = dx.mean(-1) > floor * scale[..., 0]
        ok_y = ok_x & (dy.mean(-1) > floor * y.norm(dim=-1).amax(-1))
        one = torch.ones_like(ok_x, dtype=x.dtype)
        e.append(torch.where(ok_y, dy.mean(-1) / torch.where(ok_x, dx.mean(-1), one), one))
        c.append(torch.where(ok_y, dn.mean(-1) / torch.where(ok_y, dy.mean(-1), one), one))
        lv.append(ok_y)
        live = dx > floor * scale
        ratio = torch.where(live, dy / torch.where(live, dx, torch.ones_like(dx)), torch.inf)
        mr.append(ratio.amin(-1))
        x = xn
        states.append(x)
    return {
        "expansion": torch.stack(e, -1),
        "contraction": torch.stack(c, -1),
        "min_ratio": torch.stack(mr, -1),
        "live": torch.stack(lv, -1),
        "states": torch.stack(states),
    }


def imbalance(expansion: Tensor, contraction: Tensor) -> Tensor:
    r"""How far layer norm is from cancelling attention's expansion, over the layers (last dim).

    .. math:: I = \frac{\sum_\ell |\log e_\ell + \log c_\ell|}{\sum_\ell |\log e_\ell|}

    :math:`I = 0`: layer norm undoes each layer's expansion exactly (the net factor is 1);
    :math:`I = 1`: the net change is as large as attention's alone, as when layer norm does
    nothing (:math:`c = 1`) or contracts twice as much as attention expands (:math:`c = e^{-2}`,
    a collapse); :math:`I < 1` means that layer norm contracts by less than twice attention's
    expansion and cancels more of it than it leaves. Inputs ``(..., depth)``, output ``(...)``.
    """
    expansion = C.float_tensor(expansion, "expansion")
    contraction = C.float_tensor(contraction, "contraction")
    if expansion.shape != contraction.shape:
        raise ValueError("expansion and contraction must have the same shape")
    if bool((expansion <= 0).any()) or bool((contraction <= 0).any()):
        raise ValueError("factors must be positive")
    le, lc = expansion.log(), contraction.log()
    return (le + lc).abs().sum(-1) / le.abs().sum(-1)


def ascent_alignment(w_q: Tensor, w_k: Tensor, w_ov: Tensor) -> Tensor:
    r"""Cosine between :math:`W_O W_V` and :math:`W_Q^\top W_K` (Frobenius), per layer.

    The sublayer :math:`x \mapsto W_{OV}\,\mathbb E_{p_x}[y]`, with
    :math:`p_x(j) \propto \exp(\beta\, x^\top W_Q^\top W_K y_j)`, equals
    :math:`c\,\nabla A(x)` for :math:`A(x) = \log\sum_j \exp(\beta x^\top W_Q^\top W_K y_j)` exactly
    when :math:`W_{OV} = c\,\beta W_Q^\top W_K`: a gradient-ascent step for :math:`c > 0` (cosine
    1), a descent step for :math:`c < 0` (cosine -1). Inputs ``(..., d, d)`` (maps acting on
    column vectors, as in ``torch.nn.Linear``); returns ``(...)``.
    """
    w_q = C.float_tensor(w_q, "w_q", min_dim=2)
    w_k = C.float_tensor(w_k, "w_k", min_dim=2)
    w_ov = C.float_tensor(w_ov, "w_ov", min_dim=2)
    m = w_q.transpose(-1, -2) @ w_k
    if m.shape != w_ov.shape:
        raise ValueError(f"W_Q^T W_K {tuple(m.shape)} and W_OV {tuple(w_ov.shape)} differ in shape")
    num = (m * w_ov).sum((-1, -2))
    return num / (torch.linalg.matrix_norm(m) * torch.linalg.matrix_norm(w_ov))


def histogram_task(
    n_seq: int, length: int, vocab: int, *, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    r"""The histogram task: for each position, how often its token occurs in the sequence.

    Returns tokens ``(n_seq, length)`` drawn uniformly from ``vocab`` symbols and targets
    ``(n_seq, length)`` in ``0..length-1`` (the count minus one). Attention solves it by letting
    equal tokens attend to each other, with no positional information needed.
    """
    for name, v in (("n_seq", n_seq), ("length", length), ("vocab", vocab)):
        C.positive_int(v, name)
    tokens = torch.randint(0, vocab, (n_seq, length), generator=generator)
    counts = (tokens[:, :, None] == tokens[:, None, :]).sum(-1) - 1
    return tokens, counts


class PostNormAttention(torch.nn.Module):
    r"""A post-norm, attention-only Transformer: embedding, ``depth`` layers, linear read-out.

    Layer :math:`\ell`: :math:`X \mapsto \gamma_\ell\odot\mathrm{LN}(X + \mathrm{Attn}(XW_Q^\top,
    XW_K^\top, XW_V^\top)W_O^\top) + b_\ell`, one head, inverse temperature
    :math:`\beta = 1/\sqrt d`, no MLP: the attention sublayer and layer norm of Shim (2022) and
    nothing else. :meth:`stack` returns the maps in the layout of :func:`layer_factors`.
    """

    def __init__(self, vocab: int, d: int, depth: int, n_out: int, *, generator: torch.Generator):
        super().__init__()
        for name, v in (("vocab", vocab), ("d", d), ("depth", depth), ("n_out", n_out)):
            C.positive_int(v, name)
        self.d, self.depth, self.beta = d, depth, 1 / math.sqrt(d)

        def mat(*shape: int) -> torch.nn.Parameter:
            return torch.nn.Parameter(torch.randn(*shape, generator=generator) / math.sqrt(shape[-1]))

        self.embed = torch.nn.Parameter(torch.randn(vocab, d, generator=generator))
        self.w = mat(depth, 4, d, d)  # W_Q, W_K, W_V, W_O per layer
        self.ln_weight = torch.nn.Parameter(torch.ones(depth, d))
        self.ln_bias = torch.nn.Parameter(torch.zeros(depth, d))
        self.readout = mat(n_out, d)

    def stack(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(weights (depth, 3, d, d) = [W_Q, W_K, W_O W_V], ln_weight, ln_bias)``, detached."""
        w = self.w.detach()
        return (
            torch.stack([w[:, 0], w[:, 1], w[:, 3] @ w[:, 2]], 1),
            self.ln_weight.detach(),
            self.ln_bias.detach(),
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(..., length, n_out)`` for tokens ``(..., length)``."""
        x = self.embed[tokens]
        for layer in range(self.depth):
            wq, wk, wv, wo = self.w[layer]
            a = softmax_attention(x @ wq.T, x @ wk.T, x @ wv.T, beta=self.beta) @ wo.T
            x = torch.nn.functional.layer_norm(
                x + a, (self.d,), self.ln_weight[layer], self.ln_bias[layer], eps=1e-5
            )
        return x @ self.readout.T


def train_histogram(
    seed: int,
    *,
    d: int = 16,
    depth: int = 3,
    vocab: int = 8,
    length: int = 8,
    steps: int = 300,
    batch: int = 128,
    lr: float = 3e-3,
) -> tuple[PostNormAttention, float]:
    """Train :class:`PostNormAttention` on :func:`histogram_task` with Adam, all from ``seed``.

    The default learning rate keeps training stable to round-off: at ``1e-2`` a relative change
    of ``1e-13`` in the initial weights moved the trained model's per-layer factors by tenths
    (chaotic training), at ``3e-3`` by about ``1e-10``.

    Returns the model and its token accuracy on 1,024 fresh sequences. Used by chapter 1 for the
    per-layer factors of trained maps.
    """
    g = torch.Generator().manual_seed(seed)
    model = PostNormAttention(vocab, d, depth, length, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(C.positive_int(steps, "steps")):
        tokens, target = histogram_task(batch, length, vocab, generator=g)
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    tokens, target = histogram_task(1024, length, vocab, generator=g)
    with torch.no_grad():
        acc = float((model(tokens).argmax(-1) == target).double().mean())
    return model, acc
