"""Every product knows what it was made from (issue 36): a product is current only while the
settings it was made with, the digests of what it was made from and of its own files all hold;
whatever a stage replaces moves to superseded/ with what was made from it; a run directory never
holds two studies, whatever order the stages run in. Each test failed on the code before."""

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MICRO_STUDY, copied_micro_pool, run_study
from soce.stages.products import LINEAGE

STUDY = [*MICRO_STUDY, "search.budget=3", "report.line_points=0", "tracker=none"]


@pytest.fixture
def args(zoo_cache):
    return [*STUDY, f"pool.cache_dir={zoo_cache}"]


@pytest.fixture(scope="module")
def finished(zoo_cache, tmp_path_factory) -> Path:
    """A whole micro study (every stage), copied by each test that changes it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    run_study([*STUDY, f"pool.cache_dir={zoo_cache}"], run)
    return run


def copy_of(finished: Path, to: Path) -> Path:
    shutil.copytree(finished, to)
    return to


def read(run: Path, name: str) -> dict:
    return json.loads((run / name).read_text())


def superseded(run: Path, name: str) -> list[Path]:
    return sorted((run / "superseded").glob(f"*/{name}"))


# --- stage sequences ------------------------------------------------------------------------------
def test_an_analysis_made_again_with_other_settings_never_feeds_the_old_selection(study, args, finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    results = read(run, "results.json")
    r = study(*args, "stage=analyze", "benchmark.per_category=10")
    # the selection, results, soup and report made from the replaced analysis moved aside with it
    assert not any((run / f).exists() for f in ("selection.json", "results.json", "soup", "report.md"))
    [kept] = superseded(run, "selection.json")
    assert (kept.parent / "results.json").exists() and (kept.parent / "report.md").exists()
    assert "selection.json was made from the analysis.json this stage replaced" in r.log
    r = study(*args, "stage=soup")  # the original settings again: everything it reads made for them
    assert read(run, "results.json") == results  # every row from the benchmark asked for, as a fresh study gives
    assert "benchmark.per_category: 10 -> 20" in r.log
    assert len(superseded(run, "scores.csv")) == 2  # the first study's analysis and the per_category=10 one, both kept


def test_the_report_never_shows_another_analysis_than_its_own(study, args, finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    study(*args, "stage=analyze", "analysis.method=spearman")
    study(*args, "stage=report")  # pearson, as every other product of the study
    assert read(run, "analysis.json")["method"] == "pearson"
    report = (run / "report.md").read_text()
    assert "Pearson correlation over" in report and "| analysis | pearson, population all |" in report
    [spearman] = [p for p in superseded(run, "analysis.json") if json.loads(p.read_text())["method"] == "spearman"]
    assert spearman.exists()


def test_a_report_for_another_search_moves_the_other_results_aside(study, args, finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    grid = read(run, "results.json")
    r = study(*[a for a in args if a != "search.budget=3"], "stage=report", "search=uniform")
    assert not (run / "results.json").exists() and not (run / "soup").exists()  # never another study's beside this report
    [kept] = superseded(run, "results.json")
    assert json.loads(kept.read_text()) == grid and (kept.parent / "soup" / "config.json").exists()
    assert (kept.parent / "report.md").exists()  # the grid's report, kept too
    assert "The soup stage has not run in this directory with these settings" in (run / "report.md").read_text()
    assert "making it again" not in r.log and "made with other settings (search.name" in r.log
    assert "(results.json, soup; not used)" in r.log  # said as what it is: this run does not make them


# --- hand edits and damage of every product a stage reads -----------------------------------------
def _replace_expert(text: str, by: str) -> str:
    selection = json.loads(text)
    selection["experts"][-1]["model"] = by  # another expert, the settings kept
    return json.dumps(selection)


EDITS = {
    "scores.csv, a score": ("scores.csv", lambda t: t.replace("0.", "0.9", 1)),
    "scores.csv cut to its header": ("scores.csv", lambda t: t.splitlines()[0] + "\n"),
    "scores.csv cut short": ("scores.csv", lambda t: t[: len(t) // 2]),
    "outcomes.jsonl, an outcome": ("outcomes.jsonl", lambda t: t.replace('"correct": true', '"correct": false', 1)),
    "scores_test.csv, a score": ("scores_test.csv", lambda t: t.replace("0.", "0.1", 1)),
    "outcomes_test.jsonl, cut short": ("outcomes_test.jsonl", lambda t: t[:-30]),
    "analysis.json, its weak set": ("analysis.json", lambda t: t.replace('"weak_set": [', '"weak_set": ["json", ', 1)),
    "analysis.json cut short": ("analysis.json", lambda t: t[:100]),
    "analysis.json missing": ("analysis.json", None),
    "selection.json, another pool model": ("selection.json", lambda t: _replace_expert(t, "micro-relevance")),
    "selection.json, an unknown model": ("selection.json", lambda t: _replace_expert(t, "nobody")),
    "selection.json a folder": ("selection.json", "folder"),
    "results.json, a score": ("results.json", lambda t: t.replace('"objective": 0.', '"objective": 0.9', 1)),
}


# the cheapest stage that reads each file (select reads the analysis, sweep the selection), or the
# one the campaign saw fail: the report read a missing or truncated analysis.json, and consults
# results.json
READER = {"selection.json": "stage=sweep", "results.json": "stage=report"}
READER_OF_EDIT = {"analysis.json missing": "stage=report", "analysis.json cut short": "stage=report"}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_product_edited_or_damaged_is_named_and_made_again_never_used(study, args, finished, tmp_path, edit):
    """A stage that reads an edited product names it, keeps it in superseded/, and has its stage
    make it again, identical to what the study made; results.json, which the report only consults,
    is moved aside rather than used."""
    run = copy_of(finished, tmp_path / "run")
    name, change = EDITS[edit]
    path = run / name
    original = path.read_text()
    if change is None:
        path.unlink()
    elif change == "folder":
        path.unlink()
        path.mkdir()
    else:
        path.write_text(change(original))
    r = study(*args, READER_OF_EDIT.get(edit) or READER.get(name, "stage=select"))
    assert "Traceback" not in r.log and "resumes" not in r.log
    assert name in r.log  # named
    if name == "results.json":
        assert not path.exists() and superseded(run, name)[0].read_text() != original  # the edit kept aside, not used
        assert "The soup stage has not run in this directory with these settings" in (run / "report.md").read_text()
        return
    assert path.read_text() == original  # made again: the study's own
    assert (change is None) or superseded(run, name)  # what was there is kept
    assert read(run, "selection.json") == read(finished, "selection.json")
    if name == "selection.json":
        assert "3 points on dev (3 already in the store)" in r.log  # the study's experts, not the edit's


def test_a_stored_soup_edited_by_hand_is_set_aside_and_evaluated_again(study, args, finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    store = run / "sweep.jsonl"
    lines = store.read_text().splitlines()
    record = json.loads(lines[0])
    record["scores"] = {c: 1.0 for c in record["scores"]}  # a perfect soup, by hand
    store.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    r = study(*args, "stage=soup")
    assert "its scores or outcomes are not those it was stored with (edited by hand?)" in r.log
    assert json.loads((run / "sweep.jsonl.rejected").read_text().splitlines()[1]) == record  # kept aside, not used
    assert read(run, "results.json") == read(finished, "results.json")


def test_a_hand_edited_selection_never_reaches_the_soup_or_its_card(study, args, finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    experts = [e["model"] for e in read(run, "selection.json")["experts"]]
    (run / "selection.json").write_text(_replace_expert((run / "selection.json").read_text(), "micro-relevance"))
    r = study(*args, "stage=soup")
    assert "selection.json has changed since stage select made it" in r.log
    assert read(run, "results.json")["rows"][-1]["models"] == experts
    card = (run / "soup" / "README.md").read_text()
    assert "micro-relevance" not in card and all(f"| {e} (" in card for e in experts)


def test_a_product_from_before_lineage_is_made_again(study, args, finished, tmp_path):
    run = copy_of(finished, tmp_path / "run")
    (run / LINEAGE).unlink()  # a run directory of soce before lineage.json
    r = study(*args, "stage=select")
    assert "without a lineage record" in r.log
    assert read(run, "selection.json") == read(finished, "selection.json")


def test_a_changed_model_file_makes_the_analysis_stale(study, zoo_cache, tmp_path):
    """The analysis is made from the models' files: a candidate rewritten since makes it stale."""
    from safetensors.torch import load_file, save_file

    copies, pool = copied_micro_pool(zoo_cache, tmp_path / "models")
    args = [*STUDY, *pool, f"pool.cache_dir={tmp_path / 'cache'}"]
    study(*args, "stage=select")
    weights = copies["micro-json"] / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v * 1.01 for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    r = study(*args, "stage=select")
    assert f"were made from another model directory {copies['micro-json'].resolve()}" in r.log
    assert "evaluated micro-json on dev" in r.log  # evaluated again, not read from the old analysis


# --- the command that reproduces a run, and the shard hint -----------------------------------------
def test_a_lone_shard_says_the_commands_that_finish_the_study_and_they_do(study, args, finished, tmp_path):
    import shlex

    store = tmp_path / "store"
    r = study(*args, "sweep.num_shards=2", "sweep.shard=0", "stage=sweep", f"sweep.store={store}", run_dir=tmp_path / "job0")
    others = r.log.split("The other shards (1): `soce ")[1].split("`")[0]
    collect = r.log.split("then the collect step (the soup and the report; it evaluates whatever no shard did): `soce ")[1].split("`")[0]
    assert "sweep.shard" not in collect  # no loop: it is not the shard again
    study(*shlex.split(others.replace("sweep.shard=J", "sweep.shard=1")), run_dir=tmp_path / "job1")
    r = study(*shlex.split(collect), run_dir=tmp_path / "collect")
    assert "3 points on dev (3 already in the store)" in r.log  # the shards' points, none again
    assert read(tmp_path / "collect", "results.json")["rows"] == read(finished, "results.json")["rows"]


def test_the_cards_command_reproduces_the_study(study, finished, tmp_path):
    import shlex

    card = (finished / "soup" / "README.md").read_text()
    command = card.split("## Reproduce")[1].split("```bash\n")[1].split("\n")[0]
    assert command.startswith("soce ")
    study(*shlex.split(command)[1:], run_dir=tmp_path / "again")
    assert read(tmp_path / "again", "results.json") == read(finished, "results.json")


@pytest.mark.slow  # a two-shard multirun, then the card's command (another): 40-50 s
def test_a_sharded_multiruns_card_reproduces_it_by_running_it(soce, zoo_cache, tmp_path):
    import shlex

    first = tmp_path / "first"
    r = soce("-m", *STUDY, f"pool.cache_dir={zoo_cache}", "sweep.shard=range(0,2)", "sweep.num_shards=2",
             f"hydra.sweep.dir={first}")
    assert r.returncode == 0, r.stderr[-3000:]
    card = (first / "soup" / "README.md").read_text()
    command = card.split("## Reproduce")[1].split("```bash\n")[1].split("\n")[0]
    assert command.startswith("soce -m ") and "sweep.shard=range(0,2)" in command and str(first) not in command
    again = tmp_path / "again"
    r = soce(*shlex.split(command)[1:], f"hydra.sweep.dir={again}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert read(again, "results.json") == read(first, "results.json")


# --- errors that tell the truth ------------------------------------------------------------------
@pytest.mark.slow  # two command-line runs of a sweep: 15-25 s
def test_ctrl_c_mid_sweep_is_one_line_exit_130_and_loses_nothing(zoo_cache, tmp_path):
    from conftest import one_error_line

    run = tmp_path / "run"
    argv = [sys.executable, "-m", "soce", *MICRO_STUDY, "tracker=none", f"pool.cache_dir={zoo_cache}", "stage=sweep",
            f"sweep.soup_cache={tmp_path / 'soups'}",
            f"hydra.run.dir={run}"]
    # Ctrl-C as a terminal delivers it, whatever the runner's own disposition of SIGINT (a job started
    # in the background of a script ignores it, and so would every child it starts)
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    store = run / "sweep.jsonl"
    while proc.poll() is None and (not store.exists() or store.read_bytes().count(b"\n") < 3):
        pass
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    line = one_error_line(subprocess.CompletedProcess(argv, proc.returncode, out, err), code=130)
    assert "stopped by Ctrl-C (SIGINT): every finished result is kept" in line
    kept = store.read_text().splitlines()
    assert len(kept) >= 3
    again = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert store.read_text().splitlines()[: len(kept)] == kept and f"({len(kept)} already in the store)" in again.stdout
