"""The report's content (soce.report.content) -> report.md, its plots beside it, and the same
tables and charts in the tracker. Nothing here evaluates."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from soce.analysis import NOISY, RELIABILITY, reliability_text
from soce.artifacts import REPORT
from soce.objective import label_of
from soce.progress import plural
from soce.report.content import Content, Diagnostics, Landscape, ShapleyValues, StudyReport, WinRateRows
from soce.report.consistency import Consistency
from soce.report.diagnostics import THRESHOLDS, prediction
from soce.report.plots import plot_consistency, plot_diagnostics, plot_shapley, plot_surrogate, plot_ternary
from soce.significance import score_text, supported
from soce.stats import score_noise
from soce.stability import stability_lines
from soce.weights import weight_text

log = logging.getLogger("soce")


def write_report(content: Content) -> Path:
    r = content.inputs
    md = [f"# soce study: {r.study}", "", f"Run directory: `{r.dir}`", "", *_config_section(r), *_selection_section(r)]
    if r.souper is None:
        md += ["", "_The benchmark is a score table: no soups were evaluated, so the report ends with the selection._"]
    else:
        md += _baselines_section(r)
        md += _landscape_section(r, content.landscape)
        md += _search_section(r)
        md += _shapley_section(r, content.shapley)
        md += _diagnostics_section(r, content.diagnostics)
        md += _consistency_section(r, content.consistency)
        md += _win_rate_section(r, content.win_rates)
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
    raw = analysis.get("reliability_raw", analysis.get("reliability", {}))
    noisy = [f"{c} {reliability_text(r)}" for c, r in raw.items() if c in weak and r is not None and r < NOISY]
    if noisy:
        md[-4:-4] = [f"A category's reliability is {RELIABILITY}. In L with a reliability below {NOISY:g}, a spread between "
                     f"models that is mostly sampling noise: {', '.join(noisy)}. Their correlations, and the experts they "
                     "pick, rest on chance.", ""]
    lines = stability_lines(analysis["stability"], weak) if analysis.get("stability") else []
    if lines:
        s = analysis["stability"]
        md[-4:-4] = [f"Stability over {s['resamples']} redraws of the scores (each a binomial proportion of its category's "
                     "examples; analysis.json has each correlation's interval):", "",
                     *[f"- {line}" for line in lines], ""]
    if analysis.get("left_out"):
        md[-4:-4] = ["Left out of L: " + "; ".join(f"{c} ({why})" for c, why in analysis["left_out"].items()) + ".", ""]
    sizes = analysis.get("sizes") or {}
    unsized = [c for c, n in sizes.items() if not n] if any(sizes.values()) else []
    if unsized:
        md[-4:-4] = [f"The number of examples behind the scores is unknown for {', '.join(unsized)}: no reliability and no "
                     "redraws for them" + (", and analysis.min_reliability does not apply to them"
                                           if analysis.get("min_reliability") is not None else "") + ".", ""]
    md += [f"| {e['model']} | {_num(e['overall'])} | {e['reason']} |" for e in selection["experts"]]
    if selection.get("excluded"):
        md += ["", "Left out: " + "; ".join(f"{m} ({why})" for m, why in selection["excluded"].items()) + "."]
    return md + [""]


# --- soups: baselines, landscape, Shapley, diagnostics, consistency, win rates -----------------
def _baselines_section(r: StudyReport) -> list[str]:
    md = ["## Baselines", ""]
    if r.results is None:
        state = f"{plural(len(r.points), 'sweep point')} stored so far" if r.points else _nothing_stored(r)
        return md + [f"_The soup stage has not run in this directory with these settings ({state}): no baseline table._", ""]
    obj, stats = r.results["objective"], r.results.get("statistics")
    intervals = (f" In brackets, {stats['confidence']:.0%} intervals of a paired bootstrap ({stats['bootstrap']} resamples of "
                 f"the examples, within each {stats.get('within', 'category')})." if stats else "")
    md += [f"{label_of(r.results)}; {r.results['protocol']}.{intervals}", "",
           f"| | dev {obj} | test {obj} | weights |", "|---|---|---|---|"]
    for row in r.results["rows"]:
        weights = ", ".join(f"{m} {weight_text(w)}" for m, w in zip(row["models"], row["weights"]) if w > 0)
        md.append(f"| {row['name']} | {score_text(row.get('dev'))} | {score_text(row.get('test'))} | {weights} |")
    split = "test" if "test" in r.results["rows"][-1] else "dev"
    sentences = supported(r.results, split)
    if sentences:
        md += ["", f"What the data supports, on {split} (better or worse only where the interval is clear of 0):", ""]
        md += [f"- {s}" for s in sentences]
    own = r.results.get("candidates", {}).get(split)
    if own and split != r.results.get("select_on"):
        md += ["", f"Every candidate on {split} (shown for the reader: no choice was made on these scores):", "",
               f"| candidate | {split} {obj} |", "|---|---|"]
        md += [f"| {m} | {v:.4f} |" for m, v in sorted(own.items(), key=lambda kv: -kv[1])]
    return md + [""]


def _landscape_section(r: StudyReport, landscape: Landscape | None) -> list[str]:
    split, obj, experts, points = r.split, r.objective_name, r.experts, r.points
    md = ["## Weight landscape", ""]
    if landscape is None:
        nothing = _nothing_stored(r)
        return md + [f"_{nothing[:1].upper()}{nothing[1:]}._", ""]
    if len(experts) == 3:
        scores, n = [p["objective"] for p in points], len(r.souper.example_ids(split))
        noise = score_noise(max(scores), n)
        plot_ternary(experts, [p["weights"] for p in points], scores, f"{split} {obj}", r.path("landscape.png"),
                     landscape.alone, noise)
        spread = max(scores) - min(scores)
        md += [f"The {plural(len(points), 'soup')} of the sweep on the weight simplex (colour: {split} {obj}); "
               "each corner's square is that expert alone. The colours span "
               f"{spread:.3f}; one score's sampling noise on {n} examples is +-{noise:.3f} (two standard errors), so "
               + ("most of the landscape is inside it." if spread < 2 * noise else "its shape is more than noise."), "",
               "![weight landscape](landscape.png)", ""]
        r.tracker.log_image("report/landscape_chart", r.path("landscape.png"))
    best = landscape.best
    md += [f"The best {len(best)} of {plural(len(points), 'point')} on {split}:", "",
           "| " + " | ".join(experts) + f" | {split} {obj} |", "|" + "---|" * (len(experts) + 1)]
    md += ["| " + " | ".join(weight_text(w) for w in p["weights"]) + f" | {p['objective']:.4f} |" for p in best]
    r.tracker.log_table("report/top_points", [*experts, f"{split} {obj}"], [[*p["weights"], p["objective"]] for p in best])
    return md + [""]


def _search_section(r: StudyReport) -> list[str]:
    """What a search over subsets of the examples spent against the grid; for the surrogate, how
    well its fit predicts each point it did not see (leave-one-out)."""
    run = r.search_run
    if not run:
        return []
    md = ["## The search", "",
          f"{r.search.name} evaluated {run['examples']} {r.split} examples, {run['share_of_grid']:.1%} of the "
          f"{run['grid_examples']} the grid would ({'; '.join(_search_facts(run))}).", ""]
    if run.get("fit"):
        plot_surrogate(run["fit"], f"The surrogate's leave-one-out prediction of each point evaluated on every {r.split} "
                       f"example ({r.objective_name})", r.path("surrogate.png"))
        r.tracker.log_image("report/surrogate_chart", r.path("surrogate.png"))
        loo = ", ".join(f"{g} {e:.3f}" for g, e in run["loo_error"].items())
        error = run["loo_error_objective"]
        md += ["![surrogate](surrogate.png)", "",
               f"Leave-one-out error (root mean square, the fit without each evaluated point predicting it): of the "
               f"objective {'n/a' if error is None else f'{error:.4f}'} over the points evaluated on every example; per "
               f"group {loo}.", ""]
    return md


def _search_facts(run: dict) -> list[str]:
    if "stopped" in run:
        return [f"{plural(run['points'], 'point')}, {len(run['whole'])} of them on every example",
                f"stopped: {run['stopped']}"]
    return [f"rungs of {'/'.join(map(str, run['rungs']))} examples", f"{'/'.join(map(str, run['alive']))} points alive at each"]


def _nothing_stored(r: StudyReport) -> str:
    if r.pieces:
        return (f"no point of the {r.search.name} search has been evaluated on every {r.split} example yet "
                f"({plural(r.pieces, 'piece')} of its rungs stored)")
    return "no sweep points stored yet"


def _shapley_section(r: StudyReport, s: ShapleyValues) -> list[str]:
    c, split, obj = r.shapley, r.split, r.objective_name
    players, result = s.players, s.result
    plot_shapley(players, result, f"Shapley values of the {c.players}: coalition value = {split} {obj} of its {s.what}", r.path("shapley.png"))
    how = ("Exact, over all coalitions" if result.errors is None
           else f"Monte Carlo over {result.samples} random orders; the error is one standard error")
    md = ["## Shapley values", "",
          f"Players: the {plural(len(players), c.players.value[:-1])}. The value of a coalition is the {split} {obj} of its {s.what}; "
          "a single model's is its own score; "
          + (f"the empty coalition's is the base model's score, {r.base_score:.4f}, so each value is a gain over the base. "
             if r.base_score is not None else "the empty coalition's is 0 (no base model is known for this pool: pool.base "
             "sets one). ") + f"{how}. "
          f"{plural(result.coalitions, 'coalition')} valued ({plural(s.evaluated, 'soup')} evaluated for this report, the rest from the store or earlier runs). "
          f"The values sum to v(all) - v(empty) = {sum(result.values):.4f}.", "", "![Shapley values](shapley.png)", "",
          "| model | Shapley value |" + (" std. error |" if result.errors else ""), "|---|---|" + ("---|" if result.errors else "")]
    for i in sorted(range(len(players)), key=lambda i: -result.values[i]):
        md.append(f"| {players[i]} | {result.values[i]:+.4f} |" + (f" {result.errors[i]:.4f} |" if result.errors else ""))
    r.tracker.log_table("report/shapley", ["model", "shapley", "std_error"],
                        [[p, result.values[i], None if result.errors is None else result.errors[i]] for i, p in enumerate(players)])
    r.tracker.log_image("report/shapley_chart", r.path("shapley.png"))
    return md + [""]


def _diagnostics_section(r: StudyReport, d: Diagnostics) -> list[str]:
    md = ["## Will souping work? Task vectors and linear mode connectivity", ""]
    experts, obj, tv, lines = r.experts, r.objective_name, d.vectors, d.lines
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
                     r.path("diagnostics.png"), experts=experts)
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


def _consistency_section(r: StudyReport, c: Consistency | str) -> list[str]:
    md = ["## Consistency across categories", ""]
    if isinstance(c, str):  # why there is none
        return md + [f"_{c}_", ""]
    plot_consistency(c, r.path("consistency.png"))
    md += [f"Correlation between categories over the {plural(c.n_candidates, 'candidate')} and over the {plural(c.n_soups, 'soup')} of the sweep "
           f"({r.split} split). Mean off-diagonal correlation: candidates {_corr(c.mean_candidates)}, "
           f"soups {_corr(c.mean_soups)}.", "", "![consistency](consistency.png)", ""]
    r.tracker.log_summary({"report/consistency_candidates": c.mean_candidates, "report/consistency_soups": c.mean_soups})
    r.tracker.log_image("report/consistency_chart", r.path("consistency.png"))
    return md


def _win_rate_section(r: StudyReport, w: WinRateRows | str) -> list[str]:
    md = ["## Win rates on test", ""]
    if isinstance(w, str):  # why there are none
        return md + [f"_{w}_", ""]
    rates = w.rates
    md += [f"Over the {rates.tasks} test examples, {w.which} against its {plural(len(w.ingredients), 'ingredient')}:", "",
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
