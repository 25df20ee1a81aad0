"""The `hf` engine: a Hugging Face model in this process; a soup is written into its weights in
place (soce.merge.InPlaceSoup) from experts it holds (on its devices, in pinned host memory, or
read from disk at every soup)."""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from soce.engine import ENGINES, Engine, eos_ids, load_tokenizer, loading
from soce.errors import CheckpointError
from soce.pool import Candidate, model_dir

log = logging.getLogger(__name__)


@ENGINES.register("hf")
class HfEngine(Engine):
    """`model` and `tokenizer` in this process; `soup`: the in-place soup of its experts (None: a
    model evaluated as it is)."""

    def __init__(self, model, tokenizer, soup=None) -> None:
        self.model, self.tokenizer, self.soup = model, tokenizer, soup
        self.name = getattr(model, "name_or_path", "model")
        self.context_length = _context_length(model, tokenizer)
        self.eos_ids = eos_ids(model.generation_config.eos_token_id, tokenizer)
        self._harness = None
        self.applied: tuple[float, ...] | None = None  # the weights of the soup in the model now

    @classmethod
    def load(cls, candidate: Candidate, device_map: dict[str, str] | None = None, dtype: str | None = None,
             experts: Sequence[str] = (), offload: bool = False, stream: bool = False) -> "HfEngine":
        """The candidate's model (`device_map`: where each module goes; `dtype`: the model's,
        default the checkpoint's), with the in-place soup of the `experts` (model directories) where given."""
        model, tokenizer = load_model(candidate, device_map, dtype)
        soup = None
        if experts:
            from soce.merge import InPlaceSoup

            soup = InPlaceSoup(model, list(experts), offload=offload, stream=stream,
                               dtype=getattr(torch, dtype) if dtype else None)
        return cls(model, tokenizer, soup)

    @classmethod
    def for_soup(cls, experts: Sequence[Candidate], placement) -> "HfEngine":
        """The first expert's model, souped in place from all of them."""
        return cls.load(experts[0], placement.device_map, placement.dtype, [model_dir(e) for e in experts],
                        offload=placement.offload, stream=placement.stream)

    @classmethod
    def for_candidate(cls, candidate: Candidate, placement) -> "HfEngine":
        return cls.load(candidate, placement.device_map)

    @property
    def device(self):
        return self.model.device

    def apply(self, weights: Sequence[float]) -> None:
        if self.soup is None:
            raise ValueError(f"{self.name} holds no experts: it cannot be souped")
        if self.applied != tuple(weights):  # the same soup on another split is in place already
            self.soup.apply(weights)
            self.applied = tuple(weights)

    @torch.no_grad()
    def generate(self, prompts, max_tokens, stop):
        """One batch, padded on the left to its longest prompt."""
        tok, model = self.tokenizer, self.model
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(map(len, prompts))
        input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        stops = sorted(set(stop))
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(max_tokens), do_sample=False,
                             pad_token_id=pad, eos_token_id=stops or None)
        continuations = []
        for row, limit in zip(out[:, width:].tolist(), max_tokens):
            row = row[:limit]
            continuations.append(row[:next((i for i, t in enumerate(row) if t in stops), len(row))])
        return continuations

    @torch.no_grad()
    def loglikelihood(self, requests):
        """One request at a time: the logits of context + continuation (the last token left out)."""
        out = []
        for context, continuation in requests:
            ids = torch.tensor([list(context) + list(continuation)], device=self.model.device)
            logprobs = torch.log_softmax(self.model(ids[:, :-1]).logits.float(), dim=-1)[0, len(context) - 1:]
            target = torch.tensor(list(continuation), device=logprobs.device)
            out.append((float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())))
        return out

    def harness_model(self, *, batch_size: int, max_length: int, model_args: dict):
        """lm-eval's HFLM over this model, made once per setting: the weights change in place
        between evaluations. Its request bars are soce's (evaluate/lm_eval_backend.py)."""
        key = (batch_size, max_length, repr(sorted(model_args.items())))
        if self._harness is None or self._harness[0] != key:
            from lm_eval.models.huggingface import HFLM

            self._harness = key, HFLM(pretrained=self.model, tokenizer=self.tokenizer, batch_size=batch_size,
                                      max_length=max_length, **model_args)
        return self._harness[1]


def load_model(candidate: Candidate, device_map: dict[str, str] | None = None, dtype: str | None = None):
    """The candidate's model and tokenizer. Its weights are checked first as the merge reads them
    (safetensors only, inside its directory, headers valid): soce and transformers then load the
    same files, and a pickle is never unpickled. `device_map`: where each module goes (a memory
    plan's; default: the CPU); `dtype`: the model's (default: the checkpoint's)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from soce.merge import open_checkpoint

    hf_logging.disable_progress_bar()  # a bar per model loaded: soce prints what it loads
    where = model_dir(candidate)
    try:
        open_checkpoint(where)
    except CheckpointError as err:
        raise CheckpointError(f"pool model {candidate.name!r}: {err}") from None
    with loading(candidate.name, where):
        model = AutoModelForCausalLM.from_pretrained(where, device_map=device_map, **({"dtype": dtype} if dtype else {}))
    check_finite(model, f"pool model {candidate.name!r} ({where})")
    return model, load_tokenizer(candidate.name, where)


def check_finite(model, where: str) -> None:
    """Refuse a model with NaN or Inf weights: its outputs are garbage, its scores 0 everywhere,
    and they would enter the correlations and the selection as if it were a real model."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not torch.isfinite(p).all():
                raise CheckpointError(f"{where}: tensor {name!r} holds NaN or Inf values: fix the checkpoint, or leave the "
                                      "model out of the pool")


def _context_length(model, tokenizer) -> int:
    n = getattr(model.config, "max_position_embeddings", None)
    return int(n) if n else int(tokenizer.model_max_length)
