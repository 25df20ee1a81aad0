"""The `soce` entrypoint: compose the config with Hydra, then run the stages in order."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from soce import config, stages
from soce.errors import SoceError
from soce.tracking import NoTracker, Tracker, WandbTracker

log = logging.getLogger("soce")

# conf/ sits beside the package (editable install): an absolute path, since Hydra resolves a
# relative one as a Python package when soce runs as an installed console script.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# stage=all runs these in order (a score table without an evaluator stops after select)
PIPELINE = {"analyze": stages.analyze, "select": stages.select, "sweep": stages.sweep, "soup": stages.soup, "report": stages.report}
TOOLS = {"merge": stages.merge, "zoo": stages.zoo}


class BelowWarning(logging.Filter):
    """Console: information to stdout, warnings and errors to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def make_tracker(cfg: DictConfig, run_dir: Path) -> Tracker:
    if cfg.tracker.name == "none" or int(os.environ.get("RANK", "0")) != 0:  # W&B from the main process only
        return NoTracker()
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return WandbTracker(
        project=cfg.tracker.project,
        entity=cfg.tracker.entity,
        mode=cfg.tracker.mode,
        group=cfg.tracker.group or cfg.study,
        name=f"{cfg.study}/{hc.job.num}" if multirun else None,
        config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        dir=run_dir,
        tags=list(cfg.tracker.tags),
        job_type=cfg.stage.value,
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="soce")
def run(cfg: DictConfig) -> None:
    try:
        config.validate(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        stage = cfg.stage.value
        todo = list(PIPELINE.values()) if stage == "all" else [{**PIPELINE, **TOOLS}[stage]]
        if stage == "all" and cfg.benchmark.kind == "table":
            todo = [stages.analyze, stages.select, stages.report]
            log.info("benchmark=%s is a score table: analysis, selection and report only (the sweep needs an evaluator)", cfg.benchmark.name)
        tracker = make_tracker(cfg, run_dir)
        try:
            for run_stage in todo:
                run_stage(stages.Run(cfg, run_dir, tracker))
        finally:
            tracker.finish()
        files = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                       if p.suffix in (".csv", ".json", ".png", ".jsonl", ".md") or p.name == "soup")
        if files:
            log.info("files: %s/ %s", run_dir, " ".join(files))
    except SoceError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("error: %s", err)
        sys.exit(1)


def main() -> None:
    config.register()
    run()


if __name__ == "__main__":
    main()
