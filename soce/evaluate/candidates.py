"""Score a pool's candidates with an evaluator: one score table per split, cached per
candidate and split (keyed by the model's files and the question: the benchmark's settings and
the evaluator's fingerprint), so re-runs cost nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from soce.artifacts import digest
from soce.engine import Engine
from soce.engine.hf import HfEngine
from soce.evaluate import EvalResult, Evaluator
from soce.objective import Objective
from soce.pool import Candidate, fingerprint
from soce.scores import Outcome, ScoreTable
from soce.threads import compute_threads

log = logging.getLogger(__name__)


def _read_cached(path: Path, name: str) -> EvalResult | None:
    """A cached evaluation, or None (and why) where the file is not one: cut short, hand-edited."""
    try:
        data = json.loads(path.read_text())
        return EvalResult({c: float(v) for c, v in data["scores"].items()},
                          tuple(Outcome(**{**o, "model": name}) for o in data["outcomes"]))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("  %s: not a cached evaluation (%s): evaluating %s again", path, type(err).__name__, name)
        return None


def evaluate_candidates(
    candidates: Sequence[Candidate],
    evaluator: Evaluator,
    splits: Sequence[str],
    cache_dir: Path,
    question: dict,
    check: Callable[[object, str], None] | None = None,
    reuse: bool = True,
    load: Callable[[Candidate], Engine] | None = None,
    objective: Objective = Objective(),
) -> dict[str, ScoreTable]:
    """Per split, the table of the candidates' scores (overall: `objective.overall`, the mean over
    categories unless the objective is the benchmark's own).
    reuse=False evaluates every candidate again (benchmark.cache=false) and caches the result.
    load: the engine a candidate is evaluated in (default: its Hugging Face model on the CPU)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, EvalResult]] = {s: {} for s in splits}
    # every candidate found (or fetched) before any is evaluated: a missing one fails first
    fingerprints = {c.name: fingerprint(c) for c in candidates}
    for c in candidates:
        files = fingerprints[c.name]
        # an evaluator that prompts each model its own way (BFCL's handlers): the way is part of the question
        handler = evaluator.prompt_key([(c, 1.0)])
        loaded = None
        for split in splits:
            key = digest([files, question, split] + ([handler] if handler else []))[:20]
            cached = cache_dir / f"{key}.json"
            hit = _read_cached(cached, c.name) if reuse and cached.exists() else None
            if hit is not None:
                results[split][c.name] = hit
                continue
            if loaded is None:
                loaded = load(c) if load else HfEngine.load(c)
                if check is not None:
                    check(loaded.tokenizer, c.path or c.name)
            started = time.perf_counter()
            with compute_threads(loaded.device):
                result = evaluator.evaluate(loaded, split, source=[(c, 1.0)], label=c.name)
            log.info("  evaluated %s on %s in %.1f s", c.name, split, time.perf_counter() - started)
            outcomes = tuple(Outcome(c.name, o.example_id, o.category, o.correct, o.output) for o in result.outcomes)
            results[split][c.name] = EvalResult(result.scores, outcomes)
            tmp = cached.with_suffix(f".{os.getpid()}.partial")  # concurrent jobs may evaluate the same candidate
            try:
                tmp.write_text(json.dumps({"model": c.name, "split": split, "scores": result.scores,
                                           "outcomes": [{k: v for k, v in o.__dict__.items() if k != "model"} for o in outcomes]}))
                tmp.rename(cached)
            except OSError as err:  # the scores are computed: this run keeps them; only the cache misses them
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                log.warning("  %s's %s scores not cached in %s (%s): this run uses them; the next evaluates it again. "
                            "Free the space or set pool.cache_dir to a writable folder", c.name, split, cache_dir,
                            err.strerror or err)
    tables = {}
    for split, by_model in results.items():
        models = [c.name for c in candidates]
        values = np.array([[by_model[m].scores[cat] for cat in evaluator.categories] for m in models], dtype=np.float64)
        outcomes = tuple(o for m in models for o in by_model[m].outcomes)
        tables[split] = ScoreTable(tuple(models), tuple(evaluator.categories), values,
                                   objective.overall(models, evaluator.categories, values, outcomes), f"{split} split", outcomes)
    return tables
