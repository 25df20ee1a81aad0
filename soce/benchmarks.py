"""Benchmarks (the config group `benchmark`): one registered class each, its settings and what
it provides: the score table analysis and selection read (where it reads one), the evaluator
that scores a model in memory (where it evaluates), and its own checks. Adding a benchmark is
one class here and one YAML file in conf/benchmark/."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional

from omegaconf import MISSING

from soce.choices import Backend, BfclSplit, TableFormat
from soce.errors import ConfigError
from soce.registry import Registry

log = logging.getLogger("soce")

BENCHMARKS: Registry[type["BenchmarkBase"]] = Registry("benchmark")


@dataclass
class BenchmarkBase:
    evaluates: ClassVar[bool] = True  # False: a score table alone (analysis and selection; no sweep)

    def check(self) -> None:
        """Settings no evaluation can work with, refused before any starts (each names its key)."""

    @property
    def reads_table(self) -> bool:
        """Whether analysis and selection read a score table (`score_table`) instead of evaluating the pool."""
        return False

    def score_table(self):
        """The score table (a ScoreTable, 'dev') that analysis and selection read instead of
        evaluating the pool; None: the pool's models are evaluated."""
        return None

    def evaluator(self, run_dir: Path | None):
        """The evaluator of a model in memory (`run_dir`: where one that writes files writes them)."""
        raise ConfigError(f"benchmark={self.name} reads a score table: it has no evaluator")

    def candidate_check(self) -> Callable[[object, str], None] | None:
        """A check of a candidate's tokenizer before it is evaluated (None: none)."""
        return None

    def sizes_of(self, table) -> dict[str, float] | None:
        """Each category's number of examples behind a score of `table` (its reliability's n):
        counted from its per-example outcomes where it has them; None: unknown."""
        if not table.outcomes:
            return None
        first = table.outcomes[0].model
        return dict(Counter(o.category for o in table.outcomes if o.model == first))


@BENCHMARKS.register("table")
@dataclass
class TableBenchmark(BenchmarkBase):
    """Scores read from a file: analysis and selection only (the sweep needs an evaluator)."""

    name: str = "table"
    kind: str = "table"
    path: str = MISSING
    format: TableFormat = TableFormat.csv
    model_column: Optional[str] = None  # default: first column (csv), 'Model' (bfcl)
    overall_column: Optional[str] = None  # default: mean of the categories (csv), '... Overall Acc' (bfcl)
    categories: Optional[List[str]] = None  # default: every leaf category column
    exclude: List[str] = field(default_factory=list)

    evaluates: ClassVar[bool] = False
    reads_table = True

    # examples behind each category's score, for its reliability (default: none; format bfcl: BFCL v3's)
    category_sizes: Optional[Any] = None  # {category: examples}

    def check(self) -> None:
        if self.category_sizes is not None and not isinstance(self.category_sizes, dict):
            raise ConfigError(f"benchmark.category_sizes={self.category_sizes}: a mapping of each category to its number of "
                              "examples, e.g. 'benchmark.category_sizes={simple: 400, multiple: 200}'")
        for c, n in (self.category_sizes or {}).items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"benchmark.category_sizes.{c}={n}: the number of examples behind the category's scores, "
                                  "a positive integer")

    def sizes_of(self, table) -> dict[str, float] | None:
        if self.category_sizes:
            unknown = [c for c in self.category_sizes if c not in table.categories]
            if unknown:
                raise ConfigError(f"benchmark.category_sizes names {unknown[0]!r}, not a category of {self.path} "
                                  f"({', '.join(table.categories)})")
            return dict(self.category_sizes)
        if self.format == TableFormat.bfcl:
            from soce.bfcl.data import CATEGORIES, column_sizes

            return column_sizes([c for c in table.categories if c in CATEGORIES])
        return None

    def score_table(self):
        from soce.scores import read_table

        return read_table(self.path, format=self.format.value, model_column=self.model_column,
                          overall_column=self.overall_column, categories=self.categories, exclude=self.exclude)


@BENCHMARKS.register("toy_fc")
@dataclass
class ToyFcBenchmark(BenchmarkBase):
    """The embedded function-calling benchmark, evaluated on the pool's models."""

    name: str = "toy_fc"
    kind: str = "toy_fc"
    seed: int = 0
    per_category: int = 100  # examples per category in each of dev and test
    level: int = 1  # how hard (soce.toy_fc.fc.LEVELS); toy_fc.yaml sets the embedded family's own (pool.zoo)
    backend: Backend = Backend.lm_eval
    batch_size: int = 64
    cache: bool = True  # reuse the candidates' cached scores (false: evaluate them again, and re-cache)

    def evaluator(self, run_dir):
        if self.backend == Backend.direct:
            from soce.toy_fc.direct import ToyFcDirect

            return ToyFcDirect(seed=self.seed, per_category=self.per_category, batch_size=self.batch_size, level=self.level)
        from soce.toy_fc.harness import toy_fc_backend

        return toy_fc_backend(seed=self.seed, per_category=self.per_category, batch_size=self.batch_size, level=self.level)

    def candidate_check(self):
        from functools import partial

        from soce.toy_fc.direct import check_tokenizer

        return partial(check_tokenizer, level=self.level)


@BENCHMARKS.register("lm_eval")
@dataclass
class LmEvalBenchmark(BenchmarkBase):
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

    @property
    def reads_table(self) -> bool:
        return bool(self.table)

    def score_table(self):
        if not self.table:
            return None
        from soce.scores import read_table

        log.info("analysis and selection on the scores of %s; the sweep evaluates with lm-eval", self.table)
        return read_table(self.table, format=self.table_format.value, categories=list(self.categories or self.dev_tasks))

    def evaluator(self, run_dir):
        from soce.evaluate.lm_eval_backend import LmEvalBackend

        tasks = {"dev": list(self.dev_tasks), **({"test": list(self.test_tasks)} if self.test_tasks else {})}
        return LmEvalBackend(tasks, categories=self.categories, include_path=self.include_path, metric=self.metric,
                             batch_size=self.batch_size, max_length=self.max_length, limit=self.limit,
                             num_fewshot=self.num_fewshot, apply_chat_template=self.apply_chat_template,
                             fewshot_as_multiturn=self.fewshot_as_multiturn, gen_kwargs=self.gen_kwargs,
                             model_args=self.model_args)


@BENCHMARKS.register("bfcl")
@dataclass
class BfclBenchmark(BenchmarkBase):
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

    @property
    def reads_table(self) -> bool:
        return bool(self.table)

    def check(self) -> None:
        from soce.bfcl.data import check_categories, check_limit

        if self.categories is not None:
            check_categories(self.categories)
        check_limit(self.limit)

    def score_table(self):
        if not self.table:
            return None
        from soce.bfcl.data import CATEGORIES, read_bfcl_scores

        log.info("analysis and selection on the scores of %s; the sweep evaluates with bfcl-eval", self.table)
        return read_bfcl_scores(self.table, list(self.categories or CATEGORIES))

    def sizes_of(self, table) -> dict[str, float] | None:
        if table.outcomes:
            return super().sizes_of(table)
        from soce.bfcl.data import column_sizes

        return column_sizes(table.categories)  # a leaderboard snapshot: v3's test files

    def evaluator(self, run_dir):
        from soce.bfcl import CATEGORIES, BfclEvaluator

        return BfclEvaluator(self.categories or list(CATEGORIES), handler=self.handler, split=self.split.value,
                             seed=self.seed, limit=self.limit, batch_size=self.batch_size,
                             max_new_tokens=self.max_new_tokens,
                             result_dir=run_dir / "bfcl" if run_dir is not None and self.result_files else None)
