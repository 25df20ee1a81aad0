import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from conftest import BFCL_FIXTURE
from soce.analysis import Analysis, analyze, correlation_matrix, plot_correlation, plot_entry_tau
from soce.scores import ScoreTable, read_table

# Four models, four categories. By hand: rho(A, B) = 1; rho(A, C) = rho(B, C) = -2/sqrt(20);
# D is missing for the second model, so pairs with D use rows 1, 3, 4:
# rho(A, D) = -(21/9)/(42/9) = -0.5 and rho(C, D) = -(6/9)/sqrt(24/9 * 42/9) = -6/sqrt(1008).
A = [1, 2, 3, 4]
B = [2, 4, 6, 8]
C = [1, -1, 1, -1]
D = [4, np.nan, 1, 3]


def hand_table() -> ScoreTable:
    values = np.array([A, B, C, D], dtype=float).T
    return ScoreTable(("m1", "m2", "m3", "m4"), ("A", "B", "C", "D"), values, np.nanmean(values, axis=1))


def test_pearson_matches_hand_computed_values():
    rho, counts = correlation_matrix(hand_table().values)
    assert rho[0, 1] == pytest.approx(1.0)
    assert rho[0, 2] == pytest.approx(-2 / math.sqrt(20))
    assert rho[1, 2] == pytest.approx(-2 / math.sqrt(20))
    assert rho[0, 3] == pytest.approx(-0.5)
    assert rho[2, 3] == pytest.approx(-6 / math.sqrt(1008))
    assert counts[0, 3] == 3 and counts[0, 1] == 4  # pairwise complete: one row dropped, not all


def test_spearman_ranks_within_each_pair():
    rho, _ = correlation_matrix(hand_table().values, "spearman")
    # C's ranks are (3.5, 1.5, 3.5, 1.5): average ranks for ties.
    assert rho[0, 2] == pytest.approx(-2 / math.sqrt(20))
    assert rho[0, 3] == pytest.approx(-0.5)  # ranks of (1, 3, 4) and (3, 1, 2)


def test_weak_set_and_entry_thresholds():
    a = analyze(hand_table(), tau=0.3)
    assert a.entry_tau == pytest.approx({"A": 2 / math.sqrt(20), "B": 2 / math.sqrt(20),
                                         "C": 6 / math.sqrt(1008), "D": 6 / math.sqrt(1008)})
    assert a.weak_set == ("C", "D")  # 0.189 < 0.3 <= 0.447
    assert [(p[0], p[1]) for p in a.weak_pairs] == [("C", "D")]
    assert a.weak_set_at(0.18) == ()
    assert a.weak_set_at(0.5) == ("A", "B", "C", "D")
    assert [s["weak_set"] for s in a.tau_sweep([0.1, 0.3, 0.45])] == [[], ["C", "D"], ["A", "B", "C", "D"]]


def test_undefined_correlations_never_make_a_pair_weak():
    values = np.array([[1, 5, 0.1], [2, 5, 0.9], [3, 5, 0.5]], dtype=float)  # column 2 is constant
    t = ScoreTable(("a", "b", "c"), ("x", "constant", "z"), values, values.mean(axis=1))
    a = analyze(t, tau=1.0)
    assert math.isnan(a.matrix[0, 1]) and ("x", "constant") in a.undefined_pairs
    assert "constant" not in a.weak_set and math.isnan(a.entry_tau["constant"])


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_equals_pandas_on_a_bfcl_table(method):
    t = read_table(BFCL_FIXTURE, format="bfcl")
    rho, _ = correlation_matrix(t.values, method)
    expected = pd.DataFrame(t.values, columns=t.categories).corr(method=method).to_numpy()
    np.testing.assert_allclose(rho, expected, rtol=0, atol=1e-12)


def test_json_round_trip_and_plots(tmp_path):
    a = analyze(read_table(BFCL_FIXTURE, format="bfcl"), tau=0.3)
    d = a.to_dict([0.1, 0.3])
    back = Analysis.from_dict(d)
    np.testing.assert_array_equal(back.matrix, a.matrix)
    assert back.weak_set == a.weak_set and d["weak_set"] == list(a.weak_set)
    plot_correlation(a, tmp_path / "c.png")
    plot_entry_tau(a, tmp_path / "e.png")
    for name in ("c.png", "e.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tau_outside_unit_interval():
    with pytest.raises(ValueError, match="outside"):
        analyze(hand_table(), tau=1.5)


def test_a_correlation_near_tau_is_written_with_the_digits_that_tell_its_side():
    from soce.analysis import cell_text

    assert cell_text(0.1972, 0.2) == "0.197" and cell_text(0.2031, 0.2) == "0.203" and cell_text(-0.1951, 0.2) == "-0.195"
    assert cell_text(0.5612, 0.2) == "0.56" and cell_text(float("nan"), 0.2) == "n/a"


def test_reliability_by_hand_and_the_noisy_categories_of_the_weak_set():
    """Per category: 1 - mean p(1-p)/n over the variance of p between models (ddof 1)."""
    from soce.analysis import NOISY, reliability

    big = [0.2, 0.5, 0.8, 0.35, 0.65]  # 1000 examples: real differences
    small = [0.4, 0.6, 0.47, 0.53, 0.67]  # 15 examples: about the noise of 15 coin flips
    flat = [1.0, 1.0, 1.0, 1.0, 1.0]  # saturated: no spread to measure
    values = np.array([big, small, flat, big[::-1]], dtype=float).T
    by_hand = [1 - np.mean([p * (1 - p) / n for p in col]) / np.var(col, ddof=1) for col, n in ((big, 1000), (small, 15))]
    r = reliability(values, [1000, 15, 100, None])
    assert r[:2] == pytest.approx(by_hand) and r[0] > 0.99 and r[1] < NOISY
    assert math.isnan(r[2]) and math.isnan(r[3])  # saturated; size unknown
    assert reliability(values * 100, [1000, 15, 100, None])[:2] == pytest.approx(by_hand)  # percentages, as BFCL's tables
    table = ScoreTable(("m1", "m2", "m3", "m4", "m5"), ("big", "small", "flat", "other"), values, values.mean(axis=1))
    a = analyze(table, 0.99, sizes={"big": 1000, "small": 15, "flat": 100})
    assert "small" in a.weak_set and [c for c, _, _ in a.noisy()] == ["small"]
    again = Analysis.from_dict(a.to_dict())
    assert again.reliability[:2] == pytest.approx(a.reliability[:2]) and again.sizes == (1000, 15, 100, None)
    from soce.analysis import reliability_text

    # shown as a share, never below 0: the formula's value beside a clipped one
    assert [reliability_text(v) for v in (0.76, 0.0, -3.17, math.nan)] == ["0.76", "0.00", "0.00 (raw -3.17)", "n/a"]


def test_bfcl_columns_count_their_test_files_examples():
    """A column is the unweighted mean of its files' accuracies: n = k^2 / sum(1/n_f)."""
    from soce.bfcl.data import column_sizes

    sizes = column_sizes(["Relevance Detection", "Non-Live Simple AST", "Irrelevance Detection"])
    assert sizes == pytest.approx({"Relevance Detection": 18, "Non-Live Simple AST": 9 / (1 / 400 + 1 / 100 + 1 / 50),
                                   "Irrelevance Detection": 4 / (1 / 240 + 1 / 882)})


def test_the_analysis_stage_reports_each_categorys_reliability(study, tmp_path):
    import json

    r = study("benchmark=bfcl_leaderboard", f"benchmark.path={BFCL_FIXTURE}", "pool=all", "stage=analyze", "tracker=none")
    analysis = json.loads((tmp_path / "run" / "analysis.json").read_text())
    assert list(analysis["reliability"]) == analysis["categories"] and analysis["sizes"]["Relevance Detection"] == 18
    assert "its reliability (the share of its spread between models that is not sampling noise; where the noise is larger " \
           "than the spread, 0, with the raw value (below 0) beside it)" in r.log
    assert all(v is None or v >= 0 for v in analysis["reliability"].values())  # a share, as shown; the formula's value beside
    assert {c: max(v, 0) for c, v in analysis["reliability_raw"].items() if v is not None} == \
        {c: v for c, v in analysis["reliability"].items() if v is not None}
    csv = tmp_path / "scores.csv"
    csv.write_text("model,a,b,c\nm1,0.2,0.5,0.9\nm2,0.4,0.45,0.1\nm3,0.8,0.55,0.5\nm4,0.5,0.6,0.3\n")
    r = study("benchmark=table", f"benchmark.path={csv}", "benchmark.category_sizes={a: 500, b: 10}", "pool=all",
              "stage=analyze", "selection.tau=0.99", "tracker=none", run_dir=tmp_path / "table")
    assert json.loads((tmp_path / "table" / "analysis.json").read_text())["sizes"] == {"a": 500, "b": 10, "c": None}
    assert "'b' is in L on a spread between models that is mostly sampling noise (reliability" in r.log
    # said before the figures: what a correlation over 4 models can show (the t test's critical |rho|, 0.95)
    assert "with 4 models, a correlation tells apart from 0 only |rho| above 0.95 (95%)" in r.log
    from soce.analysis import distinguishable_rho

    assert distinguishable_rho(8) == pytest.approx(0.707, abs=5e-4) and math.isnan(distinguishable_rho(2))  # r tables, df 6


@pytest.mark.parametrize("sizes, message", [
    ("{a: 0}", "benchmark.category_sizes.a=0: the number of examples behind the category's scores, a positive integer"),
    ("{z: 10}", "benchmark.category_sizes names 'z', not a category of"),
])
def test_bad_category_sizes_are_refused_naming_the_key(study, tmp_path, sizes, message):
    from soce.errors import ConfigError

    csv = tmp_path / "scores.csv"
    csv.write_text("model,a,b,c\nm1,0.2,0.5,0.9\nm2,0.4,0.45,0.1\nm3,0.8,0.55,0.5\n")
    with pytest.raises(ConfigError, match=message):
        study("benchmark=table", f"benchmark.path={csv}", f"benchmark.category_sizes={sizes}", "pool=all", "stage=analyze",
              "tracker=none")


def test_a_saturated_and_a_15_example_category_are_left_out_of_l_where_the_papers_rule_keeps_them(study, tmp_path):
    import json

    csv = tmp_path / "scores.csv"
    csv.write_text("model,big,other,small,saturated\n"
                   "m1,0.20,0.70,0.40,1.00\nm2,0.50,0.20,0.60,1.00\nm3,0.80,0.55,0.47,0.99\n"
                   "m4,0.35,0.90,0.53,1.00\nm5,0.65,0.40,0.67,1.00\n")
    args = ["benchmark=table", f"benchmark.path={csv}", "benchmark.category_sizes={big: 1000, other: 1000, small: 15, saturated: 100}",
            "pool=all", "stage=analyze", "selection.tau=0.5", "tracker=none"]
    paper = study(*args, run_dir=tmp_path / "paper")
    assert {"small", "saturated"} <= set(json.loads((tmp_path / "paper" / "analysis.json").read_text())["weak_set"])
    noise = study(*args, "analysis.min_reliability=0.5", run_dir=tmp_path / "noise")
    analysis = json.loads((tmp_path / "noise" / "analysis.json").read_text())
    assert sorted(analysis["left_out"]) == ["saturated", "small"] and analysis["weak_set"] == ["big", "other"]
    assert "left out of L: small: reliability" in noise.log and "< analysis.min_reliability=0.5 (15 examples)" in noise.log
    assert analysis["entry_tau"]["small"] is None  # never enters L, nor makes another enter it



def test_stability_gives_intervals_and_ties_leaders_within_the_noise_of_a_small_category(study, tmp_path):
    """Redraws of the scores (binomial on each category's examples): a 2000-example category's
    clear leader leads every redraw and its correlation interval is narrow; the 15-example
    category's two leaders 0.03 apart each lead a share of the redraws (tied within the noise),
    and its entry into L is not certain."""
    import json

    from soce.stability import stability

    csv = tmp_path / "scores.csv"
    csv.write_text("model,big,other,small\n"
                   "m1,0.20,0.70,0.60\nm2,0.50,0.20,0.63\nm3,0.90,0.55,0.40\nm4,0.35,0.90,0.30\nm5,0.65,0.40,0.20\n")
    r = study("benchmark=table", f"benchmark.path={csv}", "benchmark.category_sizes={big: 2000, other: 2000, small: 15}",
              "pool=all", "stage=analyze", "selection.tau=0.5", "analysis.resamples=300", "tracker=none")
    analysis = json.loads((tmp_path / "run" / "analysis.json").read_text())
    s = analysis["stability"]
    assert s["resamples"] == 300 and set(s["in_weak_set"]) == {"big", "other", "small"}
    assert "small" in analysis["weak_set"] and 0 < s["in_weak_set"]["small"] < 1
    assert s["leaders"]["big"] == {"m3": 1.0}
    assert {"m1", "m2"} <= set(s["leaders"]["small"]) and max(s["leaders"]["small"].values()) < 0.95
    rho = {(p["a"], p["b"]): p["ci"] for p in s["rho_interval"]}
    point = analysis["matrix"][0][1]
    low, high = rho[("big", "other")]
    assert low <= point <= high and high - low < 0.1  # 2000 examples each: a narrow interval
    low, high = rho[("big", "small")]
    assert high - low > 0.3  # 15 examples: a wide one
    assert "small: in L, in L in" in r.log and "led by (tied within the noise) " in r.log
    from soce.analysis import entry_label

    assert re.fullmatch(r"small \(reliability -?\d\.\d\d, in L in \d+% of redraws\)", entry_label(Analysis.from_dict(analysis), "small"))
    # a saturated category: every redraw of 1.0 is 1.0, and the models tied at it share the lead
    saturated = ScoreTable(("m1", "m2", "m3"), ("big", "sat"), np.array([[0.2, 1.0], [0.5, 1.0], [0.9, 0.5]]),
                           np.array([0.6, 0.75, 0.7]))
    shared = stability(saturated, analyze(saturated, 1.0, sizes={"big": 2000, "sat": 100}), saturated.models, 50)
    assert shared.leaders["sat"] == {"m1": pytest.approx(0.5), "m2": pytest.approx(0.5)}
    # the paper's rule on each redraw: big's leader m3 always; sat's tie goes to the best overall, m2
    assert shared.chosen == {"m3": 1.0, "m2": 1.0}
    # the same redraws (seeded) give the same figures; the table's own analysis is unchanged by them
    a = Analysis.from_dict(analysis)
    table = read_table(csv)
    again = stability(table, a, table.models, 300, 0)
    assert again.in_weak_set == s["in_weak_set"] and a.weak_set == tuple(analysis["weak_set"])


def test_selection_ties_all_keeps_every_leader_tied_within_the_noise(study, tmp_path):
    """small's leaders m2 (0.63) and m1 (0.60) on 15 examples are tied within the noise: the
    paper's rule takes m2 alone; selection.ties=all takes both. Without redraws (resamples=0)
    only exact ties are kept, and the log says so."""
    import json

    csv = tmp_path / "scores.csv"
    csv.write_text("model,big,other,small\n"
                   "m1,0.20,0.70,0.60\nm2,0.50,0.20,0.63\nm3,0.90,0.55,0.40\nm4,0.35,0.90,0.30\nm5,0.65,0.40,0.20\n")
    args = ["benchmark=table", f"benchmark.path={csv}", "benchmark.category_sizes={big: 2000, other: 2000, small: 15}",
            "pool=all", "stage=select", "selection.tau=0.5", "tracker=none"]

    def experts(run: str, *more: str) -> dict[str, str]:
        r = study(*args, *more, run_dir=tmp_path / run)
        return r, {e["model"]: e["reason"] for e in json.loads((tmp_path / run / "selection.json").read_text())["experts"]}

    _, paper = experts("paper")
    assert "small" in paper["m2"] and "m1" not in paper
    _, ties = experts("ties", "selection.ties=all")
    assert ties["m1"] == "tied for the lead on small (selection.ties=all)" and set(paper) < set(ties)
    r, exact = experts("exact", "selection.ties=all", "analysis.resamples=0")
    assert exact == paper and "selection.ties=all: the analysis has no redraws of the scores" in r.log

def test_a_min_reliability_outside_0_to_1_is_refused():
    from conftest import compose_cfg
    from soce import config
    from soce.errors import ConfigError

    with pytest.raises(ConfigError, match=r"analysis.min_reliability=1.5: a share between 0 and 1"):
        config.validate(compose_cfg(["analysis.min_reliability=1.5"]))


def test_an_empty_selection_names_the_categories_min_reliability_left_out(study, tmp_path):
    from soce.errors import ConfigError

    csv = tmp_path / "scores.csv"
    csv.write_text("model,big,other,small,saturated\n"
                   "m1,0.20,0.70,0.40,1.00\nm2,0.50,0.20,0.60,1.00\nm3,0.80,0.55,0.47,0.99\n"
                   "m4,0.35,0.90,0.53,1.00\nm5,0.65,0.40,0.67,1.00\n")
    with pytest.raises(ConfigError, match=r"the weakest pair is big and other \(\|rho\|=[\d.]+\): any tau above .*; "
                                          r"analysis.min_reliability=0.5 leaves 2 of 4 categories out of L \(small, saturated\)$"):
        study("benchmark=table", f"benchmark.path={csv}", "benchmark.category_sizes={big: 1000, other: 1000, small: 15, saturated: 100}",
              "pool=all", "stage=select", "selection.tau=0.01", "analysis.min_reliability=0.5", "tracker=none")


def test_min_reliability_without_sizes_says_it_leaves_nothing_out(study, tmp_path):
    csv = tmp_path / "scores.csv"
    csv.write_text("model,a,b,c\nm1,0.2,0.5,0.9\nm2,0.4,0.45,0.1\nm3,0.8,0.55,0.5\n")
    r = study("benchmark=table", f"benchmark.path={csv}", "pool=all", "stage=analyze", "analysis.min_reliability=0.5",
              "tracker=none")
    assert ("analysis.min_reliability=0.5 leaves nothing out: the number of examples behind each category's scores is "
            "unknown here (benchmark.category_sizes gives them for a table)") in r.log


def test_the_report_names_the_categories_of_l_that_rest_on_noise(study, tmp_path):
    csv = tmp_path / "scores.csv"
    csv.write_text("model,big,other,small,saturated\n"
                   "m1,0.20,0.70,0.40,1.00\nm2,0.50,0.20,0.60,1.00\nm3,0.80,0.55,0.47,0.99\n"
                   "m4,0.35,0.90,0.53,1.00\nm5,0.65,0.40,0.67,1.00\n")
    study("benchmark=table", f"benchmark.path={csv}", "benchmark.category_sizes={big: 1000, other: 1000, small: 15, saturated: 100}",
          "pool=all", "stage=report", "selection.tau=0.5", "tracker=none")
    report = (tmp_path / "run" / "report.md").read_text()
    # one parenthesis deep: what reliability is, then the categories, each with its value
    assert re.search(r"A category's reliability is the share of its spread between models that is not sampling noise; .*\. "
                     r"In L with a reliability below 0.5, a spread between models that is mostly sampling noise: "
                     r"small (0\.00 \(raw -[\d.]+\)|0\.\d\d), saturated (0\.00 \(raw -[\d.]+\)|0\.\d\d)\. "
                     r"Their correlations, and the experts they pick, rest on chance\.", report)


def test_sizes_known_for_some_categories_only_are_said_and_the_others_get_no_redraw_claims(study, tmp_path):
    """Issue 36: a category without a size was exempt from min_reliability without a word, and
    reported in L in 100% of redraws because it is never redrawn."""
    csv = tmp_path / "scores.csv"
    csv.write_text("model,big,other,nosize\n"
                   "m1,0.20,0.70,0.40\nm2,0.50,0.20,0.60\nm3,0.80,0.55,0.47\nm4,0.35,0.90,0.53\nm5,0.65,0.40,0.67\n")
    r = study("benchmark=table", f"benchmark.path={csv}", "benchmark.category_sizes={big: 1000, other: 1000}", "pool=all",
              "stage=report", "selection.tau=0.9", "analysis.min_reliability=0.5", "tracker=none")
    assert ("the number of examples is known for 2 of 3 categories: nosize has none, so it has no reliability, is not "
            "redrawn and analysis.min_reliability=0.5 cannot leave it out") in r.log
    analysis = json.loads((tmp_path / "run" / "analysis.json").read_text())
    assert "nosize" not in analysis["stability"]["in_weak_set"] and analysis["stability"]["unsized"] == ["nosize"]
    assert "nosize" not in analysis["stability"]["leaders"]
    assert "nosize: in L, in L in" not in r.log and "not redrawn, their number of examples unknown" in r.log
    report = (tmp_path / "run" / "report.md").read_text()
    assert "The number of examples behind the scores is unknown for nosize: no reliability and no redraws for them, and " \
           "analysis.min_reliability does not apply to them." in report
