"""The stages of a study. Each reads earlier stages' artifacts from the run directory and
writes its own; a stage whose inputs are missing or out of date runs the stage before it.

    analyze: benchmark -> scores.csv -> analysis.json, correlation.png, entry_tau.png
    select:  scores.csv + analysis.json -> selection.json

and one tool stage, merge: merge.models and merge.weights -> merge.output (a model directory).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soce import analysis as corr
from soce.errors import SoceError
from soce.pool import Candidate, resolve_pool
from soce.scores import ScoreTable, read_scores, read_table, write_scores
from soce.selection import Selection, select_all, select_manual, select_soce, select_topk
from soce.tracking import Tracker

log = logging.getLogger("soce")


@dataclass
class Run:
    """What every stage gets: the composed config, the run directory, the tracker."""

    cfg: DictConfig
    dir: Path
    tracker: Tracker

    def path(self, name: str) -> Path:
        return self.dir / name


def load_scores(benchmark: DictConfig) -> ScoreTable:
    """The benchmark's score table (benchmarks with an evaluator come in a later stage)."""
    if benchmark.kind != "table":
        raise SoceError(f"benchmark.kind={benchmark.kind!r}: only score tables (kind=table) are supported")
    return read_table(
        benchmark.path,
        format=benchmark.format.value,
        model_column=benchmark.model_column,
        overall_column=benchmark.overall_column,
        categories=benchmark.categories,
        exclude=benchmark.exclude,
    )


def pool_candidates(cfg: DictConfig, table: ScoreTable) -> list[Candidate]:
    refs = None if cfg.pool.models is None else [Candidate(m.name, m.hub_id, m.path) for m in cfg.pool.models]
    return resolve_pool(refs, table.models, table.source)


def analysis_settings(cfg: DictConfig) -> dict:
    """What analysis.json depends on: when these change, the analysis is recomputed."""
    # Resolved in place: a node copied into a new config would lose the interpolations'
    # root (analysis.tau follows selection.tau).
    return {key: OmegaConf.to_container(cfg[key], resolve=True, enum_to_str=True) for key in ("benchmark", "pool", "analysis")}


# --- analyze ------------------------------------------------------------------------------
def analyze(run: Run) -> corr.Analysis:
    cfg = run.cfg
    table = load_scores(cfg.benchmark)
    write_scores(table, run.path("scores.csv"))
    pool = pool_candidates(cfg, table)
    population = table if cfg.analysis.population.value == "all" else table.subset([c.name for c in pool])
    result = corr.analyze(population, float(cfg.analysis.tau), cfg.analysis.method.value)
    record = {"settings": analysis_settings(cfg), **result.to_dict(list(cfg.analysis.tau_grid))}
    run.path("analysis.json").write_text(json.dumps(record, indent=2))
    corr.plot_correlation(result, run.path("correlation.png"))
    corr.plot_entry_tau(result, run.path("entry_tau.png"))
    _print_analysis(result, cfg.analysis.population.value)
    _track_analysis(run, table, result)
    return result


def _print_analysis(result: corr.Analysis, population: str) -> None:
    k = len(result.categories)
    log.info("analysis: %s correlation of %d categories over %d models (population: %s), tau=%g",
             result.method, k, len(result.models), population, result.tau)
    log.info("  weak set L (%d of %d): %s", len(result.weak_set), k, ", ".join(result.weak_set) or "(empty)")
    log.info("  entry threshold per category (in L for any tau above it):")
    for cat, t in sorted(result.entry_tau.items(), key=lambda kv: (math.isnan(kv[1]), kv[1])):
        log.info("    %s  %s%s", "  n/a" if math.isnan(t) else f"{t:.3f}", cat, "  <- in L" if t < result.tau else "")
    for a, b in result.undefined_pairs[:5]:
        log.warning("  correlation of %r and %r is undefined (fewer than 2 shared models, or a constant column)", a, b)


def _track_analysis(run: Run, table: ScoreTable, result: corr.Analysis) -> None:
    t = run.tracker
    t.log_table("scores", ["model", *table.categories, "overall"],
                [[m, *map(_na, row), _na(o)] for m, row, o in zip(table.models, table.values, table.overall)])
    t.log_table("correlation", ["category", *result.categories],
                [[c, *map(_na, row)] for c, row in zip(result.categories, result.matrix)])
    t.log_table("entry_tau", ["category", "entry_tau", "in_weak_set"],
                [[c, _na(v), v < result.tau] for c, v in result.entry_tau.items()])
    t.log_image("correlation", run.path("correlation.png"))
    t.log_image("entry_tau", run.path("entry_tau.png"))
    t.log_summary({"analysis/tau": result.tau, "analysis/weak_set_size": len(result.weak_set),
                   "analysis/weak_set": ", ".join(result.weak_set)})


def _na(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def current_analysis(run: Run) -> corr.Analysis:
    """analysis.json from the run directory, recomputed first if missing or made with other settings."""
    path = run.path("analysis.json")
    if not path.exists() or not run.path("scores.csv").exists():
        log.info("no analysis in %s yet: running stage analyze", run.dir)
        return analyze(run)
    record = json.loads(path.read_text())
    if record.get("settings") != analysis_settings(run.cfg):
        log.info("analysis.json in %s was made with other settings: running stage analyze again", run.dir)
        return analyze(run)
    return corr.Analysis.from_dict(record)


# --- select -------------------------------------------------------------------------------
def select(run: Run) -> Selection:
    cfg = run.cfg
    analysis = current_analysis(run)
    table = read_scores(run.path("scores.csv"))
    pool = pool_candidates(cfg, table)
    names = [c.name for c in pool]
    s = cfg.selection
    if s.name == "soce":
        selection = select_soce(table, names, analysis, keep_best_overall=s.keep_best_overall, max_experts=s.max_experts)
    elif s.name == "all":
        selection = select_all(table, names)
    elif s.name == "topk":
        selection = select_topk(table, names, s.k)
    elif s.name == "manual":
        chosen = resolve_pool([Candidate(m) for m in s.models], names, "the pool")
        selection = select_manual(table, names, [c.name for c in chosen])
    else:
        raise SoceError(f"selection.name={s.name!r}: expected soce, all, topk or manual")
    if len(selection.experts) == 1:
        log.warning("only one expert (%s): its soup is the model itself", selection.experts[0].model)
    hub = {c.name: c.hub_id or c.path for c in pool}
    record = selection.to_dict()
    for e in record["experts"]:
        e["hub_id"] = hub.get(e["model"])
    record["weak_set"] = list(analysis.weak_set) if s.name == "soce" else None
    record["tau"] = analysis.tau if s.name == "soce" else None
    run.path("selection.json").write_text(json.dumps(record, indent=2))
    _print_selection(selection)
    run.tracker.log_table("selection", ["model", "hub_id", "reason", "leads", "overall"],
                          [[e.model, hub.get(e.model), e.reason, ", ".join(e.leads), _na(e.overall)] for e in selection.experts])
    run.tracker.log_table("excluded", ["model", "reason"], [[m, r] for m, r in selection.excluded.items()])
    run.tracker.log_summary({"selection/n_experts": len(selection.experts), "selection/experts": ", ".join(selection.models)})
    return selection


def _print_selection(selection: Selection) -> None:
    log.info("selection: %s, %d expert%s", selection.strategy, len(selection.experts), "" if len(selection.experts) == 1 else "s")
    width = max(len(e.model) for e in selection.experts)
    for e in selection.experts:
        overall = "n/a" if math.isnan(e.overall) else f"{e.overall:.2f}"
        log.info("  %-*s  overall %6s  %s", width, e.model, overall, e.reason)
    if selection.excluded:
        log.info("  left out:")
        for m, why in selection.excluded.items():
            log.info("    %s: %s", m, why)


# --- merge (a tool stage) -------------------------------------------------------------------
def merge(run: Run) -> Path:
    from soce.merge import merge_to_disk  # torch: imported only by the stages that need it

    m = run.cfg.merge
    for key in ("models", "weights", "output"):
        if not m[key]:
            raise SoceError(f"stage=merge needs merge.{key}, e.g. 'merge.models=[a,b]' 'merge.weights=[0.6,0.4]' merge.output=soup")
    output = merge_to_disk(
        list(m.models), list(m.weights), m.output, dtype=m.dtype, shard_size=m.shard_size, normalize=m.normalize,
        overwrite=m.overwrite, allow_nonfinite=m.allow_nonfinite, allow_vocab_mismatch=m.allow_vocab_mismatch,
        config_from=m.config_from, device=m.device,
    )
    log.info("soup: %s (load it with AutoModelForCausalLM.from_pretrained; mergekit.yaml beside it)", output)
    run.tracker.log_summary({"merge/output": str(output), "merge/models": list(m.models), "merge/weights": list(m.weights)})
    return output
