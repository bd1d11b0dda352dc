r"""A small Transformer with a pluggable attention kernel, and seeded synthetic sequence tasks
(chapter 4, claim 4.5: kernel substitution after Wright & Gonzalez 2021).

Every attention head computes the normalised kernel smoother of :func:`lib.kernels.kernel_attention`,

.. math:: y_i = \sum_j \frac{\kappa(q_i, k_j)}{\sum_l \kappa(q_i, k_l)}\, v_j ,

so swapping :math:`\kappa` (exponentiated dot product, RBF, Laplacian, polynomials, feature maps)
changes nothing else in the model. The tasks need sharp, content- or position-addressed attention:

* :func:`associative_recall`: key-value pair tokens, then queries asking for the value of a key;
* :func:`reversal`: output the input sequence reversed;
* :class:`ToyTranslation`: a synthetic grammar (subject-verb-object noun phrases with optional
  adjectives) translated into a language with subject-object-verb order, nouns before their
  adjectives and a different vocabulary; scored by exact match and :func:`corpus_bleu`.

All tasks are sequence labelling with equal input and output lengths (a non-autoregressive
encoder), so one training step is one forward/backward pass. :func:`train_task` trains either for
a fixed budget or to convergence (:class:`EarlyStopping`: validation-loss plateau or a solved
validation set, best checkpoint scored). Randomness only through explicit ``torch.Generator``
arguments (and the seeded global generator for the model's initialisation).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from . import _checks as C
from .kernels import (
    RBF,
    ExpDot,
    FeatureMapKernel,
    Kernel,
    Laplacian,
    Polynomial,
    elu_feature_map,
    kernel_attention,
)

Tensor = torch.Tensor
IGNORE = -100

__all__ = [
    "IGNORE",
    "EarlyStopping",
    "GroupGap",
    "KernelSelfAttention",
    "KernelTransformer",
    "TaskBatch",
    "ToyTranslation",
    "TrainResult",
    "associative_recall",
    "best_retrieval_mass",
    "corpus_bleu",
    "exact_match",
    "group_gap",
    "kernel_suite",
    "make_task",
    "paired_gaps",
    "retrieval_mass",
    "reversal",
    "token_accuracy",
    "train_task",
    "validation_accuracy_at",
]


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class KernelSelfAttention(nn.Module):
    r"""Multi-head self-attention whose weights are :math:`\kappa(q_i,k_j)/\sum_l\kappa(q_i,k_l)`.

    ``x`` ``(B, n, d_model)`` -> ``(B, n, d_model)``; ``kernel`` is any :class:`lib.kernels.Kernel`
    applied per head to ``(B, H, n, d_model/H)`` queries and keys. ``key_mask`` ``(B, n)`` bool
    (True = real token) hides padding keys.
    """

    def __init__(self, d_model: int, n_heads: int, kernel: Kernel) -> None:
        super().__init__()
        d_model, n_heads = C.positive_int(d_model, "d_model"), C.positive_int(n_heads, "n_heads")
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}")
        self.h, self.dh, self.kernel = n_heads, d_model // n_heads, kernel
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        B, n, _ = x.shape
        q, k, v = self.qkv(x).view(B, n, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :].expand(B, self.h, n, n)
        y = kernel_attention(q, k, v, self.kernel, mask=mask)
        return self.out(y.transpose(1, 2).reshape(B, n, self.h * self.dh))


class KernelTransformer(nn.Module):
    r"""Pre-LayerNorm Transformer encoder with kernelised attention and a per-token output head.

    Token and learned position embeddings, ``n_layers`` blocks
    :math:`x \leftarrow x + \mathrm{Attn}_\kappa(\mathrm{LN}(x))`,
    :math:`x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x))`, a final LayerNorm and a linear read-out to
    ``n_out`` classes. ``forward(tokens (B, n) long, key_mask (B, n) bool | None) -> (B, n, n_out)``.
    """

    def __init__(self, vocab: int, n_out: int, max_len: int, kernel: Kernel, *, d_model: int = 32,
                 n_heads: int = 4, n_layers: int = 2, d_ff: int = 64) -> None:
        super().__init__()
        for name, val in (("vocab", vocab), ("n_out", n_out), ("max_len", max_len), ("n_layers", n_layers),
                          ("d_ff", d_ff)):
            C.positive_int(val, name)
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.attn = nn.ModuleList([KernelSelfAttention(d_model, n_heads, kernel) for _ in range(n_layers)])
        self.ln1 = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(n_layers)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(n_layers)])
        self.ff = nn.ModuleList([nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
                                 for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_out)
        self.max_len = max_len

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        if tokens.dtype != torch.long or tokens.dim() != 2:
            raise TypeError("tokens must be a (B, n) tensor of dtype long")
        n = tokens.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds max_len={self.max_len}")
        x = self.tok(tokens) + self.pos(torch.arange(n, device=tokens.device))
        for attn, ln1, ln2, ff in zip(self.attn, self.ln1, self.ln2, self.ff):
            x = x + attn(ln1(x), key_mask)
            x = x + ff(ln2(x))
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------

@dataclass
class TaskBatch:
    """Inputs ``x`` (B, n) long, targets ``y`` (B, n) long with :data:`IGNORE` where no loss is
    taken, and ``key_mask`` (B, n) bool (True = real token) or ``None``."""

    x: Tensor
    y: Tensor
    key_mask: Tensor | None = None


def associative_recall(batch: int, *, n_pairs: int = 8, n_keys: int = 16, n_values: int = 16,
                       generator: torch.Generator) -> TaskBatch:
    r"""Associative recall: ``n_pairs`` key-value tokens, then ``n_pairs`` query tokens.

    Token ``key * n_values + value`` encodes a pair (keys distinct within a sequence); token
    ``n_keys * n_values + key`` asks for ``key``. The target at each query position is the value
    stored with that key in the same sequence: the query must attend to the one matching pair
    among ``n_pairs`` (content-based, sharp attention). Vocabulary ``n_keys * (n_values + 1)``,
    ``n_out = n_values``.
    """
    B = C.positive_int(batch, "batch")
    P, K, V = (C.positive_int(a, b) for a, b in ((n_pairs, "n_pairs"), (n_keys, "n_keys"), (n_values, "n_values")))
    if P > K:
        raise ValueError(f"n_pairs={P} must be <= n_keys={K} (keys are distinct)")
    keys = torch.rand(B, K, generator=generator).argsort(-1)[:, :P]
    vals = torch.randint(0, V, (B, P), generator=generator)
    order = torch.rand(B, P, generator=generator).argsort(-1)
    qkeys = keys.gather(1, order)
    x = torch.cat([keys * V + vals, K * V + qkeys], dim=1)
    y = torch.cat([torch.full((B, P), IGNORE), vals.gather(1, order)], dim=1)
    return TaskBatch(x, y)


def reversal(batch: int, *, length: int = 12, vocab: int = 16, generator: torch.Generator) -> TaskBatch:
    r"""Sequence reversal: ``y_i = x_{n-1-i}`` for random tokens ``x`` of a ``vocab``-symbol alphabet
    (position-addressed attention: each output position must attend to exactly one input position)."""
    B, n, Vv = C.positive_int(batch, "batch"), C.positive_int(length, "length"), C.positive_int(vocab, "vocab")
    x = torch.randint(0, Vv, (B, n), generator=generator)
    return TaskBatch(x, x.flip(1))


class ToyTranslation:
    r"""A synthetic translation task with reordering and a vocabulary map.

    Source grammar (English-like, SVO, adjectives before the noun)::

        S  -> NP V NP          NP -> Det Adj^a Noun,  a in {0, ..., max_adj}

    Target (SOV, nouns before their adjectives, every word mapped by a fixed random bijection of
    the lexicon)::

        S' -> NP' NP' V'       NP' -> Det' Noun' Adj'^a

    Sentences have length ``5 .. 5 + 2 max_adj`` and are padded; source and target have the same
    length, so the task is sequence labelling whose output position ``i`` must find its source word
    from the sentence's structure. The lexicon map is drawn from ``seed``.
    """

    def __init__(self, *, n_det: int = 2, n_adj: int = 6, n_noun: int = 10, n_verb: int = 8,
                 max_adj: int = 2, seed: int = 0) -> None:
        self.sizes = {c: C.positive_int(v, f"n_{c}") for c, v in
                      (("det", n_det), ("adj", n_adj), ("noun", n_noun), ("verb", n_verb))}
        if isinstance(max_adj, bool) or not isinstance(max_adj, int) or max_adj < 0:
            raise ValueError(f"max_adj must be an int >= 0, got {max_adj!r}")
        self.max_adj = max_adj
        offs, o = {}, 1  # id 0 = PAD
        for c in ("det", "adj", "noun", "verb"):
            offs[c] = o
            o += self.sizes[c]
        self.offsets, self.vocab = offs, o
        g = torch.Generator().manual_seed(int(seed))
        self.word_map = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(o - 1, generator=g)])
        self.max_len = 5 + 2 * max_adj
        self.pad = 0

    def _np(self, B: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        det = self.offsets["det"] + torch.randint(0, self.sizes["det"], (B,), generator=g)
        noun = self.offsets["noun"] + torch.randint(0, self.sizes["noun"], (B,), generator=g)
        adj = self.offsets["adj"] + torch.randint(0, self.sizes["adj"], (B, max(self.max_adj, 1)), generator=g)
        na = torch.randint(0, self.max_adj + 1, (B,), generator=g)
        return det, adj, noun, na

    def sample(self, batch: int, *, generator: torch.Generator) -> TaskBatch:
        """A batch of (source, target) pairs, padded to ``max_len``; ``y`` is :data:`IGNORE` on padding."""
        B = C.positive_int(batch, "batch")
        L, A = self.max_len, self.max_adj
        d1, a1, n1, k1 = self._np(B, generator)
        verb = self.offsets["verb"] + torch.randint(0, self.sizes["verb"], (B,), generator=generator)
        d2, a2, n2, k2 = self._np(B, generator)
        # source: d1 a1[:k1] n1 v d2 a2[:k2] n2 ; target: d1 n1 a1[:k1] d2 n2 a2[:k2] v
        pos = torch.arange(L)
        src = torch.zeros(B, L, dtype=torch.long)
        tgt = torch.zeros(B, L, dtype=torch.long)
        ar = torch.arange(max(A, 1))
        rows = torch.arange(B)

        def put(buf, idx, val, ok=None):
            ok = torch.ones_like(idx, dtype=torch.bool) if ok is None else ok
            buf[rows[:, None].expand_as(idx)[ok], idx[ok]] = val[ok]

        one = lambda t: t[:, None]
        adj_ok1, adj_ok2 = ar[None, :] < k1[:, None], ar[None, :] < k2[:, None]
        # source positions
        put(src, one(torch.zeros(B, dtype=torch.long)), one(d1))
        put(src, 1 + ar.expand(B, -1), a1, adj_ok1)
        put(src, one(1 + k1), one(n1))
        put(src, one(2 + k1), one(verb))
        put(src, one(3 + k1), one(d2))
        put(src, 4 + k1[:, None] + ar, a2, adj_ok2)
        put(src, one(4 + k1 + k2), one(n2))
        # target positions (then the vocabulary map)
        put(tgt, one(torch.zeros(B, dtype=torch.long)), one(d1))
        put(tgt, one(torch.ones(B, dtype=torch.long)), one(n1))
        put(tgt, 2 + ar.expand(B, -1), a1, adj_ok1)
        put(tgt, one(2 + k1), one(d2))
        put(tgt, one(3 + k1), one(n2))
        put(tgt, 4 + k1[:, None] + ar, a2, adj_ok2)
        put(tgt, one(4 + k1 + k2), one(verb))
        tgt = self.word_map[tgt]
        real = pos[None, :] < (5 + k1 + k2)[:, None]
        y = torch.where(real, tgt, torch.full_like(tgt, IGNORE))
        return TaskBatch(src, y, real)


def make_task(name: str, **kwargs):
    r"""Task factory used by :func:`train_task`: returns ``(sample(batch, generator) -> TaskBatch,
    vocab, n_out, max_len)`` for ``name`` in ``{"recall", "reversal", "translation"}``; ``kwargs``
    go to the task."""
    if name == "recall":
        P, K, V = kwargs.get("n_pairs", 8), kwargs.get("n_keys", 16), kwargs.get("n_values", 16)
        return (lambda b, g: associative_recall(b, n_pairs=P, n_keys=K, n_values=V, generator=g)), K * (V + 1), V, 2 * P
    if name == "reversal":
        n, Vv = kwargs.get("length", 12), kwargs.get("vocab", 16)
        return (lambda b, g: reversal(b, length=n, vocab=Vv, generator=g)), Vv, Vv, n
    if name == "translation":
        tr = ToyTranslation(**kwargs)
        return (lambda b, g: tr.sample(b, generator=g)), tr.vocab, tr.vocab, tr.max_len
    raise ValueError(f"unknown task {name!r}; expected 'recall', 'reversal' or 'translation'")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

def token_accuracy(pred: Tensor, y: Tensor) -> float:
    """Fraction of correct predictions over positions where ``y != IGNORE``."""
    m = y != IGNORE
    if not bool(m.any()):
        raise ValueError("y has no scored position")
    return float((pred[m] == y[m]).double().mean())


def exact_match(pred: Tensor, y: Tensor) -> float:
    """Fraction of sequences whose every scored position is correct."""
    m = y != IGNORE
    ok = ((pred == y) | ~m).all(dim=1)
    return float(ok.double().mean())


def _ngrams(seq: list[int], n: int) -> Counter:
    return Counter(tuple(seq[i:i + n]) for i in range(len(seq) - n + 1))


def corpus_bleu(candidates: list[list[int]], references: list[list[int]], *, max_n: int = 4) -> float:
    r"""Corpus BLEU with one reference per sentence (Papineni et al. 2002), in :math:`[0, 1]`.

    .. math:: \mathrm{BLEU} = \mathrm{BP}\cdot\exp\Big(\frac1N\sum_{n=1}^N \log p_n\Big),\quad
              \mathrm{BP} = \min\big(1, e^{1 - r/c}\big),

    :math:`p_n` the clipped n-gram precision summed over the corpus, :math:`c` and :math:`r` the
    total candidate and reference lengths. No smoothing: a zero :math:`p_n` gives BLEU = 0.
    """
    if len(candidates) != len(references):
        raise ValueError(f"need as many candidates as references, got {len(candidates)} and {len(references)}")
    if not candidates:
        raise ValueError("candidates is empty")
    max_n = C.positive_int(max_n, "max_n")
    match = [0] * max_n
    total = [0] * max_n
    c_len = r_len = 0
    for cand, ref in zip(candidates, references):
        c_len += len(cand)
        r_len += len(ref)
        for n in range(1, max_n + 1):
            cn, rn = _ngrams(list(cand), n), _ngrams(list(ref), n)
            match[n - 1] += sum(min(c, rn[g]) for g, c in cn.items())
            total[n - 1] += max(len(cand) - n + 1, 0)
    if c_len == 0 or min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / max_n
    bp = 1.0 if c_len > r_len else math.exp(1.0 - r_len / c_len)
    return float(bp * math.exp(log_p))


def _sequences(pred: Tensor, y: Tensor) -> tuple[list[list[int]], list[list[int]]]:
    m = y != IGNORE
    cands = [p[mm].tolist() for p, mm in zip(pred, m)]
    refs = [t[mm].tolist() for t, mm in zip(y, m)]
    return cands, refs


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    r"""Metrics of one training run on the held-out test set, the loss curve and how it stopped.

    ``steps`` is the number of optimiser steps taken, ``best_step`` the step of the checkpoint that
    was scored (the best validation loss), ``stop`` one of ``"solved"`` (every validation token
    right), ``"plateau"`` (the validation loss stopped improving: converged), ``"max_steps"`` (the
    step cap was reached first: not converged) or ``"fixed"`` (a fixed budget without early
    stopping, or ``steps = 0``: the untrained model). ``val_curve`` holds
    ``(step, validation loss, validation token accuracy)`` at every evaluation.
    """

    task: str
    kernel: str
    seed: int
    token_accuracy: float
    exact_match: float
    bleu: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    best_step: int = 0
    stop: str = "fixed"
    val_curve: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """True when the run stopped on its own (solved or plateau), not at the step cap."""
        return self.stop in ("solved", "plateau")


@dataclass(frozen=True)
class EarlyStopping:
    r"""Train-to-convergence rule for :func:`train_task`.

    Every ``eval_every`` steps the model is scored on a fixed validation set of ``n_val`` sequences
    (drawn from its own seed, disjoint in stream from training and test). A validation loss below
    ``(1 - min_rel) *`` the best so far is an improvement; after ``patience`` evaluations without
    one the learning rate is multiplied by ``lr_factor`` (at most ``lr_drops`` times) and then the
    run stops (``"plateau"``). A validation token accuracy of 1 stops the run at once
    (``"solved"``). The checkpoint with the best validation loss is the one scored on the test set.
    """

    eval_every: int = 25
    patience: int = 4
    min_rel: float = 0.01
    lr_drops: int = 1
    lr_factor: float = 0.2
    n_val: int = 256

    def __post_init__(self) -> None:
        C.positive_int(self.eval_every, "eval_every")
        C.positive_int(self.patience, "patience")
        C.positive_int(self.n_val, "n_val")
        if not (0.0 <= self.min_rel < 1.0):
            raise ValueError(f"min_rel must be in [0, 1), got {self.min_rel}")
        if isinstance(self.lr_drops, bool) or not isinstance(self.lr_drops, int) or self.lr_drops < 0:
            raise ValueError(f"lr_drops must be an int >= 0, got {self.lr_drops!r}")
        if not (0.0 < self.lr_factor < 1.0):
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor}")


class EarlyStoppingRun:
    r"""The state of one run under an :class:`EarlyStopping` rule, shared by the trainers.

    Call :meth:`update` after each validation evaluation (``step``, validation loss and token
    accuracy): it keeps the best-validation checkpoint, counts evaluations without improvement,
    multiplies the learning rate of ``optimizer`` and ``scheduler`` by ``lr_factor`` after
    ``patience`` of them (at most ``lr_drops`` times), and returns why the run must stop
    (``"solved"`` or ``"plateau"``) or ``None``. :meth:`restore` loads the best checkpoint into
    the model. Used by :func:`train_task` and :func:`lib.binary_attention.train_retrieval`.
    """

    def __init__(self, rule: EarlyStopping, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        if not isinstance(rule, EarlyStopping):
            raise TypeError(f"rule must be an EarlyStopping, got {type(rule).__name__}")
        self.rule, self.model, self.optimizer, self.scheduler = rule, model, optimizer, scheduler
        self.best_loss, self.best_step, self.bad, self.drops = math.inf, 0, 0, 0
        self.best_state: dict[str, Tensor] | None = None

    def _snapshot(self) -> None:
        self.best_state = {k: t.detach().clone() for k, t in self.model.state_dict().items()}

    def update(self, step: int, val_loss: float, val_accuracy: float) -> str | None:
        """Record one evaluation; the reason to stop now, or ``None`` to go on."""
        es = self.rule
        if val_loss < (1.0 - es.min_rel) * self.best_loss:
            self.best_loss, self.best_step, self.bad = val_loss, step, 0
            self._snapshot()
        else:
            self.bad += 1
        if val_accuracy == 1.0:
            self._snapshot()
            self.best_step = step
            return "solved"
        if self.bad >= es.patience:
            if self.drops >= es.lr_drops:
                return "plateau"
            self.drops, self.bad = self.drops + 1, 0
            for grp in self.optimizer.param_groups:
                grp["initial_lr"] = grp.get("initial_lr", grp["lr"]) * es.lr_factor
            self.scheduler.base_lrs = [b * es.lr_factor for b in self.scheduler.base_lrs]
        return None

    def restore(self) -> bool:
        """Load the best checkpoint into the model; ``False`` when there was no evaluation."""
        if self.best_state is None:
            return False
        self.model.load_state_dict(self.best_state)
        return True


def _evaluate(model: nn.Module, batch: TaskBatch, n_out: int, device: torch.device) -> tuple[Tensor, float]:
    """Predictions (on CPU) and mean cross-entropy of ``model`` on ``batch``."""
    model.eval()
    with torch.no_grad():
        km = None if batch.key_mask is None else batch.key_mask.to(device)
        logits = model(batch.x.to(device), km)
        loss = nn.functional.cross_entropy(logits.reshape(-1, n_out), batch.y.to(device).reshape(-1),
                                           ignore_index=IGNORE)
    model.train()
    return logits.argmax(-1).cpu(), float(loss)


def train_task(task: str, kernel: Kernel, *, seed: int, steps: int = 300, batch: int = 64,
               n_test: int = 512, lr: float = 3e-3, d_model: int = 32, n_heads: int = 4, n_layers: int = 2,
               d_ff: int = 64, device: torch.device | str = "cpu", task_kwargs: dict | None = None,
               early_stopping: EarlyStopping | None = None) -> TrainResult:
    r"""Train a :class:`KernelTransformer` with ``kernel`` on ``task`` and score it on held-out data.

    Fresh batches every step from a generator seeded by ``seed`` (validation and test sets from
    other seeds), AdamW (weight decay 0.01) with linear warm-up over 5 % of ``steps``, gradient
    clipping at 1. Model initialisation is seeded by ``seed``.

    * ``early_stopping=None``: a fixed budget of ``steps`` with cosine decay; the final model is
      scored. ``steps = 0`` scores the untrained model (a negative control).
    * ``early_stopping=EarlyStopping(...)``: train to convergence with a constant learning rate
      after warm-up, at most ``steps`` steps (see :class:`EarlyStopping`); the best-validation
      checkpoint is scored and :attr:`TrainResult.stop` says why the run ended.

    Returns token accuracy, exact match and corpus BLEU (4-gram) on ``n_test`` test sequences.
    Chapter 4, claim 4.5.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError("seed must be an int")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    batch, n_test = C.positive_int(batch, "batch"), C.positive_int(n_test, "n_test")
    lr = C.positive(lr, "lr")
    if early_stopping is not None and not isinstance(early_stopping, EarlyStopping):
        raise TypeError("early_stopping must be an EarlyStopping or None")
    sample, vocab, n_out, max_len = make_task(task, **(task_kwargs or {}))
    device = torch.device(device)
    torch.manual_seed(seed)  # model initialisation (nn.Module draws from the global generator)
    model = KernelTransformer(vocab, n_out, max_len, kernel, d_model=d_model, n_heads=n_heads,
                              n_layers=n_layers, d_ff=d_ff).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    es = early_stopping
    if es is None:
        sched_fn = lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(steps, 1)))
    else:
        warm = min(warm, 50)
        sched_fn = lambda i: min(1.0, (i + 1) / warm)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, sched_fn)
    g = torch.Generator().manual_seed(10_000 + seed)
    val = None if es is None else sample(es.n_val, torch.Generator().manual_seed(555_555 + seed))
    losses: list[float] = []
    curve: list[tuple[int, float, float]] = []
    run = None if es is None else EarlyStoppingRun(es, model, opt, sched)
    stop = "fixed" if es is None or steps == 0 else "max_steps"
    model.train()
    for step in range(1, steps + 1):
        b = sample(batch, g)
        x, y = b.x.to(device), b.y.to(device)
        km = None if b.key_mask is None else b.key_mask.to(device)
        logits = model(x, km)
        loss = nn.functional.cross_entropy(logits.reshape(-1, n_out), y.reshape(-1), ignore_index=IGNORE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if es is None or step % es.eval_every:
            continue
        pred, vloss = _evaluate(model, val, n_out, device)
        vacc = token_accuracy(pred, val.y)
        curve.append((step, vloss, vacc))
        reason = run.update(step, vloss, vacc)
        if reason is not None:
            stop = reason
            break
    if run is not None and run.restore():
        best_step = run.best_step
    else:
        best_step = len(losses)
    test = sample(n_test, torch.Generator().manual_seed(999_999))
    pred, _ = _evaluate(model, test, n_out, device)
    cands, refs = _sequences(pred, test.y)
    tail = losses[-20:]
    return TrainResult(task=task, kernel=kernel.name, seed=seed, token_accuracy=token_accuracy(pred, test.y),
                       exact_match=exact_match(pred, test.y), bleu=corpus_bleu(cands, refs),
                       final_loss=float(sum(tail) / len(tail)) if tail else math.nan, losses=losses,
                       steps=len(losses), best_step=best_step, stop=stop, val_curve=curve)


def validation_accuracy_at(result: TrainResult, step: int) -> float:
    r"""Validation token accuracy of a run trained to convergence, read at a fixed budget ``step``.

    The value at the last evaluation at or before ``step`` (:attr:`TrainResult.val_curve`); a run
    that stopped earlier keeps its last evaluation (1.0 for a ``"solved"`` run): the fixed-budget
    reading of the same learning curve. Raises if the run has no evaluation at or before ``step``
    (``step`` below the evaluation interval, or a run without early stopping). Chapter 4, 4.5.
    """
    if not isinstance(result, TrainResult):
        raise TypeError(f"result must be a TrainResult, got {type(result).__name__}")
    step = C.positive_int(step, "step")
    seen = [acc for s, _, acc in result.val_curve if s <= step]
    if not seen:
        raise ValueError(f"no validation evaluation at or before step {step} in this run")
    return float(seen[-1])


def kernel_suite(d_head: int, *, taylor_degrees=(2, 4), rf_dims=(8, 32, 128, 512), seed: int = 0) -> dict:
    r"""The kernels of the substitution experiment, as ``name -> (kernel, feature_dim, group)``.

    ``group`` is ``"infinite"`` (exponentiated dot product, RBF, Laplacian), ``"finite"``
    (the positive finite kernels: quadratic polynomial, elu+1 linear attention), ``"signed"``
    (the cubic polynomial, whose attention normaliser takes both signs and is only guarded away
    from zero: not a like-for-like competitor) or ``"ladder"`` (truncated Taylor series of even
    degree, positive random features with ``D`` features; built by :mod:`lib.kernel_machines`).
    ``feature_dim`` is ``None`` for infinite-dimensional kernels. Chapter 4, claim 4.5.
    """
    from .kernel_machines import random_feature_kernel, taylor_kernel

    d_head = C.positive_int(d_head, "d_head")
    elu = FeatureMapKernel(elu_feature_map, name="elu+1", dim=lambda d: d, positive=True)
    out = {
        "exp": (ExpDot(), None, "infinite"),
        "rbf": (RBF(), None, "infinite"),
        "laplacian": (Laplacian(), None, "infinite"),
        "poly2": (Polynomial(2), Polynomial(2).feature_dim(d_head), "finite"),
        "poly3": (Polynomial(3), Polynomial(3).feature_dim(d_head), "signed"),
        "elu+1": (elu, d_head, "finite"),
    }
    for deg in taylor_degrees:
        if deg % 2:
            raise ValueError(f"taylor degrees must be even (positive truncated series), got {deg}")
        k = taylor_kernel(deg)
        out[k.name] = (k, k.feature_dim(d_head), "ladder")
    g = torch.Generator().manual_seed(seed)
    for D in rf_dims:
        k = random_feature_kernel(d_head, D, generator=g)
        out[k.name] = (k, D, "ladder")
    return out


@dataclass
class GroupGap:
    r"""Comparison of two kernel groups on one metric (see :func:`group_gap`)."""

    gap: float
    margin: float
    mean_a: float
    mean_b: float
    seed_std: float
    verdict: str


def group_gap(scores: dict[str, list[float]], group_a: list[str], group_b: list[str], *,
              resolution: float = 0.0, z: float = 2.0) -> GroupGap:
    r"""Difference of group means :math:`\Delta = \bar m_A - \bar m_B` and its statistical margin.

    ``scores`` maps a kernel name to its metric over seeds. The margin is
    :math:`z\,\sigma\sqrt{1/n_A + 1/n_B}` with :math:`\sigma` the pooled within-kernel seed standard
    deviation and :math:`n_A, n_B` the numbers of (kernel, seed) runs in each group, floored at
    ``resolution`` (e.g. one test example, :math:`1/n_{test}`). Verdict: ``"A > B"`` if
    :math:`\Delta > \text{margin}`, ``"A < B"`` if :math:`\Delta < -\text{margin}`, else ``"no gap"``.
    """
    for name in list(group_a) + list(group_b):
        if name not in scores:
            raise ValueError(f"no scores for kernel {name!r}")
        if len(scores[name]) < 2:
            raise ValueError(f"kernel {name!r} needs at least 2 seeds to estimate the seed spread")
    z = C.positive(z, "z")
    resolution = C.nonneg(resolution, "resolution")
    a = torch.tensor([v for n in group_a for v in scores[n]], dtype=torch.float64)
    b = torch.tensor([v for n in group_b for v in scores[n]], dtype=torch.float64)
    var = [torch.tensor(scores[n], dtype=torch.float64).var(unbiased=True) for n in list(group_a) + list(group_b)]
    sd = float(torch.stack(var).mean().sqrt())
    margin = max(z * sd * math.sqrt(1 / len(a) + 1 / len(b)), resolution)
    gap = float(a.mean() - b.mean())
    verdict = "A > B" if gap > margin else ("A < B" if gap < -margin else "no gap")
    return GroupGap(gap=gap, margin=margin, mean_a=float(a.mean()), mean_b=float(b.mean()), seed_std=sd, verdict=verdict)


def paired_gaps(scores: dict[str, list[float]], group_a: list[str], group_b: list[str]) -> list[float]:
    r"""Per-seed gap between two kernel groups, paired by seed.

    .. math:: \Delta_s = rac1{|A|}\sum_{k\in A} m_{k,s} - rac1{|B|}\sum_{k\in B} m_{k,s},

    ``scores`` maps a kernel name to its metric over the same seeds (same order); the runs of one
    seed share their data stream and initialisation seed, so the pairing removes the seed-to-seed
    variation common to both groups. The claims of chapter 4 (4.5) apply "mean minus two standard
    errors" to these values.
    """
    names = list(group_a) + list(group_b)
    if not group_a or not group_b:
        raise ValueError("both groups need at least one kernel")
    for name in names:
        if name not in scores:
            raise ValueError(f"no scores for kernel {name!r}")
    n = {len(scores[k]) for k in names}
    if len(n) != 1:
        raise ValueError(f"every kernel needs the same number of seeds, got {sorted(n)}")
    a = torch.tensor([scores[k] for k in group_a], dtype=torch.float64).mean(0)
    b = torch.tensor([scores[k] for k in group_b], dtype=torch.float64).mean(0)
    return (a - b).tolist()



# --------------------------------------------------------------------------------------------
# Retrieval over many tokens: where a finite feature dimension must show (n >> D)
# --------------------------------------------------------------------------------------------

def retrieval_mass(kernel: Kernel, keys: Tensor, *, queries: Tensor | None = None) -> float:
    r"""Mean attention weight on the matching key, :math:`\operatorname{tr}(A)/n`.

    .. math:: A_{ij} = \frac{\kappa(q_i, k_j)}{\sum_l \kappa(q_i, k_l)},\qquad
              \text{mass} = \frac1n\sum_i A_{ii},

    with ``keys`` :math:`k_j` ``(n, d)`` and ``queries`` :math:`q_i` ``(n, d)`` (default: the keys
    themselves, so query :math:`i` must single out key :math:`i` among :math:`n` by content).
    :math:`A` is computed by :func:`lib.kernels.kernel_attention` with the identity as values.

    **Bound for finite kernels.** A positive kernel with :math:`D` features gives :math:`A` with
    non-negative entries, rows summing to one and rank at most :math:`D`; its eigenvalues lie in the
    unit disc and at most :math:`D` are non-zero, so :math:`\operatorname{tr}A\le D` and the mass is
    at most :math:`D/n`, at every sharpness of the kernel. An infinite-dimensional kernel (the
    exponentiated dot product at growing inverse temperature, RBF, Laplacian) reaches mass 1 on
    distinct keys. This is the task of chapter 4 (4.5g) on which a feature dimension below the
    number of attended tokens must show; chapter 6 points to it.
    """
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}")
    k = C.float_tensor(keys, "keys", min_dim=2)
    if k.dim() != 2:
        raise ValueError(f"keys must be (n, d), got {tuple(k.shape)}")
    q = k if queries is None else C.float_tensor(queries, "queries", min_dim=2)
    if q.shape != k.shape:
        raise ValueError(f"queries {tuple(q.shape)} and keys {tuple(k.shape)} must have the same shape")
    n = k.shape[0]
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    A = kernel_attention(q[None], k[None], eye[None], kernel)[0]
    return float(torch.diagonal(A).mean())


def best_retrieval_mass(make_kernel, keys: Tensor, betas, *, queries: Tensor | None = None) -> float:
    r"""Largest :func:`retrieval_mass` over a grid of sharpness values :math:`\beta`.

    ``make_kernel(beta) -> Kernel`` builds the kernel at sharpness ``beta`` (inverse temperature,
    bandwidth or feature scale), so each kernel is scored at its own best scale: the measurement is
    of what the kernel *can* do on these tokens, not of one scale. Chapter 4 (4.5g).
    """
    betas = [C.positive(b, "beta") for b in betas]
    if not betas:
        raise ValueError("betas is empty")
    return max(retrieval_mass(make_kernel(b), keys, queries=queries) for b in betas)
