"""Evaluation through lm-evaluation-harness: any task group whose subtasks are the categories.

The live model is wrapped in lm-eval's HFLM once; each evaluation calls `simple_evaluate`
on the model as it is now. lm-eval's response cache is never used: across soups it would
return the answers of other weights.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from soce.artifacts import data_digest, files_digest
from soce.errors import EvaluationError
from soce.evaluate import EvalResult
from soce.scores import Outcome, closest

TOY_FC_TASKS = Path(__file__).parent / "tasks" / "toy_fc"


class LmEvalBackend:
    """tasks: split -> {category: lm-eval task name}."""

    def __init__(self, tasks: dict[str, dict[str, str]], *, include_path: str | Path | None, metric: str, batch_size: int,
                 max_length: int, metadata: dict | None = None, include_defaults: bool = True,
                 code: Sequence[Path] = ()) -> None:
        """`code`: source files the tasks' scoring depends on besides the task folder (a changed
        file is a new question: results stored before it are not reused)."""
        import lm_eval
        from lm_eval.tasks import TaskManager

        for name in ("lm_eval", "lm-eval"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _quiet_lm_eval()
        self.tasks = tasks
        self.categories = tuple(next(iter(tasks.values())))
        self.splits = tuple(tasks)
        self.metric, self.batch_size, self.max_length = metric, batch_size, max_length
        self.task_manager = TaskManager(include_path=str(include_path) if include_path else None, metadata=metadata,
                                        include_defaults=include_defaults)
        known = set(self.task_manager.all_tasks)
        for split, mapping in tasks.items():
            for task in mapping.values():
                if task not in known:
                    raise EvaluationError(f"lm-eval task {task!r} (benchmark.tasks.{split}) does not exist{closest(task, known)}")
        self._lm = None
        self._wrapped = None
        self._index: dict[str, dict[str, tuple[str, str, int]]] = {}
        configs = {task: self._configs(task) for mapping in tasks.values() for task in mapping.values()}
        self._check_metric(configs)
        # Everything a score depends on: the task folder's files (YAMLs, code, data) and every
        # local data file the tasks name, by content; a changed file is a new question.
        task_files = [f for f in Path(include_path).rglob("*") if f.is_file() and "__pycache__" not in f.parts] if include_path else []
        data_files = sorted({f for cfgs in configs.values() for cfg in cfgs for f in _local_data_files(cfg)} - set(task_files))
        self.fingerprint = {"backend": "lm_eval", "lm_eval": lm_eval.__version__, "tasks": tasks, "metric": metric,
                            "max_length": max_length, "metadata": metadata,
                            "files": files_digest([*task_files, *code]), "data": data_digest(data_files)}

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

    def _harness_model(self, model, tokenizer):
        from lm_eval.models.huggingface import HFLM

        class QuietHFLM(HFLM):
            """HFLM without its per-request progress bars: soce's sweep has its own."""

            def generate_until(self, requests, disable_tqdm: bool = False):
                return super().generate_until(requests, disable_tqdm=True)

            def loglikelihood(self, requests, disable_tqdm: bool = False):
                return super().loglikelihood(requests, disable_tqdm=True)

        if self._wrapped is not model:  # wrap once; the weights may change in place between calls
            self._lm = QuietHFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, max_length=self.max_length)
            self._wrapped = model
        return self._lm

    def _docs(self, split: str) -> dict[str, tuple[str, str, int]]:
        """The split's examples: id -> (category, task, document index), as `evaluate` names them."""
        if split not in self._index:
            tasks = self.task_manager.load(list(self.tasks[split].values()))["tasks"]
            self._index[split] = {
                str(doc.get("id", f"{task}-{index}")): (category, task, index)
                for category, task in self.tasks[split].items() for index, doc in enumerate(tasks[task].eval_docs)}
        return self._index[split]

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        return [(i, category) for i, (category, _, _) in self._docs(split).items()]

    def evaluate(self, model, tokenizer, split: str, source=None, label: str | None = None, examples=None) -> EvalResult:
        from lm_eval import simple_evaluate

        if split not in self.tasks:
            raise EvaluationError(f"benchmark.tasks has no {split!r} split (it has {', '.join(self.tasks)})")
        mapping = self.tasks[split]
        samples = None
        if examples is not None:  # lm-eval's own selection: document indices per task
            docs = self._docs(split)
            samples = {task: sorted(docs[i][2] for i in examples if docs[i][1] == task) for task in mapping.values()}
            mapping = {c: t for c, t in mapping.items() if samples[t]}
            samples = {t: samples[t] for t in mapping.values()}
        with _one_process():
            out = simple_evaluate(model=self._harness_model(model, tokenizer), tasks=list(mapping.values()), samples=samples,
                                  task_manager=self.task_manager, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
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


def toy_fc_backend(*, seed: int, per_category: int, batch_size: int) -> LmEvalBackend:
    from soce.zoo import fc

    tasks = {split: {c: f"toy_fc_{split}_{c}" for c in fc.CATEGORIES} for split in ("dev", "test")}
    # Only soce's own tasks: indexing lm-eval's thousands of built-in ones takes 7 s.
    return LmEvalBackend(tasks, include_path=TOY_FC_TASKS, metric="acc", batch_size=batch_size, max_length=256,
                         include_defaults=False, metadata={"seed": seed, "per_category": per_category},
                         code=[Path(fc.__file__)])
