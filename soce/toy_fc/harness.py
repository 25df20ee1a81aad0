"""toy_fc through lm-evaluation-harness: its tasks (tasks/, data generated at run time from a
seed) evaluated by the generic lm-eval backend."""

from __future__ import annotations

from pathlib import Path

from soce.evaluate.lm_eval_backend import LmEvalBackend
from soce.toy_fc import fc

TOY_FC_TASKS = Path(__file__).parent / "tasks"


def toy_fc_backend(*, seed: int, per_category: int, batch_size: int, level: int = 1) -> LmEvalBackend:
    tasks = {split: {c: f"toy_fc_{split}_{c}" for c in fc.CATEGORIES} for split in ("dev", "test")}
    # Only soce's own tasks: indexing lm-eval's thousands of built-in ones takes 7 s.
    return LmEvalBackend(tasks, include_path=TOY_FC_TASKS, metric="acc", batch_size=batch_size, max_length=256,
                         include_defaults=False, metadata={"seed": seed, "per_category": per_category, "level": level},
                         code=[Path(fc.__file__)])
