"""Shapley values of a cooperative game: players are models, the value of a coalition is the
score of its soup. Exact over all subsets for a few players; Monte Carlo permutation sampling,
with a standard error per player, beyond.

phi_i = sum over S not containing i of |S|! (n-|S|-1)! / n! * (v(S + i) - v(S)).
Efficiency: sum_i phi_i = v(all) - v(empty).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import combinations
from typing import Callable
from soce.errors import ConfigError

Value = Callable[[frozenset[int]], float]


@dataclass(frozen=True)
class ShapleyResult:
    values: tuple[float, ...]
    errors: tuple[float, ...] | None  # Monte Carlo: the standard error of each value; exact: None
    method: str  # exact | monte_carlo
    samples: int  # permutations drawn (Monte Carlo), 0 for exact
    coalitions: int  # distinct coalitions whose value was asked for


class _Memo:
    """Asks `value` once per coalition; the empty coalition is worth `empty`."""

    def __init__(self, value: Value, empty: float) -> None:
        self.value, self.cache = value, {frozenset(): empty}

    def __call__(self, coalition: frozenset[int]) -> float:
        if coalition not in self.cache:
            self.cache[coalition] = float(self.value(coalition))
        return self.cache[coalition]


def exact_shapley(n: int, value: Value, empty: float = 0.0) -> ShapleyResult:
    """Every one of the 2^n coalitions is valued once."""
    v = _Memo(value, empty)
    weight = [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    phi = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        phi.append(math.fsum(weight[s] * (v(frozenset(S) | {i}) - v(frozenset(S)))
                             for s in range(n) for S in combinations(others, s)))
    return ShapleyResult(tuple(phi), None, "exact", 0, len(v.cache) - 1)


def monte_carlo_shapley(n: int, value: Value, samples: int, seed: int = 0, empty: float = 0.0) -> ShapleyResult:
    """Mean marginal contribution over `samples` random orders of the players; each value's
    standard error is the sample standard deviation of its contributions over sqrt(samples)."""
    if samples < 2:
        raise ConfigError(f"samples={samples}: need at least 2 permutations for an error estimate")
    v = _Memo(value, empty)
    rng = random.Random(seed)
    contributions: list[list[float]] = [[] for _ in range(n)]
    for _ in range(samples):
        order = list(range(n))
        rng.shuffle(order)
        coalition, before = frozenset(), empty
        for i in order:
            coalition = coalition | {i}
            after = v(coalition)
            contributions[i].append(after - before)
            before = after
    means = [math.fsum(c) / samples for c in contributions]
    errors = [math.sqrt(math.fsum((x - m) ** 2 for x in c) / (samples - 1) / samples) for c, m in zip(contributions, means)]
    return ShapleyResult(tuple(means), tuple(errors), "monte_carlo", samples, len(v.cache) - 1)


def shapley(n: int, value: Value, method: str = "auto", max_exact: int = 8, samples: int = 200, seed: int = 0,
            empty: float = 0.0) -> ShapleyResult:
    """Exact for up to `max_exact` players (method=auto), Monte Carlo beyond."""
    if method not in ("auto", "exact", "monte_carlo"):
        raise ConfigError(f"method={method!r}: expected auto, exact or monte_carlo")
    if method == "exact" or (method == "auto" and n <= max_exact):
        return exact_shapley(n, value, empty)
    return monte_carlo_shapley(n, value, samples, seed, empty)
