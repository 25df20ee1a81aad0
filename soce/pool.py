"""The candidate pool: which rows of the score table are candidates, matched by name."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from soce.artifacts import model_fingerprint
from soce.errors import CheckpointError, ConfigError
from soce.scores import closest

log = logging.getLogger(__name__)

_MODE_SUFFIX = re.compile(r"\s*\((FC|Prompt)\)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Candidate:
    """A pool model: its name in the score table, where its weights are (Hub id or path), and
    (benchmark=bfcl) the BFCL model whose prompt handler it is evaluated with; where the pool
    config gives them, its config.json's sizes (stage=plan needs no network for it)."""

    name: str
    hub_id: str | None = None
    path: str | None = None
    handler: str | None = None
    architecture: dict | None = field(default=None, compare=False, hash=False, repr=False)  # config.json's sizes, for the plan


def row_key(name: str) -> str:
    """Leaderboards append the calling mode: 'xLAM-2-70b-fc-r (FC)' is the model 'xLAM-2-70b-fc-r'."""
    return _MODE_SUFFIX.sub("", name).strip().lower()


def resolve_pool(candidates: Sequence[Candidate] | None, table_models: Sequence[str], source: str) -> list[Candidate]:
    """The pool's candidates with `name` set to their row in the table (every row if None).

    A name matches its row exactly, or up to case and a trailing '(FC)' / '(Prompt)'.
    """
    if candidates is None:
        return [Candidate(m) for m in table_models]
    if not candidates:
        raise ConfigError("the pool is empty: name at least one model, or none for every model of the table")
    resolved = []
    for c in candidates:
        if c.name in table_models:
            row = c.name
        else:
            rows = [m for m in table_models if row_key(m) == row_key(c.name)]
            if not rows:
                raise ConfigError(f"pool model {c.name!r} is not in {source}{closest(c.name, table_models)}")
            if len(rows) > 1:
                raise ConfigError(f"pool model {c.name!r} matches several rows of {source}: {', '.join(map(repr, rows))}; name one exactly")
            row = rows[0]
        resolved.append(replace(c, name=row))
    names = [c.name for c in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"the pool names the same table row twice: {', '.join(dupes)}")
    located = [c for c in resolved if c.path or c.hub_id]
    warn_duplicates([c.path or c.hub_id for c in located], "pool", "two candidates that are one",
                    [f"pool model {c.name!r}" for c in located])
    return resolved


def warn_duplicates(models: Sequence[str | Path], where: str, consequence: str, names: Sequence[str] | None = None) -> None:
    """Warn when the same model (the same directory, or Hub id) is listed twice, naming both entries."""
    seen: dict[str, int] = {}
    for i, m in enumerate(models):
        same = str(Path(m).resolve()) if Path(m).exists() else str(m)
        if same in seen:
            j = seen[same]
            first, second = (names[j], names[i]) if names else (f"{where}[{j}]", f"{where}[{i}]")
            log.warning("%s and %s are the same model (%s): %s", first, second, m, consequence)
        else:
            seen[same] = i


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

