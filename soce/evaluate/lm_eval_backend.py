"""Evaluation through lm-evaluation-harness: any task group whose subtasks are the categories.

The live model is wrapped in lm-eval's HFLM once; each evaluation calls `simple_evaluate`
on the model as it is now. lm-eval's response cache is never used: across soups it would
return the answers of other weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from soce.artifacts import files_digest
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
        task_files = [p for p in Path(include_path).rglob("*") if p.is_file() and p.suffix in (".yaml", ".py")] if include_path else []
        self.fingerprint = {"backend": "lm_eval", "lm_eval": lm_eval.__version__, "tasks": tasks, "metric": metric,
                            "max_length": max_length, "metadata": metadata, "files": files_digest([*task_files, *code])}

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

    def evaluate(self, model, tokenizer, split: str) -> EvalResult:
        from lm_eval import simple_evaluate

        if split not in self.tasks:
            raise EvaluationError(f"benchmark.tasks has no {split!r} split (it has {', '.join(self.tasks)})")
        mapping = self.tasks[split]
        out = simple_evaluate(model=self._harness_model(model, tokenizer), tasks=list(mapping.values()),
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


def toy_fc_backend(*, seed: int, per_category: int, batch_size: int) -> LmEvalBackend:
    from soce.zoo import fc

    tasks = {split: {c: f"toy_fc_{split}_{c}" for c in fc.CATEGORIES} for split in ("dev", "test")}
    # Only soce's own tasks: indexing lm-eval's thousands of built-in ones takes 7 s.
    return LmEvalBackend(tasks, include_path=TOY_FC_TASKS, metric="acc", batch_size=batch_size, max_length=256,
                         include_defaults=False, metadata={"seed": seed, "per_category": per_category},
                         code=[Path(fc.__file__)])
