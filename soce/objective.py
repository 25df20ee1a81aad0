"""The objective: what a model's results on a split add up to (the search maximises it, the
results report it, the bootstrap resamples it).

Every objective is a function of per-group accuracies, where a group is a set of examples (a
category, or one of a benchmark's test files): `groups` names each example's group, `of_groups`
combines the groups' accuracies, `combiner` does the same on arrays (for the bootstrap, which
resamples within each group, so every group keeps its size and a weighted aggregate stays the
benchmark's). `search.objective` chooses one from OBJECTIVES:

- mean / sum: of the per-category scores (the paper's);
- benchmark: the benchmark's own overall where it defines one (BFCL v3's Overall Acc, the
  aggregate of the lm-eval groups asked for), the mean elsewhere.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Mapping, Sequence

import numpy as np

from soce.registry import Registry
from soce.scores import Outcome, ScoreTable

OBJECTIVES: Registry[Callable[[object], "Objective"]] = Registry("search.objective")


class Objective:
    """The mean of the per-category scores; subclasses weigh other groups."""

    name = "mean"
    label = "mean over all categories"
    group = "category"  # what the examples are grouped by

    def groups(self, examples: Sequence[tuple[str, str]]) -> list[str]:
        """Each example's group, for (id, category) pairs: its category."""
        return [category for _, category in examples]

    def of_groups(self, accuracy: Mapping[str, float], sizes: Mapping[str, int] | None = None) -> float:
        """The objective of per-group accuracies (`sizes`: each group's examples, for an objective
        that weighs by them)."""
        values = list(accuracy.values())
        return math.fsum(values) / len(values)

    def combiner(self, names: Sequence[str], sizes: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
        """The objective of arrays of per-group accuracies (last axis: the groups `names`, of
        `sizes` examples)."""
        return lambda per_group: per_group.mean(axis=-1)

    def of(self, scores: Mapping[str, float], outcomes: Sequence[Outcome] = ()) -> float:
        """A model's objective from its per-category scores (and, for an objective over other
        groups than the categories or weighed by their sizes, its per-example outcomes)."""
        return self.of_groups(scores)

    def of_outcomes(self, outcomes: Sequence[Outcome]) -> float:
        """The objective of per-example outcomes alone (on any subset of a split's examples)."""
        groups = self.groups([(o.example_id, o.category) for o in outcomes])
        solved: dict[str, list[bool]] = {}
        for g, o in zip(groups, outcomes):
            solved.setdefault(g, []).append(o.correct)
        return self.of_groups({g: sum(v) / len(v) for g, v in solved.items()}, {g: len(v) for g, v in solved.items()})

    def of_row(self, table: ScoreTable, model: str) -> float:
        """`model`'s objective in `table` (its scores and, where the table has them, its outcomes)."""
        return self.of(table.row(model), [o for o in table.outcomes if o.model == model])

    def overall(self, models: Sequence[str], categories: Sequence[str], values: np.ndarray,
                outcomes: Sequence[Outcome]) -> np.ndarray:
        """The overall column of a table of evaluated candidates (`values`: models x categories)."""
        return values.mean(axis=1)


class Sum(Objective):
    name = "sum"
    label = "sum over all categories"

    def of_groups(self, accuracy, sizes=None):
        return math.fsum(accuracy.values())

    def combiner(self, names, sizes):
        return lambda per_group: per_group.sum(axis=-1)


class SectionMean(Objective):
    """A benchmark's own overall: sections (each the weighted mean of its groups' accuracies),
    averaged. A section or group without examples (a subset of the benchmark's categories, a
    subset of a split's examples) is left out and the others' weights renormalised. Subclasses
    say each present group's weight within its section (`parts`)."""

    def parts(self, sizes: Mapping[str, int]) -> list[dict[str, float]]:
        """Per section, the weights of its groups present in `sizes` (group -> its examples)."""
        raise NotImplementedError

    def weights(self, sizes: Mapping[str, int]) -> dict[str, float]:
        """Each present group's share of the objective (they sum to 1)."""
        parts = [p for p in self.parts(sizes) if p]
        return {g: w / math.fsum(p.values()) / len(parts) for p in parts for g, w in p.items()}

    def of_groups(self, accuracy, sizes=None):
        w = self.weights(dict.fromkeys(accuracy, 1) if sizes is None else sizes)
        return math.fsum(w[g] * a for g, a in accuracy.items())

    def combiner(self, names, sizes):
        w = self.weights(dict(zip(names, sizes)))
        vector = np.array([w[g] for g in names])
        return lambda per_group: per_group @ vector

    def overall(self, models, categories, values, outcomes):
        """Each candidate's objective, from its row of scores and its outcomes."""
        by_model: dict[str, list[Outcome]] = {}
        for o in outcomes:
            by_model.setdefault(o.model, []).append(o)
        return np.array([self.of(dict(zip(categories, row)), by_model.get(m, ())) for m, row in zip(models, values)],
                        dtype=np.float64)


class Weighted(SectionMean):
    """Sections of fixed weights over groups of examples (BFCL v3's Overall Acc over its test
    files), computed from per-example outcomes."""

    def __init__(self, name: str, label: str, sections: Mapping[str, Mapping[str, float]], group_of: Mapping[str, str],
                 group: str = "test file") -> None:
        self.name, self.label, self.group = name, label, group
        self.sections = {s: dict(w) for s, w in sections.items()}
        self.group_of = group_of  # example id -> its group

    def groups(self, examples):
        return [self.group_of[i] for i, _ in examples]

    def parts(self, sizes):
        parts = [{g: w for g, w in section.items() if g in sizes} for section in self.sections.values()]
        unknown = set(sizes) - {g for p in parts for g in p}
        if unknown:
            raise ValueError(f"{self.name}: no weight for {', '.join(sorted(unknown))}")
        return parts

    def of(self, scores, outcomes=()):
        if not outcomes:
            raise ValueError(f"{self.name} is computed from per-example outcomes; none were given")
        return self.of_outcomes(outcomes)


class Sections(SectionMean):
    """The mean of sections (an lm-eval group each, or a task asked for alone), each its
    categories' scores aggregated as the group does: weighted by their examples (lm-eval's
    weight_by_size) or not."""

    def __init__(self, name: str, label: str, sections: Mapping[str, tuple[Sequence[str], bool]]) -> None:
        self.name, self.label = name, label
        self.sections = {s: (tuple(cats), by_size) for s, (cats, by_size) in sections.items()}

    def parts(self, sizes):
        return [{c: float(sizes[c]) if by_size else 1.0 for c in cats if c in sizes} for cats, by_size in self.sections.values()]

    def of_groups(self, accuracy, sizes=None):
        if sizes is None and any(by_size for _, by_size in self.sections.values()):
            raise ValueError(f"{self.name} weighs categories by their examples: it needs the per-example outcomes")
        return super().of_groups(accuracy, sizes)

    def of(self, scores, outcomes=()):
        return self.of_groups(scores, Counter(o.category for o in outcomes) if outcomes else None)


def label_of(results: dict) -> str:
    """How results.json names its objective (one written before it named it: mean or sum)."""
    return results.get("objective_label") or f"{results['objective']} over all categories"


OBJECTIVES.register("mean")(lambda evaluator: Objective())
OBJECTIVES.register("sum")(lambda evaluator: Sum())
OBJECTIVES.register("benchmark")(lambda evaluator: evaluator.benchmark_objective() or Objective())
