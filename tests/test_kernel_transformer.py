"""Tests of lib.kernel_transformer: the kernelised model, the synthetic tasks, BLEU and the gap statistic."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

from lib import kernel_transformer as kt
from lib.kernels import ExpDot, Polynomial, kernel_attention


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- model

def test_exp_kernel_attention_matches_torch_multihead_softmax():
    torch.manual_seed(0)
    att = kt.KernelSelfAttention(16, 4, ExpDot()).double()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    B, n, _ = x.shape
    q, k, v = att.qkv(x).view(B, n, 3, 4, 4).permute(2, 0, 3, 1, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref = att.out(ref.transpose(1, 2).reshape(B, n, 16))
    torch.testing.assert_close(att(x), ref)


def test_key_mask_hides_padding():
    torch.manual_seed(1)
    att = kt.KernelSelfAttention(8, 2, Polynomial(2)).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    y = att(x, mask)
    x2 = x.clone()
    x2[1, 3:] = 100.0  # changing padded tokens must not change real outputs
    y2 = att(x2, mask)
    torch.testing.assert_close(y[1, :3], y2[1, :3])


def test_transformer_shapes_and_validation():
    model = kt.KernelTransformer(10, 6, 12, ExpDot(), d_model=16, n_heads=2, n_layers=1)
    out = model(torch.randint(0, 10, (3, 12)))
    assert out.shape == (3, 12, 6)
    with pytest.raises(TypeError, match="long"):
        model(torch.zeros(3, 12))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(3, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        kt.KernelSelfAttention(10, 3, ExpDot())
    with pytest.raises(TypeError, match="kernel"):
        kt.KernelSelfAttention(8, 2, "exp")


# ---------------------------------------------------------------- tasks

def test_associative_recall_targets_are_stored_values():
    b = kt.associative_recall(50, n_pairs=5, n_keys=9, n_values=4, generator=_g())
    x, y = b.x, b.y
    assert x.shape == y.shape == (50, 10)
    assert (y[:, :5] == kt.IGNORE).all()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        pairs = {tok // 4: tok % 4 for tok in row_x[:5]}
        assert len(pairs) == 5  # distinct keys
        for tok, val in zip(row_x[5:], row_y[5:]):
            assert pairs[tok - 36] == val


def test_reversal():
    b = kt.reversal(4, length=6, vocab=5, generator=_g(1))
    assert torch.equal(b.y, b.x.flip(1))
    assert b.x.max() < 5


def test_toy_translation_is_the_grammar_rewrite():
    tr = kt.ToyTranslation(max_adj=2, seed=3)
    b = tr.sample(200, generator=_g(2))
    inv = torch.argsort(tr.word_map)
    o = tr.offsets
    cat = lambda w: next(c for c in ("verb", "noun", "adj", "det") if w >= o[c])
    lengths = Counter()
    for src, tgt, km in zip(b.x.tolist(), b.y.tolist(), b.key_mask.tolist()):
        L = sum(km)
        lengths[L] += 1
        src = src[:L]
        assert all(t == kt.IGNORE for t in tgt[L:]) and all(s_ == 0 for s_ in b.x.tolist()[0][len(b.x[0]):])
        # parse the source: Det Adj* Noun Verb Det Adj* Noun
        cats = [cat(w) for w in src]
        v = cats.index("verb")
        np1, np2 = src[:v], src[v + 1:]
        reorder = lambda np_: [np_[0], np_[-1]] + np_[1:-1]
        expected = reorder(np1) + reorder(np2) + [src[v]]
        assert [int(inv[t]) for t in tgt[:L]] == expected
        assert cats[0] == "det" and cats[v - 1] == "noun" and cats[-1] == "noun"
    assert set(lengths) == {5, 6, 7, 8, 9}
    # the vocabulary map is a bijection that fixes PAD
    assert sorted(tr.word_map.tolist()) == list(range(tr.vocab)) and tr.word_map[0] == 0


def test_make_task_unknown():
    with pytest.raises(ValueError, match="unknown task"):
        kt.make_task("sorting")
    with pytest.raises(ValueError, match="n_pairs"):
        kt.associative_recall(2, n_pairs=5, n_keys=3, generator=_g())


# ---------------------------------------------------------------- metrics

def _bleu_reference(cands, refs, max_n=4):
    """Independent, direct transcription of Papineni et al. (2002), corpus level."""
    num = [0] * max_n
    den = [0] * max_n
    for c, r in zip(cands, refs):
        for n in range(1, max_n + 1):
            cg = [tuple(c[i:i + n]) for i in range(len(c) - n + 1)]
            rg = [tuple(r[i:i + n]) for i in range(len(r) - n + 1)]
            for gram in set(cg):
                num[n - 1] += min(cg.count(gram), rg.count(gram))
            den[n - 1] += len(cg)
    if min(num) == 0:
        return 0.0
    c_len, r_len = sum(map(len, cands)), sum(map(len, refs))
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    return bp * math.exp(sum(math.log(a / b) for a, b in zip(num, den)) / max_n)


def test_bleu_known_values():
    assert kt.corpus_bleu([[1, 2, 3, 4, 5]], [[1, 2, 3, 4, 5]]) == pytest.approx(1.0)
    assert kt.corpus_bleu([[1, 2, 3]], [[4, 5, 6]]) == 0.0
    # hand computation: cand "a b c d x" vs ref "a b c d e": p1=4/5, p2=3/4, p3=2/3, p4=1/2, BP=1
    assert kt.corpus_bleu([[1, 2, 3, 4, 9]], [[1, 2, 3, 4, 5]]) == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25)
    # clipping: "the the the the" vs "the cat": p1 = 1/4 (unigram only)
    assert kt.corpus_bleu([[7, 7, 7, 7]], [[7, 8]], max_n=1) == pytest.approx(0.25)
    # brevity penalty
    assert kt.corpus_bleu([[1, 2]], [[1, 2, 3, 4]], max_n=1) == pytest.approx(math.exp(1 - 2))


def test_bleu_matches_reference_on_random_corpora():
    g = _g(5)
    cands = [torch.randint(0, 4, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(30)]
    refs = [torch.randint(0, 4, (int(torch.randint(4, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(30)]
    assert kt.corpus_bleu(cands, refs) == pytest.approx(_bleu_reference(cands, refs), rel=1e-12)
    with pytest.raises(ValueError, match="as many"):
        kt.corpus_bleu(cands, refs[:-1])


def test_accuracy_metrics():
    y = torch.tensor([[1, 2, kt.IGNORE], [3, 4, 5]])
    pred = torch.tensor([[1, 2, 0], [3, 0, 5]])
    assert kt.token_accuracy(pred, y) == pytest.approx(4 / 5)
    assert kt.exact_match(pred, y) == pytest.approx(0.5)


# ---------------------------------------------------------------- training and statistics

def test_train_task_is_deterministic_and_learns_reversal():
    _train_twice()  # one torch thread, as every unit test (tests/conftest.py)


def _train_twice():
    a = kt.train_task("reversal", ExpDot(), seed=0, steps=60, batch=32, lr=1e-2, n_test=64, n_layers=1,
                      task_kwargs={"length": 4, "vocab": 4})
    b = kt.train_task("reversal", ExpDot(), seed=0, steps=60, batch=32, lr=1e-2, n_test=64, n_layers=1,
                      task_kwargs={"length": 4, "vocab": 4})
    assert a.token_accuracy == b.token_accuracy and a.losses == b.losses
    assert a.losses[-1] < 0.5 * a.losses[0]
    assert 0.0 <= a.bleu <= 1.0


def test_kernel_suite():
    suite = kt.kernel_suite(8, taylor_degrees=(2, 4), rf_dims=(8, 16))
    assert suite["exp"][1] is None and suite["exp"][2] == "infinite"
    assert suite["poly2"][2] == suite["elu+1"][2] == "finite" and suite["poly3"][2] == "signed"
    assert suite["poly2"][1] == math.comb(10, 2)
    assert suite["taylor4"][1] == math.comb(12, 4)
    assert suite["prf16"][1] == 16 and suite["prf16"][2] == "ladder"
    with pytest.raises(ValueError, match="even"):
        kt.kernel_suite(8, taylor_degrees=(3,))


def test_group_gap():
    scores = {"a": [1.0, 0.9], "b": [0.95, 0.85], "c": [0.2, 0.3]}
    gg = kt.group_gap(scores, ["a", "b"], ["c"])
    assert gg.gap == pytest.approx(0.925 - 0.25)
    sd = math.sqrt((0.005 + 0.005 + 0.005) / 3)
    assert gg.margin == pytest.approx(2 * sd * math.sqrt(1 / 4 + 1 / 2))
    assert gg.verdict == "A > B"
    same = kt.group_gap({"a": [1.0, 1.0], "b": [1.0, 1.0]}, ["a"], ["b"], resolution=0.01)
    assert same.gap == 0 and same.margin == 0.01 and same.verdict == "no gap"
    with pytest.raises(ValueError, match="2 seeds"):
        kt.group_gap({"a": [1.0], "b": [1.0, 1.0]}, ["a"], ["b"])


# ---------------------------------------------------------------- training to convergence

def _tiny(**kw):
    return kt.train_task("reversal", ExpDot(), seed=0, batch=32, n_test=64, n_layers=1,
                         task_kwargs={"length": 4, "vocab": 4}, **kw)


def test_early_stopping_solves_and_scores_the_stopping_checkpoint():
    es = kt.EarlyStopping(eval_every=10, patience=3, n_val=64)
    r = _tiny(steps=2000, lr=1e-2, early_stopping=es)
    assert r.stop == "solved" and r.converged
    assert r.steps < 2000 and r.steps % 10 == 0 and r.best_step == r.steps
    assert r.val_curve[-1][0] == r.steps and r.val_curve[-1][2] == 1.0
    assert len(r.losses) == r.steps
    assert r.token_accuracy > 0.9


def test_early_stopping_plateau_counts_patience_and_lr_drops():
    # a learning rate too small to move the validation loss by 1%: the first evaluation is the best,
    # then `patience` bad evaluations, one learning-rate cut, `patience` more, stop
    es = kt.EarlyStopping(eval_every=5, patience=2, lr_drops=1, n_val=64)
    r = _tiny(steps=1000, lr=1e-9, early_stopping=es)
    assert r.stop == "plateau" and r.converged
    assert r.steps == 5 * (1 + 2 + 2) and r.best_step == 5


def test_step_cap_and_untrained_model():
    es = kt.EarlyStopping(eval_every=5, patience=50, n_val=64)
    capped = _tiny(steps=20, lr=1e-3, early_stopping=es)
    assert capped.stop == "max_steps" and not capped.converged and capped.steps == 20
    untrained = _tiny(steps=0)
    assert untrained.steps == 0 and untrained.stop == "fixed" and untrained.losses == []
    # the untrained model is scored as initialised: the same for any learning rate
    assert _tiny(steps=0, lr=0.5).token_accuracy == untrained.token_accuracy


def test_early_stopping_validation():
    with pytest.raises(ValueError, match="min_rel"):
        kt.EarlyStopping(min_rel=1.5)
    with pytest.raises(ValueError, match="lr_factor"):
        kt.EarlyStopping(lr_factor=1.0)
    with pytest.raises(ValueError, match="lr_drops"):
        kt.EarlyStopping(lr_drops=-1)
    with pytest.raises(TypeError, match="EarlyStopping"):
        _tiny(steps=10, early_stopping={"patience": 3})
    with pytest.raises(ValueError, match="steps"):
        _tiny(steps=-1)


def test_paired_gaps():
    scores = {"a": [1.0, 0.5, 0.2], "b": [0.0, 0.5, 0.4], "c": [0.5, 0.5, 0.0]}
    assert kt.paired_gaps(scores, ["a"], ["b", "c"]) == pytest.approx([0.75, 0.0, 0.0])
    assert kt.paired_gaps(scores, ["a", "b"], ["c"]) == pytest.approx([0.0, 0.0, 0.3])
    with pytest.raises(ValueError, match="same number"):
        kt.paired_gaps({"a": [1.0], "b": [1.0, 2.0]}, ["a"], ["b"])
    with pytest.raises(ValueError, match="no scores"):
        kt.paired_gaps(scores, ["a"], ["z"])
    with pytest.raises(ValueError, match="at least one"):
        kt.paired_gaps(scores, [], ["a"])


from hypothesis import given
from hypothesis import strategies as st


@given(st.lists(st.lists(st.floats(0, 1), min_size=3, max_size=3), min_size=3, max_size=3))
def test_property_paired_gaps_antisymmetric_and_zero_for_equal_groups(rows):
    scores = dict(zip("abc", rows))
    fwd = kt.paired_gaps(scores, ["a"], ["b", "c"])
    bwd = kt.paired_gaps(scores, ["b", "c"], ["a"])
    assert fwd == pytest.approx([-x for x in bwd], abs=1e-12)
    assert kt.paired_gaps(scores, ["a", "b"], ["b", "a"]) == pytest.approx([0.0] * 3, abs=1e-12)


def test_validation_accuracy_at_reads_the_curve():
    r = kt.TrainResult(task="recall", kernel="exp", seed=0, token_accuracy=1.0, exact_match=1.0, bleu=1.0,
                       final_loss=0.0, steps=75, best_step=75, stop="solved",
                       val_curve=[(25, 1.0, 0.4), (50, 0.5, 0.8), (75, 0.1, 1.0)])
    assert kt.validation_accuracy_at(r, 25) == 0.4
    assert kt.validation_accuracy_at(r, 60) == 0.8
    assert kt.validation_accuracy_at(r, 1000) == 1.0  # stopped solved before the budget
    with pytest.raises(ValueError, match="no validation"):
        kt.validation_accuracy_at(r, 10)
    with pytest.raises(TypeError):
        kt.validation_accuracy_at({"val_curve": []}, 10)


def _elu_at(beta):
    from lib.kernels import FeatureMapKernel, elu_feature_map

    return FeatureMapKernel(lambda x: elu_feature_map(beta * x), name="elu+1", dim=lambda d: d, positive=True)


def test_retrieval_mass_against_brute_force_and_exp_reaches_one():
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(12, 4, generator=g, dtype=torch.float64)
    keys = keys / keys.norm(dim=1, keepdim=True)
    K = torch.exp(2.0 * keys @ keys.T)
    A = K / K.sum(1, keepdim=True)
    assert abs(kt.retrieval_mass(ExpDot(scale=2.0), keys) - float(torch.diagonal(A).mean())) < 1e-12
    assert kt.best_retrieval_mass(lambda b: ExpDot(scale=b), keys, [1.0, 64.0, 1024.0]) > 0.999
    with pytest.raises(ValueError, match="same shape"):
        kt.retrieval_mass(ExpDot(), keys, queries=keys[:3])
    with pytest.raises(ValueError, match="empty"):
        kt.best_retrieval_mass(lambda b: ExpDot(scale=b), keys, [])


@pytest.mark.parametrize("start", [0, 1, 2])
def test_retrieval_mass_bound_survives_adversarial_keys(start):
    """Gradient ascent on the keys (and queries) cannot push a D-feature kernel's mass above D/n."""
    n, d = 16, 4
    g = torch.Generator().manual_seed(100 + start)
    keys = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(True)
    queries = torch.randn(n, d, generator=g, dtype=torch.float64).requires_grad_(True)
    for make, D in ((lambda: _elu_at(3.0), d), (lambda: Polynomial(2, scale=1.0), Polynomial(2).feature_dim(d))):
        opt = torch.optim.Adam([keys, queries], lr=0.05)
        best = 0.0
        for _ in range(100):
            kern = make()
            eye = torch.eye(n, dtype=torch.float64)
            A = kernel_attention(queries[None], keys[None], eye[None], kern)[0]
            mass = torch.diagonal(A).mean()
            best = max(best, float(mass))
            opt.zero_grad()
            (-mass).backward()
            opt.step()
        assert best <= D / n + 1e-9, (kern.name, best, D / n)


def test_early_stopping_run_drops_the_rate_then_stops_and_restores_the_best():
    """The rule, step by step, on a scripted sequence of validation losses."""
    model = nn.Linear(2, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    run = kt.EarlyStoppingRun(kt.EarlyStopping(patience=2, lr_drops=1, lr_factor=0.5, min_rel=0.1), model, opt, sched)
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert run.update(10, 1.0, 0.2) is None and run.best_step == 10
    with torch.no_grad():
        model.weight.fill_(-7.0)
    assert run.update(20, 0.95, 0.3) is None  # not 10 % better: no improvement
    assert run.update(30, 0.95, 0.3) is None and sched.base_lrs == [0.5] and run.drops == 1
    assert opt.param_groups[0]["initial_lr"] == 0.5
    assert run.update(40, 0.99, 0.3) is None
    assert run.update(50, 0.99, 0.3) == "plateau" and sched.base_lrs == [0.5]
    assert run.restore() and float(model.weight.min()) == 3.0 and run.best_step == 10
    solved = kt.EarlyStoppingRun(kt.EarlyStopping(), model, opt, sched)
    assert not solved.restore()  # no evaluation yet: nothing to restore
    assert solved.update(5, 2.0, 1.0) == "solved" and solved.best_step == 5
    with pytest.raises(TypeError, match="EarlyStopping"):
        kt.EarlyStoppingRun(None, model, opt, sched)  # type: ignore[arg-type]
