"""The embedded default: toy_fc, its AST scorer, the micro model family, the evaluators."""

import dataclasses
import json
import re
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from soce.errors import SoceError
from soce.engine.hf import HfEngine
from soce.toy_fc.direct import ToyFcDirect
from soce.evaluate.lm_eval_backend import LmEvalBackend
from soce.toy_fc.harness import TOY_FC_TASKS, toy_fc_backend
from soce.toy_fc import fc
from soce.zoo.family import FAMILIES, UNIFORM, build_family, default_cache_dir, mixed, specialised
from soce.zoo.realism import CandidateRealism, Realism, measure


# --- the benchmark ------------------------------------------------------------------------------
def test_splits_are_large_disjoint_and_deterministic():
    s = fc.splits(seed=0)
    for split in ("dev", "test"):
        for c in fc.CATEGORIES:
            assert sum(e.category == c for e in s[split]) >= 100
    assert not {e.prompt for e in s["dev"]} & {e.prompt for e in s["test"]}
    assert fc.splits(seed=0) == s and fc.splits(seed=1) != s


@pytest.fixture(scope="module")
def training_prompts():
    """Every prompt the families train on (their bases and their candidates), as their trainers
    draw them."""
    from soce.zoo.family import Trainer

    trainers = [Trainer(spec) for spec in FAMILIES.values()]
    return {e.prompt for t in trainers for data in (t.by_category, t.base_by_category) for examples in data.values()
            for e in examples}


@pytest.mark.parametrize("level", list(fc.LEVELS))
@pytest.mark.parametrize("seed", [0, 1, 2, 7, 1234])
@pytest.mark.parametrize("per_category", [5, 20, 100, 300])
def test_no_split_of_any_seed_or_size_shares_a_prompt_with_training(training_prompts, seed, per_category, level):
    splits = fc.splits(seed, per_category, level)
    held_out = {e.prompt for split in splits.values() for e in split}
    assert len(held_out) == 2 * per_category * len(fc.CATEGORIES)
    assert not held_out & training_prompts
    for split, examples in splits.items():  # by construction: each split from its own part of the prompt space
        assert {fc.side_of(e.prompt) for e in examples} == {split}


def test_training_data_comes_from_the_train_side_only(training_prompts):
    assert len(training_prompts) >= 6 * 2000  # the default family's 2000 per category, at least
    assert {fc.side_of(p) for p in training_prompts} == {"train"}


def test_a_split_larger_than_its_part_of_the_prompt_space_is_refused():
    with pytest.raises(SoceError, match="per_category=600: toy_fc cannot draw that many distinct simple examples for dev"):
        fc.splits(0, 600)


def test_dev_and_test_are_drawn_alike():
    """The same mixture of functions in dev and test: no split takes the rare prompts first."""
    s = fc.splits(0, 100)
    share = {split: sum(json.loads(e.calls)[0][0] == "convert" for e in s[split] if e.category == "json") / 100 for split in s}
    assert abs(share["dev"] - share["test"]) < 0.15, share


def ex(category: str, calls: list, offered: str = "get_weather(city, unit)") -> fc.Example:
    return fc.Example("x", category, f"functions: {offered} | ...", "", json.dumps(calls))


WEATHER = ["get_weather", {"city": "paris", "unit": "celsius"}]
ROME = ["get_weather", {"city": "rome", "unit": "celsius"}]
ALARM = ["set_alarm", {"hour": 7, "minute": 30}]


@pytest.mark.parametrize(
    "category, calls, output, correct",
    [
        ("simple", [WEATHER], "[get_weather(city='paris', unit='celsius')]", True),
        ("simple", [WEATHER], "[ get_weather ( unit = 'celsius' , city = 'paris' ) ]", True),  # argument order, spacing
        ("simple", [WEATHER], '[get_weather(city="paris", unit="celsius")]', True),  # either quote, as in Python
        ("simple", [WEATHER], "[get_weather(city='paris')]", False),  # a missing argument
        ("simple", [WEATHER], "[get_weather(city='paris', unit='celsius', days=3)]", False),  # an extra argument
        ("simple", [WEATHER], "[get_weather('paris', 'celsius')]", False),  # positional
        ("simple", [WEATHER], "[get_weathr(city='paris', unit='celsius')]", False),  # wrong function
        ("simple", [WEATHER], "[get_weather(city='paris', unit='celsius'), get_weather(city='paris', unit='celsius')]", False),
        ("simple", [WEATHER], "get_weather(city='paris', unit='celsius')", False),  # not a list of calls
        ("simple", [WEATHER], "[]", False),  # no call where one is due
        ("simple", [WEATHER], "[get_weather(city='paris', unit='celsius'", False),  # unparseable
        ("multiple", [ALARM], "[set_alarm(hour=7, minute=30)]", True),
        ("multiple", [ALARM], "[set_alarm(hour='7', minute=30)]", False),  # the type matters
        ("parallel", [WEATHER, ROME], "[get_weather(city='rome', unit='celsius'), get_weather(city='paris', unit='celsius')]", True),
        ("parallel", [WEATHER, ROME], "[get_weather(city='rome', unit='celsius')]", False),  # a missing call
        ("parallel_multiple", [WEATHER, ALARM], "[set_alarm(minute=30, hour=7), get_weather(city='paris', unit='celsius')]", True),
        ("irrelevance", [], "[]", True),  # the explicit no call
        ("irrelevance", [], "[get_weather(city='paris', unit='celsius')]", False),
        ("irrelevance", [], "", False),  # silence is not an answer
        ("json", [WEATHER], '[{"name": "get_weather", "arguments": {"unit": "celsius", "city": "paris"}}]', True),
        ("json", [WEATHER], "[{'name': 'get_weather', 'arguments': {'city': 'paris', 'unit': 'celsius'}}]", False),
        ("json", [WEATHER], "[get_weather(city='paris', unit='celsius')]", False),  # the wrong syntax
        ("json", [WEATHER], '[{"name": "get_weather", "arguments": {"city": "paris"}, "extra": 1}]', False),
    ],
)
def test_ast_scorer(category, calls, output, correct):
    assert fc.is_correct(output, ex(category, calls)) is correct


@pytest.mark.parametrize("level", list(fc.LEVELS))
def test_every_reference_answer_scores_right_and_every_word_is_in_the_vocabulary(level):
    from soce.toy_fc.tokenizer import build_tokenizer

    tok = build_tokenizer(level)
    for split in fc.splits(0, 100, level).values():
        assert all(fc.is_correct(e.answer, e) for e in split)
        assert tok.unk_token_id not in {i for e in split for i in tok(e.prompt + " " + e.answer)["input_ids"]}
        # a model that writes the reference tokens is scored right (12.5 is three tokens at level 2)
        assert all(fc.is_correct(tok.decode(tok(e.answer, add_special_tokens=False)["input_ids"]), e) for e in split)


def test_level_1_is_the_benchmark_it_always_was():
    """The micro and specialists families are trained and scored on level 1: its examples are
    those every earlier run saw, bit for bit."""
    import hashlib

    s = fc.splits(0)
    assert hashlib.sha256(json.dumps([e.to_dict() for e in s["dev"] + s["test"]]).encode()).hexdigest()[:16] == "8f512c322b6f573d"


def test_level_2_offers_near_namesakes_and_reorders_same_valued_arguments():
    lv = fc.LEVELS[2]
    dev = fc.splits(0, 300, 2)["dev"]

    def offered(e):
        return re.findall(r"(\w+)\(", e.prompt.split(" | ")[0])

    def of(category):
        return [e for e in dev if e.category == category]

    for e in of("multiple") + of("parallel_multiple"):
        assert len(offered(e)) == lv.offered and {n for n, _ in json.loads(e.calls)} <= set(offered(e))
    with_twin = [e for e in of("multiple") if lv.namesakes.get(json.loads(e.calls)[0][0]) in offered(e)]
    assert 0.35 < len(with_twin) / len(of("multiple")) < 0.8  # half of those with a namesake, and chance
    asked_twin = called = 0
    for e in of("irrelevance"):  # the call where its function is offered, else none; its namesake offered half the time
        request = e.prompt.split("request: ")[1].split(" | ")[0]
        asked = [n for n, (_, templates) in lv.functions.items()
                 if any(re.fullmatch(re.sub(r"\\\{\w+\\\}", r"\\S+", re.escape(t)), request) for t in templates)]
        assert len(asked) == 1
        calls = json.loads(e.calls)
        assert [n for n, _ in calls] == ([asked[0]] if asked[0] in offered(e) else [])
        called += bool(calls)
        asked_twin += lv.namesakes.get(asked[0]) in offered(e)
    assert 0.35 < called / len(of("irrelevance")) < 0.65 and asked_twin > 0.2 * len(of("irrelevance"))
    routes = [e for e in of("simple") if json.loads(e.calls)[0][0] == "find_route"]
    assert {e.prompt.split("request: route ")[1].split()[0] for e in routes} == {"from", "to"}  # both orders
    assert any(isinstance(a["amount"], float) for e in dev for n, a in json.loads(e.calls) if n == "convert")


def test_level_3_gives_each_category_a_skill_of_its_own():
    """Each category's own skill in 40 % of its draws (more of a split where the other prompts
    repeat: json's, 64 %), and nowhere else: numbers in words
    in simple, namesakes side by side in multiple, two values of one argument in parallel, "them"
    and "there" in parallel_multiple, a namesake asked for, offered or with its namesake in its
    place, in irrelevance; json's own skill is its format. `twisted=0`: none of them."""
    lv = fc.LEVELS[3]
    dev = fc.splits(0, 100, 3)["dev"]

    def offered(e):
        return re.findall(r"(\w+)\(", e.prompt.split(" | ")[0])

    def request(e):
        return e.prompt.split("request: ")[1].split(" | ")[0]

    def calls(e):
        return json.loads(e.calls)

    def asked(e):  # the function whose request template the request is (the first, where two are asked)
        first = request(e).split(" and ")[0]
        return next((n for n, (_, templates) in lv.functions.items()
                     if any(re.fullmatch(re.sub(r"\\\{\w+\\\}", r"\\S+", re.escape(t)), first) for t in templates)), None)

    def namesake_asked(e):  # a namesake asked for, offered or with its namesake in its place
        return any(asked(e) == fc.TWINS[n][0] and {n, asked(e)} & set(offered(e)) for n in fc.TWINS_IRRELEVANCE)

    number_words = set(" ".join(fc.NUMBER_WORDS.values()).split())
    own = {
        "simple": lambda e: bool(number_words & set(request(e).split())),
        "multiple": lambda e: any(fc.TWINS[n][0] in offered(e) for n in offered(e) if n in fc.TWINS),
        "parallel": lambda e: (r := request(e).split(" and "))[1].split()[0] != r[0].split()[0],  # "email bob and carol ..."
        "parallel_multiple": lambda e: bool({"them", "there"} & set(request(e).split())),
        "irrelevance": namesake_asked,
    }
    for category, has_it in own.items():
        of = [e for e in dev if e.category == category]
        assert 0.3 < sum(map(has_it, of)) / len(of) < 0.7, category  # 40 % drawn, more where the others repeat
    for e in dev:  # the namesakes are offered only where multiple's or irrelevance's own skill asks for them
        if set(offered(e)) & set(lv.rare):
            assert e.category in ("multiple", "irrelevance"), e.prompt
    for e in dev:
        if e.category == "simple" and own["simple"](e):  # the numbers, written in words
            (name, args), = calls(e)
            words = request(e).split()
            assert all(fc.NUMBER_WORDS[v].split()[0] in words for v in args.values() if isinstance(v, int))
        if e.category == "parallel_multiple" and own["parallel_multiple"](e):  # the second call names the first's value
            (_, first), (_, second) = calls(e)
            assert set(first.values()) & set(second.values())
        if e.category == "irrelevance":  # the call where the function asked for is offered, else none
            assert [n for n, _ in calls(e)] == ([asked(e)] if asked(e) in offered(e) else [])
    plain = fc.generate_examples(0, 100, "dev", level=3, twisted=0.0)
    assert not any(own[e.category](e) for e in plain if e.category in own)


def test_an_unknown_level_is_refused():
    with pytest.raises(SoceError, match="benchmark.level=4: toy_fc has levels 1, 2, 3"):
        fc.splits(0, 5, 4)


# --- the family ---------------------------------------------------------------------------------
def test_micro_family_loads_and_is_reused(zoo_cache):
    spec = FAMILIES["micro"]
    family = build_family("micro", zoo_cache / "zoo", progress=False)  # from the cache: no training
    assert set(family.candidates) == {c.name for c in spec.candidates}
    for path in [family.base, *family.candidates.values()]:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        assert type(model).__name__ == "LlamaForCausalLM" and len(tokenizer) == model.config.vocab_size
        assert tokenizer("calls:")["input_ids"][0] == tokenizer.bos_token_id


def test_a_corrupt_cached_model_is_rebuilt_identically(zoo_cache, tmp_path):
    cache = shutil.copytree(zoo_cache / "zoo", tmp_path / "zoo")
    family = build_family("micro", cache, progress=False)
    victim = family.candidates["micro-json"]
    weights = victim / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])  # truncated
    other = family.candidates["micro-parallel"] / "model.safetensors"
    other_mtime = other.stat().st_mtime_ns
    build_family("micro", cache, progress=False)
    assert weights.read_bytes() == original  # rebuilt, and deterministic: the same bytes
    assert other.stat().st_mtime_ns == other_mtime  # the intact ones are not touched


def test_an_unknown_family():
    with pytest.raises(SoceError, match="pool.zoo='huge'"):
        build_family("huge")


# --- realism: is a family like real fine-tunes? (soce.zoo.realism) --------------------------------
def test_a_mixture_is_general_data_plus_its_emphasis():
    m = mixed(0.4, json=1)
    assert sum(m.values()) == pytest.approx(1)
    assert m["json"] == pytest.approx(0.4 / 6 + 0.6) and m["simple"] == pytest.approx(0.4 / 6)
    assert specialised(m) == ("json",)
    assert specialised(mixed(0.3, parallel=1, parallel_multiple=1)) == ("parallel", "parallel_multiple")
    assert specialised(UNIFORM) == ()
    assert specialised({"json": 0.6, "simple": 0.2, "multiple": 0.1, "irrelevance": 0.1}) == ("simple", "json")
    with pytest.raises(ValueError, match="categories are"):
        mixed(0.4, jsn=1)


def _candidate(name, delta, emphasis, kept):
    return CandidateRealism(name, delta, emphasis, {c: 0.9 for c in fc.CATEGORIES}, kept)


def test_length_buckets_give_the_whole_batch_gradient():
    """A batch run in pieces of similar length (less padding) has the loss and gradient of the
    batch run whole: each piece's loss weighted by its share of the answer tokens."""
    import random

    from soce.zoo.family import Trainer

    spec = dataclasses.replace(FAMILIES["micro"], train_per_category=50)
    whole, pieces = Trainer(spec), Trainer(dataclasses.replace(spec, length_buckets=3))
    model = whole.new_model()
    rng = random.Random(0)
    batch = [rng.choice(whole.by_category[c]) for c in rng.choices(fc.CATEGORIES, k=16)]
    assert len({len(e.prompt) + len(e.answer) for e in batch}) > 3  # lengths to bucket

    def gradient(trainer):
        model.zero_grad(set_to_none=True)
        loss = trainer._backward(model, batch)
        return loss, torch.cat([p.grad.flatten() for p in model.parameters()])

    (loss, grad), (loss3, grad3) = gradient(whole), gradient(pieces)
    assert loss3 == pytest.approx(loss, rel=1e-5)
    torch.testing.assert_close(grad3, grad, rtol=1e-4, atol=1e-6)
    assert FAMILIES["default"].length_buckets == 2 and FAMILIES["micro"].length_buckets == 1  # micro: as it was


def test_the_realism_criteria_on_hand_made_measurements():
    base = {c: 0.8 for c in fc.CATEGORIES}
    close = _candidate("close", 0.10, ("json",), {c: 0.9 for c in fc.CATEGORIES if c != "json"})
    assert Realism("f", base, (close,)).failures() == []  # both bounds are inclusive
    far = _candidate("far", 0.101, (), {c: 1.0 for c in fc.CATEGORIES})
    forgot = _candidate("forgot", 0.05, ("json",), {"simple": 1.0, "parallel": 0.5})
    weak_base = {**base, "json": 0.3}
    assert Realism("f", weak_base, (close, far, forgot)).failures() == [
        "base: 0.30 on json (at least 0.5)",
        "far: moved 0.101 of the base's norm (at most 0.1)",
        "forgot: kept 50% of the base's score on parallel (at least 90%)",
    ]


def test_realism_measured_on_the_micro_family(zoo_cache):
    """The measurements are what they say: the relative delta is ||theta_i - theta_base|| /
    ||theta_base|| over every tensor, the scores are the direct evaluator's on dev, and `kept`
    divides them by the base's on the categories outside the candidate's mixture emphasis."""
    family = build_family("micro", zoo_cache / "zoo", progress=False)
    realism = measure(family, per_category=10)
    evaluator = ToyFcDirect(seed=0, per_category=10, batch_size=100)

    def load(path):
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)

    base, tokenizer = load(family.base)
    base_scores = evaluator.evaluate(HfEngine(base, tokenizer), "dev").scores
    assert realism.base_scores == base_scores
    theta = {n: p.detach().double() for n, p in base.named_parameters()}
    base_norm = torch.sqrt(sum(p.square().sum() for p in theta.values()))
    for spec, measured in zip(FAMILIES["micro"].candidates, realism.candidates):
        model, _ = load(family.candidates[spec.name])
        delta = torch.sqrt(sum((p.detach().double() - theta[n]).square().sum() for n, p in model.named_parameters()))
        assert measured.relative_delta == pytest.approx(float(delta / base_norm), rel=1e-9)
        assert measured.scores == evaluator.evaluate(HfEngine(model, tokenizer), "dev").scores
        assert measured.specialised == specialised(spec.mixture)
        assert measured.kept == {c: measured.scores[c] / base_scores[c] if base_scores[c] else 1.0
                                 for c in fc.CATEGORIES if c not in measured.specialised}
    assert realism.table().count("\n| micro-") == len(family.candidates)


@pytest.mark.slow
def test_the_default_family_is_realistic_and_the_specialists_are_not():
    """The criteria on the built families (soce's own cache, as `soce` builds it: about 2.5 min
    each when it is cold): the default meets all three; the specialists forget."""
    default = measure(build_family("default", default_cache_dir(), progress=False))
    assert default.failures() == [], default.table()
    assert all(c.relative_delta <= 0.10 for c in default.candidates)
    specialists = measure(build_family("specialists", default_cache_dir(), progress=False))
    failures = specialists.failures()
    assert any(f.startswith("base:") and "on json" in f for f in failures)  # the base is weak on json
    assert any(f.startswith("fc-json: kept") for f in failures) and any(f.startswith("fc-hot: moved") for f in failures)


# --- the evaluators ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def micro_json(zoo_cache):
    path = build_family("micro", zoo_cache / "zoo", progress=False).candidates["micro-json"]
    return HfEngine(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path))


def test_lm_eval_backend_agrees_with_direct_computation(micro_json):
    direct = ToyFcDirect(seed=0, per_category=40, batch_size=64).evaluate(micro_json, "dev")
    harness = toy_fc_backend(seed=0, per_category=40, batch_size=64).evaluate(micro_json, "dev")
    assert harness.scores == pytest.approx(direct.scores, abs=1e-12)
    assert {o.example_id: (o.correct, o.output) for o in harness.outcomes} == {o.example_id: (o.correct, o.output) for o in direct.outcomes}
    assert len(direct.outcomes) == 240 and 0 < sum(o.correct for o in direct.outcomes) < 240
    examples = {e.id: e for e in fc.splits(0, 40)["dev"]}
    assert all(fc.is_correct(o.output, examples[o.example_id]) == o.correct for o in direct.outcomes)  # the output kept is the one scored
    assert any(fc.parse_calls(o.output, "json" if o.category == "json" else "python") is None for o in direct.outcomes
               if not o.correct)  # unparseable outputs are kept too, scored wrong


def test_lm_eval_prints_nothing_outside_a_git_checkout(micro_json, tmp_path, monkeypatch, capfd):
    """lm-eval asks git for its hash at every evaluation; outside a checkout git printed 'fatal:
    not a git repository' each time (85 lines a sweep). Captured at the file descriptors."""
    monkeypatch.chdir(tmp_path)
    toy_fc_backend(seed=0, per_category=5, batch_size=64).evaluate(micro_json, "dev")
    assert "not a git repository" not in capfd.readouterr().err


def test_a_long_lm_eval_evaluation_logs_its_progress_by_requests(micro_json, caplog, monkeypatch):
    """Issue 38: an lm-eval task of a large model ran for minutes with no line in soce.log. Its
    requests are counted as they are answered: a line once it has run 5 s, one every 30 s, one at
    the end; an evaluation too short for a line (a sweep's) adds none."""
    import itertools

    from soce import progress

    backend = toy_fc_backend(seed=0, per_category=5, batch_size=16)
    with caplog.at_level("INFO", logger="soce.progress"):
        fast = itertools.count(0.0, 0.01)  # every reading 10 ms later: 0.3 s for the task
        monkeypatch.setattr(progress.time, "monotonic", lambda: next(fast))
        backend.evaluate(micro_json, "dev", label="fc-json")
        assert not caplog.records
        slow = itertools.count(0.0, 10.0)  # every reading 10 s later: a slow machine, 5 min for the task
        monkeypatch.setattr(progress.time, "monotonic", lambda: next(slow))
        backend.evaluate(micro_json, "dev", label="fc-json")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "lm-eval fc-json on dev, generate_until: 1/30 requests in 10 s (10 s/request, about 4.8 min left)", lines
    assert re.fullmatch(r"lm-eval fc-json on dev, generate_until: done, 30/30 requests in 5\.\d min .*", lines[-1]), lines
    assert len(lines) == 11  # at 10 s, then every 30 s (3 readings) to 280 s, and the end: not one a request


def test_the_harness_sees_weights_changed_in_place(micro_json):
    """One HFLM wrapper across soups: no cached answers from the weights before."""
    model = micro_json.model
    backend = toy_fc_backend(seed=0, per_category=20, batch_size=64)
    before = backend.evaluate(micro_json, "dev")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(0.0)
    after = backend.evaluate(micro_json, "dev")
    model.load_state_dict(saved)
    assert after.scores != before.scores


def test_a_foreign_tokenizer_is_refused(tmp_path):
    from tiny_models import build_tiny_llama

    path = build_tiny_llama(tmp_path / "foreign", seed=0)
    with pytest.raises(SoceError, match="tokenizer does not match toy_fc's vocabulary"):
        ToyFcDirect(seed=0, per_category=5, batch_size=64).evaluate(HfEngine(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)), "dev")


def test_a_family_of_another_level_is_refused_with_the_level_to_set(zoo_cache):
    micro = build_family("micro", zoo_cache / "zoo", progress=False)  # level 1
    engine = HfEngine(AutoModelForCausalLM.from_pretrained(micro.base), AutoTokenizer.from_pretrained(micro.base))
    with pytest.raises(SoceError, match="its tokenizer is toy_fc level 1's, and benchmark.level=2; set benchmark.level=1"):
        ToyFcDirect(seed=0, per_category=5, batch_size=64, level=2).evaluate(engine, "dev")


def test_an_unknown_lm_eval_task_is_named_with_where_it_was_looked_for():
    with pytest.raises(SoceError, match=r"lm-eval task 'toy_fc_dev_simpel' \(benchmark.dev_tasks\) does not exist in lm-eval "
                                        rf"nor in benchmark.include_path \({TOY_FC_TASKS}\); closest: 'toy_fc_dev_simple', .* "
                                        "Set benchmark.include_path to the folder of its YAML"):
        LmEvalBackend({"dev": ["toy_fc_dev_simpel"]}, include_path=TOY_FC_TASKS, metric="acc", batch_size=8,
                      max_length=256, include_defaults=False)


def _toy_backend(tasks, **options):
    return LmEvalBackend(tasks, include_path=TOY_FC_TASKS, metric="acc", batch_size=64, max_length=256,
                         include_defaults=False, metadata={"seed": 0, "per_category": 5}, **options)


def test_an_lm_eval_group_stands_for_its_tasks_each_a_category(micro_json):
    """benchmark.dev_tasks=[toy_fc_dev], a group: its six tasks are the categories (named after
    the dev tasks), the test group's six tasks are theirs in the same order; the scores are those
    of the tasks named one by one."""
    grouped = _toy_backend({"dev": ["toy_fc_dev"], "test": ["toy_fc_test"]})
    assert grouped.categories == tuple(f"toy_fc_dev_{c}" for c in fc.CATEGORIES)
    assert list(grouped.tasks["test"].values()) == [f"toy_fc_test_{c}" for c in fc.CATEGORIES]
    one_by_one = _toy_backend({"dev": {c: f"toy_fc_dev_{c}" for c in fc.CATEGORIES}})
    ours, theirs = grouped.evaluate(micro_json, "dev"), one_by_one.evaluate(micro_json, "dev")
    assert list(ours.scores.values()) == list(theirs.scores.values())
    with pytest.raises(SoceError, match="benchmark.test_tasks has 1 tasks, the categories are 6"):
        _toy_backend({"dev": ["toy_fc_dev"], "test": ["toy_fc_test_simple"]})
    named = _toy_backend({"dev": ["toy_fc_dev"]}, categories=list(fc.CATEGORIES))
    assert named.categories == tuple(fc.CATEGORIES)


def test_lm_eval_options_reach_the_harness_and_the_fingerprint(micro_json):
    plain = _toy_backend({"dev": ["toy_fc_dev_simple", "toy_fc_dev_json"]})
    limited = _toy_backend({"dev": ["toy_fc_dev_simple", "toy_fc_dev_json"]}, limit=2, num_fewshot=0,
                           gen_kwargs={"max_gen_toks": 8})
    assert len(limited.example_ids("dev")) == 4 and len(plain.example_ids("dev")) == 10
    result = limited.evaluate(micro_json, "dev")
    assert len(result.outcomes) == 4 and all(len(o.output.split()) <= 8 for o in result.outcomes)
    assert {k: limited.fingerprint[k] for k in ("limit", "num_fewshot", "gen_kwargs")} == {
        "limit": 2, "num_fewshot": 0, "gen_kwargs": {"max_gen_toks": 8}}
    assert "limit" not in plain.fingerprint  # unset options leave the question as it was
    with pytest.raises(SoceError, match="benchmark.limit=0"):
        _toy_backend({"dev": ["toy_fc_dev_simple"]}, limit=0)


def test_the_evaluator_is_built_once_per_setting(tmp_path):
    from conftest import compose_cfg
    from soce.stages.study import Study
    from soce.tracking import NoTracker

    def evaluator(*overrides):
        return Study(compose_cfg(list(overrides)), tmp_path, NoTracker()).evaluator

    first = evaluator("benchmark.per_category=5")
    assert evaluator("benchmark.per_category=5") is first  # lm-eval's task index is built once, not at every stage
    assert evaluator("benchmark.per_category=6") is not first


# --- the pipeline on the micro family -------------------------------------------------------------
def test_analyze_end_to_end_on_the_micro_family(study, zoo_cache, tmp_path):
    args = ["benchmark=toy_fc", "benchmark.per_category=20", "pool=toy_zoo_micro", f"pool.cache_dir={zoo_cache}", "stage=select",
            "selection.tau=0.6"]
    r = study(*args)
    run = tmp_path / "run"
    header = (run / "scores.csv").read_text().splitlines()[0]
    assert header == "model," + ",".join(fc.CATEGORIES) + ",overall"
    assert len((run / "scores_test.csv").read_text().splitlines()) == 5  # 4 candidates
    outcomes = [json.loads(line) for line in (run / "outcomes.jsonl").read_text().splitlines()]
    assert len(outcomes) == 4 * 6 * 20 and {o["model"] for o in outcomes} == {c.name for c in FAMILIES["micro"].candidates}
    assert json.loads((run / "selection.json").read_text())["experts"]
    assert "evaluated micro-json on dev" in r.log
    again = study(*args, run_dir=tmp_path / "run2")  # every evaluation comes from the cache
    assert "evaluated" not in again.log
    assert (tmp_path / "run2" / "scores.csv").read_text() == (run / "scores.csv").read_text()


@pytest.mark.slow  # four candidates through lm-eval on three tasks of two splits: 15-17 s
def test_any_lm_eval_task_group_through_the_generic_benchmark(study, zoo_cache, tmp_path):
    """benchmark=lm_eval with local tasks (here toy_fc's own YAMLs) and a pool of model paths."""
    family = build_family("micro", zoo_cache / "zoo", progress=False)
    models = ",".join(f"{{name: {n}, path: '{p}'}}" for n, p in family.candidates.items())
    study("benchmark=lm_eval", "benchmark.dev_tasks=[toy_fc_dev_simple,toy_fc_dev_json,toy_fc_dev_parallel]",
          "benchmark.test_tasks=[toy_fc_test_simple,toy_fc_test_json,toy_fc_test_parallel]",
          f"benchmark.include_path={TOY_FC_TASKS}", "benchmark.limit=20", "pool=all", f"pool.models=[{models}]",
          f"pool.cache_dir={tmp_path / 'cache'}", "stage=analyze")
    header = (tmp_path / "run" / "scores.csv").read_text().splitlines()[0]
    assert header == "model,toy_fc_dev_simple,toy_fc_dev_json,toy_fc_dev_parallel,overall"
    assert (tmp_path / "run" / "scores_test.csv").exists()



@pytest.mark.slow  # lm-eval twice over 230 examples: about 7 s
def test_an_lm_eval_groups_aggregate_is_the_objective_lm_eval_reports(zoo_cache, tmp_path):
    """search.objective=benchmark with an lm-eval group asked for: the objective of a model's
    outcomes is the group's own result as lm-eval's simple_evaluate reports it (weight_by_size:
    true, over tasks of 100 and 30 examples), averaged with a task asked for alone."""
    from lm_eval import simple_evaluate

    from soce.objective import OBJECTIVES

    tasks = shutil.copytree(TOY_FC_TASKS, tmp_path / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    (tasks / "small_json.yaml").write_text("include: _toy_fc.yaml\ntask: small_json\n"
                                           "dataset_kwargs:\n  category: json\n  split: dev\n  per_category: 30\n")
    (tasks / "mixed.yaml").write_text("group: mixed\ntask:\n  - toy_fc_dev_simple\n  - small_json\naggregate_metric_list:\n"
                                      "  - metric: acc\n    aggregation: mean\n    weight_by_size: true\n")
    family = build_family("micro", zoo_cache / "zoo", progress=False)
    engine = HfEngine(*map(lambda f: f.from_pretrained(family.candidates["micro-json"]), (AutoModelForCausalLM, AutoTokenizer)))
    backend = LmEvalBackend({"dev": ["mixed", "toy_fc_dev_parallel"]}, include_path=tasks, metric="acc", batch_size=32,
                            max_length=256, include_defaults=False)
    objective = OBJECTIVES["benchmark"](backend)
    assert objective.name == "lm_eval_groups" and "mixed (weighted by size)" in objective.label
    result = backend.evaluate(engine, "dev")
    own = simple_evaluate(model=engine.harness_model(batch_size=32, max_length=256, model_args={}), tasks=["mixed"],
                          task_manager=backend.task_manager, bootstrap_iters=0, verbosity="ERROR")["results"]["mixed"]["acc,none"]
    assert objective.of(result.scores, result.outcomes) == pytest.approx((own + result.scores["toy_fc_dev_parallel"]) / 2)
    assert [sum(o.category == c for o in result.outcomes) for c in ("toy_fc_dev_simple", "small_json")] == [100, 30]
    assert result.scores["small_json"] != result.scores["toy_fc_dev_simple"]  # the weights matter

def test_the_family_trains_to_the_same_bits_with_any_thread_count():
    """soce picks the thread count by the machine's load (soce.threads): it must not change a model."""
    from soce.zoo.family import Trainer

    before = torch.get_num_threads()
    trainer = Trainer(dataclasses.replace(FAMILIES["micro"], train_per_category=40, batch_size=16))
    bar = type("Bar", (), {"update": lambda *a: None, "set_postfix": lambda *a, **k: None})()
    models = []
    for threads in (1, 2):
        model = trainer.new_model()
        torch.set_num_threads(threads)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        trainer._steps(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), ["simple", "json"], [0.5, 0.5],
                       __import__("random").Random(0), 8, bar, trainer.by_category)
        models.append(model.state_dict())
    torch.set_num_threads(before)
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_the_family_build_writes_progress_lines_to_soce_log(zoo_cache):
    """Built by `soce stage=zoo` with no terminal (conftest): soce.log says what it trains, how far
    it is, how fast and how long is left, and when it is done."""
    log = (zoo_cache / "build" / "soce.log").read_text()
    assert "zoo micro: training base, micro-generalist, micro-json, micro-parallel, micro-relevance (600 steps" in log
    assert re.search(r"zoo micro: \d+/600 steps in \d+ s \([\d.]+ (s/step|step/s), about [\d.]+ (s|min) left\)", log)
    assert re.search(r"zoo micro: done, 600/600 steps in [\d.]+ (s|min) \(", log)
