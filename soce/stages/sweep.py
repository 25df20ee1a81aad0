"""sweep: selection.json and the experts -> sweep.jsonl (one record per soup): the registered
search strategy over the experts' weights, every soup it asks for from the store or souped in
place and evaluated now. A shard of a multirun (or a process of a launch) evaluates its share."""

from __future__ import annotations

import logging
import os

from soce.errors import config_group
from soce.progress import Progress, plural
from soce.stages import present
from soce.stages.products import SEARCHED, SELECTED, Stage
from soce.stages.select import experts as selected_experts
from soce.stages.study import Study

log = logging.getLogger("soce")


def sweep(study: Study):
    """The search over the selection's experts. Returns its SearchResult (for a shard's share,
    its best is None)."""
    from soce.placement.plan import memory_plan, sweep_devices
    from soce.store import SweepStore
    from soce.sweep import search_soups

    search = study.search
    experts = selected_experts(study)
    sweep_devices(study.cfg.sweep, study.device)  # a device this machine lacks: refused before any model is fetched
    candidates = study.candidates(experts)
    study.check_store(candidates)
    store = study.store
    plan = memory_plan(study.cfg.sweep, [candidates[n] for n in experts], device=study.device)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # the same plan on every process of a launch: printed once, by the main process's shard
    # (not again when it collects the shards' points, unsharded)
    if int(os.environ.get("RANK", "0")) == 0 and not (launched and study.shard == (0, 1)):
        log.info("%s", plan.text())
        study.tracker.log_table("memory_plan", *plan.table())
    souper = study.souper([candidates[n] for n in experts], plan=plan)
    split = search.select_on.value
    before = set(store.records)
    k, n = study.shard
    what = f"sweep ({search.name})" + (f" shard {k}/{n}" if n > 1 else "")
    with config_group("search"), Progress(search.expected(len(experts), study.shard), what,
                                          "example" if search.per_example else "point") as bar:
        souper.bar, souper.show_best = bar, True
        known = study.expert_outcomes(experts, split) if search.per_example else None
        done = search_soups(souper, search, split, study.by_own_score(experts), study.shard, known=known)
    souper.bar = None
    if done.run is not None and done.run.alive[0]:  # (a shard may have no point of the first rung)
        grid = search.grid_size(len(experts)) * len(souper.example_ids(split))
        log.info("%s: %s (%d evaluated now, %d from the store)", search.name, done.run.summary(grid),
                 souper.examples_evaluated, souper.examples_reused)
    if n > 1:
        log.info("sweep: shard %d of %d done: %s evaluated now, into %s", k, n,
                 plural(sum(SweepStore.record_key(r) not in before for r in store), "point"), store.path)
        return done
    already = sum(SweepStore.record_key(r) in before for r in done.records)
    best = done.best
    cached = f", {souper.from_cache} from the soups of earlier runs in {souper.cache.path.parent}" if souper.from_cache else ""
    log.info("sweep: %s on %s (%d already in the store%s), best %s %.4f at %s", plural(len(done.records), "point"), split,
             already, cached, study.objective.name, best["objective"], present.weights_text(experts, best["weights"]))
    study.tracker.log_table("sweep", [*experts, "objective", *study.evaluator.categories],
                            [[*r["weights"], r["objective"], *r["scores"].values()] for r in done.records])
    study.searched = souper, done
    return done


STAGE = Stage("sweep", sweep, reads=(SELECTED,), writes=(SEARCHED,))
