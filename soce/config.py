"""Config schemas: one dataclass per config group option, registered in Hydra's ConfigStore.

Each YAML option starts from its schema (`defaults: [/schema/GROUP@_here_: KIND, _self_]`), so a
misspelt key or a value of the wrong type fails at composition with Hydra's own message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from soce.errors import ConfigError


class Choice(str, Enum):
    """A closed set of choices: a value outside it fails at composition, with Hydra's message.
    Compares, prints and serialises as its value ('mean', not 'Objective.mean')."""

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


class Method(Choice):
    pearson = "pearson"
    spearman = "spearman"


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


class Objective(Choice):
    mean = "mean"
    sum = "sum"


class Split(Choice):
    dev = "dev"
    test = "test"


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


# --- benchmark: where the score table comes from ---------------------------------------
@dataclass
class TableBenchmark:
    """Scores read from a file: analysis and selection only (the sweep needs an evaluator)."""

    name: str = "table"
    kind: str = "table"
    path: str = MISSING
    format: TableFormat = TableFormat.csv
    model_column: Optional[str] = None  # default: first column (csv), 'Model' (bfcl)
    overall_column: Optional[str] = None  # default: mean of the categories (csv), '... Overall Acc' (bfcl)
    categories: Optional[List[str]] = None  # default: every leaf category column
    exclude: List[str] = field(default_factory=list)


@dataclass
class ToyFcBenchmark:
    """The embedded function-calling benchmark, evaluated on the pool's models."""

    name: str = "toy_fc"
    kind: str = "toy_fc"
    seed: int = 0
    per_category: int = 100  # examples per category in each of dev and test
    backend: Backend = Backend.lm_eval
    batch_size: int = 64
    cache: bool = True  # reuse the candidates' cached scores (false: evaluate them again, and re-cache)


@dataclass
class LmEvalBenchmark:
    """Any lm-eval tasks: one task per category; the categories are named after the dev tasks."""

    name: str = "lm_eval"
    kind: str = "lm_eval"
    dev_tasks: List[str] = MISSING  # weights are chosen on these
    test_tasks: Optional[List[str]] = None  # and reported on these: the same categories, in the same order
    include_path: Optional[str] = None  # a folder of local task YAMLs
    categories: Optional[List[str]] = None  # the categories' names, one per dev task; default: the dev tasks' names
    # A score table (e.g. a leaderboard) with these categories as columns: analysis and selection
    # read it instead of evaluating the pool (the paper's protocol); the sweep still evaluates.
    table: Optional[str] = None
    table_format: TableFormat = TableFormat.csv
    metric: str = "acc"  # a metric name ('acc'), or with its filter ('exact_match,flexible-extract')
    batch_size: int = 16
    max_length: int = 2048
    cache: bool = True  # reuse the candidates' cached scores (false: evaluate them again, and re-cache)
    # lm-eval's own options (each part of the evaluation's fingerprint):
    limit: Optional[float] = None  # the first N documents of each task (a share of them below 1); default: all
    num_fewshot: Optional[int] = None  # default: each task's own
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = True  # with apply_chat_template: few-shot examples as turns of the chat
    gen_kwargs: Optional[Dict[str, Any]] = None  # generation settings over the tasks' ({max_gen_toks: 256, temperature: 0})
    model_args: Optional[Dict[str, Any]] = None  # HFLM's arguments besides the model ({add_bos_token: true})


@dataclass
class BfclBenchmark:
    """BFCL through bfcl-eval (the leaderboard's own data, prompt handlers and checkers), on the
    leaderboard's leaf columns; the models run in this process."""

    name: str = "bfcl"
    kind: str = "bfcl"
    categories: Optional[List[str]] = None  # leaderboard columns (data_overall.csv); default: all 14
    # The BFCL model whose prompt handler formats prompts and decodes outputs (e.g.
    # Salesforce/Llama-xLAM-2-8b-fc-r). Default: each candidate's own (its pool entry's handler, or
    # its hub_id where BFCL knows it); for a soup, that of the expert with the largest weight.
    handler: Optional[str] = None
    split: BfclSplit = BfclSplit.halves
    seed: int = 0  # the dev/test halves
    limit: Optional[int] = None  # at most this many examples of each BFCL test file per split (smoke runs)
    batch_size: int = 16  # completions generated together
    max_new_tokens: Optional[int] = None  # cap on each completion; default: the handler's (up to 4096)
    result_files: bool = True  # write each evaluation's generations as BFCL result files (run dir, bfcl/)
    # A BFCL score table (a leaderboard snapshot data_overall.csv, or the score folder `bfcl evaluate`
    # writes): analysis and selection read it instead of evaluating the pool; the sweep evaluates.
    table: Optional[str] = None
    cache: bool = True  # reuse the candidates' cached scores (false: evaluate them again, and re-cache)


# --- pool: the candidates -----------------------------------------------------------------
@dataclass
class ModelRef:
    name: str = MISSING  # as in the score table ('(FC)'/'(Prompt)' suffixes may be left off)
    hub_id: Optional[str] = None
    path: Optional[str] = None
    handler: Optional[str] = None  # benchmark=bfcl: its BFCL prompt handler (a BFCL model name); default: hub_id


@dataclass
class PoolConfig:
    name: str = MISSING
    models: Optional[List[ModelRef]] = None  # None: every model of the score table
    zoo: Optional[str] = None  # an embedded model family (default | specialists | micro): its candidates are the pool
    base: Optional[str] = None  # the model the candidates were fine-tuned from (a directory or Hub id); the zoo knows its own
    cache_dir: Optional[str] = None  # where the family and evaluations are cached; default ~/.cache/soce


# --- selection ----------------------------------------------------------------------------
@dataclass
class SoceSelection:
    name: str = "soce"
    tau: float = 0.2
    population: Population = Population.all
    keep_best_overall: bool = False
    max_experts: Optional[int] = None


@dataclass
class AllSelection:
    name: str = "all"


@dataclass
class TopKSelection:
    name: str = "topk"
    k: int = 3


@dataclass
class ManualSelection:
    name: str = "manual"
    models: List[str] = MISSING


# --- search: the weight search of the sweep stage ------------------------------------------
@dataclass
class SearchBase:
    objective: Objective = Objective.mean  # aggregate over all categories of the benchmark
    select_on: Split = Split.dev  # test: the paper's protocol, tuned on the reported split

    def check(self) -> None:
        """Settings no evaluation can work with, refused before any starts (each names its key)."""


@dataclass
class GridSearch(SearchBase):
    """The paper's grid: every weight in {lo, lo+step, ..., hi}, summing to 1, plus uniform."""

    name: str = "grid"
    lo: float = 0.1
    hi: float = 0.9
    step: float = 0.1
    include_uniform: bool = True
    budget: Optional[int] = None  # at most this many points (None: the whole grid)

    def check(self) -> None:
        super().check()
        _check_budget(self.budget)
        from soce.weights import simplex_grid

        try:
            simplex_grid(1, self.lo, self.hi, self.step)
        except ConfigError as err:
            raise ConfigError(f"search: {err}") from None


@dataclass
class HalvingSearch(GridSearch):
    """Successive halving of the grid's points over nested, stratified subsets of the examples:
    every point on min_examples, the best 1/eta of them on eta times more, ..., the survivors on
    all. race=true keeps, at each rung, every point a paired bootstrap cannot tell from the best."""

    name: str = "halving"
    eta: int = 3  # the reduction factor: 1/eta of the points go on, on eta times the examples
    min_examples: Optional[int] = None  # the first rung's examples; default: 4 per category
    seed: int = 0  # the order the subsets take the examples in
    race: bool = False
    confidence: float = 0.85  # race: a point is dropped when it is worse than the best at this confidence
    resamples: int = 1000  # race: bootstrap resamples per comparison

    def check(self) -> None:
        super().check()
        if self.eta < 2:
            raise ConfigError(f"search.eta={self.eta}: the reduction factor must be at least 2")
        if self.min_examples is not None and self.min_examples < 1:
            raise ConfigError(f"search.min_examples={self.min_examples}: at least 1 example (or unset, for 4 per category)")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"search.confidence={self.confidence}: must be between 0 and 1 (e.g. 0.85)")
        if self.resamples < 2:
            raise ConfigError(f"search.resamples={self.resamples}: a bootstrap needs at least 2 resamples")


@dataclass
class UniformSearch(SearchBase):
    name: str = "uniform"


@dataclass
class RandomSearch(SearchBase):
    name: str = "random"
    budget: int = 32  # the uniform point, then Dirichlet draws
    concentration: float = 1.0
    seed: int = 0

    def check(self) -> None:
        super().check()
        _check_budget(self.budget)
        if not self.concentration > 0:
            raise ConfigError(f"search.concentration={self.concentration}: must be positive")


@dataclass
class GreedySearch(SearchBase):
    """Greedy soup (Wortsman et al. 2022) over the experts, in order of their own scores."""

    name: str = "greedy"


@dataclass
class OptunaSearch(SearchBase):
    name: str = "optuna"
    budget: int = 32
    seed: int = 0

    def check(self) -> None:
        super().check()
        _check_budget(self.budget)


def _check_budget(budget: int | None) -> None:
    if budget is not None and budget < 1:
        raise ConfigError(f"search.budget={budget}: at least 1 point")


# --- merge ----------------------------------------------------------------------------------
@dataclass
class LinearMerge:
    name: str = "linear"
    models: Optional[List[str]] = None  # stage=merge: model directories
    weights: Optional[List[float]] = None
    output: Optional[str] = None
    dtype: Optional[Dtype] = None  # default: the inputs' dtype
    device: Optional[str] = None  # default: cpu (under accelerate launch: each process's device)
    shard_size: str = "2GB"
    normalize: bool = False  # rescale weights that do not sum to 1 (otherwise an error)
    overwrite: bool = False
    allow_nonfinite: bool = False  # merge tensors holding NaN or Inf (otherwise an error)
    allow_vocab_mismatch: bool = False
    config_from: Optional[str] = None  # the model whose config and tokenizer are copied; default: the first


# --- tracker ----------------------------------------------------------------------------------
@dataclass
class WandbTrackerConfig:
    name: str = "wandb"
    project: str = "soce"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline  # offline: runs land in <run dir>/wandb, no account needed
    group: Optional[str] = None  # default: the study name
    tags: List[str] = field(default_factory=list)


@dataclass
class NoTrackerConfig:
    name: str = "none"


# --- sweep: how the sweep's points are spread over jobs and processes --------------------------
@dataclass
class SweepConfig:
    shard: Optional[int] = None  # this job's share of the points: shard k of num_shards (points k, k+N, ...)
    num_shards: int = 1
    store: Optional[str] = None  # the store directory shared by the shards; default: the multirun's sweep dir
    collect: bool = True  # at the end of a sharded multirun, merge the shards and run the soup and report
    # Where the live model and the experts go (soce/merge/plan.py makes the memory plan):
    device: Optional[str] = None  # one device (cpu, cuda:1); default: the GPUs of sweep.devices (under accelerate launch: each process's)
    devices: Optional[str] = None  # the GPUs: 8xH100-80GB, 2x80GB, 80GB,40GB, or cpu; default: this machine's (its CPU without one)
    max_memory: Optional[str] = None  # at most this much of each GPU (70GB); default: all of it
    offload: bool = False  # keep the experts in (pinned) CPU memory and soup on the device one tensor at a time
    dtype: Optional[Dtype] = None  # the live model's and the held experts' dtype; default: the checkpoints'
    tokens: int = 32768  # tokens the evaluation holds at once (batch x sequence), for the activation allowance
    activations: Optional[str] = None  # the activation allowance per device (8GB) instead of the estimate from tokens
    host_memory: Optional[str] = None  # the host's memory, for offloaded experts; default: this machine's


# --- report -------------------------------------------------------------------------------
@dataclass
class ShapleyConfig:
    players: Players = Players.experts
    value: CoalitionValue = CoalitionValue.uniform  # a coalition's value
    method: ShapleyMethod = ShapleyMethod.auto
    max_exact: int = 8
    samples: int = 200  # Monte Carlo permutations
    seed: int = 0


@dataclass
class BootstrapConfig:
    """The paired bootstrap of the results' intervals (examples resampled within each category)."""

    samples: int = 2000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class ReportConfig:
    shapley: ShapleyConfig = field(default_factory=ShapleyConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    line_points: int = 5  # soups on the line between each pair of experts (ends included); 0: none
    # whose task vectors (delta from pool.base) the report compares: every candidate (reads each
    # one's weights once) or the selection's experts only
    task_vectors: Players = Players.candidates
    top_points: int = 10  # the weight landscape's table


# --- the study ----------------------------------------------------------------------------
@dataclass
class AnalysisConfig:
    method: Method = Method.pearson
    # By default the analysis uses the soce selection's tau and population.
    tau: float = "${oc.select:selection.tau,0.2}"  # type: ignore[assignment]
    population: Population = "${oc.select:selection.population,all}"  # type: ignore[assignment]
    tau_grid: List[float] = field(default_factory=lambda: [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5])


@dataclass
class SoceConfig:
    stage: Stage = Stage.all
    study: str = MISSING
    benchmark: Any = MISSING
    pool: PoolConfig = MISSING
    selection: Any = MISSING
    search: Any = MISSING
    merge: LinearMerge = MISSING
    tracker: Any = MISSING
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


# Each group's schemas, stored in the ConfigStore under schema/GROUP (not among the group's own
# options, which `pool=...` lists); an option's YAML starts from one: `- /schema/pool@_here_: pool`.
SCHEMAS = {
    "benchmark": {"table": TableBenchmark, "toy_fc": ToyFcBenchmark, "lm_eval": LmEvalBenchmark, "bfcl": BfclBenchmark},
    "pool": {"pool": PoolConfig},
    "selection": {"soce": SoceSelection, "all": AllSelection, "topk": TopKSelection, "manual": ManualSelection},
    "search": {"grid": GridSearch, "halving": HalvingSearch, "uniform": UniformSearch, "random": RandomSearch,
               "greedy": GreedySearch, "optuna": OptunaSearch},
    "merge": {"linear": LinearMerge},
    "tracker": {"wandb": WandbTrackerConfig, "none": NoTrackerConfig},
}


def register() -> None:
    """Put the schemas in the ConfigStore and the `soce.data` resolver in OmegaConf."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="soce_schema", node=SoceConfig)
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
    if not OmegaConf.has_resolver("soce.data"):
        OmegaConf.register_new_resolver("soce.data", lambda name: str(Path(__file__).parent / "data" / name))
    if not OmegaConf.has_resolver("soce.study"):
        OmegaConf.register_new_resolver("soce.study", study_name)


def unknown_keys(node, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys of `node` (and the nodes below it) that its schema does not have, with the keys it
    has: what a '+key=value' override adds (Hydra accepts it; nothing would read it)."""
    import dataclasses

    from omegaconf import ListConfig

    out = []
    if isinstance(node, ListConfig):
        for i, item in enumerate(node):
            if isinstance(item, (DictConfig, ListConfig)):
                out += unknown_keys(item, f"{prefix}[{i}].")
        return out
    schema = OmegaConf.get_type(node)
    fields = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for k in node.keys():
        if k == "hydra" and not prefix:
            continue
        where = f"{prefix}{k}"
        if fields is not None and k not in fields:
            out.append((where, fields))
            continue
        child = node._get_node(k)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none():
            out += unknown_keys(child, f"{where}.")
    return out


def check_pool(cfg: DictConfig) -> None:
    """The pool as configured: one source of candidates, named once each, local paths that exist,
    and (selection=manual) experts that are in it."""
    from soce.pool import row_key

    pool = cfg.pool
    if pool.zoo and pool.models is not None:
        raise ConfigError(f"pool.models is set, but pool={pool.name} is the embedded model family (pool.zoo={pool.zoo}), "
                          "whose candidates would be studied instead: for your own models choose pool=all, "
                          "e.g. soce pool=all 'pool.models=[{name: a, path: /models/a}, ...]'")
    names = None
    if pool.models is not None:
        names = [m.name for m in pool.models]
        dupes = sorted({n for n in names if [row_key(m) for m in names].count(row_key(n)) > 1})
        if dupes:
            raise ConfigError(f"pool.models names {', '.join(map(repr, dupes))} twice: give each candidate its own name")
        for i, m in enumerate(pool.models):
            if m.path is not None and not Path(m.path).is_dir():
                raise ConfigError(f"pool.models[{i}] ({m.name!r}): path {m.path} is not a directory: "
                                  "give the model directory (with config.json and its safetensors files)")
    elif pool.zoo:
        from soce.zoo.family import FAMILIES

        if pool.zoo not in FAMILIES:
            raise ConfigError(f"pool.zoo={pool.zoo!r}: expected one of {', '.join(FAMILIES)}")
        names = [c.name for c in FAMILIES[pool.zoo].candidates]
    chosen = OmegaConf.select(cfg, "selection.models") if cfg.selection.name == "manual" else None
    if chosen is not None and names is not None:
        from soce.scores import closest

        for m in chosen:
            if row_key(m) not in {row_key(n) for n in names}:
                raise ConfigError(f"selection.models names {m!r}, which is not in pool={pool.name}{closest(m, names)}; "
                                  f"its candidates: {', '.join(names)}")


def study_name(stage, benchmark: str, pool: str) -> str:
    """The study a run belongs to (its run directory and W&B group): benchmark-pool for the
    study's stages; the tool's own name for the tools (a merge is no study of the default pool)."""
    stage = getattr(stage, "value", stage)
    return {"merge": "merge", "zoo": f"zoo-{pool}", "plan": f"plan-{pool}"}.get(str(stage), f"{benchmark}-{pool}")


def validate(cfg: DictConfig) -> None:
    """Checks that the schemas' types cannot express; each error names its key. Everything
    knowable from the config is checked here, before any evaluation and before a W&B run opens."""
    unknown = unknown_keys(cfg)
    if unknown:
        where, choices = unknown[0]
        from soce.scores import closest

        raise ConfigError(f"{where} is not a setting of soce{closest(where.rsplit('.', 1)[-1], choices)}: a '+' override adds "
                          "a key the schema does not have, and nothing reads it. Drop the '+' and spell the key as "
                          "`soce --cfg job` shows it")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"no value for {', '.join(missing)}: set it on the command line, e.g. {missing[0]}=...")
    OmegaConf.to_object(cfg.search).check()
    check_pool(cfg)
    for key in ("selection.tau", "analysis.tau"):
        tau = OmegaConf.select(cfg, key)
        if tau is not None and not 0.0 <= tau <= 1.0:
            raise ConfigError(f"{key}={tau} is outside [0, 1]")
    max_experts = OmegaConf.select(cfg, "selection.max_experts")
    if max_experts is not None and max_experts < 1:
        raise ConfigError(f"selection.max_experts={max_experts}: must be at least 1")
    if cfg.report.bootstrap.samples < 2:
        raise ConfigError(f"report.bootstrap.samples={cfg.report.bootstrap.samples}: a bootstrap needs at least 2 resamples")
    if not 0 < cfg.report.bootstrap.confidence < 1:
        raise ConfigError(f"report.bootstrap.confidence={cfg.report.bootstrap.confidence}: must be between 0 and 1 (e.g. 0.95)")
    if cfg.report.line_points != 0 and cfg.report.line_points < 3:
        raise ConfigError(f"report.line_points={cfg.report.line_points}: 0 (no line), or at least 3 (the ends and one between)")
    if cfg.report.shapley.samples < 2:
        raise ConfigError(f"report.shapley.samples={cfg.report.shapley.samples}: at least 2 permutations are needed for an error estimate")
    b = cfg.benchmark
    if b.kind == "bfcl":
        from soce.evaluate.bfcl import check_categories, check_limit

        if b.categories is not None:
            check_categories(b.categories)
        check_limit(b.limit)
    if cfg.sweep.tokens < 1:
        raise ConfigError(f"sweep.tokens={cfg.sweep.tokens}: must be at least 1")
    from soce.merge.plan import parse_devices, parse_size

    for key in ("devices", "max_memory", "activations", "host_memory"):
        if cfg.sweep[key] is not None:
            (parse_devices if key == "devices" else parse_size)(cfg.sweep[key], f"sweep.{key}")
    parse_size(cfg.merge.shard_size, "merge.shard_size")
    shard, n = cfg.sweep.shard, cfg.sweep.num_shards
    if n < 1:
        raise ConfigError(f"sweep.num_shards={n}: must be at least 1")
    if shard is not None and not 0 <= shard < n:
        raise ConfigError(f"sweep.shard={shard} is outside [0, {n}): with sweep.num_shards={n} the shards are 0 to {n - 1}")
    if shard is not None and n > 1 and cfg.search.name in ("greedy", "optuna"):
        raise ConfigError(f"search={cfg.search.name} chooses each point from the scores before it: it cannot be split "
                        "into shards (use search=grid or search=random, or one job)")
    k = OmegaConf.select(cfg, "selection.k")
    if k is not None and k < 1:
        raise ConfigError(f"selection.k={k}: must be at least 1")
