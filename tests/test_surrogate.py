"""search=surrogate (soce/surrogate.py): on a known smooth response over the simplex (a quadratic
in the logit of each category's accuracy, with binomial outcomes shared between soups as a
split's examples are), its fit recovers the truth within its stated interval; the search stops,
returns a point evaluated on every example, costs what it says, replays from its store without
evaluating anything again, and handles one or two experts and constant categories."""

import math

import numpy as np
import pytest

from conftest import MICRO_STUDY
from soce.objective import Objective
from soce.search import grid_points
from soce.surrogate import features, surrogate_search
from soce.weights import simplex_grid, uniform


class Response:
    """A smooth response: per category, logit p = linear + pairwise terms of the weights; each
    example solved where its difficulty (shared by every soup) is below p."""

    def __init__(self, k: int, categories: int = 6, per: int = 100, seed: int = 0, constant: bool = False):
        rng = np.random.default_rng(seed)
        self.k = k
        self.coef = np.column_stack([rng.normal(1.2, 0.4, (categories, k)),
                                     rng.normal(0.0, 1.5, (categories, k * (k - 1) // 2))])
        if constant:  # a saturated category: solved by every soup
            self.coef[0] = 0.0
            self.coef[0, :k] = 30.0
        self.examples = [(f"c{c}-{i:03d}", f"c{c}") for c in range(categories) for i in range(per)]
        self.difficulty = rng.random(len(self.examples))
        self.asked: list[tuple[tuple, int]] = []

    def p(self, w) -> np.ndarray:
        x = features(np.asarray([w], dtype=np.float64), True)[0]
        return 1 / (1 + np.exp(-(self.coef[:, : len(x)] @ x)))

    def outcomes(self, w) -> dict[str, bool]:
        p = self.p(w)
        return {i: bool(u < p[int(c[1:])]) for (i, c), u in zip(self.examples, self.difficulty)}

    def evaluate_on(self, w, ids):
        self.asked.append((tuple(w), len(ids)))
        o = self.outcomes(w)
        return {i: o[i] for i in ids}

    def corners(self) -> dict:
        return {tuple(float(j == i) for j in range(self.k)): self.outcomes(tuple(float(j == i) for j in range(self.k)))
                for i in range(self.k)}


def test_the_fit_recovers_a_known_smooth_response_within_its_interval():
    from soce.surrogate import _Data

    truth = Response(3, seed=1)
    data = _Data(truth.examples, Objective(), True, [[i for i, _ in truth.examples]])  # one chunk: the whole split
    space = simplex_grid(3, 0.0, 1.0, 0.25)
    for w in space:  # every point of a coarse design, on every example
        data.outcomes[w] = truth.outcomes(w)
    surrogate = data.fit(3)
    probe = [p for p in grid_points(3, 0.1, 0.9, 0.1, True)]
    accuracy, sd = surrogate.predict_groups(probe)
    expected = np.array([truth.p(w) for w in probe])
    inside = np.abs(accuracy - expected) <= 1.96 * np.hypot(sd, 0.0) + 2 * math.sqrt(0.25 / 100)
    assert inside.mean() >= 0.9  # the interval (and the split's own noise) covers the truth
    assert np.abs(accuracy - expected).mean() < 0.05


def test_the_search_spends_its_budget_stops_and_returns_a_point_evaluated_on_every_example():
    truth = Response(4, seed=2)
    grid = grid_points(4, 0.1, 0.9, 0.1, True)
    n = len(truth.examples)
    run = surrogate_search(grid, truth.examples, truth.evaluate_on, Objective(), budget=0.05 * len(grid),
                           known=truth.corners(), seed=0)
    assert run.evaluated == sum(m for _, m in truth.asked) <= 0.05 * len(grid) * n  # what it says it spent, within budget
    assert run.best in run.whole and run.best in grid and run.stopped
    assert sum(m for w, m in truth.asked if w == run.best) == n  # the returned point: every example, once
    measured = {w: np.mean(list(truth.outcomes(w).values())) for w in grid}
    ranked = sorted(measured.values(), reverse=True)
    assert measured[run.best] >= ranked[len(ranked) // 10]  # among the grid's best tenth
    assert set(run.loo) == {f"c{c}" for c in range(6)} and math.isfinite(run.loo_objective)


def test_the_search_is_deterministic_for_a_seed_and_replays_without_evaluating():
    truth = Response(3, seed=3)
    grid = grid_points(3, 0.1, 0.9, 0.1, True)
    stored: dict = {}

    def store_then_evaluate(w, ids):
        o = truth.evaluate_on(w, ids)
        stored.setdefault(tuple(w), {}).update(o)
        return o

    first = surrogate_search(grid, truth.examples, store_then_evaluate, Objective(), budget=2.0, known=truth.corners(), seed=5)

    def from_store(w, ids):  # a replay: every outcome it asks for is stored
        return {i: stored[tuple(w)][i] for i in ids}

    again = surrogate_search(grid, truth.examples, from_store, Objective(), budget=2.0, known=truth.corners(), seed=5)
    assert again.best == first.best and again.steps == first.steps and again.evaluated == first.evaluated


@pytest.mark.parametrize("k", [1, 2])
def test_one_or_two_experts(k):
    truth = Response(k, seed=4)
    grid = grid_points(k, 0.1, 0.9, 0.1, True)
    run = surrogate_search(grid, truth.examples, truth.evaluate_on, Objective(), budget=1.5, known=truth.corners(), seed=0)
    assert run.best in grid and run.best in run.whole
    if k == 1:  # one point, the expert itself: known, nothing to evaluate
        assert run.best == (1.0,) and run.evaluated == 0


def test_a_constant_category_is_fitted_without_trouble():
    truth = Response(3, seed=6, constant=True)
    grid = grid_points(3, 0.1, 0.9, 0.1, True)
    run = surrogate_search(grid, truth.examples, truth.evaluate_on, Objective(), budget=2.0, known=truth.corners(), seed=0)
    assert run.best in run.whole and run.loo["c0"] < 1e-3  # every example of c0 solved, and predicted so


def test_the_search_in_a_study_stores_its_pieces_and_a_second_run_evaluates_nothing(study, zoo_cache, tmp_path):
    import json

    args = [*MICRO_STUDY, f"pool.cache_dir={zoo_cache}", "search=surrogate", "stage=soup", "tracker=none"]
    first = study(*args)
    assert "surrogate: " in first.log and "% of the grid's" in first.log
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    run = results["search_run"]
    assert run["share_of_grid"] <= 0.05 + 1e-9 and run["whole"] and run["stopped"]
    assert results["rows"][-1]["weights"] in run["whole"]  # the result: a point evaluated on every dev example
    again = study(*args, "stage=sweep")
    assert "(0 evaluated now," in again.log  # every piece from the store
