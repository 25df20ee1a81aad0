"""report: everything the earlier stages left in the run directory -> report.md, with
shapley.png, consistency.png and landscape.png (3 experts). The report module is handed its
inputs; it knows nothing of the stages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soce.artifacts import ANALYSIS, RESULTS, SELECTION
from soce.choices import Players
from soce.pool import model_dir
from soce.stages import products
from soce.stages.products import ANALYZED, REPORTED, RESULTED, SELECTED, Stage
from soce.stages.study import Study


def report(study: Study) -> Path:
    from soce.report.content import StudyReport, compute
    from soce.report.render import write_report
    from soce.sweep import search_soups

    cfg, search = study.cfg, study.search
    selection = products.read_json(study, SELECTION)
    experts = [e["model"] for e in selection["experts"]]
    inputs = StudyReport(
        study=cfg.study, dir=study.dir, tracker=study.tracker, config=config_rows(cfg, study.objective.label if study.benchmark.evaluates else None),
        analysis=products.read_json(study, ANALYSIS), selection=selection, experts=experts,
        search=search, shapley=OmegaConf.to_object(cfg.report.shapley), top_points=cfg.report.top_points,
        correlation_method=cfg.analysis.method.value)
    if not study.benchmark.evaluates:
        return write_report(compute(inputs))
    candidates = study.candidates()
    study.check_store(candidates)
    souper = study.souper([candidates[n] for n in experts], kind="shapley")
    split = search.select_on.value
    # the search's own points: this run's, or its soups the store holds (a sweep not finished shows those so far)
    searched = study.searched[1] if study.searched else search_soups(
        souper, search, split, study.by_own_score(experts), stored_only=True,
        known=study.expert_outcomes(experts, split) if search.per_example else None)
    for record in searched.records:  # (this run's sweep read them before the report began)
        products.use_record(study, record)
    # a halving search's pieces of points, stored so far
    pieces = (sum(1 for r in study.store if r["experts"] == experts and r["split"].startswith(f"{split}@"))
              if search.per_example else 0)
    evaluator = study.evaluator
    run = (searched.run.to_dict(search.grid_size(len(experts)) * len(souper.example_ids(split)))
           if searched.run and searched.complete else None)
    inputs = replace(
        inputs, categories=evaluator.categories, objective=study.objective, souper=souper, points=searched.records, pieces=pieces,
        search_run=run,
        candidate_souper=lambda: study.souper(list(candidates.values()), kind="shapley"),
        own=study.candidate_scores(), results=products.read_if_current(study, RESULTED, RESULTS),
        line_points=cfg.report.line_points)
    base = study.pool_base()
    if base is not None:  # its score is the empty coalition's value (cached since the soup stage)
        own = study.evaluate_pool([base])[split]
        vectors = candidates if cfg.report.task_vectors == Players.candidates else experts
        for n in vectors:
            study.use_model(candidates[n])
        inputs = replace(inputs, base_dir=model_dir(base), base_score=study.objective.of_row(own, base.name),
                         vector_dirs={n: model_dir(candidates[n]) for n in vectors})
    return write_report(compute(inputs))


def config_rows(cfg: DictConfig, objective_label: str | None) -> list[tuple[str, str]]:
    """The study's settings; `objective_label`: the objective's, None for a score table (no sweep:
    no search, objective or split to choose on)."""
    s = cfg.search
    rows = [("benchmark", cfg.benchmark.name), ("pool", cfg.pool.name), ("selection", _options(cfg.selection))]
    if objective_label is not None:
        rows += [("search", _options(s)), ("objective", objective_label), ("weights chosen on", str(s.select_on))]
    return rows + [("analysis", f"{cfg.analysis.method.value}, population {cfg.analysis.population.value}")]


def _options(node) -> str:
    d = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    name = d.pop("name")
    return name + (" (" + ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("objective", "select_on")) + ")" if d else "")


STAGE = Stage("report", report, reads=(ANALYZED, SELECTED), writes=(REPORTED,), consults=(RESULTED,))
