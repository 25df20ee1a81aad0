"""The uniform soup of a whole pool: streamed from disk (what the soup stage does since issue
15) against the pool held in memory (what it did before), at a test size. Each mode runs in a
fresh spawned process; its memory is the peak RSS above the live model's (ru_maxrss, read
before and after the soup), its time the soup alone.

    .venv/bin/python scripts/bench_uniform_soup.py        # 4 candidates of 0.43 GB (bfloat16)
"""

from __future__ import annotations

import argparse
import os
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_merge import llama_config, llama_tensors, write_expert  # noqa: E402


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def soup_once(pool: list[str], stream: bool) -> tuple[float, int, list]:
    """In this (fresh) process: the live model loaded, then the uniform soup of `pool` into it.
    Returns (seconds, bytes of peak RSS above the loaded model, a checksum of the soup)."""
    import torch
    from transformers import AutoModelForCausalLM

    from soce.merge import InPlaceSoup

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(pool[0])
    with torch.no_grad():  # every page of the live model written once: transformers may map the file lazily
        for p in model.parameters():
            p.mul_(1)
    before = peak_rss()
    start = time.perf_counter()
    soup = InPlaceSoup(model, pool, stream=stream)
    soup.apply([1 / len(pool)] * len(pool))
    elapsed = time.perf_counter() - start
    checksum = [float(p.detach().float().sum()) for p in list(model.parameters())[:3]]
    return elapsed, peak_rss() - before, checksum, str(next(model.parameters()).dtype)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("outputs/bench_uniform_soup"))
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import torch

    config = llama_config(args)
    shapes = llama_tensors(args.layers, args.hidden, args.intermediate, args.vocab, args.kv_heads, 128)
    nbytes = sum(torch.Size(s).numel() for s in shapes.values()) * 2
    pool = []
    for i in range(args.candidates):
        path = args.workdir / f"candidate{i}-{args.layers}x{args.hidden}"
        write_expert(path, config, shapes, seed=i, shard_bytes=1 << 30)
        pool.append(str(path))
    print(f"pool: {args.candidates} candidates of {nbytes / 1e9:.2f} GB (bfloat16); load average at start {os.getloadavg()[0]:.2f}")
    results = {}
    for stream in (True, False):
        runs = []
        for _ in range(args.runs):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
                runs.append(ex.submit(soup_once, pool, stream).result())
        results[stream] = runs
        name = "streamed" if stream else "held in memory"
        print(f"{name:>15}: {statistics.median(r[0] for r in runs):.2f} s, peak memory above the live model "
              f"{statistics.median(r[1] for r in runs) / 1e9:.2f} GB (median of {args.runs})")
    assert results[True][0][2] == results[False][0][2], "the two soups differ"
    ratio = statistics.median(r[1] for r in results[True]) / statistics.median(r[1] for r in results[False])
    print(f"live model: {results[True][0][3]}")
    print(f"streamed / held: memory {ratio:.3f}x, time "
          f"{statistics.median(r[0] for r in results[True]) / statistics.median(r[0] for r in results[False]):.2f}x; "
          f"one model copy is {nbytes / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
