r"""Cross-attention between two domains as a binary kernel machine, trained on keyed retrieval
(chapter 4, claims 4.5i-k and 4.6, after Wright & Gonzalez 2021).

One attention head whose queries come from a domain :math:`T` (``n_query`` symbols with their own
embedding of width ``d_query``) and whose keys come from a domain :math:`S` (``n_key`` symbols,
embedding width ``d_key``):

.. math:: q(t) = W_Q E_T[t],\qquad k(s) = W_K E_S[s],\qquad
          y(t) = \sum_{j} \frac{\kappa(q(t), k(s_j))}{\sum_l \kappa(q(t), k(s_l))}\, E_V[v_j],

and logits :math:`W_o\, y(t) + b` over the ``n_values`` classes. The output is a kernel expansion
over the key domain with the values as coefficients: a *binary* kernel machine, whose kernel
:math:`\kappa(q(t), k(s))` is defined on :math:`T\times S` and whose Gram matrix
(:meth:`CrossKernelAttention.gram`) is ``n_query x n_key``.

Task (:func:`keyed_retrieval`): every example shows **all** ``n_key`` key symbols, each with a
random value; query :math:`t` asks for the value stored with key :math:`r(t)` (``relation``, an
injection :math:`T\to S`). There are no positions, so the attention matrix over all query and key
symbols is the same for every example. For a positive kernel with :math:`D` features it is
row-stochastic of rank at most :math:`D`, so the mean weight on the matching key is at most
:math:`D/n_{key}` (as :func:`lib.kernel_transformer.retrieval_mass`), trained or not: the task on
which a feature dimension below the number of keys must show.

``joint=True`` lets each query also attend to the query symbols themselves (keys and values from
both domains): its output is then **not** an expansion over the key domain alone (the control of
chapter 4's claim 4.6a). Randomness only through explicit seeds and generators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from . import _checks as C
from .kernel_transformer import EarlyStopping, EarlyStoppingRun
from .kernels import Kernel, kernel_attention

Tensor = torch.Tensor

__all__ = [
    "CrossKernelAttention",
    "RetrievalRun",
    "expansion_residual",
    "keyed_retrieval",
    "psd_completion",
    "train_retrieval",
]


class CrossKernelAttention(nn.Module):
    r"""One kernel-attention head from a query domain :math:`T` to a key domain :math:`S`.

    ``forward(values (B, n_key) long) -> logits (B, n_query, n_values)``: the value of key symbol
    ``j`` in example ``b`` is ``values[b, j]``; every query symbol is asked in every example.
    ``kernel`` is any :class:`lib.kernels.Kernel` (applied through
    :func:`lib.kernels.kernel_attention`), ``d_head`` the width of :math:`q, k`. The query and key
    embeddings are separate tables of widths ``d_query`` and ``d_key`` (two domains); the maps
    :math:`W_Q, W_K` have no bias, so the kernel is exactly :math:`\kappa(W_Q E_T[t], W_K E_S[s])`.
    ``joint=True``: the query symbols are keys too (with their own learned value vectors).
    """

    def __init__(self, n_query: int, n_key: int, n_values: int, kernel: Kernel, *, d_head: int = 8,
                 d_query: int = 16, d_key: int = 16, d_value: int = 16, joint: bool = False) -> None:
        super().__init__()
        for name, val in (("n_query", n_query), ("n_key", n_key), ("n_values", n_values),
                          ("d_head", d_head), ("d_query", d_query), ("d_key", d_key), ("d_value", d_value)):
            C.positive_int(val, name)
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}")
        self.kernel, self.joint = kernel, bool(joint)
        self.n_query, self.n_key, self.n_values = n_query, n_key, n_values
        self.E_T = nn.Embedding(n_query, d_query)
        self.E_S = nn.Embedding(n_key, d_key)
        self.E_V = nn.Embedding(n_values, d_value)
        self.W_Q = nn.Linear(d_query, d_head, bias=False)
        self.W_K = nn.Linear(d_key, d_head, bias=False)
        if self.joint:
            self.W_KT = nn.Linear(d_query, d_head, bias=False)
            self.V_T = nn.Parameter(torch.randn(n_query, d_value) * 0.1)
        self.out = nn.Linear(d_value, n_values)

    def queries(self) -> Tensor:
        r""":math:`q(t) = W_Q E_T[t]` for every query symbol, ``(n_query, d_head)``."""
        return self.W_Q(self.E_T.weight)

    def keys(self) -> Tensor:
        r""":math:`k(s) = W_K E_S[s]` for every key symbol, ``(n_key, d_head)``."""
        return self.W_K(self.E_S.weight)

    def _keys_all(self) -> Tensor:
        k = self.keys()
        return torch.cat([k, self.W_KT(self.E_T.weight)], 0) if self.joint else k

    def _weights(self) -> Tensor:
        k = self._keys_all()
        eye = torch.eye(k.shape[0], dtype=k.dtype, device=k.device)[None]
        return kernel_attention(self.queries()[None], k[None], eye, self.kernel)[0]

    def attend(self, values: Tensor) -> Tensor:
        r"""The head's output :math:`y(t)` before the read-out, ``(B, n_query, d_value)``.

        The attention weights do not depend on the example (every key symbol is present, no
        positions), so they are computed once, by :func:`lib.kernels.kernel_attention` with the
        identity as values (:meth:`weights`), and applied to every example's values."""
        if values.dtype != torch.long or values.dim() != 2 or values.shape[1] != self.n_key:
            raise ValueError(f"values must be a (B, {self.n_key}) long tensor, got {tuple(values.shape)}")
        B = values.shape[0]
        v = self.E_V(values)  # (B, n_key, d_value)
        if self.joint:
            v = torch.cat([v, self.V_T[None].expand(B, -1, -1)], 1)
        return torch.einsum("ts,bse->bte", self._weights(), v)

    def forward(self, values: Tensor) -> Tensor:
        return self.out(self.attend(values))

    def weights(self) -> Tensor:
        r"""Attention weights :math:`A_{ts}` over all query and key symbols, ``(n_query, n_key)``
        (``n_key + n_query`` columns when ``joint``): :func:`lib.kernels.kernel_attention` of the
        learned queries and keys with the identity as values."""
        with torch.no_grad():
            return self._weights()

    def gram(self, *, dtype: torch.dtype = torch.float64) -> Tensor:
        r"""The learned Gram matrix :math:`K_{ts} = \kappa(q(t), k(s))` over :math:`T\times S`,
        ``(n_query, n_key)``, from :meth:`lib.kernels.Kernel.gram` in ``dtype`` (an independent
        route from the attention's fused kernels)."""
        with torch.no_grad():
            return self.kernel.gram(self.queries().to(dtype), self.keys().to(dtype))


def keyed_retrieval(batch: int, *, n_key: int, n_values: int, generator: torch.Generator) -> Tensor:
    r"""Random values ``(batch, n_key)`` in ``[0, n_values)``: key symbol ``j`` of example ``b``
    stores ``values[b, j]``. The target of query :math:`t` is ``values[:, relation[t]]``."""
    B, n, V = (C.positive_int(a, b) for a, b in ((batch, "batch"), (n_key, "n_key"), (n_values, "n_values")))
    return torch.randint(0, V, (B, n), generator=generator)


def expansion_residual(model: CrossKernelAttention, values: Tensor) -> float:
    r"""How far the head's output is from a kernel expansion over the key domain.

    .. math:: \max_{b,t}\frac{\big\|y_b(t) - \sum_j K_{t s_j} E_V[v_{bj}] / \sum_l K_{t s_l}\big\|}
              {\max_{b,t}\|y_b(t)\|}

    with :math:`K` from :meth:`CrossKernelAttention.gram` (float64, the kernel's closed form) and
    :math:`y` from the model's forward route (float32, fused or linear attention). Round-off for a
    plain cross-attention head; of the order of the query-domain share of the weights for a
    ``joint`` head, whose output is not an expansion over the key domain alone.
    """
    if not isinstance(model, CrossKernelAttention):
        raise TypeError("model must be a CrossKernelAttention")
    with torch.no_grad():
        y = model.attend(values).double()
        K = model.gram()
        w = K / K.sum(-1, keepdim=True)
        y_exp = torch.einsum("ts,bsd->btd", w, model.E_V(values).double())
        return float((y - y_exp).norm(dim=-1).max() / y.norm(dim=-1).max())


def psd_completion(K: Tensor) -> Tensor:
    r"""A positive semi-definite matrix on the disjoint union :math:`T\sqcup S` whose off-diagonal
    block is the cross-domain Gram matrix ``K`` ``(n_T, n_S)``:

    .. math:: M = \begin{pmatrix} \sigma_1 I & K \\ K^\top & \sigma_1 I\end{pmatrix},
              \qquad \operatorname{spec}(M) = \{\sigma_1 \pm \sigma_i\} \cup \{\sigma_1\} \ge 0,

    :math:`\sigma_1` the largest singular value of ``K``. Any cross-domain block is the restriction
    of *some* Mercer kernel on :math:`T\sqcup S` (choose its within-domain values freely), so
    symmetry and definiteness, properties of a square Gram matrix on one common set, say nothing
    about a binary kernel given only on :math:`T\times S`. Chapter 4, check 4.6c.
    """
    K = C.float_tensor(K, "K", min_dim=2)
    if K.dim() != 2:
        raise ValueError(f"K must be (n_T, n_S), got {tuple(K.shape)}")
    s1 = torch.linalg.matrix_norm(K, ord=2)
    a, b = K.shape
    top = torch.cat([s1 * torch.eye(a, dtype=K.dtype), K], 1)
    bottom = torch.cat([K.T, s1 * torch.eye(b, dtype=K.dtype)], 1)
    return torch.cat([top, bottom], 0)


@dataclass
class RetrievalRun:
    r"""One training run of :func:`train_retrieval`: test accuracy and mean attention weight on the
    matching key (``mass``) of the scored model, the same two at the fixed ``budget``
    (``accuracy_budget``, ``mass_budget``), how and when it stopped, the validation curve
    ``(step, loss, accuracy)`` and the model."""

    kernel: str
    seed: int
    accuracy: float
    mass: float
    steps: int
    best_step: int
    stop: str
    accuracy_budget: float = math.nan
    mass_budget: float = math.nan
    val_curve: list[tuple[int, float, float]] = field(default_factory=list)
    relation: Tensor | None = None
    model: CrossKernelAttention | None = None

    def accuracy_at(self, step: int) -> float:
        """Validation accuracy at the last evaluation at or before ``step`` (a fixed-budget reading
        of the learning curve; a run that stopped earlier keeps its last value)."""
        step = C.positive_int(step, "step")
        seen = [a for s, _, a in self.val_curve if s <= step]
        if not seen:
            raise ValueError(f"no validation evaluation at or before step {step}")
        return float(seen[-1])


def _accuracy_loss(model: CrossKernelAttention, values: Tensor, relation: Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(values)
        y = values[:, relation]
        loss = float(nn.functional.cross_entropy(logits.reshape(-1, model.n_values), y.reshape(-1)))
        acc = float((logits.argmax(-1) == y).double().mean())
    model.train()
    return acc, loss


def train_retrieval(kernel: Kernel, *, seed: int, n_key: int, n_values: int, n_query: int | None = None,
                    steps: int = 300, batch: int = 32, lr: float = 1e-2, d_head: int = 8,
                    d_query: int = 16, d_key: int = 16, d_value: int = 16, joint: bool = False,
                    n_test: int = 256, eval_every: int = 25, warmup: int = 20, budget: int | None = None,
                    early_stopping: EarlyStopping | None = None) -> RetrievalRun:
    r"""Train a :class:`CrossKernelAttention` on :func:`keyed_retrieval` and score it.

    ``n_query`` query symbols (default ``n_key``) ask for keys ``relation = randperm(n_key)[:n_query]``
    (drawn from ``seed``). Adam at a constant learning rate after a linear warm-up of ``warmup``
    steps (independent of ``steps``, so every run of one seed follows the same trajectory); fresh
    values every step. Without ``early_stopping``: ``steps`` steps, the final model scored, the
    validation curve still recorded every ``eval_every`` steps. With it: the rule of
    :class:`lib.kernel_transformer.EarlyStopping` (solved validation set, or a plateau after the
    learning-rate drops), at most ``steps`` steps, the best-validation checkpoint scored.
    ``budget``: the model after exactly ``budget`` steps is scored as well (the fixed-budget
    result; a run that stopped earlier is scored as it stopped). Test accuracy over ``n_test``
    examples x every query; ``mass`` is the mean of :math:`A_{t, r(t)}` over query symbols.
    Chapter 4, claims 4.5i-k and 4.6.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError("seed must be an int")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    n_query = n_key if n_query is None else C.positive_int(n_query, "n_query")
    if n_query > C.positive_int(n_key, "n_key"):
        raise ValueError(f"n_query={n_query} must be <= n_key={n_key} (the relation is an injection)")
    batch, n_test = C.positive_int(batch, "batch"), C.positive_int(n_test, "n_test")
    eval_every, lr = C.positive_int(eval_every, "eval_every"), C.positive(lr, "lr")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError("early_stopping must be an EarlyStopping or None")
    es = early_stopping
    relation = torch.randperm(n_key, generator=torch.Generator().manual_seed(77 + seed))[:n_query]
    torch.manual_seed(seed)
    model = CrossKernelAttention(n_query, n_key, n_values, kernel, d_head=d_head, d_query=d_query,
                                 d_key=d_key, d_value=d_value, joint=joint)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    warm = C.positive_int(warmup, "warmup")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm))
    g = torch.Generator().manual_seed(20_000 + seed)
    n_val = es.n_val if es is not None else 128
    val = keyed_retrieval(n_val, n_key=n_key, n_values=n_values,
                          generator=torch.Generator().manual_seed(444_444 + seed))
    every = es.eval_every if es is not None else eval_every
    test = keyed_retrieval(n_test, n_key=n_key, n_values=n_values,
                           generator=torch.Generator().manual_seed(999_999))
    rows = torch.arange(n_query)

    def score() -> tuple[float, float]:
        acc, _ = _accuracy_loss(model, test, relation)
        return acc, float(model.weights()[rows, relation].mean())

    at_budget = (math.nan, math.nan)
    curve: list[tuple[int, float, float]] = []
    run = None if es is None else EarlyStoppingRun(es, model, opt, sched)
    stop = "fixed" if es is None or steps == 0 else "max_steps"
    done = 0
    for step in range(1, steps + 1):
        vals = keyed_retrieval(batch, n_key=n_key, n_values=n_values, generator=g)
        logits = model(vals)
        loss = nn.functional.cross_entropy(logits.reshape(-1, n_values), vals[:, relation].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done = step
        if budget is not None and step == budget:
            at_budget = score()
        if step % every:
            continue
        vacc, vloss = _accuracy_loss(model, val, relation)
        curve.append((step, vloss, vacc))
        if run is None:
            continue
        reason = run.update(step, vloss, vacc)
        if reason is not None:
            stop = reason
            break
    if budget is not None and done < budget:  # stopped before the budget: scored as it stopped
        at_budget = score()
    best_step = run.best_step if run is not None and run.restore() else done
    acc, mass = score()
    return RetrievalRun(kernel=getattr(kernel, "name", type(kernel).__name__), seed=seed, accuracy=acc,
                        mass=mass, steps=done, best_step=best_step, stop=stop, accuracy_budget=at_budget[0],
                        mass_budget=at_budget[1], val_curve=curve, relation=relation, model=model)
