"""toy_fc evaluated directly: batched greedy generation and the AST scorer, no harness.

It serves as the reference the lm-eval backend is checked against, and as the quick path.
"""

from __future__ import annotations

from pathlib import Path

from soce.artifacts import files_digest
from soce.errors import EvaluationError
from soce.evaluate import EvalResult, Evaluator, only, scores_from_outcomes
from soce.scores import Outcome
from soce.toy_fc import fc

MAX_NEW_TOKENS = 48


def check_tokenizer(tokenizer, where: str, level: int = 1) -> None:
    """Refuse a model whose tokenizer is not toy_fc's at this level: its scores would mean nothing."""
    from soce.toy_fc.tokenizer import vocabulary

    vocab = tokenizer.get_vocab()
    if vocab == {t: i for i, t in enumerate(vocabulary(level))}:
        return
    other = [lv for lv in fc.LEVELS if lv != level and vocab == {t: i for i, t in enumerate(vocabulary(lv))}]
    if other:
        raise EvaluationError(f"{where}: its tokenizer is toy_fc level {other[0]}'s, and benchmark.level={level}; "
                              f"set benchmark.level={other[0]} (the level its family was trained on)")
    raise EvaluationError(f"{where}: its tokenizer does not match toy_fc's vocabulary (benchmark=toy_fc needs the zoo's tokenizer)")


class ToyFcDirect(Evaluator):
    categories = fc.CATEGORIES
    splits = ("dev", "test")

    def __init__(self, *, seed: int, per_category: int, batch_size: int, level: int = 1) -> None:
        self.examples = fc.splits(seed, per_category, level)
        self.batch_size = batch_size
        self.level = level
        # the examples, the decoding and the scorer are this code's: a change to it is a new question
        self.fingerprint = {"backend": "direct", "code": files_digest([Path(fc.__file__), Path(__file__)])}

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        return [(e.id, e.category) for e in self.examples[split]]

    def evaluate(self, engine, split: str, source=None, label: str | None = None, examples=None) -> EvalResult:
        tokenizer = engine.tokenizer
        check_tokenizer(tokenizer, engine.name, self.level)
        examples = only(self.examples[split], examples)
        outcomes = []
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i: i + self.batch_size]
            prompts = [tokenizer(e.prompt)["input_ids"] for e in chunk]
            new = engine.generate(prompts, [MAX_NEW_TOKENS] * len(chunk), [tokenizer.eos_token_id])
            texts = tokenizer.batch_decode(new, skip_special_tokens=True)
            outcomes += [Outcome("", e.id, e.category, fc.is_correct(t, e), t) for e, t in zip(chunk, texts)]
        return EvalResult(scores_from_outcomes(outcomes, self.categories), tuple(outcomes))
