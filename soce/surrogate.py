"""A surrogate search over the experts' weights (search=surrogate): a soup's accuracy on each
group of examples (a category, or a benchmark's test file) is smooth in its weights, so a few
evaluated soups predict the rest.

Per group g, a binomial model of accuracy over the simplex, logit-linear in the weights in
Scheffe's form (no intercept: the weights sum to 1) with pairwise terms,
    logit p_g(w) = sum_j b_j w_j + sum_{j<l} c_jl w_j w_l,
fitted by Bayesian logistic regression (a normal prior, its Laplace approximation) on every
evaluated soup's outcomes, each group's noise that of its examples (binomial, widened by the
misfit of its points where they are enough to measure it). Every soup is evaluated on the same
examples, so a chunk of easy examples makes every soup look good on it: each chunk of the split
has an offset of its own in each group's model (its examples' difficulty, measured where the
experts alone are evaluated on every example), and a soup evaluated on some chunks is compared
with the others on the whole split. The benchmark's objective, linear in the groups'
accuracies, is built from the groups' predictions, with its uncertainty.

It starts from what is known or cheap: each expert alone (its candidate evaluation, free), the
uniform soup and a few space-filling points, each on the first of nested, stratified chunks of
the split; then it evaluates, one chunk at a time, the point of the search space with the highest
upper confidence bound (a point's chunks grow as it stays promising: a race on growing subsets),
and refits. It stops when the best point evaluated on the whole split is above every other
point's upper bound, or when the budget is spent; the point it returns is always one evaluated
on the whole split (the best of those), never a prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from soce.halving import nested_subsets
from soce.objective import Objective

Point = tuple[float, ...]
EvaluateOn = Callable[[Point, Sequence[str]], Mapping[str, bool]]

PRIOR_LINEAR_SD = 2.0  # each expert's own logit accuracy: around the group's mean, loosely
PRIOR_PAIRWISE_SD = 10.0  # a pair's interaction on the logit scale: loose, as a specialists' soup can gain a skill whole


def features(points: np.ndarray, pairwise: bool) -> np.ndarray:
    """Scheffe's terms of weight vectors (rows): the weights, then each pair's product."""
    if not pairwise or points.shape[1] < 2:
        return points
    k = points.shape[1]
    pairs = [points[:, j] * points[:, m] for j in range(k) for m in range(j + 1, k)]
    return np.column_stack([points, *pairs])


PRIOR_CHUNK_SD = 1.0  # a chunk's examples' difficulty against the split's, on the logit scale


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class GroupFit:
    """One group's posterior: the coefficients (the weights' terms, then each chunk's offset),
    their covariance, the overdispersion, and each chunk's share of the group's examples."""

    mean: np.ndarray
    cov: np.ndarray
    share: np.ndarray  # chunk -> its share of the group's examples on the whole split
    dispersion: float = 1.0

    def predict(self, x: np.ndarray, chunks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy and its standard deviation at the weights' feature rows `x`, on the chunks
        `chunks` (a mask; default: the whole split): each chunk's logit, averaged by its share of
        the examples, and the delta method."""
        share = self.share if chunks is None else np.where(chunks, self.share, 0.0)
        share = share / share.sum()
        f = x.shape[1]
        eta = (x @ self.mean[:f])[:, None] + self.mean[f:][None, :]  # points x chunks
        p = _sigmoid(eta)
        slope = share[None, :] * p * (1 - p)
        grad = np.column_stack([x * slope.sum(axis=1, keepdims=True), slope])
        var = np.einsum("ij,jk,ik->i", grad, self.cov, grad) * self.dispersion
        return p @ share, np.sqrt(np.maximum(var, 0.0))


def fit_group(x: np.ndarray, solved: np.ndarray, trials: np.ndarray, k: int, share: np.ndarray) -> GroupFit:
    """Bayesian logistic regression of `solved` of `trials` on rows `x` (the weights' features,
    the first k the weights, then one column per chunk) with a normal prior, by Newton's method;
    its Laplace approximation."""
    pooled = (solved.sum() + 0.5) / (trials.sum() + 1.0)
    chunks = len(share)
    prior_mean = np.zeros(x.shape[1])
    prior_mean[:k] = math.log(pooled / (1 - pooled))
    prior_prec = np.full(x.shape[1], 1 / PRIOR_PAIRWISE_SD ** 2)
    prior_prec[:k] = 1 / PRIOR_LINEAR_SD ** 2
    prior_prec[x.shape[1] - chunks:] = 1 / PRIOR_CHUNK_SD ** 2
    theta = prior_mean.copy()
    for _ in range(100):
        p = _sigmoid(x @ theta)
        grad = x.T @ (solved - trials * p) - prior_prec * (theta - prior_mean)
        hess = x.T @ (x * (trials * p * (1 - p))[:, None]) + np.diag(prior_prec)
        step = np.linalg.solve(hess, grad)
        theta = theta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    p = _sigmoid(x @ theta)
    hess = x.T @ (x * (trials * p * (1 - p))[:, None]) + np.diag(prior_prec)
    cov = np.linalg.inv(hess)
    # the points' misfit beyond their examples' noise (quasi-binomial), where enough points measure it
    free = len(trials) - x.shape[1]
    dispersion = 1.0
    if free >= 3:
        pearson = (solved - trials * p) ** 2 / np.maximum(trials * p * (1 - p), 1e-9)
        dispersion = max(1.0, float(pearson.sum()) / free)
    return GroupFit(theta, cov, share, dispersion)


@dataclass
class Surrogate:
    """Every group's fit, and the objective's weights over the groups (it is linear in them)."""

    groups: list[str]
    fits: list[GroupFit]
    weights: np.ndarray  # the objective's weight of each group
    sizes: np.ndarray  # each group's examples on the whole split
    pairwise: bool

    def predict_groups(self, points: Sequence[Point], chunks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per point and group, the accuracy and its standard deviation (points x groups), on the
        whole split or on the chunks `chunks` (a mask)."""
        x = features(np.asarray(points, dtype=np.float64), self.pairwise)
        out = [f.predict(x, chunks) for f in self.fits]
        return np.column_stack([m for m, _ in out]), np.column_stack([s for _, s in out])

    def predict(self, points: Sequence[Point]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per point, the objective on the whole split: its predicted mean, the standard deviation
        of that mean, and the standard deviation of a measurement around it (the examples' noise)."""
        p, sd = self.predict_groups(points)
        mean = p @ self.weights
        model = np.sqrt((sd ** 2) @ (self.weights ** 2))
        dispersion = np.array([f.dispersion for f in self.fits])
        noise = np.sqrt((p * (1 - p) * dispersion / self.sizes) @ (self.weights ** 2))
        return mean, model, noise


def objective_weights(objective: Objective, groups: Sequence[str], sizes: Sequence[int]) -> np.ndarray:
    """The objective's weight of each group: it is a linear function of the groups' accuracies
    (the mean, the sum, a benchmark's weighted sections), read off the unit vectors."""
    combine = objective.combiner(list(groups), list(sizes))
    weights = np.asarray(combine(np.eye(len(groups))), dtype=np.float64)
    probe = np.linspace(0.1, 0.9, len(groups))
    if abs(float(combine(probe)) - float(probe @ weights)) > 1e-9 or abs(float(combine(np.zeros(len(groups))))) > 1e-12:
        raise ValueError(f"search=surrogate: the objective {objective.name} is not linear in the groups' accuracies")
    return weights


@dataclass
class SurrogateRun:
    """What a surrogate search did: each step (a point on a chunk of examples, and why), the
    points evaluated on the whole split, the examples it evaluated, why it stopped, the point it
    returns, and its fit's quality (leave-one-out error per group, predicted against measured)."""

    budget: int  # examples it may evaluate
    steps: list[dict] = field(default_factory=list)
    whole: list[Point] = field(default_factory=list)  # the search space's points evaluated on every example
    evaluated: int = 0
    stopped: str = ""
    best: Point | None = None
    loo: dict[str, float] = field(default_factory=dict)  # group -> RMSE of its leave-one-out prediction
    loo_objective: float = math.nan
    fit: list[dict] = field(default_factory=list)  # per evaluated point: predicted and measured objective

    @property
    def alive(self) -> list[list[Point]]:  # as halving's: the points that reached every example
        return [self.whole]

    @property
    def points(self) -> int:
        """The points it evaluated on some examples."""
        return len({tuple(s["point"]) for s in self.steps})

    def summary(self, grid: int) -> str:
        """What it did against the grid's `grid` examples, in a line."""
        loo = ", ".join(f"{g} {e:.3f}" for g, e in self.loo.items())
        return (f"{len(self.steps)} steps on {self.points} points ({len(self.whole)} on every example), {self.evaluated} "
                f"examples asked for, {100 * self.evaluated / grid:.1f}% of the grid's {grid}; stopped: {self.stopped}; "
                f"leave-one-out error of the objective {self.loo_objective:.4f} (per group: {loo})")

    def to_dict(self, grid: int) -> dict:
        """For results.json: what it spent against the grid, why it stopped, how well it predicts."""
        return {"examples": self.evaluated, "grid_examples": grid, "share_of_grid": self.evaluated / grid,
                "budget": self.budget, "points": self.points, "whole": [list(p) for p in self.whole],
                "stopped": self.stopped, "loo_error": self.loo, "loo_error_objective": _finite(self.loo_objective),
                "steps": self.steps, "fit": self.fit}


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else v


def surrogate_search(candidates: Sequence[Point], examples: Sequence[tuple[str, str]], evaluate_on: EvaluateOn,
                     objective: Objective, *, budget: float, known: Mapping[Point, Mapping[str, bool]] | None = None,
                     chunks: int = 12, explore: int = 1, confidence: float = 0.9, seed: int = 0,
                     pairwise: bool = True) -> SurrogateRun:
    """The search over `candidates` (the search space) on the split's `examples`, (id, category)
    pairs; `evaluate_on(point, ids)`: a soup's outcomes on those examples; `known`: points whose
    outcomes on every example are known for free (each expert alone: its candidate evaluation);
    `budget`: the examples it may evaluate, in whole splits; `explore`: space-filling points
    besides the uniform one."""
    space = list(dict.fromkeys(tuple(float(w) for w in p) for p in candidates))
    k = len(space[0])
    ids = [i for i, _ in examples]
    nested = nested_subsets(examples, [max(1, round(len(ids) * (j + 1) / chunks)) for j in range(chunks - 1)], seed)
    nested = [c for c in nested if len(c) < len(ids)] + [ids]
    data = _Data(examples, objective, pairwise, nested)
    run = SurrogateRun(int(round(budget * data.n)))
    for p, o in (known or {}).items():
        data.outcomes[tuple(float(w) for w in p)] = dict(o)
    progress = {p: 0 for p in space}  # how many chunks of each point are evaluated
    z = _z(confidence)

    def missing(p: Point, upto: int) -> list[str]:
        """The examples of the first `upto` chunks that `p` has no outcome on yet."""
        have = data.outcomes.get(p, {})
        return [i for i in nested[upto - 1] if i not in have]

    def to_finish(p: Point) -> int:
        return len(missing(p, len(nested)))

    def take(p: Point, why: str, surrogate: "Surrogate | None") -> None:
        new = missing(p, progress[p] + 1)
        if new:
            data.outcomes.setdefault(p, {}).update(evaluate_on(p, new))
            run.evaluated += len(new)
        progress[p] += 1
        step = {"point": list(p), "examples": len(nested[progress[p] - 1]), "new": len(new), "why": why}
        if surrogate is not None:
            mean, model, _ = surrogate.predict([p])
            step.update(predicted=float(mean[0]), sd=float(model[0]))
        run.steps.append(step)
        if progress[p] == len(nested):
            run.whole.append(p)

    # the design: the uniform soup and space-filling points on the first chunk, a whole split kept for the last step
    for p in _space_filling(space, list(data.outcomes), explore, seed):
        if run.evaluated + len(missing(p, 1)) + data.n <= run.budget:
            take(p, "design", None)
    surrogate = data.fit(k)
    while True:
        mean, model, noise = surrogate.predict(space)
        upper = mean + z * np.sqrt(model ** 2 + noise ** 2)
        leader = space[int(np.argmax(mean))]
        measured = {p: data.objective_of(p) for p in run.whole}
        best = max(measured, key=measured.get) if measured else None
        if best is not None and all(upper[i] <= measured[best] for i, p in enumerate(space) if p != best):
            run.stopped = (f"the best point evaluated on every example is above every other point's {confidence:.0%} "
                           "upper bound")
            break
        open_ = [i for i, p in enumerate(space) if progress[p] < len(nested)]
        if not open_:
            run.stopped = "every point of the search space is evaluated on every example"
            break
        nxt = space[max(open_, key=lambda i: (upper[i], -i))]
        extra = len(missing(nxt, progress[nxt] + 1))
        reserve = to_finish(leader) - (extra if nxt == leader else 0)
        if run.evaluated + extra + reserve > run.budget:
            run.stopped = f"search.budget: another step and the leader's last would pass {run.budget} examples"
            break
        take(nxt, "upper bound", surrogate)
        surrogate = data.fit(k)
    # the leader (the highest predicted mean of those the budget can finish) is finished on every
    # example; the best point so evaluated is returned
    mean, _, _ = surrogate.predict(space)
    left = run.budget - run.evaluated
    finishable = [i for i, p in enumerate(space) if to_finish(p) <= left] or list(range(len(space)))
    leader = space[max(finishable, key=lambda i: (mean[i], -i))]
    while progress[leader] < len(nested):
        take(leader, "leader", surrogate)
    measured = {p: data.objective_of(p) for p in run.whole}
    run.best = max(run.whole, key=lambda p: (measured[p], -space.index(p)))
    data.diagnose(run, k)
    return run


def _z(confidence: float) -> float:
    """The one-sided normal quantile of `confidence`."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(confidence)


def _space_filling(space: list[Point], known: list[Point], count: int, seed: int) -> list[Point]:
    """The uniform point (where the space has it), then `count` points of the space chosen one by
    one farthest from every point chosen or known (maximin; a seeded order breaks ties)."""
    k = len(space[0])
    chosen = [p for p in space if np.allclose(p, 1.0 / k)][:1]
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(space))]
    grid = np.asarray(space)
    for _ in range(count):
        taken = np.asarray([*known, *chosen])
        if not len(taken):
            chosen.append(space[order[0]])
            continue
        distance = np.min(np.linalg.norm(grid[:, None, :] - taken[None, :, :], axis=2), axis=1)
        far = max(order, key=lambda i: round(float(distance[i]), 12))  # the first in the seeded order of the farthest
        if distance[far] <= 1e-12:
            break
        chosen.append(space[far])
    return chosen


class _Data:
    """The evaluated points' outcomes, counted per group of the objective and chunk of the split."""

    def __init__(self, examples: Sequence[tuple[str, str]], objective: Objective, pairwise: bool,
                 nested: Sequence[Sequence[str]]) -> None:
        self.ids = [i for i, _ in examples]
        self.n = len(self.ids)
        self.category = dict(examples)
        self.group = dict(zip(self.ids, objective.groups(examples)))
        self.names = sorted(set(self.group.values()))
        self.gindex = {g: j for j, g in enumerate(self.names)}
        self.chunk: dict[str, int] = {}
        for c, subset in enumerate(nested):  # an example's chunk: the first of the nested subsets holding it
            for i in subset:
                self.chunk.setdefault(i, c)
        per = np.zeros((len(self.names), len(nested)))
        for i in self.ids:
            per[self.gindex[self.group[i]], self.chunk[i]] += 1
        self.sizes = per.sum(axis=1)
        self.share = per / self.sizes[:, None]  # group x chunk
        self.weights = objective_weights(objective, self.names, [int(s) for s in self.sizes])
        self.objective, self.pairwise = objective, pairwise
        self.outcomes: dict[Point, dict[str, bool]] = {}

    def counts(self, outcomes: Mapping[Point, Mapping[str, bool]]) -> tuple[np.ndarray, np.ndarray]:
        """Per point, group and chunk: the examples solved and evaluated."""
        shape = (len(outcomes), len(self.names), self.share.shape[1])
        solved, trials = np.zeros(shape), np.zeros(shape)
        for r, o in enumerate(outcomes.values()):
            for i, ok in o.items():
                at = (r, self.gindex[self.group[i]], self.chunk[i])
                trials[at] += 1
                solved[at] += ok
        return solved, trials

    def fit(self, k: int, outcomes: Mapping[Point, Mapping[str, bool]] | None = None) -> Surrogate:
        outcomes = self.outcomes if outcomes is None else outcomes
        solved, trials = self.counts(outcomes)
        x = features(np.asarray(list(outcomes), dtype=np.float64), self.pairwise)
        chunks = self.share.shape[1]
        fits = []
        for g in range(len(self.names)):
            rows, cols = np.nonzero(trials[:, g, :])  # (point, chunk) pairs with examples
            design = np.column_stack([x[rows], np.eye(chunks)[cols]])
            fits.append(fit_group(design, solved[rows, g, cols], trials[rows, g, cols], k, self.share[g]))
        return Surrogate(self.names, fits, self.weights, self.sizes, self.pairwise)

    def objective_of(self, p: Point) -> float:
        """The measured objective of a point evaluated on every example."""
        from soce.scores import Outcome

        return self.objective.of_outcomes([Outcome("", i, self.category[i], self.outcomes[p][i]) for i in self.ids])

    def diagnose(self, run: SurrogateRun, k: int) -> None:
        """Each evaluated point predicted by the fit without it (leave-one-out), on the chunks it
        was evaluated on: the error per group, and predicted against measured objective."""
        points = list(self.outcomes)
        solved, trials = self.counts(self.outcomes)
        errors: dict[str, list[float]] = {g: [] for g in self.names}
        for r, p in enumerate(points):
            if len(points) < 2:
                break
            loo = self.fit(k, {q: o for q, o in self.outcomes.items() if q != p})
            chunks = trials[r].sum(axis=0) > 0
            accuracy, sd = loo.predict_groups([p], chunks)
            have = trials[r][:, chunks].sum(axis=1)
            measured = np.where(have > 0, solved[r][:, chunks].sum(axis=1) / np.maximum(have, 1), accuracy[0])
            for j, g in enumerate(self.names):
                if have[j] > 0:
                    errors[g].append(float(accuracy[0, j] - measured[j]))
            noise = np.where(have > 0, measured * (1 - measured) / np.maximum(have, 1), 0.0)
            run.fit.append({"point": list(p), "examples": len(self.outcomes[p]), "whole": bool(chunks.all()),
                            "predicted": float(accuracy[0] @ self.weights), "sd": float(math.sqrt((sd[0] ** 2) @ self.weights ** 2)),
                            "measured": float(measured @ self.weights), "measured_sd": float(math.sqrt(noise @ self.weights ** 2))})
        run.loo = {g: math.sqrt(sum(e * e for e in v) / len(v)) for g, v in errors.items() if v}
        pairs = [(f["predicted"], f["measured"]) for f in run.fit if f["whole"]]
        run.loo_objective = math.sqrt(sum((a - b) ** 2 for a, b in pairs) / len(pairs)) if pairs else math.nan
