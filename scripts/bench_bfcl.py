"""BFCL through soce's in-process path: examples per second per leaderboard column, and what one
full BFCL v3 evaluation (every entry of the 14 columns, 4,441) would take at those rates.

The model is a stand-in of the micro family's shape (Llama, hidden 128, 2 layers, random weights,
a 2,048-token byte-level BPE tokenizer with Llama 3's special tokens), prompted by the xLAM
handler. Random weights never stop on their own: every completion runs to --max-new-tokens
(default 64, about the length of a real function call), so the figures are per generated call
of that length. Multi-turn entries make one completion per turn (the random model's output
never decodes to calls, so no step follows).

    python scripts/bench_bfcl.py [--limit 4] [--max-new-tokens 64] [--batch-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="entries of each BFCL test file timed (dev half)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--hidden", type=int, default=128, help="the model's width (128: the micro family's)")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from soce.engine.hf import HfEngine
    from soce import bfcl
    from soce.bfcl.standin import build_standin

    with tempfile.TemporaryDirectory() as tmp:
        path = build_standin(Path(tmp) / "standin", hidden=args.hidden, layers=args.layers)
        model = AutoModelForCausalLM.from_pretrained(path).to(args.device).eval()
        engine = HfEngine(model, AutoTokenizer.from_pretrained(path))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama hidden {args.hidden}, {args.layers} layers, {n_params / 1e6:.1f} M parameters, on {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else f", {args.threads} threads")
          + f"; load {os.getloadavg()[0]:.2f}")
    print(f"each completion: {args.max_new_tokens} new tokens; batch size {args.batch_size}; {args.limit} entries per test file\n")
    full = {c: sum(len(v) for f, v in bfcl.load_entries([c]).items()) for c in bfcl.CATEGORIES}
    print(f"{'column':34s} {'entries':>7s} {'timed':>5s} {'s':>7s} {'entries/s':>9s} {'full eval s':>11s}")
    total = 0.0
    for column in bfcl.CATEGORIES:
        evaluator = bfcl.BfclEvaluator([column], handler="Salesforce/Llama-xLAM-2-8b-fc-r", limit=args.limit,
                                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        n = len(evaluator.examples["dev"])
        runs = []
        for _ in range(2):
            started = time.perf_counter()
            evaluator.evaluate(engine, "dev")
            runs.append(time.perf_counter() - started)
        seconds = statistics.median(runs)
        rate = n / seconds
        total += full[column] / rate
        print(f"{column:34s} {full[column]:7d} {n:5d} {seconds:7.2f} {rate:9.2f} {full[column] / rate:11.0f}")
    print(f"\none full BFCL v3 evaluation ({sum(full.values())} entries) at these rates: {total / 60:.1f} min")


if __name__ == "__main__":
    main()
