"""Tiny real Llama checkpoints for tests: LlamaForCausalLM saved by transformers, several shards."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 128


def tiny_config(tie: bool = False, vocab_size: int = VOCAB, hidden: int = 32) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def build_tiny_llama(path: Path, seed: int, dtype: torch.dtype = torch.float32, tie: bool = False,
                     shard_size: str = "40KB", **config) -> Path:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tie, **config)).to(dtype)
    model.save_pretrained(path, max_shard_size=shard_size)
    tiny_tokenizer().save_pretrained(path)
    return path
