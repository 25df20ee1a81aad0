"""The house's seams: the registries each config group is looked up in, the stages' declared
products, and the engine every evaluator generates and scores through."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from soce import config
from soce.cli import CONF_DIR
from soce.engine.hf import HfEngine
from soce.search import SEARCHES, ExpertsSearch, run_search
from soce.stages.runner import PIPELINE, PRODUCERS


@pytest.mark.parametrize("group", list(config.SCHEMAS))
def test_every_option_of_a_group_starts_from_a_registered_schema(group):
    """An option's YAML names its schema; adding one (a search, a selection, a benchmark) is its
    registered class and its YAML file, nothing else."""
    for path in (Path(CONF_DIR) / group).glob("*.yaml"):
        yaml = OmegaConf.to_container(OmegaConf.load(path))
        entry = next(d for d in yaml["defaults"] if isinstance(d, dict))
        assert next(iter(entry.values())) in config.SCHEMAS[group], path


def test_a_strategy_is_one_class_and_one_yaml():
    """search=experts (each expert alone, then the uniform soup) was added as one class in
    soce/search.py and conf/search/experts.yaml: it composes, is checked and runs."""
    search = OmegaConf.to_object(compose_cfg(["search=experts"]).search)
    assert isinstance(search, ExpertsSearch) and SEARCHES["experts"] is ExpertsSearch
    seen = []
    run_search(search, 3, lambda w: seen.append(w) or 0.0, [0, 1, 2])
    assert seen == [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1 / 3, 1 / 3, 1 / 3)]
    assert search.expected(3, (1, 2)) == 2  # shards split its points


def test_an_unknown_option_names_the_group_and_the_choices():
    with pytest.raises(config.ConfigError, match=r"search='simplex': expected one of grid, halving, .*experts"):
        SEARCHES["simplex"]


def test_every_engine_choice_is_a_registered_engine():
    from soce.choices import EngineName
    from soce.engine import ENGINES, register_engines

    register_engines()
    assert sorted(ENGINES) == sorted(e.value for e in EngineName)


def test_every_product_a_stage_reads_has_a_producer():
    for stage in PIPELINE.values():
        for product in stage.reads:
            assert product in PRODUCERS, (stage.name, product.name)
            assert PRODUCERS[product] is not stage


# --- the engine ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from tiny_models import build_tiny_llama

    from soce.engine.hf import load_model
    from soce.pool import Candidate

    path = build_tiny_llama(tmp_path_factory.mktemp("engine") / "m", seed=3)
    return HfEngine(*load_model(Candidate("m", path=str(path))))


def test_the_hf_engine_generates_as_transformers_does(engine):
    """Batched greedy continuations, left-padded: each as the model generates it alone, cut at its
    own limit and before its first stop id."""
    prompts = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 4]]
    got = engine.generate(prompts, [6, 3, 6], stop=[2])
    for prompt, limit, continuation in zip(prompts, [6, 3, 6], got):
        alone = engine.model.generate(torch.tensor([prompt]), max_new_tokens=limit, do_sample=False, pad_token_id=2,
                                      eos_token_id=[2])[0, len(prompt):].tolist()
        alone = alone[:alone.index(2)] if 2 in alone else alone
        assert continuation == alone
    assert all(len(c) <= limit for c, limit in zip(got, [6, 3, 6]))


def test_the_hf_engine_scores_as_lm_evals_hflm_does(engine):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=2, max_length=64)
    pairs = [("abc", "d"), ("hello", "world"), ("x", "yz")]
    theirs = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)], disable_tqdm=True)
    ours = engine.loglikelihood([lm._encode_pair(c, x) for c, x in pairs])  # the same token ids
    for (lp, greedy), (their_lp, their_greedy) in zip(ours, theirs):
        assert lp == pytest.approx(their_lp, abs=1e-4) and greedy == their_greedy


def test_a_soup_applied_to_the_engine_equals_the_merged_soup(tmp_path):
    from tiny_models import build_tiny_llama

    from soce.merge import merge_to_disk
    from soce.pool import Candidate

    a, b = (build_tiny_llama(tmp_path / n, seed=s) for n, s in (("a", 0), ("b", 1)))
    engine = HfEngine.load(Candidate("a", path=str(a)), experts=[str(a), str(b)])
    engine.apply([0.3, 0.7])
    merged = HfEngine.load(Candidate("s", path=str(merge_to_disk([a, b], [0.3, 0.7], tmp_path / "s", progress=False))))
    prompts = [[1, 3, 4, 5], [1, 7]]
    assert engine.generate(prompts, [5, 5], [2]) == merged.generate(prompts, [5, 5], [2])
    for (name, p), q in zip(engine.model.named_parameters(), merged.model.parameters()):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="holds no experts"):
        merged.apply([1.0])
