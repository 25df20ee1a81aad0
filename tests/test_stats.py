"""The paired statistics: McNemar against a hand-computed table, the bootstrap's intervals
against known differences over repeated synthetic draws."""

import math

import numpy as np
import pytest

from soce.errors import ConfigError
from soce.objective import Objective, Sum
from soce.stats import Bootstrap, mcnemar


def test_mcnemar_matches_a_hand_computed_table():
    # 20 examples: both solve 5, only a solves 3, only b solves 10, neither 2
    a = [1] * 5 + [1] * 3 + [0] * 10 + [0] * 2
    b = [1] * 5 + [0] * 3 + [1] * 10 + [0] * 2
    test = mcnemar(a, b)
    assert (test.only_a, test.only_b) == (3, 10)
    # exact: 2 * P(X <= 3), X ~ Binomial(13, 1/2) = 2 * (1 + 13 + 78 + 286) / 8192
    assert test.p == pytest.approx(2 * 378 / 8192) == pytest.approx(0.092285, abs=1e-6)
    assert mcnemar(b, a).p == test.p and mcnemar(a, a).p == 1.0
    assert mcnemar([1] * 12, [0] * 12).p == pytest.approx(2 / 4096)


def test_the_estimate_is_the_studys_objective_and_the_interval_brackets_it():
    cats = list(enumerate(["x"] * 4 + ["y"] * 6))
    boot = Bootstrap(cats, Objective(), samples=500)
    r = boot.interval([1, 1, 0, 0, 1, 1, 1, 0, 0, 0])  # x: 0.5, y: 0.5
    assert r.estimate == 0.5 and r.low <= 0.5 <= r.high and r.low < r.high
    assert Bootstrap(cats, Sum(), samples=500).interval([1] * 10).to_dict() == {"estimate": 2.0, "ci": [2.0, 2.0]}
    assert boot.difference([1] * 10, [1] * 10).to_dict() == {"estimate": 0.0, "ci": [0.0, 0.0]}
    with pytest.raises(ConfigError, match="confidence=1.5"):
        Bootstrap(cats, confidence=1.5)


def test_the_paired_interval_contains_the_true_difference_at_the_stated_rate():
    """200 synthetic studies: two models on 3 categories of 120 examples, their true objectives
    0.05 apart, their outcomes correlated (they share most examples' difficulty). The 90% interval
    must contain 0.05 in about 90% of them, and the paired one must be narrower than it would be
    unpaired."""
    rng = np.random.default_rng(7)
    cats = np.repeat(["a", "b", "c"], 120)
    p_a, p_b = np.array([0.8, 0.6, 0.7]), np.array([0.75, 0.55, 0.65])  # true difference 0.05 in each
    covered, widths, unpaired = 0, [], []
    studies = 200
    for s in range(studies):
        u = rng.random(cats.size)  # one difficulty per example, shared: the pairing
        p_of = {c: i for i, c in enumerate("abc")}
        idx = np.array([p_of[c] for c in cats])
        a, b = u < p_a[idx], u < p_b[idx]
        boot = Bootstrap(list(enumerate(cats)), samples=1000, seed=s, confidence=0.9)
        d = boot.difference(a, b)
        covered += d.low <= 0.05 <= d.high
        widths.append(d.high - d.low)
        ia, ib = boot.interval(a), boot.interval(b)
        unpaired.append(math.hypot(ia.high - ia.low, ib.high - ib.low))
    assert 0.84 <= covered / studies <= 0.95, covered
    assert np.median(widths) < 0.5 * np.median(unpaired)
