"""The report: Shapley values, win rates and consistency on hand-made games and tables, and
report.md on the micro family."""

import itertools
import json
import re
import math
import random

import numpy as np
import pytest

from conftest import MICRO_STUDY
from soce.errors import ConfigError, DataError
from soce.report.consistency import consistency, mean_off_diagonal
from soce.report.shapley import exact_shapley, monte_carlo_shapley, shapley
from soce.report.winrate import win_rates
from soce.scores import read_scores
from soce.search import grid_points
from soce.objective import Objective
from soce.stats import Bootstrap
from soce.weights import simplex_grid
from soce.zoo.family import FAMILIES

# v(empty)=0; v(A)=10, v(B)=20, v(C)=30; v(AB)=40, v(AC)=50, v(BC)=60; v(ABC)=90. By hand:
# phi_A = 1/3*10 + 1/6*(40-20) + 1/6*(50-30) + 1/3*(90-60) = 20; phi_B = 30; phi_C = 40.
GAME = {(): 0, (0,): 10, (1,): 20, (2,): 30, (0, 1): 40, (0, 2): 50, (1, 2): 60, (0, 1, 2): 90}


def test_exact_shapley_of_a_three_player_game_by_hand():
    asked = []

    def v(coalition):
        asked.append(coalition)
        return GAME[tuple(sorted(coalition))]

    result = exact_shapley(3, v)
    assert result.values == pytest.approx((20.0, 30.0, 40.0), abs=1e-12)
    assert sum(result.values) == pytest.approx(GAME[(0, 1, 2)] - GAME[()])  # efficiency
    assert result.errors is None and result.method == "exact"
    assert len(asked) == len(set(asked)) == 7  # each non-empty coalition valued once


def test_efficiency_holds_with_a_nonzero_empty_coalition():
    result = exact_shapley(3, lambda c: GAME[tuple(sorted(c))] + 5, empty=5.0)
    assert result.values == pytest.approx((20.0, 30.0, 40.0))


def _random_game(n, seed):
    rng = random.Random(seed)
    values = {frozenset(c): rng.uniform(0, 1) * len(c) ** 1.5
              for k in range(1, n + 1) for c in itertools.combinations(range(n), k)}
    return lambda c: values[frozenset(c)]


def test_monte_carlo_agrees_with_exact_within_its_stated_error():
    v = _random_game(5, seed=3)
    exact = exact_shapley(5, v)
    mc = monte_carlo_shapley(5, v, samples=400, seed=1)
    assert mc.method == "monte_carlo" and mc.samples == 400 and mc.coalitions == 31
    for e, m, se in zip(exact.values, mc.values, mc.errors):
        assert se > 0 and abs(m - e) <= 3 * se, (e, m, se)
    assert sum(mc.values) == pytest.approx(v(range(5)))  # every permutation adds up to v(all)


def test_monte_carlo_is_exact_on_an_additive_game():
    mc = monte_carlo_shapley(4, lambda c: sum(c) + len(c), samples=10)
    assert mc.values == pytest.approx((1.0, 2.0, 3.0, 4.0)) and mc.errors == pytest.approx((0, 0, 0, 0))


def test_auto_switches_to_monte_carlo_beyond_max_exact():
    v = _random_game(5, seed=0)
    assert shapley(5, v, "auto", max_exact=8).method == "exact"
    assert shapley(5, v, "auto", max_exact=4, samples=20).method == "monte_carlo"
    with pytest.raises(ConfigError, match="at least 2"):
        monte_carlo_shapley(3, v, samples=1)


def test_win_rates_on_a_hand_made_outcome_table():
    #          t1 t2 t3 t4 t5 t6
    a = dict(zip("123456", [1, 1, 0, 0, 1, 0]))
    b = dict(zip("123456", [1, 0, 1, 0, 1, 0]))
    soup = dict(zip("123456", [1, 1, 0, 1, 0, 0]))
    rates = win_rates({"a": a, "b": b}, soup)
    assert rates.tasks == 6
    assert (rates.kept["a"].solved, rates.kept["a"].of) == (2, 3)  # a solves t1 t2 t5; the soup t1 t2
    assert (rates.kept["b"].solved, rates.kept["b"].of) == (1, 3)  # b solves t1 t3 t5; the soup t1
    assert (rates.all_fail.solved, rates.all_fail.of) == (1, 2)  # t4 t6 failed by both; the soup solves t4
    assert (rates.one_fails.solved, rates.one_fails.of) == (1, 2)  # t2 (b fails) t3 (a fails)
    assert rates.kept["a"].rate == pytest.approx(2 / 3)
    with pytest.raises(DataError, match="b: no outcome for 1"):
        win_rates({"a": a, "b": {k: v for k, v in b.items() if k != "6"}}, soup)


def test_consistency_means_off_the_diagonal():
    m = np.array([[1.0, 0.2, np.nan], [0.2, 1.0, 0.6], [np.nan, 0.6, 1.0]])
    assert mean_off_diagonal(m) == pytest.approx(0.4)
    rows = np.array([[0.1, 0.2, 0.9], [0.2, 0.4, 0.1], [0.3, 0.6, 0.5]])
    c = consistency(("x", "y", "z"), rows, rows[:, [0, 0, 2]])
    assert c.candidates[0, 1] == pytest.approx(1.0) and c.n_candidates == c.n_soups == 3


STUDY = [*MICRO_STUDY, "search.budget=6"]


def test_the_report_on_the_micro_family_has_every_section_and_costs_nothing_twice(study, zoo_cache, tmp_path):
    run = tmp_path / "run"
    args = [*STUDY, f"pool.cache_dir={zoo_cache}"]
    r = study(*args)
    report = (run / "report.md").read_text()
    for section in ("## The study", "## Weak set and experts", "## Baselines", "## Weight landscape", "## Shapley values",
                    "## Will souping work? Task vectors and linear mode connectivity", "## Consistency across categories",
                    "## Win rates on test"):
        assert section in report
    # task vectors from the family's base, the lines between the experts, a sentence per pair
    experts = [e["model"] for e in json.loads((run / "selection.json").read_text())["experts"]]
    vectors = r.tracker.tables["report/task_vectors"][1]  # every candidate's, the experts marked
    assert [row[0] for row in vectors] == [c.name for c in FAMILIES["micro"].candidates]
    assert [row[0] for row in vectors if row[1]] == sorted(experts, key=[row[0] for row in vectors].index)
    assert all(0 < row[3] < 1 for row in vectors)  # deltas smaller than the base
    assert "Cosines between the 4 task vectors: " in report and f"| **{experts[0]}** |" in report
    assert [row[:2] for row in r.tracker.tables["report/connectivity"][1]] == [list(p) for p in itertools.combinations(experts, 2)]
    assert all(f"- {a} and {b}: " in report for a, b in itertools.combinations(experts, 2))
    for image in ("correlation.png", "landscape.png", "shapley.png", "consistency.png", "diagnostics.png"):
        assert f"]({image})" in report and (run / image).stat().st_size > 10_000
    assert "| searched soup, top-3 experts (grid search) |" in report and "failed by every ingredient" in report
    assert "micro-generalist 0.25, micro-json 0.25, micro-parallel 0.25, micro-relevance 0.25 |" in report  # the uniform soup of all 4
    assert re.search(r"The colours span [\d.]+; one score's sampling noise on 120 examples is \+-0\.\d{3} \(two standard "
                     r"errors\), so (most of the landscape is inside it|its shape is more than noise)\.", report)
    from soce.weights import weight_text

    assert [weight_text(w) for w in (0.125, 0.6, 1 / 3)] == ["0.125", "0.60", "0.333"]  # printed weights sum to 1
    # Shapley: 3 experts, exact; pairs are souped and stored, single experts are their own scores.
    records = [json.loads(line) for line in (run / "sweep.jsonl").read_text().splitlines()]
    pairs = [p for p in records if p["kind"] == "shapley" and sorted(p["weights"]) == [0.0, 0.5, 0.5]]
    lines = [p for p in records if p["kind"] == "shapley" and p not in pairs]  # the lines' other points (their middle is a pair)
    assert len(pairs) == 3 and len(lines) == 6 and all(sorted(p["weights"]) == [0.0, 0.25, 0.75] for p in lines)
    assert all(len(p["correct"]) == 120 for p in records if p["split"] == "dev")  # 6 categories x 20 examples
    assert "(3 soups evaluated for this report" in report
    values = [float(line.split("|")[2]) for line in report.split("## Shapley values")[1].split("##")[0].splitlines()
              if line.startswith("| micro-")]
    uniform = next(p for p in records if p["kind"] == "sweep" and p["split"] == "dev"
                   and all(math.isclose(w, 1 / 3) for w in p["weights"]))
    base = next(row for row in json.loads((run / "results.json").read_text())["rows"] if row["role"] == "base")
    # efficiency, at the table's 4 decimals: the empty coalition is the base model
    assert sum(values) == pytest.approx(uniform["objective"] - base["dev"]["objective"], abs=2e-4)
    assert f"the empty coalition's is the base model's score, {base['dev']['objective']:.4f}, so each value is a gain" in report
    shapley = {row[0]: row[1] for row in r.tracker.tables["report/shapley"][1]}
    assert sorted(shapley.values()) == pytest.approx(sorted(values), abs=5e-5)

    # consistency: the soups' correlation matrix is the correlation of the sweep's per-category dev scores
    categories = [c for c in r.tracker.tables["scores"][0][1:-1]]
    grid = [list(w) for w in grid_points(3, 0.1, 0.9, 0.1, True, 6)]  # the search's own points (search.budget=6: 5 and uniform)
    soups = np.array([[p["scores"][c] for c in categories] for p in records
                      if p["kind"] == "sweep" and p["split"] == "dev" and p["weights"] in grid])
    assert len(soups) == 6
    from soce.analysis import correlation_matrix

    expected = mean_off_diagonal(correlation_matrix(soups)[0])
    assert r.tracker.summary["report/consistency_soups"] == pytest.approx(expected)
    assert f"soups {expected:.3f}" in report

    # the results' intervals: recomputed here from the stored outcomes, with the same resamples
    results = json.loads((run / "results.json").read_text())
    rows = {row["role"]: row for row in results["rows"]}
    own = read_scores(run / "scores_test.csv")
    single = rows["single"]["models"][0]
    outcomes = sorted((o for o in own.outcomes if o.model == single), key=lambda o: o.example_id)
    searched = next(p for p in records if p["kind"] == "sweep" and p["split"] == "test" and p["weights"] == rows["searched"]["weights"])
    soup = [b == "1" for b in searched["correct"]]
    boot = Bootstrap([(o.example_id, o.category) for o in outcomes], Objective(), 2000, 0, 0.95)
    assert rows["searched"]["test"]["ci"] == list(boot.interval(soup).to_dict()["ci"])
    assert rows["searched"]["test"]["vs_single"] == boot.difference(soup, [o.correct for o in outcomes]).to_dict()
    assert rows["searched"]["test"]["ci"][0] <= rows["searched"]["test"]["objective"] <= rows["searched"]["test"]["ci"][1]
    [test] = [v for v in rows["searched"]["test"]["versus"] if v["role"] == "single"]
    assert [test["estimate"], test["ci"]] == [rows["searched"]["test"]["vs_single"]["estimate"], rows["searched"]["test"]["vs_single"]["ci"]]
    assert (test["only_soup"], test["only_other"]) == (sum(s and not o.correct for s, o in zip(soup, outcomes)),
                                                            sum(o.correct and not s for s, o in zip(soup, outcomes)))
    assert "What the data supports, on test (better or worse only where the interval is clear of 0):" in report
    assert f"the expert {single} alone" in report and "no choice was made on these scores" in report
    experts = [e["model"] for e in json.loads((run / "selection.json").read_text())["experts"]]
    assert [row[0] for row in r.tracker.tables["versus_test"][1] if row[1] == "expert"] == experts

    before = (run / "sweep.jsonl").read_text()
    again = study(*args, "stage=report", "report.task_vectors=experts")
    assert (run / "sweep.jsonl").read_text() == before and "(0 soups evaluated for this report" in (run / "report.md").read_text()
    assert [row[0] for row in again.tracker.tables["report/task_vectors"][1]] == experts  # the experts' only

    one = study(*args, "selection.k=1", "stage=report")  # one expert: no pair, and the report says so
    report = (run / "report.md").read_text()
    assert "The selection has 1 expert: no pair to soup, so no line and no prediction." in report
    assert "report/connectivity" not in one.tracker.tables and "Players: the 1 expert." in report


def test_the_report_of_an_interrupted_run(study, zoo_cache, tmp_path):
    run = tmp_path / "run"
    args = [*STUDY, "search.budget=3", f"pool.cache_dir={zoo_cache}"]
    study(*args, "stage=sweep")
    study(*args, "report.shapley.players=candidates", "report.shapley.method=monte_carlo", "report.shapley.samples=20", "stage=report")
    report = (run / "report.md").read_text()
    assert "The soup stage has not run in this directory with these settings (3 sweep points stored so far)" in report
    assert "the best sweep point so far (the soup stage has not run)" in report
    assert "Players: the 4 candidates" in report and "Monte Carlo over 20 random orders" in report and "std. error" in report
    assert not (run / "results.json").exists() and not (run / "soup").exists()  # the report never runs the soup


def test_surrogate_plot_leaves_out_only_intervals_wider_than_the_plot(tmp_path):
    from soce.report.plots import bars_within, plot_surrogate

    # across the whole plot (an expert alone, extrapolated): left out; past one end only, or inside: drawn
    assert bars_within([0.5, 0.5, 0.9, 0.5], [1.0, 0.05, 0.2, 0.35], 0.1, 0.9) == [None, 0.05, 0.2, 0.35]
    fit = [{"point": [1.0, 0.0], "whole": True, "predicted": 0.7, "sd": 3.0, "measured": 0.72, "measured_sd": 0.02},
           {"point": [0.5, 0.5], "whole": True, "predicted": 0.75, "sd": 0.01, "measured": 0.74, "measured_sd": 0.02},
           {"point": [0.3, 0.7], "whole": False, "predicted": 0.73, "sd": 0.02, "measured": 0.70, "measured_sd": 0.04}]
    plot_surrogate(fit, "fit", tmp_path / "surrogate.png")
    assert (tmp_path / "surrogate.png").stat().st_size > 10_000
