"""Evaluators: a live model and tokenizer in, per-category scores and per-example outcomes out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from soce.scores import Outcome


@dataclass(frozen=True)
class EvalResult:
    scores: dict[str, float]  # category -> accuracy
    outcomes: tuple[Outcome, ...]  # model left empty: the caller knows which model it evaluated


class Evaluator(Protocol):
    categories: tuple[str, ...]
    splits: tuple[str, ...]  # e.g. ("dev", "test")

    def evaluate(self, model, tokenizer, split: str, source=None, label: str | None = None) -> EvalResult:
        """`source`: what the model is, as (candidate, weight) pairs (one candidate, weight 1, for a
        candidate); `label`: a name for what an evaluation writes. Evaluators that need neither ignore them."""


def scores_from_outcomes(outcomes: list[Outcome], categories: tuple[str, ...]) -> dict[str, float]:
    return {c: sum(o.correct for o in outcomes if o.category == c) / max(1, sum(o.category == c for o in outcomes)) for c in categories}
