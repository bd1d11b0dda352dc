"""Tests for lib.sentiment: offline data, preprocessing, the hardmax classifier, leader analysis."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lib.hardmax import hardmax_layer, padding_mask
from lib.sentiment import (
    PROTOCOLS,
    HardmaxClassifier,
    Protocol,
    Run,
    bow_baseline,
    build_vocabulary,
    confident_leader_words,
    encode,
    evaluate,
    get_protocol,
    leader_statistics,
    load_rotten_tomatoes,
    load_vader_lexicon,
    logits,
    majority_baseline,
    prepare_dataset,
    split_indices,
    synthetic_corpus,
    tokenize,
    train_classifier,
    train_runs,
)


def test_tokenize():
    assert tokenize("A <br />GREAT film, not 2 be missed!!") == [
        "great",
        "film",
        "missed",
    ]
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
    assert (
        len(te) == 30
        and len(np.intersect1d(tr, te)) == 0
        and len(np.union1d(tr, te)) == 100
    )
    _tr2, te2 = split_indices(100, test_fraction=0.3, seed=7)
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
    docs, y, role = synthetic_corpus(
        lex, n_docs=300, seed=3, n_sentiment_words=40, n_filler_words=50
    )
    docs2, y2, _ = synthetic_corpus(
        lex, n_docs=300, seed=3, n_sentiment_words=40, n_filler_words=50
    )
    assert docs == docs2 and np.array_equal(y, y2)
    for d, lab in zip(docs, y):
        signs = [role[w] for w in d if role[w] != 0]
        assert 12 <= len(d) <= 20 and np.sign(sum(signs)) == (1 if lab == 1 else -1)
    assert all(abs(lex[w]) >= 1.5 for w, r in role.items() if r != 0)
    assert all(w not in lex for w, r in role.items() if r == 0)


def _toy_model(d=2, vocab=12, seed=0):
    return HardmaxClassifier(
        vocab, d, depth=4, generator=torch.Generator().manual_seed(seed)
    )


def test_model_hardmax_matches_layer_and_padding_invariance():
    m = _toy_model()
    ids = torch.tensor([[3, 4, 5, 0, 0], [1, 2, 3, 4, 5]])
    lens = torch.tensor([3, 5])
    z = m.embedding(ids).double()
    mask = padding_mask(lens, 5)
    a = m.alpha.double()
    for _ in range(4):
        z = hardmax_layer(z, alpha=a, mask=mask)
    ref = (
        z[0, :3].mean(0) @ m.decoder.weight.double().T
    ).squeeze() + m.decoder.bias.double()
    out = m(ids, lens, mode="hardmax", dtype=torch.float64)
    assert torch.allclose(out[0], ref.squeeze())
    # more padding changes nothing; different pad ids change nothing
    ids2 = torch.cat([ids, torch.zeros(2, 3, dtype=torch.int64)], 1)
    ids2[0, 3:] = 7
    assert torch.allclose(m(ids2, lens, mode="hardmax", dtype=torch.float64), out)
    assert torch.allclose(
        m(ids, lens, mode="softmax", temperature=1e-4, dtype=torch.float64),
        out,
        atol=1e-8,
    )


def test_low_temperature_training_step_finite_float32():
    m = _toy_model(d=4, vocab=30)
    with torch.no_grad():
        m.embedding.weight.mul_(10)  # logits |z|^2 / T ~ 1e5
    ids = torch.randint(1, 30, (8, 6), generator=torch.Generator().manual_seed(1))
    lens = torch.full((8,), 6)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        m(ids, lens, temperature=1e-3), torch.ones(8)
    )
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in m.parameters()
    )


def test_training_learns_synthetic_and_leaders():
    lex = load_vader_lexicon()
    docs, y, _role = synthetic_corpus(
        lex, n_docs=600, seed=0, n_sentiment_words=20, n_filler_words=40
    )
    ds = prepare_dataset(docs, y, n=20, min_count=1, seed=0, pretokenized=True)
    m = HardmaxClassifier(
        len(ds.vocab), 2, generator=torch.Generator().manual_seed(0), init_std=0.1
    )
    hist = train_classifier(  # one torch thread, as every unit test (tests/conftest.py)
        m, ds.train_ids, ds.train_len, ds.train_y, epochs=6, lr=2e-2, seed=0
    )
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
        m.embedding.weight.copy_(
            torch.tensor(
                [[0.0, 0.0], [5.0, 0.0], [-12.0, 0.0], [0.3, 0.2], [0.1, -0.2]]
            )
        )
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
    words = confident_leader_words(
        m, st, ids, torch.tensor([1.0, 0.0]), vocab, confidence=0.95, min_score=2.0
    )
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


# ---------------------------------------------------------------- the two protocols (issue: faithful first)


def _brute_force_logits(
    E, v, b, alpha, ids, lens, *, padding, mode, T=1e-3, depth=8, tie=1e-12
):
    """Independent reference, one review and one token at a time in NumPy float64, as the authors'
    ``hardmaxDynamics`` / ``CustomSelfAttention`` (A = I): every one of the n positions is a token;
    with masked padding only real tokens are keys and only they are pooled."""
    out = []
    for r in range(ids.shape[0]):
        L, n = int(lens[r]), ids.shape[1]
        z = E[ids[r]].astype(np.float64).copy()
        keys = np.arange(n) < L if padding == "masked" else np.ones(n, dtype=bool)
        for _ in range(depth):
            new = np.empty_like(z)
            for i in range(n):
                s = z[keys] @ z[i]
                if mode == "softmax":
                    w = np.exp((s - s.max()) / T)
                    w /= w.sum()
                else:
                    sel = s >= s.max() - tie * max(1.0, np.abs(s).max())
                    w = sel / sel.sum()
                new[i] = (z[i] + alpha * (w @ z[keys])) / (1 + alpha)
            z = new
        pooled = z[:L].mean(0) if padding == "masked" else z.mean(0)
        out.append(pooled @ v + b)
    return np.array(out)


def _pair(vocab=15, d=2, seed=0):
    """An authors' and a book model with the same weights (embedding, decoder, alpha)."""
    g = torch.Generator().manual_seed(seed)
    ma = HardmaxClassifier.for_protocol(get_protocol("authors"), vocab, d, generator=g)
    mb = HardmaxClassifier.for_protocol(
        get_protocol("book"), vocab, d, generator=torch.Generator()
    )
    with torch.no_grad():
        mb.embedding.weight.copy_(ma.embedding.weight)
        mb.decoder.load_state_dict(ma.decoder.state_dict())
        mb.rho.copy_(torch.log(torch.expm1(ma.rho)))
    assert torch.allclose(ma.alpha, mb.alpha)
    return ma, mb


def _batch(vocab=15, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([3, 9, 1, 6, 5])
    ids = torch.randint(1, vocab, (len(lens), n), generator=g)
    ids[torch.arange(n) >= lens.unsqueeze(-1)] = 0
    return ids, lens


@pytest.mark.parametrize("mode", ["hardmax", "softmax"])
def test_both_protocols_match_brute_force(mode):
    ma, mb = _pair()
    ids, lens = _batch()
    E = ma.embedding.weight.detach().double().numpy()
    v, b = (
        ma.decoder.weight.detach().double().numpy()[0],
        float(ma.decoder.bias.detach()),
    )
    a = float(ma.alpha.detach())
    T = (
        0.05 if mode == "softmax" else 1e-3
    )  # a temperature where softmax is not yet hardmax
    for model, padding in ((ma, "attended"), (mb, "masked")):
        ref = _brute_force_logits(
            E, v, b, a, ids.numpy(), lens.numpy(), padding=padding, mode=mode, T=T
        )
        got = (
            model(ids, lens, mode=mode, temperature=T, dtype=torch.float64)
            .detach()
            .numpy()
        )
        tol = 1e-9
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
        assert np.array_equal(got > 0, ref > 0)
        # the trajectory's last layer, pooled as the protocol says, gives the same logit
        zK = model.tokens(ids, lens, mode=mode, temperature=T, dtype=torch.float64)
        np.testing.assert_allclose(
            model.score(model.pool(zK, lens)).detach().numpy(), ref, rtol=tol, atol=tol
        )


def test_hardmax_path_agrees_with_lib_hardmax_layer():
    _, mb = _pair(d=3)
    ids, lens = _batch()
    z = mb.embedding(ids).double()
    mask = padding_mask(lens, ids.shape[1])
    for _ in range(mb.depth):
        z = hardmax_layer(z, alpha=mb.alpha.double(), mask=mask)
    zK = mb.tokens(ids, lens, mode="hardmax", dtype=torch.float64)
    real = torch.arange(ids.shape[1]) < lens.unsqueeze(-1)
    assert torch.allclose(zK[real], z[real], atol=1e-12)


def test_padding_differs_exactly_where_it_should():
    ma, mb = _pair()
    ids, lens = _batch()
    full = lens == ids.shape[1]  # the one review without padding
    la, lb = (
        ma(ids, lens, mode="hardmax", dtype=torch.float64),
        mb(ids, lens, mode="hardmax", dtype=torch.float64),
    )
    # without padding the two models are the same map
    assert torch.allclose(la[full], lb[full], atol=1e-12)
    assert (la[~full] - lb[~full]).abs().min() > 1e-6
    # more padding: nothing changes when it is masked; the padded reviews change when it is attended
    ids2 = torch.cat([ids, torch.zeros(len(lens), 4, dtype=torch.int64)], 1)
    for mode in ("hardmax", "softmax"):
        kw = {"mode": mode, "dtype": torch.float64, "temperature": 1e-3}
        assert torch.allclose(mb(ids2, lens, **kw), mb(ids, lens, **kw), atol=1e-10)
        da = (ma(ids2, lens, **kw) - ma(ids, lens, **kw)).abs()
        assert (da[~full] > 1e-6).all()
    # moving the pad embedding moves only the attended model's padded reviews
    with torch.no_grad():
        ma.embedding.weight[0] += 3.0
        mb.embedding.weight[0] += 3.0
    assert torch.allclose(
        mb(ids, lens, mode="hardmax", dtype=torch.float64), lb, atol=1e-12
    )
    la2 = ma(ids, lens, mode="hardmax", dtype=torch.float64)
    assert (
        torch.allclose(la2[full], la[full], atol=1e-12)
        and ((la2 - la)[~full].abs() > 1e-6).all()
    )
    # attended padding requires the pad index beyond lengths
    bad = ids.clone()
    bad[0, 5] = 3
    with pytest.raises(ValueError, match="pad index"):
        ma(bad, lens)


def test_free_alpha_is_unconstrained():
    ma, _ = _pair()
    with torch.no_grad():
        ma.rho.fill_(-0.3)
    assert float(ma.alpha.detach()) == pytest.approx(-0.3)
    ids, lens = _batch()
    E = ma.embedding.weight.detach().double().numpy()
    v, b = (
        ma.decoder.weight.detach().double().numpy()[0],
        float(ma.decoder.bias.detach()),
    )
    a = float(ma.alpha.detach())  # -0.3 in float32
    ref = _brute_force_logits(
        E, v, b, a, ids.numpy(), lens.numpy(), padding="attended", mode="hardmax"
    )
    np.testing.assert_allclose(
        ma(ids, lens, mode="hardmax", dtype=torch.float64).detach().numpy(),
        ref,
        rtol=1e-9,
        atol=1e-9,
    )


def test_protocol_presets_follow_the_authors_code():
    A, B = get_protocol("authors"), get_protocol("book")
    assert (
        A.padding,
        A.alpha,
        A.init_std,
        A.lr,
        A.n,
        A.min_count,
        A.vocabulary,
        A.split,
        A.loss,
        A.evaluation,
    ) == (
        "attended",
        "free",
        1.0,
        1e-3,
        128,
        1,
        "all",
        "head",
        "sigmoid-bce",
        "running-softmax",
    )
    assert (A.batch_size, A.clip, A.temperature, A.depth, A.test_fraction) == (
        64,
        5.0,
        1e-3,
        8,
        0.3,
    )
    assert set(A.differences(B)) == {
        "padding",
        "alpha",
        "init_std",
        "lr",
        "n",
        "min_count",
        "vocabulary",
        "split",
        "loss",
        "evaluation",
    }
    C1 = get_protocol("authors", padding="masked")
    assert A.differences(C1) == {"padding": ("attended", "masked")} and set(
        PROTOCOLS
    ) == {"authors", "book"}
    with pytest.raises(ValueError, match="padding"):
        get_protocol("authors", padding="ignored")
    with pytest.raises(ValueError, match="protocol"):
        get_protocol("mine")
    m = HardmaxClassifier.for_protocol(
        A, 10, 2, generator=torch.Generator().manual_seed(0)
    )
    assert m.padding == "attended" and m.alpha_param == "free" and m.depth == 8
    assert isinstance(A, Protocol)


def test_head_split_and_all_word_vocabulary():
    tr, te = split_indices(10, test_fraction=0.3, method="head")
    assert tr.tolist() == list(range(7)) and te.tolist() == [7, 8, 9]
    docs = [["good", "film"], ["bad", "film"], ["good"], ["rare", "bad"]] * 2 + [
        ["unseen", "good"],
        ["bad"],
    ]
    y = np.array([1, 0, 1, 0] * 2 + [1, 0])
    ds = prepare_dataset(docs, y, protocol=get_protocol("authors"), pretokenized=True)
    assert (
        "unseen" in ds.vocab.index
        and ds.train_ids.shape[1] == 128
        and len(ds.test_y) == 3
    )
    assert ds.test_y.tolist() == [0.0, 1.0, 0.0]
    ds2 = prepare_dataset(
        docs, y, n=5, min_count=1, split="head", vocabulary="train", pretokenized=True
    )
    assert "unseen" not in ds2.vocab.index
    with pytest.raises(ValueError, match="method"):
        split_indices(10, method="tail")


def test_running_softmax_evaluation_is_a_mean_of_batch_accuracies():
    ma, _ = _pair(vocab=30)
    g = torch.Generator().manual_seed(5)
    lens = torch.randint(1, 9, (150,), generator=g)
    ids = torch.randint(1, 30, (150, 8), generator=g)
    ids[torch.arange(8) >= lens.unsqueeze(-1)] = 0
    y = torch.randint(0, 2, (150,), generator=g).float()
    P = get_protocol("authors", batch_size=64)
    ev = evaluate(ma, ids, lens, y, protocol=P, seed=3)
    hit = (
        (logits(ma, ids, lens, mode="softmax", temperature=P.temperature) > 0).float()
        == y
    ).numpy()
    perm = torch.randperm(150, generator=torch.Generator().manual_seed(3)).numpy()
    manual = np.mean([hit[perm][s : s + 64].mean() for s in (0, 64, 128)])
    assert ev["accuracy"] == pytest.approx(manual) and ev["accuracy"] != pytest.approx(
        hit.mean()
    )


def test_authors_protocol_trains_and_records_both_losses():
    lex = load_vader_lexicon()
    docs, y, _ = synthetic_corpus(
        lex, n_docs=400, seed=0, n_sentiment_words=20, n_filler_words=40
    )
    P = get_protocol("authors", n=24, lr=1e-2)
    ds = prepare_dataset(docs, y, protocol=P, pretokenized=True)
    m = HardmaxClassifier.for_protocol(
        P, len(ds.vocab), 2, generator=torch.Generator().manual_seed(0)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        h = train_classifier(
            m,
            ds.train_ids,
            ds.train_len,
            ds.train_y,
            epochs=4,
            protocol=P,
            seed=0,
            eval_data=(ds.test_ids, ds.test_len, ds.test_y),
            hardmax_loss=True,
        )
    finally:
        torch.set_num_threads(threads)
    assert (
        len(h.loss)
        == len(h.loss_hardmax)
        == len(h.test_acc)
        == len(h.train_acc)
        == len(h.alpha)
        == 4
    )
    assert h.loss[-1] < h.loss[0] and abs(h.loss[0] - h.loss_hardmax[0]) < 0.05
    # the authors' loss: sigmoid then BCELoss
    out = m(ds.test_ids, ds.test_len)
    ref = torch.nn.BCELoss()(torch.sigmoid(out), ds.test_y)
    assert torch.allclose(
        ref,
        torch.nn.functional.binary_cross_entropy_with_logits(out, ds.test_y),
        atol=1e-5,
    )


def _parallel_jobs():
    lex = load_vader_lexicon()
    docs, y, _ = synthetic_corpus(
        lex, n_docs=240, seed=0, n_sentiment_words=20, n_filler_words=40
    )
    A = get_protocol("authors", n=16, lr=1e-2)
    B = get_protocol("book", min_count=1)
    da = prepare_dataset(docs, y, protocol=A, pretokenized=True)
    db = prepare_dataset(docs, y, protocol=B, pretokenized=True)
    return [
        (A, da, 2, 0, {"epochs": 1, "curves": True, "hardmax_loss": True}),
        (A, da, 3, 1, {"epochs": 1, "train_accuracy": False}),
        (B, db, 2, 2, {"epochs": 1, "curves": True}),
    ]


def test_train_runs_parallel_equals_sequential():
    """Runs trained in 2 spawned worker processes are bitwise those of the in-process loop."""
    jobs = _parallel_jobs()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each
    try:
        seq = train_runs(jobs, workers=1)
    finally:
        torch.set_num_threads(threads)
    par = train_runs(jobs, workers=2)
    assert len(par) == len(seq) == len(jobs)
    for job, a, b in zip(jobs, seq, par):
        assert isinstance(b, Run) and (b.protocol, b.d, b.seed) == (
            job[0],
            job[2],
            job[3],
        )
        for key in (
            "test",
            "test_balanced",
            "test_softmax",
            "test_protocol",
            "loss_softmax",
            "loss_hardmax",
            "alpha",
            "epochs",
        ):
            assert getattr(a, key) == getattr(b, key), key
        assert math.isnan(a.train) == math.isnan(b.train)
        assert math.isnan(a.train) or a.train == b.train
        for key in ("loss", "loss_hardmax", "train_acc", "test_acc", "alpha"):
            assert getattr(a.history, key) == getattr(b.history, key), key
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the jobs differ, so the check above is not vacuous
    assert seq[0].history.loss_hardmax and not seq[1].history.loss_hardmax
    assert not torch.equal(seq[0].model.decoder.weight, seq[2].model.decoder.weight)


def test_train_runs_bad_input():
    (job,) = _parallel_jobs()[:1]
    with pytest.raises(ValueError, match="empty"):
        train_runs([], workers=1)
    for w in (0, -2, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="workers"):
            train_runs([job], workers=w)
    for bad in ([job[:4]], [(*job[:4], {})]):
        with pytest.raises(ValueError, match="jobs"):
            train_runs(bad, workers=1)
    for bad in (
        job,
        [list(job)],
        [(job[1], job[0], *job[2:])],
        [(*job[:2], 2.0, *job[3:])],
    ):
        with pytest.raises(TypeError, match="jobs"):
            train_runs(bad, workers=1)


def _hand_model():
    from lib.sentiment import Vocabulary

    vocab = Vocabulary(["<pad>", "good", "bad", "plot", "actor"])
    m = HardmaxClassifier(5, 2, depth=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m.embedding.weight.copy_(
            torch.tensor([[0.0, 0.0], [5.0, 0.0], [-12.0, 0.0], [0.3, 0.2], [0.1, -0.2]])
        )
        m.decoder.weight.copy_(torch.tensor([[1.0, 0.0]]))
        m.decoder.bias.zero_()
    ids = torch.tensor([[1, 3, 4, 3, 0], [2, 4, 3, 0, 0]])
    lens = torch.tensor([4, 3])
    return vocab, m, ids, lens


def test_load_imdb_csv(tmp_path):
    """The IMDb loader on a small file in the Kaggle format (the format BOOK_IMDB_CSV points at)."""
    from lib.sentiment import load_imdb_csv

    p = tmp_path / "IMDB Dataset.csv"
    p.write_text(
        'review,sentiment\n"A great, great film.<br /><br />Loved it",positive\n'
        '"Dull, and the plot, bad",negative\n"Quite ""good"" acting",Positive\n',
        encoding="utf-8",
    )
    texts, y = load_imdb_csv(p)
    assert texts[0] == "A great, great film.<br /><br />Loved it" and texts[2] == 'Quite "good" acting'
    assert y.tolist() == [1, 0, 1] and y.dtype == np.int64
    ds = prepare_dataset(texts * 4, np.tile(y, 4), protocol=get_protocol("authors"))
    assert ds.train_ids.shape[1] == 128 and "great" in ds.vocab.index and "br" not in ds.vocab.index
    with pytest.raises(FileNotFoundError):
        load_imdb_csv(tmp_path / "absent.csv")


def test_word_presence_brute_force():
    from lib.sentiment import word_presence

    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 9, (20, 7), generator=g)
    lens = torch.randint(0, 8, (20,), generator=g)
    pres = word_presence(ids, lens, 9)
    for r in range(20):
        want = {int(w) for w in ids[r, : int(lens[r])]} - {0}
        assert set(np.flatnonzero(pres[r]).tolist()) == want
    with pytest.raises(ValueError, match="lengths"):
        word_presence(ids, lens[:3], 9)


def test_top_scoring_leaders_and_enrichment_by_hand():
    from lib.sentiment import (
        confident_leader_enrichment,
        top_leader_enrichment,
        top_scoring_leaders,
        word_presence,
    )

    vocab, m, ids, lens = _hand_model()
    st = leader_statistics(m, ids, lens)
    top = top_scoring_leaders(m, st, ids)
    # review 0 is positive and led by "good"; review 1 negative: "bad" speaks loudest for it
    assert top.tolist() == [vocab.index["good"], vocab.index["bad"]]
    pres = word_presence(ids, lens, len(vocab))
    senti = np.array([w in ("good", "bad") for w in vocab.words])
    e = top_leader_enrichment(top, pres, senti)
    # base: 1 of 3 distinct words in each review -> 1/3; both top leaders are sentiment words
    assert e["hit"] == 1.0 and math.isclose(e["base"], 1 / 3) and math.isclose(e["enrichment"], 3.0)
    none = top_leader_enrichment(top, pres, senti, select=np.array([False, False]))
    assert none["n"] == 0 and math.isnan(none["enrichment"])
    c = confident_leader_enrichment(m, st, ids, torch.tensor([1.0, 0.0]), pres, senti)
    words = confident_leader_words(m, st, ids, torch.tensor([1.0, 0.0]), vocab)
    assert c["n_words"] == sum(words.values()) == 2 and c["hit"] == 1.0
    assert math.isclose(c["base"], 2 / 6) and c["n_reviews"] == 2
    # no confident review (wrong labels): NaN, never a default 0
    c0 = confident_leader_enrichment(m, st, ids, torch.tensor([0.0, 1.0]), pres, senti)
    assert c0["n_reviews"] == 0 and math.isnan(c0["enrichment"])


@pytest.mark.parametrize("seed", range(5))
def test_top_leader_enrichment_brute_force(seed):
    """hit, base and n against a loop over reviews, on random presence, classes and top words."""
    from lib.sentiment import top_leader_enrichment, word_presence

    rng = np.random.default_rng(seed)
    V, N, n = 12, 30, 6
    ids = torch.as_tensor(rng.integers(0, V, (N, n)))
    lens = torch.as_tensor(rng.integers(1, n + 1, N))
    pres = word_presence(ids, lens, V)
    cls = rng.random(V) < 0.4
    top = np.where(rng.random(N) < 0.8, rng.integers(0, V, N), -1)
    sel = rng.random(N) < 0.7
    out = top_leader_enrichment(top, pres, cls, select=sel)
    use = [r for r in range(N) if top[r] >= 0 and sel[r]]
    shares = []
    for r in use:
        words = {int(w) for w in ids[r, : int(lens[r])]} - {0}
        shares.append(sum(cls[w] for w in words) / max(1, len(words)))
    assert out["n"] == len(use)
    assert math.isclose(out["base"], float(np.mean(shares)), rel_tol=1e-12)
    assert math.isclose(out["hit"], float(np.mean([cls[top[r]] for r in use])), rel_tol=1e-12)
