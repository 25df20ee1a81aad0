"""BFCL's data through bfcl-eval: the leaderboard's categories (leaf columns) and the test files
each pools, the entries and their answers, the dev/test halves, the handlers bfcl-eval knows,
and the leaderboard's score tables.

Categories are the leaf columns of the leaderboard's data_overall.csv; a column pooling
several BFCL test files is their unweighted mean, as the leaderboard computes it.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from soce.errors import ConfigError, EvaluationError
from soce.scores import BFCL_LEAVES, closest

log = logging.getLogger(__name__)

# The leaderboard's leaf columns (data_overall.csv: soce.scores.BFCL_LEAVES, in order) and the
# BFCL test files each pools.
CATEGORIES: dict[str, tuple[str, ...]] = dict(zip(BFCL_LEAVES, (
    ("simple_python", "simple_java", "simple_javascript"),  # Non-Live Simple AST
    ("multiple",),  # Non-Live Multiple AST
    ("parallel",),  # Non-Live Parallel AST
    ("parallel_multiple",),  # Non-Live Parallel Multiple AST
    ("live_simple",),  # Live Simple AST
    ("live_multiple",),  # Live Multiple AST
    ("live_parallel",),  # Live Parallel AST
    ("live_parallel_multiple",),  # Live Parallel Multiple AST
    ("multi_turn_base",),  # Multi Turn Base
    ("multi_turn_miss_func",),  # Multi Turn Miss Func
    ("multi_turn_miss_param",),  # Multi Turn Miss Param
    ("multi_turn_long_context",),  # Multi Turn Long Context
    ("live_relevance",),  # Relevance Detection
    ("irrelevance", "live_irrelevance"),  # Irrelevance Detection
), strict=True))
# Entries per test file in BFCL v3 (the leaderboard's snapshots of 2025; gorilla's
# eval_runner_helper.py at 1bb65c9 weighs the live files by them)
V3_FILE_SIZES = {"simple_python": 400, "simple_java": 100, "simple_javascript": 50, "multiple": 200, "parallel": 200,
                 "parallel_multiple": 200, "irrelevance": 240, "live_simple": 258, "live_multiple": 1053, "live_parallel": 16,
                 "live_parallel_multiple": 24, "live_irrelevance": 882, "live_relevance": 18, "multi_turn_base": 200,
                 "multi_turn_miss_func": 200, "multi_turn_miss_param": 200, "multi_turn_long_context": 200}


# BFCL v3's Overall Acc (gorilla's eval_runner_helper.py): the mean of three sections, each the
# weighted mean of its test files' accuracies. Non-Live Overall: the unweighted mean of its
# columns with irrelevance (Simple: of its three files); Live Overall: the files weighted by their
# entries; Multi Turn Overall: the mean of its four. It gives both 2025 snapshots' Overall Acc from
# their section files to within 0.01 points for every model.
V3_OVERALL = {
    "Non-Live": {"simple_python": 1 / 3, "simple_java": 1 / 3, "simple_javascript": 1 / 3, "multiple": 1.0,
                 "parallel": 1.0, "parallel_multiple": 1.0, "irrelevance": 1.0},
    "Live": {f: float(V3_FILE_SIZES[f]) for f in ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
                                                   "live_irrelevance", "live_relevance")},
    "Multi Turn": {f: 1.0 for f in ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param",
                                    "multi_turn_long_context")},
}
V3_OVERALL_LABEL = "BFCL v3 Overall Acc (the leaderboard's: mean of Non-Live, Live and Multi Turn Overall)"


def column_sizes(categories: Sequence[str]) -> dict[str, float]:
    """Each leaderboard column's effective number of examples in v3: a column is the unweighted
    mean of its files' accuracies, whose sampling variance is p(1-p)/n with n = k^2 / sum(1/n_f)."""
    return {c: len(CATEGORIES[c]) ** 2 / sum(1 / V3_FILE_SIZES[f] for f in CATEGORIES[c]) for c in categories}


INSTALL = "pip install 'soce[bfcl]' (bfcl-eval, the leaderboard's own evaluator)"


def read_bfcl_scores(path: str | Path, categories: Sequence[str]):
    """A BFCL score table: a leaderboard snapshot (data_overall.csv), or the score folder
    `bfcl evaluate` writes (its data_overall.csv holds every model it scored)."""
    from soce.scores import read_table

    path = Path(path)
    if path.is_dir():
        if not (path / "data_overall.csv").exists():
            raise ConfigError(f"benchmark.table={path}: a folder without data_overall.csv (a BFCL score folder has one, "
                              "written by `bfcl evaluate`)")
        path = path / "data_overall.csv"
    return read_table(path, format="bfcl", categories=check_categories(categories))


def bfcl_home() -> Path:
    """Where bfcl-eval keeps its project folder (it creates result/ and score/ there when imported;
    by default inside site-packages, which may be read-only)."""
    root = Path(os.environ.get("SOCE_CACHE", Path.home() / ".cache" / "soce")) / "bfcl"
    return Path(os.environ.setdefault("BFCL_PROJECT_ROOT", str(root)))


def import_bfcl():
    """bfcl_eval, imported with its project folder outside site-packages; a clear error where it is missing."""
    bfcl_home().mkdir(parents=True, exist_ok=True)
    try:
        import bfcl_eval  # noqa: F401
        from bfcl_eval.constants import model_config
    except ModuleNotFoundError as err:
        missing = err.name or "bfcl_eval"
        hint = f"; {missing} is one of its dependencies" if not missing.startswith("bfcl_eval") else ""
        raise EvaluationError(f"benchmark=bfcl needs bfcl-eval, which cannot be imported ({err}{hint}): {INSTALL}") from None
    return model_config


def bfcl_version() -> str:
    from importlib.metadata import version

    return version("bfcl-eval")


def check_categories(categories: Sequence[str]) -> list[str]:
    """The leaderboard columns asked for, each checked."""
    if not categories:
        raise ConfigError("benchmark.categories is empty: name at least one leaderboard column, or leave it unset for all 14")
    for c in categories:
        if c not in CATEGORIES:
            raise ConfigError(f"benchmark.categories: {c!r} is not a BFCL leaderboard column{closest(c, CATEGORIES)}; "
                              f"the columns: {', '.join(CATEGORIES)}")
    return list(categories)


def handler_names() -> list[str]:
    """The BFCL models whose handler runs an open-weights model (one soce can serve in-process)."""
    from bfcl_eval.model_handler.local_inference.base_oss_handler import OSSHandler

    return [name for name, cfg in import_bfcl().MODEL_CONFIG_MAPPING.items()
            if isinstance(cfg.model_handler, type) and issubclass(cfg.model_handler, OSSHandler)]


def check_handler(name: str, where: str) -> str:
    """`name`, if bfcl-eval has a handler for it that soce can serve; otherwise an error naming the closest."""
    mapping = import_bfcl().MODEL_CONFIG_MAPPING
    served = handler_names()
    if name not in mapping:
        raise ConfigError(f"{where}: bfcl-eval {bfcl_version()} has no model {name!r}{closest(name, served)} "
                          "(a BFCL model name, e.g. Salesforce/Llama-xLAM-2-8b-fc-r)")
    if name not in served:
        raise ConfigError(f"{where}: {name!r} is served by a vendor's API in bfcl-eval, not by an open-weights model: "
                          f"soce runs the model itself; choose an open-weights model's handler{closest(name, served)}")
    return name


@dataclass(frozen=True)
class Entry:
    """One BFCL test entry: as the handler gets it (with the language hints), as the checker gets
    it (without), and its possible answer (none for relevance and irrelevance)."""

    id: str
    file: str  # the BFCL test category, e.g. simple_java
    category: str  # the leaderboard column
    prompt: dict
    checked: dict
    answer: object = None


def load_entries(categories: Sequence[str]) -> dict[str, list[Entry]]:
    """Per BFCL test file of the chosen columns, its entries in BFCL's order."""
    import_bfcl()
    from bfcl_eval.utils import is_relevance_or_irrelevance, load_dataset_entry, load_ground_truth_entry

    out = {}
    for category in categories:
        for file in CATEGORIES[category]:
            prompts = load_dataset_entry(file, include_prereq=False, include_language_specific_hint=True)
            checked = load_dataset_entry(file, include_prereq=False, include_language_specific_hint=False)
            answers = [None] * len(prompts) if is_relevance_or_irrelevance(file) else load_ground_truth_entry(file)
            if not len(prompts) == len(checked) == len(answers):
                raise EvaluationError(f"bfcl-eval's {file}: {len(prompts)} entries, {len(answers)} possible answers")
            out[file] = [Entry(p["id"], file, category, p, c, a if a is None else a["ground_truth"])
                         for p, c, a in zip(prompts, checked, answers)]
    return out


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"benchmark.limit={limit}: at least 1 example of each BFCL test file (or unset, for all)")


def own_handler(candidate) -> str | None:
    """The BFCL model a candidate is prompted as: its pool entry's handler, or its Hub id."""
    return getattr(candidate, "handler", None) or getattr(candidate, "hub_id", None)


def split_entries(entries: dict[str, list[Entry]], *, split: str, seed: int, limit: int | None) -> dict[str, list[Entry]]:
    """split='halves': each test file's entries shuffled with `seed` and halved (stratified by
    file, so by category): dev the first half, test the second. split='none': one split, dev,
    with every entry (the paper's protocol). `limit`: at most this many of each file per split."""
    check_limit(limit)
    splits: dict[str, list[Entry]] = {"dev": []} if split == "none" else {"dev": [], "test": []}
    for file, items in entries.items():
        if split == "none":
            parts = {"dev": list(items)}
        else:
            order = list(items)
            random.Random(f"{seed}:{file}").shuffle(order)
            half = (len(order) + 1) // 2
            parts = {"dev": order[:half], "test": order[half:]}
        for name, part in parts.items():
            splits[name] += part[:limit] if limit else part
    return splits


