"""The real entrypoint, end to end, in subprocesses: what a user types and sees."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import BFCL_FIXTURE, write_csv
from wandb_log import logged_keys, run_record

BFCL = ["benchmark=bfcl_leaderboard", f"benchmark.path={BFCL_FIXTURE}"]
BFCL_ALL = [*BFCL, "pool=all"]  # every row of the table is a candidate


def wandb_runs(run_dir):
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def test_the_synthetic_leaderboard_runs_with_wandb(soce, tmp_path):
    r = soce("benchmark=demo", "pool=all", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    for name in ("scores.csv", "analysis.json", "correlation.png", "entry_tau.png", "selection.json", "soce.log"):
        assert (run / name).is_file(), name
    assert "weak set L" in r.stdout and "selection: soce" in r.stdout and f"files: {run}/" in r.stdout
    selection = json.loads((run / "selection.json").read_text())
    assert selection["experts"] and all(e["leads"] for e in selection["experts"])
    (run_file,) = wandb_runs(run)  # one offline W&B run, named by the study
    assert run_record(run_file).run_group == "demo-all"
    assert {"scores", "correlation", "selection", "excluded"} <= logged_keys(run_file)


def test_bfcl_select_matches_pandas_and_explains_the_selection(soce, tmp_path):
    run = tmp_path / "run"
    r = soce(*BFCL, "pool=bfcl_v3_70b", "stage=select", "selection.tau=0.1", "tracker=none", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr
    analysis = json.loads((run / "analysis.json").read_text())
    raw = pd.read_csv(BFCL_FIXTURE, index_col=False)
    numeric = raw[analysis["categories"]].apply(lambda s: pd.to_numeric(s.astype(str).str.rstrip("%"), errors="coerce"))
    np.testing.assert_allclose(np.array(analysis["matrix"], dtype=float), numeric.corr().to_numpy(), atol=1e-12)
    assert analysis["tau"] == 0.1 and len(analysis["models"]) == 11
    assert set(analysis["weak_set"]) == {c for c, t in analysis["entry_tau"].items() if t < 0.1}
    selection = json.loads((run / "selection.json").read_text())
    experts = {e["model"]: e for e in selection["experts"]}
    assert set(experts) | set(selection["excluded"]) == {
        "xLAM-2-70b-fc-r (FC)", "CoALM-70B", "watt-tool-70B (FC)", "Functionary-Medium-v3.1 (FC)"}
    assert experts["xLAM-2-70b-fc-r (FC)"]["hub_id"] == "Salesforce/Llama-xLAM-2-70b-fc-r"
    for e in experts.values():  # each expert really is the pool's best on what it leads
        for cat in e["leads"]:
            assert e["scores"][cat] == max(ex["scores"][cat] for ex in experts.values())
    assert not list(run.glob("wandb"))  # tracker=none


def test_multirun_over_tau_one_run_dir_and_one_wandb_run_per_job(soce, tmp_path):
    sweep = tmp_path / "multi"
    r = soce("-m", "selection.tau=0.03,0.1,0.3", "stage=select", *BFCL, "pool=bfcl_v3_70b", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    weak_sets, groups, names = [], set(), set()
    for job in ("0", "1", "2"):
        analysis = json.loads((sweep / job / "analysis.json").read_text())
        assert (sweep / job / "selection.json").is_file() and (sweep / job / "correlation.png").is_file()
        weak_sets.append(set(analysis["weak_set"]))
        (run_file,) = wandb_runs(sweep / job)
        record = run_record(run_file)
        groups.add(record.run_group)
        names.add(record.display_name)
    assert weak_sets[0] < weak_sets[1] < weak_sets[2]  # L grows with tau
    assert groups == {"bfcl-bfcl_v3_70b"} and len(names) == 3


def test_stages_reuse_artifacts_and_recompute_when_settings_change(soce, tmp_path):
    run = f"hydra.run.dir={tmp_path / 'run'}"
    assert soce(*BFCL_ALL, "stage=analyze", "tracker=none", run).returncode == 0
    assert not (tmp_path / "run" / "selection.json").exists()
    again = soce(*BFCL_ALL, "stage=select", "tracker=none", run)
    assert again.returncode == 0 and "running stage analyze" not in again.stdout
    changed = soce(*BFCL_ALL, "stage=select", "selection.tau=0.05", "tracker=none", run)
    assert "other settings: running stage analyze again" in changed.stdout
    assert json.loads((tmp_path / "run" / "analysis.json").read_text())["tau"] == 0.05


def test_a_wandb_failure_is_a_warning_and_the_files_are_written(soce, tmp_path):
    r = soce(*BFCL_ALL, "stage=select", "tracker.mode=bogus", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    assert "W&B could not start a run" in r.stderr
    assert (tmp_path / "run" / "selection.json").is_file()


def test_cfg_job_prints_the_composed_config(soce):
    r = soce("--cfg", "job")
    assert r.returncode == 0 and "selection:" in r.stdout and "tau: 0.2" in r.stdout and "zoo: default" in r.stdout


@pytest.fixture
def bad_tables(tmp_path):
    return {
        "dupes": write_csv(tmp_path / "dupes.csv", "model,a,b\nm1,1,2\nm1,2,3"),
        "text": write_csv(tmp_path / "text.csv", "model,notes\nm1,fine"),
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["benchmark=table", "benchmark.path=/nonexistent/scores.csv"], "error: score file /nonexistent/scores.csv: not found"),
        (["benchmark=table", "benchmark.path=DUPES"], "duplicate model names in column 'model': m1"),
        (["benchmark=table", "benchmark.path=TEXT"], "no numeric category columns"),
        ([*BFCL_ALL, "pool.models=[{name: watt-tool-7B}]"], "pool model 'watt-tool-7B' is not in"),
        ([*BFCL], "pool=toy_zoo is a model family, but benchmark=bfcl reads its scores from a table"),
        ([*BFCL_ALL, "benchmark.categories=[Multi Turn Bse]"], "category 'Multi Turn Bse' (benchmark.categories) is not a column"),
        (["selection.tau=1.5"], "error: selection.tau=1.5 is outside [0, 1]"),
        ([*BFCL_ALL, "selection.tau=0.01"], "the selection is empty: no pair of categories has |rho| < tau=0.01; the weakest pair is"),
        (["benchmark=table"], "error: no value for benchmark.path"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(soce, tmp_path, bad_tables, args, message):
    args = [a.replace("DUPES", str(bad_tables["dupes"])).replace("TEXT", str(bad_tables["text"])) for a in args]
    r = soce(*args, "tracker=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1


def test_hydra_full_error_shows_the_traceback(soce, tmp_path):
    r = soce("selection.tau=1.5", "tracker=none", f"hydra.run.dir={tmp_path / 'run'}", env={"HYDRA_FULL_ERROR": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "SoceError" in r.stderr


def test_a_misspelt_key_on_the_command_line(soce):
    r = soce("selection.tauu=0.1")
    assert r.returncode == 1 and "tauu" in r.stderr
