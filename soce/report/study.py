"""stage=report: report.md in the run directory, from what the earlier stages left there.

Works on a finished run and on an interrupted one (it reports the sweep points stored so far
and says which stages have not run); the coalition soups Shapley values need are evaluated
once and kept in the sweep store, so a second report costs no evaluation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from soce.artifacts import REPORT
from soce.config import CoalitionValue, Players, ShapleyConfig
from soce.progress import Progress, plural
from soce.report.consistency import Consistency, consistency
from soce.merge.vectors import task_vectors
from soce.report.diagnostics import THRESHOLDS, connectivity, prediction
from soce.report.plots import plot_consistency, plot_diagnostics, plot_shapley, plot_ternary
from soce.report.shapley import ShapleyResult, shapley
from soce.report.significance import score_text, supported
from soce.report.winrate import WinRates, win_rates
from soce.scores import ScoreTable
from soce.search import SearchBase, run_search
from soce.objective import aggregate
from soce.sweep import Souper, solved_by_id
from soce.tracking import Tracker
from soce.weights import uniform

log = logging.getLogger("soce")


@dataclass(frozen=True)
class StudyReport:
    """What the report is made of, handed over by the pipeline: the study's settings, the
    artifacts of its run directory, and for an evaluating benchmark the soupers that value
    coalitions (a soup not yet in the store is evaluated and stored)."""

    study: str
    dir: Path
    tracker: Tracker
    config: list[tuple[str, str]]  # (setting, value) rows of "The study"
    analysis: dict  # analysis.json
    selection: dict  # selection.json
    experts: list[str]
    search: SearchBase
    shapley: ShapleyConfig
    top_points: int
    correlation_method: str
    # an evaluating benchmark's (None or empty for a score table):
    categories: Sequence[str] = ()
    souper: Souper | None = None  # the experts' soups
    candidate_souper: Callable[[], Souper] | None = None  # every candidate's soups (players=candidates)
    points: list[dict] = field(default_factory=list)  # the search's points stored so far, objective as asked now
    pieces: int = 0  # search=halving: pieces of points stored (examples subsets), for a sweep without full points yet
    own: dict[str, ScoreTable] = field(default_factory=dict)  # split -> the candidates' own scores
    results: dict | None = None  # results.json, where the soup stage has run
    line_points: int = 0  # soups on the line between each pair of experts (0: none)
    base_dir: str | None = None  # the model the candidates were fine-tuned from, where known
    vector_dirs: dict[str, str] = field(default_factory=dict)  # model -> its directory: the task vectors to compare
    base_score: float | None = None  # its objective on the split weights are chosen on: the empty coalition's value

    @property
    def split(self) -> str:
        return self.search.select_on.value

    @property
    def objective(self) -> str:
        return self.search.objective.value

    def path(self, name: str) -> Path:
        return self.dir / name


def write_report(r: StudyReport) -> Path:
    md = [f"# soce study: {r.study}", "", f"Run directory: `{r.dir}`", "", *_config_section(r), *_selection_section(r)]
    if r.souper is None:
        md += ["", "_The benchmark is a score table: no soups were evaluated, so the report ends with the selection._"]
    else:
        md += _soup_sections(r)
    path = r.path(REPORT)
    path.write_text("\n".join(md) + "\n")
    log.info("report: %s", path)
    return path


# --- the study and the selection --------------------------------------------------------------
def _config_section(r: StudyReport) -> list[str]:
    return ["## The study", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in r.config], ""]


def _selection_section(r: StudyReport) -> list[str]:
    analysis, selection = r.analysis, r.selection
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
def _soup_sections(r: StudyReport) -> list[str]:
    md = _baselines_section(r)
    md += _landscape_section(r)
    md += _shapley_section(r)
    md += _diagnostics_section(r)
    md += _consistency_section(r)
    md += _win_rate_section(r)
    return md


def _baselines_section(r: StudyReport) -> list[str]:
    md = ["## Baselines", ""]
    if r.results is None:
        state = f"{plural(len(r.points), 'sweep point')} stored so far" if r.points else _nothing_stored(r)
        return md + [f"_The soup stage has not run in this directory with these settings ({state}): no baseline table._", ""]
    obj, stats = r.results["objective"], r.results.get("statistics")
    intervals = (f" In brackets, {stats['confidence']:.0%} intervals of a paired bootstrap ({stats['bootstrap']} resamples of "
                 "the examples, within each category)." if stats else "")
    md += [f"{obj} over all categories; {r.results['protocol']}.{intervals}", "",
           f"| | dev {obj} | test {obj} | weights |", "|---|---|---|---|"]
    for row in r.results["rows"]:
        weights = ", ".join(f"{m} {w:.2f}" for m, w in zip(row["models"], row["weights"]) if w > 0)
        md.append(f"| {row['name']} | {score_text(row.get('dev'))} | {score_text(row.get('test'))} | {weights} |")
    split = "test" if "test" in r.results["rows"][-1] else "dev"
    sentences = supported(r.results, split)
    if sentences:
        md += ["", f"What the data supports, on {split}:", ""] + [f"- {s}" for s in sentences]
    return md + [""]


def _landscape_section(r: StudyReport) -> list[str]:
    split, obj, experts, points = r.split, r.objective, r.experts, r.points
    md = ["## Weight landscape", ""]
    if not points:
        nothing = _nothing_stored(r)
        return md + [f"_{nothing[:1].upper()}{nothing[1:]}._", ""]
    if len(experts) == 3:
        alone = [aggregate(r.own[split].row(e), obj) for e in experts] if r.own and split in r.own else None
        plot_ternary(experts, [p["weights"] for p in points], [p["objective"] for p in points], f"{split} {obj}",
                     r.path("landscape.png"), alone)
        md += [f"The {plural(len(points), 'soup')} of the sweep on the weight simplex (colour: {split} {obj}); "
               "each corner's square is that expert alone.", "",
               "![weight landscape](landscape.png)", ""]
        r.tracker.log_image("report/landscape_chart", r.path("landscape.png"))
    best = sorted(points, key=lambda p: -p["objective"])[:r.top_points]
    md += [f"The best {len(best)} of {plural(len(points), 'point')} on {split}:", "",
           "| " + " | ".join(experts) + f" | {split} {obj} |", "|" + "---|" * (len(experts) + 1)]
    md += ["| " + " | ".join(f"{w:.2f}" for w in p["weights"]) + f" | {p['objective']:.4f} |" for p in best]
    r.tracker.log_table("report/top_points", [*experts, f"{split} {obj}"], [[*p["weights"], p["objective"]] for p in best])
    return md + [""]


def _nothing_stored(r: StudyReport) -> str:
    if r.pieces:
        return (f"no point of the {r.search.name} search has been evaluated on every {r.split} example yet "
                f"({plural(r.pieces, 'piece')} of its rungs stored)")
    return "no sweep points stored yet"


def shapley_of(souper: Souper, own_scores: dict[str, float], split: str, config: ShapleyConfig,
               search: SearchBase | None = None, empty: float = 0.0) -> ShapleyResult:
    """Shapley values of `souper`'s models; a coalition's value is its soup's objective on `split`
    (uniform weights, or the best of `search` over its members). A single model's value is its
    own score (`own_scores`): a soup of one is the model itself. The empty coalition is worth
    `empty` (the base model's score, where the pool has one: each value is then a gain over it)."""
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
        if config.value == CoalitionValue.uniform:
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

    return shapley(n, v, config.method.value, config.max_exact, config.samples, config.seed, empty=empty)


def _diagnostics_section(r: StudyReport) -> list[str]:
    """Task vectors (where the base is known) and the score along each pair of experts' line."""
    md = ["## Will souping work? Task vectors and linear mode connectivity", ""]
    experts, split, obj = r.experts, r.split, r.objective
    tv = task_vectors(r.base_dir, r.vector_dirs) if r.base_dir and r.vector_dirs else None
    lines = []
    if r.line_points and len(experts) > 1:
        own = {m: aggregate(r.own[split].row(m), obj) for m in experts}

        def score(weights: tuple[float, ...]) -> float:
            if max(weights) == 1.0:  # an end of the line: the expert itself
                return own[experts[weights.index(1.0)]]
            return r.souper.evaluate(weights, split)["objective"]

        before = len(r.souper.store)
        lines = connectivity(experts, score, r.line_points)
        log.info("report: %d soups on the lines between the experts (%d evaluated now)", len(lines) * (r.line_points - 2),
                 len(r.souper.store) - before)
    if tv is None and not lines:
        return md + ["_No base model is known for this pool (set pool.base) and report.line_points=0: nothing to show._", ""]
    if tv is not None:
        md += _task_vector_table(r, tv)
    else:
        md += ["_No base model is known for this pool (set pool.base): no task vectors._", ""]
    if lines:
        md += [f"Dev {obj} along the line between each pair of experts (t: the second one's weight); the barrier is the "
               "largest drop below the straight line between the ends.", "",
               "| pair | " + " | ".join(f"t={t:g}" for t in lines[0].ts) + " | barrier |",
               "|---|" + "---|" * (len(lines[0].ts) + 1)]
        md += [f"| {c.a} - {c.b} | " + " | ".join(f"{s:.4f}" for s in c.scores) + f" | {c.barrier:.4f} |" for c in lines]
        r.tracker.log_table("report/connectivity", ["a", "b", *[f"t={t:g}" for t in lines[0].ts], "barrier"],
                            [[c.a, c.b, *c.scores, c.barrier] for c in lines])
        md.append("")
    plot_diagnostics(list(tv.models) if tv is not None else experts, None if tv is None else tv.cosines, lines, obj,
                     r.path("diagnostics.png"))
    r.tracker.log_image("report/diagnostics", r.path("diagnostics.png"))
    md += ["![task vectors and lines](diagnostics.png)", ""]
    if len(experts) < 2:
        return md + [f"The selection has {plural(len(experts), 'expert')}: no pair to soup, so no line and no prediction.", ""]
    index = {m: i for i, m in enumerate(tv.models)} if tv is not None else {}
    by_pair = {(c.a, c.b): c for c in lines}
    md += [f"What they predict, pair by pair ({THRESHOLDS}):", ""]
    for i, a in enumerate(experts):
        for b in experts[i + 1:]:
            cosine = float(tv.cosines[index[a], index[b]]) if a in index and b in index else None
            md.append(f"- {a} and {b}: {prediction(cosine, by_pair.get((a, b)))}")
    return md + [""]


def _task_vector_table(r: StudyReport, tv) -> list[str]:
    """The task vectors' norms, and the range of their cosines, with the experts marked."""
    md = [f"Task vectors: each model's parameters minus the base's ({r.base_dir}); experts in bold.", "",
          "| model | norm of the task vector | relative to the base's norm |", "|---|---|---|"]
    md += [f"| {f'**{m}**' if m in r.experts else m} | {n:.4g} | {rel:.4f} |" for m, n, rel in zip(tv.models, tv.norms, tv.relative)]
    pairs = [float(tv.cosines[i, j]) for i in range(len(tv.models)) for j in range(i + 1, len(tv.models))]
    pairs = [c for c in pairs if not math.isnan(c)]
    if pairs:
        md += ["", f"Cosines between the {plural(len(tv.models), 'task vector')}: {min(pairs):.2f} to {max(pairs):.2f} "
               f"(median {float(np.median(pairs)):.2f}); near 0 reads as composable, near 1 as the same move."]
    r.tracker.log_table("report/task_vectors", ["model", "expert", "norm", "relative_norm"],
                        [[m, m in r.experts, n, rel] for m, n, rel in zip(tv.models, tv.norms, tv.relative)])
    r.tracker.log_table("report/task_vector_cosines", ["model", *tv.models],
                        [[m, *map(_na, row)] for m, row in zip(tv.models, tv.cosines)])
    return md + [""]


def _shapley_section(r: StudyReport) -> list[str]:
    c, split, obj = r.shapley, r.split, r.objective
    souper = r.souper
    if c.players == Players.candidates and r.candidate_souper is not None:
        souper = r.candidate_souper()
    players = souper.names
    own = {m: aggregate(r.own[split].row(m), obj) for m in players}
    before = len(souper.store)
    log.info("report: Shapley values of %s (coalition value: %s soup, %s on %s)", plural(len(players), c.players.value[:-1]), c.value, obj, split)
    n = len(players)
    exact = c.method.value == "exact" or (c.method.value == "auto" and n <= c.max_exact)
    # every coalition of two or more is a soup (known ahead only for exact values of uniform soups)
    total = 2 ** n - n - 1 if exact and c.value == CoalitionValue.uniform else None
    with Progress(total, "report: coalition soups", "soup") as bar:
        souper.bar = bar
        try:
            result = shapley_of(souper, own, split, c, r.search, empty=r.base_score or 0.0)
        finally:
            souper.bar = None
    evaluated = len(souper.store) - before
    what = "uniform soup" if c.value == CoalitionValue.uniform else f"best soup of a {r.search.name} search over its members"
    plot_shapley(players, result, f"Shapley values of the {c.players}: coalition value = {split} {obj} of its {what}", r.path("shapley.png"))
    how = ("Exact, over all coalitions" if result.errors is None
           else f"Monte Carlo over {result.samples} random orders; the error is one standard error")
    md = ["## Shapley values", "",
          f"Players: the {plural(len(players), c.players.value[:-1])}. The value of a coalition is the {split} {obj} of its {what}; "
          "a single model's is its own score; "
          + (f"the empty coalition's is the base model's score, {r.base_score:.4f}, so each value is a gain over the base. "
             if r.base_score is not None else "the empty coalition's is 0 (no base model is known for this pool: pool.base "
             "sets one). ") + f"{how}. "
          f"{plural(result.coalitions, 'coalition')} valued ({plural(evaluated, 'soup')} evaluated for this report, the rest from the store). "
          f"The values sum to v(all) - v(empty) = {sum(result.values):.4f}.", "", "![Shapley values](shapley.png)", "",
          "| model | Shapley value |" + (" std. error |" if result.errors else ""), "|---|---|" + ("---|" if result.errors else "")]
    for i in sorted(range(len(players)), key=lambda i: -result.values[i]):
        md.append(f"| {players[i]} | {result.values[i]:+.4f} |" + (f" {result.errors[i]:.4f} |" if result.errors else ""))
    r.tracker.log_table("report/shapley", ["model", "shapley", "std_error"],
                        [[p, result.values[i], None if result.errors is None else result.errors[i]] for i, p in enumerate(players)])
    r.tracker.log_image("report/shapley_chart", r.path("shapley.png"))
    return md + [""]


def _consistency_section(r: StudyReport) -> list[str]:
    import numpy as np

    md = ["## Consistency across categories", ""]
    if len(r.points) < 3:
        return md + [f"_{plural(len(r.points), 'sweep point')} stored: at least 3 soups are needed for a correlation._", ""]
    soups = np.array([[p["scores"][c] for c in r.categories] for p in r.points], dtype=float)
    c: Consistency = consistency(tuple(r.categories), r.own[r.split].values, soups, r.correlation_method)
    plot_consistency(c, r.path("consistency.png"))
    md += [f"Correlation between categories over the {plural(c.n_candidates, 'candidate')} and over the {plural(c.n_soups, 'soup')} of the sweep "
           f"({r.split} split). Mean off-diagonal correlation: candidates {_corr(c.mean_candidates)}, "
           f"soups {_corr(c.mean_soups)}.", "", "![consistency](consistency.png)", ""]
    r.tracker.log_summary({"report/consistency_candidates": c.mean_candidates, "report/consistency_soups": c.mean_soups})
    r.tracker.log_image("report/consistency_chart", r.path("consistency.png"))
    return md


def _win_rate_section(r: StudyReport) -> list[str]:
    md = ["## Win rates on test", ""]
    if r.results is not None:
        weights, which = r.results["rows"][-1]["weights"], "the final soup"
    elif r.points:
        weights, which = max(r.points, key=lambda p: p["objective"])["weights"], "the best sweep point so far (the soup stage has not run)"
    else:
        return md + ["_No soup yet._", ""]
    test = r.own.get("test")
    if test is None:
        return md + ["_The benchmark has no test split._", ""]
    ingredients = [n for n, w in zip(r.souper.names, weights) if w > 0]
    outcomes = {m: {} for m in ingredients}
    for o in test.outcomes:
        if o.model in outcomes:
            outcomes[o.model][o.example_id] = o.correct
    if any(not o for o in outcomes.values()):
        return md + ["_The candidates' per-example test outcomes are not stored (outcomes_test.jsonl)._", ""]
    record = r.souper.evaluate(weights, "test")
    rates: WinRates = win_rates(outcomes, solved_by_id(record["correct"], list(outcomes[ingredients[0]])))
    md += [f"Over the {rates.tasks} test examples, {which} against its {plural(len(ingredients), 'ingredient')}:", "",
           "| | soup solves | of | share |", "|---|---|---|---|"]
    rows = [(f"solved by {m}", s) for m, s in rates.kept.items()]
    rows += [("failed by every ingredient", rates.all_fail), ("failed by exactly one ingredient", rates.one_fails)]
    md += [f"| {name} | {s.solved} | {s.of} | {_pct(s.rate)} |" for name, s in rows]
    r.tracker.log_table("report/win_rates", ["tasks", "soup_solves", "of", "share"], [[n, s.solved, s.of, _na(s.rate)] for n, s in rows])
    return md + [""]


def _num(v) -> str:
    """A score as its table states it: 4 decimals for fractions (0.9533), 2 for percentages (78.45)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if abs(v) <= 1 else f"{v:.2f}"


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}%"


def _na(v: float) -> float | None:
    return None if math.isnan(v) else v


def _corr(v: float) -> str:
    """A correlation, or 'undefined' (too few models or soups, or a constant column)."""
    return "undefined" if math.isnan(v) else f"{v:.3f}"
