"""Runs the stages a study asks for, in order; a stage's inputs (what it `reads`) that are
missing or stale (soce.stages.products: other settings, or made from other inputs) are made
first by the stage that writes them."""

from __future__ import annotations

import logging

from soce.stages import analyze, products, report, select, soup, sweep
from soce.stages.products import Stage
from soce.stages.study import Study
from soce.stages.tools import TOOLS

log = logging.getLogger("soce")

PIPELINE: dict[str, Stage] = {s.name: s for s in (analyze.STAGE, select.STAGE, sweep.STAGE, soup.STAGE, report.STAGE)}
STAGES: dict[str, Stage] = {**PIPELINE, **TOOLS}
PRODUCERS = {product: stage for stage in PIPELINE.values() for product in stage.writes}


def asked_for(study: Study) -> list[Stage]:
    """The stages `stage` asks for, in order (a score table without an evaluator: analysis,
    selection and report)."""
    stage = study.cfg.stage.value
    if stage != "all":
        return [STAGES[stage]]
    if not study.benchmark.evaluates:
        log.info("benchmark=%s is a score table: analysis, selection and report only (the sweep needs an evaluator)",
                 study.benchmark.name)
        return [PIPELINE[name] for name in ("analyze", "select", "report")]
    return list(PIPELINE.values())


def ready(study: Study, stage: Stage) -> None:
    """Make every product `stage` reads current: its producer runs where it is not."""
    for product in stage.reads:
        why = product.stale(study)
        if why:
            producer = PRODUCERS[product]
            log.info("%s %s: stage %s makes %s (stage %s reads %s)", product.label, "; ".join(why[:3]), producer.name,
                     "them" if product.plural else "it", stage.name, "them" if product.plural else "it")
            run_stage(study, producer)


def run_stage(study: Study, stage: Stage):
    ready(study, stage)
    with products.making(study, stage):
        return stage.run(study)
