"""Search strategies: which weight points to evaluate. Each drives `evaluate(weights)`, which
soups, evaluates, stores and returns the objective; the store keeps every point.
"""

from __future__ import annotations

from typing import Callable, Sequence

from soce.config import GreedySearch, GridSearch, HalvingSearch, OptunaSearch, RandomSearch, UniformSearch
from soce.errors import ConfigError
from soce.weights import close, dirichlet, simplex_grid, uniform

Evaluate = Callable[[tuple[float, ...]], float]
Search = GridSearch | HalvingSearch | UniformSearch | RandomSearch | GreedySearch | OptunaSearch
# evaluate_on(point, ids): the point's outcomes (id -> solved) on those examples (search=halving)
EvaluateOn = Callable[[tuple[float, ...], Sequence[str]], dict[str, bool]]


def grid_points(n: int, lo: float, hi: float, step: float, include_uniform: bool, budget: int | None = None) -> list[tuple[float, ...]]:
    points = simplex_grid(n, lo, hi, step)
    if include_uniform and not any(close(p, uniform(n)) for p in points):
        points.append(uniform(n))
    return points[:budget] if budget else points


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


def planned_points(search: Search, n: int) -> list[tuple[float, ...]] | None:
    """The points a strategy evaluates, where they are known before any is evaluated; None for
    the sequential strategies (greedy, optuna, halving), whose next point depends on the last score."""
    if isinstance(search, HalvingSearch):
        return None
    if isinstance(search, GridSearch):
        return grid_points(n, search.lo, search.hi, search.step, search.include_uniform, search.budget)
    if isinstance(search, UniformSearch):
        return [uniform(n)]
    if isinstance(search, RandomSearch):
        return [uniform(n), *dirichlet(n, search.budget, search.concentration, search.seed)][: search.budget]
    return None


def run_search(search: Search, n: int, evaluate: Evaluate, order: Sequence[int], shard: tuple[int, int] = (0, 1),
               examples: Sequence[tuple[str, str]] = (), evaluate_on: EvaluateOn | None = None):
    """The strategy `search` over n experts; `order`: experts by their own score, best first;
    `shard` (k, N): evaluate only points k, k+N, k+2N, ... of a strategy's planned points (for
    search=halving, of its first rung: the later rungs need every shard's results, and the
    unsharded collect step runs them). search=halving also needs the split's `examples` ((id,
    category) pairs) and `evaluate_on`; it returns what it did (a soce.halving.Halving)."""
    k, num = shard
    if isinstance(search, HalvingSearch):
        from soce.halving import successive_halving

        points = grid_points(n, search.lo, search.hi, search.step, search.include_uniform, search.budget)
        return successive_halving(points[k::num], examples, lambda p, rung, ids: evaluate_on(p, ids), eta=search.eta,
                                  min_examples=search.min_examples, seed=search.seed, race=search.race,
                                  confidence=search.confidence, resamples=search.resamples, objective=search.objective.value,
                                  rungs=1 if num > 1 else None)
    points = planned_points(search, n)
    if points is not None:
        run_points(points[k::num], evaluate)
    elif num > 1:
        raise ConfigError(f"search {search.name} chooses each point from the scores before it: it cannot be split "
                          "into shards (use the grid or random search, or one job and one process)")
    elif isinstance(search, GreedySearch):
        greedy_soup(order, n, evaluate)
    elif isinstance(search, OptunaSearch):
        optuna_search(n, search.budget, search.seed, evaluate)
    else:
        raise ConfigError(f"search={search!r}: expected a GridSearch, UniformSearch, RandomSearch, GreedySearch or OptunaSearch")


def expected_points(search: Search, n: int, shard: tuple[int, int] = (0, 1)) -> int | None:
    """How many points the strategy evaluates, where known in advance (for the progress bar)."""
    points = planned_points(search, n)
    if points is not None:
        return len(points[shard[0]::shard[1]])
    if isinstance(search, OptunaSearch):
        return search.budget
    return n if isinstance(search, GreedySearch) else None
