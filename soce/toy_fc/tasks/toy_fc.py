"""lm-eval hooks for toy_fc: the data, generated at run time from a seed, and the AST metric."""

from __future__ import annotations

import datasets

from soce.toy_fc import fc


def load(category: str, split: str, seed: int = 0, per_category: int = 100, level: int = 1, **_metadata) -> datasets.DatasetDict:
    rows = [e.to_dict() for e in fc.splits(int(seed), int(per_category), int(level))[split] if e.category == category]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"acc": float(fc.is_correct(results[0], fc.Example(**doc)))}
