"""Config schemas: one dataclass per config group option, registered in Hydra's ConfigStore.

Each YAML option starts from its schema (`defaults: [/schema/GROUP@_here_: KIND, _self_]`), so a
misspelt key or a value of the wrong type fails at composition with Hydra's own message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from soce.choices import (CoalitionValue, Dtype, EngineName, Method, Players, Population,
                          ShapleyMethod, Stage, VllmExperts)
from soce.errors import ConfigError
from soce.benchmarks import BENCHMARKS
from soce.search import SEARCHES
from soce.selection import SELECTIONS
from soce.tracking import TRACKERS


# --- pool: the candidates -----------------------------------------------------------------
@dataclass
class ModelRef:
    name: str = MISSING  # as in the score table ('(FC)'/'(Prompt)' suffixes may be left off)
    hub_id: Optional[str] = None
    path: Optional[str] = None
    handler: Optional[str] = None  # benchmark=bfcl: its BFCL prompt handler (a BFCL model name); default: hub_id
    # its config.json's sizes (model_type, hidden_size, ...): stage=plan plans a model that is not
    # here with them, with no network; a local directory's own config.json comes first
    architecture: Optional[Dict[str, Any]] = None


@dataclass
class PoolConfig:
    name: str = MISSING
    models: Optional[List[ModelRef]] = None  # None: every model of the score table
    zoo: Optional[str] = None  # an embedded model family (default | specialists | micro): its candidates are the pool
    base: Optional[str] = None  # the model the candidates were fine-tuned from (a directory or Hub id); the zoo knows its own
    cache_dir: Optional[str] = None  # where the family and evaluations are cached; default ~/.cache/soce


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


# --- sweep: how the sweep's points are spread over jobs and processes --------------------------
@dataclass
class VllmConfig:
    """sweep.vllm: the vllm engine's settings (sweep.dtype is its weights' dtype)."""

    max_model_len: Optional[int] = None  # the engine's context in tokens; default: the model's
    kv_cache_gb: int = 1  # a CPU engine's KV cache (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    gpu_memory_utilization: float = 0.85  # a GPU engine's share of the GPU's memory
    # workers over which each layer is split (tensor parallel); None: 1 on a CPU, on GPUs the
    # fewest that hold the model (stage=plan says how many). On a CPU each worker gets its own cores
    tensor_parallel_size: Optional[int] = None
    experts: VllmExperts = VllmExperts.shards  # shards: each worker's share of each expert, pushed in place; files: streamed


@dataclass
class SweepConfig:
    shard: Optional[int] = None  # this job's share of the points: shard k of num_shards (points k, k+N, ...)
    num_shards: int = 1
    store: Optional[str] = None  # the store directory shared by the shards; default: the multirun's sweep dir
    # where soups are kept for later runs asking the same question (any run directory, any day);
    # default: beside the candidates' evaluations (pool.cache_dir, else ~/.cache/soce), in soups/
    soup_cache: Optional[str] = None
    collect: bool = True  # at the end of a sharded multirun, merge the shards and run the soup and report
    # Where the live model and the experts go (soce/placement/memory.py makes the memory plan):
    device: Optional[str] = None  # one device (cpu, cuda:1); default: the GPUs of sweep.devices (under accelerate launch: each process's)
    devices: Optional[str] = None  # the GPUs: 8xH100-80GB, 2x80GB, 80GB,40GB, or cpu; default: this machine's (its CPU without one)
    max_memory: Optional[str] = None  # at most this much of each GPU (70GB); default: all of it
    offload: bool = False  # keep the experts in (pinned) CPU memory and soup on the device one tensor at a time
    dtype: Optional[Dtype] = None  # the live model's and the held experts' dtype; default: the checkpoints'
    tokens: int = 32768  # tokens the evaluation holds at once (batch x sequence), for the activation allowance
    activations: Optional[str] = None  # the activation allowance per device (8GB) instead of the estimate from tokens
    host_memory: Optional[str] = None  # the host's memory, for offloaded experts; default: this machine's
    # What every candidate and soup is evaluated in (docs/engines.md): hf, a Hugging Face model in
    # this process; vllm, one vLLM engine per process, each model and soup pushed into its workers
    engine: EngineName = EngineName.hf
    vllm: VllmConfig = field(default_factory=lambda: VllmConfig())


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
    # leave out of L the categories whose reliability (where the sizes are known) is below this:
    # their spread between models is mostly sampling noise. None: the paper's rule, every category
    min_reliability: Optional[float] = None
    # redraws of the scores (each a binomial proportion of its category's examples, where the sizes
    # are known) behind the correlations' intervals and the weak set's and experts' stability; 0: none
    resamples: int = 200
    seed: int = 0


@dataclass
class SoupConfig:
    push_to_hub: Optional[str] = None  # a Hub repo id (OWNER/NAME): the soup and its model card are uploaded there
    private: Optional[bool] = None  # a repo created by the push is private (default: the Hub's default, public)


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
    soup: SoupConfig = field(default_factory=SoupConfig)


# Each group's schemas, stored in the ConfigStore under schema/GROUP (not among the group's own
# options, which `pool=...` lists); an option's YAML starts from one: `- /schema/pool@_here_: pool`.
SCHEMAS = {
    "benchmark": dict(BENCHMARKS.items()),
    "pool": {"pool": PoolConfig},
    "selection": dict(SELECTIONS.items()),
    "search": dict(SEARCHES.items()),
    "merge": {"linear": LinearMerge},
    "tracker": dict(TRACKERS.items()),
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
    if not OmegaConf.has_resolver("soce.options"):
        OmegaConf.register_new_resolver("soce.options", options)
    if not OmegaConf.has_resolver("soce.zoo_level"):
        OmegaConf.register_new_resolver("soce.zoo_level", zoo_level)


def zoo_level(zoo: str | None) -> int:
    """The toy_fc level an embedded family is trained on (1 for any other pool)."""
    from soce.zoo.family import FAMILIES

    return FAMILIES[zoo].level if zoo in FAMILIES else 1


def options(group: str) -> str:
    """A config group's options, as `soce --help` lists them: its YAML files in soce/conf."""
    return " | ".join(sorted(p.stem for p in (Path(__file__).parent / "conf" / group).glob("*.yaml")))


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
    if pool.models is not None and not pool.models:
        raise ConfigError(f"pool.models=[] names no model: list the candidates, e.g. 'pool.models=[{{name: a, path: /models/a}}, "
                          "...]', or leave pool.models out (pool=all then takes every model of a score table)")
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
        level = OmegaConf.select(cfg, "benchmark.level")  # toy_fc's; None for a benchmark without levels
        if level is not None and level != FAMILIES[pool.zoo].level:
            raise ConfigError(f"benchmark.level={level}, but pool={pool.name} (pool.zoo={pool.zoo}) is trained on toy_fc "
                              f"level {FAMILIES[pool.zoo].level}, and its tokenizer knows that level's words only: "
                              f"drop the override, or set benchmark.level={FAMILIES[pool.zoo].level}")
    chosen = OmegaConf.to_object(cfg.selection).named()
    if chosen is not None and not chosen:
        raise ConfigError(f"selection.models=[] names no expert: selection={cfg.selection.name} soups the models it names, "
                          "e.g. 'selection.models=[a,b]'")
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


def check_engine(sweep: DictConfig, stage: Stage) -> None:
    """sweep.engine=vllm: vLLM installed (but to plan for another machine), and no setting that
    only the hf engine reads."""
    if sweep.engine != EngineName.vllm:
        return
    from soce.engine.vllm import INSTALL, available

    if not available() and stage != Stage.plan:
        raise ConfigError(f"sweep.engine=vllm: vLLM is not installed: {INSTALL}")
    tp = sweep.vllm.tensor_parallel_size
    if tp is not None and tp < 1:
        raise ConfigError(f"sweep.vllm.tensor_parallel_size={tp}: at least 1 (or unset: 1 on a CPU, the fewest GPUs that "
                          "hold the model)")
    if sweep.offload:
        raise ConfigError("sweep.offload=true applies to sweep.engine=hf: vLLM's workers hold the experts themselves. "
                          "Drop sweep.offload, or use sweep.engine=hf")
    if sweep.vllm.kv_cache_gb <= 0 or not 0 < sweep.vllm.gpu_memory_utilization <= 1:
        raise ConfigError(f"sweep.vllm: kv_cache_gb={sweep.vllm.kv_cache_gb} must be positive and gpu_memory_utilization="
                          f"{sweep.vllm.gpu_memory_utilization} in (0, 1]")


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
    search = OmegaConf.to_object(cfg.search)
    search.check()
    check_pool(cfg)
    check_engine(cfg.sweep, cfg.stage)
    from soce.card import check_push

    check_push(cfg.soup.push_to_hub)
    for key in ("selection.tau", "analysis.tau"):
        tau = OmegaConf.select(cfg, key)
        if tau is not None and not 0.0 <= tau <= 1.0:
            raise ConfigError(f"{key}={tau} is outside [0, 1]")
    floor = cfg.analysis.min_reliability
    if floor is not None and not 0.0 < floor <= 1.0:
        raise ConfigError(f"analysis.min_reliability={floor}: a share between 0 and 1 (0.5: noise at most half the spread), "
                          "or null for the paper's rule")
    if cfg.analysis.resamples == 1 or cfg.analysis.resamples < 0:
        raise ConfigError(f"analysis.resamples={cfg.analysis.resamples}: at least 2 redraws of the scores, or 0 for none")
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
    OmegaConf.to_object(cfg.benchmark).check()
    if cfg.sweep.tokens < 1:
        raise ConfigError(f"sweep.tokens={cfg.sweep.tokens}: must be at least 1")
    from soce.merge.linear import parse_size
    from soce.placement.devices import parse_devices

    for key in ("devices", "max_memory", "activations", "host_memory"):
        if cfg.sweep[key] is not None:
            (parse_devices if key == "devices" else parse_size)(cfg.sweep[key], f"sweep.{key}")
    parse_size(cfg.merge.shard_size, "merge.shard_size")
    if cfg.sweep.store is not None and Path(cfg.sweep.store).exists() and not Path(cfg.sweep.store).is_dir():
        raise ConfigError(f"sweep.store={cfg.sweep.store} is a file: the store is a directory (its sweep*.jsonl files go "
                          "there); give a directory, new or one a sweep wrote into")
    shard, n = cfg.sweep.shard, cfg.sweep.num_shards
    if n < 1:
        raise ConfigError(f"sweep.num_shards={n}: must be at least 1")
    if shard is not None and not 0 <= shard < n:
        raise ConfigError(f"sweep.shard={shard} is outside [0, {n}): with sweep.num_shards={n} the shards are 0 to {n - 1}")
    if shard is not None and n > 1 and not search.shardable:
        raise ConfigError(f"search={cfg.search.name} chooses each point from the scores before it: it cannot be split "
                        "into shards (use search=grid or search=random, or one job)")
    k = OmegaConf.select(cfg, "selection.k")
    if k is not None and k < 1:
        raise ConfigError(f"selection.k={k}: must be at least 1")
