"""Tests for lib.sentiment: offline data, preprocessing, the hardmax classifier, leader analysis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lib.hardmax import hardmax_layer, padding_mask
from lib.sentiment import (
    HardmaxClassifier,
    bow_baseline,
    build_vocabulary,
    confident_leader_words,
    encode,
    evaluate,
    leader_statistics,
    load_rotten_tomatoes,
    load_vader_lexicon,
    majority_baseline,
    prepare_dataset,
    split_indices,
    synthetic_corpus,
    tokenize,
    train_classifier,
)


def test_tokenize():
    assert tokenize("A <br />GREAT film, not 2 be missed!!") == ["great", "film", "missed"]
    assert tokenize("Don't stop", stopwords=frozenset()) == ["don", "stop"]
    with pytest.raises(TypeError, match="text"):
        tokenize(3)


def test_vocabulary_and_encode():
    toks = [["b", "a", "b"], ["a", "c"], ["b"]]
    v = build_vocabulary(toks, min_count=2)
    assert v.words == ["<pad>", "b", "a"]
    ids, lens = encode([["a", "zz", "b", "b"], ["c"]], v, n=3)
    assert ids.tolist() == [[2, 1, 1], [0, 0, 0]] and lens.tolist() == [3, 0]
    with pytest.raises(ValueError, match="min_count"):
        build_vocabulary(toks, min_count=0)


def test_split_is_seeded_partition():
    tr, te = split_indices(100, test_fraction=0.3, seed=7)
    assert len(te) == 30 and len(np.intersect1d(tr, te)) == 0 and len(np.union1d(tr, te)) == 100
    tr2, te2 = split_indices(100, test_fraction=0.3, seed=7)
    assert np.array_equal(te, te2)
    with pytest.raises(ValueError, match="test_fraction"):
        split_indices(10, test_fraction=1.0)


def test_rotten_tomatoes_offline():
    texts, y = load_rotten_tomatoes()
    assert len(texts) == 12_808 and int(y.sum()) == 7_403


def test_vader_lexicon():
    lex = load_vader_lexicon()
    assert len(lex) > 7000 and lex["good"] > 1 and lex["worst"] < -2


def test_synthetic_corpus_ground_truth():
    lex = load_vader_lexicon()
    docs, y, role = synthetic_corpus(lex, n_docs=300, seed=3, n_sentiment_words=40, n_filler_words=50)
    docs2, y2, _ = synthetic_corpus(lex, n_docs=300, seed=3, n_sentiment_words=40, n_filler_words=50)
    assert docs == docs2 and np.array_equal(y, y2)
    for d, lab in zip(docs, y):
        signs = [role[w] for w in d if role[w] != 0]
        assert 12 <= len(d) <= 20 and np.sign(sum(signs)) == (1 if lab == 1 else -1)
    assert all(abs(lex[w]) >= 1.5 for w, r in role.items() if r != 0)
    assert all(w not in lex for w, r in role.items() if r == 0)


def _toy_model(d=2, vocab=12, seed=0):
    return HardmaxClassifier(vocab, d, depth=4, generator=torch.Generator().manual_seed(seed))


def test_model_hardmax_matches_layer_and_padding_invariance():
    m = _toy_model()
    ids = torch.tensor([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    lens = torch.tensor([3, 5])
    z = m.embedding(ids).double()
    mask = padding_mask(lens, 5)
    a = m.alpha.double()
    for _ in range(4):
        z = hardmax_layer(z, alpha=a, mask=mask)
    ref = (z[0, :3].mean(0) @ m.decoder.weight.double().T).squeeze() + m.decoder.bias.double()
    out = m(ids, lens, mode="hardmax", dtype=torch.float64)
    assert torch.allclose(out[0], ref.squeeze())
    # more padding changes nothing; different pad ids change nothing
    ids2 = torch.cat([ids, torch.zeros(2, 3, dtype=torch.int64)], 1)
    ids2[0, 3:] = 7
    assert torch.allclose(m(ids2, lens, mode="hardmax", dtype=torch.float64), out)
    assert torch.allclose(m(ids, lens, mode="softmax", temperature=1e-4, dtype=torch.float64), out, atol=1e-8)


def test_low_temperature_training_step_finite_float32():
    m = _toy_model(d=4, vocab=30)
    with torch.no_grad():
        m.embedding.weight.mul_(10)  # logits |z|^2 / T ~ 1e5
    ids = torch.randint(1, 30, (8, 6), generator=torch.Generator().manual_seed(1))
    lens = torch.full((8,), 6)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m(ids, lens, temperature=1e-3), torch.ones(8))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_training_learns_synthetic_and_leaders():
    lex = load_vader_lexicon()
    docs, y, role = synthetic_corpus(lex, n_docs=600, seed=0, n_sentiment_words=20, n_filler_words=40)
    ds = prepare_dataset(docs, y, n=20, min_count=1, seed=0, pretokenized=True)
    m = HardmaxClassifier(len(ds.vocab), 2, generator=torch.Generator().manual_seed(0), init_std=0.1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead on a shared machine
    try:
        hist = train_classifier(m, ds.train_ids, ds.train_len, ds.train_y, epochs=6, lr=2e-2, seed=0)
    finally:
        torch.set_num_threads(threads)
    assert hist.loss[-1] < hist.loss[0] and len(hist.epoch_time) == 6
    ev = evaluate(m, ds.test_ids, ds.test_len, ds.test_y)
    assert ev["accuracy"] > 0.8
    st = leader_statistics(m, ds.test_ids, ds.test_len)
    assert (st.n_leaders >= 1).all() and (st.n_leaders <= st.n_distinct_words).all()
    assert 0 < st.fraction_initial <= 1


def test_leaders_by_hand():
    from lib.sentiment import Vocabulary

    vocab = Vocabulary(["<pad>", "good", "bad", "plot", "actor"])
    m = HardmaxClassifier(5, 2, depth=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0], [-12.0, 0.0], [0.3, 0.2], [0.1, -0.2]]))
        m.decoder.weight.copy_(torch.tensor([[1.0, 0.0]]))
        m.decoder.bias.zero_()
    ids = torch.tensor([[1, 3, 4, 3, 0], [2, 4, 3, 0, 0]])
    lens = torch.tensor([4, 3])
    st = leader_statistics(m, ids, lens)
    # review 0: (0.3, 0.2) and (0.1, -0.2) attend to good=(5, 0); "plot" twice shares one position
    assert st.n_leaders.tolist() == [1, 3] and st.n_initial_leaders.tolist() == [1, 3]
    assert st.leader_mask[0].tolist() == [True, False, False, False, False]
    # review 1: plot=(0.3, 0.2): <z, z> = 0.13 > <z, actor> = -0.01 > <z, bad> = -3.6, and
    # actor=(0.1, -0.2): <z, z> = 0.05 > -0.01 > -1.2: both are (weak) leaders, next to bad
    assert st.leader_mask[1].tolist() == [True, True, True, False, False]
    words = confident_leader_words(m, st, ids, torch.tensor([1.0, 0.0]), vocab, confidence=0.95, min_score=2.0)
    assert words == {"good": 1, "bad": 1}


def test_baselines():
    tr = [["good"], ["bad"], ["good", "x"], ["bad", "x"]] * 5
    ytr = np.array([1, 0, 1, 0] * 5)
    out = bow_baseline(tr, ytr, [["good"], ["bad", "y"]], np.array([1, 0]))
    assert out["accuracy"] == 1.0
    maj = majority_baseline(np.array([1, 1, 0]), np.array([1, 0, 0, 0]))
    assert maj["accuracy"] == 0.25 and maj["balanced_accuracy"] == 0.5


def test_bad_model_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="d"):
        HardmaxClassifier(10, 0, generator=g)
    with pytest.raises(ValueError, match="init_std"):
        HardmaxClassifier(10, 2, generator=g, init_std=-1.0)
    with pytest.raises(TypeError, match="generator"):
        HardmaxClassifier(10, 2, generator=0)
    m = _toy_model()
    with pytest.raises(ValueError, match="mode"):
        m(torch.tensor([[1, 2]]), torch.tensor([2]), mode="argmax")
    with pytest.raises(ValueError, match="lengths"):
        m(torch.tensor([[1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="texts and labels"):
        prepare_dataset(["a b"], np.array([1, 0]))
