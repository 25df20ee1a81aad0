"""Evaluation through lm-evaluation-harness: any task group whose subtasks are the categories.

The live model is wrapped in lm-eval's HFLM once; each evaluation calls `simple_evaluate`
on the model as it is now. lm-eval's response cache is never used: across soups it would
return the answers of other weights.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from soce.artifacts import data_digest, files_digest
from soce.errors import EvaluationError
from soce.evaluate import EvalResult, Evaluator
from soce.progress import Progress
from soce.scores import Outcome, closest

log = logging.getLogger("soce")


# the setting each split's tasks come from, for messages
TASK_KEYS = {"dev": "benchmark.dev_tasks", "test": "benchmark.test_tasks"}


class LmEvalBackend(Evaluator):
    """tasks: split -> its tasks, as a list (a group or tag is replaced by its tasks, each a
    category: named by `categories`, else after the dev split's tasks) or as {category: task}.

    Options as lm-eval takes them, each part of the fingerprint: `limit` (the first N documents
    of each task, or a share of them below 1), `num_fewshot`, `apply_chat_template`,
    `fewshot_as_multiturn`, `gen_kwargs` (generation settings over the tasks'), `model_args`
    (HFLM's own arguments besides the model, tokenizer, batch size and length)."""

    def __init__(self, tasks: dict[str, list[str] | dict[str, str]], *, include_path: str | Path | None, metric: str,
                 batch_size: int, max_length: int, metadata: dict | None = None, include_defaults: bool = True,
                 code: Sequence[Path] = (), categories: Sequence[str] | None = None, limit: float | None = None,
                 num_fewshot: int | None = None, apply_chat_template: bool | str = False, fewshot_as_multiturn: bool = True,
                 gen_kwargs: dict | None = None, model_args: dict | None = None) -> None:
        """`code`: source files the tasks' scoring depends on besides the task folder (a changed
        file is a new question: results stored before it are not reused)."""
        import lm_eval
        from lm_eval.tasks import TaskManager

        for name in ("lm_eval", "lm-eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _quiet_lm_eval()
        if include_defaults:
            log.info("indexing lm-eval's tasks (its own and benchmark.include_path's: about 20 s idle, once per run)")
        self.include_path = include_path
        self.task_manager = TaskManager(include_path=str(include_path) if include_path else None, metadata=metadata,
                                        include_defaults=include_defaults)
        self.tasks = self._categories(tasks, categories)
        self.categories = tuple(next(iter(self.tasks.values())))
        self.splits = tuple(self.tasks)
        self.metric, self.batch_size, self.max_length = metric, batch_size, max_length
        if limit is not None and not limit > 0:
            raise EvaluationError(f"benchmark.limit={limit}: the first N documents of each task (N >= 1), or a share of them "
                                  "(between 0 and 1); unset for all")
        if num_fewshot is not None and num_fewshot < 0:
            raise EvaluationError(f"benchmark.num_fewshot={num_fewshot}: at least 0 (or unset, for each task's own)")
        self.limit, self.num_fewshot = limit, num_fewshot
        self.apply_chat_template, self.fewshot_as_multiturn = apply_chat_template, fewshot_as_multiturn
        self.gen_kwargs, self.model_args = dict(gen_kwargs or {}), dict(model_args or {})
        self._index: dict[str, dict[str, tuple[str, str, int]]] = {}
        configs = {task: self._configs(task) for mapping in self.tasks.values() for task in mapping.values()}
        self._check_metric(configs)
        # Everything a score depends on: the task folder's files (YAMLs, code, data) and every
        # local data file the tasks name, by content; a changed file is a new question.
        task_files = [f for f in Path(include_path).rglob("*") if f.is_file() and "__pycache__" not in f.parts] if include_path else []
        data_files = sorted({f for cfgs in configs.values() for cfg in cfgs for f in _local_data_files(cfg)} - set(task_files))
        self.fingerprint = {"backend": "lm_eval", "lm_eval": lm_eval.__version__, "tasks": self.tasks, "metric": metric,
                            "max_length": max_length, "metadata": metadata,
                            "files": files_digest([*task_files, *code]), "data": data_digest(data_files),
                            **{k: v for k, v in (("limit", limit), ("num_fewshot", num_fewshot),
                                                 ("apply_chat_template", apply_chat_template or None),
                                                 ("fewshot_as_multiturn", fewshot_as_multiturn if apply_chat_template else None),
                                                 ("gen_kwargs", self.gen_kwargs or None), ("model_args", self.model_args or None))
                               if v is not None}}

    def _categories(self, tasks: dict[str, list[str] | dict[str, str]], categories: Sequence[str] | None) -> dict[str, dict[str, str]]:
        """split -> {category: lm-eval task}, every group and tag replaced by its tasks."""
        known = set(self.task_manager.all_tasks)
        out, names = {}, None
        self._asked: list[tuple[str, list[str]]] = []  # the first split's tasks as asked for, each with its categories
        for split, given in tasks.items():
            key = TASK_KEYS.get(split, f"benchmark tasks of {split}")
            for task in given.values() if isinstance(given, dict) else given:
                if task not in known:
                    where = (f"benchmark.include_path ({self.include_path})" if self.include_path
                             else "benchmark.include_path (not set: only lm-eval's own tasks are looked at)")
                    raise EvaluationError(f"lm-eval task {task!r} ({key}) does not exist in lm-eval nor in {where}"
                                          f"{closest(task, known)}. Set benchmark.include_path to the folder of its YAML")
            if isinstance(given, dict):
                out[split] = dict(given)
                continue
            leaves = [(task, leaf) for task in given for leaf in self._leaves(task, key)]
            if names is None:  # the first split names the categories
                names = list(categories) if categories else [leaf if len(self._leaves(task, key)) > 1 else task
                                                             for task, leaf in leaves]
                if len(names) != len(leaves):
                    raise EvaluationError(f"benchmark.categories names {len(names)} categories, {key} has {len(leaves)} tasks"
                                          f"{' (its groups and tags expanded)' if len(leaves) != len(given) else ''}: one "
                                          "name per task, in the same order")
                self._asked = [(task, [n for n, (t, _) in zip(names, leaves) if t == task]) for task in dict.fromkeys(given)]
            elif len(leaves) != len(names):
                raise EvaluationError(f"{key} has {len(leaves)} tasks, the categories are {len(names)} "
                                      f"({', '.join(names[:6])}{' ...' if len(names) > 6 else ''}; groups and tags "
                                      "expanded): one task per category, in the same order")
            out[split] = dict(zip(names, (leaf for _, leaf in leaves)))
        return out

    def benchmark_objective(self):
        """The aggregate lm-eval reports for the groups asked for (each as its aggregate_metric_list
        says for benchmark.metric: its tasks weighted by their examples, or not; a nested group's
        tasks taken together), averaged with the tasks asked for alone; None where no group asked
        for aggregates the metric (the mean of the categories)."""
        from soce.objective import Sections

        sections = {name: (categories, self._weight_by_size(name)) for name, categories in self._asked}
        if all(by_size is None for _, by_size in sections.values()):
            return None
        groups = [f"{n} ({'weighted by size' if w else 'mean'})" for n, (_, w) in sections.items() if w is not None]
        return Sections("lm_eval_groups", "lm-eval's group aggregate: " + ", ".join(groups)
                        + (", averaged with the tasks asked for alone" if len(groups) < len(sections) else ""),
                        {n: (c, bool(w)) for n, (c, w) in sections.items()})

    def _weight_by_size(self, name: str) -> bool | None:
        """A group's weight_by_size for benchmark.metric, None where it aggregates no such metric (or is a task)."""
        entry = self.task_manager.task_index.get(name)
        for aggregate in ((entry.cfg if entry is not None else None) or {}).get("aggregate_metric_list") or []:
            if isinstance(aggregate, dict) and aggregate.get("metric") == self.metric.split(",")[0]:
                return bool(aggregate.get("weight_by_size", False))
        return None

    def _leaves(self, name: str, key: str) -> list[str]:
        """The tasks a name stands for: itself, a group's tasks (its subgroups' too), or a tag's."""
        from lm_eval.tasks._index import Kind

        index = self.task_manager.task_index
        entry = index.get(name)
        if entry is None or entry.kind in (Kind.TASK, Kind.PY_TASK):
            return [name]
        if entry.kind == Kind.TAG:
            return sorted(k for k, e in index.items() if name in e.tags and e.kind in (Kind.TASK, Kind.PY_TASK))
        subtasks = (entry.cfg or {}).get("task") or []
        if not all(isinstance(t, str) for t in subtasks):
            raise EvaluationError(f"lm-eval group {name!r} ({key}) defines tasks inline: name its tasks in {key} instead")
        return [leaf for t in subtasks for leaf in self._leaves(t, key)]

    def _configs(self, name: str) -> list[dict]:
        """The resolved configs of a task, or of every task of a group (where lm-eval keeps
        them in its task index, as 0.4.13 does; earlier versions through _get_config)."""
        index = getattr(self.task_manager, "task_index", None)
        if index is not None:
            entry = index.get(name)
            cfg = entry.cfg if entry is not None else None
        else:
            cfg = getattr(self.task_manager, "_get_config", lambda _: None)(name)
        if not isinstance(cfg, dict):
            return []
        if isinstance(cfg.get("task"), list):  # a group: its subtasks
            return [c for sub in cfg["task"] if isinstance(sub, str) for c in self._configs(sub)]
        return [cfg]

    def _check_metric(self, configs: dict[str, list[dict]]) -> None:
        """benchmark.metric must be a metric every task reports: checked before any evaluation."""
        wanted = self.metric.split(",")[0]
        for task, cfgs in configs.items():
            for cfg in cfgs:
                listed = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
                if listed and wanted not in listed:
                    raise EvaluationError(f"lm-eval task {cfg.get('task', task)!r} does not report the metric {wanted!r} "
                                          f"(benchmark.metric); it reports: {', '.join(map(str, listed))}. "
                                          f"Set benchmark.metric={listed[0]}")

    def _docs(self, split: str) -> dict[str, tuple[str, str, int]]:
        """The split's examples: id -> (category, task, document index), as `evaluate` names them."""
        if split not in self._index:
            tasks = self.task_manager.load(list(self.tasks[split].values()))["tasks"]
            self._index[split] = {
                str(doc.get("id", f"{task}-{index}")): (category, task, index)
                for category, task in self.tasks[split].items() for index, doc in enumerate(self._limited(tasks[task].eval_docs))}
        return self._index[split]

    def _limited(self, docs) -> list:
        """A task's documents evaluated: the first `limit` of them (as lm-eval's own limit takes them)."""
        docs = list(docs)
        if self.limit is None:
            return docs
        n = int(self.limit) if self.limit >= 1 else math.ceil(len(docs) * self.limit)
        return docs[:n]

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        return [(i, category) for i, (category, _, _) in self._docs(split).items()]

    def evaluate(self, engine, split: str, source=None, label: str | None = None, examples=None) -> EvalResult:
        from lm_eval import simple_evaluate

        if split not in self.tasks:
            raise EvaluationError(f"benchmark.tasks has no {split!r} split (it has {', '.join(self.tasks)})")
        mapping = self.tasks[split]
        samples = None
        if examples is not None or self.limit is not None:  # lm-eval's own selection: document indices per task
            docs = self._docs(split)
            chosen = docs if examples is None else examples
            samples = {task: sorted(docs[i][2] for i in chosen if docs[i][1] == task) for task in mapping.values()}
            mapping = {c: t for c, t in mapping.items() if samples[t]}
            samples = {t: samples[t] for t in mapping.values()}
        options = {k: v for k, v in (("num_fewshot", self.num_fewshot), ("gen_kwargs", self.gen_kwargs or None)) if v is not None}
        with _one_process(), _evaluating(f"lm-eval {label or engine.name} on {split}"):
            try:
                harness = engine.harness_model(batch_size=self.batch_size, max_length=self.max_length, model_args=self.model_args)
            except TypeError as err:
                raise EvaluationError(f"benchmark.model_args={self.model_args}: lm-eval's model does not take them ({err})") from None
            _request_bars(harness)
            out = simple_evaluate(model=harness, tasks=list(mapping.values()), samples=samples,
                                  task_manager=self.task_manager, log_samples=True, bootstrap_iters=0, verbosity="ERROR",
                                  apply_chat_template=self.apply_chat_template, fewshot_as_multiturn=self.fewshot_as_multiturn,
                                  **options)
        scores, outcomes = {}, []
        for category, task in mapping.items():
            result = out["results"][task]
            # 'acc' matches 'acc,none'; 'exact_match,flexible-extract' names one filter's result
            key = next((k for k in result if k == self.metric or k.split(",")[0] == self.metric), None)
            if key is None:
                raise EvaluationError(f"lm-eval task {task!r} reports no metric {self.metric!r} (it has {', '.join(result)})")
            scores[category] = float(result[key])
            name, _, filter_name = key.partition(",")
            for sample in out["samples"][task]:
                if sample.get("filter", filter_name) != filter_name:  # a task with several filters logs each
                    continue
                doc = sample["doc"]
                response = sample["filtered_resps"][0] if sample["filtered_resps"] else ""
                outcomes.append(Outcome("", str(doc.get("id", f"{task}-{sample['doc_id']}")), category,
                                        bool(sample[name]), str(response)))
        return EvalResult(scores, tuple(outcomes))


@contextmanager
def _one_process():
    """lm-eval as a single-process evaluation, whatever the launch. Under `accelerate launch` each
    process evaluates its own points on its own model; lm-eval treats a model passed in as one
    process (rank 0) but still returns nothing where LOCAL_RANK is not 0, so that variable reads 0
    while it runs."""
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = saved


_EVALUATION = contextvars.ContextVar("soce_lm_eval_evaluation", default="lm-eval")  # names the request bars


@contextmanager
def _evaluating(name: str):
    token = _EVALUATION.set(name)
    try:
        yield
    finally:
        _EVALUATION.reset(token)


def _request_bar(iterable=None, *, total=None, disable=False, desc=None, **_):
    """tqdm as lm-eval's models call it, over soce's Progress: an evaluation's requests as a bar on
    a terminal (cleared when it ends) and, in soce.log, a line every 30 s once it has run 5 s (a
    model's lm-eval task can run for many minutes; a sweep's short evaluations add no line)."""
    if iterable is not None:  # a pass over the requests' texts (loglikelihood_rolling's windows): quick
        return iterable
    kind = (desc or "").removeprefix("Running ").removesuffix(" requests") or "requests"
    return Progress(total, f"{_EVALUATION.get()}, {kind}", "request", enabled=not disable, brief=True)


def _request_bars(harness) -> None:
    """The request bars of lm-eval's model classes behind `harness` (HFLM, VLLM: the `tqdm` of
    their modules) made soce's."""
    for cls in type(harness).__mro__:
        module = sys.modules.get(cls.__module__)
        if cls.__module__.startswith("lm_eval.models.") and getattr(module, "tqdm", None) is not None:
            module.tqdm = _request_bar


def _quiet_lm_eval() -> None:
    """What lm-eval does on every evaluation (hundreds in a sweep) that soce never uses, with no
    switch to turn it off, turned off in its modules: a progress bar per task while it builds
    requests; `git describe` in the working directory (outside a repository it prints 'fatal: not
    a git repository' each time); and torch's environment report (0.4 s of subprocesses each time)."""
    import functools

    import lm_eval.api.task
    import lm_eval.evaluator
    from tqdm import tqdm

    lm_eval.api.task.tqdm = functools.partial(tqdm, disable=True)
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    lm_eval.evaluator.add_env_info = lambda results: None


def _local_data_files(cfg: dict) -> list[Path]:
    """The local files a task's data comes from: dataset_path when it is a local file or
    folder, and dataset_kwargs' data_files (a path, a list, or a dict of them)."""
    candidates = [cfg.get("dataset_path")]
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(data_files, dict):
        data_files = list(data_files.values())
    candidates += data_files if isinstance(data_files, list) else [data_files]
    out = []
    for c in candidates:
        for item in (c if isinstance(c, list) else [c]):
            if isinstance(item, str) and item and Path(item).exists():
                path = Path(item)
                out += [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return out
