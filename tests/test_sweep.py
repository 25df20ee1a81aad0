"""Weight spaces, search strategies, the crash-safe store, and the sweep on real tiny models."""

import json
import re
import math

import pytest

from soce.search import OptunaSearch
from soce.errors import SoceError
from soce.search import greedy_soup, grid_points, run_search
from soce.store import SweepStore
from soce.weights import dirichlet, simplex_grid
from conftest import MICRO_STUDY, sweep_record


@pytest.mark.parametrize("n, count", [(2, 9), (3, 36), (4, 84), (5, 126)])
def test_the_papers_grid_has_every_point(n, count):
    points = simplex_grid(n)
    assert len(points) == count and len(set(points)) == count
    for p in points:
        assert math.isclose(sum(p), 1.0) and all(0.1 - 1e-12 <= w <= 0.9 + 1e-12 for w in p)
        assert all(math.isclose(w * 10, round(w * 10)) for w in p)


def test_grid_options_and_errors():
    assert len(simplex_grid(3, 0.0, 1.0, 0.25)) == 15
    assert len(grid_points(3, 0.1, 0.9, 0.1, include_uniform=True)) == 37  # the grid, plus 1/3 each
    assert len(grid_points(2, 0.1, 0.9, 0.1, include_uniform=True)) == 9  # 0.5/0.5 is already there
    assert len(grid_points(4, 0.1, 0.9, 0.1, include_uniform=True, budget=10)) == 10
    with pytest.raises(SoceError, match="lo=0.15 is not a multiple of step=0.1"):
        simplex_grid(3, lo=0.15)


def test_dirichlet_points_are_on_the_simplex_and_seeded():
    points = dirichlet(4, 20, seed=3)
    assert all(math.isclose(sum(p), 1.0) and min(p) >= 0 for p in points)
    assert points == dirichlet(4, 20, seed=3) != dirichlet(4, 20, seed=4)


def test_greedy_soup_keeps_only_what_helps():
    value = {(0,): 0.5, (0, 1): 0.6, (0, 1, 2): 0.55, (0, 1, 3): 0.7}

    def evaluate(w):
        return value[tuple(i for i, x in enumerate(w) if x > 0)]

    assert greedy_soup([0, 1, 2, 3], 4, evaluate) == [0, 1, 3]


def test_optuna_search_runs_its_budget():
    seen = []
    run_search(OptunaSearch(budget=6, seed=0), 3, lambda w: seen.append(w) or -abs(w[0] - 0.5), [0, 1, 2])
    assert len(seen) == 6 and all(math.isclose(sum(w), 1.0) for w in seen)


def test_the_store_survives_a_kill_mid_write(tmp_path):
    path = tmp_path / "sweep.jsonl"
    store = SweepStore(tmp_path)
    for w in ([0.5, 0.5], [0.1, 0.9]):
        store.append(_point(w, w[0]))
    with path.open("a") as f:
        f.write('{"kind": "sweep", "experts": ["a", "b"], "weights": [0.2')  # the point in flight
    store.close()
    again = SweepStore(tmp_path)
    assert len(again) == 2 and again.get(["a", "b"], (0.1, 0.9), "dev")["objective"] == 0.1
    assert again.get(["a", "b"], [0.1, 0.9], "test") is None
    again.append(_point([0.3, 0.7], 0.3))
    assert [json.loads(line)["weights"] for line in path.read_text().splitlines()] == [[0.5, 0.5], [0.1, 0.9], [0.3, 0.7]]


def _point(w, objective=0.0):
    return sweep_record(w, objective)


def test_shards_share_a_store_directory_and_each_file_has_one_writer(tmp_path):
    s0, s1 = SweepStore(tmp_path, 0, 2), SweepStore(tmp_path, 1, 2)
    s0.append(_point([0.5, 0.5]))
    s1.append(_point([0.1, 0.9]))
    assert {p.name for p in tmp_path.iterdir()} == {"sweep.shard-0-of-2.jsonl", "sweep.shard-1-of-2.jsonl"}
    with pytest.raises(SoceError, match="sweep.shard-1-of-2.jsonl is being written by another process"):
        SweepStore(tmp_path, 1, 2)
    with pytest.raises(SoceError, match="num_shards=3, but .* split 2 ways .*Use sweep.num_shards=2"):
        SweepStore(tmp_path, 0, 3)
    s0.reload()
    assert len(s0) == 2  # shard 1's point, read back
    s0.close(), s1.close()
    collect = SweepStore(tmp_path)  # the collect step: every shard's points, its own file for what is missing
    assert len(collect) == 2 and collect.path.name == "sweep.jsonl"


# --- the sweep on the micro family -------------------------------------------------------------
STUDY = [*MICRO_STUDY, "search.budget=6"]


def test_sweep_resumes_and_the_soup_stage_reports_four_rows(study, zoo_cache, tmp_path):
    run = tmp_path / "run"
    args = [*STUDY, f"pool.cache_dir={zoo_cache}"]
    study(*args, "stage=sweep")
    lines = (run / "sweep.jsonl").read_text().splitlines()
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert len(first["experts"]) == len(first["weights"]) == 3 and set(first["scores"]) >= {"json", "parallel"}
    assert first["weights"] == list(simplex_grid(3)[0]) and first["merge_s"] >= 0 and first["eval_s"] > 0

    # A killed sweep: drop the last two points and tear the last line; the re-run evaluates just those.
    (run / "sweep.jsonl").write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])
    r = study(*args, "stage=sweep")
    assert "6 points on dev (4 already in the store, 2 from the soups of earlier runs" in r.log  # (the first run kept them)
    resumed = [json.loads(line) for line in (run / "sweep.jsonl").read_text().splitlines()]
    assert [p["weights"] for p in resumed] == [json.loads(line)["weights"] for line in lines]
    assert [p["scores"] for p in resumed] == [json.loads(line)["scores"] for line in lines]  # deterministic

    r = study(*args, "stage=soup")
    results = json.loads((run / "results.json").read_text())
    names = [row["name"] for row in results["rows"]]
    assert names == ["base model", "best single candidate", "uniform soup, all candidates", "uniform soup, top-3 experts", "searched soup, top-3 experts (grid search)"]
    assert results["protocol"] == "weights chosen on dev, reported on test"
    best = max(resumed, key=lambda p: p["objective"])
    assert results["rows"][-1]["weights"] == best["weights"] and results["rows"][-1]["dev"]["objective"] == best["objective"]
    assert "searched soup, top-3 experts (grid search)" in r.log and (run / "soup" / "mergekit.yaml").exists()
    assert results["rows"][0]["models"] == ["base"] and {"dev", "test"} <= set(results["rows"][0])  # the family's base model
    assert re.search(r"On test, the searched soup, top-3 experts \(grid search\) scores [\d.]+: (better than|worse than|not "
                     r"distinguishable from) the best single candidate \([+-][\d.]+, 95% CI \[[+-][\d.]+, [+-][\d.]+\]\); .* "
                     r"Its weights were chosen on dev\.", r.log)
    versus = results["rows"][-1]["test"]["versus"]  # every other row, then each expert
    assert [v["role"] for v in versus] == ["base", "single", "uniform_all", "uniform_experts", "expert", "expert", "expert"]

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "soup")


def test_the_papers_protocol_is_labelled(study, zoo_cache, tmp_path):
    study(*STUDY, "search.budget=2", "search.select_on=test", f"pool.cache_dir={zoo_cache}")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["protocol"].startswith("weights chosen on TEST")
    searched = [json.loads(line) for line in (tmp_path / "run" / "sweep.jsonl").read_text().splitlines()][:2]
    assert [p["split"] for p in searched] == ["test", "test"]  # the search ran on test; the rows add dev figures after


def test_a_table_benchmark_stops_after_selection_and_its_report(study, tmp_path):
    from conftest import BFCL_FIXTURE

    r = study("benchmark=bfcl_leaderboard", f"benchmark.path={BFCL_FIXTURE}", "pool=all")
    assert "analysis, selection and report only" in r.log
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Weak set and experts" in report and "no soups were evaluated" in report and "## Shapley" not in report
    with pytest.raises(SoceError, match="only reads a score table"):
        study("benchmark=bfcl_leaderboard", f"benchmark.path={BFCL_FIXTURE}", "pool=all", "stage=sweep")


def test_every_point_the_tables_and_the_soup_are_tracked(study, zoo_cache):
    r = study(*STUDY, "search.budget=3", f"pool.cache_dir={zoo_cache}")
    t = r.tracker
    assert {"scores", "correlation", "entry_tau", "selection", "excluded", "sweep", "baselines", "report/shapley",
            "report/win_rates", "report/top_points"} <= set(t.tables)
    assert {"correlation", "entry_tau", "report/landscape_chart", "report/shapley_chart", "report/consistency_chart"} <= set(t.images)
    columns, rows = t.tables["sweep"]
    experts = [e["model"] for e in json.loads((r.dir / "selection.json").read_text())["experts"]]
    assert columns[:4] == [*experts, "objective"]
    assert len(rows) == 3 and all(math.isclose(sum(row[:3]), 1.0) for row in rows)
    points = [m for m in t.metrics if "sweep/dev/objective" in m]  # the 3 searched (the uniform soup among them)
    assert len(points) == 3 and all(set(m) >= {"sweep/merge_s", "sweep/eval_s", "sweep/dev/json"} for m in points)
    assert [m["sweep/dev/objective"] for m in points[:3]] == [row[3] for row in rows]
    assert t.references["soup"] == r.dir / "soup"
    assert t.summary["soup/dev"] == json.loads((r.dir / "results.json").read_text())["rows"][-1]["dev"]["objective"]


@pytest.mark.parametrize("search, points", [("uniform", 1), ("greedy", None), ("random", 3), ("optuna", 3)])
def test_every_search_strategy_runs_the_sweep(study, zoo_cache, tmp_path, search, points):
    args = [a for a in STUDY if a != "search.budget=6"] + [f"search={search}", f"pool.cache_dir={zoo_cache}"]
    if points and search != "uniform":
        args.append(f"search.budget={points}")
    study(*args, "stage=sweep")
    records = [json.loads(line) for line in (tmp_path / "run" / "sweep.jsonl").read_text().splitlines()]
    if points:
        assert len(records) == points
    else:  # greedy: the best expert alone, then one trial per other expert
        assert len(records) == 3 and records[0]["weights"].count(0.0) == 2
    assert all(math.isclose(sum(p["weights"]), 1.0) for p in records)


def _row(role, name, test, models=("a", "b")):
    return {"role": role, "name": name, "models": list(models), "dev": {"objective": test}, "test": {"objective": test}}


def _versus(against, role, low, high):
    return {"against": against, "role": role, "estimate": (low + high) / 2, "ci": [low, high], "only_soup": 3, "only_other": 1,
            "p": 0.625}


@pytest.mark.parametrize("interval, verdict", [
    ((0.01, 0.09), "better than the best single candidate (+0.0500, 95% CI [+0.0100, +0.0900])"),
    ((-0.02, 0.06), "not distinguishable from the best single candidate (+0.0200, 95% CI [-0.0200, +0.0600])"),
    ((-0.09, -0.01), "worse than the best single candidate (-0.0500, 95% CI [-0.0900, -0.0100])"),
])
def test_every_claim_comes_from_its_interval_by_one_rule(interval, verdict):
    """The log's summary, report.md and the card say better or worse only where the paired
    interval is clear of 0, and the summary says what the sentences below it say."""
    from soce.significance import supported
    from soce.stages.present import results_summary

    rows = [_row("base", "base model", 0.1, ["base"]), _row("single", "best single candidate", 0.75, ["m1"]),
            _row("uniform_all", "uniform soup, all candidates", 0.6), _row("uniform_experts", "uniform soup, SoCE experts", 0.7),
            _row("searched", "SoCE (grid search)", 0.8)]
    rows[-1]["test"]["versus"] = [_versus("base model", "base", 0.6, 0.8), _versus("best single candidate", "single", *interval),
                                  _versus("uniform soup, all candidates", "uniform_all", -0.01, 0.01),
                                  _versus("uniform soup, SoCE experts", "uniform_experts", 0.01, 0.03), _versus("a", "expert", -0.1, 0.2)]
    results = {"rows": rows, "select_on": "dev", "statistics": {"confidence": 0.95},
               "candidates": {"test": {"m1": 0.75, "m2": 0.77}}}
    summary = results_summary(results)
    assert summary == (f"On test, the SoCE (grid search) scores 0.8000: {verdict}; not distinguishable from the uniform soup, all "
                       "candidates (+0.0000, 95% CI [-0.0100, +0.0100]); better than the uniform soup, SoCE experts (+0.0200, "
                       "95% CI [+0.0100, +0.0300]). Its weights were chosen on dev.")
    sentences = supported(results, "test")
    assert sentences[1] == (f"The SoCE (grid search) is {verdict}: it alone solves 3 examples, the best single candidate alone 1 "
                            "(McNemar p = 0.625, no significant difference).")
    assert sentences[4].startswith("The SoCE (grid search) is not distinguishable from the expert a (+0.0500")
    assert sentences[-1] == ("On test the best candidate is m2 (0.7700), not m1 (0.7500), the best on dev and the best single "
                             "candidate above: the test scores were not used for any choice.")


def test_without_intervals_the_summary_gives_point_estimates_as_such():
    from soce.stages.present import results_summary

    rows = [_row("single", "best single candidate", 0.75, ["m1"]), _row("uniform_all", "uniform soup, all candidates", 0.6),
            _row("uniform_experts", "uniform soup, SoCE experts", 0.7), _row("searched", "SoCE (grid search)", 0.8)]
    text = results_summary({"rows": rows, "select_on": "dev"})
    assert text == ("On test, the SoCE (grid search) scores 0.8000 (+0.0500 against the best single candidate (m1), +0.2000 "
                    "against the uniform soup, all candidates, +0.1000 against the uniform soup, SoCE experts): point estimates "
                    "only, without per-example outcomes there are no intervals to say whether any difference is more than "
                    "noise. Its weights were chosen on dev.")
    assert "beats" not in text and "better" not in text


def test_a_one_expert_result_says_its_soups_are_the_model_itself():
    from soce.stages.present import results_summary

    rows = [_row("single", "best single candidate", 0.75, ["m1"]), _row("uniform_all", "uniform soup, all candidates", 0.6),
            _row("uniform_experts", "uniform soup, SoCE experts", 0.75, ["m1"]), _row("searched", "SoCE (grid search)", 0.75, ["m1"])]
    assert results_summary({"rows": rows, "select_on": "dev"}) == (
        "On test, the SoCE (grid search) scores 0.7500: the selection has one expert, m1, so its soups are that model itself "
        "(+0.0000 against the best single candidate (m1), +0.1500 against the uniform soup, all candidates).")


@pytest.mark.parametrize("selection, experts, searched", [
    ([], "SoCE experts", "SoCE"),
    (["selection=topk", "selection.k=2"], "top-2 experts", "searched soup, top-2 experts"),
    (["selection=all"], "all candidates (selection=all)", "searched soup, all candidates (selection=all)"),
    (["selection=manual", "selection.models=[a]"], "chosen experts", "searched soup, chosen experts"),
])
def test_the_baseline_rows_are_named_by_the_selection_that_chose_the_experts(selection, experts, searched):
    from omegaconf import OmegaConf

    from conftest import compose_cfg

    chosen = OmegaConf.to_object(compose_cfg(selection).selection)
    assert (chosen.experts_label, chosen.searched_label) == (experts, searched)


def test_progress_lines_without_a_terminal(caplog, monkeypatch):
    """The first line once the step has run `first` seconds, the rate measured from the first item
    on (the start-up before it is no guide), then one every `every` seconds, then the end."""
    from soce import progress

    clock = iter([0.0, 2.0, 3.0, 6.0, 7.0, 50.0, 51.0])  # start, then one reading per update, then close
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level("INFO", logger="soce.progress"):
        with progress.Progress(10, "zoo x", "step", first=5, every=30, terminal=False) as bar:
            for _ in range(5):
                bar.update()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["zoo x: 3/10 steps in 6 s (2 s/step, about 14 s left)",  # 2 s to the first step, then 2 in 4 s
                     "zoo x: 5/10 steps in 50 s (12 s/step, about 60 s left)",
                     "zoo x: done, 5/10 steps in 51 s (12.3 s/step, about 61 s left)"]


def test_progress_says_stopped_when_the_loop_ends_early_and_bytes_are_a_symbol(caplog, monkeypatch):
    """An exception (Ctrl-C, SIGTERM, an error) ends the bar as stopped, not done; a scaled unit
    such as bytes is never pluralised (1.48M/1.48M B, not Bs)."""
    from soce import progress

    clock = iter([0.0, 1.0, 2.0, 3.0] + [0.0, 1.0, 2.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level("INFO", logger="soce.progress"):
        with pytest.raises(KeyboardInterrupt):
            with progress.Progress(37, "sweep (grid)", "point", first=5, terminal=False) as bar:
                bar.update()
                bar.update()
                raise KeyboardInterrupt
        with progress.Progress(1_480_000, "merge", "B", first=5, terminal=False, unit_scale=True) as bar:
            bar.update(1_480_000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("sweep (grid): stopped, 2/37 points in 3 s")
    assert lines[1].startswith("merge: done, 1.48M/1.48M B in 2 s")


def test_progress_counts_what_the_store_held_apart_from_what_was_evaluated(caplog, monkeypatch):
    from soce import progress

    clock = iter([0.0, 1.0, 1.0, 8.0, 9.0, 10.0] + [0.0, 0.0, 0.0])  # start, 4 updates, close; then the second bar
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level("INFO", logger="soce.progress"):
        with progress.Progress(4, "sweep (grid)", "point", first=5, terminal=False) as bar:
            for stored in (True, True, False, False):
                bar.update(stored=stored)
        with progress.Progress(1, "sweep (uniform)", "point", terminal=False) as bar:
            bar.update(stored=True)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-2] == "sweep (grid): done, 4/4 points in 10 s (2 found in the store, 2 s/point)"  # the rate of the 2 evaluated
    assert lines[-1] == "sweep (uniform): done, 1/1 point, all found in the store"


@pytest.mark.parametrize("n, budget", [(3, 1), (3, 3), (3, 36), (2, 3), (2, 9)])
def test_a_budget_keeps_the_uniform_point(n, budget):
    """Issue 36: search.budget cut the grid before the uniform point, so the searched soup could
    score below the experts' uniform soup printed beside it."""
    from soce.search import grid_points
    from soce.weights import close, uniform

    points = grid_points(n, 0.1, 0.9, 0.1, True, budget)
    assert len(points) == budget and sum(close(p, uniform(n)) for p in points) == 1
    others = [p for p in points if not close(p, uniform(n))]
    assert others == [p for p in grid_points(n, 0.1, 0.9, 0.1, True)[:budget] if not close(p, uniform(n))][: len(others)]
    assert not any(close(p, uniform(3)) for p in grid_points(3, 0.1, 0.9, 0.1, False, 3))  # only where asked for


# --- issue 37: a rerun pays for nothing twice --------------------------------------------------------
def test_a_second_run_in_another_directory_evaluates_no_soup_again_and_says_so(study, zoo_cache, tmp_path):
    args = [*STUDY, "search.budget=3", f"pool.cache_dir={zoo_cache}", "stage=soup", "report.line_points=0"]
    first = study(*args, run_dir=tmp_path / "first")
    assert "from the soups of earlier runs" not in first.log
    again = study(*args, run_dir=tmp_path / "again")  # another run directory, the same question
    assert f"3 points on dev (0 already in the store, 3 from the soups of earlier runs in {tmp_path / 'soups'})" in again.log
    found = re.search(r"soup: (\d+) soups found in the soups of earlier runs", again.log)
    assert found and int(found.group(1)) >= 3  # the uniform soups on test, of all candidates on dev: none evaluated again
    results = [json.loads((tmp_path / d / "results.json").read_text())["rows"] for d in ("first", "again")]
    assert results[0] == results[1]
    kept = [json.loads(line) for line in (tmp_path / "again" / "sweep.jsonl").read_text().splitlines()]
    assert len(kept) == len((tmp_path / "first" / "sweep.jsonl").read_text().splitlines())  # the run's own record, whole


@pytest.mark.parametrize("change", ["benchmark.seed=1", "benchmark.cache=false"])
def test_the_soups_of_earlier_runs_never_answer_another_question(study, zoo_cache, tmp_path, change):
    args = [*STUDY, "search.budget=2", f"pool.cache_dir={zoo_cache}", "stage=sweep"]
    study(*args, run_dir=tmp_path / "first")
    other = study(*args, change, run_dir=tmp_path / "other")
    assert "from the soups of earlier runs" not in other.log and "2 points on dev (0 already in the store)" in other.log


def test_a_soup_of_changed_model_files_or_another_engine_is_not_found_again(tmp_path):
    from soce.store import SoupCache

    question = {"benchmark": {"name": "toy_fc"}, "evaluator": "e", "models": {"a": "fp-a", "b": "fp-b"}}
    record = sweep_record([0.5, 0.5], 0.7, question=question)
    SoupCache(tmp_path, question).add(record)
    assert SoupCache(tmp_path, question).get([0.5, 0.5], "dev")["scores"] == {"x": 0.7}
    for other in ({**question, "models": {"a": "fp-a", "b": "fp-b2"}}, {**question, "engine": "vllm"}):
        assert SoupCache(tmp_path, other).get([0.5, 0.5], "dev") is None
    with (tmp_path / SoupCache(tmp_path, question).path.name).open("a") as f:  # a line edited by hand: never trusted
        f.write(json.dumps({**record, "scores": {"x": 1.0}, "digest": "0" * 64, "weights": [0.4, 0.6]}) + "\n")
    assert SoupCache(tmp_path, question).get([0.4, 0.6], "dev") is None
