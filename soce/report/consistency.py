"""Consistency across categories: the correlation matrix of the categories over the individual
candidates beside the same matrix over the soups (the paper: souping makes category
performance move together)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from soce.analysis import correlation_matrix


@dataclass(frozen=True)
class Consistency:
    categories: tuple[str, ...]
    candidates: np.ndarray  # categories x categories, over the candidates
    soups: np.ndarray  # the same, over the sweep's soups
    n_candidates: int
    n_soups: int

    @property
    def mean_candidates(self) -> float:
        return mean_off_diagonal(self.candidates)

    @property
    def mean_soups(self) -> float:
        return mean_off_diagonal(self.soups)


def mean_off_diagonal(matrix: np.ndarray) -> float:
    """Mean of the correlations between distinct categories, undefined (NaN) ones left out."""
    k = matrix.shape[0]
    values = [matrix[a, b] for a in range(k) for b in range(k) if a != b and not math.isnan(matrix[a, b])]
    return float(np.mean(values)) if values else math.nan


def consistency(categories: tuple[str, ...], candidates: np.ndarray, soups: np.ndarray, method: str = "pearson") -> Consistency:
    """`candidates`, `soups`: score rows (models x categories)."""
    return Consistency(categories, correlation_matrix(candidates, method)[0], correlation_matrix(soups, method)[0],
                       len(candidates), len(soups))
