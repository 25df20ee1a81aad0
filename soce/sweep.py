"""The sweep: experts loaded once into one live model; for each weight point, the soup is
written in place and evaluated, and the point is stored before the next one starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

from soce.artifacts import digest
from soce.evaluate import Evaluator, scores_from_outcomes
from soce.errors import ConfigError, DataError
from soce.evaluate.candidates import load_model, model_dir
from soce.merge import InPlaceSoup
from soce.pool import Candidate
from soce.progress import Progress
from soce.scores import Outcome
from soce.store import SweepStore
from soce.threads import compute_threads
from soce.tracking import NoTracker, Tracker
from soce.weights import key


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
        self._examples: dict[str, list[tuple[str, str]]] = {}  # split -> its (id, category) pairs

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
            record = self._evaluate(weights, split)
            self._store(record)
        if self.best is None or record["objective"] > self.best["objective"]:
            self.best = record
        if self.bar is not None:
            self.bar.update(1)
        if self.bar is not None and self.kind == "sweep":
            self.bar.set_postfix(best=f"{self.best['objective']:.4f}", s_per_point=f"{record['merge_s'] + record['eval_s']:.2f}", refresh=False)
        return record

    def _evaluate(self, weights: Sequence[float], split: str, examples: Sequence[str] | None = None) -> dict:
        """The soup at `weights` evaluated on `split` (on `examples` only, where given), as a record."""
        model, tokenizer, soup = self._load()
        started = time.perf_counter()
        if self.applied != tuple(weights):  # the same soup on another split is in place already
            soup.apply(weights)
            self.applied = tuple(weights)
        merged = time.perf_counter()
        with compute_threads(model.device):
            result = self.evaluator.evaluate(model, tokenizer, split, source=list(zip(self.experts, weights)),
                                             label=f"{self.kind}-" + "-".join(f"{w:.3f}" for w in weights),
                                             **({} if examples is None else {"examples": examples}))
        return self._record(weights, split, result.scores, result.outcomes, merged - started, time.perf_counter() - merged)

    def _record(self, weights, split: str, scores: dict, outcomes, merge_s: float, eval_s: float) -> dict:
        return {"kind": self.kind, "experts": self.names, "weights": [float(w) for w in weights], "split": split,
                "question": self.question, "scores": scores, "objective": aggregate(scores, self.objective),
                "correct": solved_bits(outcomes), "merge_s": merge_s, "eval_s": eval_s, "time": time.time()}

    def _store(self, record: dict) -> None:
        """Stored (fsynced) before anything else happens, then logged."""
        self.store.append(record)
        kind, split = self.kind, record["split"]
        self.tracker.log_metrics({f"{kind}/{split}/objective": record["objective"],
                                  **{f"{kind}/{split}/{c}": v for c, v in record["scores"].items()},
                                  **{f"{kind}/w/{n}": w for n, w in zip(self.names, record["weights"])},
                                  f"{kind}/merge_s": record["merge_s"], f"{kind}/eval_s": record["eval_s"]})

    def outcomes_on(self, weights: Sequence[float], split: str, ids: Sequence[str]) -> dict[str, bool]:
        """The soup's outcomes (id -> solved) on the examples `ids` of `split` (search=halving): from
        the point's full record where the store has one, else from the stored record of exactly
        these examples, else evaluated now and stored. Once the point's stored pieces cover the
        split, its full record is written from them, as if it had been evaluated whole."""
        full = self.store.get(self.names, weights, split)
        if full is not None and "correct" in full:
            solved = solved_by_id(full["correct"], [i for i, _ in self.example_ids(split)])
            return {i: solved[i] for i in ids}
        ids = sorted(ids)
        part = f"{split}@{digest(ids)[:12]}"  # these examples, whichever rung asked for them
        record = self.store.get(self.names, weights, part)
        if record is None:
            record = self._evaluate(weights, split, ids)
            record = {**record, "kind": "halving", "split": part, "examples": ids}
            self.store.append(record)
            if self.bar is not None:
                self.bar.update(len(ids))
        self._complete(weights, split)
        return dict(zip(ids, (b == "1" for b in record["correct"])))

    def _complete(self, weights: Sequence[float], split: str) -> None:
        """The full record of a point from its stored pieces, where they cover the split."""
        gathered, merge_s, eval_s = {}, 0.0, 0.0
        for r in self.store:
            if (r["kind"] == "halving" and r["experts"] == self.names and r["split"].startswith(f"{split}@")
                    and key(r["weights"]) == key(weights)):
                gathered.update(zip(r["examples"], (b == "1" for b in r["correct"])))
                merge_s, eval_s = merge_s + r["merge_s"], eval_s + r["eval_s"]
        examples = self.example_ids(split)
        if len(gathered) < len(examples) or any(i not in gathered for i, _ in examples):
            return
        outcomes = [Outcome("", i, c, gathered[i]) for i, c in examples]
        scores = (self.evaluator.scores_of(split, outcomes) if hasattr(self.evaluator, "scores_of")
                  else scores_from_outcomes(outcomes, self.evaluator.categories))
        self._store(self._record(weights, split, scores, outcomes, merge_s, eval_s))

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        if split not in self._examples:
            self._examples[split] = self.evaluator.example_ids(split)
        return self._examples[split]

    def _with_objective(self, record: dict) -> dict:
        return {**record, "objective": aggregate(record["scores"], self.objective)}

    def points(self, split: str) -> list[dict]:
        """The sweep's stored points of these experts on `split`, with the objective as asked now."""
        return [self._with_objective(r) for r in self.store
                if r["kind"] == "sweep" and r["experts"] == self.names and r["split"] == split]

    def objective_of(self, split: str):
        return lambda weights: self.evaluate(weights, split)["objective"]
