"""The sweep: experts loaded once into one live model; for each weight point, the soup is
written in place and evaluated, and the point is stored before the next one starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

from soce.evaluate import Evaluator
from soce.errors import ConfigError, DataError
from soce.evaluate.candidates import load_model, model_dir
from soce.merge import InPlaceSoup
from soce.pool import Candidate
from soce.progress import Progress
from soce.scores import Outcome
from soce.store import SweepStore
from soce.threads import compute_threads
from soce.tracking import NoTracker, Tracker


def aggregate(scores: dict[str, float], objective: str) -> float:
    """The objective over all categories: their mean or their sum."""
    values = list(scores.values())
    if objective not in ("mean", "sum"):
        raise ConfigError(f"objective={objective!r}: expected mean or sum")
    return math.fsum(values) / len(values) if objective == "mean" else math.fsum(values)


def solved_bits(outcomes: Sequence[Outcome]) -> str:
    """Per-example outcomes in a stored record: '1' solved, '0' failed, in order of example id."""
    return "".join("1" if o.correct else "0" for o in sorted(outcomes, key=lambda o: o.example_id))


def solved_by_id(bits: str, example_ids: Sequence[str]) -> dict[str, bool]:
    """solved_bits read back, given the split's example ids."""
    ids = sorted(example_ids)
    if len(ids) != len(bits):
        raise DataError(f"a stored soup has outcomes for {len(bits)} examples, the split has {len(ids)}: "
                        "the benchmark changed since it was evaluated")
    return {i: b == "1" for i, b in zip(ids, bits)}


@dataclass(frozen=True)
class Placement:
    """Where a Souper's live model and experts go: its device map (from the memory plan; None:
    the CPU), its dtype (None: the checkpoints'), and the experts' home: the model's devices,
    pinned host memory (offload) or the disk (stream: read at every soup)."""

    device_map: dict[str, str] | None = None
    dtype: str | None = None
    offload: bool = False
    stream: bool = False


class Souper:
    """One live model souped in place from `experts`, evaluated by `evaluator`, stored in `store`.
    The model and the experts are loaded only when a point is not in the store yet.

    Each stored record carries `question` (what its scores depend on: the benchmark's settings,
    the evaluator, the fingerprints of the experts' files, as the caller found them); the objective is recomputed from the stored
    per-category scores on every read, so a changed objective never reuses an old one."""

    def __init__(self, experts: Sequence[Candidate], evaluator: Evaluator, store: SweepStore, question: dict,
                 objective: str, tracker: Tracker | None = None, kind: str = "sweep", placement: Placement = Placement()) -> None:
        self.experts, self.placement = list(experts), placement
        self.names = [e.name for e in experts]
        self.evaluator, self.store, self.objective, self.kind = evaluator, store, str(objective), kind
        self.question = question
        self.tracker = tracker or NoTracker()
        self.best: dict | None = None
        self.bar: Progress | None = None  # set by whoever runs a long series of points
        self.live = None  # (model, tokenizer, in-place soup): loaded for the first point not in the store
        self.applied: tuple[float, ...] | None = None  # the weights the live model holds now

    def _load(self):
        if self.live is None:
            import torch

            where = self.placement
            model, tokenizer = load_model(self.experts[0], where.device_map, where.dtype)
            soup = InPlaceSoup(model, [model_dir(e) for e in self.experts], offload=where.offload, stream=where.stream,
                               dtype=getattr(torch, where.dtype) if where.dtype else None)
            self.live = model, tokenizer, soup
        return self.live

    def evaluate(self, weights: Sequence[float], split: str = "dev", need_outcomes: bool = False) -> dict:
        """The stored record of the soup at `weights` on `split`: evaluated now, or from the store
        (evaluated again if `need_outcomes` and the stored record predates per-example outcomes)."""
        record = self.store.get(self.names, weights, split)
        if record is not None:
            record = self._with_objective(record)
        if record is None or (need_outcomes and "correct" not in record):
            model, tokenizer, soup = self._load()
            started = time.perf_counter()
            if self.applied != tuple(weights):  # the same soup on another split is in place already
                soup.apply(weights)
                self.applied = tuple(weights)
            merged = time.perf_counter()
            with compute_threads(model.device):
                result = self.evaluator.evaluate(model, tokenizer, split, source=list(zip(self.experts, weights)),
                                                 label=f"{self.kind}-" + "-".join(f"{w:.3f}" for w in weights))
            record = {
                "kind": self.kind, "experts": self.names, "weights": [float(w) for w in weights], "split": split,
                "question": self.question,
                "scores": result.scores, "objective": aggregate(result.scores, self.objective),
                "correct": solved_bits(result.outcomes),
                "merge_s": merged - started, "eval_s": time.perf_counter() - merged, "time": time.time(),
            }
            self.store.append(record)
            self.tracker.log_metrics({f"{self.kind}/{split}/objective": record["objective"],
                                      **{f"{self.kind}/{split}/{c}": v for c, v in result.scores.items()},
                                      **{f"{self.kind}/w/{n}": w for n, w in zip(self.names, record["weights"])},
                                      f"{self.kind}/merge_s": record["merge_s"], f"{self.kind}/eval_s": record["eval_s"]})
        if self.best is None or record["objective"] > self.best["objective"]:
            self.best = record
        if self.bar is not None:
            self.bar.update(1)
        if self.bar is not None and self.kind == "sweep":
            self.bar.set_postfix(best=f"{self.best['objective']:.4f}", s_per_point=f"{record['merge_s'] + record['eval_s']:.2f}", refresh=False)
        return record

    def _with_objective(self, record: dict) -> dict:
        return {**record, "objective": aggregate(record["scores"], self.objective)}

    def points(self, split: str) -> list[dict]:
        """The sweep's stored points of these experts on `split`, with the objective as asked now."""
        return [self._with_objective(r) for r in self.store
                if r["kind"] == "sweep" and r["experts"] == self.names and r["split"] == split]

    def objective_of(self, split: str):
        return lambda weights: self.evaluate(weights, split)["objective"]
