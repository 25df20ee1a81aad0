"""benchmark=bfcl: BFCL's own data, handlers and checkers (bfcl-eval), soce's in-process model."""

from __future__ import annotations

import ast
import json
import re
import random
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("bfcl_eval", reason="benchmark=bfcl needs the bfcl extra: pip install 'soce[bfcl]'")

from bfcl_oracle import language_of, render  # noqa: E402

from soce.errors import ConfigError, EvaluationError  # noqa: E402
from soce import bfcl  # noqa: E402

XLAM = "Salesforce/Llama-xLAM-2-8b-fc-r"
AST_COLUMNS = [c for c in bfcl.CATEGORIES if "AST" in c]
# Entries whose possible answers no output can meet: they contradict their own function docs in
# bfcl-eval 2026.3.23's data (a required parameter with no acceptable value or left out of the
# answer, an answer parameter the doc does not have, a HashMap answer that is not a list of
# options, an 'any'-typed list whose answer holds non-strings). Every model fails them.
UNSATISFIABLE = {
    "live_simple_106-63-0", "live_simple_112-68-0",  # required parameters with no acceptable value
    "live_multiple_507-149-4", "live_multiple_964-207-0",  # a required parameter missing from the answer
    "live_multiple_862-181-3", "parallel_multiple_26",  # an answer parameter the function does not have
    "simple_java_36", "simple_java_65",  # ArrayList of 'any': the checker compares strings to numbers
    "simple_java_64",  # a HashMap answer whose values are not lists of options
}


class StubTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return text.split()


class StubEngine:
    """What a handler reads from the engine when nothing is generated."""
    tokenizer = StubTokenizer()
    name = "stub"
    context_length = 32768


@pytest.fixture(scope="module")
def ast_eval():
    return bfcl.BfclEvaluator(AST_COLUMNS, split="none")


@pytest.fixture(scope="module")
def xlam(ast_eval):
    return ast_eval.make_handler(XLAM, StubEngine(), None)


def _oracle(evaluator, handler, entries, answer=lambda e: e.answer):
    records = [{"id": e.id, "result": render(e, answer(e), language_of(e.file))} for e in entries]
    return {o.example_id: o.correct for o in evaluator.check(handler, entries, records)}


def test_possible_answers_score_right_on_every_ast_entry(ast_eval, xlam):
    entries = ast_eval.examples["dev"]
    verdicts = _oracle(ast_eval, xlam, entries)
    assert len(verdicts) == 2501
    assert sorted(i for i, ok in verdicts.items() if not ok) == sorted(UNSATISFIABLE)
    files = {e.file for e in entries}
    assert files == {f for c in AST_COLUMNS for f in bfcl.CATEGORIES[c]}


def _changed(answer: list) -> list:
    """The possible answer with its first call's first required-looking argument changed to a
    value no possible answer lists."""
    call = json.loads(json.dumps(answer))
    (name, params), = call[0].items()
    key = next(k for k, options in params.items() if options and options[0] != "")
    params[key] = ["soce-wrong-value-0xdeadbeef"] if not isinstance(params[key][0], bool) else [not params[key][0]]
    return call


def test_a_changed_argument_or_a_dropped_call_fails_exactly_those_entries(ast_eval, xlam):
    entries = [e for e in ast_eval.examples["dev"] if e.id not in UNSATISFIABLE]
    rng = random.Random(0)
    changed = {e.id for e in rng.sample(entries, 150)}
    several = [e for e in entries if len(e.answer) > 1]
    dropped = {e.id for e in rng.sample(several, 60)} - changed

    def answer(e):
        if e.id in changed:
            return _changed(e.answer)
        if e.id in dropped:
            return e.answer[:-1]
        return e.answer

    verdicts = _oracle(ast_eval, xlam, entries, answer)
    assert {i for i, ok in verdicts.items() if not ok} == changed | dropped


def test_no_call_passes_irrelevance_and_fails_relevance():
    evaluator = bfcl.BfclEvaluator(["Relevance Detection", "Irrelevance Detection"], split="none")
    handler = evaluator.make_handler(XLAM, StubEngine(), None)
    entries = evaluator.examples["dev"]
    for output, want in (("I cannot help with that: no tool fits.", {"Irrelevance Detection": 1.0, "Relevance Detection": 0.0}),
                         ("[]", {"Irrelevance Detection": 1.0, "Relevance Detection": 0.0})):
        outcomes = evaluator.check(handler, entries, [{"id": e.id, "result": output} for e in entries])
        assert evaluator.scores(outcomes, entries) == want
    calls = [{"id": e.id, "result": json.dumps([{"name": (e.checked["function"] or [{"name": "lookup"}])[0]["name"], "arguments": {}}])} for e in entries]
    assert evaluator.scores(evaluator.check(handler, entries, calls), entries) == {"Irrelevance Detection": 0.0,
                                                                                   "Relevance Detection": 1.0}


class ScriptedClient:
    """Completions that replay a multi-turn entry's ground truth: each turn, its calls in one
    step (in the xLAM handler's JSON), then an empty answer that ends the turn."""

    def __init__(self) -> None:
        self.completions = self
        self.script: list[str] = []

    def load(self, entry) -> None:
        docs = [*entry.prompt["function"], *(f for fs in entry.prompt.get("missed_function", {}).values() for f in fs)]
        params = {d["name"]: list(d["parameters"]["properties"]) for d in docs}
        self.script = []
        for calls in entry.answer:
            if calls:
                self.script.append(json.dumps([_as_json_call(c, params) for c in calls]))
            self.script.append("Done.")

    def create(self, **_):
        from types import SimpleNamespace

        text = self.script.pop(0) if self.script else "Done."
        return SimpleNamespace(choices=[SimpleNamespace(text=text)], usage=SimpleNamespace(prompt_tokens=1, completion_tokens=1))


def _as_json_call(call: str, params: dict[str, list[str]]) -> dict:
    """'f(1, b=2)' -> {"name": "f", "arguments": {"a": 1, "b": 2}} (positional arguments named
    from the function's documented parameters, in order)."""
    node = ast.parse(call, mode="eval").body
    name = ast.unparse(node.func)
    arguments = {params[name][i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
    return {"name": name, "arguments": {**arguments, **{k.arg: ast.literal_eval(k.value) for k in node.keywords}}}


def test_ground_truth_through_the_handlers_multi_turn_loop_scores_right():
    import copy

    columns = [c for c in bfcl.CATEGORIES if c.startswith("Multi Turn")]
    evaluator = bfcl.BfclEvaluator(columns, split="halves", limit=4)
    client = ScriptedClient()
    handler = evaluator.make_handler(XLAM, StubEngine(), client)
    entries = evaluator.examples["dev"]
    bfcl.evaluator._reset_multi_turn_state()
    records = []
    for e in entries:
        client.load(e)
        result, _ = handler.inference(copy.deepcopy(e.prompt), False, True)
        records.append({"id": e.id, "result": result})
    scores = evaluator.scores(evaluator.check(handler, entries, records), entries)
    assert scores == {c: 1.0 for c in columns}
    # and a turn left out fails its entry
    broken = [{"id": r["id"], "result": r["result"][:-1] + [[]]} for r in records]
    assert evaluator.scores(evaluator.check(handler, entries, broken), entries) == {c: 0.0 for c in columns}


# --- the split, the categories, bad input -------------------------------------------------------
def test_dev_and_test_halve_every_test_file_with_a_fixed_seed():
    entries = bfcl.load_entries(["Non-Live Simple AST", "Irrelevance Detection"])
    a = bfcl.split_entries(entries, split="halves", seed=0, limit=None)
    b = bfcl.split_entries(entries, split="halves", seed=0, limit=None)
    assert [e.id for e in a["dev"]] == [e.id for e in b["dev"]]
    for file, items in entries.items():
        dev = [e for e in a["dev"] if e.file == file]
        test = [e for e in a["test"] if e.file == file]
        assert len(dev) == (len(items) + 1) // 2 and len(dev) + len(test) == len(items)
        assert not {e.id for e in dev} & {e.id for e in test}
    other = bfcl.split_entries(entries, split="halves", seed=1, limit=None)
    assert {e.id for e in other["dev"]} != {e.id for e in a["dev"]}
    one = bfcl.split_entries(entries, split="none", seed=0, limit=2)
    assert list(one) == ["dev"] and len(one["dev"]) == 2 * len(entries)


def test_bad_input_is_named():
    with pytest.raises(ConfigError, match=r"no model 'Salesforce/Llama-xLAM-2-8b'.*closest: 'Salesforce/Llama-xLAM-2-8b-fc-r'"):
        bfcl.BfclEvaluator(["Live Simple AST"], handler="Salesforce/Llama-xLAM-2-8b")
    with pytest.raises(ConfigError, match=r"'gpt-4o-2024-11-20' is served by a vendor's API"):
        bfcl.BfclEvaluator(["Live Simple AST"], handler="gpt-4o-2024-11-20")
    with pytest.raises(ConfigError, match=r"'Live Simpel AST' is not a BFCL leaderboard column; closest: 'Live Simple AST'"):
        bfcl.BfclEvaluator(["Live Simpel AST"], handler=XLAM)
    with pytest.raises(ConfigError, match=r"benchmark.limit=0"):
        bfcl.BfclEvaluator(["Live Simple AST"], handler=XLAM, limit=0)


def test_bfcl_eval_missing_says_how_to_install(tmp_path):
    blocker = tmp_path / "bfcl_eval"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'bfcl_eval'\", name='bfcl_eval')\n")
    code = ("from soce import bfcl\n"
            "try:\n    bfcl.import_bfcl()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert "EvaluationError benchmark=bfcl needs bfcl-eval" in out.stdout
    assert "pip install 'soce[bfcl]'" in out.stdout


# --- the real generation path on a tiny Llama ---------------------------------------------------
@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    from soce.bfcl.standin import build_standin, build_tokenizer

    root = tmp_path_factory.mktemp("standins")
    tokenizer = build_tokenizer()
    return {"chat": build_standin(root / "chat", seed=0, tokenizer=tokenizer),
            "plain": build_standin(root / "plain", seed=1, tokenizer=tokenizer, chat_template=False)}


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from soce.engine.hf import HfEngine

    return HfEngine(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))


@pytest.mark.slow  # every test file, the multi-turn ones' prompts about 17,000 tokens: 30 s
def test_generation_runs_end_to_end_on_a_tiny_llama(standins, tmp_path, caplog):
    engine = _load(standins["chat"])
    evaluator = bfcl.BfclEvaluator(list(bfcl.CATEGORIES), handler=XLAM, limit=1, max_new_tokens=8, batch_size=4,
                                   result_dir=tmp_path / "bfcl")
    with caplog.at_level("INFO", logger="soce.progress"):
        result = evaluator.evaluate(engine, "dev", label="chat")
    # counted entry by entry: without a terminal, lines in the log (every 30 s, and the last)
    n = len(result.outcomes)
    assert re.search(rf"bfcl chat on dev: done, {n}/{n} entries in ", caplog.text), caplog.text
    files = [f for c in bfcl.CATEGORIES.values() for f in c]
    assert len(result.outcomes) == len(files)  # one entry of each test file
    assert set(result.scores) == set(bfcl.CATEGORIES)
    assert {o.category for o in result.outcomes} == set(bfcl.CATEGORIES)
    # random weights call no function: irrelevance is right, everything else wrong (never a crash)
    assert result.scores["Irrelevance Detection"] == 1.0
    assert all(v == 0.0 for c, v in result.scores.items() if c != "Irrelevance Detection")
    # the leaderboard's Overall Acc: the irrelevance files' weights (1/15 non-live, live's by its 882 of 2251 entries)
    objective = evaluator.benchmark_objective()
    assert objective.name == "bfcl_v3_overall"
    assert objective.of(result.scores, result.outcomes) == pytest.approx(1 / 15 + 882 / (3 * 2251))
    written = sorted(p.name for p in (tmp_path / "bfcl" / "chat-dev").rglob("*_result.json"))
    assert written == sorted(f"BFCL_v4_{f}_result.json" for f in files)
    # the same weights give the same generations (on the short categories: the long ones cost most)
    short = ["Non-Live Multiple AST", "Live Simple AST", "Irrelevance Detection"]
    again = bfcl.BfclEvaluator(short, handler=XLAM, limit=1, max_new_tokens=8, batch_size=4).evaluate(engine, "dev")
    first = {o.example_id: o.output for o in result.outcomes}
    assert again.outcomes and all(o.output == first[o.example_id] for o in again.outcomes)


def test_a_handler_that_applies_the_chat_template_refuses_a_tokenizer_without_one(standins):
    engine = _load(standins["plain"])
    evaluator = bfcl.BfclEvaluator(["Live Simple AST"], handler="tiiuae/Falcon3-1B-Instruct-FC", limit=1, max_new_tokens=4)
    with pytest.raises(EvaluationError, match=r"plain: its tokenizer has no chat template.*tiiuae/Falcon3-1B-Instruct-FC"):
        evaluator.evaluate(engine, "dev")
    assert evaluator.evaluate(_load(standins["chat"]), "dev").scores == {"Live Simple AST": 0.0}


def test_bfcl_evaluate_scores_soces_result_files_as_soce_does(tmp_path, ast_eval, xlam):
    """Result files written for fixed generations (right and wrong ones) are scored by the
    `bfcl evaluate` command with the accuracy soce reports, per test file."""
    files = ["simple_python", "multiple", "live_simple", "irrelevance"]
    evaluator = bfcl.BfclEvaluator(["Non-Live Simple AST", "Non-Live Multiple AST", "Live Simple AST",
                                    "Irrelevance Detection"], split="halves", limit=12)
    entries = [e for e in evaluator.examples["dev"] if e.file in files]
    records = []
    for i, e in enumerate(entries):
        right = i % 3 != 2  # two of three right
        text = render(e, e.answer, language_of(e.file)) if right and e.answer is not None else (
            "no call" if e.answer is None and right else json.dumps([{"name": "nothing", "arguments": {}}]))
        records.append({"id": e.id, "result": text})
    outcomes = evaluator.check(xlam, entries, records)
    ours = {f: sum(o.correct for e, o in zip(entries, outcomes) if e.file == f) / sum(e.file == f for e in entries)
            for f in files}
    result_dir = tmp_path / "result"
    evaluator.write_results(xlam, records, result_dir)
    score_dir = tmp_path / "score"
    bfcl_cli = Path(sys.executable).parent / "bfcl"
    done = subprocess.run([str(bfcl_cli), "evaluate", "--model", XLAM, "--test-category", ",".join(files),
                           "--result-dir", str(result_dir), "--score-dir", str(score_dir), "--partial-eval"],
                          capture_output=True, text=True, env={**__import__("os").environ, "BFCL_PROJECT_ROOT": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    theirs = {}
    for f in files:
        path = next(score_dir.rglob(f"BFCL_v4_{f}_score.json"))
        theirs[f] = json.loads(path.read_text().splitlines()[0])["accuracy"]
    assert theirs == pytest.approx(ours)
    assert 0 < min(ours.values()) and max(ours.values()) < 1  # a test of both verdicts
    # and the score folder reads back as a score table for analysis and selection
    table = bfcl.read_bfcl_scores(score_dir, ["Non-Live Multiple AST", "Live Simple AST"])
    assert table.models == ("xLAM-2-8b-fc-r (FC)",)
    assert table.row("xLAM-2-8b-fc-r (FC)")["Live Simple AST"] == pytest.approx(100 * ours["live_simple"], abs=0.01)


@pytest.mark.slow
def test_the_paper_8b_experiment_runs_through_selection_and_a_first_point(soce, tmp_path):
    """experiment=paper_bfcl_8b as composed, on stand-ins: each pool entry keeps its name and its
    handler (xLAM's, ToolACE's, Llama 3.1's, ...) and gets the path of a tiny Llama instead of its
    Hub id's weights; selection reads the leaderboard fixture; the sweep's first point (the
    uniform soup) is evaluated on BFCL."""
    from conftest import BFCL_FIXTURE

    from soce.bfcl.standin import build_standin, build_tokenizer

    pool = [("xLAM-2-8b-fc-r", "Salesforce/Llama-xLAM-2-8b-fc-r", None), ("ToolACE-2-8B", "Team-ACE/ToolACE-2-8B", None),
            ("watt-tool-8B", "watt-ai/watt-tool-8B", "meta-llama/Llama-3.1-8B-Instruct"),
            ("BitAgent-8B", "BitAgent/BitAgent-8B", "BitAgent/BitAgent-Bounty-8B"),
            ("CoALM-8B", "uiuc-convai/CoALM-8B", "meta-llama/Llama-3.1-8B-Instruct")]
    tokenizer = build_tokenizer()
    entries = []
    for seed, (name, hub_id, handler) in enumerate(pool):
        path = build_standin(tmp_path / "models" / name, seed=seed, tokenizer=tokenizer)
        entries.append(f"{{name: {name}, hub_id: {hub_id}, path: {path}" + (f", handler: {handler}}}" if handler else "}"))
    run_dir = tmp_path / "run"
    r = soce("experiment=paper_bfcl_8b", f"benchmark.table={BFCL_FIXTURE}", f"pool.models=[{', '.join(entries)}]",
             "stage=sweep", "search.budget=1", "benchmark.limit=1", "benchmark.max_new_tokens=4", "sweep.device=cpu",
             "tracker=none", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    selection = json.loads((run_dir / "selection.json").read_text())
    experts = [e["model"] for e in selection["experts"]]
    assert experts and all(m in {p[0] for p in pool} | {f"{p[0]} (FC)" for p in pool} for m in experts)
    points = [json.loads(line) for line in (run_dir / "sweep.jsonl").read_text().splitlines()]
    assert len(points) == 1 and points[0]["split"] == "dev"
    assert set(points[0]["scores"]) == set(bfcl.CATEGORIES)
    assert "BFCL prompts of a soup: the handler of its largest-weight expert" in r.stdout + r.stderr
    assert list((run_dir / "bfcl").glob("sweep-*-dev"))  # the point's generations, as BFCL result files


@pytest.mark.slow  # a BFCL study through the soup stage on three stand-ins: about 25 s
def test_a_bfcl_study_reports_the_leaderboards_overall_from_every_rows_own_outcomes(study, standins, tmp_path):
    """benchmark=bfcl, through the soup stage: results.json names BFCL v3's Overall Acc, and every
    row's objective is the overall of its own stored outcomes (the bootstrap's estimate, inside
    its interval), for the candidates and the soups alike."""
    from soce.objective import OBJECTIVES
    from soce.scores import read_scores
    from soce.stats import Bootstrap
    from soce.sweep import record_outcomes

    models = ", ".join(f"{{name: {n}, path: '{standins['chat']}', handler: {XLAM}}}" for n in ("a", "b", "c"))
    categories = ["Live Simple AST", "Irrelevance Detection", "Non-Live Simple AST", "Relevance Detection"]
    study("benchmark=bfcl", "pool=all", f"pool.models=[{models}]", "benchmark.limit=2", f"benchmark.categories=[{', '.join(categories)}]",
          "benchmark.max_new_tokens=8", "selection=all", "search.budget=3", "stage=soup", "tracker=none")
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["objective"] == "bfcl_v3_overall" and results["objective_label"].startswith("BFCL v3 Overall Acc")
    evaluator = bfcl.BfclEvaluator(categories, handler=XLAM, limit=2)
    objective = OBJECTIVES["benchmark"](evaluator)
    examples = evaluator.example_ids("dev")
    boot = Bootstrap(examples, objective, samples=200)
    records = [json.loads(line) for line in (run / "sweep.jsonl").read_text().splitlines()]
    for row in results["rows"]:
        if row["role"] == "single":
            own = [o for o in read_scores(run / "scores.csv").outcomes if o.model == row["models"][0]]
            by_id = {o.example_id: o.correct for o in own}
        else:
            record = next(r for r in records if r["split"] == "dev" and r["weights"] == row["weights"] and r["experts"] == row["models"])
            by_id = {o.example_id: o.correct for o in record_outcomes(record["correct"], examples)}
        value = boot.interval([by_id[i] for i, _ in examples]).estimate
        assert row["dev"]["objective"] == pytest.approx(value), row["name"]
        assert row["dev"]["ci"][0] <= row["dev"]["objective"] <= row["dev"]["ci"][1], row["name"]


def test_a_point_evaluated_rung_by_rung_keeps_every_generation_in_its_folder(standins, tmp_path):
    """search=halving evaluates a point on pieces of the split: its result folder ends with every
    piece's generations, not the last piece's alone."""
    engine = _load(standins["chat"])
    evaluator = bfcl.BfclEvaluator(["Live Simple AST", "Irrelevance Detection"], handler=XLAM, limit=3, max_new_tokens=4,
                                   batch_size=4, result_dir=tmp_path / "bfcl")
    ids = [i for i, _ in evaluator.example_ids("dev")]
    for piece in (ids[:2], ids[2:]):
        evaluator.evaluate(engine, "dev", label="sweep-0.500-0.500", examples=piece)
    written = [json.loads(line)["id"] for f in (tmp_path / "bfcl" / "sweep-0.500-0.500-dev").rglob("*_result.json")
               for line in f.read_text().splitlines()]
    assert sorted(written) == sorted(ids) and len(ids) == 9


def test_two_names_never_share_a_result_folder():
    assert bfcl.evaluator._slug("m+1") != bfcl.evaluator._slug("m_1") == "m_1"
    assert bfcl.evaluator._slug("sweep-0.100-0.900") == "sweep-0.100-0.900"
    assert bfcl.evaluator._slug("org/model (FC)").startswith("org_model_FC-")


def test_a_result_folder_that_cannot_be_written_is_refused_before_any_generation(tmp_path):
    from test_faults import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        with pytest.raises(EvaluationError, match=rf"BFCL result files cannot be written to {ro}/bfcl .*benchmark.result_files=false"):
            bfcl.BfclEvaluator(["Live Simple AST"], handler=XLAM, limit=1, result_dir=ro / "bfcl")
