"""toy_fc evaluated directly: batched greedy generation and the AST scorer, no harness.

It serves as the reference the lm-eval backend is checked against, and as the quick path.
"""

from __future__ import annotations

from pathlib import Path

import torch

from soce.artifacts import files_digest
from soce.errors import EvaluationError
from soce.evaluate import EvalResult, only, scores_from_outcomes
from soce.scores import Outcome
from soce.zoo import fc

MAX_NEW_TOKENS = 48


def check_tokenizer(tokenizer, where: str) -> None:
    """Refuse a model whose tokenizer is not toy_fc's: its scores would mean nothing."""
    from soce.zoo.tokenizer import vocabulary

    if tokenizer.get_vocab() != {t: i for i, t in enumerate(vocabulary())}:
        raise EvaluationError(f"{where}: its tokenizer does not match toy_fc's vocabulary (benchmark=toy_fc needs the zoo's tokenizer)")


class ToyFcDirect:
    categories = fc.CATEGORIES
    splits = ("dev", "test")

    def __init__(self, *, seed: int, per_category: int, batch_size: int) -> None:
        self.examples = fc.splits(seed, per_category)
        self.batch_size = batch_size
        # the examples, the decoding and the scorer are this code's: a change to it is a new question
        self.fingerprint = {"backend": "direct", "code": files_digest([Path(fc.__file__), Path(__file__)])}

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        return [(e.id, e.category) for e in self.examples[split]]

    @torch.no_grad()
    def evaluate(self, model, tokenizer, split: str, source=None, label: str | None = None, examples=None) -> EvalResult:
        check_tokenizer(tokenizer, getattr(model, "name_or_path", "model"))
        examples = only(self.examples[split], examples)
        tokenizer.padding_side = "left"
        outcomes = []
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i: i + self.batch_size]
            enc = tokenizer([e.prompt for e in chunk], return_tensors="pt", padding=True).to(model.device)
            out = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            outcomes += [Outcome("", e.id, e.category, fc.is_correct(t, e), t) for e, t in zip(chunk, texts)]
        return EvalResult(scores_from_outcomes(outcomes, self.categories), tuple(outcomes))
