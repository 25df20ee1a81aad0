"""Results that were wrong in normal use (issue 25): one search's soup never another's, no mixed
soup, no record trusted unchecked, no input ignored. Each test failed on the code before it."""

import json
import logging
import math
import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import MICRO_STUDY, compose_cfg, sweep_record, write_csv
from soce import config
from soce.errors import CheckpointError, ConfigError, DataError
from soce.merge import disk, merge_to_disk
from soce.store import SweepStore
from soce.weights import simplex_grid, uniform
from tiny_models import build_tiny_llama

STUDY = [*MICRO_STUDY, "report.line_points=0"]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def searched(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["rows"][-1]


# --- 1. a search's result comes from the points it asked for ---------------------------------------
def test_the_searched_soup_is_the_searchs_own_and_a_rerun_gives_the_same(study, zoo_cache, tmp_path):
    run = tmp_path / "run"
    args = [*STUDY, f"pool.cache_dir={zoo_cache}", "tracker=none"]
    study(*args, "search.budget=3", "search.include_uniform=false", "stage=soup")
    first = searched(run)
    grid = [list(p) for p in simplex_grid(3)[:3]]
    assert first["weights"] in grid  # the soup stage also stored the uniform soup, a better one: not the search's
    study(*args, "search.budget=3", "search.include_uniform=false", "stage=soup")  # the same settings again: the same result
    assert searched(run) == first
    # another search in the same directory: its own point, and the grid's results set aside, not overwritten
    r = study(*args, "search=uniform", "stage=soup")
    assert searched(run)["weights"] == pytest.approx(list(uniform(3)))
    assert json.loads((run / "results.json").read_text())["search"] == "uniform"
    kept = list((run / "superseded").iterdir())
    assert len(kept) == 1 and json.loads((kept[0] / "results.json").read_text())["rows"][-1] == first
    assert (kept[0] / "soup" / "mergekit.yaml").is_file()
    assert 'made with other settings (search.name: "grid" -> "uniform"' in r.log and "moved to" in r.log


def test_a_report_soup_stored_first_does_not_hide_a_sweep_point(study, zoo_cache, tmp_path):
    """The report's coalition and line soups, stored before any sweep, are the same soups as some
    grid points: the sweep reuses them and reports its every point."""
    args = [*STUDY, f"pool.cache_dir={zoo_cache}", "selection.k=2", "tracker=none"]
    study(*args, "stage=report", "report.line_points=5")
    r = study(*args, "stage=sweep")
    assert "sweep: 9 points on dev (1 already in the store)" in r.log  # 0.5/0.5 (0.25/0.75 and 0.75/0.25 are no grid points)
    r = study(*args, "stage=sweep", "search=uniform")
    assert "sweep: 1 point on dev (1 already in the store), best mean" in r.log
    fresh = study(*args, "stage=sweep", run_dir=tmp_path / "fresh")
    assert "sweep: 9 points on dev (0 already in the store, 9 from the soups of earlier runs" in fresh.log


# --- 3. a merge whose input is replaced mid-way fails ------------------------------------------------
@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return [build_tiny_llama(root / f"e{i}", seed=40 + i) for i in range(3)]


def test_a_merge_whose_input_is_replaced_mid_way_fails_and_writes_nothing(experts, tmp_path, monkeypatch):
    source = merge_to_disk(experts[:2], [0.5, 0.5], tmp_path / "source", shard_size="30KB", progress=False)
    real_write = disk._Streamer.write_tensor
    replaced = []

    def write_then_replace(self, f, name, *args):
        real_write(self, f, name, *args)
        if not replaced and threading.current_thread() is threading.main_thread():
            replaced.append(name)  # another merge replaces the input of this one (merge.overwrite=true)
            monkeypatch.setattr(disk._Streamer, "write_tensor", real_write)
            merge_to_disk(experts[1:], [0.5, 0.5], source, shard_size="30KB", overwrite=True, progress=False)

    monkeypatch.setattr(disk._Streamer, "write_tensor", write_then_replace)
    with pytest.raises(CheckpointError, match=rf"the merge input {source} changed while the soup was made .*nothing was written"):
        merge_to_disk([source, experts[2]], [0.5, 0.5], tmp_path / "soup", shard_size="30KB", progress=False)
    assert replaced and not (tmp_path / "soup").exists() and not list(tmp_path.glob(".soup*"))
    # the files read were held open from the start: a merge of a stable input is one model's soup
    monkeypatch.setattr(disk._Streamer, "write_tensor", real_write)
    merge_to_disk([source, experts[2]], [0.5, 0.5], tmp_path / "soup", shard_size="30KB", progress=False)
    assert (tmp_path / "soup" / "mergekit.yaml").is_file()


# --- 4. records are checked on read, and only the store's own files are read -----------------------
def test_bad_records_are_set_aside_and_evaluated_again(study, zoo_cache, tmp_path, caplog):
    run = tmp_path / "run"
    args = [*STUDY, f"pool.cache_dir={zoo_cache}", "search.budget=4", "tracker=none"]
    study(*args, "stage=sweep")
    clean = records(run / "sweep.jsonl")
    best = max(clean, key=lambda r: r["objective"])
    bad = [dict(r, scores=dict(r["scores"])) for r in clean]
    bad[0]["scores"]["json"] = math.nan  # NaN compares false: it used to win or lose at random
    bad[1]["scores"]["bogus"] = 5.0  # a category the benchmark does not have used to win the sweep
    del bad[2]["scores"]["simple"]  # a record scored on 5 of 6 categories
    lines = [json.dumps(r) for r in bad]  # json writes NaN as NaN, as Python's reader accepts
    (run / "sweep.jsonl").write_text("\n".join(lines) + "\n")
    stray = dict(clean[3], weights=[0.8, 0.1, 0.1], scores={c: math.nan for c in clean[3]["scores"]})
    (run / "sweep-copy.jsonl").write_text(json.dumps(stray) + "\n")  # a stray copy is not the store
    r = study(*args, "stage=sweep")
    rejected = (run / "sweep.jsonl.rejected").read_text()
    assert rejected.count("# sweep.jsonl line") == 3
    assert "line 1: a score is not a finite number" in rejected
    assert "line 2: its categories are not the benchmark's (unknown: bogus)" in rejected
    assert "line 3: its categories are not the benchmark's (missing: simple)" in rejected
    assert "sweep: 4 points on dev (1 already in the store, 3 from the soups of earlier runs" in r.log  # the first run's, not the bad lines
    again = records(run / "sweep.jsonl")
    assert len(again) == 4 and {json.dumps(r["scores"]) for r in again} == {json.dumps(r["scores"]) for r in clean}
    assert f"best mean {best['objective']:.4f}" in r.log
    assert "sweep-copy.jsonl not read" in r.log


@pytest.mark.parametrize("drop", ["kind", "correct", "question", "merge_s"])
def test_a_record_lacking_a_field_is_set_aside_not_a_crash(tmp_path, drop):
    store = SweepStore(tmp_path)
    store.append(sweep_record([0.5, 0.5], 0.5))
    store.close()
    partial = {k: v for k, v in sweep_record([0.1, 0.9], 0.9).items() if k != drop}
    with (tmp_path / "sweep.jsonl").open("a") as f:
        f.write(json.dumps(partial) + "\n")
    again = SweepStore(tmp_path)
    assert len(again) == 1 and f"no '{drop}'" in (tmp_path / "sweep.jsonl.rejected").read_text()


def test_a_halving_piece_without_its_examples_is_set_aside(tmp_path):
    piece = sweep_record([0.5, 0.5], split="dev@abc", kind="halving")  # examples missing
    (tmp_path / "sweep.jsonl").write_text(json.dumps(piece) + "\n" + json.dumps(sweep_record([0.2, 0.8])) + "\n")
    store = SweepStore(tmp_path)
    assert len(store) == 1 and "a piece of a split whose examples" in (tmp_path / "sweep.jsonl.rejected").read_text()


def test_a_record_whose_weights_are_no_soup_is_set_aside(tmp_path):
    (tmp_path / "sweep.jsonl").write_text(json.dumps(sweep_record([0.7, 0.7])) + "\n")
    assert len(SweepStore(tmp_path)) == 0
    assert "its weights are not a soup's" in (tmp_path / "sweep.jsonl.rejected").read_text()


def test_nothing_is_stored_that_a_read_would_set_aside(tmp_path):
    store = SweepStore(tmp_path)
    with pytest.raises(DataError, match="cannot be stored: a score is not a finite number"):
        store.append(sweep_record([0.5, 0.5], math.nan))
    assert (tmp_path / "sweep.jsonl").read_text() == ""


def test_a_collect_while_a_shard_is_still_written_is_refused(tmp_path):
    shard = SweepStore(tmp_path, 1, 2)
    shard.append(sweep_record([0.5, 0.5]))
    with pytest.raises(DataError, match="sweep.shard-1-of-2.jsonl is still being written by its shard's job"):
        SweepStore(tmp_path)
    shard.close()
    assert len(SweepStore(tmp_path)) == 1  # once the shard is done, the collect reads it


# --- 5. inputs that used to be ignored or used silently ---------------------------------------------
def test_pool_models_with_the_embedded_family_is_refused():
    cfg = compose_cfg(["pool.models=[{name: a, path: /tmp}]"])
    with pytest.raises(ConfigError, match="pool.models is set, but pool=toy_zoo is the embedded model family .* pool=all"):
        config.validate(cfg)


@pytest.mark.parametrize("override, message", [
    ("+selction.tau=0.1", "selction is not a setting of soce; closest: 'selection'"),
    ("+selection.taux=0.1", "selection.taux is not a setting of soce; closest: 'tau'"),
    ("search.min_examples=0", "search.min_examples=0: at least 1 example"),
    ("search.eta=1", "search.eta=1: the reduction factor must be at least 2"),
    ("search.confidence=1.5", "search.confidence=1.5"),
    ("search.step=0.3", "search: step=0.3: 1 is not a multiple of it"),
    ("search.budget=0", "search.budget=0: at least 1 point"),
])
def test_a_setting_nothing_would_read_or_that_cannot_work_is_refused_before_anything_runs(override, message):
    search = (["search=halving"] if override.startswith(("search.min", "search.eta", "search.conf"))
              else ["search=grid"] if override.startswith("search.") else [])
    with pytest.raises(ConfigError, match=message):
        config.validate(compose_cfg([*search, override]))


def test_the_pools_own_mistakes_are_found_before_any_evaluation(tmp_path):
    with pytest.raises(ConfigError, match=r"pool.models\[1\] \('b'\): path .*nowhere is not a directory"):
        config.validate(compose_cfg(["pool=all", f"pool.models=[{{name: a, path: {tmp_path}}}, {{name: b, path: {tmp_path / 'nowhere'}}}]"]))
    with pytest.raises(ConfigError, match="pool.models names 'a' twice"):
        config.validate(compose_cfg(["pool=all", f"pool.models=[{{name: a, path: {tmp_path}}}, {{name: a, path: {tmp_path}}}]"]))
    with pytest.raises(ConfigError, match="selection.models names 'micro-jsn', which is not in pool=toy_zoo_micro; closest: 'micro-json'"):
        config.validate(compose_cfg(["pool=toy_zoo_micro", "selection=manual", "selection.models=[micro-jsn]"]))


def test_a_checkpoint_with_a_nan_weight_is_refused_by_name(tmp_path):
    from soce.engine.hf import load_model
    from soce.pool import Candidate

    path = build_tiny_llama(tmp_path / "nan", seed=0)
    shard = sorted(path.glob("*.safetensors"))[0]
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name][0, 0] = math.nan
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"pool model 'nan' .*: tensor {name!r} holds NaN or Inf values"):
        load_model(Candidate("nan", path=str(path)))


def test_a_bfcl_table_with_scores_outside_0_to_100_is_refused(tmp_path):
    from soce.scores import read_table

    path = write_csv(tmp_path / "bfcl.csv", """
        Rank,Overall Acc,Model,Live Simple AST,Irrelevance Detection
        1,80,a,150,90
        2,70,b,60,-10
        3,60,c,50,80""")
    with pytest.raises(DataError, match="column 'Live Simple AST', model 'a': 150 is not a score .*from 0 to 100"):
        read_table(path, format="bfcl")


# --- 7. the memory plan believes the weights, not a config that disagrees ---------------------------
def test_a_config_that_does_not_belong_to_its_weights_is_refused(tmp_path):
    from soce.placement.memory import model_shape

    path = build_tiny_llama(tmp_path / "m", seed=0)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 80, "hidden_size": 8192}))
    with pytest.raises(CheckpointError, match=r"config.json describes a model of [\d.]+[MB] parameters, but the safetensors files beside it hold"):
        model_shape(path)
    for bad, message in (({"num_hidden_layers": -2}, "num_hidden_layers=-2 is not a positive integer"),
                         ({"hidden_size": None}, "has no hidden_size: the plan would take transformers' default")):
        broken = {k: v for k, v in {**cfg, **bad}.items() if v is not None}
        (path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=message):
            model_shape(path)


def test_a_device_list_of_millions_is_refused_at_once():
    from soce.placement.devices import parse_devices

    with pytest.raises(ConfigError, match=r"names 10000000 GPUs: a sweep process places its model on the GPUs of one node, at most 64"):
        parse_devices("10000000x80GB")
    assert len(parse_devices("8xH100-80GB")) == 8
    with pytest.raises(ConfigError, match="expected a size such as 2GB"):
        config.validate(compose_cfg(["sweep.max_memory=1.2.3GB"]))


def test_the_merge_stage_names_its_own_keys(study, experts, tmp_path):
    models = "[" + ",".join(map(str, experts[:2])) + "]"
    with pytest.raises(ConfigError, match=r"merge.weights sum to 0.9, not 1 \(merge.normalize=true rescales them\)"):
        study("stage=merge", f"merge.models={models}", "merge.weights=[0.5,0.4]", f"merge.output={tmp_path / 'soup'}",
              "tracker=none")


def test_one_expert_is_one_expert_in_the_plan(experts):
    from soce.placement.devices import Device
    from soce.placement.memory import model_shape, plan_memory

    plan = plan_memory(model_shape(experts[0]), 1, [Device("cpu", 10**9)])
    assert ", 1 expert beside it;" in plan.text()


def test_an_unwritable_store_or_eval_cache(tmp_path, soce, zoo_cache, caplog):
    from test_faults import mounted_tmpfs

    from soce.evaluate.candidates import evaluate_candidates
    from soce.toy_fc.direct import ToyFcDirect
    from soce.pool import Candidate
    from soce.zoo.family import build_family

    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        r = soce(*STUDY, f"pool.cache_dir={zoo_cache}", "stage=sweep", "tracker=none",
                 f"sweep.store={ro / 'store'}",
                 f"hydra.run.dir={tmp_path / 'run'}")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert f"error: {ro / 'store'}: Read-only file system: choose a directory you can write" in r.stderr
        assert "resumes" not in r.stderr  # the same command never will: another directory is the fix (issue 36)
        family = build_family("micro", zoo_cache / "zoo", progress=False)
        evaluator = ToyFcDirect(seed=0, per_category=2, batch_size=64)  # a question of its own: evaluated, not cached
        with caplog.at_level(logging.WARNING):
            tables = evaluate_candidates([Candidate("j", path=str(family.candidates["micro-json"]))], evaluator, ["dev"],
                                         ro, {"q": 1})
        assert tables["dev"].models == ("j",)  # the scores are kept; the cache says it could not keep them
        assert "j's dev scores not cached in" in caplog.text and "Read-only file system" in caplog.text
