"""Engines: what evaluators generate and score with, and what a sweep puts each soup into.

Only prompts, token ids, texts and weights cross the seam, never the model object, so an engine
may live in another process (vLLM's workers). `hf` is a Hugging Face model in this process,
souped in place (soce.engine.hf); `vllm` is one vLLM engine per process, each soup pushed into
its workers (soce.engine.vllm). ENGINES names them for sweep.engine."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

from soce.registry import Registry

ENGINES: Registry[type] = Registry("sweep.engine")


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

    @classmethod
    def for_soup(cls, experts, placement) -> "Engine":
        """An engine holding `experts` (pool candidates), ready for `apply`, placed as
        `placement` (soce.sweep.Placement) says."""
        raise NotImplementedError

    @classmethod
    def for_candidate(cls, candidate, placement) -> "Engine":
        """An engine holding the candidate's own model, as it is."""
        raise NotImplementedError


@contextmanager
def loading(name: str, where):
    """Loading pool model `name` from `where` (its model or tokenizer by transformers): what
    transformers cannot read is one error line naming both."""
    import pickle

    from soce.errors import CheckpointError

    try:
        yield
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"pool model {name!r}: cannot load {where} ({type(err).__name__}: {err})") from None


def load_tokenizer(name: str, where):
    """Model `name`'s tokenizer, from its directory `where`."""
    from transformers import AutoTokenizer

    with loading(name, where):
        return AutoTokenizer.from_pretrained(where)


def eos_ids(generation_eos, tokenizer) -> tuple[int, ...]:
    """The token ids that end a completion: the model's generation config's and its tokenizer's."""
    return tuple(sorted(set(_ids(generation_eos)) | set(_ids(tokenizer.eos_token_id))))


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, int) else tuple(value)


def register_engines() -> None:
    """Import the engines' modules, each registering itself (vllm's imports vLLM only when used)."""
    import soce.engine.hf  # noqa: F401
    import soce.engine.vllm  # noqa: F401
