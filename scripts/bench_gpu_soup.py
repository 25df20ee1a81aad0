"""The sweep's in-place soup on a GPU at a realistic size: time per point against the device's
memory bandwidth (resident experts), and against host-to-device bandwidth (sweep.offload).

    .venv/bin/python scripts/bench_gpu_soup.py                       # 3 experts, Llama-3-8B shapes
    .venv/bin/python scripts/bench_gpu_soup.py --layers 2 --device cpu   # a quick try without a GPU

Experts are random bfloat16 Llama checkpoints written to --workdir (built there from the
config; no hub). Each figure is the median over --points weight points.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_merge import llama_config, llama_tensors, write_expert  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_points(soup, device: torch.device, points: int) -> float:
    grid = [[0.1 * i, 0.1 * j, 1 - 0.1 * (i + j)] for i in range(1, 9) for j in range(1, 9) if i + j < 10][: points + 1]
    times = []
    for w in grid:
        sync(device)
        start = time.perf_counter()
        soup.apply(w)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first point warms up


def bandwidth(device: torch.device, nbytes: int = 1 << 30, pinned_source: bool = False) -> float:
    """Bytes per second: a device-to-device copy (read + write), or host (pinned) to device."""
    src = torch.ones(nbytes, dtype=torch.uint8, pin_memory=pinned_source) if pinned_source else torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    times = []
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src, non_blocking=pinned_source)
        sync(device)
        times.append(time.perf_counter() - start)
    return (1 if pinned_source else 2) * nbytes / statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("outputs/bench_gpu_soup"))
    ap.add_argument("--layers", type=int, default=32)  # Llama-3-8B
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-offload", action="store_true", help="skip the offloaded (pinned CPU) mode")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no GPU here: run it where there is one, or try it with --device cpu")

    from transformers import LlamaConfig, LlamaForCausalLM

    from soce.merge import InPlaceSoup

    config = llama_config(args)
    shapes = llama_tensors(args.layers, args.hidden, args.intermediate, args.vocab, args.kv_heads, 128)
    experts = []
    for i in range(3):
        path = args.workdir / f"expert{i}-{args.layers}x{args.hidden}"
        write_expert(path, config, shapes, seed=i, shard_bytes=2 << 30)
        experts.append(path)
    model_bytes = sum(torch.Size(s).numel() for s in shapes.values()) * 2
    print(f"model: {args.layers} layers, hidden {args.hidden}: {model_bytes / 2**30:.2f} GiB in bf16; 3 experts")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")

    for offload in (False, True):
        if offload and (args.no_offload or device.type != "cuda"):
            continue
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**config)).to(torch.bfloat16)
        model.to_empty(device=device)
        soup = InPlaceSoup(model, experts, offload=offload)
        per_point = timed_points(soup, device, args.points)
        moved = soup.nbytes + model_bytes  # each expert read once, the model written once
        if offload:
            limit = bandwidth(device, pinned_source=True)
            print(f"offload: {per_point * 1e3:.0f} ms per point; host-to-device {soup.nbytes / per_point / 1e9:.1f} GB/s "
                  f"of a measured {limit / 1e9:.1f} GB/s pinned copy = {soup.nbytes / per_point / limit:.2f}x the PCIe limit")
        else:
            limit = bandwidth(device)
            print(f"resident: {per_point * 1e3:.1f} ms per point; {moved / per_point / 1e9:.0f} GB/s moved of a measured "
                  f"{limit / 1e9:.0f} GB/s device copy = {moved / per_point / limit:.2f}x the memory-bandwidth limit")
            if device.type == "cuda":
                print(f"peak device memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
        del soup, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


if __name__ == "__main__":
    main()
