"""A word-level tokenizer for toy_fc, built with the `tokenizers` library.

Quoted strings ('paris', "city"), words, numbers and single punctuation marks are tokens, so
a decoded output ("[ f ( a = 'x' ) ]") parses exactly as the model wrote it.
"""

from __future__ import annotations

import functools

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from soce.toy_fc import fc

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
PATTERN = r"'[^'\s]*'|\"[^\"\s]*\"|\w+|[^\w\s]"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(PATTERN), "isolated")])


@functools.cache
def vocabulary(level: int = 1) -> tuple[str, ...]:
    """Every token toy_fc can produce: from generated examples and every value in both quotings
    (made once per process: a third of a second)."""
    pre = _pre_tokenizer()
    tokens: set[str] = set()
    texts = [e.prompt + " " + e.answer for e in fc.generate_examples(seed=12345, per_category=400, side="train", level=level)]
    texts.append(fc.level_of(level).words)
    for name, (params, _) in fc.level_of(level).functions.items():
        texts.append(fc.signature(name, level))
        for p, values in params.items():
            for v in values:
                texts.append(f"{name} {p} {v!r} {v} {fc.json.dumps(v)} {fc.json.dumps(p)} {fc.json.dumps(name)}")
    for text in texts:
        tokens.update(piece for piece, _ in pre.pre_tokenize_str(text))
    return (*SPECIALS, *sorted(tokens))


def build_tokenizer(level: int = 1) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(vocabulary(level))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = _pre_tokenizer()
    if level > 1:  # tokens joined as written: 12 . 5 decodes as 12.5
        from tokenizers import decoders
        tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])  # as Llama's
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>", padding_side="left",
    )
