"""The sweep: experts loaded once into one live model; for each weight point, the soup is
written in place and evaluated, and the point is stored before the next one starts.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from soce.artifacts import digest
from soce.objective import Objective
from soce.evaluate import Evaluator
from soce.errors import DataError, EvaluationError
from soce.pool import Candidate
from soce.progress import Progress
from soce.scores import Outcome
from soce.store import SoupCache, SweepStore
from soce.threads import compute_threads
from soce.tracking import NoTracker, Tracker
from soce.weights import key


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


def record_outcomes(bits: str, examples: Sequence[tuple[str, str]]) -> list[Outcome]:
    """A stored record's per-example outcomes (its solved_bits), in the order of `examples`, the
    split's (id, category) pairs."""
    solved = solved_by_id(bits, [i for i, _ in examples])
    return [Outcome("", i, c, solved[i]) for i, c in examples]


@dataclass(frozen=True)
class Placement:
    """Where a Souper's live model and experts go: its device map (from the memory plan; None:
    the CPU), its dtype (None: the checkpoints'), and the experts' home: the model's devices,
    pinned host memory (offload) or the disk (stream: read at every soup); `engine`: the
    engine it is evaluated in (soce.engine.ENGINES), with `vllm`'s settings where it is vllm."""

    device_map: dict[str, str] | None = None
    dtype: str | None = None
    offload: bool = False
    stream: bool = False
    engine: str = "hf"
    vllm: object = None


class Souper:
    """One live model souped in place from `experts`, evaluated by `evaluator`, stored in `store`.
    The model and the experts are loaded only when a point is not in the store yet.

    Each stored record carries `question` (what its scores depend on: the benchmark's settings,
    the evaluator, the fingerprints of the experts' files, as the caller found them); the objective is recomputed from the stored
    per-category scores and outcomes on every read, so a changed objective never reuses an old one."""

    def __init__(self, experts: Sequence[Candidate], evaluator: Evaluator, store: SweepStore, question: dict,
                 objective: Objective, tracker: Tracker | None = None, kind: str = "sweep", placement: Placement = Placement(),
                 on_use: Callable[[dict], None] | None = None, cache: "SoupCache | None" = None) -> None:
        """on_use: called with every whole record a result is made of (the lineage of what uses it);
        cache: soups evaluated by earlier runs for the same question (found before evaluating)."""
        self.experts, self.placement = list(experts), placement
        self.on_use, self.cache = on_use, cache
        self.from_cache = 0  # soups (and pieces) this souper found in the cache of earlier runs
        self.evaluations = 0  # soups (and pieces) this souper evaluated in its engine
        self.names = [e.name for e in experts]
        self.evaluator, self.store, self.objective, self.kind = evaluator, store, objective, kind
        self.question = question
        self.tracker = tracker or NoTracker()
        self.best: dict | None = None
        self.bar: Progress | None = None  # set by whoever runs a long series of points
        self.show_best = False  # the bar shows the best soup so far (a search's)
        self.engine = None  # the experts' engine: loaded for the first point not in the store
        self._examples: dict[str, list[tuple[str, str]]] = {}  # split -> its (id, category) pairs
        self.stored_only = False  # True: a replay that evaluates nothing (NotStored where the store lacks a soup)
        self.examples_evaluated = self.examples_reused = 0  # search=halving's pieces: evaluated now, found in the store

    def _load(self):
        """The engine holding the experts, loaded for the first soup the store lacks."""
        if self.engine is None:
            from soce.engine import ENGINES, register_engines

            register_engines()
            self.engine = ENGINES[self.placement.engine].for_soup(self.experts, self.placement)
        return self.engine

    def evaluate(self, weights: Sequence[float], split: str = "dev") -> dict:
        """The record of the soup at `weights` on `split`: from the store, or evaluated now and stored."""
        record = stored = self.store.get(self.names, weights, split) or self._from_cache(weights, split)
        if record is None:
            if self.stored_only:
                raise NotStored(weights, split)
            record = self._evaluate(weights, split)
            self._store(record)
        record = self._with_objective(record)
        if self.best is None or record["objective"] > self.best["objective"]:
            self.best = record
        if self.bar is not None:
            self.bar.update(1, stored=stored is not None)
        if self.bar is not None and self.show_best:  # a search's series of points: its best so far
            self.bar.set_postfix(best=f"{self.best['objective']:.4f}", s_per_point=f"{record['merge_s'] + record['eval_s']:.2f}", refresh=False)
        return record

    def _evaluate(self, weights: Sequence[float], split: str, examples: Sequence[str] | None = None) -> dict:
        """The soup at `weights` evaluated on `split` (on `examples` only, where given), as a record."""
        engine = self._load()
        self.evaluations += 1
        started = time.perf_counter()
        engine.apply(weights)  # nothing to do where the engine holds this soup already (another split)
        merged = time.perf_counter()
        with compute_threads(engine.device):
            result = self.evaluator.evaluate(engine, split, source=list(zip(self.experts, weights)),
                                             label=f"{self.kind}-" + "-".join(f"{w:.3f}" for w in weights),
                                             **({} if examples is None else {"examples": examples}))
        return self._record(weights, split, result.scores, result.outcomes, merged - started, time.perf_counter() - merged)

    def _record(self, weights, split: str, scores: dict, outcomes, merge_s: float, eval_s: float) -> dict:
        nonfinite = {c: v for c, v in scores.items() if not math.isfinite(v)}
        if nonfinite:  # a NaN compares false with everything: it would win or lose a search at random
            raise EvaluationError(f"the soup of {', '.join(self.names)} at weights {_rounded(weights)} scored {nonfinite} on "
                                  f"{split}: not a finite score. Nothing was stored; check benchmark.metric and the "
                                  "experts' weights (a NaN in a checkpoint gives NaN logits)")
        return {"kind": self.kind, "experts": self.names, "weights": [float(w) for w in weights], "split": split,
                "question": self.question, "scores": scores, "objective": self.objective.of(scores, outcomes),
                "correct": solved_bits(outcomes), "merge_s": merge_s, "eval_s": eval_s, "time": time.time()}

    def _from_cache(self, weights: Sequence[float], split: str) -> dict | None:
        """The soup from the cache of earlier runs, copied into this run's store (None: not there)."""
        cached = self.cache.get(weights, split) if self.cache is not None else None
        if cached is None:
            return None
        self.store.append(cached)  # (its digest is the store's to write)
        self.from_cache += 1
        return self.store.get(self.names, weights, split)

    def _store(self, record: dict) -> None:
        """Stored (fsynced) before anything else happens, kept for later runs, then logged."""
        self.store.append(record)
        if self.cache is not None:
            self.cache.add(record)
        kind, split = self.kind, record["split"]
        self.tracker.log_metrics({f"{kind}/{split}/objective": record["objective"],
                                  **{f"{kind}/{split}/{c}": v for c, v in record["scores"].items()},
                                  **{f"{kind}/w/{n}": w for n, w in zip(self.names, record["weights"])},
                                  f"{kind}/merge_s": record["merge_s"], f"{kind}/eval_s": record["eval_s"]})

    def outcomes_on(self, weights: Sequence[float], split: str, ids: Sequence[str]) -> dict[str, bool]:
        """The soup's outcomes (id -> solved) on the examples `ids` of `split` (search=halving): what
        the store knows of this soup (its full record, or every stored piece of it, whichever
        subsets they were evaluated on), the rest evaluated now and stored as one piece. Once the
        point's pieces cover the split, its full record is written from them, as if it had been
        evaluated whole."""
        known = self._known_outcomes(weights, split)
        missing = sorted(i for i in ids if i not in known)
        if missing and self.cache is not None:  # what earlier runs evaluated of it
            known.update(self._cached_outcomes(weights, split))
            missing = sorted(i for i in ids if i not in known)
        if missing:
            if self.stored_only:
                raise NotStored(weights, split)
            record = self._evaluate(weights, split, missing)
            record = {**record, "kind": "halving", "split": f"{split}@{digest(missing)[:12]}", "examples": missing}
            self.store.append(record)
            if self.cache is not None:
                self.cache.add(record)
            known.update(zip(missing, (b == "1" for b in record["correct"])))
            if self.bar is not None:
                self.bar.update(len(missing))
        self.examples_evaluated += len(missing)
        self.examples_reused += len(ids) - len(missing)
        self._complete(weights, split, known)
        return {i: known[i] for i in ids}

    def _pieces(self, weights: Sequence[float], split: str) -> list[dict]:
        """The stored pieces of the soup at `weights` on `split` (search=halving)."""
        point = key(weights)
        return [r for r in self.store if r["experts"] == self.names and r["split"].startswith(f"{split}@")
                and key(r["weights"]) == point]

    def _cached_outcomes(self, weights: Sequence[float], split: str) -> dict[str, bool]:
        """What earlier runs evaluated of the soup (its whole split, else its pieces), copied into
        this run's store."""
        full = self._from_cache(weights, split)
        if full is not None:
            return solved_by_id(full["correct"], [i for i, _ in self.example_ids(split)])
        have = {r["split"] for r in self._pieces(weights, split)}
        known: dict[str, bool] = {}
        for piece in self.cache.pieces(weights, split):
            if piece["split"] not in have:
                self.store.append(piece)
                self.from_cache += 1
                known.update(zip(piece["examples"], (b == "1" for b in piece["correct"])))
        return known

    def _known_outcomes(self, weights: Sequence[float], split: str) -> dict[str, bool]:
        full = self.store.get(self.names, weights, split)
        if full is not None:
            return solved_by_id(full["correct"], [i for i, _ in self.example_ids(split)])
        known: dict[str, bool] = {}
        for r in self._pieces(weights, split):
            known.update(zip(r["examples"], (b == "1" for b in r["correct"])))
        return known

    def _complete(self, weights: Sequence[float], split: str, known: dict[str, bool]) -> None:
        """The full record of a point from its stored pieces, where they cover the split."""
        examples = self.example_ids(split)
        if self.store.get(self.names, weights, split) is not None or any(i not in known for i, _ in examples):
            return
        pieces = self._pieces(weights, split)
        outcomes = [Outcome("", i, c, known[i]) for i, c in examples]
        scores = self.evaluator.scores_of(split, outcomes)
        self._store(self._record(weights, split, scores, outcomes, math.fsum(r["merge_s"] for r in pieces),
                                 math.fsum(r["eval_s"] for r in pieces)))

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        if split not in self._examples:
            self._examples[split] = self.evaluator.example_ids(split)
        return self._examples[split]

    def _with_objective(self, record: dict) -> dict:
        """A whole split's record with the objective as asked now."""
        if self.on_use is not None:
            self.on_use(record)
        outcomes = record_outcomes(record["correct"], self.example_ids(record["split"]))
        return {**record, "objective": self.objective.of(record["scores"], outcomes)}


def record_problem(evaluator: Evaluator, question: dict):
    """What makes a stored record of this benchmark unusable (None: nothing): a split it does not
    have, categories other than its own, outcomes for another number of examples. A record of
    another question (`question`: the benchmark's settings and the evaluator) is not judged here:
    the store's question check refuses it whole."""
    categories = set(evaluator.categories)
    ours = json.loads(json.dumps({k: question.get(k) for k in ("benchmark", "evaluator")}))  # as a record holds it
    ids: dict[str, set[str]] = {}

    def ids_of(split: str) -> set[str]:
        if split not in ids:
            ids[split] = {i for i, _ in evaluator.example_ids(split)}
        return ids[split]

    def problem(record: dict) -> str | None:
        if {k: record["question"].get(k) for k in ours} != ours:
            return None
        split, piece, _ = record["split"].partition("@")
        if split not in evaluator.splits:
            return f"split {split!r} is not one of the benchmark's ({', '.join(evaluator.splits)})"
        unknown = sorted(set(record["scores"]) - categories)
        missing = [] if piece else sorted(categories - set(record["scores"]))
        if unknown or missing:
            return "its categories are not the benchmark's (" + "; ".join(
                ([f"unknown: {', '.join(unknown)}"] if unknown else []) + ([f"missing: {', '.join(missing)}"] if missing else [])) + ")"
        if piece:
            if not set(record["examples"]) <= ids_of(split):
                return f"it names examples the {split} split does not have"
        elif len(record["correct"]) != len(ids_of(split)):
            return f"it has outcomes for {len(record['correct'])} examples, the {split} split has {len(ids_of(split))}"
        return None

    return problem


class NotStored(Exception):
    """A soup the store does not hold, asked for by a replay that evaluates nothing."""


@dataclass
class SearchResult:
    """What a search asked for and chose. `records`: the full records of the soups it asked
    for, once each, in the order first asked (objective as asked now); `best`: its choice among
    them (the best objective, the first asked of equals; search=halving's survivor), None for a
    shard's share or a replay cut short (`complete` False: the store does not hold every soup
    the search asks for yet); `run`: what a search over subsets of the examples did (a
    soce.halving.Halving, a soce.surrogate.SurrogateRun), for its summary."""

    records: list[dict]
    best: dict | None
    complete: bool = True
    run: object = None


def search_soups(souper: Souper, search, split: str, order: Sequence[int], shard: tuple[int, int] = (0, 1),
                 stored_only: bool = False, known: Mapping[tuple, Mapping[str, bool]] | None = None) -> SearchResult:
    """Run `search` over `souper`'s experts on `split`: every soup it asks for comes from the
    store or is evaluated now and stored. Its result is made of the soups it asked for alone,
    whatever else the store holds (other searches', the report's, the baselines'), so running it
    again with the same settings gives the same result. stored_only: evaluate nothing, stop at
    the first soup the store lacks (what a report of an unfinished sweep shows). known: each
    expert alone (a one-hot point) with its outcomes on the split by example id, which a search
    may use without evaluating them (its candidate evaluation)."""
    from soce.search import Examples, run_search

    asked: dict[str, dict] = {}

    def evaluate(weights) -> float:
        record = souper.evaluate(weights, split)
        asked.setdefault(key(weights), record)
        return record["objective"]

    souper.stored_only = stored_only
    try:
        examples = (Examples(souper.example_ids(split), lambda p, ids: souper.outcomes_on(p, split, ids), souper.objective,
                             known or {})
                    if search.per_example else None)
        done = run_search(search, len(souper.names), evaluate, order, shard, examples)
    except NotStored:
        done, complete = None, False
    else:
        complete = True
    finally:
        souper.stored_only = False
    if search.per_example:  # its points are those that reached every example
        survivors = done.alive[-1] if done is not None and done.alive else []
        full = [souper.store.get(souper.names, p, split) for p in survivors]
        records = [souper._with_objective(r) for r in full if r is not None]
        best = None
        if done and done.best:
            stored = souper.store.get(souper.names, done.best, split)
            if stored is not None:
                best = souper._with_objective(stored)
            elif stored_only:
                complete = False
            else:  # an expert alone, known from its candidate evaluation: evaluated as a soup, stored
                best = souper.evaluate(done.best, split)
        return SearchResult(records, best, complete, done)
    records = list(asked.values())
    best = max(records, key=lambda r: r["objective"]) if complete and shard[1] == 1 and records else None
    return SearchResult(records, best, complete)


def _rounded(weights: Sequence[float]) -> str:
    return "[" + ", ".join(f"{w:.4g}" for w in weights) + "]"
