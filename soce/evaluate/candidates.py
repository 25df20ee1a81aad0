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

from soce.artifacts import digest, model_fingerprint
from soce.errors import CheckpointError
from soce.evaluate import EvalResult, Evaluator
from soce.pool import Candidate
from soce.scores import Outcome, ScoreTable
from soce.threads import compute_threads

log = logging.getLogger(__name__)


def fingerprint(candidate: Candidate) -> str:
    """What the candidate's scores depend on: the files of its model directory (for a Hub id,
    the snapshot fetched: its revision's files), never its name alone."""
    return model_fingerprint(Path(model_dir(candidate)))


def model_dir(candidate: Candidate) -> str:
    """The candidate's local model directory: its path, or its Hub id fetched into the Hugging
    Face cache (weights, config and tokenizer files only)."""
    if candidate.path:
        if not Path(candidate.path).is_dir():
            raise CheckpointError(f"pool model {candidate.name!r}: {candidate.path} is not a model directory")
        return candidate.path
    if not candidate.hub_id:
        raise CheckpointError(f"pool model {candidate.name!r} has neither a path nor a hub_id: set one in the pool config")
    from huggingface_hub import snapshot_download

    log.info("  pool model %r: %s from the Hugging Face Hub (or its cache)", candidate.name, candidate.hub_id)
    try:
        return snapshot_download(candidate.hub_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"])
    except Exception as err:  # offline, gated, missing: every cause ends here, with the model named
        raise CheckpointError(f"pool model {candidate.name!r}: cannot fetch {candidate.hub_id} from the Hugging Face Hub "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                        "download it where there is a network and set its path in the pool config") from None


def load_model(candidate: Candidate, device_map: dict[str, str] | None = None, dtype: str | None = None):
    """The candidate's model and tokenizer. Its weights are checked first as the merge reads them
    (safetensors only, inside its directory, headers valid): soce and transformers then load the
    same files, and a pickle is never unpickled. `device_map`: where each module goes (a memory
    plan's; default: the CPU); `dtype`: the model's (default: the checkpoint's)."""
    import pickle

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from soce.merge import open_checkpoint

    hf_logging.disable_progress_bar()  # a bar per model loaded: soce prints what it loads
    where = model_dir(candidate)
    try:
        open_checkpoint(where)
    except CheckpointError as err:
        raise CheckpointError(f"pool model {candidate.name!r}: {err}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(where, device_map=device_map, **({"dtype": dtype} if dtype else {}))
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"pool model {candidate.name!r}: cannot load {where} ({type(err).__name__}: {err})") from None
    check_finite(model, f"pool model {candidate.name!r} ({where})")
    return model, tokenizer


def check_finite(model, where: str) -> None:
    """Refuse a model with NaN or Inf weights: its outputs are garbage, its scores 0 everywhere,
    and they would enter the correlations and the selection as if it were a real model."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not torch.isfinite(p).all():
                raise CheckpointError(f"{where}: tensor {name!r} holds NaN or Inf values: fix the checkpoint, or leave the "
                                      "model out of the pool")


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
    device_map: Callable[[Candidate], dict[str, str]] | None = None,
) -> dict[str, ScoreTable]:
    """Per split, the table of the candidates' scores (overall: the mean over categories).
    reuse=False evaluates every candidate again (benchmark.cache=false) and caches the result.
    device_map: where a candidate is loaded (default: the CPU)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, EvalResult]] = {s: {} for s in splits}
    # every candidate found (or fetched) before any is evaluated: a missing one fails first
    fingerprints = {c.name: fingerprint(c) for c in candidates}
    for c in candidates:
        files = fingerprints[c.name]
        # an evaluator that prompts each model its own way (BFCL's handlers): the way is part of the question
        handler = evaluator.handler_for([(c, 1.0)]) if hasattr(evaluator, "handler_for") else None
        loaded = None
        for split in splits:
            key = digest([files, question, split] + ([handler] if handler else []))[:20]
            cached = cache_dir / f"{key}.json"
            hit = _read_cached(cached, c.name) if reuse and cached.exists() else None
            if hit is not None:
                results[split][c.name] = hit
                continue
            if loaded is None:
                loaded = load_model(c, device_map(c) if device_map else None)
                if check is not None:
                    check(loaded[1], c.path or c.name)
            started = time.perf_counter()
            with compute_threads(loaded[0].device):
                result = evaluator.evaluate(*loaded, split, source=[(c, 1.0)], label=c.name)
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
        tables[split] = ScoreTable(tuple(models), tuple(evaluator.categories), values, values.mean(axis=1), f"{split} split", outcomes)
    return tables
