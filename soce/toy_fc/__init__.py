"""toy_fc, the embedded benchmark: function calling in the style of BFCL, generated from a seed
(fc), its tokenizer, and its evaluators (direct: batched generation and the AST scorer;
harness: the same through lm-evaluation-harness)."""
