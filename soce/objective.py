"""The objective: what a soup's per-category scores add up to (the search maximises it, the
results report it)."""

from __future__ import annotations

import math

from soce.errors import ConfigError


def aggregate(scores: dict[str, float], objective: str) -> float:
    """The objective over all categories: their mean or their sum."""
    values = list(scores.values())
    if objective not in ("mean", "sum"):
        raise ConfigError(f"objective={objective!r}: expected mean or sum")
    return math.fsum(values) / len(values) if objective == "mean" else math.fsum(values)
