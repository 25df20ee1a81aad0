"""Evaluators: a live model and tokenizer in, per-category scores and per-example outcomes out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from soce.scores import Outcome


@dataclass(frozen=True)
class EvalResult:
    scores: dict[str, float]  # category -> accuracy
    outcomes: tuple[Outcome, ...]  # model left empty: the caller knows which model it evaluated


class Evaluator:
    """What every evaluator has: its categories and splits, its `fingerprint` (what a score
    depends on besides the model: the evaluator's code, data and settings), and the methods
    below. An evaluator of prompts that depend on the model (BFCL's handlers) says so through
    `prompt_key` and `soup_question`."""

    categories: tuple[str, ...]
    splits: tuple[str, ...]  # e.g. ("dev", "test")
    fingerprint: dict

    def evaluate(self, model, tokenizer, split: str, source=None, label: str | None = None,
                 examples: Sequence[str] | None = None) -> EvalResult:
        """`source`: what the model is, as (candidate, weight) pairs (one candidate, weight 1, for a
        candidate); `label`: a name for what an evaluation writes. Evaluators that need neither ignore them.
        `examples`: evaluate only these example ids (search=halving); default: the whole split."""
        raise NotImplementedError

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        """The split's examples as (id, category) pairs, known before any model is evaluated."""
        raise NotImplementedError

    def prompt_key(self, source) -> str | None:
        """Which prompt format the model made of `source` ((candidate, weight) pairs) is asked in,
        where that depends on the model (BFCL's handler); None where it does not."""
        return None

    def soup_question(self, candidates: Sequence) -> dict:
        """What a soup's scores depend on besides its experts' files and the benchmark's settings."""
        return {}

    def benchmark_objective(self):
        """The benchmark's own overall (a soce.objective.Objective), where it defines one other than
        the mean of its categories (BFCL's Overall Acc); None: the mean."""
        return None

    def scores_of(self, split: str, outcomes: Sequence[Outcome]) -> dict[str, float]:
        """The per-category scores of a split from its per-example outcomes."""
        return scores_from_outcomes(list(outcomes), self.categories)


def only(items: Sequence, examples: Sequence[str] | None, id_of=lambda item: item.id) -> list:
    """The items whose ids are in `examples` (all of them for None)."""
    if examples is None:
        return list(items)
    wanted = set(examples)
    return [item for item in items if id_of(item) in wanted]


def scores_from_outcomes(outcomes: list[Outcome], categories: tuple[str, ...]) -> dict[str, float]:
    return {c: sum(o.correct for o in outcomes if o.category == c) / max(1, sum(o.category == c for o in outcomes)) for c in categories}
