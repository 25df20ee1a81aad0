"""The study a run belongs to, built once per run and handed to every stage: the config (its
groups typed once), the run directory, the tracker, the sweep store, the evaluator and the
pool; what several stages need of them lives here, each helper on the part it needs."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from soce import artifacts
from soce.artifacts import SCORES_TEST
from soce.benchmarks import BenchmarkBase
from soce.choices import EngineName
from soce.errors import ConfigError
from soce.pool import Candidate, fingerprint, model_dir, resolve_pool
from soce.progress import plural
from soce.scores import ScoreTable
from soce.stages import products
from soce.search import SearchBase
from soce.selection import SelectionBase
from soce.tracking import Tracker

log = logging.getLogger("soce")

_EVALUATORS: dict[str, object] = {}  # built once per process for each benchmark setting and run directory


@dataclass
class Study:
    """`dir`: the run directory; `store_dir`: the sweep store's (the run directory, or one shared
    by the shards of a sweep); `shard` (k, N): this job's share of the sweep's points; `device`:
    this process's under accelerate launch."""

    cfg: DictConfig
    dir: Path
    tracker: Tracker
    store_dir: Path | None = None
    shard: tuple[int, int] = (0, 1)
    device: str | None = None
    searched: tuple | None = field(default=None, repr=False)  # (Souper, SearchResult) of this run's sweep
    _store: object = field(default=None, repr=False)
    _problem: object = field(default=None, repr=False)  # what sets a stored record aside (soce.sweep.record_problem)
    _fingerprints: dict = field(default_factory=dict, repr=False)
    _lineage: object = field(default=None, repr=False)  # soce.stages.products.Lineage of `dir`
    # what the study was started with: its overrides (None: run from Python without them), and
    # whether as a multirun (a sharded sweep's collect step: the whole multirun reproduces it)
    overrides: tuple[str, ...] | None = None
    multirun: bool = False

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def command(self) -> str | None:
        """The command that runs this study again (None where its overrides are not known)."""
        from soce.card import command_line

        return None if self.overrides is None else command_line(self.overrides, self.multirun)

    def share(self, shard: tuple[int, int], device: str | None) -> "Study":
        """The same study for one shard of the sweep's points (its own store handle)."""
        return Study(self.cfg, self.dir, self.tracker, self.store_dir, shard, device, overrides=self.overrides,
                     multirun=self.multirun)

    # --- the config's groups, typed once --------------------------------------------------------
    @cached_property
    def benchmark(self) -> BenchmarkBase:
        return OmegaConf.to_object(self.cfg.benchmark)

    @cached_property
    def search(self) -> SearchBase:
        return OmegaConf.to_object(self.cfg.search)

    @cached_property
    def selection(self) -> SelectionBase:
        return OmegaConf.to_object(self.cfg.selection)

    # --- the sweep store --------------------------------------------------------------------
    @property
    def store(self):
        """The study's sweep store, opened once (it holds a lock on the file it writes); its
        records checked against the benchmark once `check_records` has given the check."""
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
        """Let go of the store's lock (a later run in this process may open it again), and of the
        vLLM engine where this process is a joblib worker."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if "soce.engine.vllm" in sys.modules:  # a joblib worker's engine stops with its job (it would hold the worker)
            sys.modules["soce.engine.vllm"].close_in_worker_pool()

    # --- the evaluator and what it is asked -------------------------------------------------------
    @property
    def evaluator(self):
        """The benchmark's evaluator (BFCL's result files go under the run directory); built once
        per process for each setting (lm-eval's task index takes tens of seconds)."""
        key = artifacts.digest([artifacts.resolved(self.cfg, "benchmark"), str(self.dir)])
        if key not in _EVALUATORS:
            _EVALUATORS.clear()  # one study at a time: an evaluator holds its data (and lm-eval's index)
            _EVALUATORS[key] = self.benchmark.evaluator(self.dir)
        return _EVALUATORS[key]

    @cached_property
    def objective(self):
        """What the search maximises and the results report (search.objective, for this benchmark)."""
        from soce.objective import OBJECTIVES

        return OBJECTIVES[self.search.objective.value](self.evaluator)

    def question(self) -> dict:
        """What an evaluation's scores depend on besides the model: the benchmark's settings and
        the evaluator's code and task files."""
        asked = {**artifacts.resolved(self.cfg, "benchmark"), "evaluator": self.evaluator.fingerprint}
        if self.cfg.sweep.engine != EngineName.hf:  # hf's questions stay as they were before there were engines
            asked["engine"] = str(self.cfg.sweep.engine)
        return asked

    def fingerprint(self, candidate: Candidate) -> str:
        """The candidate's files' fingerprint, found once per run (for a Hub id, resolving the
        snapshot may ask the Hub)."""
        if candidate.name not in self._fingerprints:
            self._fingerprints[candidate.name] = fingerprint(candidate)
        return self._fingerprints[candidate.name]

    def use_model(self, candidate: Candidate) -> None:
        """The candidate's files noted as an input of what the stage running now makes."""
        products.note(self, *(("dir", str(Path(candidate.path).resolve())) if candidate.path else ("hub", candidate.hub_id)))

    # --- the store's question, and the soups that answer it -----------------------------------
    def check_store(self, candidates: dict[str, Candidate]) -> None:
        """Refuse a store holding answers to another question than the study's now (stored soups
        of models no longer in the pool are left alone); set aside a record of this question whose
        categories or outcomes are not the benchmark's (a hand edit, a damaged file)."""
        from soce.sweep import record_problem

        asked = self.question()
        self.check_records(record_problem(self.evaluator, asked))  # a record of another question is left to check_question
        stored = {m for r in self.store for m in (r.get("question") or {}).get("models", {})}
        self.store.check_question({**asked, "models": {m: self.fingerprint(candidates[m]) for m in stored if m in candidates}})

    def souper(self, models: list[Candidate], kind: str = "sweep", stream: bool = False, plan=None):
        """A Souper of `models` placed by the memory plan (checked: a plan that does not fit is
        refused here, before anything loads), storing into the study's store; its soups' question
        names these models' files. stream: the experts stay on disk (a soup evaluated once)."""
        from soce.placement.plan import memory_plan
        from soce.sweep import Souper

        sweep = self.cfg.sweep
        plan = plan or memory_plan(sweep, models, device=self.device, stream=stream)
        plan.check()
        placement = replace(self.placement, device_map=plan.device_map, offload=plan.experts_at == "host", stream=stream)
        evaluator = self.evaluator
        asked = {**self.question(), "models": {c.name: self.fingerprint(c) for c in models}, **evaluator.soup_question(models)}
        return Souper(models, evaluator, self.store, asked, self.objective, self.tracker, kind=kind, placement=placement,
                      on_use=lambda record: products.use_record(self, record), cache=self.soup_cache(asked))

    def soup_cache(self, question: dict):
        """The soups earlier runs evaluated for `question` (kept beside the candidates' evaluations;
        none where benchmark.cache=false: every soup is evaluated again, and kept)."""
        from soce.store import SoupCache

        where = Path(self.cfg.sweep.soup_cache) if self.cfg.sweep.soup_cache else self.cache_dir.parent / "soups"
        return SoupCache(where, question, reuse=OmegaConf.select(self.cfg, "benchmark.cache", default=True))

    # --- the pool ------------------------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        from soce.zoo.family import default_cache_dir

        pool = self.cfg.pool
        return Path(pool.cache_dir) / "zoo" if pool.cache_dir else default_cache_dir()

    def pool_refs(self) -> list[Candidate] | None:
        """The pool as configured: the zoo's candidates, the listed models, or None (every table row)."""
        pool = self.cfg.pool
        if pool.zoo:
            from soce.zoo.family import build_family

            family = build_family(pool.zoo, self.cache_dir)
            return [Candidate(name, path=str(path)) for name, path in family.candidates.items()]
        return None if pool.models is None else [
            Candidate(m.name, m.hub_id, m.path, m.handler, OmegaConf.to_container(m.architecture) if m.architecture else None)
            for m in pool.models]

    def pool_base(self) -> Candidate | None:
        """The model the pool's candidates were fine-tuned from, where the pool knows it (pool.base,
        or the embedded family's base), for the results' first row and the task vectors."""
        pool = self.cfg.pool
        if pool.base:
            local = Path(pool.base).is_dir()
            return Candidate("base", None if local else pool.base, pool.base if local else None)
        if not pool.zoo:
            return None
        from soce.zoo.family import build_family

        return Candidate("base", path=str(build_family(pool.zoo, self.cache_dir).base))

    def pool_candidates(self, table: ScoreTable) -> list[Candidate]:
        """The pool's candidates, named as the score table's rows."""
        if self.cfg.pool.zoo and not self.benchmark.evaluates:
            raise ConfigError(f"pool={self.cfg.pool.name} is a model family, but benchmark={self.benchmark.name} reads its "
                              "scores from a table: choose a pool of the table's models (pool=all, or one naming them)")
        return resolve_pool(self.pool_refs(), table.models, table.source)

    def candidates(self, experts: list[str] = ()) -> dict[str, Candidate]:
        """The pool's candidates by name; the `experts`' model directories found (or fetched)
        first, so that a missing model fails before anything is evaluated."""

        if not self.benchmark.evaluates:
            raise ConfigError(f"stage={self.cfg.stage.value} soups and evaluates models: benchmark={self.benchmark.name} only "
                              "reads a score table (choose an evaluating benchmark: toy_fc, lm_eval)")
        candidates = {c.name: c for c in self.pool_candidates(products.read_scores(self))}  # named as in the scores
        for name in experts:  # found (or fetched) once: later uses read the path
            candidates[name] = replace(candidates[name], path=model_dir(candidates[name]))
        return candidates

    # --- scores ------------------------------------------------------------------------------
    def load_scores(self) -> dict[str, ScoreTable]:
        """The benchmark's scores per split: read from a table ('dev' only), or evaluated on the pool."""
        table = self.benchmark.score_table()
        return {"dev": table} if table is not None else self.evaluate_pool()

    def evaluate_pool(self, refs: list[Candidate] | None = None) -> dict[str, ScoreTable]:
        """The pool's candidates (`refs`, default: as configured) evaluated by the benchmark's
        evaluator, per split (cached by the models' files and the question)."""
        from soce.evaluate.candidates import evaluate_candidates

        refs = refs or self.pool_refs()
        if refs is None:
            raise ConfigError(f"benchmark={self.benchmark.name} evaluates the pool's models: choose a pool that names them "
                              "(pool=toy_zoo, or pool.models with paths)")
        log.info("evaluating %s on %s (cached per candidate and split)", plural(len(refs), "candidate"), self.benchmark.name)
        evaluator = self.evaluator
        products.note(self, "evaluator", self.benchmark.name)
        for ref in refs:
            self.use_model(ref)
        from soce.merge.checkpoint import check_soupable

        check_soupable({ref.name: model_dir(ref) for ref in refs})  # before any is evaluated
        return evaluate_candidates(refs, evaluator, evaluator.splits, self.cache_dir.parent / "evals", self.question(),
                                   self.benchmark.candidate_check(), reuse=self.cfg.benchmark.cache,
                                   load=self.candidate_engine, objective=self.objective)

    @cached_property
    def placement(self):
        """The engine every model and soup of the run is evaluated in, and its settings."""
        from soce.engine.vllm import VllmSettings, cpu_slot
        from soce.sweep import Placement

        sweep = self.cfg.sweep
        dtype = sweep.dtype.value if sweep.dtype else None  # None: the checkpoints' own
        return Placement(dtype=dtype, engine=str(sweep.engine),
                         vllm=VllmSettings(sweep.vllm.max_model_len, sweep.vllm.kv_cache_gb, sweep.vllm.gpu_memory_utilization, dtype,
                                           sweep.vllm.tensor_parallel_size, str(sweep.vllm.experts), cpu_slot(self.shard)))

    def candidate_engine(self, candidate: Candidate):
        """A candidate evaluated alone, in the run's engine: with hf, its model placed by the memory
        plan of its model without experts (this machine's GPUs, dispatched over them if it needs
        more than one; its CPU without one); with vllm, pushed into the process's engine."""
        from soce.engine import ENGINES, register_engines
        from soce.placement.plan import memory_plan

        register_engines()
        plan = memory_plan(self.cfg.sweep, [replace(candidate, path=model_dir(candidate))], n_experts=0)
        plan.check()
        return ENGINES[str(self.cfg.sweep.engine)].for_candidate(candidate, replace(self.placement, device_map=plan.device_map))

    def candidate_scores(self) -> dict[str, ScoreTable]:
        """The candidates' own scores by the sweep's evaluator, per split: those the analysis wrote,
        or, where the analysis read a score table (a leaderboard), the candidates evaluated now (cached)."""
        if self.benchmark.reads_table:
            return self.evaluate_pool(self.pool_candidates(products.read_scores(self)))
        tables = {"dev": products.read_scores(self)}
        if products.has(self, SCORES_TEST):
            tables["test"] = products.read_scores(self, "test")
        return tables

    def expert_outcomes(self, experts: list[str], split: str) -> dict[tuple, dict[str, bool]]:
        """Each expert alone (its one-hot point) with its outcomes on `split` by example id, from
        its candidate evaluation: what a search may use without evaluating it again."""
        table = self.candidate_scores().get(split)
        if table is None or not table.outcomes:
            return {}
        return {tuple(1.0 if j == i else 0.0 for j in range(len(experts))):
                {o.example_id: o.correct for o in table.outcomes if o.model == name} for i, name in enumerate(experts)}

    def by_own_score(self, names: list[str]) -> list[int]:
        """The indices of `names`, best own overall score first."""
        table = products.read_scores(self)
        return sorted(range(len(names)), key=lambda i: -table.overall_of(names[i]))
