"""Step 2 of SoCE: choose the experts, and say why every other candidate was left out.

Strategies (the config group `selection`, one registered class each: its settings and its
choice): `soce` (the best candidate of each category in the weak set L), `all`, `topk` (best
overall), `manual`. Experts come out ordered by overall score, best first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np
from omegaconf import MISSING

from soce.analysis import Analysis
from soce.choices import Population, Ties
from soce.errors import ConfigError
from soce.registry import Registry
from soce.scores import ScoreTable, closest
from soce.stability import leading

log = logging.getLogger("soce")


@dataclass(frozen=True)
class Expert:
    model: str
    reason: str
    leads: tuple[str, ...] = ()
    overall: float = math.nan
    scores: dict | None = None


@dataclass(frozen=True)
class Selection:
    strategy: str
    experts: tuple[Expert, ...]
    excluded: dict[str, str]
    notes: tuple[str, ...] = ()  # what missing scores and ties did to the choice

    @property
    def models(self) -> list[str]:
        return [e.model for e in self.experts]

    def to_dict(self) -> dict:
        experts = [{**asdict(e), "leads": list(e.leads), "overall": _json(e.overall)} for e in self.experts]
        for e in experts:
            e["scores"] = {k: _json(v) for k, v in (e["scores"] or {}).items()}
        return {"strategy": self.strategy, "experts": experts, "excluded": self.excluded, "notes": list(self.notes)}


def _json(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _best(table: ScoreTable, pool: Sequence[str], column: np.ndarray) -> str | None:
    """The pool model with the highest value; ties go to the better overall, then pool order."""
    ranked = [(v, _or(table.overall_of(m)), -i, m) for i, (m, v) in enumerate(zip(pool, column)) if not math.isnan(v)]
    return max(ranked)[3] if ranked else None


def _or(v: float, default: float = -math.inf) -> float:
    return default if math.isnan(v) else v


def _by_overall(table: ScoreTable, models: Sequence[str]) -> list[str]:
    return sorted(models, key=lambda m: (-_or(table.overall_of(m)), models.index(m)))


def _expert(table: ScoreTable, model: str, reason: str, leads: Sequence[str] = ()) -> Expert:
    return Expert(model, reason, tuple(leads), table.overall_of(model), table.row(model))


def best_overall(table: ScoreTable, pool: Sequence[str]) -> str:
    ranked = _by_overall(table, pool)
    if math.isnan(table.overall_of(ranked[0])):
        raise ConfigError("no pool model has an overall score (a category score is missing for each)")
    return ranked[0]


def select_soce(
    table: ScoreTable,
    pool: Sequence[str],
    analysis: Analysis,
    *,
    keep_best_overall: bool = False,
    max_experts: int | None = None,
    keep_ties: bool = False,
) -> Selection:
    """Algorithm 1, step 3: for each category of L, the pool's best model on it; each model once.
    keep_ties: every tied leader of a category is an expert too (exact ties, and the leaders tied
    within the noise in the analysis's redraws of the scores)."""
    weak = analysis.weak_set
    if not weak:
        left_out = analysis.left_out
        pairs = [(abs(r), a, b) for a, b, r in analysis.pairs() if not math.isnan(r) and a not in left_out and b not in left_out]
        hint = ""
        if pairs:
            t, a, b = min(pairs)
            hint = f"; the weakest pair is {a} and {b} (|rho|={t:.3f}): any tau above {t:.3f} gives a non-empty set"
        if left_out:
            hint += (f"; analysis.min_reliability={analysis.min_reliability:g} leaves {len(left_out)} of "
                     f"{len(analysis.categories)} categories out of L ({', '.join(left_out)})"
                     + ("" if pairs else ": no pair is left to be weak; lower analysis.min_reliability, or unset it for the "
                        "paper's rule"))
        raise ConfigError(f"the selection is empty: no pair of categories has |rho| < tau={analysis.tau:g}{hint}")
    scores = table.subset(pool)
    leads: dict[str, list[str]] = {}
    tied_leads: dict[str, list[str]] = {}  # keep_ties: the other tied leaders of each category
    notes = []
    for cat in weak:
        column = scores.values[:, table.categories.index(cat)]
        leader = _best(table, pool, column)
        missing = [m for m, v in zip(pool, column) if math.isnan(v)]
        if leader is None:
            notes.append(f"category {cat!r} of L has no expert: no pool model has a score on it (all N/A)")
            continue
        leads.setdefault(leader, []).append(cat)
        tied = [m for m, v in zip(pool, column) if v == table.score(leader, cat)]
        if keep_ties:
            noisy = [m for m in (leading(analysis.stability, cat) if analysis.stability else {}) if m in pool and m not in tied]
            for m in [*tied, *noisy]:
                if m != leader:
                    tied_leads.setdefault(m, []).append(cat)
        if len(tied) > 1 and not keep_ties:
            notes.append(f"{cat!r}: {len(tied)} pool models tie at {table.score(leader, cat):g} ({_some(tied)}); a tie goes "
                         f"to the best overall score: {leader}")
        if missing:
            notes.append(f"{cat!r}: {leader} leads among the {len(pool) - len(missing)} pool models with a score; "
                         f"{len(missing)} without one (N/A) could not: {_some(missing)}")
    experts = {m: _expert(table, m, "best on " + ", ".join(cats), cats) for m, cats in leads.items()}
    for m, cats in tied_leads.items():
        if m not in experts:
            experts[m] = _expert(table, m, "tied for the lead on " + ", ".join(cats) + " (selection.ties=all)", cats)
    if keep_best_overall:
        top = best_overall(table, pool)
        if top not in experts:
            experts[top] = _expert(table, top, "best overall (selection.keep_best_overall)")
    excluded = {}
    if max_experts is not None and len(experts) > max_experts:
        forced = best_overall(table, pool) if keep_best_overall else None
        rank = sorted(experts, key=lambda m: (m != forced, -len(experts[m].leads), -_or(experts[m].overall)))
        for m in rank[max_experts:]:
            excluded[m] = f"left out by selection.max_experts={max_experts}: leads {len(experts[m].leads)} ({', '.join(experts[m].leads)})"
            del experts[m]
    for m in pool:
        if m not in experts and m not in excluded:
            excluded[m] = _why_not_leader(table, pool, m, weak)
    return Selection("soce", tuple(experts[m] for m in _by_overall(table, list(experts))), excluded, tuple(notes))


def _some(names: Sequence[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _why_not_leader(table: ScoreTable, pool: Sequence[str], model: str, weak: Sequence[str]) -> str:
    """The category of L where `model` came closest to the leader."""
    gaps = []
    for cat in weak:
        column = np.array([table.score(m, cat) for m in pool])
        leader = _best(table, pool, column)
        mine = table.score(model, cat)
        if leader is not None and not math.isnan(mine):
            gaps.append((table.score(leader, cat) - mine, cat, leader, mine))
    if not gaps:
        return "no score on any category of L"
    gap, cat, leader, mine = min(gaps)
    if gap == 0:
        return f"leads no category of L; ties {leader} on {cat!r} ({mine:g})"
    return f"leads no category of L; closest on {cat!r}: {mine:g} vs {table.score(leader, cat):g} ({leader})"


def select_all(table: ScoreTable, pool: Sequence[str]) -> Selection:
    return Selection("all", tuple(_expert(table, m, "in the pool") for m in _by_overall(table, pool)), {})


def select_topk(table: ScoreTable, pool: Sequence[str], k: int) -> Selection:
    if k < 1:
        raise ConfigError(f"k={k}: must be at least 1")
    ranked = _by_overall(table, pool)
    unranked = {m for m in ranked if math.isnan(table.overall_of(m))}

    def rank(i: int, m: str) -> str:
        return "no overall score: ranked after those with one" if m in unranked else f"#{i + 1}"

    experts = tuple(_expert(table, m, f"top {k} overall ({rank(i, m)})") for i, m in enumerate(ranked[:k]))
    excluded = {m: f"overall rank {rank(i + k, m)}, below the top {k}" for i, m in enumerate(ranked[k:])}
    return Selection("topk", experts, excluded)


def select_manual(table: ScoreTable, pool: Sequence[str], models: Sequence[str]) -> Selection:
    if not models:
        raise ConfigError("models is empty: name the experts to use")
    for m in models:
        if m not in pool:
            raise ConfigError(f"models names {m!r}, which is not in the pool{closest(m, pool)}")
    experts = tuple(_expert(table, m, "named in selection.models") for m in _by_overall(table, list(models)))
    return Selection("manual", experts, {m: "not named in selection.models" for m in pool if m not in models})


# --- the strategies, as the config group `selection` ---------------------------------------------
SELECTIONS: Registry[type["SelectionBase"]] = Registry("selection")


@dataclass
class SelectionBase:
    def choose(self, table: ScoreTable, pool: Sequence[str], analysis: Analysis) -> Selection:
        """The experts among the `pool` models of `table`."""
        raise NotImplementedError

    def named(self) -> list[str] | None:
        """The models the settings name (checked against the pool before anything runs)."""
        return None

    def weak_set(self, analysis: Analysis) -> tuple[list[str] | None, float | None]:
        """The weak set and tau the choice rests on (None, None where it rests on neither)."""
        return None, None

    @property
    def experts_label(self) -> str:
        """What its experts are, in the results ("SoCE experts" only where SoCE chose them)."""
        raise NotImplementedError

    @property
    def searched_label(self) -> str:
        return f"searched soup, {self.experts_label}"


@SELECTIONS.register("soce")
@dataclass
class SoceSelection(SelectionBase):
    name: str = "soce"
    tau: float = 0.2
    population: Population = Population.all
    keep_best_overall: bool = False
    max_experts: Optional[int] = None
    ties: Ties = Ties.best_overall  # all: every tied leader (exact, or within the noise of the redraws) is an expert

    def choose(self, table, pool, analysis):
        if len(analysis.models) < 3:
            raise ConfigError(f"selection=soce chooses experts by the correlations between categories, which need at least 3 "
                              f"models; the analysis has {len(analysis.models)} ({', '.join(analysis.models)}). Add candidates "
                              f"to the pool, or choose selection=all or selection=manual")
        if self.ties == Ties.all and not analysis.stability:
            log.warning("selection.ties=all: the analysis has no redraws of the scores (their sizes are unknown, or "
                        "analysis.resamples=0): only exact ties are kept")
        return select_soce(table, pool, analysis, keep_best_overall=self.keep_best_overall, max_experts=self.max_experts,
                           keep_ties=self.ties == Ties.all)

    def weak_set(self, analysis):
        return list(analysis.weak_set), analysis.tau

    experts_label = "SoCE experts"
    searched_label = "SoCE"


@SELECTIONS.register("all")
@dataclass
class AllSelection(SelectionBase):
    name: str = "all"

    def choose(self, table, pool, analysis):
        return select_all(table, pool)

    experts_label = "all candidates (selection=all)"


@SELECTIONS.register("topk")
@dataclass
class TopKSelection(SelectionBase):
    name: str = "topk"
    k: int = 3

    def choose(self, table, pool, analysis):
        return select_topk(table, pool, self.k)

    @property
    def experts_label(self) -> str:
        return f"top-{self.k} experts"


@SELECTIONS.register("manual")
@dataclass
class ManualSelection(SelectionBase):
    name: str = "manual"
    models: List[str] = MISSING

    def choose(self, table, pool, analysis):
        from soce.pool import Candidate, resolve_pool

        chosen = resolve_pool([Candidate(m) for m in self.models], pool, f"the pool ({', '.join(pool)})")
        return select_manual(table, pool, [c.name for c in chosen])

    def named(self):
        return list(self.models)

    experts_label = "chosen experts"
