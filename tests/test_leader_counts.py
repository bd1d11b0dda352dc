"""Tests for the leader-count summaries of lib.sentiment: count_summary and the length-matched
difference of mean counts (direct standardisation), against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lib.sentiment import count_summary, length_matched_difference


def _brute_force(a, la, b, lb, edges=None):
    """Stratum by stratum with Python loops: the reference."""
    if edges is None:
        strata = sorted(set(la.tolist()) | set(lb.tolist()))
        member = {s: (lambda x, s=s: x == s) for s in strata}
    else:
        strata = list(edges)
        upper = list(edges[1:]) + [np.inf]
        member = {s: (lambda x, s=s, u=u: s <= x < u) for s, u in zip(strata, upper)}
    rows = []
    for s in strata:
        ia = [i for i in range(len(a)) if member[s](la[i])]
        ib = [i for i in range(len(b)) if member[s](lb[i])]
        if ia and ib:
            rows.append((s, len(ia), sum(a[i] for i in ia) / len(ia), sum(b[i] for i in ib) / len(ib)))
    total = sum(r[1] for r in rows)
    return sum(r[1] / total * (r[2] - r[3]) for r in rows), [r[0] for r in rows]


def test_count_summary_by_hand():
    s = count_summary(np.array([1, 2, 3, 6]))
    assert s == {"mean": 3.0, "std": pytest.approx(np.sqrt(3.5)), "min": 1.0, "max": 6.0}
    with pytest.raises(ValueError):
        count_summary(np.array([]))
    with pytest.raises(ValueError):
        count_summary(np.array([[1, 2]]))
    with pytest.raises(ValueError):
        count_summary(np.array([1.0, np.nan]))


def test_length_matched_by_hand():
    # set a: short reviews with 1 leader, long with 3; set b: the same per length, more long ones
    a, la = np.array([1, 1, 1, 3]), np.array([2, 2, 2, 9])
    b, lb = np.array([1, 3, 3, 3]), np.array([2, 9, 9, 9])
    r = length_matched_difference(a, la, b, lb)
    # raw means differ (1.5 vs 2.5) only through length; at equal length the counts agree
    assert a.mean() - b.mean() == -1.0
    assert r.difference == 0.0
    assert r.strata.tolist() == [2, 9] and r.n_a.tolist() == [3, 1] and r.n_b.tolist() == [1, 3]
    assert r.weight.tolist() == [0.75, 0.25] and r.coverage == 1.0
    # a stratum that only one set has is left out, and coverage says how much of a that drops
    r2 = length_matched_difference(np.array([1, 5]), np.array([2, 4]), np.array([2]), np.array([2]))
    assert r2.difference == -1.0 and r2.coverage == 0.5 and r2.strata.tolist() == [2]


@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(1, 15)), min_size=1, max_size=40),
    st.lists(st.tuples(st.integers(0, 12), st.integers(1, 15)), min_size=1, max_size=40),
    st.sampled_from([None, [1], [1, 5, 10], [1, 2, 3, 4, 8]]),
)
def test_length_matched_equals_brute_force(pa, pb, edges):
    a, la = (np.array(x) for x in zip(*pa))
    b, lb = (np.array(x) for x in zip(*pb))
    ref, strata = _brute_force(a, la, b, lb, edges)
    if not strata:
        with pytest.raises(ValueError, match="no length stratum"):
            length_matched_difference(a, la, b, lb, edges=edges)
        return
    r = length_matched_difference(a, la, b, lb, edges=edges)
    assert r.strata.tolist() == strata
    assert abs(r.difference - ref) <= 1e-12 * max(1.0, abs(ref))
    assert abs(r.weight.sum() - 1) <= 1e-12


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(1, 15)), min_size=1,
                max_size=50))
def test_same_reviews_is_the_plain_mean_difference(rows):
    a, b, ln = (np.array(x) for x in zip(*rows))
    for lengths_b in (None, ln):
        r = length_matched_difference(a, ln, b, lengths_b)
        assert abs(r.difference - (a.mean() - b.mean())) <= 1e-12 * max(1.0, abs(a).max())
        assert r.coverage == 1.0


@given(
    st.lists(st.integers(1, 15), min_size=1, max_size=40),
    st.lists(st.integers(1, 15), min_size=1, max_size=40),
)
def test_a_pure_length_effect_gives_zero(la, lb):
    """Counts that depend on length alone differ between sets only through their length
    distributions: the length-matched difference is exactly 0 whatever the two distributions."""
    la, lb = np.array(la), np.array(lb)
    f = np.sqrt
    if not set(la.tolist()) & set(lb.tolist()):
        return
    r = length_matched_difference(f(la), la, f(lb), lb)
    assert abs(r.difference) <= 1e-12


def test_length_matched_bad_input():
    a, ln = np.array([1.0, 2.0]), np.array([3, 4])
    with pytest.raises(ValueError, match="1-D"):
        length_matched_difference(a, ln[:1], a, ln)
    with pytest.raises(ValueError, match="1-D"):
        length_matched_difference(np.array([]), np.array([], dtype=int), a, ln)
    with pytest.raises(ValueError, match="integers"):
        length_matched_difference(a, np.array([3.0, 4.0]), a, ln)
    with pytest.raises(ValueError, match="integers"):
        length_matched_difference(a, np.array([-1, 4]), a, ln)
    with pytest.raises(ValueError, match="finite"):
        length_matched_difference(np.array([1.0, np.inf]), ln, a, ln)
    with pytest.raises(ValueError, match="increasing"):
        length_matched_difference(a, ln, a, ln, edges=[3, 3])
    with pytest.raises(ValueError, match="below the first edge"):
        length_matched_difference(a, ln, a, ln, edges=[4])
