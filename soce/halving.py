"""Successive halving over nested, stratified subsets of the examples (search=halving), and its
racing variant (search=race): every point starts on a small subset of the dev examples in which
every category is represented in proportion; the best share of them continue on a larger
subset that contains the smaller one (their outcomes there are reused, never recomputed),
until the survivors are evaluated on every example. Racing keeps, at each rung, every point a
paired bootstrap cannot tell from the rung's best, instead of a fixed share.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

from soce.errors import ConfigError
from soce.objective import Objective
from soce.scores import Outcome
from soce.stats import Bootstrap

Point = tuple[float, ...]
# evaluate_on(point, rung, ids): the point's outcomes (id -> solved) on the examples `ids`, the
# increment of rung `rung` over the rung before it
EvaluateOn = Callable[[Point, int, Sequence[str]], dict[str, bool]]


def rung_sizes(n_examples: int, eta: int, min_examples: int) -> list[int]:
    """Subset sizes min_examples, x eta, x eta^2, ..., then every example."""
    if eta < 2:
        raise ConfigError(f"search.eta={eta}: the reduction factor must be at least 2")
    if min_examples < 1:
        raise ConfigError(f"search.min_examples={min_examples}: must be at least 1")
    sizes, m = [], min_examples
    while m < n_examples:
        sizes.append(m)
        m *= eta
    return sizes + [n_examples]


def nested_subsets(examples: Sequence[tuple[str, str]], sizes: Sequence[int], seed: int) -> list[list[str]]:
    """For each size, a subset of the example ids (examples: (id, category) pairs): each category's
    examples in a seeded order, of which the subset of size m takes the first m * n_c / N (at
    least one): every category in proportion, each subset inside the next."""
    by_category: dict[str, list[str]] = {}
    for i, c in sorted(examples):
        by_category.setdefault(c, []).append(i)
    rng = random.Random(seed)
    for ids in by_category.values():
        rng.shuffle(ids)
    n = len(examples)
    return [[i for ids in by_category.values() for i in ids[: max(1, round(m * len(ids) / n))]] for m in sizes]


@dataclass
class Halving:
    """What a halving run did: the rungs' subsets, the points alive at each rung, the examples
    evaluated (increments only), and the point it returns."""

    subsets: list[list[str]]
    alive: list[list[Point]] = field(default_factory=list)
    evaluated: int = 0
    best: Point | None = None

    def to_dict(self, grid: int) -> dict:
        """For results.json: what it spent against the grid's `grid` examples."""
        return {"examples": self.evaluated, "grid_examples": grid, "share_of_grid": self.evaluated / grid,
                "rungs": [len(s) for s in self.subsets], "alive": [len(a) for a in self.alive]}

    def summary(self, grid: int) -> str:
        """What it did against the grid's `grid` examples, in a line."""
        return (f"rungs of {'/'.join(str(len(s)) for s in self.subsets)} examples, "
                f"{'/'.join(str(len(a)) for a in self.alive)} points alive at each; {self.evaluated} examples asked for, "
                f"{100 * self.evaluated / grid:.0f}% of the grid's {grid}")


def successive_halving(points: Sequence[Point], examples: Sequence[tuple[str, str]], evaluate_on: EvaluateOn, *,
                       eta: int = 3, min_examples: int | None = None, seed: int = 0, race: bool = False,
                       confidence: float = 0.95, resamples: int = 1000, objective: Objective = Objective(),
                       rungs: int | None = None) -> Halving:
    """The point with the best objective on every example among those that survive the rungs.
    rungs: run only the first `rungs` rungs (a shard's share: rung 0), returning no best."""
    category = dict(examples)
    n_categories = len(set(category.values()))
    min_examples = 4 * n_categories if min_examples is None else min_examples
    subsets = nested_subsets(examples, rung_sizes(len(examples), eta, min_examples), seed)
    run = Halving(subsets)
    outcomes: dict[Point, dict[str, bool]] = {p: {} for p in points}
    alive = list(dict.fromkeys(points))
    for r, subset in enumerate(subsets[:rungs]):
        run.alive.append(list(alive))
        for p in alive:
            new = [i for i in subset if i not in outcomes[p]]
            if new:
                outcomes[p].update(evaluate_on(p, r, new))
                run.evaluated += len(new)
        if r == len(subsets) - 1:
            break
        score = {p: _objective(objective, outcomes[p], subset, category) for p in alive}
        ranked = sorted(alive, key=lambda p: -score[p])  # stable: ties keep the planned order
        if race:
            boot = Bootstrap([(i, category[i]) for i in subset], objective, resamples, seed + r, confidence)
            lead = [outcomes[ranked[0]][i] for i in subset]
            alive = [p for p in ranked if p == ranked[0] or boot.difference([outcomes[p][i] for i in subset], lead).high >= 0]
        else:
            alive = ranked[: max(1, math.ceil(len(ranked) / eta))]
    if rungs is None or rungs >= len(subsets):
        full = subsets[-1]
        run.best = max(alive, key=lambda p: _objective(objective, outcomes[p], full, category))
    return run


def _objective(objective: Objective, solved: dict[str, bool], ids: Sequence[str], category: dict[str, str]) -> float:
    """A point's objective on the examples `ids` (a rung's subset)."""
    return objective.of_outcomes([Outcome("", i, category[i], solved[i]) for i in ids])
