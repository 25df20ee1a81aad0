from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from soce import cli, config
from soce.tracking import RecordingTracker

ROOT = Path(__file__).resolve().parents[1]
BFCL_FIXTURE = ROOT / "tests" / "data" / "bfcl_overall_fixture.csv"
# the micro study: toy_fc's direct evaluator, 20 examples per category, the micro family, its top 3,
# the paper's grid (search.budget takes its first points)
MICRO_STUDY = ["benchmark=toy_fc", "benchmark.backend=direct", "benchmark.per_category=20", "pool=toy_zoo_micro",
               "selection=topk", "selection.k=3", "search=grid"]

config.register()


def compose_cfg(overrides=(), conf_dir=cli.CONF_DIR):
    """The config `soce OVERRIDES...` runs with, composed by Hydra's compose API."""
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose("soce", overrides=list(overrides))


@dataclass
class Study:
    dir: Path
    tracker: RecordingTracker
    log: str  # what the study printed (its INFO and WARNING lines)


@pytest.fixture
def study(tmp_path, caplog):
    """Run a study in this process, as `soce OVERRIDES... hydra.run.dir=RUN_DIR` would: the config
    composed by Hydra, the stages run by the entrypoint's own function, a recording tracker."""

    def run(*overrides: str, run_dir: Path | None = None) -> Study:
        caplog.set_level(logging.INFO, logger="soce")
        caplog.clear()
        return replace(run_study(overrides, Path(run_dir or tmp_path / "run")), log=caplog.text)

    return run


def own_soup_cache(overrides, where: Path) -> list[str]:
    """The overrides with a cache of soups of the test's own (`where`), unless they name one: the
    cross-run cache would otherwise carry soups from one test to the next."""
    overrides = list(overrides)
    return overrides if any(o.startswith("sweep.soup_cache=") for o in overrides) else [*overrides, f"sweep.soup_cache={where}"]


def run_study(overrides, run_dir: Path) -> Study:
    """The `study` fixture's run, for a fixture of wider scope (where caplog is not available):
    the study's soce log lines are collected by a handler of its own."""
    import io

    overrides = own_soup_cache(overrides, run_dir.parent / "soups")

    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s:%(message)s"))
    logger = logging.getLogger("soce")
    level, logger.level = logger.level, logging.INFO
    logger.addHandler(handler)
    try:
        tracker = RecordingTracker()
        cli.run_study(compose_cfg(overrides), run_dir, tracker=tracker, overrides=tuple(overrides))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert tracker.finished
    return Study(run_dir, tracker, text.getvalue())


@pytest.fixture
def soce(tmp_path):
    """Run the real CLI (`python -m soce ...`) in a subprocess, with W&B kept inside tmp_path.
    No timeout: a busy machine is slow, not wrong."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, preexec=None) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        environ.update(WANDB_CONFIG_DIR=str(tmp_path / ".wandb-config"), WANDB_CACHE_DIR=str(tmp_path / ".wandb-cache"))
        environ.update(env or {})
        return subprocess.run([sys.executable, "-m", "soce", *own_soup_cache(args, tmp_path / "soups")], cwd=cwd or tmp_path,
                              env=environ, capture_output=True, text=True, preexec_fn=preexec)

    return run


def accelerate_launch(args: list[str], cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch -m soce ...` with `processes` processes. On a machine without a GPU,
    --multi_gpu is what starts several processes (through torchrun); soce then joins them over
    gloo on the CPU. (--cpu starts a single process.)"""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    with socket.socket() as s:  # a port of its own: launches in parallel test workers never meet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
         "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "soce", *own_soup_cache(args, cwd / "soups")],
        capture_output=True, text=True, env=env, cwd=cwd,
    )


def sweep_record(weights, objective: float = 0.0, split: str = "dev", experts=("a", "b"), **fields) -> dict:
    """A whole sweep record as the store keeps one (one category 'x' scored `objective`)."""
    return {"kind": "sweep", "experts": list(experts), "weights": list(weights), "split": split, "question": {},
            "scores": {"x": objective}, "objective": objective, "correct": "10", "merge_s": 0.0, "eval_s": 0.0, **fields}


def one_error_line(r: subprocess.CompletedProcess, code: int = 1) -> str:
    """The CLI failed (exit `code`) with one 'error:' line and no traceback; returns that line."""
    assert r.returncode == code, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr[-2000:]
    return errors[0]


def copied_micro_pool(zoo_cache: Path, where: Path) -> tuple[dict[str, Path], list[str]]:
    """The micro family's candidates copied under `where` (models a test may rewrite), and the
    overrides that make them the pool."""
    import shutil

    from soce.zoo.family import build_family

    family = build_family("micro", zoo_cache / "zoo", progress=False)
    copies = {n: Path(shutil.copytree(p, where / n)) for n, p in family.candidates.items()}
    models = ",".join(f"{{name: {n}, path: '{p}'}}" for n, p in copies.items())
    return copies, ["pool=all", f"pool.models=[{models}]"]


def write_csv(path: Path, text: str) -> Path:
    path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")
    return path


# Where the tests keep the micro family between sessions: its directory is named by the family's
# spec and the code that trains it (FamilySpec.key), so a change to either builds it anew.
TEST_CACHE = Path(os.environ.get("SOCE_TEST_CACHE", Path.home() / ".cache" / "soce-tests"))


def build_shared_family(root: Path = TEST_CACHE) -> Path:
    """The micro family under `root`, built once by the command line as a user would (`soce
    stage=zoo`; the build's log is `build/soce.log`) and kept for later sessions: whoever takes the
    file lock first builds it, the others wait and find it built."""
    import fcntl

    from soce.zoo.family import FAMILIES

    built = root / f"shared-{FAMILIES['micro'].key()}"
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{built.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (built / "built").exists():
            environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
            r = subprocess.run([sys.executable, "-m", "soce", "stage=zoo", "pool=toy_zoo_micro", f"pool.cache_dir={built}",
                                "tracker=none", f"hydra.run.dir={built / 'build'}"], env=environ, capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            (built / "built").touch()
    return built


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory) -> Path:
    """A cache holding the micro model family (about a minute to build the first time, then kept in
    $SOCE_TEST_CACHE, default ~/.cache/soce-tests; under pytest-xdist, the first worker that needs
    it builds it). Each worker's cache links to the shared models and build log, and keeps its
    evaluations to itself (tests rewrite them)."""
    built = build_shared_family()
    cache = tmp_path_factory.mktemp("soce-cache")
    for part in ("zoo", "build"):
        (cache / part).symlink_to(built / part, target_is_directory=True)
    return cache
