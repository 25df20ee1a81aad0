"""Paired statistics on per-example outcomes: bootstrap confidence intervals of a benchmark
objective (examples resampled within each of its groups, so every category or test file keeps its size) for one
model and for the difference of two models on the same examples, and McNemar's exact test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from soce.errors import ConfigError
from soce.objective import Objective


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "ci": [self.low, self.high]}


class Bootstrap:
    """Resamples of one split's examples, drawn once and shared by every model compared on them
    (that is what makes a difference paired). `examples`: (id, category) pairs, in the order of
    the outcome vectors given later; `objective`: the study's, which says each example's group
    (its category, or its test file) and combines the groups' accuracies."""

    def __init__(self, examples: Sequence[tuple[str, str]], objective: Objective = Objective(), samples: int = 2000,
                 seed: int = 0, confidence: float = 0.95) -> None:
        if not 0 < confidence < 1:
            raise ConfigError(f"confidence={confidence}: must be between 0 and 1")
        if samples < 2:
            raise ConfigError(f"samples={samples}: a bootstrap needs at least 2")
        rng = np.random.default_rng(seed)
        of = objective.groups(examples)
        names = list(dict.fromkeys(of))
        labels = np.asarray(of)
        self.groups = [np.flatnonzero(labels == g) for g in names]
        # per group: (samples, size) indices into the outcome vectors
        self.draws = [g[rng.integers(0, len(g), size=(samples, len(g)))] for g in self.groups]
        self.combine, self.confidence = objective.combiner(names, [len(g) for g in self.groups]), confidence

    def _objective(self, values: np.ndarray, draws: Sequence[np.ndarray]) -> np.ndarray:
        return self.combine(np.stack([values[d].mean(axis=-1) for d in draws], axis=-1))

    def _interval(self, values: np.ndarray) -> Interval:
        estimate = float(self._objective(values, self.groups))
        resampled = self._objective(values, self.draws)
        tail = (1 - self.confidence) / 2
        low, high = np.quantile(resampled, [tail, 1 - tail])
        return Interval(estimate, float(low), float(high))

    def interval(self, correct: Sequence[bool]) -> Interval:
        """The objective of one model's outcomes, with its percentile interval."""
        return self._interval(np.asarray(correct, dtype=np.float64))

    def difference(self, a: Sequence[bool], b: Sequence[bool]) -> Interval:
        """objective(a) - objective(b) on the same examples, with its paired percentile interval."""
        return self._interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))


@dataclass(frozen=True)
class McNemar:
    only_a: int  # examples a solves and b does not
    only_b: int
    p: float  # exact two-sided: the discordant examples split as evenly as a fair coin would

    def to_dict(self) -> dict:
        return {"only_a": self.only_a, "only_b": self.only_b, "p": self.p}


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's exact test of two models' paired outcomes (the binomial test on the examples
    exactly one of them solves)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = 1.0 if n == 0 else min(1.0, 2 * math.fsum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return McNemar(only_a, only_b, p)


def score_noise(p: float, examples: int) -> float:
    """Two binomial standard errors of an accuracy `p` on `examples` examples (0 where the count is
    unknown): a difference between such scores smaller than this is inside the sampling noise."""
    if not examples:
        return 0.0
    p = min(max(p, 0.0), 1.0)
    return 2 * math.sqrt(p * (1 - p) / examples)
