"""How far the weak set and its experts stand above the scores' sampling noise (beyond the
paper): the score table redrawn many times, each score a binomial proportion of its category's
examples (a parametric bootstrap: a table has no per-example outcomes to resample), and the
analysis repeated on each redraw. Out: per pair of categories a percentile interval of its
correlation; per category the share of redraws in which it enters L; per category of L the
share of redraws in which each pool model leads it (the expert it picks; models tied for the
lead in a redraw share it: a saturated category's leaders are all tied); per pool model the
share of redraws in which the paper's rule, applied to the redraw (its L, its leaders, a tie to
the best overall score), makes it an expert.

A category whose size is unknown keeps its scores in every redraw (no noise is assumed where
none can be measured), and no share is claimed for it: it is named as not redrawn."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from soce.analysis import Analysis, correlation_matrix
from soce.scores import ScoreTable

TIED_SHARE = 0.05  # models leading a category in at least this share of the redraws: its leaders within the noise


@dataclass(frozen=True)
class Stability:
    resamples: int
    confidence: float
    rho_interval: dict[tuple[str, str], tuple[float, float]]  # pair -> (low, high)
    in_weak_set: dict[str, float]  # category -> share of redraws in which it is in L
    leaders: dict[str, dict[str, float]]  # category of L -> pool model -> share of redraws it leads it
    chosen: dict[str, float]  # pool model -> share of redraws in which the paper's rule makes it an expert
    unsized: tuple[str, ...] = ()  # categories of unknown size: never redrawn, no share claimed for them

    def to_dict(self) -> dict:
        return {"resamples": self.resamples, "confidence": self.confidence,
                "rho_interval": [{"a": a, "b": b, "ci": [_json(lo), _json(hi)]} for (a, b), (lo, hi) in self.rho_interval.items()],
                "in_weak_set": self.in_weak_set, "leaders": self.leaders, "chosen": self.chosen, "unsized": list(self.unsized)}


def _json(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def stability(population: ScoreTable, analysis: Analysis, pool: Sequence[str], resamples: int = 200, seed: int = 0,
              confidence: float = 0.95) -> Stability:
    """`analysis` (of `population`, with its sizes) repeated on `resamples` redraws of the
    population's scores; the leaders and experts among the `pool` (models of the population)."""
    sizes = np.array([n if n else 0 for n in analysis.sizes] or [0] * len(analysis.categories), dtype=np.float64)
    rng = np.random.default_rng(seed)
    redraw = _redrawer(sizes, rng)
    cats = analysis.categories
    weak = analysis.weak_set
    matrices, in_l = [], {c: 0 for c in cats}
    leads: dict[str, dict[str, float]] = {c: {} for c in weak}
    chosen: dict[str, int] = {}
    rows = [population.models.index(m) for m in pool]
    overall = np.nan_to_num(population.overall[rows], nan=-np.inf)  # the paper's tie rule: the best overall score
    for _ in range(resamples):
        values = redraw(population.values)
        matrix, counts = correlation_matrix(values, analysis.method)
        matrices.append(matrix)
        redrawn_l = replace(analysis, matrix=matrix, counts=counts).weak_set
        for c in redrawn_l:
            in_l[c] += 1
        experts = set()
        for c in set(weak) | set(redrawn_l):
            column = values[rows, cats.index(c)]
            if np.all(np.isnan(column)):
                continue
            tied = np.flatnonzero(column == np.nanmax(column))
            if c in weak:
                for i in tied:
                    leads[c][pool[i]] = leads[c].get(pool[i], 0) + 1 / len(tied)
            if c in redrawn_l:
                experts.add(pool[max(tied, key=lambda i: (overall[i], -i))])
        for m in experts:
            chosen[m] = chosen.get(m, 0) + 1
    stack = np.stack(matrices)
    tail = (1 - confidence) / 2
    intervals = {}
    for a in range(len(cats)):
        for b in range(a + 1, len(cats)):
            finite = stack[:, a, b][~np.isnan(stack[:, a, b])]
            lo, hi = np.quantile(finite, [tail, 1 - tail]) if finite.size else (math.nan, math.nan)
            intervals[(cats[a], cats[b])] = (float(lo), float(hi))
    unsized = tuple(c for c, n in zip(cats, sizes) if n == 0)
    return Stability(resamples, confidence, intervals, {c: k / resamples for c, k in in_l.items() if c not in unsized},
                     {c: {m: k / resamples for m, k in sorted(by.items(), key=lambda kv: -kv[1])} for c, by in leads.items()
                      if c not in unsized},
                     {m: k / resamples for m, k in sorted(chosen.items(), key=lambda kv: -kv[1])}, unsized)


def _redrawer(sizes: np.ndarray, rng: np.random.Generator):
    """A function redrawing a models x categories table of accuracies (fractions or percentages)."""
    def redraw(values: np.ndarray) -> np.ndarray:
        scale = 100.0 if np.nanmax(values, initial=0.0) > 1.0 else 1.0
        p = np.clip(np.nan_to_num(values / scale), 0.0, 1.0)
        n = np.rint(np.broadcast_to(sizes, p.shape)).astype(np.int64)
        drawn = rng.binomial(np.maximum(n, 1), p) / np.maximum(n, 1)
        out = np.where(n > 0, drawn, p) * scale
        return np.where(np.isnan(values), np.nan, out)
    return redraw


def leading(stability: dict, category: str) -> dict[str, float]:
    """The models leading `category` of L in at least TIED_SHARE of the redraws (`stability`:
    Stability's dict), most often first, with their shares: more than one are tied within the noise."""
    return {m: s for m, s in stability["leaders"].get(category, {}).items() if s >= TIED_SHARE}


def stability_lines(stability: dict, weak: Sequence[str]) -> list[str]:
    """One line per category of L (and per category outside L that enters it in some redraws):
    how often it is in L, and for L's categories which pool models lead it how often (`leading`);
    then how often each pool model is an expert of the paper's rule on the redraws."""
    out = []
    for c, share in sorted(stability["in_weak_set"].items(), key=lambda kv: -kv[1]):
        if c not in weak and share == 0:
            continue
        line = f"{c}: {'in' if c in weak else 'not in'} L, in L in {share:.0%} of redraws"
        shown = leading(stability, c)
        if shown:
            tied = " (tied within the noise)" if len(shown) > 1 else ""
            line += f"; led by{tied} " + ", ".join(f"{m} {s:.0%}" for m, s in shown.items())
        out.append(line)
    unsized = stability.get("unsized") or []
    if unsized:
        out.append(f"not redrawn, their number of examples unknown (no share is claimed for them): {', '.join(unsized)}")
    if stability.get("chosen"):
        out.append("experts of the paper's rule on the redraws" + (" (the categories above held fixed)" if unsized else "")
                   + ": " + ", ".join(f"{m} {s:.0%}" for m, s in stability["chosen"].items()))
    return out
