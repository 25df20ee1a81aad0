"""search=halving and search=race: nested stratified subsets, no example of a point evaluated
twice, the pipeline's store (pieces, full records, resume after kill -9, shards)."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from conftest import MICRO_STUDY
from soce.errors import ConfigError
from soce.halving import nested_subsets, rung_sizes, successive_halving

STUDY = [*MICRO_STUDY, "tracker=none"]


def test_subsets_are_nested_stratified_and_seeded():
    examples = [(f"{c}-{i}", c) for c, n in (("a", 30), ("b", 60), ("c", 90)) for i in range(n)]
    sizes = rung_sizes(len(examples), 3, 12)
    assert sizes == [12, 36, 108, 180]
    subsets = nested_subsets(examples, sizes, seed=1)
    for small, big in zip(subsets, subsets[1:]):
        assert set(small) < set(big)
    for subset, m in zip(subsets, sizes):
        counts = Counter(i.split("-")[0] for i in subset)
        assert counts == {"a": round(m / 6), "b": round(m / 3), "c": round(m / 2)}  # in proportion: 1/6, 1/3, 1/2
    assert sorted(subsets[-1]) == sorted(i for i, _ in examples)
    assert nested_subsets(examples, sizes, seed=1) == subsets != nested_subsets(examples, sizes, seed=2)
    with pytest.raises(ConfigError, match="search.eta=1"):
        rung_sizes(100, 1, 10)


def synthetic(points, accuracy, examples):
    """Deterministic outcomes: point p solves example k when its hash-uniform draw is below accuracy[p]."""
    import random

    return {p: {i: random.Random(f"{p}-{i}").random() < accuracy[p] for i, _ in examples} for p in points}


@pytest.mark.parametrize("race", [False, True])
def test_no_example_of_a_point_is_evaluated_twice_and_the_best_survives(race):
    examples = [(f"{c}-{i}", c) for c in "abcd" for i in range(150)]
    points = [(i / 10, 1 - i / 10) for i in range(1, 10)]
    accuracy = {p: 0.3 + 0.05 * k for k, p in enumerate(points)}  # the last point is the best by far
    truth = synthetic(points, accuracy, examples)
    calls = Counter()

    def evaluate_on(p, rung, ids):
        calls.update((p, i) for i in ids)
        return {i: truth[p][i] for i in ids}

    run = successive_halving(points, examples, evaluate_on, eta=3, race=race, seed=4)
    assert max(calls.values()) == 1  # nothing evaluated twice
    assert run.evaluated == sum(calls.values()) < len(points) * len(examples) * (0.6 if race else 0.35)
    assert run.best == points[-1] and run.alive[0] == points
    assert [len(s) for s in run.subsets] == [16, 48, 144, 432, 600]  # 4 per category, x3, ..., all
    if not race:
        assert [len(a) for a in run.alive] == [9, 3, 1, 1, 1]


@pytest.fixture(scope="module")
def halving(zoo_cache, tmp_path_factory):
    """The unsharded halving study on the micro family, run once for the tests of this file; a
    test that runs more in its directory works on a copy (`copy_of`)."""
    from conftest import run_study

    return run_study([*STUDY, f"pool.cache_dir={zoo_cache}", "stage=sweep", "search=halving"],
                     tmp_path_factory.mktemp("halving") / "run")


def copy_of(study, into):
    import shutil

    return shutil.copytree(study.dir, into)


def test_halving_in_a_study_stores_pieces_then_full_records_equal_to_a_full_evaluation(study, halving, zoo_cache,
                                                                                       tmp_path):
    args = [*STUDY, f"pool.cache_dir={zoo_cache}", "stage=sweep"]
    s = halving
    copy_of(halving, tmp_path / "halving")
    records = [json.loads(line) for line in (tmp_path / "halving" / "sweep.jsonl").read_text().splitlines()]
    pieces = [r for r in records if r["kind"] == "halving"]
    full = [r for r in records if r["kind"] == "sweep"]
    assert "halving: rungs of 24/72/120 examples, 37/13/5 points alive at each" in s.log
    assert len(full) == 5 and all(len(r["correct"]) == 120 for r in full)
    per_point = Counter((tuple(r["weights"]), i) for r in pieces for i in r["examples"])
    assert max(per_point.values()) == 1  # each point's examples evaluated once, across its rungs
    # the full records equal the grid's own evaluation of those points, bit for bit
    study(*args, "search=grid", run_dir=tmp_path / "grid")
    grid = {tuple(r["weights"]): r for r in map(json.loads, (tmp_path / "grid" / "sweep.jsonl").read_text().splitlines())}
    for r in full:
        assert r["correct"] == grid[tuple(r["weights"])]["correct"] and r["scores"] == grid[tuple(r["weights"])]["scores"]
    # a re-run evaluates nothing
    again = study(*args, "search=halving", run_dir=tmp_path / "halving")
    assert (tmp_path / "halving" / "sweep.jsonl").read_text().count("\n") == len(records)
    assert "5 points on dev (5 already in the store)" in again.log and "(0 evaluated now, " in again.log


def test_halving_sharded_then_collected_gives_the_unsharded_sweep(study, halving, zoo_cache, tmp_path):
    args = [*STUDY, f"pool.cache_dir={zoo_cache}", "stage=sweep", "search=halving"]
    alone = halving
    store = tmp_path / "store"
    for k in (0, 1):  # each shard evaluates its half of the first rung
        study(*args, f"sweep.store={store}", "sweep.num_shards=2", f"sweep.shard={k}", run_dir=tmp_path / f"job{k}")
    shards = [json.loads(line) for k in (0, 1) for line in (store / f"sweep.shard-{k}-of-2.jsonl").read_text().splitlines()]
    assert len(shards) == 37 and {r["kind"] for r in shards} == {"halving"}
    early = [a for a in args if a != "stage=sweep"]
    report = study(*early, "stage=report", "report.line_points=0", f"sweep.store={store}", run_dir=tmp_path / "early")
    text = (report.dir / "report.md").read_text()  # a report before the collect: the pieces said, not "no points"
    assert "No point of the halving search has been evaluated on every dev example yet (37 pieces of its rungs stored)" in text
    collect = study(*args, f"sweep.store={store}", run_dir=store)
    assert "888 from the store)" in collect.log  # the shards' first rung, 37 points x 24 examples, not evaluated again
    best = [line for line in collect.log.splitlines() if "best mean" in line]
    assert best and best[-1].split("best mean")[1] == [line for line in alone.log.splitlines() if "best mean" in line][-1].split("best mean")[1]


@pytest.mark.slow
def test_a_halving_sweep_killed_mid_rung_resumes_where_it_stopped(zoo_cache, tmp_path):
    run = tmp_path / "run"
    args = [*STUDY, f"pool.cache_dir={zoo_cache}", "stage=sweep", "search=halving", f"hydra.run.dir={run}",
            f"sweep.soup_cache={tmp_path / 'soups'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([sys.executable, "-m", "soce", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = run / "sweep.jsonl"
    while proc.poll() is None and (not store.exists() or store.read_bytes().count(b"\n") < 40):
        time.sleep(0.01)  # rung 0 is 37 pieces: the 40th is in rung 1
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in store.read_text().splitlines()]
    r = subprocess.run([sys.executable, "-m", "soce", *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    after = [json.loads(line) for line in store.read_text().splitlines()]
    assert after[: len(before)] == before  # nothing rewritten
    per_point = Counter((tuple(r["weights"]), i) for r in after if r["kind"] == "halving" for i in r["examples"])
    assert max(per_point.values()) == 1 and sum(r["kind"] == "sweep" for r in after) == 5
    reused = sum(len(r["examples"]) for r in before)  # every example the killed run stored, and no other
    assert f" evaluated now, {reused} from the store)" in r.stdout


def test_lm_eval_evaluates_a_subset_as_the_whole_split_does(zoo_cache):
    from soce.engine.hf import HfEngine, load_model
    from soce.toy_fc.harness import toy_fc_backend
    from soce.pool import Candidate
    from soce.zoo.family import build_family

    family = build_family("micro", zoo_cache / "zoo")
    engine = HfEngine(*load_model(Candidate("json", path=str(family.candidates["micro-json"]))))
    backend = toy_fc_backend(seed=0, per_category=5, batch_size=16)
    examples = backend.example_ids("dev")
    assert len(examples) == 30 and {c for _, c in examples} == set(backend.categories)
    whole = {o.example_id: o.correct for o in backend.evaluate(engine, "dev").outcomes}
    subset = [i for i, _ in examples[::4]]
    part = backend.evaluate(engine, "dev", examples=subset)
    assert {o.example_id: o.correct for o in part.outcomes} == {i: whole[i] for i in subset}


def test_a_changed_seed_or_first_rung_reuses_every_stored_outcome(study, halving, zoo_cache, tmp_path):
    """Other subsets of the examples (search.seed, search.min_examples) ask for examples a point
    has stored outcomes of already: those are reused, and the log says how many."""
    import re

    args = [*STUDY, f"pool.cache_dir={zoo_cache}", "stage=sweep", "search=halving"]
    first = halving
    copy_of(halving, tmp_path / "run")
    asked_first = int(re.search(r"; (\d+) examples asked for", first.log).group(1))
    for override in ("search.seed=1", "search.min_examples=12"):
        r = study(*args, override)
        asked, now, stored = map(int, re.search(r"; (\d+) examples asked for, .*\((\d+) evaluated now, (\d+) from the store\)",
                                                r.log).groups())
        assert stored > 0 and now + stored == asked and now < asked
    pieces = [json.loads(line) for line in (tmp_path / "run" / "sweep.jsonl").read_text().splitlines()]
    per_point = Counter((tuple(p["weights"]), i) for p in pieces if p["kind"] == "halving" for i in p["examples"])
    assert max(per_point.values()) == 1 and asked_first > 0  # no example of a point evaluated twice, across the runs
