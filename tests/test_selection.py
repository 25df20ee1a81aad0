import math

import numpy as np
import pytest

from soce.analysis import Analysis
from soce.errors import SoceError
from soce.pool import Candidate, resolve_pool
from soce.scores import ScoreTable
from soce.selection import select_all, select_manual, select_soce, select_topk

CATS = ("x", "y", "z")


def table(rows: dict[str, tuple[float, float, float]], overall: dict[str, float]) -> ScoreTable:
    models = tuple(rows)
    return ScoreTable(models, CATS, np.array([rows[m] for m in models], dtype=float), np.array([overall[m] for m in models]))


def analysis(tau: float) -> Analysis:
    """x and y are weakly correlated (0.05); z is strongly correlated with both."""
    rho = np.array([[1, 0.05, 0.9], [0.05, 1, 0.8], [0.9, 0.8, 1]])
    return Analysis("pearson", tau, (), CATS, rho, np.full((3, 3), 5))


T = table(
    {"m1": (90, 50, 99), "m2": (60, 95, 60), "m3": (90, 70, 60), "m4": (85, 94, 80), "m5": (np.nan, 10, 10)},
    {"m1": 75, "m2": 70, "m3": 65, "m4": 88, "m5": 20},
)
POOL = ["m1", "m2", "m3", "m4", "m5"]


def test_soce_takes_the_best_of_each_weak_category_ordered_by_overall():
    s = select_soce(T, POOL, analysis(0.1))
    assert s.models == ["m1", "m2"]  # z is not in L, so m1's 99 on z is no reason; m1 ties m3 on x and wins on overall
    assert s.experts[0].leads == ("x",) and s.experts[1].leads == ("y",)
    assert s.experts[0].scores == {"x": 90.0, "y": 50.0, "z": 99.0}
    assert s.excluded["m3"] == "leads no category of L; ties m1 on 'x' (90)"
    assert "'x': 2 pool models tie at 90 (m1, m3); a tie goes to the best overall score: m1" in s.notes  # said once
    assert s.excluded["m4"] == "leads no category of L; closest on 'y': 94 vs 95 (m2)"
    assert "closest on 'y'" in s.excluded["m5"]  # its missing x is skipped, never read as 0


def test_a_model_leading_several_categories_enters_once():
    t = table({"a": (9, 9, 1), "b": (1, 1, 9)}, {"a": 5, "b": 5})
    s = select_soce(t, ["a", "b"], analysis(0.1))
    assert s.models == ["a"] and s.experts[0].leads == ("x", "y")


def test_keep_best_overall_and_max_experts():
    s = select_soce(T, POOL, analysis(0.1), keep_best_overall=True)
    assert s.models == ["m4", "m1", "m2"]
    assert s.experts[0].reason == "best overall (selection.keep_best_overall)"
    capped = select_soce(T, POOL, analysis(0.1), keep_best_overall=True, max_experts=2)
    assert capped.models == ["m4", "m1"]  # the best overall stays; then m1, better overall than m2
    assert capped.excluded["m2"].startswith("left out by selection.max_experts=2")


def test_pool_limits_the_candidates():
    s = select_soce(T, ["m3", "m4"], analysis(0.1))
    assert s.models == ["m4", "m3"]


def test_empty_weak_set_says_which_tau_would_do():
    with pytest.raises(SoceError) as err:
        select_soce(T, POOL, analysis(0.05))
    assert "no pair of categories has |rho| < tau=0.05" in str(err.value)
    assert "the weakest pair is x and y (|rho|=0.050): any tau above 0.050 gives a non-empty set" in str(err.value)


def test_all_topk_manual():
    assert select_all(T, POOL).models == ["m4", "m1", "m2", "m3", "m5"]
    top = select_topk(T, POOL, 2)
    assert top.models == ["m4", "m1"] and top.excluded["m2"] == "overall rank #3, below the top 2"
    manual = select_manual(T, POOL, ["m5", "m2"])
    assert manual.models == ["m2", "m5"] and manual.excluded["m1"] == "not named in selection.models"
    with pytest.raises(SoceError, match="models names 'm9', which is not in the pool"):
        select_manual(T, POOL, ["m9"])
    with pytest.raises(SoceError, match="k=0"):
        select_topk(T, POOL, 0)


def test_to_dict_has_no_nan():
    t = table({"a": (9, 9, np.nan), "b": (1, 1, 9)}, {"a": math.nan, "b": 5})
    d = select_all(t, ["a", "b"]).to_dict()
    assert d["experts"][1]["overall"] is None and d["experts"][1]["scores"]["z"] is None


TABLE_MODELS = ["xLAM-2-70b-fc-r (FC)", "CoALM-70B", "Hammer (FC)", "Hammer (Prompt)", "watt-tool-70B (FC)"]


def test_pool_names_match_up_to_the_calling_mode_suffix():
    pool = resolve_pool([Candidate("xLAM-2-70b-fc-r", "Salesforce/x"), Candidate("coalm-70b")], TABLE_MODELS, "f.csv")
    assert pool == [Candidate("xLAM-2-70b-fc-r (FC)", "Salesforce/x"), Candidate("CoALM-70B")]
    assert [c.name for c in resolve_pool(None, TABLE_MODELS, "f.csv")] == TABLE_MODELS


@pytest.mark.parametrize(
    "names, message",
    [
        (["watt-tool-7B"], "pool model 'watt-tool-7B' is not in f.csv; closest: 'watt-tool-70B (FC)'"),
        (["Hammer"], "pool model 'Hammer' matches several rows of f.csv: 'Hammer (FC)', 'Hammer (Prompt)'"),
        (["CoALM-70B", "coalm-70b"], "names the same table row twice: CoALM-70B"),
        ([], "the pool is empty"),
    ],
)
def test_pool_errors(names, message):
    with pytest.raises(SoceError) as err:
        resolve_pool([Candidate(n) for n in names], TABLE_MODELS, "f.csv")
    assert message in str(err.value)


def test_missing_scores_are_said_in_the_selection():
    s = select_soce(T, POOL, analysis(0.1))
    assert s.notes == ("'x': 2 pool models tie at 90 (m1, m3); a tie goes to the best overall score: m1",
                       "'x': m1 leads among the 4 pool models with a score; 1 without one (N/A) could not: m5")
    assert s.to_dict()["notes"] == list(s.notes)
    blank = table({"m1": (np.nan, 50, 99), "m2": (np.nan, 95, 60), "m3": (np.nan, 70, 60)}, {"m1": 1, "m2": 2, "m3": 3})
    s = select_soce(blank, ["m1", "m2", "m3"], analysis(0.1))
    assert s.models == ["m2"] and s.notes == ("category 'x' of L has no expert: no pool model has a score on it (all N/A)",)
