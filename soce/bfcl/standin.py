"""Stand-ins for real chat models on BFCL: tiny Llamas with random weights and a Llama-3-style
tokenizer (its special tokens and chat template), so that bfcl-eval's handlers format, tokenize
and decode for them exactly as for the real models. They run BFCL end to end on a CPU in
seconds; their scores mean nothing (random weights), their code paths everything.

    soce stage=zoo is not needed: `python -m soce.bfcl.standin OUT_DIR NAME...` builds them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|eom_id|>", "<|python_tag|>", "<|finetune_right_pad_id|>"]
# Llama 3.1's chat template, short: system, user, assistant and tool ("ipython") turns
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{ '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + (message['content'] | string) | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _corpus() -> Iterable[str]:
    """Text like BFCL's prompts: bfcl-eval's own test files, when installed; otherwise JSON and English."""
    try:
        from soce.bfcl.data import import_bfcl

        import_bfcl()
        from bfcl_eval.constants.eval_config import PROMPT_PATH

        for path in sorted(PROMPT_PATH.glob("BFCL_v4_*.json")):
            yield path.read_text(encoding="utf-8")[:400_000]
    except Exception:  # noqa: BLE001 - any text will do; the models are random
        yield json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}) * 1000


def build_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on `_corpus()` (deterministic), with Llama 3's special
    tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_standin(out: str | Path, *, seed: int = 0, hidden: int = 128, layers: int = 2, tokenizer=None,
                  chat_template: bool = True, heads: int = 4, kv_heads: int | None = None, intermediate: int | None = None,
                  dtype: str = "float32") -> Path:
    """A tiny Llama (by default the micro family's shape: 4 heads, an intermediate of twice the
    hidden size) with random weights from `seed`, saved in `dtype` with its tokenizer in `out`
    (safetensors). Larger stand-ins for the engine benchmarks give their heads, key-value heads
    (grouped-query attention) and intermediate size."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    out = Path(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
                         max_position_embeddings=32768, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                         torch_dtype=dtype)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end_of_text|>")])
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not chat_template:  # a tokenizer without one, as a base model's
        (out / "chat_template.jinja").unlink(missing_ok=True)
        config_file = out / "tokenizer_config.json"
        settings = json.loads(config_file.read_text())
        settings.pop("chat_template", None)
        config_file.write_text(json.dumps(settings, indent=2))
    return out


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m soce.bfcl.standin OUT_DIR NAME [NAME ...]  (one stand-in model per name, seeds 0, 1, ...)")
    tokenizer = build_tokenizer()
    for seed, name in enumerate(argv[1:]):
        print(build_standin(Path(argv[0]) / name, seed=seed, tokenizer=tokenizer))


if __name__ == "__main__":
    main(sys.argv[1:])
