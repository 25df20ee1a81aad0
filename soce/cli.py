"""The `soce` entrypoint: compose the config with Hydra, then run the stages in order."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from soce import config
from soce.processes import Processes
from soce.errors import ConfigError, SoceError
from soce.stages.runner import STAGES, TOOLS, asked_for, ready, run_stage
from soce.stages.soup import publish
from soce.stages.study import Study
from soce.tracking import NoTracker, Tracker

log = logging.getLogger("soce")

# The configs ship inside the package (soce/conf), found through this file wherever soce is
# installed: an absolute path, never the working directory.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")


class BelowWarning(logging.Filter):
    """Console: information to stdout, warnings and errors to stderr."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def make_tracker(cfg: DictConfig, run_dir: Path, name: str | None = None) -> Tracker:
    """The tracker `tracker` names; from the main process only (every other: none)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return NoTracker()
    # the study's settings, without Hydra's own (a multirun's end has no job number to resolve)
    settings = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True,
                                      enum_to_str=True)
    return OmegaConf.to_object(cfg.tracker).tracker(study=cfg.study, name=name, settings=settings, run_dir=run_dir,
                                                    job_type=cfg.stage.value)


class Terminated(BaseException):
    """SIGTERM (a scheduler's time limit, `kill`): raised where the run is, so that what is
    unfinished is cleaned up (a merge's partial soup, its lock) and what is finished is kept."""


def _terminate(signum, frame) -> None:
    raise Terminated()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="soce")
def run(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    with guarded():
        # a multirun's job is reproduced by its own overrides (a shard's by the multirun: its collect step's card)
        run_study(cfg, Path(hc.runtime.output_dir), job=hc.job.num if hc.mode == RunMode.MULTIRUN else None,
                  overrides=tuple(hc.overrides.task))


@contextmanager
def guarded():
    """What goes wrong in a run, as one `error:` line and exit 1 (SIGTERM: 143): soce's own
    errors, the file system's (a full disk, a read-only directory, a file-size limit), SIGTERM."""
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except SoceError as err:
        fail(err)
    except OSError as err:
        fail(file_system_error(err))
    except (Terminated, KeyboardInterrupt) as err:
        name, code = ("SIGTERM", signal.SIGTERM) if isinstance(err, Terminated) else ("Ctrl-C (SIGINT)", signal.SIGINT)
        log.error("error: stopped by %s: every finished result is kept (the sweep's points are in its store and it "
                  "resumes where it stopped; an unfinished soup was removed). Run the same command again to go on", name)
        sys.exit(128 + code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# What fixes a file that cannot be written; "the same command resumes" only where it does (space
# freed, a limit raised), not where another command is needed (another directory)
_WRITE_ELSEWHERE = "choose a directory you can write (hydra.run.dir, sweep.store, pool.cache_dir)"
_FREE_SPACE = ("free some space (then the same command resumes), or write elsewhere (hydra.run.dir, sweep.store, "
               "pool.cache_dir)")
_FS_FIXES = {errno.ENOSPC: _FREE_SPACE, errno.EDQUOT: _FREE_SPACE,
             errno.EFBIG: "a file-size limit (ulimit -f) stops it: raise the limit, and the same command resumes",
             errno.EROFS: _WRITE_ELSEWHERE, errno.EACCES: _WRITE_ELSEWHERE, errno.EPERM: _WRITE_ELSEWHERE}


def file_system_error(err: OSError) -> SoceError:
    """One sentence for a file that cannot be written or read: the file, the cause, the fix; "the
    same command resumes" only where it does."""
    fix = _FS_FIXES.get(err.errno or 0, "move or remove what is in the way, or choose another directory")
    where = err.filename or "a file"
    return SoceError(f"{where}: {err.strerror or err}: {fix}; every result finished before it is kept")


def run_study(cfg: DictConfig, run_dir: Path, job: int | None = None, tracker: Tracker | None = None,
              overrides: tuple[str, ...] | None = None) -> Path:
    """The stages `cfg.stage` asks for, in `run_dir` (Hydra's output directory; `job`: the job's
    number in a multirun; `overrides`: what it was started with, for the command that reproduces
    it). Returns the run directory (under accelerate, the main process's)."""
    config.validate(cfg)
    processes = Processes()
    if processes.count > 1 and cfg.stage.value in ("all", "sweep") and not OmegaConf.to_object(cfg.search).shardable:
        raise ConfigError(f"search={cfg.search.name} chooses each point from the scores before it: {processes.count} processes "
                          "cannot split it; under `accelerate launch` use search=grid or search=random (their points are "
                          "known ahead), or run one process")
    if processes.count > 1:
        run_dir = processes.main_process_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    shard_job = cfg.sweep.shard is not None
    # The shards of a multirun share one store: the sweep directory above the jobs' directories.
    store_dir = Path(cfg.sweep.store) if cfg.sweep.store else (run_dir.parent if shard_job and job is not None else run_dir)
    study = Study(cfg, run_dir, NoTracker(), store_dir, overrides=overrides)
    if study.benchmark.evaluates and cfg.stage.value not in TOOLS:
        study.evaluator  # its tasks, metric and data checked before a W&B run opens
    study.tracker = tracker = tracker or make_tracker(cfg, run_dir, None if job is None else f"{cfg.study}/{job}")
    try:
        todo = asked_for(study)
        if STAGES["sweep"] in todo and (shard_job or processes.count > 1):
            run_sharded(study, todo, processes, in_multirun=job is not None)
        else:
            for stage in todo:
                run_stage(study, stage)
        if STAGES["soup"] in todo and cfg.sweep.shard is None and processes.is_main:
            publish(study)  # after the report: a failed upload costs no product
    finally:
        study.close()
        where = tracker.where()
        tracker.finish()
    if processes.is_main:
        print_files(run_dir)
        if where:
            log.info("%s", where)
    return run_dir


def run_sharded(study: Study, todo: list, processes: Processes, in_multirun: bool = False) -> None:
    """The stages before the sweep on the main process; the sweep's points split over this job's
    shard and the processes; then, unless this is one shard of a multirun, the stages after it
    on the main process."""
    cfg = study.cfg
    sweep = STAGES["sweep"]
    i = todo.index(sweep)
    k, n = (cfg.sweep.shard, cfg.sweep.num_shards) if cfg.sweep.shard is not None else (0, 1)
    if processes.is_main:
        for stage in todo[:i]:
            run_stage(study, stage)
        ready(study, sweep)  # stage=sweep: the analysis and selection it needs, made here once
    processes.wait()
    # shard k of n, process r of w: points k + n*r, k + n*r + n*w, ...
    sharded = study.share((k + n * processes.rank, n * processes.count), processes.device)
    sweep.run(sharded)
    sharded.close()
    processes.wait()
    if cfg.sweep.shard is not None:
        if processes.is_main:
            log.info("%s", shard_done(study, k, n, in_multirun))
        return
    if processes.is_main:
        for stage in todo[i:]:  # the sweep again, unsharded: it finds every point in the store
            run_stage(study, stage)


def shard_done(study: Study, k: int, n: int, in_multirun: bool) -> str:
    """What to run once shard k of n is done: the other shards into the same store, then the
    collect step, the same overrides without sweep.shard (it evaluates only what no shard left)."""
    from soce.card import command_line

    store = study.store_dir.resolve()
    if in_multirun:
        return (f"shard {k} of {n} is done, its points in {store}: the collect step at the multirun's end runs the soup and "
                f"the report (sweep.collect=true)")
    given = [o for o in (study.overrides or ()) if not o.lstrip("+~").startswith(("sweep.shard=", "sweep.store=",
                                                                                   "hydra.run.dir="))]
    given = [*given, f"sweep.store={store}"]
    collect = [o for o in given if not o.startswith("stage=")]  # every stage: the soup and the report too
    others = ", ".join(str(j) for j in range(n) if j != k)
    return (f"shard {k} of {n} is done, its points in {store}. The other shards ({others}): "
            f"`{command_line([*given, 'sweep.shard=J'])}`; then the collect step (the soup and the report; it evaluates "
            f"whatever no shard did): `{command_line(collect)}`")


class CollectShards(Callback):
    """At the end of a sharded multirun (sweep.num_shards > 1): the sweep again over the shared
    store (it evaluates only points a failed shard left out), then the soup and the report, in
    the multirun's sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if config.sweep.num_shards <= 1 or not config.sweep.collect or not OmegaConf.to_object(config.benchmark).evaluates:
            return
        cfg = config  # the multirun's config, without the swept sweep.shard: the unsharded study
        # the results go to this multirun's directory; the store may be shared with other studies (sweep.store)
        out_dir = Path(str(config.hydra.sweep.dir))
        store_dir = Path(config.sweep.store or out_dir)
        log.info("collecting the %d shards of %s in %s", config.sweep.num_shards, store_dir, out_dir)
        tracker = make_tracker(cfg, out_dir, f"{cfg.study}/collect")
        # the multirun's own command reproduces the study: its shards and this collect step
        given = [*config.hydra.overrides.task, *(o for o in config.hydra.overrides.hydra  # (into a directory of its own)
                                                  if not o.startswith(("hydra.mode=", "hydra.sweep.dir=", "hydra.run.dir=")))]
        study = Study(cfg, out_dir, tracker, store_dir, overrides=tuple(given), multirun=True)
        try:
            with guarded():
                for name in ("sweep", "soup", "report"):
                    run_stage(study, STAGES[name])
                print_files(out_dir)
        finally:
            study.close()
            tracker.finish()


class JobsTable(Callback):
    """At the end of a multirun that is not one sharded study: one table across its jobs, the
    overrides they differ by beside what each found (jobs.md and jobs.csv in its directory)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if config.sweep.num_shards > 1:
            return  # one study in shards: the collect step's results are its table
        from soce.stages.present import write_jobs_table

        write_jobs_table(Path(str(config.hydra.sweep.dir)))


class CheckOutputDir(Callback):
    """Before Hydra makes the run's (or multirun's) directory: one line naming it and the fix
    where it cannot be written, instead of Hydra's traceback."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _writable(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _writable(str(config.hydra.sweep.dir), "hydra.sweep.dir")


def _writable(directory: str, key: str) -> None:
    import tempfile

    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".soce-write-check"):
            pass
    except OSError as err:
        print(f"error: the run directory {directory} cannot be written ({err.strerror or err}): choose another with "
              f"{key}=...", file=sys.stderr)
        sys.exit(1)


def print_files(run_dir: Path) -> None:
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                   if p.suffix in (".csv", ".json", ".png", ".jsonl", ".md") or p.name == "soup")
    if files:
        log.info("files: %s/ %s", run_dir, " ".join(files))


def fail(err: SoceError) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    log.error("error: %s", err)
    sys.exit(1)


def check_override_keys(argv: list[str]) -> None:
    """`soce a.b=v` where the composed config has no `a.b`: soce's own error, naming the closest
    key, before Hydra's hint to add it with '+' (which soce would then refuse: nothing reads it).
    Where the group choices themselves do not compose, Hydra is left to say why."""
    import dataclasses

    from hydra import compose, initialize_config_dir

    from soce.scores import closest

    if any(t.startswith(("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")) for t in argv):
        return  # configs of the user's own: Hydra composes them, and says what is wrong
    pairs = [t.split("=", 1) for t in argv if "=" in t and not t.startswith(("-", "+", "~", "hydra.", "hydra/"))]
    dotted = [k for k, _ in pairs if "." in k]
    if not dotted:
        return
    choices = [f"{k}={v.split(',')[0]}" for k, v in pairs if "." not in k]  # a multirun's first choice of each group
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("soce", overrides=choices)
    except Exception:  # noqa: BLE001 - a bad group choice: Hydra's own message says which
        return
    for key in dotted:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)) and leaf not in node.keys():
            raise ConfigError(f"{key} is not a setting of soce{closest(leaf, list(node.keys()))}: `soce --cfg job` lists "
                              f"every setting ({parent} has {', '.join(map(str, node.keys()))})")


def main() -> None:
    config.register()
    try:
        check_override_keys(sys.argv[1:])
    except SoceError as err:
        fail(err)
    run()


if __name__ == "__main__":
    main()
