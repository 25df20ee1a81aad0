"""The stages of a study. Each reads earlier stages' artifacts from the run directory and
writes its own; an artifact missing or made with other settings is made again first.

    analyze: benchmark -> scores.csv (dev; scores_test.csv where the benchmark evaluates)
             -> analysis.json, correlation.png, entry_tau.png
    select:  scores.csv + analysis.json -> selection.json
    sweep:   selection.json + the experts -> sweep.jsonl (one line per weight point)
    soup:    sweep.jsonl -> results.json (the four rows on dev and test), soup/ (a model directory)
    report:  all of the above -> report.md with shapley.png, consistency.png, landscape.png (3 experts)

and tool stages: merge (merge.models and merge.weights -> merge.output, a model directory)
and zoo (build or verify the pool's model family).
"""

from __future__ import annotations

import json
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from soce.progress import Progress, plural

from soce import analysis as corr
from soce import artifacts
from soce.artifacts import ANALYSIS, RESULTS, SCORES, SCORES_TEST, SELECTION, SOUP
from soce.errors import ConfigError
from soce.pool import Candidate, resolve_pool
from soce.scores import ScoreTable, read_scores, read_table, write_scores
from soce.selection import Selection, select_all, select_manual, select_soce, select_topk
from soce.tracking import Tracker

log = logging.getLogger("soce")


@dataclass
class Run:
    """What every stage gets: the composed config, the run directory, the tracker; for the sweep,
    the store directory (the run directory, or one shared by the shards of a sweep) and this
    job's shard (k, N) of the points."""

    cfg: DictConfig
    dir: Path
    tracker: Tracker
    store_dir: Path | None = None
    shard: tuple[int, int] = (0, 1)
    device: str | None = None
    _store: object = field(default=None, repr=False)
    searched: tuple | None = field(default=None, repr=False)  # (Souper, SearchResult) of this run's sweep
    _problem: object = field(default=None, repr=False)  # what sets a stored record aside (soce.sweep.record_problem)
    _fingerprints: dict = field(default_factory=dict, repr=False)

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def store(self):
        """The study's sweep store, opened once (it holds a lock on the file it writes); its
        records checked against the benchmark once `check_store` has given the check."""
        if self._store is None:
            from soce.store import SweepStore

            k, n = self.shard
            self._store = SweepStore(self.store_dir or self.dir, None if n == 1 else k, n, self._problem)
        return self._store

    def check_records(self, problem) -> None:
        """Every record of the store checked with `problem` (soce.sweep.record_problem) as it is
        read, from now on; a record it finds a problem with is set aside."""
        if self._store is None:
            self._problem = problem
        else:
            self._store.set_aside(problem)

    def close(self) -> None:
        """Let go of the store's lock (a later run in this process may open it again)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def fingerprint(self, candidate: Candidate) -> str:
        """The candidate's files' fingerprint, found once per run (for a Hub id, resolving the
        snapshot may ask the Hub)."""
        if candidate.name not in self._fingerprints:
            from soce.evaluate.candidates import fingerprint

            self._fingerprints[candidate.name] = fingerprint(candidate)
        return self._fingerprints[candidate.name]

    @property
    def search(self):
        """The search strategy as its typed schema (GridSearch, RandomSearch, ...)."""
        return OmegaConf.to_object(self.cfg.search)


def cache_dir(cfg: DictConfig) -> Path:
    from soce.zoo.family import default_cache_dir

    return Path(cfg.pool.cache_dir) / "zoo" if cfg.pool.cache_dir else default_cache_dir()


def pool_refs(cfg: DictConfig) -> list[Candidate] | None:
    """The pool as configured: the zoo's candidates, the listed models, or None (every table row)."""
    if cfg.pool.zoo:
        from soce.zoo.family import build_family

        family = build_family(cfg.pool.zoo, cache_dir(cfg))
        return [Candidate(name, path=str(path)) for name, path in family.candidates.items()]
    return None if cfg.pool.models is None else [Candidate(m.name, m.hub_id, m.path, m.handler) for m in cfg.pool.models]


_EVALUATORS: dict[str, object] = {}  # built once per process for each benchmark setting and run directory


def make_evaluator(cfg: DictConfig, run_dir: Path | None = None):
    """The benchmark's evaluator, built from its typed schema (`run_dir`: where an evaluator that
    writes files, BFCL's result files, writes them); built once per setting (lm-eval's task index
    takes tens of seconds), then the same object."""
    key = artifacts.digest([artifacts.resolved(cfg, "benchmark"), str(run_dir)])
    if key not in _EVALUATORS:
        _EVALUATORS.clear()  # one study at a time: an evaluator holds its data (and lm-eval's index)
        _EVALUATORS[key] = _build_evaluator(cfg, run_dir)
    return _EVALUATORS[key]


def _build_evaluator(cfg: DictConfig, run_dir: Path | None):
    from soce.config import Backend, BfclBenchmark, LmEvalBenchmark, ToyFcBenchmark

    b = OmegaConf.to_object(cfg.benchmark)
    if isinstance(b, BfclBenchmark):
        from soce.evaluate.bfcl import CATEGORIES, BfclEvaluator

        return BfclEvaluator(b.categories or list(CATEGORIES), handler=b.handler, split=b.split.value, seed=b.seed,
                             limit=b.limit, batch_size=b.batch_size, max_new_tokens=b.max_new_tokens,
                             result_dir=run_dir / "bfcl" if run_dir is not None and b.result_files else None)
    if isinstance(b, ToyFcBenchmark):
        if b.backend == Backend.direct:
            from soce.evaluate.direct import ToyFcDirect

            return ToyFcDirect(seed=b.seed, per_category=b.per_category, batch_size=b.batch_size)
        from soce.evaluate.lm_eval_backend import toy_fc_backend

        return toy_fc_backend(seed=b.seed, per_category=b.per_category, batch_size=b.batch_size)
    if isinstance(b, LmEvalBenchmark):
        from soce.evaluate.lm_eval_backend import LmEvalBackend

        tasks = {"dev": list(b.dev_tasks), **({"test": list(b.test_tasks)} if b.test_tasks else {})}
        return LmEvalBackend(tasks, categories=b.categories, include_path=b.include_path, metric=b.metric,
                             batch_size=b.batch_size, max_length=b.max_length, limit=b.limit, num_fewshot=b.num_fewshot,
                             apply_chat_template=b.apply_chat_template, fewshot_as_multiturn=b.fewshot_as_multiturn,
                             gen_kwargs=b.gen_kwargs, model_args=b.model_args)
    raise ConfigError(f"benchmark={cfg.benchmark.name} reads a score table: it has no evaluator")


@contextmanager
def config_group(group: str):
    """A library's ConfigError names its argument ('k=0'); for the command line, say its group too."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{group}: {err}") from None


def question(cfg: DictConfig, evaluator) -> dict:
    """What an evaluation's scores depend on besides the model: the benchmark's settings and
    the evaluator's code and task files."""
    return {**artifacts.resolved(cfg, "benchmark"), "evaluator": evaluator.fingerprint}


def load_scores(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, ScoreTable]:
    """The benchmark's scores per split: read from a table ('dev' only), or evaluated on the pool."""
    b = cfg.benchmark
    if b.kind == "table":
        table = read_table(b.path, format=b.format.value, model_column=b.model_column, overall_column=b.overall_column,
                           categories=b.categories, exclude=b.exclude)
        return {"dev": table}
    if b.kind == "lm_eval" and b.table:
        log.info("analysis and selection on the scores of %s; the sweep evaluates with lm-eval", b.table)
        return {"dev": read_table(b.table, format=b.table_format.value, categories=list(b.categories or b.dev_tasks))}
    if b.kind == "bfcl" and b.table:
        from soce.evaluate.bfcl import CATEGORIES, read_bfcl_scores

        log.info("analysis and selection on the scores of %s; the sweep evaluates with bfcl-eval", b.table)
        return {"dev": read_bfcl_scores(b.table, list(b.categories or CATEGORIES))}
    return evaluate_pool(cfg, run_dir=run_dir)


def pool_base(cfg: DictConfig) -> Candidate | None:
    """The model the pool's candidates were fine-tuned from, where the pool knows it (pool.base,
    or the embedded family's base), for the results' first row and the task vectors."""
    if cfg.pool.base:
        local = Path(cfg.pool.base).is_dir()
        return Candidate("base", None if local else cfg.pool.base, cfg.pool.base if local else None)
    if not cfg.pool.zoo:
        return None
    from soce.zoo.family import build_family

    return Candidate("base", path=str(build_family(cfg.pool.zoo, cache_dir(cfg)).base))


def evaluate_pool(cfg: DictConfig, refs: list[Candidate] | None = None, run_dir: Path | None = None) -> dict[str, ScoreTable]:
    """The pool's candidates (`refs`, default: as configured) evaluated by the benchmark's
    evaluator, per split (cached by the models' files and the question)."""
    b = cfg.benchmark
    from soce.evaluate.candidates import evaluate_candidates

    refs = refs or pool_refs(cfg)
    if refs is None:
        raise ConfigError(f"benchmark={b.name} evaluates the pool's models: choose a pool that names them "
                          "(pool=toy_zoo, or pool.models with paths)")
    check = None
    if b.kind == "toy_fc":
        from soce.evaluate.direct import check_tokenizer as check
    log.info("evaluating %s on %s (cached per candidate and split)", plural(len(refs), "candidate"), b.name)
    evaluator = make_evaluator(cfg, run_dir)
    return evaluate_candidates(refs, evaluator, evaluator.splits, cache_dir(cfg).parent / "evals", question(cfg, evaluator), check,
                               reuse=cfg.benchmark.cache, device_map=lambda c: candidate_device_map(cfg, c))


def candidate_device_map(cfg: DictConfig, candidate: Candidate) -> dict[str, str]:
    """Where a candidate evaluated alone goes: the memory plan of its model without experts
    (this machine's GPUs, dispatched over them if it needs more than one; its CPU without one)."""
    from soce.evaluate.candidates import model_dir

    plan = memory_plan(cfg, [replace(candidate, path=model_dir(candidate))], n_experts=0)
    plan.check()
    return plan.device_map


def pool_candidates(cfg: DictConfig, table: ScoreTable) -> list[Candidate]:
    if cfg.pool.zoo and cfg.benchmark.kind == "table":
        raise ConfigError(f"pool={cfg.pool.name} is a model family, but benchmark={cfg.benchmark.name} reads its scores from a table: "
                          "choose a pool of the table's models (pool=all, or one naming them)")
    return resolve_pool(pool_refs(cfg), table.models, table.source)


# --- analyze ------------------------------------------------------------------------------
def analyze(run: Run) -> corr.Analysis:
    cfg = run.cfg
    tables = load_scores(cfg, run.dir)
    table = tables["dev"]
    write_scores(table, run.path(SCORES))
    if "test" in tables:
        write_scores(tables["test"], run.path(SCORES_TEST))
    pool = pool_candidates(cfg, table)
    population = table if cfg.analysis.population.value == "all" else table.subset([c.name for c in pool])
    result = corr.analyze(population, float(cfg.analysis.tau), cfg.analysis.method.value)
    artifacts.write_json(run.path(ANALYSIS), artifacts.analysis_settings(cfg), result.to_dict(list(cfg.analysis.tau_grid)))
    corr.plot_correlation(result, run.path("correlation.png"))
    corr.plot_entry_tau(result, run.path("entry_tau.png"))
    _print_analysis(result, cfg.analysis.population.value, population.values)
    _track_analysis(run, table, result)
    return result


def _print_analysis(result: corr.Analysis, population: str, values) -> None:
    k = len(result.categories)
    log.info("analysis: %s correlation of %d categories over %d models (population: %s), tau=%g",
             result.method, k, len(result.models), population, result.tau)
    log.info("  weak set L (%d of %d): %s", len(result.weak_set), k, ", ".join(result.weak_set) or "(empty)")
    log.info("  entry threshold per category (in L for any tau above it):")
    for cat, t in sorted(result.entry_tau.items(), key=lambda kv: (math.isnan(kv[1]), kv[1])):
        log.info("    %s  %s%s", "  n/a" if math.isnan(t) else f"{t:.3f}", cat, "  <- in L" if t < result.tau else "")
    if len(result.models) < 3:
        log.warning("  correlations over %d models are +-1 or undefined: the analysis needs at least 3 models", len(result.models))
    reasons = result.undefined_reasons(values)
    for reason in reasons[:5]:
        log.warning("  %s", reason)
    if len(reasons) > 5:
        log.warning("  and %d more undefined pairs (every one in analysis.json)", len(reasons) - 5)


def _track_analysis(run: Run, table: ScoreTable, result: corr.Analysis) -> None:
    t = run.tracker
    t.log_table("scores", ["model", *table.categories, "overall"],
                [[m, *map(_na, row), _na(o)] for m, row, o in zip(table.models, table.values, table.overall)])
    t.log_table("correlation", ["category", *result.categories],
                [[c, *map(_na, row)] for c, row in zip(result.categories, result.matrix)])
    t.log_table("entry_tau", ["category", "entry_tau", "in_weak_set"],
                [[c, _na(v), v < result.tau] for c, v in result.entry_tau.items()])
    t.log_image("correlation", run.path("correlation.png"))
    t.log_image("entry_tau", run.path("entry_tau.png"))
    t.log_summary({"analysis/tau": result.tau, "analysis/weak_set_size": len(result.weak_set),
                   "analysis/weak_set": ", ".join(result.weak_set)})


def _na(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def current_analysis(run: Run) -> dict:
    """analysis.json from the run directory, made again first if missing or made with other settings."""
    record = artifacts.read_current(run.path(ANALYSIS), artifacts.analysis_settings(run.cfg))
    if record is None or not run.path(SCORES).exists():
        log.info("running stage analyze")
        analyze(run)
        record = json.loads(run.path(ANALYSIS).read_text())
    return record


# --- select -------------------------------------------------------------------------------
def select(run: Run) -> Selection:
    cfg = run.cfg
    analysis = corr.Analysis.from_dict(current_analysis(run))
    table = read_scores(run.path(SCORES))
    pool = pool_candidates(cfg, table)
    names = [c.name for c in pool]
    s = cfg.selection
    with config_group("selection"):
        if s.name == "soce" and len(analysis.models) < 3:
            raise ConfigError(f"selection=soce chooses experts by the correlations between categories, which need at least 3 "
                              f"models; the analysis has {len(analysis.models)} ({', '.join(analysis.models)}). Add candidates "
                              f"to the pool, or choose selection=all or selection=manual")
        if s.name == "soce":
            selection = select_soce(table, names, analysis, keep_best_overall=s.keep_best_overall, max_experts=s.max_experts)
        elif s.name == "all":
            selection = select_all(table, names)
        elif s.name == "topk":
            selection = select_topk(table, names, s.k)
        else:  # manual
            chosen = resolve_pool([Candidate(m) for m in s.models], names, f"the pool ({', '.join(names)})")
            selection = select_manual(table, names, [c.name for c in chosen])
    if len(selection.experts) == 1:
        log.warning("only one expert (%s): its soup is the model itself", selection.experts[0].model)
    where = {c.name: c for c in pool}
    record = selection.to_dict()
    for e in record["experts"]:  # where its weights are: a Hub id, or a local path
        e["hub_id"], e["path"] = where[e["model"]].hub_id, where[e["model"]].path
    record["weak_set"] = list(analysis.weak_set) if s.name == "soce" else None
    record["tau"] = analysis.tau if s.name == "soce" else None
    artifacts.write_json(run.path(SELECTION), artifacts.selection_settings(cfg), record)
    _print_selection(selection)
    run.tracker.log_table("selection", ["model", "weights at", "reason", "leads", "overall"],
                          [[e.model, where[e.model].hub_id or where[e.model].path, e.reason, ", ".join(e.leads), _na(e.overall)]
                           for e in selection.experts])
    run.tracker.log_table("excluded", ["model", "reason"], [[m, r] for m, r in selection.excluded.items()])
    run.tracker.log_summary({"selection/n_experts": len(selection.experts), "selection/experts": ", ".join(selection.models)})
    return selection


LEFT_OUT_SHOWN = 10  # models the terminal lists as left out; selection.json has them all


def _print_selection(selection: Selection) -> None:
    log.info("selection: %s, %d expert%s", selection.strategy, len(selection.experts), "" if len(selection.experts) == 1 else "s")
    width = max(len(e.model) for e in selection.experts)
    for e in selection.experts:
        overall = "n/a" if math.isnan(e.overall) else f"{e.overall:.2f}"
        log.info("  %-*s  overall %6s  %s", width, e.model, overall, e.reason)
    if selection.excluded:
        log.info("  left out:")
        shown = list(selection.excluded.items())[:LEFT_OUT_SHOWN]
        for m, why in shown:
            log.info("    %s: %s", m, why)
        if len(selection.excluded) > len(shown):
            log.info("    and %d more (every one, with why, in selection.json)", len(selection.excluded) - len(shown))
    for note in selection.notes:
        log.warning("  %s", note)


def current_selection(run: Run) -> dict:
    """selection.json from the run directory, made again first if missing or made with other settings."""
    record = artifacts.read_current(run.path(SELECTION), artifacts.selection_settings(run.cfg))
    if record is None:
        log.info("running stage select")
        select(run)
        record = json.loads(run.path(SELECTION).read_text())
    return record


def current_experts(run: Run) -> list[str]:
    return [e["model"] for e in current_selection(run)["experts"]]


# --- the memory plan ------------------------------------------------------------------------------
def sweep_devices(cfg: DictConfig, device: str | None = None, planning: bool = False) -> tuple[list, int]:
    """The devices one process places its live model on, and the number of processes, each with
    its own copy (under `accelerate launch`, one device each: `device`). planning: for another
    machine (stage=plan), whose GPUs need not be here."""
    import torch

    from soce.merge.plan import one_device, parse_devices, parse_size, visible_devices

    s = cfg.sweep
    cap = parse_size(s.max_memory, "sweep.max_memory") if s.max_memory else None
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if device or s.device:  # this process's device under accelerate launch, or the one asked for
        return [one_device(device or s.device, cap)], processes
    if s.devices:
        devices = [replace(d, memory=min(d.memory, cap or d.memory)) for d in parse_devices(s.devices)]
        if not planning and devices[0].is_gpu and len(devices) > torch.cuda.device_count():
            raise ConfigError(f"sweep.devices={s.devices} names {len(devices)} GPUs; this machine has {torch.cuda.device_count()} "
                              "(stage=plan plans for another machine)")
        return devices, processes
    return visible_devices(cap), processes


def memory_plan(cfg: DictConfig, models: list[Candidate], *, device: str | None = None, n_experts: int | None = None,
                stream: bool = False, planning: bool = False):
    """Where the live model (the first of `models`) and the experts (`models`; n_experts=0: a
    model evaluated alone, in its own dtype) go on this process's devices, from the models'
    configs and headers; no weight is read. A pool of experts in different dtypes is refused
    unless sweep.dtype names one for all."""
    import torch

    from soce.merge import open_checkpoint
    from soce.merge.checkpoint import check_compatible
    from soce.merge.plan import host_memory, model_shape, parse_size, plan_memory, visible_devices

    s = cfg.sweep
    dtype = getattr(torch, s.dtype.value) if s.dtype and n_experts != 0 else None
    local = [c.path for c in models if c.path and any(Path(c.path).glob("*.safetensors"))]
    if len(local) == len(models):  # weights here: their headers say their dtypes
        checkpoints = [open_checkpoint(p) for p in local]
        mixed = check_compatible(checkpoints)
        if mixed and dtype is None:
            raise ConfigError(f"{mixed}: the live model would take {models[0].name}'s dtypes and the experts keep theirs; "
                              "set sweep.dtype (bfloat16, float32) to hold the live model and every expert in one dtype")
        largest = max(checkpoints[0].tensors.values(), key=lambda t: t.nbytes)
        dtype = dtype or largest.dtype
    devices, processes = sweep_devices(cfg, device, planning)
    cap = parse_size(s.max_memory, "sweep.max_memory") if s.max_memory else None
    host = parse_size(s.host_memory, "sweep.host_memory") if s.host_memory else None if planning and s.devices else host_memory()
    with config_group("sweep"):
        shape = model_shape(models[0].path or models[0].hub_id, dtype)
    return plan_memory(shape, len(models) if n_experts is None else n_experts, devices,
                       experts_at="disk" if stream else "host" if s.offload else "device", processes=processes,
                       tokens=s.tokens, host_memory=host,
                       activations=parse_size(s.activations, "sweep.activations") if s.activations else None,
                       node=visible_devices(cap) if processes > 1 and not planning else None)


def plan(run: Run):
    """stage=plan: the sweep's memory plan, printed and logged, from the models' configs alone
    (a Hub id's config.json, no weights): the selection's experts where the run directory has a
    current selection, else the pool's models (at most selection.max_experts)."""
    from soce.merge.plan import gb

    cfg = run.cfg
    selection = artifacts.read_current(run.path(SELECTION), artifacts.selection_settings(cfg))
    pool = pool_refs(cfg)
    if selection is not None:
        models = [Candidate(e["model"], e.get("hub_id"), e.get("path")) for e in selection["experts"]]
        log.info("planning for the %s of %s", plural(len(models), "expert"), run.path(SELECTION))
    elif pool is None:
        raise ConfigError("stage=plan plans for the pool's models: choose a pool that names them "
                          "(pool.models with a hub_id or path each, or pool=toy_zoo)")
    else:
        n = min(len(pool), OmegaConf.select(cfg, "selection.max_experts") or len(pool))
        models = pool[:n]
        log.info("planning for %s (%s; selection.max_experts=K plans for K)",
                 plural(n, "expert"), "the whole pool" if n == len(pool) else f"the pool's first {n}")
    result = memory_plan(cfg, models, planning=True)
    log.info("%s", result.text())
    run.tracker.log_table("memory_plan", *result.table())
    if pool and len(pool) > 1:
        everyone = memory_plan(cfg, pool, stream=True, planning=True)
        log.info("the uniform soup of all %d candidates streams from disk: at most %s per device%s", len(pool),
                 gb(max(sh.total for sh in everyone.shares)), "" if everyone.fits else " (does not fit)")
    return result


# --- sweep --------------------------------------------------------------------------------------
def evaluated_pool(run: Run, experts: list[str] = ()) -> tuple[object, dict[str, Candidate]]:
    """The evaluator and the pool's candidates by name; the experts' model directories are found
    (or fetched) first, so that a missing model fails before anything is evaluated."""
    from soce.evaluate.candidates import model_dir

    b = run.cfg.benchmark
    if b.kind == "table":
        raise ConfigError(f"stage={run.cfg.stage.value} soups and evaluates models: benchmark={b.name} only reads a score table "
                          "(choose an evaluating benchmark: toy_fc, lm_eval)")
    candidates = {c.name: c for c in pool_candidates(run.cfg, read_scores(run.path(SCORES)))}  # named as in the scores
    for name in experts:  # found (or fetched) once: later uses read the path
        candidates[name] = replace(candidates[name], path=model_dir(candidates[name]))
    return make_evaluator(run.cfg, run.dir), candidates


def check_store(run: Run, evaluator, candidates: dict[str, Candidate]) -> None:
    """Refuse a store holding answers to another question than the study's now (stored soups
    of models no longer in the pool are left alone); set aside a record of this question whose
    categories or outcomes are not the benchmark's (a hand edit, a damaged file)."""
    from soce.sweep import record_problem

    asked = question(run.cfg, evaluator)
    run.check_records(record_problem(evaluator, asked))  # a record of another question is left to check_question
    stored = {m for r in run.store for m in (r.get("question") or {}).get("models", {})}
    run.store.check_question({**asked, "models": {m: run.fingerprint(candidates[m]) for m in stored if m in candidates}})


def make_souper(run: Run, models: list[Candidate], evaluator, kind: str = "sweep", stream: bool = False, plan=None):
    """A Souper of `models` placed by the memory plan (checked: a plan that does not fit is
    refused here, before anything loads), storing into the run's store; its soups' question names
    these models' files. stream: the experts stay on disk (a soup evaluated once)."""
    from soce.sweep import Placement, Souper

    plan = plan or memory_plan(run.cfg, models, device=run.device, stream=stream)
    plan.check()
    dtype = run.cfg.sweep.dtype.value if run.cfg.sweep.dtype else None  # None: the checkpoints' own
    placement = Placement(plan.device_map, dtype, plan.experts_at == "host", stream)

    asked = {**question(run.cfg, evaluator), "models": {c.name: run.fingerprint(c) for c in models}}
    if hasattr(evaluator, "handler_for"):  # BFCL: a soup's prompts are its experts' handlers'
        from soce.evaluate.bfcl import own_handler

        asked["handlers"] = {c.name: own_handler(c) for c in models}
    return Souper(models, evaluator, run.store, asked, run.cfg.search.objective, run.tracker, kind=kind, placement=placement)


def _by_own_score(run: Run, names: list[str]) -> list[int]:
    table = read_scores(run.path(SCORES))
    return sorted(range(len(names)), key=lambda i: -table.overall_of(names[i]))


def sweep(run: Run):
    """The search over the selection's experts: every soup it asks for from the store or evaluated
    now. Returns its SearchResult (for a shard's share, its best is None)."""
    from soce.config import HalvingSearch
    from soce.search import expected_points
    from soce.store import SweepStore
    from soce.sweep import search_soups

    search = run.search
    experts = current_experts(run)
    evaluator, candidates = evaluated_pool(run, experts)
    check_store(run, evaluator, candidates)
    store = run.store
    plan = memory_plan(run.cfg, [candidates[n] for n in experts], device=run.device)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # the same plan on every process of a launch: printed once, by the main process's shard
    # (not again when it collects the shards' points, unsharded)
    if int(os.environ.get("RANK", "0")) == 0 and not (launched and run.shard == (0, 1)):
        log.info("%s", plan.text())
        run.tracker.log_table("memory_plan", *plan.table())
    souper = make_souper(run, [candidates[n] for n in experts], evaluator, plan=plan)
    split = search.select_on.value
    before = set(store.records)
    k, n = run.shard
    what = f"sweep ({search.name})" + (f" shard {k}/{n}" if n > 1 else "")
    halving = isinstance(search, HalvingSearch)  # search=halving or search=race
    with config_group("search"), Progress(expected_points(search, len(experts), run.shard), what,
                                          "example" if halving else "point") as bar:
        souper.bar = bar
        done = search_soups(souper, search, split, _by_own_score(run, experts), run.shard)
    souper.bar = None
    if halving and done.halving.alive[0]:  # (a shard may have no point of the first rung)
        h, grid = done.halving, len(done.halving.alive[0]) * len(done.halving.subsets[-1])
        log.info("%s: rungs of %s examples, %s points alive at each; %d examples asked for, %.0f%% of the grid's %d "
                 "(%d evaluated now, %d from the store)", search.name, "/".join(str(len(s)) for s in h.subsets),
                 "/".join(str(len(a)) for a in h.alive), h.evaluated, 100 * h.evaluated / grid, grid,
                 souper.examples_evaluated, souper.examples_reused)
    if n > 1:
        log.info("sweep: shard %d of %d done: %s evaluated now, into %s", k, n,
                 plural(sum(SweepStore.record_key(r) not in before for r in store), "point"), store.path)
        return done
    already = sum(SweepStore.record_key(r) in before for r in done.records)
    best = done.best
    log.info("sweep: %s on %s (%d already in the store), best %s %.4f at %s", plural(len(done.records), "point"), split,
             already, search.objective, best["objective"], _weights_text(experts, best["weights"]))
    run.tracker.log_table("sweep", [*experts, "objective", *evaluator.categories],
                          [[*r["weights"], r["objective"], *r["scores"].values()] for r in done.records])
    run.searched = souper, done
    return done


def _weights_text(names: list[str], weights: list[float]) -> str:
    return ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights))


# --- soup -------------------------------------------------------------------------------------
def experts_label(cfg: DictConfig) -> str:
    """What the experts are: SoCE's only when SoCE's selection chose them."""
    s = cfg.selection
    if s.name == "soce":
        return "SoCE experts"
    if s.name == "topk":
        return f"top-{s.k} experts"
    return "chosen experts" if s.name == "manual" else "all candidates (selection=all)"


def searched_label(cfg: DictConfig) -> str:
    return "SoCE" if cfg.selection.name == "soce" else f"searched soup, {experts_label(cfg)}"


def soup(run: Run) -> dict:
    from soce.evaluate.candidates import model_dir
    from soce.merge import merge_to_disk
    from soce.report.significance import add_statistics
    from soce.sweep import aggregate, solved_by_id
    from soce.weights import uniform

    search = run.search
    split, objective = search.select_on.value, search.objective
    experts = current_experts(run)
    evaluator, candidates = evaluated_pool(run)
    check_store(run, evaluator, candidates)
    artifacts.supersede(run.dir, artifacts.results_settings(run.cfg))
    if run.searched is None:  # the search again: its soups from the store, any it lacks evaluated now
        log.info("the %s search over the experts, from the store in %s", search.name, run.store_dir or run.dir)
        sweep(run)
    souper, searched = run.searched
    best = searched.best
    # the whole pool's uniform soup streams from disk: never every candidate in memory at once
    everyone = make_souper(run, list(candidates.values()), evaluator, kind="uniform_all", stream=True)
    tables = candidate_scores(run)
    single = max(tables["dev"].models, key=lambda m: tables["dev"].overall_of(m))

    correct: dict[str, dict[str, dict[str, bool]]] = {s: {} for s in tables}  # split -> row -> example -> solved

    def own_row(role: str, name: str, model: str, scores: dict[str, ScoreTable]) -> dict:
        for s, t in scores.items():
            correct[s][role] = solved_of(t, model)
        return {"role": role, "name": name, "models": [model], "weights": [1.0],
                **{s: {"objective": aggregate(t.row(model), objective), "scores": t.row(model)} for s, t in scores.items()}}

    base = pool_base(run.cfg)  # the model the candidates were fine-tuned from, where the pool knows it
    rows = [own_row("base", "base model", base.name, evaluate_pool(run.cfg, [base], run.dir))] if base else []
    rows.append(own_row("single", "best single candidate", single, tables))
    for role, name, sp, weights in (("uniform_all", "uniform soup, all candidates", everyone, uniform(len(candidates))),
                                    ("uniform_experts", f"uniform soup, {experts_label(run.cfg)}", souper, uniform(len(experts))),
                                    ("searched", f"{searched_label(run.cfg)} ({search.name} search)", souper, tuple(best["weights"]))):
        records = {s: sp.evaluate(weights, s) for s in tables}
        for s, r in records.items():
            correct[s][role] = solved_by_id(r["correct"], [o.example_id for o in tables[s].outcomes if o.model == single])
        rows.append({"role": role, "name": name, "models": sp.names, "weights": list(weights),
                     **{s: {"objective": r["objective"], "scores": r["scores"]} for s, r in records.items()}})
    if "test" not in tables:
        protocol = (f"one split: weights chosen and reported on {split} (the paper's protocol): "
                    "the searched soup's score is optimistic")
    elif split == "dev":
        protocol = "weights chosen on dev, reported on test"
    else:
        protocol = "weights chosen on TEST, the split reported (the paper's protocol): test scores are optimistic"
    results = {"protocol": protocol, "objective": objective.value, "search": search.name, "select_on": split, "rows": rows}
    if all(t.outcomes for t in tables.values()):
        b = run.cfg.report.bootstrap
        add_statistics(results, correct, {s: {o.example_id: o.category for o in t.outcomes if o.model == single}
                                          for s, t in tables.items()},
                       {s: {e: solved_of(t, e) for e in experts} for s, t in tables.items()}, b.samples, b.confidence, b.seed)
    else:
        log.info("the candidates' scores have no per-example outcomes: the results have no intervals")
    artifacts.write_json(run.path(RESULTS), artifacts.results_settings(run.cfg), results)

    paths = [model_dir(candidates[n]) for n in experts]
    ids = [candidates[n].hub_id or candidates[n].path for n in experts]
    merge_to_disk(paths, best["weights"], run.path(SOUP), model_ids=ids, overwrite=True, progress=False,
                  all_processes=False)  # the soup stage runs on the main process alone
    _print_results(results)
    log.info("soup: %s (%s)", run.path(SOUP), _weights_text(experts, best["weights"]))
    run.tracker.log_table("baselines", ["row", f"dev {objective}", "dev low", "dev high", f"test {objective}", "test low",
                                        "test high", "test vs single", "models", "weights"],
                          [[r["name"], r["dev"]["objective"], *r["dev"].get("ci", [None, None]), _test(r),
                            *r.get("test", {}).get("ci", [None, None]), r.get("test", r["dev"]).get("vs_single", {}).get("estimate"),
                            ", ".join(r["models"]), ", ".join(f"{w:.3f}" for w in r["weights"])] for r in rows])
    for s, tests in results.get("mcnemar", {}).items():
        run.tracker.log_table(f"mcnemar_{s}", ["ingredient", "only_soup", "only_ingredient", "p"],
                              [[t["ingredient"], t["only_soup"], t["only_ingredient"], t["p"]] for t in tests])
    run.tracker.log_summary({"soup/dev": rows[-1]["dev"]["objective"], "soup/test": _test(rows[-1]),
                             "soup/protocol": protocol})
    run.tracker.log_reference("soup", run.path(SOUP))
    return results


def solved_of(table: ScoreTable, model: str) -> dict[str, bool]:
    """A model's per-example outcomes in a score table: example id -> solved."""
    return {o.example_id: o.correct for o in table.outcomes if o.model == model}


def candidate_scores(run: Run) -> dict[str, ScoreTable]:
    """The candidates' own scores by the sweep's evaluator, per split: those the analysis wrote,
    or, where the analysis read a score table (a leaderboard), the candidates evaluated now (cached)."""
    if run.cfg.benchmark.kind in ("lm_eval", "bfcl") and run.cfg.benchmark.table:
        return evaluate_pool(run.cfg, pool_candidates(run.cfg, read_scores(run.path(SCORES))), run.dir)
    tables = {"dev": read_scores(run.path(SCORES))}
    if run.path(SCORES_TEST).exists():
        tables["test"] = read_scores(run.path(SCORES_TEST))
    return tables


def _test(row: dict) -> float | None:
    return row["test"]["objective"] if "test" in row else None


def _print_results(results: dict) -> None:
    from soce.report.significance import score_text, supported

    stats = results.get("statistics")
    intervals = f"; {stats['confidence']:.0%} intervals, paired bootstrap over examples" if stats else ""
    log.info("results (%s over all categories; %s%s):", results["objective"], results["protocol"], intervals)
    width = max(len(r["name"]) for r in results["rows"])
    cell = 26 if stats else 8
    log.info("  %-*s %*s %*s", width, "", cell, "dev", cell, "test")
    for r in results["rows"]:
        log.info("  %-*s %*s %*s", width, r["name"], cell, score_text(r.get("dev")), cell, score_text(r.get("test")))
    log.info("%s", results_summary(results))
    for sentence in supported(results, "test" if "test" in results["rows"][-1] else "dev"):
        log.info("  %s", sentence)



def results_summary(results: dict) -> str:
    """What the table means, in two sentences: the searched soup against the best single model and
    the uniform soups, on the reported split."""
    role = {r.get("role"): r for r in results["rows"]}
    single, everyone, experts, searched = role["single"], role["uniform_all"], role["uniform_experts"], role["searched"]
    split = "test" if "test" in searched else "dev"
    score = searched[split]["objective"]

    def against(row: dict) -> str:
        d = score - row[split]["objective"]
        return f"{d:+.4f} against the {row['name']}" + (f" ({', '.join(row['models'])})" if len(row["models"]) == 1 else "")

    if len(searched["models"]) == 1:  # one expert: its soups are the model itself, nothing to compare
        return (f"On {split}, the {searched['name']} scores {score:.4f}: the selection has one expert, {searched['models'][0]}, "
                f"so its soups are that model itself ({against(single)}, {against(everyone)}).")
    baselines = (single, everyone, experts)
    beaten = [r["name"] for r in baselines if score > r[split]["objective"]]
    not_beaten = [r["name"] for r in baselines if score <= r[split]["objective"]]
    if not not_beaten:
        verdict = "beats every baseline"
    elif not beaten:
        verdict = "beats none of the baselines"
    else:
        verdict = f"beats the {' and the '.join(beaten)}, not the {' nor the '.join(not_beaten)}"
    chosen = "" if results.get("select_on") is None else f" Its weights were chosen on {results['select_on']}."
    return (f"On {split}, the {searched['name']} scores {score:.4f} and {verdict}: {against(single)}, {against(everyone)}, "
            f"{against(experts)}.{chosen}")


# --- report ----------------------------------------------------------------------------------
def report(run: Run) -> Path:
    """report.md from what the earlier stages left in the run directory (the report module is
    handed its inputs; it knows nothing of the pipeline)."""
    from soce.config import Players
    from soce.evaluate.candidates import model_dir
    from soce.report.study import StudyReport, write_report

    cfg, search = run.cfg, run.search
    selection = current_selection(run)
    experts = [e["model"] for e in selection["experts"]]
    inputs = StudyReport(
        study=cfg.study, dir=run.dir, tracker=run.tracker, config=_config_rows(cfg),
        analysis=json.loads(run.path(ANALYSIS).read_text()), selection=selection, experts=experts,
        search=search, shapley=OmegaConf.to_object(cfg.report.shapley), top_points=cfg.report.top_points,
        correlation_method=cfg.analysis.method.value)
    if cfg.benchmark.kind != "table":
        evaluator, candidates = evaluated_pool(run)
        check_store(run, evaluator, candidates)
        from soce.config import HalvingSearch
        from soce.sweep import search_soups

        souper = make_souper(run, [candidates[n] for n in experts], evaluator, kind="shapley")
        split = search.select_on.value
        # the search's own points: this run's, or its soups the store holds (a sweep not finished shows those so far)
        searched = run.searched[1] if run.searched else search_soups(souper, search, split, _by_own_score(run, experts),
                                                                     stored_only=True)
        pieces = sum(1 for r in run.store if r["experts"] == experts and r["split"].startswith(f"{split}@")
                     and isinstance(search, HalvingSearch))  # a halving search's pieces of points, stored so far
        inputs = replace(
            inputs, categories=evaluator.categories, souper=souper, points=searched.records, pieces=pieces,
            candidate_souper=lambda: make_souper(run, list(candidates.values()), evaluator, kind="shapley"),
            own=candidate_scores(run), results=artifacts.read_current(run.path(RESULTS), artifacts.results_settings(cfg)),
            line_points=cfg.report.line_points)
        base = pool_base(cfg)
        if base is not None:  # its score is the empty coalition's value (cached since the soup stage)
            from soce.sweep import aggregate

            own = evaluate_pool(cfg, [base], run.dir)[search.select_on.value]
            vectors = candidates if cfg.report.task_vectors == Players.candidates else experts
            inputs = replace(inputs, base_dir=model_dir(base), base_score=aggregate(own.row(base.name), search.objective),
                             vector_dirs={n: model_dir(candidates[n]) for n in vectors})
    return write_report(inputs)


def _config_rows(cfg: DictConfig) -> list[tuple[str, str]]:
    s = cfg.search
    rows = [("benchmark", cfg.benchmark.name), ("pool", cfg.pool.name), ("selection", _options(cfg.selection))]
    if cfg.benchmark.kind != "table":  # a score table has no sweep: no search, objective or split to choose on
        rows += [("search", _options(s)), ("objective", f"{s.objective} over all categories"), ("weights chosen on", str(s.select_on))]
    return rows + [("analysis", f"{cfg.analysis.method.value}, population {cfg.analysis.population.value}")]


def _options(node) -> str:
    d = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    name = d.pop("name")
    return name + (" (" + ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("objective", "select_on")) + ")" if d else "")


# --- merge (a tool stage) -------------------------------------------------------------------
def merge(run: Run) -> Path:
    from soce.merge import merge_to_disk  # torch: imported only by the stages that need it

    m = run.cfg.merge
    for key in ("models", "weights", "output"):
        if not m[key]:
            raise ConfigError(f"stage=merge needs merge.{key}, e.g. 'merge.models=[a,b]' 'merge.weights=[0.6,0.4]' merge.output=soup")
    from soce.merge.linear import check_weights

    check_weights(list(m.weights), len(m.models), m.normalize, group="merge")
    with config_group("merge"):
        output = merge_to_disk(
            list(m.models), list(m.weights), m.output, dtype=m.dtype and m.dtype.value, shard_size=m.shard_size,
            normalize=m.normalize, overwrite=m.overwrite, allow_nonfinite=m.allow_nonfinite,
            allow_vocab_mismatch=m.allow_vocab_mismatch, config_from=m.config_from, device=m.device)
    log.info("soup: %s (load it with AutoModelForCausalLM.from_pretrained; mergekit.yaml beside it)", output)
    run.tracker.log_summary({"merge/output": str(output), "merge/models": list(m.models), "merge/weights": list(m.weights)})
    return output


# --- zoo (a tool stage) ---------------------------------------------------------------------
def zoo(run: Run) -> None:
    from soce.zoo.family import build_family

    if not run.cfg.pool.zoo:
        raise ConfigError("stage=zoo builds a model family: choose pool=toy_zoo (or toy_zoo_specialists, toy_zoo_micro)")
    family = build_family(run.cfg.pool.zoo, cache_dir(run.cfg))
    log.info("zoo %s: base and %d candidates in %s", family.spec.name, len(family.candidates), family.root)
    for name, path in family.candidates.items():
        log.info("  %s  %s", name, path)
