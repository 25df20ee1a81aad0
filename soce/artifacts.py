"""The run directory's files by name, digests and fingerprints, and how two sets of settings differ.

When a file of the run directory is current is soce.stages.products' rule (lineage.json). The
sweep store's records carry the question their scores answer (`question`): the benchmark's
settings, the evaluator's code and task files, and a fingerprint of each model's files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("soce")

SCORES, SCORES_TEST = "scores.csv", "scores_test.csv"
OUTCOMES, OUTCOMES_TEST = "outcomes.jsonl", "outcomes_test.jsonl"  # beside them, where the scores have per-example outcomes
ANALYSIS, SELECTION, RESULTS, REPORT, SOUP = "analysis.json", "selection.json", "results.json", "report.md", "soup"


def resolved(cfg: DictConfig, *keys: str) -> dict:
    """The config nodes `keys` as plain data, resolved in place (a node copied into a new
    config would lose its interpolations' root: analysis.tau follows selection.tau)."""
    return {key: OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True, enum_to_str=True) for key in keys}


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two nested dicts. A setting added to
    soce since `old` was made, and left unset (None: what was done before it existed), is no
    difference."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=lambda k: (k != "name", str(k))):  # a changed name first
            where = f"{prefix}.{k}" if prefix else str(k)
            if k not in old and new[k] is None:
                continue
            if k not in old:
                out.append(f"{where}: (absent) -> {json.dumps(new[k])}")
            elif k not in new:
                out.append(f"{where}: {json.dumps(old[k])} -> (absent)")
            else:
                out += differences(old[k], new[k], where)
        return out
    return [] if old == new else [f"{prefix or 'value'}: {json.dumps(old)} -> {json.dumps(new)}"]


def write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2))


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """sha256 over the names and contents of small files (task YAMLs, scorer code)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def data_digest(paths: Iterable[Path], content_limit: int = 64 << 20) -> str:
    """sha256 over data files: by path and content up to `content_limit` bytes each, by path,
    size and modification time above it (a data set of gigabytes is not read at every start)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        stat = p.stat()
        body = p.read_bytes() if stat.st_size <= content_limit else f"{stat.st_size}:{stat.st_mtime_ns}".encode()
        h.update(str(p).encode() + b"\0" + body + b"\0")
    return h.hexdigest()


def model_fingerprint(path: Path) -> str:
    """What a model's scores depend on, without reading its weights: every file's name and size,
    and for the Hugging Face cache's links the blob they point to (named by its content's hash),
    for other files their modification time. Rewritten weights (or a rebuilt zoo model, or
    another revision of a Hub model) give another fingerprint."""
    files = []
    for p in sorted(path.iterdir()):
        if p.is_file():
            stat = p.stat()
            files.append((p.name, stat.st_size, Path(os.readlink(p)).name if p.is_symlink() else stat.st_mtime_ns))
    return digest(files)


def question_differences(stored: dict | None, now: dict) -> list[str]:
    """How the question a stored soup answered differs from the question asked now: the
    benchmark and evaluator must be equal, and each model that both name must have the same files."""
    if not stored:
        return ["the record predates question fingerprints (soce < 0.2)"]
    out = differences({k: stored.get(k) for k in ("benchmark", "evaluator")}, {k: now.get(k) for k in ("benchmark", "evaluator")})
    for model, was in stored.get("models", {}).items():
        is_now = now.get("models", {}).get(model)
        if is_now is not None and is_now != was:
            out.append(f"the files of model {model!r} changed")
    return out
