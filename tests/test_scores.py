import math

import numpy as np
import pytest

from conftest import BFCL_FIXTURE, write_csv
from soce.errors import SoceError
from soce.scores import Outcome, ScoreTable, read_scores, read_table, write_scores

LEAVES = [
    "Non-Live Simple AST", "Non-Live Multiple AST", "Non-Live Parallel AST", "Non-Live Parallel Multiple AST",
    "Live Simple AST", "Live Multiple AST", "Live Parallel AST", "Live Parallel Multiple AST",
    "Multi Turn Base", "Multi Turn Miss Func", "Multi Turn Miss Param", "Multi Turn Long Context",
    "Relevance Detection", "Irrelevance Detection",
]


def test_bfcl_leaderboard_leaf_categories_percentages_and_missing_cells():
    t = read_table(BFCL_FIXTURE, format="bfcl")
    assert list(t.categories) == LEAVES  # aggregates, metadata, cost and latency are left out
    assert len(t.models) == 11 and t.models[0] == "CoALM-70B"
    assert t.score("CoALM-70B", "Non-Live Simple AST") == 87.49  # '87.49%'
    assert t.overall_of("CoALM-70B") == 86.11  # Overall Acc
    assert math.isnan(t.score("Example-Prompt-7B (Prompt)", "Live Parallel AST"))  # 'N/A'


def test_bfcl_named_categories_may_include_aggregates():
    t = read_table(BFCL_FIXTURE, format="bfcl", categories=["Live Acc", "Multi Turn Acc"])
    assert t.categories == ("Live Acc", "Multi Turn Acc")


def test_plain_csv_first_column_is_the_model_and_overall_is_the_mean(tmp_path):
    p = write_csv(tmp_path / "s.csv", """
        name,a,b,notes
        m1,1,3,good
        m2,2,,fine
    """)
    t = read_table(p)
    assert t.models == ("m1", "m2") and t.categories == ("a", "b")  # the text column is no category
    assert t.overall[0] == 2.0 and math.isnan(t.overall[1])  # a missing score is never a zero


@pytest.mark.parametrize("name", ["overall", "Overall", "average"])
def test_a_column_named_like_the_overall_score_is_the_overall_score(tmp_path, name):
    p = write_csv(tmp_path / "s.csv", f"""
        model,{name},a,b
        m1,0.9,0.1,0.2
        m2,0.8,0.3,0.4
    """)
    t = read_table(p)
    assert t.categories == ("a", "b") and list(t.overall) == [0.9, 0.8]
    write_scores(t, tmp_path / "scores.csv")
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == "model,a,b,overall"  # written once
    assert read_table(p, categories=[name, "a"]).categories == (name, "a")  # unless named a category


def test_duplicate_column_names_are_refused_by_name(tmp_path):
    p = write_csv(tmp_path / "s.csv", """
        model,a,b,a
        m1,1,2,3
    """)
    with pytest.raises(SoceError, match=r"s.csv: duplicate column names: 'a'"):
        read_table(p)


def test_scores_csv_round_trip_with_outcomes(tmp_path):
    values = np.array([[0.5, np.nan], [0.25, 1 / 3]])
    outcomes = (Outcome("m1", "simple-0", "a", True, "f(x=1)"), Outcome("m2", "simple-0", "a", False, "garbage"))
    t = ScoreTable(("m1", "m2"), ("a", "b"), values, np.array([0.1, 0.2]), "x", outcomes)
    write_scores(t, tmp_path / "scores.csv")
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == "model,a,b,overall"
    back = read_scores(tmp_path / "scores.csv")
    assert back.models == t.models and back.categories == t.categories
    np.testing.assert_array_equal(back.values, values)  # exact: floats are written with repr
    np.testing.assert_array_equal(back.overall, t.overall)
    assert back.outcomes == outcomes


@pytest.mark.parametrize(
    "text, kwargs, message",
    [
        ("model,a\nm1,1\nm1,2", {}, "duplicate model names in column 'model': m1"),
        ("model,notes\nm1,x\nm2,y", {}, "no numeric category columns"),
        ("model,a,b\nm1,1,2\nm2,x,3", {}, "column 'a', row 3 (m2): 'x' is not a number"),
        ("model,a\nm1,1", {"categories": ["a", "bb"]}, "category 'bb' (benchmark.categories) is not a column"),
        ("model,a\nm1,1", {"model_column": "Model"}, "no column 'Model' (benchmark.model_column); closest: 'model'"),
        ("model,a\n,1", {}, "row 2 has an empty model name"),
        ("model\n", {}, "needs a header and at least one row"),
    ],
)
def test_bad_tables_name_the_file_and_column(tmp_path, text, kwargs, message):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(SoceError) as err:
        read_table(p, **kwargs)
    assert message in str(err.value) and str(p) in str(err.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(SoceError, match=r"score file .*nope.csv: not found"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(SoceError, match=r"cannot be read"):
        read_table(tmp_path)  # a directory
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(SoceError, match=r"bin.csv"):
        read_table(binary)


# --- issue 36: a BFCL table's columns are the leaderboard's, and its overall score is never silently missing ---
@pytest.mark.parametrize("renamed, as_", [("Overall Acc", "Overall Accuracy"), ("Live Acc", "Live Accuracy"),
                                          ("Relevance Detection", "Relevance")])
def test_a_bfcl_column_that_is_no_leaderboard_column_is_refused_with_the_known_names(tmp_path, renamed, as_):
    path = tmp_path / "data_overall.csv"
    path.write_text(BFCL_FIXTURE.read_text().replace(renamed, as_, 1))
    with pytest.raises(SoceError) as err:
        read_table(path, format="bfcl")
    message = str(err.value)
    if renamed == "Overall Acc":
        assert "no 'Overall Acc' column" in message and "benchmark.overall_column" in message
    else:
        assert f"column {as_!r} is not a column of the BFCL v3 leaderboard" in message
        assert "Live Simple AST" in message and "Multi Turn Acc" in message  # the known names
        assert f"benchmark.exclude=['{as_}']" in message
    read_table(path, format="bfcl", exclude=[as_], **({"overall_column": as_} if renamed == "Overall Acc" else {}))


def test_a_missing_overall_acc_is_named_and_ranked_after_the_models_that_have_one(tmp_path, caplog):
    from soce.selection import select_topk

    path = tmp_path / "data_overall.csv"
    lines = BFCL_FIXTURE.read_text().splitlines()
    lines[1] = lines[1].replace("86.11%", "N/A", 1)  # the leaderboard's first model, CoALM-70B
    path.write_text("\n".join(lines) + "\n")
    t = read_table(path, format="bfcl")
    assert "CoALM-70B has no 'Overall Acc'" in caplog.text and "cannot be ranked by overall score" in caplog.text
    s = select_topk(t, list(t.models), len(t.models))
    assert s.experts[-1].model == "CoALM-70B" and s.experts[-1].reason.endswith("(no overall score: ranked after those with one)")
