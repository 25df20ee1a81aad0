"""A result is reused only for the question it answered: the objective, the benchmark's
settings, the evaluator's task files and the models' files are part of every stored soup and
cached evaluation; a changed question recomputes what it can and refuses to mix the rest."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import MICRO_STUDY, copied_micro_pool
from soce.errors import DataError
from soce.evaluate.candidates import evaluate_candidates
from soce.toy_fc.direct import ToyFcDirect
from soce.evaluate.lm_eval_backend import LmEvalBackend
from soce.toy_fc.harness import TOY_FC_TASKS
from soce.pool import Candidate
from soce.zoo.family import build_family

STUDY = [*MICRO_STUDY, "search.budget=3"]


def sweep_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "sweep.jsonl").read_text().splitlines()]


def test_a_changed_objective_is_recomputed_from_the_stored_scores(study, zoo_cache, tmp_path):
    args = [*STUDY, f"pool.cache_dir={zoo_cache}"]
    study(*args, "stage=sweep")  # objective: mean
    stored = sweep_records(tmp_path / "run")
    study(*args, "stage=soup", "search.objective=sum")
    assert sweep_records(tmp_path / "run")[:3] == stored  # the searched points are not evaluated again
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["objective"] == "sum"
    for row in results["rows"]:
        for split in ("dev", "test"):
            assert row[split]["objective"] == pytest.approx(math.fsum(row[split]["scores"].values()))
    best = max(stored, key=lambda p: math.fsum(p["scores"].values()))
    assert results["rows"][-1]["weights"] == best["weights"]

    # the report never shows a baseline table made for another objective, nor leaves one beside it
    r = study(*args, "stage=report", "search.objective=mean")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "The soup stage has not run in this directory with these settings" in report and "| searched soup, top-3 experts (grid search) |" not in report
    assert not (tmp_path / "run" / "results.json").exists() and "results.json and soup/ were made with other settings" in r.log
    [moved] = (tmp_path / "run" / "superseded").glob("*/results.json")
    assert json.loads(moved.read_text()) == results  # kept, not lost
    study(*args, "stage=soup", "search.objective=sum")  # from the store: nothing evaluated again
    assert sweep_records(tmp_path / "run")[:3] == stored
    study(*args, "stage=report", "search.objective=sum")
    assert "| searched soup, top-3 experts (grid search) |" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("override, changed", [
    ("benchmark.per_category=10", "benchmark.per_category: 20 -> 10"),
    ("benchmark.seed=1", "benchmark.seed: 0 -> 1"),
    ("benchmark.backend=lm_eval", 'benchmark.backend: "direct" -> "lm_eval"'),
])
def test_a_changed_benchmark_setting_refuses_the_old_soups(study, zoo_cache, tmp_path, override, changed):
    args = [*STUDY, f"pool.cache_dir={zoo_cache}"]
    study(*args, "stage=sweep")
    before = (tmp_path / "run" / "sweep.jsonl").read_text()
    with pytest.raises(DataError) as err:
        study(*args, override, "stage=sweep")
    message = str(err.value)
    assert "were evaluated for another question" in message and changed in message
    assert "new run directory" in message and "sweep*.jsonl" in message  # how to start fresh
    assert (tmp_path / "run" / "sweep.jsonl").read_text() == before  # nothing lost, nothing mixed


def test_changed_model_files_refuse_the_old_soups(study, zoo_cache, tmp_path):
    copies, pool = copied_micro_pool(zoo_cache, tmp_path / "models")
    args = [*STUDY, *pool, f"pool.cache_dir={tmp_path / 'cache'}"]
    study(*args, "stage=sweep")
    expert = sweep_records(tmp_path / "run")[0]["experts"][0]
    weights = copies[expert] / "model.safetensors"  # the expert's weights, rewritten (a new revision of the model)
    tensors = load_file(weights)
    save_file({k: v * 1.01 if v.dtype == torch.float32 else v for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    with pytest.raises(DataError, match=f"the files of model '{expert}' changed"):
        study(*args, "stage=sweep")


def test_a_store_from_before_question_fingerprints_is_set_aside_and_evaluated_again(study, zoo_cache, tmp_path):
    args = [*STUDY, f"pool.cache_dir={zoo_cache}"]
    study(*args, "stage=sweep")
    path = tmp_path / "run" / "sweep.jsonl"
    old = "".join(json.dumps({k: v for k, v in r.items() if k != "question"}) + "\n" for r in sweep_records(tmp_path / "run"))
    path.write_text(old)
    r = study(*args, "stage=soup")
    assert "no 'question' (written before soce recorded what a score answers)" in r.log
    assert "sweep: 3 points on dev (0 already in the store, 3 from the soups of earlier runs" in r.log  # none of the old lines trusted
    assert all(line in (tmp_path / "run" / "sweep.jsonl.rejected").read_text() for line in old.splitlines())


def test_a_hub_model_is_cached_by_its_revision_not_its_name(zoo_cache, tmp_path, monkeypatch, caplog):
    """Two revisions of one Hub id (here two different local models standing for them: the Hub
    cannot be reached from here) are two evaluations, not one cached under the name."""
    import huggingface_hub

    family = build_family("micro", zoo_cache / "zoo", progress=False)
    revision = {"now": family.candidates["micro-json"]}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(revision["now"]))
    evaluator = ToyFcDirect(seed=0, per_category=5, batch_size=64)
    hub_model = [Candidate("org-model", hub_id="org/model")]
    question = {"benchmark": "toy_fc", "evaluator": evaluator.fingerprint}
    caplog.set_level("INFO")
    first = evaluate_candidates(hub_model, evaluator, ["dev"], tmp_path / "evals", question)["dev"]
    revision["now"] = family.candidates["micro-parallel"]  # the Hub id now resolves to other files
    second = evaluate_candidates(hub_model, evaluator, ["dev"], tmp_path / "evals", question)["dev"]
    assert caplog.text.count("evaluated org-model on dev") == 2
    assert first.row("org-model") != second.row("org-model")
    third = evaluate_candidates(hub_model, evaluator, ["dev"], tmp_path / "evals", question)["dev"]  # same revision: cached
    assert caplog.text.count("evaluated org-model on dev") == 2 and third.row("org-model") == second.row("org-model")
    assert "pool model 'org-model': org/model from the Hugging Face Hub (or its cache)" in caplog.text  # said before it waits


def test_the_evaluators_fingerprint_follows_its_task_files(tmp_path):
    tasks = shutil.copytree(TOY_FC_TASKS, tmp_path / "tasks")
    mapping = {"dev": {"simple": "toy_fc_dev_simple"}}

    def backend():
        return LmEvalBackend(mapping, include_path=tasks, metric="acc", batch_size=8, max_length=256,
                             include_defaults=False, metadata={"seed": 0, "per_category": 5})

    before = backend().fingerprint
    assert backend().fingerprint == before
    yaml = tasks / "toy_fc_dev_simple.yaml"
    yaml.write_text(yaml.read_text() + "# a changed task file\n")
    assert backend().fingerprint != before


def _json_task(folder: Path, data: Path, metric: str = "acc") -> None:
    """A generic lm-eval task reading a local JSON-lines file."""
    folder.mkdir(exist_ok=True)
    (folder / "my_task.yaml").write_text(
        "task: my_task\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_target: 0\n"
        "doc_to_choice: ['yes', 'no']\n"
        f"metric_list:\n  - metric: {metric}\n    aggregation: mean\n    higher_is_better: true\n")


def test_the_evaluators_fingerprint_follows_its_tasks_data_files(tmp_path):
    data = tmp_path / "data" / "my.jsonl"
    data.parent.mkdir()
    data.write_text('{"q": "one?"}\n')
    _json_task(tmp_path / "tasks", data)
    (tmp_path / "tasks" / "notes.csv").write_text("a,b\n")

    def fingerprint():
        return LmEvalBackend({"dev": {"c": "my_task"}}, include_path=tmp_path / "tasks", metric="acc", batch_size=8,
                             max_length=256, include_defaults=False).fingerprint

    before = fingerprint()
    assert fingerprint() == before
    data.write_text('{"q": "two?"}\n')  # the data, outside the task folder
    after_data = fingerprint()
    (tmp_path / "tasks" / "notes.csv").write_text("a,c\n")  # a file of the task folder that is not YAML or code
    after_notes = fingerprint()
    assert before != after_data != after_notes != before


def test_a_metric_the_task_does_not_report_is_refused_before_any_evaluation(tmp_path):
    from soce.errors import EvaluationError

    data = tmp_path / "my.jsonl"
    data.write_text('{"q": "one?"}\n')
    _json_task(tmp_path / "tasks", data, metric="exact_match")
    with pytest.raises(EvaluationError, match=r"task 'my_task' does not report the metric 'acc' \(benchmark.metric\); "
                                              r"it reports: exact_match. Set benchmark.metric=exact_match"):
        LmEvalBackend({"dev": {"c": "my_task"}}, include_path=tmp_path / "tasks", metric="acc", batch_size=8,
                      max_length=256, include_defaults=False)


def test_benchmark_cache_false_evaluates_the_candidates_again(study, zoo_cache, tmp_path):
    common = [*STUDY, "stage=analyze", f"pool.cache_dir={zoo_cache}"]
    study(*common, run_dir=tmp_path / "a")
    again = study(*common, "benchmark.cache=false", run_dir=tmp_path / "b")
    assert again.log.count("evaluated micro-") == 8  # 4 candidates, dev and test
    cached = study(*common, run_dir=tmp_path / "c")
    assert "evaluated micro-" not in cached.log


def test_a_setting_added_since_and_left_unset_is_no_difference():
    """A run directory made before a setting existed stays current while the setting is unset
    (None: what was done before it existed); set, it is a difference like any other."""
    from soce.artifacts import differences

    old = {"analysis": {"tau": 0.2}, "benchmark": {"name": "table"}}
    assert differences(old, {"analysis": {"tau": 0.2, "min_reliability": None}, "benchmark": {"name": "table", "category_sizes": None}}) == []
    assert differences(old, {"analysis": {"tau": 0.2, "min_reliability": 0.5}, "benchmark": {"name": "table"}}) == [
        "analysis.min_reliability: (absent) -> 0.5"]
