"""The closed sets of choices of soce's settings (a value outside one fails at composition, with
Hydra's message)."""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A closed set of choices: a value outside it fails at composition, with Hydra's message.
    Compares, prints and serialises as its value ('mean', not 'ObjectiveName.mean')."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return self.value.__format__(spec)


class Stage(Choice):
    analyze = "analyze"
    select = "select"
    sweep = "sweep"
    soup = "soup"
    report = "report"
    all = "all"  # every stage of the pipeline, in order
    merge = "merge"  # a tool: merge.models with merge.weights into merge.output
    zoo = "zoo"  # a tool: build (or verify) the pool's model family
    plan = "plan"  # a tool: the sweep's memory plan, from the models' configs (sweep.devices=8xH100-80GB)


class EngineName(Choice):
    """sweep.engine (soce.engine.ENGINES)."""

    hf = "hf"  # a Hugging Face model in this process, souped in place
    vllm = "vllm"  # one vLLM engine per process, each model and soup pushed into it


class VllmExperts(Choice):
    """sweep.vllm.experts: where each vLLM worker keeps the experts a soup is made of."""

    shards = "shards"  # its shard of each, captured in its model's layout: a push is written in place
    files = "files"  # none: they stay in their files, and each push streams through vLLM's reload


class Method(Choice):
    pearson = "pearson"
    spearman = "spearman"


class Ties(Choice):
    best_overall = "best_overall"  # a category's tied leaders: the best overall of them is its expert (the paper's)
    all = "all"  # every tied leader is an expert (exact ties, and leaders tied within the noise)


class Population(Choice):
    all = "all"  # every row of the score table
    pool = "pool"  # only the pool's candidates


class TableFormat(Choice):
    csv = "csv"
    bfcl = "bfcl"


class Backend(Choice):
    lm_eval = "lm_eval"  # through lm-evaluation-harness
    direct = "direct"  # batched generation and the scorer, no harness


class BfclSplit(Choice):
    halves = "halves"  # each test file halved (fixed seed): weights chosen on dev, reported on test
    none = "none"  # one split, tuned and reported on it (the paper's protocol)


class ObjectiveName(Choice):
    benchmark = "benchmark"  # the benchmark's own overall (BFCL's Overall Acc), the mean where it has none
    mean = "mean"  # of the per-category scores (the paper's)
    sum = "sum"


class Split(Choice):
    dev = "dev"
    test = "test"


class Space(Choice):
    grid = "grid"  # the paper's grid (search.lo, hi, step, include_uniform)
    simplex = "simplex"  # every point of the simplex in steps of search.simplex_step, the experts alone included


class Players(Choice):
    experts = "experts"
    candidates = "candidates"  # every candidate of the pool


class CoalitionValue(Choice):
    uniform = "uniform"  # the coalition's uniform soup
    best = "best"  # the best soup of the study's search over the coalition's members


class ShapleyMethod(Choice):
    auto = "auto"  # exact up to max_exact players, Monte Carlo beyond
    exact = "exact"
    monte_carlo = "monte_carlo"


class WandbMode(Choice):
    offline = "offline"
    online = "online"
    disabled = "disabled"


class Dtype(Choice):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"
