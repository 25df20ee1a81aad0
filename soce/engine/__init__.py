"""Engines: what evaluators generate and score with, and what a sweep puts each soup into.

Only prompts, token ids, texts and weights cross the seam, never the model object, so an engine
may live in another process (vLLM's workers). `hf` is a Hugging Face model in this process,
souped in place (soce.engine.hf)."""

from __future__ import annotations

from typing import Sequence


class Engine:
    """`tokenizer`: the model's tokenizer (prompts are formatted and counted on the caller's side);
    `name`: what the model is called (its directory or Hub id); `context_length`: the most tokens
    a prompt and its completion may hold (None: unknown); `eos_ids`: the token ids that end a
    completion by themselves; `device`: where it computes (for the thread count)."""

    tokenizer: object
    name: str
    context_length: int | None
    eos_ids: tuple[int, ...]
    device: object

    def generate(self, prompts: Sequence[Sequence[int]], max_tokens: Sequence[int], stop: Sequence[int]) -> list[list[int]]:
        """Greedy continuations of the prompts (token ids), generated together: each at most its
        `max_tokens`, cut before the first of the `stop` ids."""
        raise NotImplementedError

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """For each (context, continuation) pair of token ids: the continuation's log-probability
        given the context, and whether greedy decoding would produce it."""
        raise NotImplementedError

    def harness_model(self, *, batch_size: int, max_length: int, model_args: dict):
        """lm-eval's model object for this engine (lm-eval's own adapter of it), made once."""
        raise NotImplementedError

    def apply(self, weights: Sequence[float]) -> None:
        """Put the soup of the engine's experts at `weights` into it."""
        raise NotImplementedError
