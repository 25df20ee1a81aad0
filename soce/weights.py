"""Weight spaces: points of the simplex (one weight per expert, summing to 1).

The paper's grid takes every weight from {lo, lo+step, ..., hi} with the weights summing to
exactly 1. It is enumerated in integer units of `step`, so that no point is lost to floating
point: 3 experts give 36 points, 4 give 84.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from soce.errors import ConfigError


def _units(value: float, step: float, key: str) -> int:
    units = value / step
    if abs(units - round(units)) > 1e-9:
        raise ConfigError(f"{key}={value} is not a multiple of step={step}")
    return round(units)


def simplex_grid(n: int, lo: float = 0.1, hi: float = 0.9, step: float = 0.1) -> list[tuple[float, ...]]:
    """Every vector of n weights in {lo, lo+step, ..., hi} that sums to 1, in lexicographic order."""
    if n < 1:
        raise ConfigError("the grid needs at least one expert")
    if not 0 < step <= 1:
        raise ConfigError(f"step={step}: must be in (0, 1]")
    if abs(1 / step - round(1 / step)) > 1e-9:
        raise ConfigError(f"step={step}: 1 is not a multiple of it, so no weights of the grid sum to 1 (e.g. step=0.1, 0.05)")
    total = _units(1.0, step, "step")
    low, high = _units(lo, step, "lo"), _units(hi, step, "hi")
    if low < 0 or high < low:
        raise ConfigError(f"lo={lo}, hi={hi}: need 0 <= lo <= hi")

    def compositions(k: int, left: int) -> Iterator[tuple[int, ...]]:
        if k == 1:
            if low <= left <= high:
                yield (left,)
            return
        for first in range(low, min(high, left) + 1):
            for rest in compositions(k - 1, left - first):
                yield (first, *rest)

    return [tuple(u / total for u in c) for c in compositions(n, total)]


def uniform(n: int) -> tuple[float, ...]:
    return tuple(1.0 / n for _ in range(n))


def dirichlet(n: int, count: int, concentration: float = 1.0, seed: int = 0) -> list[tuple[float, ...]]:
    """`count` random points of the simplex (Dirichlet with equal concentrations)."""
    if concentration <= 0:
        raise ConfigError(f"concentration={concentration}: must be positive")
    rng = np.random.default_rng(seed)
    return [tuple(float(w) for w in row) for row in rng.dirichlet([concentration] * n, size=count)]


def key(weights: tuple[float, ...] | list[float]) -> str:
    """A stable name for a weight vector (rounded to 1e-9): the store's key for a point."""
    return ",".join(f"{w:.9f}" for w in weights)


def close(a, b) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(a, b))


def weight_text(w: float) -> str:
    """A weight as printed: two decimals, three where two would round it (8 uniform weights are
    0.125 each, not 0.12: printed weights sum to 1 as the real ones do)."""
    return f"{w:.2f}" if abs(round(w, 2) - w) < 1e-9 else f"{w:.3f}"
