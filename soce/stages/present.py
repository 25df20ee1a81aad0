"""What the stages show: their results printed (to the terminal and soce.log) and logged to the
tracker, apart from their computation."""

from __future__ import annotations

import logging
import math

from soce import analysis as corr
from soce.objective import label_of
from soce.scores import ScoreTable
from soce.selection import Selection
from soce.stability import stability_lines
from soce.tracking import Tracker
from soce.weights import weight_text

log = logging.getLogger("soce")


# --- analyze ---------------------------------------------------------------------------------
def print_analysis(result: corr.Analysis, population: str, values) -> None:
    k = len(result.categories)
    log.info("analysis: %s correlation of %d categories over %d models (population: %s), tau=%g",
             result.method, k, len(result.models), population, result.tau)
    log.info("  weak set L (%d of %d): %s", len(result.weak_set), k, ", ".join(result.weak_set) or "(empty)")
    few_models(len(result.models), result.tau)
    reliable = dict(zip(result.categories, result.reliability))
    log.info("  entry threshold per category (in L for any tau above it)%s:",
             f"; its reliability ({corr.RELIABILITY})" if reliable else "")
    width = max(map(len, result.categories))
    for cat, t in sorted(result.entry_tau.items(), key=lambda kv: (math.isnan(kv[1]), kv[1])):
        r = f"  reliability {corr.reliability_text(reliable[cat])}" if cat in reliable and not math.isnan(reliable[cat]) else ""
        log.info("    %s  %-*s%s%s", "  n/a" if math.isnan(t) else f"{t:.3f}", width if r else 0, cat, r,
                 "  <- in L" if t < result.tau else "")
    for cat, why in result.left_out.items():
        log.info("  left out of L: %s: %s", cat, why)
    if result.unsized:
        log.warning("  the number of examples is known for %d of %d categories: %s %s none, so %s no reliability, %s not "
                    "redrawn%s (benchmark.category_sizes gives the rest)", len(result.categories) - len(result.unsized),
                    len(result.categories), ", ".join(result.unsized), "has" if len(result.unsized) == 1 else "have",
                    "it has" if len(result.unsized) == 1 else "they have", "is" if len(result.unsized) == 1 else "are",
                    f" and analysis.min_reliability={result.min_reliability:g} cannot leave "
                    f"{'it' if len(result.unsized) == 1 else 'them'} out" if result.min_reliability is not None else "")
    if result.min_reliability is not None and not result.reliability:
        log.warning("  analysis.min_reliability=%g leaves nothing out: the number of examples behind each category's scores "
                    "is unknown here (benchmark.category_sizes gives them for a table)", result.min_reliability)
    for cat, r, n in result.noisy():
        log.warning("  %r is in L on a spread between models that is mostly sampling noise (reliability %s, %s examples): "
                    "its correlations, and the expert it picks, rest on chance", cat, corr.reliability_text(r), f"{n:.0f}")
    if result.stability:
        log.info("  stability over %d redraws of the scores (each a binomial proportion of its category's examples):",
                 result.stability["resamples"])
        for line in stability_lines(result.stability, result.weak_set):
            log.info("    %s", line)
    if len(result.models) < 3:
        log.warning("  correlations over %d models are +-1 or undefined: the analysis needs at least 3 models", len(result.models))
    reasons = result.undefined_reasons(values)
    for reason in reasons[:5]:
        log.warning("  %s", reason)
    if len(reasons) > 5:
        log.warning("  and %d more undefined pairs (every one in analysis.json)", len(reasons) - 5)


def few_models(n: int, tau: float) -> None:
    """What a correlation over `n` models can show, said before the analysis's figures where it is
    little (a warning under 6 models: an empty selection is then likely, and no fault)."""
    if n < 3 or n >= 10:
        return
    edge = corr.distinguishable_rho(n)
    say = log.warning if n < 6 else log.info
    say("  with %d models, a correlation tells apart from 0 only |rho| above %.2f (95%%): a category's entry threshold "
        "below that (and tau=%g) says as much about which models were sampled as about the categories; more models "
        "make it mean more", n, edge, tau)


def track_analysis(t: Tracker, table: ScoreTable, result: corr.Analysis, correlation_png, entry_tau_png) -> None:
    t.log_table("scores", ["model", *table.categories, "overall"],
                [[m, *map(na, row), na(o)] for m, row, o in zip(table.models, table.values, table.overall)])
    t.log_table("correlation", ["category", *result.categories],
                [[c, *map(na, row)] for c, row in zip(result.categories, result.matrix)])
    t.log_table("entry_tau", ["category", "entry_tau", "in_weak_set"],
                [[c, na(v), v < result.tau] for c, v in result.entry_tau.items()])
    t.log_image("correlation", correlation_png)
    t.log_image("entry_tau", entry_tau_png)
    t.log_summary({"analysis/tau": result.tau, "analysis/weak_set_size": len(result.weak_set),
                   "analysis/weak_set": ", ".join(result.weak_set)})


def na(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


# --- select ----------------------------------------------------------------------------------
LEFT_OUT_SHOWN = 10  # models the terminal lists as left out; selection.json has them all


def print_selection(selection: Selection) -> None:
    log.info("selection: %s, %d expert%s", selection.strategy, len(selection.experts), "" if len(selection.experts) == 1 else "s")
    width = max(len(e.model) for e in selection.experts)
    for e in selection.experts:
        overall = "n/a" if math.isnan(e.overall) else f"{e.overall:.2f}"
        log.info("  %-*s  overall %6s  %s", width, e.model, overall, e.reason)
    if selection.excluded:
        log.info("  left out:")
        shown = list(selection.excluded.items())[:LEFT_OUT_SHOWN]
        for m, why in shown:
            log.info("    %s: %s", m, why)
        if len(selection.excluded) > len(shown):
            log.info("    and %d more (every one, with why, in selection.json)", len(selection.excluded) - len(shown))
    for note in selection.notes:
        log.warning("  %s", note)



# --- sweep and soup --------------------------------------------------------------------------
def weights_text(names: list[str], weights: list[float]) -> str:
    return ", ".join(f"{n} {weight_text(w)}" for n, w in zip(names, weights))


def test_objective(row: dict) -> float | None:
    return row["test"]["objective"] if "test" in row else None


def print_results(results: dict) -> None:
    from soce.significance import score_text, supported

    stats = results.get("statistics")
    intervals = f"; {stats['confidence']:.0%} intervals, paired bootstrap over examples" if stats else ""
    log.info("results (%s; %s%s):", label_of(results), results["protocol"], intervals)
    width = max(len(r["name"]) for r in results["rows"])
    cell = 26 if stats else 8
    log.info("  %-*s %*s %*s", width, "", cell, "dev", cell, "test")
    for r in results["rows"]:
        log.info("  %-*s %*s %*s", width, r["name"], cell, score_text(r.get("dev")), cell, score_text(r.get("test")))
    log.info("%s", results_summary(results))
    for sentence in supported(results, "test" if "test" in results["rows"][-1] else "dev"):
        log.info("  %s", sentence)



def results_summary(results: dict) -> str:
    """What the table means, in a sentence: the searched soup against the best single model and
    the uniform soups, on the reported split, each by its paired interval where the results have
    one (soce.significance.verdict), by its point estimate otherwise, said as such."""
    from soce.significance import claims

    role = {r.get("role"): r for r in results["rows"]}
    single, everyone, searched = role["single"], role["uniform_all"], role["searched"]
    split = "test" if "test" in searched else "dev"
    score = searched[split]["objective"]

    def against(row: dict) -> str:
        d = score - row[split]["objective"]
        return f"{d:+.4f} against the {row['name']}" + (f" ({', '.join(row['models'])})" if len(row["models"]) == 1 else "")

    if len(searched["models"]) == 1:  # one expert: its soups are the model itself, nothing to compare
        return (f"On {split}, the {searched['name']} scores {score:.4f}: the selection has one expert, {searched['models'][0]}, "
                f"so its soups are that model itself ({against(single)}, {against(everyone)}).")
    chosen = "" if results.get("select_on") is None else f" Its weights were chosen on {results['select_on']}."
    baselines = ("single", "uniform_all", "uniform_experts")
    said = [c for c, v in zip(claims(results, split), searched[split].get("versus", [])) if v["role"] in baselines]
    if said:
        return f"On {split}, the {searched['name']} scores {score:.4f}: {'; '.join(said)}.{chosen}"
    points = ", ".join(against(role[b]) for b in baselines)
    return (f"On {split}, the {searched['name']} scores {score:.4f} ({points}): point estimates only, without per-example "
            f"outcomes there are no intervals to say whether any difference is more than noise.{chosen}")


def track_selection(t: Tracker, selection: Selection, where: dict) -> None:
    t.log_table("selection", ["model", "weights at", "reason", "leads", "overall"],
                [[e.model, where[e.model].hub_id or where[e.model].path, e.reason, ", ".join(e.leads), na(e.overall)]
                 for e in selection.experts])
    t.log_table("excluded", ["model", "reason"], [[m, r] for m, r in selection.excluded.items()])
    t.log_summary({"selection/n_experts": len(selection.experts), "selection/experts": ", ".join(selection.models)})


def track_results(t: Tracker, results: dict, soup_dir) -> None:
    rows, objective = results["rows"], results["objective"]
    t.log_table("baselines", ["row", f"dev {objective}", "dev low", "dev high", f"test {objective}", "test low",
                              "test high", "test vs single", "models", "weights"],
                [[r["name"], r["dev"]["objective"], *r["dev"].get("ci", [None, None]), test_objective(r),
                  *r.get("test", {}).get("ci", [None, None]), r.get("test", r["dev"]).get("vs_single", {}).get("estimate"),
                  ", ".join(r["models"]), ", ".join(f"{w:.3f}" for w in r["weights"])] for r in rows])
    for s in ("dev", "test"):
        versus = rows[-1].get(s, {}).get("versus")
        if versus:
            t.log_table(f"versus_{s}", ["against", "role", "difference", "low", "high", "only_soup", "only_other", "p"],
                        [[v["against"], v["role"], v["estimate"], *v["ci"], v["only_soup"], v["only_other"], v["p"]]
                         for v in versus])
    t.log_summary({"soup/dev": rows[-1]["dev"]["objective"], "soup/test": test_objective(rows[-1]),
                   "soup/protocol": results["protocol"]})
    t.log_reference("soup", soup_dir)


# --- a multirun's jobs ---------------------------------------------------------------------------
def jobs_table(sweep_dir) -> tuple[list[str], list[list[str]]]:
    """One row per job of a multirun (its numbered directories in `sweep_dir`): the overrides
    that differ between jobs, then what each found (L, the experts, the searched soup's weights
    and score on each split, and what the data supports against the best single candidate).
    Jobs that stopped early show what they made."""
    import json
    from pathlib import Path

    from omegaconf import OmegaConf

    from soce.significance import difference_text, verdict

    jobs = sorted((d for d in Path(sweep_dir).iterdir() if d.name.isdigit() and (d / ".hydra" / "overrides.yaml").exists()),
                  key=lambda d: int(d.name))
    overrides = [dict(str(o).split("=", 1) for o in OmegaConf.load(d / ".hydra" / "overrides.yaml") if "=" in str(o))
                 for d in jobs]
    swept = [k for k in dict.fromkeys(k for o in overrides for k in o) if len({o.get(k) for o in overrides}) > 1]

    def read(d, name):
        try:
            return json.loads((d / name).read_text())
        except (OSError, ValueError):
            return None

    head = ["job", *swept, "L", "experts", "weights", "dev", "test", "against the best single candidate (test)"]
    rows = []
    for d, o in zip(jobs, overrides):
        analysis, selection, results = read(d, "analysis.json"), read(d, "selection.json"), read(d, "results.json")
        searched = results["rows"][-1] if results else {}
        vs = searched.get("test", {}).get("vs_single")
        level = results.get("statistics", {}).get("confidence", 0.95) if results else 0.95
        rows.append([d.name, *(o.get(k, "") for k in swept),
                     ", ".join(analysis["weak_set"]) if analysis else "",
                     ", ".join(e["model"] for e in selection["experts"]) if selection else "",
                     ", ".join(weight_text(w) for w in searched.get("weights", [])),
                     *(f"{searched[s]['objective']:.4f}" if s in searched else "" for s in ("dev", "test")),
                     f"{verdict(*vs['ci'])} {difference_text(vs, level)}" if vs else ""])
    return head, rows


def write_jobs_table(sweep_dir) -> None:
    """jobs.md and jobs.csv in the multirun's directory, and the table in the log."""
    import csv
    from pathlib import Path

    head, rows = jobs_table(sweep_dir)
    if not rows:
        return
    with (Path(sweep_dir) / "jobs.csv").open("w", newline="") as f:
        csv.writer(f).writerows([head, *rows])
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]
    (Path(sweep_dir) / "jobs.md").write_text(f"# The {len(rows)} jobs of {sweep_dir}\n\n" + "\n".join(md) + "\n")
    log.info("the multirun's %d jobs (jobs.md and jobs.csv in %s):", len(rows), sweep_dir)
    for line in md:
        log.info("  %s", line)
