"""Sharded sweeps: Hydra multirun with the basic, joblib and submitit_local launchers, a
2-process `accelerate launch`, and what goes wrong with shards; all give the unsharded result."""

import json
import re
from pathlib import Path

import pytest

from conftest import MICRO_STUDY, accelerate_launch, compose_cfg
from soce.cli import run_study
from soce.errors import SoceError
from soce.weights import dirichlet

STUDY = [*MICRO_STUDY, "search.budget=7", "tracker=none"]


def points(directory):
    """Every stored sweep point of a store directory, by its weights."""
    out = {}
    for path in sorted(directory.glob("sweep*.jsonl")):
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["kind"] == "sweep":
                out[tuple(r["weights"]), r["split"]] = r["scores"]
    return out


@pytest.fixture(scope="module")
def unsharded(zoo_cache, tmp_path_factory):
    """The study run in one job, one process (in this one): the result every sharded run must give."""
    run = tmp_path_factory.mktemp("unsharded") / "run"
    run_study(compose_cfg([*STUDY, f"pool.cache_dir={zoo_cache}"]), run)
    return run


def assert_same_study(run, reference):
    assert json.loads((run / "results.json").read_text())["rows"] == json.loads((reference / "results.json").read_text())["rows"]
    assert points(run) == points(reference)
    assert (run / "report.md").exists()


@pytest.mark.slow  # three Hydra jobs and the collect step (20-25 s each launcher); make test shards in the dead-shard test
@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_a_three_shard_multirun_gives_the_unsharded_study(soce, zoo_cache, tmp_path, unsharded, launcher):
    sweep_dir = tmp_path / "multirun"
    r = soce("-m", f"hydra/launcher={launcher}", *STUDY, f"pool.cache_dir={zoo_cache}", "sweep.shard=range(0,3)",
             "sweep.num_shards=3", f"hydra.sweep.dir={sweep_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    shards = {k: [json.loads(line) for line in (sweep_dir / f"sweep.shard-{k}-of-3.jsonl").read_text().splitlines()] for k in range(3)}
    assert [len(s) for s in shards.values()] == [3, 2, 2]  # points 0,3,6 / 1,4 / 2,5 of the 7
    assert "7 points on dev (7 already in the store)" in r.stdout + r.stderr  # the collect step evaluated no point again
    assert_same_study(sweep_dir, unsharded)


@pytest.mark.slow
def test_two_accelerate_processes_give_the_unsharded_study(zoo_cache, tmp_path, unsharded):
    run = tmp_path / "run"
    r = accelerate_launch([*STUDY, f"pool.cache_dir={zoo_cache}", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shard 0 of 2 done: 4 points" in r.stdout and "shard 1 of 2 done: 3 points" in r.stdout
    assert sorted(p.name for p in run.glob("sweep*.jsonl")) == ["sweep.jsonl", "sweep.shard-0-of-2.jsonl", "sweep.shard-1-of-2.jsonl"]
    assert [d for d in tmp_path.iterdir() if d.name not in ("run", "soups")] == []  # one run directory for both processes
    assert_same_study(run, unsharded)
    log = (run / "soce.log").read_text()  # no terminal: the long steps write progress lines
    assert re.search(r"sweep \(grid\) shard 0/2: done, 4/4 points in [\d.]+ s", log)
    assert "sweep (grid): done, 7/7 points, all found in the store" in log  # the collect step evaluated none again
    assert re.search(r"report: coalition soups: done, 4/4 soups in", log)


def test_a_shard_index_outside_the_range_is_refused(study):
    with pytest.raises(SoceError, match=re.escape("sweep.shard=3 is outside [0, 3)")):
        study("sweep.shard=3", "sweep.num_shards=3")


def test_a_dead_shard_is_finished_by_the_collect_step_and_bad_reruns_are_refused(study, zoo_cache, tmp_path, unsharded):
    store = tmp_path / "store"
    args = [*STUDY, f"pool.cache_dir={zoo_cache}", f"sweep.store={store}", "sweep.num_shards=3"]
    for k in (0, 1):  # shard 2 never ran (its job died)
        study(*args, f"sweep.shard={k}", "stage=sweep", run_dir=tmp_path / f"job{k}")
    # shard 1 died mid-write: its last point is torn
    shard1 = store / "sweep.shard-1-of-3.jsonl"
    shard1.write_text(shard1.read_text()[:-20])
    with pytest.raises(SoceError, match="holds the shards of a sweep split 3 ways.*sweep.num_shards=3"):
        study(*args[:-1], "sweep.num_shards=2", "sweep.shard=0", "stage=sweep", run_dir=tmp_path / "other")
    r = study(*args, "sweep.shard=1", "stage=sweep", run_dir=tmp_path / "job1")  # re-run shard 1: it resumes
    assert "1 point evaluated now" in r.log
    # the collect step: the store directory as run directory, unsharded; it evaluates shard 2's points itself
    r = study(*STUDY, f"pool.cache_dir={zoo_cache}", run_dir=store)
    assert "7 points on dev (5 already in the store)" in r.log
    assert_same_study(store, unsharded)


def test_two_jobs_cannot_write_one_shard(tmp_path):
    from soce.store import SweepStore

    first = SweepStore(tmp_path, 0, 2)
    with pytest.raises(SoceError, match="being written by another process"):
        SweepStore(tmp_path, 0, 2)
    first.close()
    SweepStore(tmp_path, 0, 2)  # once the first job is gone, the shard can be run again (and resumes)


def test_sequential_searches_cannot_be_sharded(study, zoo_cache):
    with pytest.raises(SoceError, match="search=greedy chooses each point from the scores before it"):
        study(*[a for a in STUDY if a != "search.budget=7"], "search=greedy", f"pool.cache_dir={zoo_cache}", "sweep.shard=0",
              "sweep.num_shards=2", "stage=sweep")


# --- real studies as configs ----------------------------------------------------------------------
@pytest.mark.parametrize("size, first", [("70b", "CoALM-70B"), ("8b", "ToolACE-2-8B (FC)")])
def test_the_paper_experiments_compose_select_and_stop_at_the_first_missing_model(study, tmp_path, monkeypatch, size, first):
    """As `soce experiment=paper_bfcl_SIZE` runs, in this process, offline (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants

    from conftest import BFCL_FIXTURE

    from soce import config
    from soce.errors import CheckpointError

    cfg = compose_cfg([f"experiment=paper_bfcl_{size}", f"benchmark.table={BFCL_FIXTURE}"])
    config.validate(cfg)
    assert cfg.pool.name == f"bfcl_v3_{size}" and all(m.hub_id for m in cfg.pool.models)
    assert (cfg.search.name, cfg.search.lo, cfg.search.hi, cfg.search.step) == ("grid", 0.1, 0.9, 0.1)
    assert cfg.benchmark.kind == "bfcl" and cfg.benchmark.categories is None  # all 14 leaderboard columns
    assert cfg.benchmark.split.value == "none"  # the paper's protocol: one split

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    # sweep.device=cpu: on this machine the experiment's cuda is refused before any model is fetched
    # (test_plan's 70B test shows it)
    with pytest.raises(CheckpointError, match=rf"pool model {re.escape(repr(first))}: cannot fetch .*set its path in the pool config"):
        study(f"experiment=paper_bfcl_{size}", f"benchmark.table={BFCL_FIXTURE}", "tracker=none", "sweep.device=cpu")
    assert json.loads((tmp_path / "run" / "selection.json").read_text())["experts"][0]["model"] == first  # selected on the table


def test_mgsm_has_one_category_per_language_and_lm_eval_knows_its_tasks():
    from soce.stages.study import Study
    from soce.tracking import NoTracker

    evaluator = Study(compose_cfg(["benchmark=mgsm"]), Path("."), NoTracker()).evaluator  # lm-eval's TaskManager checks every task name
    assert evaluator.categories == ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
    assert evaluator.tasks["dev"]["sw"] == "mgsm_direct_sw" and evaluator.splits == ("dev",)


@pytest.mark.slow
def test_two_accelerate_processes_with_the_default_evaluator(zoo_cache, tmp_path):
    """lm-eval through `accelerate launch`: each process evaluates its own points as a single
    process (lm-eval would return nothing on rank 1), and `stage=sweep` on a fresh run directory
    runs the analysis and selection once, on the main process."""
    study = ["benchmark.per_category=10", "pool=toy_zoo_micro", "selection=topk", "selection.k=3", "search.budget=5",
             "tracker=none", f"pool.cache_dir={zoo_cache}"]
    run = tmp_path / "run"
    # the default search chooses each point from the last: refused before anything is evaluated, with the fix
    r = accelerate_launch([*study, "stage=sweep", f"hydra.run.dir={tmp_path / 'refused'}"], cwd=tmp_path)
    assert r.returncode != 0 and "search=surrogate chooses each point from the scores before it: 2 processes" in r.stderr
    assert "use search=grid or search=random" in r.stderr and "analysis:" not in r.stdout
    study.append("search=grid")
    r = accelerate_launch([*study, "stage=sweep", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("analysis: pearson correlation") == 1 and r.stdout.count("selection: topk") == 1
    assert "shard 0 of 2 done: 3 points" in r.stdout and "shard 1 of 2 done: 2 points" in r.stdout
    assert r.stdout.count("memory plan:") == 1 and "mode: one copy per process, 2 processes" in r.stdout
    alone = tmp_path / "alone"
    run_study(compose_cfg([*study, "stage=sweep"]), alone)
    assert points(run) == points(alone) and len(points(alone)) == 5


@pytest.mark.slow
def test_two_multiruns_sharing_a_store_keep_their_own_results(soce, zoo_cache, tmp_path):
    """A second study (another search) on the store of a first: it reuses the soups both ask for,
    writes its results into its own multirun's directory, and takes its soup from its own points."""
    store = tmp_path / "store"
    runs = {}
    for name, search in (("grid", ["search.budget=7"]), ("random", ["search=random", "search.budget=3"])):
        runs[name] = tmp_path / name
        r = soce("-m", *STUDY, *search, f"pool.cache_dir={zoo_cache}", f"sweep.store={store}", "sweep.shard=range(0,2)",
                 "sweep.num_shards=2", f"hydra.sweep.dir={runs[name]}")
        assert r.returncode == 0, r.stderr[-3000:]
        if name == "grid":
            first = (runs["grid"] / "results.json").read_text()
    assert (runs["grid"] / "results.json").read_text() == first and not (store / "results.json").exists()
    results = json.loads((runs["random"] / "results.json").read_text())
    asked = [list(w) for w in [(1 / 3, 1 / 3, 1 / 3), *dirichlet(3, 3, 1.0, 0)][:3]]  # random's own points
    assert results["search"] == "random" and any(results["rows"][-1]["weights"] == pytest.approx(w) for w in asked)
