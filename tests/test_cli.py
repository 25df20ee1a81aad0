"""The entrypoint: a few true command-line runs (what a user types and sees: W&B's offline run,
a multirun, one-line errors), and the pipeline on score tables in this process."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import BFCL_FIXTURE, compose_cfg, write_csv
from soce.cli import make_tracker
from soce.errors import ConfigError, DataError, SoceError

BFCL = ["benchmark=bfcl_leaderboard", f"benchmark.path={BFCL_FIXTURE}"]
BFCL_ALL = [*BFCL, "pool=all"]  # every row of the table is a candidate


# --- on the command line --------------------------------------------------------------------------
def test_the_synthetic_leaderboard_runs_with_wandb_offline(soce, tmp_path):
    r = soce("benchmark=demo", "pool=all", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    for name in ("scores.csv", "analysis.json", "correlation.png", "entry_tau.png", "selection.json", "report.md", "soce.log"):
        assert (run / name).is_file(), name
    assert "weak set L" in r.stdout and "selection: soce" in r.stdout and f"files: {run}/" in r.stdout
    selection = json.loads((run / "selection.json").read_text())
    assert selection["experts"] and all(e["leads"] for e in selection["experts"])
    (offline,) = run.glob("wandb/offline-run-*")  # one offline W&B run, with the tables and plots as W&B media
    tables = {p.name.split("_")[0] for p in offline.glob("files/media/table/*.table.json")}
    assert {"scores", "correlation", "selection", "excluded"} <= tables
    assert len(list(offline.glob("files/media/images/*.png"))) == 2
    assert "selection: soce" in (offline / "files" / "soce.log").read_text()  # the run's log travels with the W&B run
    assert f"W&B: offline run {offline} (upload it with `wandb sync {offline}`)" in r.stdout  # the run's last line
    report = (run / "report.md").read_text()  # a score table: no search, no split chosen on; its scores as it states them
    assert "grid" not in report and "chosen on" not in report and "| nocall-guard-7b | 76.17 |" in report


def test_multirun_over_tau_one_run_dir_and_one_wandb_run_per_job(soce, tmp_path):
    sweep = tmp_path / "multi"
    r = soce("-m", "selection.tau=0.03,0.1,0.3", "stage=select", *BFCL, "pool=bfcl_v3_70b", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    weak_sets = []
    for job in ("0", "1", "2"):
        analysis = json.loads((sweep / job / "analysis.json").read_text())
        assert (sweep / job / "selection.json").is_file() and (sweep / job / "correlation.png").is_file()
        weak_sets.append(set(analysis["weak_set"]))
        assert len(list((sweep / job).glob("wandb/offline-run-*"))) == 1
    assert weak_sets[0] < weak_sets[1] < weak_sets[2]  # L grows with tau
    table = (sweep / "jobs.md").read_text()  # one table across the jobs: the swept value beside what each found
    assert "| job | selection.tau | L | experts |" in table and "| 0 | 0.03 |" in table and "| 2 | 0.3 |" in table
    assert "the multirun's 3 jobs (jobs.md and jobs.csv in" in r.stdout + r.stderr
    assert (sweep / "jobs.csv").read_text().splitlines()[0].startswith("job,selection.tau,L,experts")


def test_a_wandb_run_is_named_by_job_and_grouped_by_study(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb-config"))
    tracker = make_tracker(compose_cfg([*BFCL, "pool=bfcl_v3_70b"]), tmp_path, "bfcl-bfcl_v3_70b/2")
    try:
        assert (tracker.run.group, tracker.run.name) == ("bfcl-bfcl_v3_70b", "bfcl-bfcl_v3_70b/2")
        assert "hydra" not in tracker.run.config and tracker.run.config["selection"]["tau"] == 0.2
    finally:
        tracker.finish()


def test_online_without_credentials_logs_offline_and_says_how_to_sync(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    tracker = make_tracker(compose_cfg([*BFCL, "tracker.mode=online"]), tmp_path, "job")
    try:
        assert tracker.run is not None and tracker.run.settings.mode == "offline"
    finally:
        tracker.finish()
    assert (f"tracker.mode=online needs W&B credentials (`wandb login`, or WANDB_API_KEY) and there are none: logging offline "
            f"to {tmp_path}/wandb instead; upload it later with `wandb sync {tmp_path}/wandb/offline-run-*`") in caplog.text
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["benchmark=table", "benchmark.path=/nonexistent/scores.csv"], "error: score file /nonexistent/scores.csv: not found"),
        (["selection.tau=1.5"], "error: selection.tau=1.5 is outside [0, 1]"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(soce, tmp_path, args, message):
    r = soce(*args, "tracker=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr + r.stdout
    assert len([line for line in r.stderr.splitlines() if line.startswith("error:")]) == 1


def test_hydra_full_error_shows_the_traceback(soce, tmp_path):
    r = soce("selection.tau=1.5", "tracker=none", f"hydra.run.dir={tmp_path / 'run'}", env={"HYDRA_FULL_ERROR": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_a_misspelt_key_or_choice_on_the_command_line(soce):
    r = soce("selection.tauu=0.1")
    assert r.returncode == 1 and "tauu" in r.stderr
    r = soce("search.objective=mena")
    assert r.returncode == 1 and "mena" in r.stderr and "mean, sum" in r.stderr


def test_cfg_job_prints_the_composed_config(soce):
    r = soce("--cfg", "job")
    assert r.returncode == 0 and "selection:" in r.stdout and "tau: 0.2" in r.stdout and "zoo: default" in r.stdout


# --- in this process --------------------------------------------------------------------------------
def test_bfcl_select_matches_pandas_and_explains_the_selection(study, tmp_path):
    r = study(*BFCL, "pool=bfcl_v3_70b", "stage=select", "selection.tau=0.1")
    run = r.dir
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
    columns, rows = r.tracker.tables["selection"]
    assert [row[0] for row in rows] == list(experts) and columns[:2] == ["model", "weights at"]


def test_stages_reuse_artifacts_and_recompute_when_settings_change(study, tmp_path):
    run = tmp_path / "run"
    study(*BFCL_ALL, "stage=analyze")
    assert not (run / "selection.json").exists()
    again = study(*BFCL_ALL, "stage=select")
    assert "running stage analyze" not in again.log
    changed = study(*BFCL_ALL, "stage=select", "selection.tau=0.05")
    assert "scores.csv and analysis.json were made with other settings (analysis.tau: 0.2 -> 0.05" in changed.log
    assert json.loads((run / "analysis.json").read_text())["tau"] == 0.05


def test_a_selection_made_with_other_settings_is_made_again(study, tmp_path):
    """selection.json is reused only for the selection settings it was made with."""
    run = tmp_path / "run"
    study(*BFCL_ALL, "stage=select", "selection.tau=0.3")
    assert len(json.loads((run / "selection.json").read_text())["experts"]) > 1
    r = study(*BFCL_ALL, "stage=report", "selection.tau=0.3", "selection.max_experts=1")
    assert "selection.json was made with other settings (selection.max_experts: null -> 1" in r.log
    assert len(json.loads((run / "selection.json").read_text())["experts"]) == 1
    assert (run / "report.md").read_text().count("| best on") + (run / "report.md").read_text().count("| best overall") == 1


def test_a_wandb_failure_is_a_warning_and_the_files_are_written(tmp_path, monkeypatch, caplog):
    import wandb

    from soce.cli import run_study

    def unreachable(**kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)  # the one thing here that stands for the network
    run_study(compose_cfg([*BFCL_ALL, "stage=select", "tracker.mode=online"]), tmp_path / "run")
    assert "W&B could not start a run (ConnectionError: api.wandb.ai unreachable)" in caplog.text
    assert (tmp_path / "run" / "selection.json").is_file()


@pytest.fixture
def bad_tables(tmp_path):
    return {
        "dupes": write_csv(tmp_path / "dupes.csv", "model,a,b\nm1,1,2\nm1,2,3"),
        "text": write_csv(tmp_path / "text.csv", "model,notes\nm1,fine"),
        "two": write_csv(tmp_path / "two.csv", "model,a,b,c\nm1,1,2,3\nm2,3,1,2"),
    }


@pytest.mark.parametrize(
    "args, kind, message",
    [
        (["benchmark=table", "benchmark.path=DUPES"], DataError, "duplicate model names in column 'model': m1"),
        (["benchmark=table", "benchmark.path=TEXT"], DataError, "no numeric category columns"),
        ([*BFCL_ALL, "pool.models=[{name: watt-tool-7B}]"], ConfigError, "pool model 'watt-tool-7B' is not in"),
        ([*BFCL], ConfigError, "pool=toy_zoo is a model family, but benchmark=bfcl reads its scores from a table"),
        ([*BFCL_ALL, "benchmark.categories=[Multi Turn Bse]"], DataError, "category 'Multi Turn Bse' (benchmark.categories) is not a column"),
        ([*BFCL_ALL, "selection.tau=0.01"], ConfigError, "the selection is empty: no pair of categories has |rho| < tau=0.01; the weakest pair is"),
        (["benchmark=table"], ConfigError, "no value for benchmark.path"),
        ([*BFCL_ALL, "selection=manual", "selection.models=[nope]"], ConfigError,
         "selection: pool model 'nope' is not in the pool (CoALM-70B, ToolACE-2-8B (FC), "),
        (["benchmark=table", "benchmark.path=TWO", "pool=all"], ConfigError,
         "selection=soce chooses experts by the correlations between categories, which need at least 3 models; "
         "the analysis has 2 (m1, m2). Add candidates to the pool, or choose selection=all or selection=manual"),
    ],
)
def test_bad_input_raises_the_kind_of_error_with_a_message_naming_the_fault(study, bad_tables, args, kind, message):
    args = [a.replace("DUPES", str(bad_tables["dupes"])).replace("TEXT", str(bad_tables["text"])).replace("TWO", str(bad_tables["two"]))
            for a in args]
    with pytest.raises(kind) as err:
        study(*args)
    assert message in str(err.value) and isinstance(err.value, SoceError)


def test_help_lists_every_option_of_every_group_and_no_schema(soce):
    from soce.cli import CONF_DIR
    from pathlib import Path

    r = soce("--help")
    assert r.returncode == 0 and r.stdout.startswith("soce: Soup Of Category Experts")
    assert "schema" not in r.stdout
    for group in Path(CONF_DIR).iterdir():
        if group.is_dir():
            assert f"  {group.name} " in r.stdout, group.name
            for option in group.glob("*.yaml"):
                assert option.stem in r.stdout, f"{group.name}={option.stem} is missing from soce --help"


def test_long_lists_are_summarised_on_the_terminal_and_kept_whole_in_the_json(study, tmp_path):
    rng = np.random.default_rng(0)
    header = "model,a,b,c,d,e,f,g,h"
    rows = [f"m{i}," + ",".join(f"{v:.3f}" for v in rng.random(5)) + ",1,1,1" for i in range(16)]  # f, g, h constant
    path = write_csv(tmp_path / "many.csv", "\n".join([header, *rows]))
    r = study("benchmark=table", f"benchmark.path={path}", "pool=all", "stage=select", "selection.tau=0.5")
    selection = json.loads((r.dir / "selection.json").read_text())
    shown = len(selection["excluded"]) - 10
    assert shown > 0 and f"and {shown} more (every one, with why, in selection.json)" in r.log
    undefined = json.loads((r.dir / "analysis.json").read_text())["undefined_pairs"]
    assert len(undefined) == 18  # every pair with f, g or h, said once per constant column, with why
    for c in "fgh":
        assert r.log.count(f"'{c}' has the same score, 1, for every model: it correlates with no category") == 1
    assert "more undefined pairs" not in r.log


@pytest.mark.parametrize("override, message", [
    ("selection.tua=0.1", "selection.tua is not a setting of soce; closest: 'tau'"),
    ("benchmark.per_categroy=5", "benchmark.per_categroy is not a setting of soce; closest: 'per_category'"),
])
def test_a_misspelt_key_gets_soces_error_not_hydras_hint_to_add_it(soce, override, message):
    """Hydra would answer 'To append to your config use +KEY=VALUE', which soce then refuses."""
    r = soce(override, "stage=analyze")
    assert r.returncode == 1 and message in r.stderr and "+" + override not in r.stderr + r.stdout
    ok = soce("-m", "selection.tau=0.1,0.3", "benchmark=demo", "pool=all", "stage=select", "tracker=none")
    assert ok.returncode == 0, ok.stderr  # a multirun's values and a known key: on to Hydra, as before
