"""Search strategies: which weight points the sweep evaluates. Each is one registered class:
its settings (the config group `search`, checked before anything runs) and what it does:
`points` (where known before any is evaluated), `run` (drives `evaluate(weights)`, which soups,
evaluates, stores and returns the objective), `expected` (for the progress bar), and whether
shards can split it. Adding a strategy is one class here and one YAML file in conf/search/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Mapping, Optional, Sequence

from soce.choices import ObjectiveName, Space, Split
from soce.errors import ConfigError
from soce.registry import Registry
from soce.weights import close, dirichlet, simplex_grid, uniform

Point = tuple[float, ...]
Evaluate = Callable[[Point], float]
# evaluate_on(point, ids): the point's outcomes (id -> solved) on those examples (search=halving)
EvaluateOn = Callable[[Point, Sequence[str]], dict[str, bool]]


@dataclass(frozen=True)
class Examples:
    """A split's examples, for a search that evaluates points on subsets of them (per_example)."""

    pairs: Sequence[tuple[str, str]]  # (id, category)
    evaluate_on: EvaluateOn  # a point's outcomes on some of them
    objective: object  # a soce.objective.Objective: a point's objective on any subset
    known: Mapping[Point, Mapping[str, bool]] = field(default_factory=dict)  # each expert alone: its candidate outcomes

SEARCHES: Registry[type["SearchBase"]] = Registry("search")


def grid_points(n: int, lo: float, hi: float, step: float, include_uniform: bool, budget: int | None = None) -> list[tuple[float, ...]]:
    """The grid's points, the uniform point last where the grid lacks it; a budget keeps the first
    `budget` of them, the uniform point always among them when include_uniform (in place of the
    last), so that the searched soup is never below the experts' uniform soup on the split it was
    chosen on."""
    points = simplex_grid(n, lo, hi, step)
    if include_uniform and not any(close(p, uniform(n)) for p in points):
        points.append(uniform(n))
    if not budget or budget >= len(points):
        return points
    kept = points[:budget]
    if include_uniform and not any(close(p, uniform(n)) for p in kept):
        kept = [*kept[:budget - 1], uniform(n)]
    return kept


def run_points(points: Sequence[tuple[float, ...]], evaluate: Evaluate) -> None:
    for p in points:
        evaluate(p)


def greedy_soup(order: Sequence[int], n: int, evaluate: Evaluate) -> list[int]:
    """Wortsman et al. 2022: from the best expert, add each next one (in order of its own score)
    and keep it only if the uniform soup of those kept scores higher. Returns the kept indices."""
    def soup_of(members: list[int]) -> tuple[float, ...]:
        return tuple(1.0 / len(members) if i in members else 0.0 for i in range(n))

    kept = [order[0]]
    best = evaluate(soup_of(kept))
    for i in order[1:]:
        score = evaluate(soup_of(kept + [i]))
        if score > best:
            kept, best = kept + [i], score
    return kept


def optuna_search(n: int, budget: int, seed: int, evaluate: Evaluate) -> None:
    """TPE over the simplex: n free values in (0, 1], normalised to sum 1."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("search=optuna needs optuna: pip install 'soce[optuna]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

    def objective(trial) -> float:
        x = [trial.suggest_float(f"x{i}", 1e-3, 1.0) for i in range(n)]
        return evaluate(tuple(v / sum(x) for v in x))

    study.optimize(objective, n_trials=budget)


def _check_budget(budget: int | None) -> None:
    if budget is not None and budget < 1:
        raise ConfigError(f"search.budget={budget}: at least 1 point")


@dataclass
class SearchBase:
    objective: ObjectiveName = ObjectiveName.benchmark  # soce.objective.OBJECTIVES: the benchmark's own, mean or sum
    select_on: Split = Split.dev  # test: the paper's protocol, tuned on the reported split

    shardable: ClassVar[bool] = True  # shards can split its points (it knows them before any score)
    per_example: ClassVar[bool] = False  # it evaluates points on subsets of the examples (search=halving)

    def check(self) -> None:
        """Settings no evaluation can work with, refused before any starts (each names its key)."""

    def points(self, n: int) -> list[Point] | None:
        """The points it evaluates over n experts, where known before any is evaluated; None for a
        sequential strategy, whose next point depends on the last score."""
        return None

    def run(self, n: int, evaluate: Evaluate, order: Sequence[int], shard: tuple[int, int] = (0, 1),
            examples: Examples | None = None):
        """Evaluate its points over n experts; `order`: experts by their own score, best first;
        `shard` (k, N): only points k, k+N, k+2N, ... of its planned points."""
        k, num = shard
        for p in self.points(n)[k::num]:
            evaluate(p)

    def expected(self, n: int, shard: tuple[int, int] = (0, 1)) -> int | None:
        """How many points it evaluates, where known in advance (for the progress bar)."""
        points = self.points(n)
        return None if points is None else len(points[shard[0]::shard[1]])


@SEARCHES.register("grid")
@dataclass
class GridSearch(SearchBase):
    """The paper's grid: every weight in {lo, lo+step, ..., hi}, summing to 1, plus uniform."""

    name: str = "grid"
    lo: float = 0.1
    hi: float = 0.9
    step: float = 0.1
    include_uniform: bool = True
    budget: Optional[int] = None  # at most this many points (None: the whole grid)

    def check(self) -> None:
        _check_budget(self.budget)
        try:
            simplex_grid(1, self.lo, self.hi, self.step)
        except ConfigError as err:
            raise ConfigError(f"search: {err}") from None

    def points(self, n: int) -> list[Point]:
        return grid_points(n, self.lo, self.hi, self.step, self.include_uniform, self.budget)

    def grid_size(self, n: int) -> int:
        """The points of the whole grid over n experts (the yardstick of a cheaper search's cost)."""
        return len(grid_points(n, self.lo, self.hi, self.step, self.include_uniform))


@SEARCHES.register("halving")
@dataclass
class HalvingSearch(GridSearch):
    """Successive halving of the grid's points over nested, stratified subsets of the examples:
    every point on min_examples, the best 1/eta of them on eta times more, ..., the survivors on
    all. race=true keeps, at each rung, every point a paired bootstrap cannot tell from the best."""

    name: str = "halving"
    eta: int = 3  # the reduction factor: 1/eta of the points go on, on eta times the examples
    min_examples: Optional[int] = None  # the first rung's examples; default: 4 per category
    seed: int = 0  # the order the subsets take the examples in
    race: bool = False
    confidence: float = 0.85  # race: a point is dropped when it is worse than the best at this confidence
    resamples: int = 1000  # race: bootstrap resamples per comparison

    per_example: ClassVar[bool] = True

    def check(self) -> None:
        super().check()
        if self.eta < 2:
            raise ConfigError(f"search.eta={self.eta}: the reduction factor must be at least 2")
        if self.min_examples is not None and self.min_examples < 1:
            raise ConfigError(f"search.min_examples={self.min_examples}: at least 1 example (or unset, for 4 per category)")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"search.confidence={self.confidence}: must be between 0 and 1 (e.g. 0.85)")
        if self.resamples < 2:
            raise ConfigError(f"search.resamples={self.resamples}: a bootstrap needs at least 2 resamples")

    def run(self, n, evaluate, order, shard=(0, 1), examples=None):
        """The grid's points (a shard's share of them: its first rung only; the later rungs need
        every shard's results, and the unsharded collect step runs them) on the split's `examples`.
        Returns what it did (a soce.halving.Halving)."""
        from soce.halving import successive_halving

        k, num = shard
        return successive_halving(super().points(n)[k::num], examples.pairs, lambda p, rung, ids: examples.evaluate_on(p, ids),
                                  eta=self.eta, min_examples=self.min_examples, seed=self.seed, race=self.race,
                                  confidence=self.confidence, resamples=self.resamples, objective=examples.objective,
                                  rungs=1 if num > 1 else None)

    def points(self, n: int) -> None:  # which points reach every example depends on the scores
        return None

    def expected(self, n: int, shard: tuple[int, int] = (0, 1)) -> None:
        return None


@SEARCHES.register("surrogate")
@dataclass
class SurrogateSearch(GridSearch):
    """A surrogate of each category's accuracy over the weights (soce/surrogate.py): the points
    worth evaluating chosen by an upper confidence bound on the benchmark's objective, each on
    growing chunks of the dev examples; the returned point evaluated on all of them. budget: the
    dev examples it may evaluate, in whole splits (default: 5 % of the grid's)."""

    name: str = "surrogate"
    budget: Optional[float] = None
    space: Space = Space.grid
    simplex_step: float = 0.05
    chunks: int = 12  # the dev split in this many nested, stratified chunks
    explore: int = 1  # space-filling points after the uniform one
    confidence: float = 0.9  # of the upper bounds it compares and stops on
    pairwise: bool = True  # pairwise terms in the model (false: logit-linear)
    seed: int = 0

    shardable: ClassVar[bool] = False
    per_example: ClassVar[bool] = True

    def check(self) -> None:
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"search.budget={self.budget}: the dev examples it may evaluate, in whole splits (e.g. 3.5)")
        try:
            simplex_grid(1, self.lo, self.hi, self.step)
        except ConfigError as err:
            raise ConfigError(f"search: {err}") from None
        if self.chunks < 1:
            raise ConfigError(f"search.chunks={self.chunks}: at least 1")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"search.confidence={self.confidence}: must be in [0.5, 1) (e.g. 0.9)")
        if self.explore < 0:
            raise ConfigError(f"search.explore={self.explore}: 0 or more points")
        try:
            simplex_grid(1, 0.0, 1.0, self.simplex_step)
        except ConfigError as err:
            raise ConfigError(f"search.simplex_step: {err}") from None

    def space_points(self, n: int) -> list[Point]:
        if self.space == Space.simplex:
            return simplex_grid(n, 0.0, 1.0, self.simplex_step)
        return grid_points(n, self.lo, self.hi, self.step, self.include_uniform)

    def budget_of(self, n: int) -> float:
        """Whole splits of examples it may evaluate: search.budget, or 5 % of the grid's."""
        return self.budget if self.budget is not None else 0.05 * self.grid_size(n)

    def points(self, n: int) -> None:  # chosen one by one, from the scores so far
        return None

    def expected(self, n: int, shard: tuple[int, int] = (0, 1)) -> None:
        return None

    def run(self, n, evaluate, order, shard=(0, 1), examples=None):
        """Returns what it did (a soce.surrogate.SurrogateRun)."""
        from soce.surrogate import surrogate_search

        return surrogate_search(self.space_points(n), examples.pairs, examples.evaluate_on, examples.objective,
                                budget=self.budget_of(n), known=examples.known, chunks=self.chunks,
                                explore=self.explore, confidence=self.confidence, seed=self.seed, pairwise=self.pairwise)


@SEARCHES.register("uniform")
@dataclass
class UniformSearch(SearchBase):
    name: str = "uniform"

    def points(self, n: int) -> list[Point]:
        return [uniform(n)]


@SEARCHES.register("experts")
@dataclass
class ExpertsSearch(SearchBase):
    """Each expert alone (weight 1), then the uniform soup: what the soup gains over its best
    ingredient, measured on the sweep's own evaluator (one point per expert, and one more)."""

    name: str = "experts"

    def points(self, n: int) -> list[Point]:
        return [tuple(1.0 if j == i else 0.0 for j in range(n)) for i in range(n)] + ([uniform(n)] if n > 1 else [])


@SEARCHES.register("random")
@dataclass
class RandomSearch(SearchBase):
    name: str = "random"
    budget: int = 32  # the uniform point, then Dirichlet draws
    concentration: float = 1.0
    seed: int = 0

    def check(self) -> None:
        _check_budget(self.budget)
        if not self.concentration > 0:
            raise ConfigError(f"search.concentration={self.concentration}: must be positive")

    def points(self, n: int) -> list[Point]:
        return [uniform(n), *dirichlet(n, self.budget, self.concentration, self.seed)][: self.budget]


@SEARCHES.register("greedy")
@dataclass
class GreedySearch(SearchBase):
    """Greedy soup (Wortsman et al. 2022) over the experts, in order of their own scores."""

    name: str = "greedy"

    shardable: ClassVar[bool] = False

    def run(self, n, evaluate, order, shard=(0, 1), examples=None):
        greedy_soup(order, n, evaluate)

    def expected(self, n: int, shard: tuple[int, int] = (0, 1)) -> int:
        return n


@SEARCHES.register("optuna")
@dataclass
class OptunaSearch(SearchBase):
    name: str = "optuna"
    budget: int = 32
    seed: int = 0

    shardable: ClassVar[bool] = False

    def check(self) -> None:
        _check_budget(self.budget)

    def run(self, n, evaluate, order, shard=(0, 1), examples=None):
        optuna_search(n, self.budget, self.seed, evaluate)

    def expected(self, n: int, shard: tuple[int, int] = (0, 1)) -> int:
        return self.budget


def run_search(search: SearchBase, n: int, evaluate: Evaluate, order: Sequence[int], shard: tuple[int, int] = (0, 1),
               examples: Examples | None = None):
    """`search` over n experts (SearchBase.run), refused up front where shards cannot split it."""
    if shard[1] > 1 and not search.shardable:
        raise ConfigError(f"search {search.name} chooses each point from the scores before it: it cannot be split "
                          "into shards (use the grid or random search, or one job and one process)")
    return search.run(n, evaluate, order, shard, examples)
