"""What the report says, computed: the study's inputs (StudyReport) -> its content (Content),
section by section. Nothing here writes markdown, draws or tracks; soce.report.render does.

Works on a finished run and on an interrupted one (the sweep points stored so far; which
stages have not run); the coalition soups Shapley values need and the soups on the experts'
lines are evaluated once and kept in the sweep store, so a second report costs no evaluation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from soce.config import CoalitionValue, Players, ShapleyConfig
from soce.merge.vectors import TaskVectors, task_vectors
from soce.objective import Objective
from soce.progress import Progress, plural
from soce.report.consistency import Consistency, consistency
from soce.report.diagnostics import Connectivity, connectivity
from soce.report.shapley import ShapleyResult, shapley
from soce.report.winrate import WinRates, win_rates
from soce.scores import ScoreTable
from soce.search import SearchBase, run_search
from soce.sweep import Souper, solved_by_id
from soce.tracking import Tracker
from soce.weights import uniform

log = logging.getLogger("soce")


@dataclass(frozen=True)
class StudyReport:
    """What the report is made of, handed over by the report stage: the study's settings, the
    artifacts of its run directory, and for an evaluating benchmark the soupers that value
    coalitions (a soup not yet in the store is evaluated and stored)."""

    study: str
    dir: Path
    tracker: Tracker
    config: list[tuple[str, str]]  # (setting, value) rows of "The study"
    analysis: dict  # analysis.json
    selection: dict  # selection.json
    experts: list[str]
    search: SearchBase
    shapley: ShapleyConfig
    top_points: int
    correlation_method: str
    # an evaluating benchmark's (None or empty for a score table):
    categories: Sequence[str] = ()
    souper: Souper | None = None  # the experts' soups
    candidate_souper: Callable[[], Souper] | None = None  # every candidate's soups (players=candidates)
    points: list[dict] = field(default_factory=list)  # the search's points stored so far, objective as asked now
    pieces: int = 0  # search=halving: pieces of points stored (examples subsets), for a sweep without full points yet
    search_run: dict | None = None  # what a search over subsets of the examples did (its to_dict), where it did
    own: dict[str, ScoreTable] = field(default_factory=dict)  # split -> the candidates' own scores
    results: dict | None = None  # results.json, where the soup stage has run
    line_points: int = 0  # soups on the line between each pair of experts (0: none)
    base_dir: str | None = None  # the model the candidates were fine-tuned from, where known
    vector_dirs: dict[str, str] = field(default_factory=dict)  # model -> its directory: the task vectors to compare
    base_score: float | None = None  # its objective on the split weights are chosen on: the empty coalition's value
    objective: Objective = field(default_factory=Objective)  # what the soups' values are (the study's)

    @property
    def split(self) -> str:
        return self.search.select_on.value

    @property
    def objective_name(self) -> str:
        return self.objective.name

    def path(self, name: str) -> Path:
        return self.dir / name


# --- the sections' content ----------------------------------------------------------------------
@dataclass(frozen=True)
class Landscape:
    best: list[dict]  # the top points by objective, best first
    alone: list[float] | None  # each expert's own score (the ternary plot's corners), 3 experts only


@dataclass(frozen=True)
class ShapleyValues:
    players: list[str]
    result: ShapleyResult
    evaluated: int  # coalition soups evaluated for this report (the rest came from the store or earlier runs)
    what: str  # the soup whose score is a coalition's value, in words


@dataclass(frozen=True)
class Diagnostics:
    vectors: TaskVectors | None  # None: no base model known
    lines: list[Connectivity]  # empty: report.line_points=0 or fewer than 2 experts


@dataclass(frozen=True)
class WinRateRows:
    which: str  # the soup compared, in words
    ingredients: list[str]
    rates: WinRates


@dataclass(frozen=True)
class Content:
    """The report's content; a section's field is None where it has nothing to show, and a
    string says why where the reason is the section's text."""

    inputs: StudyReport
    landscape: Landscape | None = None
    shapley: ShapleyValues | None = None
    diagnostics: Diagnostics | None = None
    consistency: Consistency | str | None = None
    win_rates: WinRateRows | str | None = None


def compute(r: StudyReport) -> Content:
    """Every section's content, evaluating (and storing) the soups the sections need."""
    if r.souper is None:  # a score table: the report ends with the selection
        return Content(r)
    return Content(r, landscape=_landscape(r), shapley=_shapley(r), diagnostics=_diagnostics(r),
                   consistency=_consistency(r), win_rates=_win_rates(r))


def _landscape(r: StudyReport) -> Landscape | None:
    if not r.points:
        return None
    alone = None
    if len(r.experts) == 3 and r.own and r.split in r.own:
        alone = [r.objective.of_row(r.own[r.split], e) for e in r.experts]
    return Landscape(sorted(r.points, key=lambda p: -p["objective"])[:r.top_points], alone)


def shapley_of(souper: Souper, own_scores: dict[str, float], split: str, config: ShapleyConfig,
               search: SearchBase | None = None, empty: float = 0.0) -> ShapleyResult:
    """Shapley values of `souper`'s models; a coalition's value is its soup's objective on `split`
    (uniform weights, or the best of `search` over its members). A single model's value is its
    own score (`own_scores`): a soup of one is the model itself. The empty coalition is worth
    `empty` (the base model's score, where the pool has one: each value is then a gain over it)."""
    n = len(souper.names)

    def embed(members: Sequence[int], weights: Sequence[float]) -> tuple[float, ...]:
        full = [0.0] * n
        for i, w in zip(members, weights):
            full[i] = float(w)
        return tuple(full)

    def v(coalition: frozenset[int]) -> float:
        members = sorted(coalition)
        if len(members) == 1:
            return own_scores[souper.names[members[0]]]
        if config.value == CoalitionValue.uniform:
            return souper.evaluate(embed(members, uniform(len(members))), split)["objective"]
        best = -math.inf

        def evaluate(weights):
            nonlocal best
            score = souper.evaluate(embed(members, weights), split)["objective"]
            best = max(best, score)
            return score

        order = sorted(range(len(members)), key=lambda j: -own_scores[souper.names[members[j]]])
        run_search(search, len(members), evaluate, order)
        return best

    return shapley(n, v, config.method.value, config.max_exact, config.samples, config.seed, empty=empty)


def _shapley(r: StudyReport) -> ShapleyValues:
    c, split, obj = r.shapley, r.split, r.objective_name
    souper = r.souper
    if c.players == Players.candidates and r.candidate_souper is not None:
        souper = r.candidate_souper()
    players = souper.names
    own = {m: r.objective.of_row(r.own[split], m) for m in players}
    before = souper.evaluations
    log.info("report: Shapley values of %s (coalition value: %s soup, %s on %s)", plural(len(players), c.players.value[:-1]), c.value, obj, split)
    n = len(players)
    exact = c.method.value == "exact" or (c.method.value == "auto" and n <= c.max_exact)
    # every coalition of two or more is a soup (known ahead only for exact values of uniform soups)
    total = 2 ** n - n - 1 if exact and c.value == CoalitionValue.uniform else None
    with Progress(total, "report: coalition soups", "soup") as bar:
        souper.bar = bar
        try:
            result = shapley_of(souper, own, split, c, r.search, empty=r.base_score or 0.0)
        finally:
            souper.bar = None
    what = "uniform soup" if c.value == CoalitionValue.uniform else f"best soup of a {r.search.name} search over its members"
    return ShapleyValues(list(players), result, souper.evaluations - before, what)


def _diagnostics(r: StudyReport) -> Diagnostics:
    """Task vectors (where the base is known) and the score along each pair of experts' line."""
    experts, split = r.experts, r.split
    vectors = task_vectors(r.base_dir, r.vector_dirs) if r.base_dir and r.vector_dirs else None
    lines = []
    if r.line_points and len(experts) > 1:
        own = {m: r.objective.of_row(r.own[split], m) for m in experts}

        def score(weights: tuple[float, ...]) -> float:
            if max(weights) == 1.0:  # an end of the line: the expert itself
                return own[experts[weights.index(1.0)]]
            return r.souper.evaluate(weights, split)["objective"]

        before = r.souper.evaluations
        lines = connectivity(experts, score, r.line_points, examples=len(r.souper.example_ids(split)))
        log.info("report: %d soups on the lines between the experts (%d evaluated now)", len(lines) * (r.line_points - 2),
                 r.souper.evaluations - before)
    return Diagnostics(vectors, lines)


def _consistency(r: StudyReport) -> Consistency | str:
    import numpy as np

    if len(r.points) < 3:
        return f"{plural(len(r.points), 'sweep point')} stored: at least 3 soups are needed for a correlation."
    soups = np.array([[p["scores"][c] for c in r.categories] for p in r.points], dtype=float)
    return consistency(tuple(r.categories), r.own[r.split].values, soups, r.correlation_method)


def _win_rates(r: StudyReport) -> WinRateRows | str:
    if r.results is not None:
        weights, which = r.results["rows"][-1]["weights"], "the final soup"
    elif r.points:
        weights, which = max(r.points, key=lambda p: p["objective"])["weights"], "the best sweep point so far (the soup stage has not run)"
    else:
        return "No soup yet."
    test = r.own.get("test")
    if test is None:
        return "The benchmark has no test split."
    ingredients = [n for n, w in zip(r.souper.names, weights) if w > 0]
    outcomes = {m: {} for m in ingredients}
    for o in test.outcomes:
        if o.model in outcomes:
            outcomes[o.model][o.example_id] = o.correct
    if any(not o for o in outcomes.values()):
        return "The candidates' per-example test outcomes are not stored (outcomes_test.jsonl)."
    record = r.souper.evaluate(weights, "test")
    return WinRateRows(which, ingredients, win_rates(outcomes, solved_by_id(record["correct"], list(outcomes[ingredients[0]]))))
