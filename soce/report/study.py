"""stage=report: report.md in the run directory, from what the earlier stages left there.

Works on a finished run and on an interrupted one (it reports the sweep points stored so far
and says which stages have not run); the coalition soups Shapley values need are evaluated
once and kept in the sweep store, so a second report costs no evaluation.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from soce import stages
from soce.report.consistency import Consistency, consistency
from soce.report.plots import plot_consistency, plot_shapley, plot_ternary
from soce.report.shapley import ShapleyResult, shapley
from soce.report.winrate import WinRates, win_rates
from soce.scores import ScoreTable
from soce.sweep import Souper, aggregate, solved_by_id
from soce.weights import uniform

log = logging.getLogger("soce")


def report(run: stages.Run) -> Path:
    cfg = run.cfg
    experts = stages.current_selection(run)
    md = [f"# soce study: {cfg.study}", "", f"Run directory: `{run.dir}`", "", *_config_section(cfg), *_selection_section(run)]
    if cfg.benchmark.kind == "table":
        md += ["", "_The benchmark is a score table: no soups were evaluated, so the report ends with the selection._"]
    else:
        md += _soup_sections(run, experts)
    path = run.path("report.md")
    path.write_text("\n".join(md) + "\n")
    log.info("report: %s", path)
    return path


# --- the study and the selection --------------------------------------------------------------
def _config_section(cfg) -> list[str]:
    s = cfg.search
    rows = [("benchmark", cfg.benchmark.name), ("pool", cfg.pool.name), ("selection", _options(cfg.selection)),
            ("search", _options(s)), ("objective", f"{s.objective} over all categories"),
            ("weights chosen on", s.select_on), ("analysis", f"{cfg.analysis.method.value}, population {cfg.analysis.population.value}")]
    return ["## The study", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]


def _options(node) -> str:
    d = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    name = d.pop("name")
    return name + (" (" + ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("objective", "select_on")) + ")" if d else "")


def _selection_section(run: stages.Run) -> list[str]:
    analysis = json.loads(run.path("analysis.json").read_text())
    selection = json.loads(run.path("selection.json").read_text())
    weak = analysis["weak_set"]
    md = ["## Weak set and experts", "",
          f"{analysis['method'].capitalize()} correlation over {len(analysis['models'])} models; at tau={analysis['tau']:g} "
          f"the weak set L holds {len(weak)} of {len(analysis['categories'])} categories: {', '.join(weak) or '(none)'}.", "",
          "![category correlation](correlation.png)", "", "| expert | overall | why |", "|---|---|---|"]
    md += [f"| {e['model']} | {_num(e['overall'])} | {e['reason']} |" for e in selection["experts"]]
    if selection.get("excluded"):
        md += ["", "Left out: " + "; ".join(f"{m} ({why})" for m, why in selection["excluded"].items()) + "."]
    return md + [""]


# --- soups: baselines, landscape, Shapley, consistency, win rates ------------------------------
def _soup_sections(run: stages.Run, experts: list[str]) -> list[str]:
    cfg = run.cfg
    split = cfg.search.select_on
    evaluator, candidates = stages.evaluated_pool(run)
    souper = stages.make_souper(run, [candidates[n] for n in experts], evaluator, kind="shapley")
    points = stages.sweep_points(run.store, experts, split)
    own = stages.candidate_scores(run)  # split -> the candidates' own scores
    md = _baselines_section(run, points)
    md += _landscape_section(run, experts, points)
    md += _shapley_section(run, souper, candidates, own[split])
    md += _consistency_section(run, points, evaluator.categories, own[split])
    md += _win_rate_section(run, souper, points, own.get("test"))
    return md


def _baselines_section(run: stages.Run, points: list[dict]) -> list[str]:
    path = run.path("results.json")
    md = ["## Baselines", ""]
    if not path.exists():
        state = f"{len(points)} sweep points stored so far" if points else "no sweep points stored yet"
        return md + [f"_The soup stage has not run in this directory ({state}): no baseline table._", ""]
    results = json.loads(path.read_text())
    obj = results["objective"]
    md += [f"{obj} over all categories; {results['protocol']}.", "", f"| | dev {obj} | test {obj} | weights |", "|---|---|---|---|"]
    for r in results["rows"]:
        weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(r["models"], r["weights"]) if w > 0)
        test = f"{r['test']['objective']:.4f}" if "test" in r else "n/a"
        md.append(f"| {r['name']} | {r['dev']['objective']:.4f} | {test} | {weights} |")
    return md + [""]


def _landscape_section(run: stages.Run, experts: list[str], points: list[dict], top: int | None = None) -> list[str]:
    top = top or run.cfg.report.top_points
    split, obj = run.cfg.search.select_on, run.cfg.search.objective
    md = ["## Weight landscape", ""]
    if not points:
        return md + ["_No sweep points stored yet._", ""]
    if len(experts) == 3:
        plot_ternary(experts, [p["weights"] for p in points], [p["objective"] for p in points], f"{split} {obj}",
                     run.path("landscape.png"))
        md += [f"The {len(points)} soups of the sweep on the weight simplex (colour: {split} {obj}).", "",
               "![weight landscape](landscape.png)", ""]
        run.tracker.log_image("report/landscape_chart", run.path("landscape.png"))
    best = sorted(points, key=lambda p: -p["objective"])[:top]
    md += [f"The best {len(best)} of {len(points)} points on {split}:", "",
           "| " + " | ".join(experts) + f" | {split} {obj} |", "|" + "---|" * (len(experts) + 1)]
    md += ["| " + " | ".join(f"{w:.2f}" for w in p["weights"]) + f" | {p['objective']:.4f} |" for p in best]
    run.tracker.log_table("report/top_points", [*experts, f"{split} {obj}"], [[*p["weights"], p["objective"]] for p in best])
    return md + [""]


def shapley_of(souper: Souper, own_scores: dict[str, float], split: str, method: str, max_exact: int, samples: int,
               seed: int, value: str = "uniform", search=None) -> ShapleyResult:
    """Shapley values of `souper`'s models; a coalition's value is its soup's objective on `split`
    (uniform weights, or the best of `search` over its members). A single model's value is its
    own score (`own_scores`): a soup of one is the model itself. The empty coalition is worth 0."""
    from soce.search import run_search

    n = len(souper.names)

    def embed(members: Sequence[int], weights: Sequence[float]) -> tuple[float, ...]:
        full = [0.0] * n
        for i, w in zip(members, weights):
            full[i] = float(w)
        return tuple(full)

    def v(coalition: frozenset[int]) -> float:
        members = sorted(coalition)
        if len(members) == 1:
            return own_scores[souper.names[members[0]]]
        if value == "uniform":
            return souper.evaluate(embed(members, uniform(len(members))), split)["objective"]
        best = -math.inf

        def evaluate(weights):
            nonlocal best
            score = souper.evaluate(embed(members, weights), split)["objective"]
            best = max(best, score)
            return score

        order = sorted(range(len(members)), key=lambda j: -own_scores[souper.names[members[j]]])
        run_search(search, len(members), evaluate, order)
        return best

    return shapley(n, v, method, max_exact, samples, seed)


def _shapley_section(run: stages.Run, experts_souper: Souper, candidates: dict, table: ScoreTable) -> list[str]:
    cfg, r = run.cfg, run.cfg.report.shapley
    split, obj = cfg.search.select_on, cfg.search.objective
    if r.players == "candidates" and list(candidates) != experts_souper.names:
        souper = stages.make_souper(run, list(candidates.values()), experts_souper.evaluator, kind="shapley")
    else:
        souper = experts_souper
    players = souper.names
    own = {m: aggregate(table.row(m), obj) for m in players}
    before = len(souper.store)
    log.info("report: Shapley values of %d %s (coalition value: %s soup, %s on %s)", len(players), r.players, r.value, obj, split)
    result = shapley_of(souper, own, split, r.method, r.max_exact, r.samples, r.seed, r.value, cfg.search)
    evaluated = len(souper.store) - before
    what = "uniform soup" if r.value == "uniform" else f"best soup of a {cfg.search.name} search over its members"
    plot_shapley(players, result, f"Shapley values of the {r.players}: coalition value = {split} {obj} of its {what}", run.path("shapley.png"))
    how = ("Exact, over all coalitions" if result.errors is None
           else f"Monte Carlo over {result.samples} random orders; the error is one standard error")
    md = ["## Shapley values", "",
          f"Players: the {len(players)} {r.players}. The value of a coalition is the {split} {obj} of its {what}; "
          f"a single model's is its own score, the empty coalition's 0. {how}. "
          f"{result.coalitions} coalitions valued ({evaluated} soups evaluated for this report, the rest from the store). "
          f"The values sum to v(all) - v(empty) = {sum(result.values):.4f}.", "", "![Shapley values](shapley.png)", "",
          "| model | Shapley value |" + (" std. error |" if result.errors else ""), "|---|---|" + ("---|" if result.errors else "")]
    for i in sorted(range(len(players)), key=lambda i: -result.values[i]):
        md.append(f"| {players[i]} | {result.values[i]:+.4f} |" + (f" {result.errors[i]:.4f} |" if result.errors else ""))
    run.tracker.log_table("report/shapley", ["model", "shapley", "std_error"],
                          [[p, result.values[i], None if result.errors is None else result.errors[i]] for i, p in enumerate(players)])
    run.tracker.log_image("report/shapley_chart", run.path("shapley.png"))
    return md + [""]


def _consistency_section(run: stages.Run, points: list[dict], categories: Sequence[str], table: ScoreTable) -> list[str]:
    import numpy as np

    md = ["## Consistency across categories", ""]
    if len(points) < 3:
        return md + [f"_{len(points)} sweep points stored: at least 3 soups are needed for a correlation._", ""]
    soups = np.array([[p["scores"][c] for c in categories] for p in points], dtype=float)
    c: Consistency = consistency(tuple(categories), table.values, soups, run.cfg.analysis.method.value)
    plot_consistency(c, run.path("consistency.png"))
    md += [f"Correlation between categories over the {c.n_candidates} candidates and over the {c.n_soups} soups of the sweep "
           f"({run.cfg.search.select_on} split). Mean off-diagonal correlation: candidates {c.mean_candidates:.3f}, "
           f"soups {c.mean_soups:.3f}.", "", "![consistency](consistency.png)", ""]
    run.tracker.log_summary({"report/consistency_candidates": c.mean_candidates, "report/consistency_soups": c.mean_soups})
    run.tracker.log_image("report/consistency_chart", run.path("consistency.png"))
    return md


def _win_rate_section(run: stages.Run, souper: Souper, points: list[dict], test: ScoreTable | None) -> list[str]:
    md = ["## Win rates on test", ""]
    results = run.path("results.json")
    if results.exists():
        weights, which = json.loads(results.read_text())["rows"][-1]["weights"], "the final soup"
    elif points:
        weights, which = max(points, key=lambda p: p["objective"])["weights"], "the best sweep point so far (the soup stage has not run)"
    else:
        return md + ["_No soup yet._", ""]
    if test is None:
        return md + ["_The benchmark has no test split._", ""]
    ingredients = [n for n, w in zip(souper.names, weights) if w > 0]
    outcomes = {m: {} for m in ingredients}
    for o in test.outcomes:
        if o.model in outcomes:
            outcomes[o.model][o.example_id] = o.correct
    if any(not o for o in outcomes.values()):
        return md + ["_The candidates' per-example test outcomes are not stored (outcomes_test.jsonl)._", ""]
    record = souper.evaluate(weights, "test", need_outcomes=True)
    rates: WinRates = win_rates(outcomes, solved_by_id(record["correct"], list(outcomes[ingredients[0]])))
    md += [f"Over the {rates.tasks} test examples, {which} against its {len(ingredients)} ingredients:", "",
           "| | soup solves | of | share |", "|---|---|---|---|"]
    rows = [(f"solved by {m}", s) for m, s in rates.kept.items()]
    rows += [("failed by every ingredient", rates.all_fail), ("failed by exactly one ingredient", rates.one_fails)]
    md += [f"| {name} | {s.solved} | {s.of} | {_pct(s.rate)} |" for name, s in rows]
    run.tracker.log_table("report/win_rates", ["tasks", "soup_solves", "of", "share"], [[n, s.solved, s.of, _na(s.rate)] for n, s in rows])
    return md + [""]


def _num(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}%"


def _na(v: float) -> float | None:
    return None if math.isnan(v) else v
