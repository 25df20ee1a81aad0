"""Runs the stages a study asks for, in order; a stage's inputs (what it `reads`) that are
missing or made with other settings are made first by the stage that writes them."""

from __future__ import annotations

import logging

from soce.stages import analyze, report, select, soup, sweep
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
        if not product.current(study):
            producer = PRODUCERS[product]
            log.info("running stage %s (%s reads %s)", producer.name, stage.name, product.name)
            run_stage(study, producer)


def run_stage(study: Study, stage: Stage):
    ready(study, stage)
    return stage.run(study)
