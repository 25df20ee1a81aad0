"""How many torch threads soce's CPU paths should use: each path timed with 1 thread, with all
cores' threads, and with soce's own choice (soce/threads.py), on an idle machine and beside a
busy loop on every core (a shared machine).

    .venv/bin/python scripts/bench_threads.py            # prints one line per path, threads and load

The paths: the disk merge (3 experts, 1 MiB chunks), the in-place soup of a sweep point, a
training step of the embedded family, and the greedy evaluation of one of its models. Each
figure is the median of --runs; the busy loops are plain Python processes, one per core.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_merge import llama_config, llama_tensors, write_expert  # noqa: E402


class Args:
    hidden, intermediate, vocab, kv_heads, layers = 1024, 2816, 32000, 4, 4


def timed(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paths(work: Path):
    """name -> a function running the path once."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from soce.toy_fc.direct import ToyFcDirect
    from soce.merge import InPlaceSoup, merge_to_disk
    from soce.zoo.family import FAMILIES, Trainer

    config = llama_config(Args)
    shapes = llama_tensors(Args.layers, Args.hidden, Args.intermediate, Args.vocab, Args.kv_heads, 128)
    experts = [work / f"expert{i}" for i in range(3)]
    for i, e in enumerate(experts):
        write_expert(e, config, shapes, seed=i, shard_bytes=300 * 10**6)
    size = sum(f.stat().st_size for f in experts[0].glob("*.safetensors"))

    def merge():
        shutil.rmtree(work / "soup", ignore_errors=True)
        merge_to_disk(experts, [0.5, 0.2, 0.3], work / "soup", progress=False)

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config)).to(torch.bfloat16)
    model.to_empty(device="cpu")
    soup = InPlaceSoup(model, experts)

    trainer = Trainer(FAMILIES["default"])
    tiny = trainer.new_model()
    bar = type("Bar", (), {"update": lambda *a: None, "set_postfix": lambda *a, **k: None})()
    evaluator = ToyFcDirect(seed=0, per_category=16, batch_size=32)
    tiny.eval()
    return {
        f"merge to disk (3 x {size / 2**20:.0f} MiB bf16)": merge,
        "in-place soup (one sweep point, same experts)": lambda: soup.apply([0.5, 0.2, 0.3]),
        "family training (5 steps, batch 64, hidden 128)": lambda: trainer.train(tiny, {"simple": 1.0}, 5, 1e-3, 0, bar, trainer.by_category),
        "evaluation (96 examples, greedy, hidden 128)": lambda: evaluate(evaluator, tiny, trainer.tokenizer),
    }


def evaluate(evaluator, model, tokenizer) -> None:
    """As soce's sweep and candidate scoring call an evaluator: inside compute_threads."""
    from soce.threads import compute_threads

    from soce.engine.hf import HfEngine

    with compute_threads(model.device):
        evaluator.evaluate(HfEngine(model, tokenizer), "dev")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix="soce-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    todo = paths(work)
    choices = [1, cores, "soce"] if cores > 1 else [1, "soce"]
    print(f"{cores} cpus; load average before: {os.getloadavg()[0]:.2f}; median of {args.runs} runs each")
    results = {}
    for load in ("idle", "loaded"):
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)] if load == "loaded" else []
        try:
            for name, fn in todo.items():
                for n in choices:
                    if n == "soce":  # soce chooses (soce.threads), from torch's default
                        os.environ.pop("OMP_NUM_THREADS", None)
                        torch.set_num_threads(cores)
                    else:  # forced: soce.threads leaves a set OMP_NUM_THREADS alone
                        os.environ["OMP_NUM_THREADS"] = str(n)
                        torch.set_num_threads(n)
                    fn()  # warm
                    results[name, n, load] = timed(fn, args.runs)
                    print(f"{name:50s} threads {n!s:4s}  {load:6s} {results[name, n, load]:7.3f} s", flush=True)
        finally:
            for p in busy:
                p.kill()
    print(f"\nper path, time / time with {cores} threads (below 1: faster)")
    for name in todo:
        ratios = "  ".join(f"{load}: 1 thread {results[name, 1, load] / results[name, cores, load]:.2f}x, "
                           f"soce {results[name, 'soce', load] / results[name, cores, load]:.2f}x" for load in ("idle", "loaded"))
        print(f"{name:50s} {ratios}")
    if args.workdir is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
