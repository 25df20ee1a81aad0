"""The objective: the benchmark's own overall (BFCL v3's Overall Acc) from per-example outcomes,
the same in the search, the halving rungs and the bootstrap; the mean and sum as before."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import pytest

from soce.bfcl.data import CATEGORIES, V3_FILE_SIZES, V3_OVERALL
from soce.objective import OBJECTIVES, Objective, Sum, Weighted
from soce.scores import Outcome
from soce.stats import Bootstrap

SECTIONS = Path(__file__).parent / "data" / "bfcl_v3_sections"  # six models of the 2025-06-14 leaderboard
# each BFCL test file's column in the leaderboard's section files
COLUMNS = {
    "non_live": {"simple_python": "Python Simple AST", "simple_java": "Java Simple AST",
                 "simple_javascript": "JavaScript Simple AST", "multiple": "Multiple AST", "parallel": "Parallel AST",
                 "parallel_multiple": "Parallel Multiple AST", "irrelevance": "Irrelevance Detection"},
    "live": {"live_simple": "Python Simple AST", "live_multiple": "Python Multiple AST", "live_parallel": "Python Parallel AST",
             "live_parallel_multiple": "Python Parallel Multiple AST", "live_irrelevance": "Irrelevance Detection",
             "live_relevance": "Relevance Detection"},
    "multi_turn": {"multi_turn_base": "Base", "multi_turn_miss_func": "Miss Func", "multi_turn_miss_param": "Miss Param",
                   "multi_turn_long_context": "Long Context"},
}


def _rows(part: str) -> dict[str, dict[str, str]]:
    with (SECTIONS / f"data_{part}.csv").open() as f:
        return {row["Model"]: row for row in csv.DictReader(f)}


def _percent(cell: str) -> float:
    return float(cell.removesuffix("%"))


def bfcl_overall(group_of=None) -> Weighted:
    return Weighted("bfcl_v3_overall", "BFCL v3 Overall Acc", V3_OVERALL, group_of or {})


def test_the_v3_formula_gives_each_leaderboard_rows_overall_acc():
    """Every test file's accuracy from the leaderboard's section files, through the objective's
    weights: each model's Overall Acc to within 0.01 points (the leaderboard prints each figure
    to two decimals; their rounding moves the formula's value by up to 0.01)."""
    overall = _rows("overall")
    sections = {part: _rows(part) for part in COLUMNS}
    assert len(overall) == 6
    for model, row in overall.items():
        accuracy = {f: _percent(sections[part][model][column]) for part, columns in COLUMNS.items()
                    for f, column in columns.items()}
        assert set(accuracy) == set(V3_FILE_SIZES)
        assert bfcl_overall().of_groups(accuracy) == pytest.approx(_percent(row["Overall Acc"]), abs=0.0101), model
    # not the flat mean of the 14 columns the sweep maximised before
    flat = {m: np.mean([_percent(r[c]) for c in CATEGORIES]) for m, r in overall.items()}
    assert max(abs(flat[m] - _percent(r["Overall Acc"])) for m, r in overall.items()) > 2


def _outcomes(solved: dict[str, tuple[int, int]]) -> list[Outcome]:
    """Outcomes with `solved[file] = (right, of)` per test file, each file's examples its own ids."""
    category = {f: c for c, files in CATEGORIES.items() for f in files}
    out = []
    for f, (right, of) in solved.items():
        out += [Outcome("m", f"{f}_{i}", category[f], i < right) for i in range(of)]
    return out


def test_the_overall_from_outcomes_is_the_formula_on_each_files_accuracy_and_the_bootstraps_estimate():
    rng = random.Random(0)
    solved = {f: (rng.randint(0, n), n) for f, n in V3_FILE_SIZES.items()}  # every file at its size
    outcomes = _outcomes(solved)
    objective = bfcl_overall({o.example_id: o.example_id.rsplit("_", 1)[0] for o in outcomes})
    expected = objective.of_groups({f: r / n for f, (r, n) in solved.items()})
    assert objective.of({}, outcomes) == pytest.approx(expected, abs=1e-12)
    # the weights: simple files 1/45, the other non-live files 1/15, live by entries, multi turn 1/12
    w = objective.weights(V3_FILE_SIZES)
    assert w["simple_java"] == pytest.approx(1 / 45) and w["irrelevance"] == pytest.approx(1 / 15)
    assert w["live_multiple"] == pytest.approx(1053 / (3 * 2251)) and w["multi_turn_base"] == pytest.approx(1 / 12)
    assert math.fsum(w.values()) == pytest.approx(1)
    # the bootstrap resamples within each test file and estimates the same number
    boot = Bootstrap([(o.example_id, o.category) for o in outcomes], objective, samples=200)
    assert boot.interval([o.correct for o in outcomes]).estimate == pytest.approx(expected, abs=1e-12)
    # a subset without some files (a halving rung, a study of some columns): the rest renormalised
    live = [o for o in outcomes if o.example_id.startswith("live_")]
    pooled = sum(o.correct for o in live) / len(live)  # Live Overall is the live files' pooled accuracy
    assert objective.of_outcomes(live) == pytest.approx(pooled, abs=1e-12)


def test_mean_and_sum_are_the_categories_as_before():
    outcomes = [Outcome("m", str(i), c, ok) for i, (c, ok) in enumerate([("a", 1), ("a", 0), ("b", 1), ("b", 1), ("b", 0)])]
    assert Objective().of_outcomes(outcomes) == pytest.approx((0.5 + 2 / 3) / 2)
    assert Sum().of({"a": 0.5, "b": 0.25}) == 0.75
    with pytest.raises(ValueError, match="per-example outcomes"):
        bfcl_overall().of({"a": 0.5})


def test_search_objective_benchmark_is_the_benchmarks_own_or_the_mean():
    class Plain:
        def benchmark_objective(self):
            return None

    class Bfcl:
        def benchmark_objective(self):
            return bfcl_overall()

    assert type(OBJECTIVES["benchmark"](Plain())) is Objective
    assert OBJECTIVES["benchmark"](Bfcl()).name == "bfcl_v3_overall"
    assert OBJECTIVES["mean"](Bfcl()).name == "mean" and OBJECTIVES["sum"](Plain()).name == "sum"


def test_an_lm_eval_groups_aggregate_weighs_its_tasks_as_the_group_says():
    """Sections: each group's categories weighted by their examples (weight_by_size) or not, the
    groups and the tasks asked for alone averaged; the bootstrap's estimate is the same number."""
    from soce.objective import Sections

    objective = Sections("lm_eval_groups", "x", {"g": (["a", "b"], True), "c": (["c"], False)})
    outcomes = [Outcome("m", f"a{i}", "a", i < 30) for i in range(40)] + \
               [Outcome("m", f"b{i}", "b", i < 2) for i in range(10)] + [Outcome("m", f"c{i}", "c", i < 5) for i in range(20)]
    scores = {"a": 0.75, "b": 0.2, "c": 0.25}
    g = (40 * 0.75 + 10 * 0.2) / 50  # lm-eval's weight_by_size: the group's examples pooled
    assert objective.of(scores, outcomes) == pytest.approx((g + 0.25) / 2)
    assert objective.of_outcomes(outcomes) == pytest.approx((g + 0.25) / 2)
    boot = Bootstrap([(o.example_id, o.category) for o in outcomes], objective, samples=50)
    assert boot.interval([o.correct for o in outcomes]).estimate == pytest.approx((g + 0.25) / 2)
    unweighted = Sections("lm_eval_groups", "x", {"g": (["a", "b"], False)})
    assert unweighted.of({"a": 0.75, "b": 0.2}) == pytest.approx(0.475)


def test_a_stored_records_outcomes_are_read_back_by_id_whatever_the_splits_order():
    """The store keeps outcomes in the order of example id; a split lists its examples in its own
    order (BFCL's: by test file). Read back, each outcome is its own example's: an objective over
    test files gets them right (it read them in the split's order once, and a soup scored 0.36
    where its outcomes, identical to its expert's, gave 0.63)."""
    from soce.sweep import record_outcomes, solved_bits

    examples = [("simple_python_1", "Non-Live Simple AST"), ("live_simple_0", "Live Simple AST"),
                ("irrelevance_0", "Irrelevance Detection"), ("live_irrelevance_2", "Irrelevance Detection")]
    solved = {"simple_python_1": True, "live_simple_0": False, "irrelevance_0": False, "live_irrelevance_2": True}
    bits = solved_bits([Outcome("", i, c, solved[i]) for i, c in examples])
    back = record_outcomes(bits, examples)
    assert [(o.example_id, o.category, o.correct) for o in back] == [(i, c, solved[i]) for i, c in examples]


def test_the_candidates_overall_column_is_the_objective_for_every_section_mean():
    """The overall column ranks the candidates (best single, topk, the tie rule): for an lm-eval
    group weighted by size it is the group's aggregate, not the mean of the categories (it was)."""
    from soce.objective import Sections

    objective = Sections("lm_eval_groups", "x", {"g": (["a", "b"], True)})
    outcomes = [Outcome(m, f"{c}{i}", c, True) for m in ("m1", "m2") for c, n in (("a", 30), ("b", 10)) for i in range(n)]
    values = np.array([[0.9, 0.1], [0.2, 0.8]])
    overall = objective.overall(["m1", "m2"], ["a", "b"], values, outcomes)
    assert list(overall) == pytest.approx([(30 * 0.9 + 10 * 0.1) / 40, (30 * 0.2 + 10 * 0.8) / 40])
    assert overall[0] > overall[1] and values[0].mean() == values[1].mean()  # the mean would tie them
    assert list(Objective().overall(["m1", "m2"], ["a", "b"], values, outcomes)) == list(values.mean(axis=1))
