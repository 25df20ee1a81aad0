"""Evaluators: a live model and tokenizer in, per-category scores and per-example outcomes out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from soce.scores import Outcome


@dataclass(frozen=True)
class EvalResult:
    scores: dict[str, float]  # category -> accuracy
    outcomes: tuple[Outcome, ...]  # model left empty: the caller knows which model it evaluated


class Evaluator(Protocol):
    categories: tuple[str, ...]
    splits: tuple[str, ...]  # e.g. ("dev", "test")

    def evaluate(self, model, tokenizer, split: str, source=None, label: str | None = None,
                 examples: Sequence[str] | None = None) -> EvalResult:
        """`source`: what the model is, as (candidate, weight) pairs (one candidate, weight 1, for a
        candidate); `label`: a name for what an evaluation writes. Evaluators that need neither ignore them.
        `examples`: evaluate only these example ids (search=halving); default: the whole split."""

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        """The split's examples as (id, category) pairs, known before any model is evaluated."""


def only(items: Sequence, examples: Sequence[str] | None, id_of=lambda item: item.id) -> list:
    """The items whose ids are in `examples` (all of them for None)."""
    if examples is None:
        return list(items)
    wanted = set(examples)
    return [item for item in items if id_of(item) in wanted]


def scores_from_outcomes(outcomes: list[Outcome], categories: tuple[str, ...]) -> dict[str, float]:
    return {c: sum(o.correct for o in outcomes if o.category == c) / max(1, sum(o.category == c for o in outcomes)) for c in categories}
