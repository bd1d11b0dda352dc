"""The ledger's reading of a paper-scale record whose declared outcome did not hold."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))

from claims_ledger import observed_outcome


def _claim(
    measured,
    seeds,
    *,
    relation=">=",
    expected=1.0,
    kind="paper",
    control_holds=False,
    weaker=None,
):
    return {
        "kind": kind,
        "relation": relation,
        "expected": expected,
        "tol": None,
        "measured": measured,
        "seeds": seeds,
        "weaker": weaker,
        "control": {"holds": control_holds},
    }


@pytest.mark.parametrize(
    ("claim", "want"),
    [
        (_claim(1.2, [1.2, 1.5, 1.3]), "reproduced"),
        (_claim(0.4, [0.4, 1.1, 0.9]), "partly"),
        (_claim(0.4, [0.4, 0.5, 0.9]), "not reproduced"),
        (_claim(0.4, [0.4, 0.5], weaker=[">=", 0.3]), "partly"),
        (_claim(0.4, [0.4]), "not reproduced"),
        (_claim(0.2, [0.2, 0.1], relation="<=", expected=0.5), "reproduced"),
        (_claim(0.2, [0.2], kind="book", relation="<=", expected=0.1), "does not hold"),
    ],
)
def test_observed_outcome(claim, want):
    assert observed_outcome(claim) == want


def test_observed_outcome_says_when_the_control_cannot_tell():
    got = observed_outcome(_claim(0.4, [0.4, 0.5], control_holds=True))
    assert got.startswith("not reproduced") and "inconclusive" in got
