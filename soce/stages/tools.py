"""The tool stages, apart from a study's: merge (merge.models and merge.weights -> merge.output,
a model directory), zoo (build or verify the pool's model family) and plan (the sweep's memory
plan, from the models' configs alone)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from soce.artifacts import SELECTION
from soce.choices import EngineName
from soce.errors import ConfigError, config_group
from soce.pool import Candidate
from soce.progress import plural
from soce.stages import products
from soce.stages.products import SELECTED, Stage
from soce.stages.study import Study

log = logging.getLogger("soce")


def merge(study: Study) -> Path:
    from soce.merge import merge_to_disk  # torch: imported only by the stages that need it
    from soce.merge.linear import check_weights

    m = study.cfg.merge
    for key in ("models", "weights", "output"):
        if not m[key]:
            raise ConfigError(f"stage=merge needs merge.{key}, e.g. 'merge.models=[a,b]' 'merge.weights=[0.6,0.4]' merge.output=soup")
    check_weights(list(m.weights), len(m.models), m.normalize, group="merge")
    with config_group("merge"):
        output = merge_to_disk(
            list(m.models), list(m.weights), m.output, dtype=m.dtype and m.dtype.value, shard_size=m.shard_size,
            normalize=m.normalize, overwrite=m.overwrite, allow_nonfinite=m.allow_nonfinite,
            allow_vocab_mismatch=m.allow_vocab_mismatch, config_from=m.config_from, device=m.device)
    log.info("soup: %s (load it with AutoModelForCausalLM.from_pretrained; mergekit.yaml beside it)", output)
    study.tracker.log_summary({"merge/output": str(output), "merge/models": list(m.models), "merge/weights": list(m.weights)})
    return output


def zoo(study: Study) -> None:
    from soce.zoo.family import build_family

    if not study.cfg.pool.zoo:
        raise ConfigError("stage=zoo builds a model family: choose pool=toy_zoo (or toy_zoo_specialists, toy_zoo_micro)")
    family = build_family(study.cfg.pool.zoo, study.cache_dir)
    log.info("zoo %s: base and %d candidates in %s", family.spec.name, len(family.candidates), family.root)
    for name, path in family.candidates.items():
        log.info("  %s  %s", name, path)


def plan(study: Study):
    """The sweep's memory plan, printed and logged, from the models' configs alone (a Hub id's
    config.json, no weights): the selection's experts where the run directory has a current
    selection, else the pool's models (at most selection.max_experts)."""
    from soce.placement.devices import gb
    from soce.placement.plan import memory_plan, vllm_memory_plan

    cfg = study.cfg
    selection = products.read_if_current(study, SELECTED, SELECTION)
    pool = study.pool_refs()
    if selection is not None:
        known = {c.name: c.architecture for c in pool or ()}
        models = [Candidate(e["model"], e.get("hub_id"), e.get("path"), architecture=known.get(e["model"]))
                  for e in selection["experts"]]
        log.info("planning for the %s of %s", plural(len(models), "expert"), study.path(SELECTION))
    elif pool is None:
        raise ConfigError("stage=plan plans for the pool's models: choose a pool that names them "
                          "(pool.models with a hub_id or path each, or pool=toy_zoo)")
    else:
        log.info("no current selection.json in %s: planning for the pool's models", study.dir)
        n = min(len(pool), OmegaConf.select(cfg, "selection.max_experts") or len(pool))
        models = pool[:n]
        log.info("planning for %s (%s; selection.max_experts=K plans for K)",
                 plural(n, "expert"), "the whole pool" if n == len(pool) else f"the pool's first {n}")
    if cfg.sweep.engine == EngineName.vllm:
        result = vllm_memory_plan(cfg.sweep, models, planning=True)
        log.info("%s", result.text())
        study.tracker.log_table("vllm_plan", *result.table())
        return result
    result = memory_plan(cfg.sweep, models, planning=True)
    log.info("%s", result.text())
    study.tracker.log_table("memory_plan", *result.table())
    if pool and len(pool) > 1:
        everyone = memory_plan(cfg.sweep, pool, stream=True, planning=True)
        log.info("the uniform soup of all %d candidates streams from disk: at most %s per device%s", len(pool),
                 gb(max(sh.total for sh in everyone.shares)), "" if everyone.fits else " (does not fit)")
    return result


TOOLS = {s.name: s for s in (Stage("merge", merge), Stage("zoo", zoo), Stage("plan", plan))}
