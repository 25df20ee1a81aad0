"""soup: the search's soups -> results.json (the baselines and the searched soup, on dev and
test, with intervals where the scores have per-example outcomes) and soup/ (a model directory)."""

from __future__ import annotations

import logging

from soce import artifacts
from soce.artifacts import RESULTS, SELECTION, SOUP
from soce.card import Ingredient, command_of, local_source, model_card, push
from soce.pool import model_dir
from soce.progress import plural
from soce.scores import ScoreTable
from soce.stages import present, products
from soce.stages.products import RESULTED, SEARCHED, SELECTED, Stage
from soce.stages.select import experts as selected_experts
from soce.stages.study import Study

log = logging.getLogger("soce")


def soup(study: Study) -> dict:
    from soce.merge import merge_to_disk
    from soce.significance import add_statistics
    from soce.sweep import solved_by_id
    from soce.weights import uniform

    search, selection = study.search, study.selection
    split, objective = search.select_on.value, study.objective
    experts = selected_experts(study)
    candidates = study.candidates()
    study.check_store(candidates)
    souper, searched = study.searched
    best = searched.best
    cached_before = souper.from_cache
    # the whole pool's uniform soup streams from disk: never every candidate in memory at once
    everyone = study.souper(list(candidates.values()), kind="uniform_all", stream=True)
    tables = study.candidate_scores()
    single = max(tables["dev"].models, key=lambda m: tables["dev"].overall_of(m))

    correct: dict[str, dict[str, dict[str, bool]]] = {s: {} for s in tables}  # split -> row -> example -> solved

    def own_row(role: str, name: str, model: str, scores: dict[str, ScoreTable]) -> dict:
        for s, t in scores.items():
            correct[s][role] = solved_of(t, model)
        return {"role": role, "name": name, "models": [model], "weights": [1.0],
                **{s: {"objective": objective.of_row(t, model), "scores": t.row(model)} for s, t in scores.items()}}

    base = study.pool_base()  # the model the candidates were fine-tuned from, where the pool knows it
    rows = [own_row("base", "base model", base.name, study.evaluate_pool([base]))] if base else []
    rows.append(own_row("single", "best single candidate", single, tables))
    for role, name, sp, weights in (("uniform_all", "uniform soup, all candidates", everyone, uniform(len(candidates))),
                                    ("uniform_experts", f"uniform soup, {selection.experts_label}", souper, uniform(len(experts))),
                                    ("searched", f"{selection.searched_label} ({search.name} search)", souper, tuple(best["weights"]))):
        records = {s: sp.evaluate(weights, s) for s in tables}
        for s, r in records.items():
            correct[s][role] = solved_by_id(r["correct"], [o.example_id for o in tables[s].outcomes if o.model == single])
        rows.append({"role": role, "name": name, "models": sp.names, "weights": list(weights),
                     **{s: {"objective": r["objective"], "scores": r["scores"]} for s, r in records.items()}})
    if "test" not in tables:
        protocol = (f"one split: weights chosen and reported on {split} (the paper's protocol): "
                    "the searched soup's score is optimistic")
    elif split == "dev":
        protocol = "weights chosen on dev, reported on test"
    else:
        protocol = "weights chosen on TEST, the split reported (the paper's protocol): test scores are optimistic"
    results = {"protocol": protocol, "objective": objective.name, "objective_label": objective.label, "search": search.name,
               "select_on": split, "rows": rows,
               # every candidate's own objective (on a split other than select_on: shown, never used for a choice)
               "candidates": {s: {m: objective.of_row(t, m) for m in t.models} for s, t in tables.items()}}
    if searched.run is not None:  # what a search over subsets of the examples spent, against the grid
        results["search_run"] = searched.run.to_dict(search.grid_size(len(experts)) * len(souper.example_ids(split)))
    if all(t.outcomes for t in tables.values()):
        b = study.cfg.report.bootstrap
        add_statistics(results, objective, correct, {s: {o.example_id: o.category for o in t.outcomes if o.model == single}
                                          for s, t in tables.items()},
                       {s: {e: solved_of(t, e) for e in experts} for s, t in tables.items()}, b.samples, b.confidence, b.seed)
    else:
        log.info("the candidates' scores have no per-example outcomes: the results have no intervals")
    artifacts.write_json(study.path(RESULTS), results)

    for n in experts:  # the soup's weights come from their files
        study.use_model(candidates[n])
    paths = [model_dir(candidates[n]) for n in experts]
    ids = [candidates[n].hub_id or candidates[n].path for n in experts]
    merge_to_disk(paths, best["weights"], study.path(SOUP), model_ids=ids, overwrite=True, progress=False,
                  all_processes=False)  # the soup stage runs on the main process alone
    write_card(study, results, [Ingredient(n, candidates[n].hub_id or local_source(candidates[n].path, study.dir), candidates[n].hub_id, w)
                                for n, w in zip(experts, best["weights"])])
    reused = souper.from_cache - cached_before + everyone.from_cache
    if reused:
        log.info("soup: %s found in the soups of earlier runs (%s), not evaluated again", plural(reused, "soup"),
                 souper.cache.path.parent)
    present.print_results(results)
    log.info("soup: %s (%s)", study.path(SOUP), present.weights_text(experts, best["weights"]))
    present.track_results(study.tracker, results, study.path(SOUP))
    return results


def publish(study: Study) -> None:
    """soup.push_to_hub: the soup uploaded after every stage asked for (the report included), so
    that a failed upload costs no product: each is recorded and kept, and the error says how to
    upload soup/ later."""
    if study.cfg.soup.push_to_hub:
        push(study.path(SOUP), study.cfg.soup.push_to_hub, study.cfg.soup.private)


def write_card(study: Study, results: dict, ingredients: list[Ingredient]) -> None:
    """soup/README.md: the soup's model card, with the command that reproduces the study."""
    cfg = study.cfg
    groups = [f"{g}={cfg[g].name}" for g in ("benchmark", "pool", "selection", "search")]
    selection = products.read_json(study, SELECTION)
    text = model_card(study=cfg.study, benchmark=cfg.benchmark.name, results=results, selection=selection,
                      ingredients=ingredients, command=study.command or command_of(study.dir, groups))
    (study.path(SOUP) / "README.md").write_text(text)


def solved_of(table: ScoreTable, model: str) -> dict[str, bool]:
    """A model's per-example outcomes in a score table: example id -> solved."""
    return {o.example_id: o.correct for o in table.outcomes if o.model == model}


STAGE = Stage("soup", soup, reads=(SELECTED, SEARCHED), writes=(RESULTED,))
