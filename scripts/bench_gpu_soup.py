"""The sweep's in-place soup on a GPU at a realistic size: time per point against the device's
memory bandwidth (resident experts), and against host-to-device bandwidth (sweep.offload).

    .venv/bin/python scripts/bench_gpu_soup.py                       # 3 experts, Llama-3-8B shapes
    .venv/bin/python scripts/bench_gpu_soup.py --dispatch            # the live model over every GPU
    .venv/bin/python scripts/bench_gpu_soup.py --layers 2 --device cpu   # a quick try without a GPU

--dispatch splits the live model over all visible GPUs with soce's planner (the device map the
sweep uses when a model does not fit one GPU) and soups every GPU's layers on that GPU; its
limit is the slowest GPU's bytes over its own bandwidth. Without a GPU, --dispatch --device cpu
runs the same code over two device-map entries that are both the CPU (a smoke run, no figure).

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
    ap.add_argument("--dispatch", action="store_true", help="the live model dispatched over every visible GPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no GPU here: run it where there is one, or try it with --device cpu")
    if args.dispatch:
        return dispatched(args, device)

    from transformers import LlamaConfig, LlamaForCausalLM

    from soce.merge import InPlaceSoup

    config = llama_config(args)
    experts, model_bytes = write_experts(args)
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
        per_point = timed_points(soup, [device], args.points)
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


def write_experts(args) -> tuple[list[Path], int]:
    config = llama_config(args)
    shapes = llama_tensors(args.layers, args.hidden, args.intermediate, args.vocab, args.kv_heads, 128)
    experts = []
    for i in range(3):
        path = args.workdir / f"expert{i}-{args.layers}x{args.hidden}"
        write_expert(path, config, shapes, seed=i, shard_bytes=2 << 30)
        experts.append(path)
    return experts, sum(torch.Size(s).numel() for s in shapes.values()) * 2


def dispatched(args, device: torch.device) -> None:
    """The live model split over the GPUs by soce's planner; each GPU soups its own layers."""
    from transformers import AutoModelForCausalLM

    from soce.merge import InPlaceSoup
    from soce.placement.devices import Device, visible_devices
    from soce.placement.memory import model_shape, split_blocks

    experts, model_bytes = write_experts(args)
    gpus = visible_devices() if device.type == "cuda" else [Device("cuda:0", 1 << 40), Device("cuda:1", 1 << 40)]
    if len(gpus) < 2:
        print(f"--dispatch: {len(gpus)} GPU here; a dispatched model needs two or more (the figure stays open)")
    shape = model_shape(experts[0])
    placed = split_blocks(shape, 3, gpus, "device", 32768, None)
    device_map = {b.name: (g.name if device.type == "cuda" else "cpu") for g, blocks in zip(gpus, placed) for b in blocks}
    model = AutoModelForCausalLM.from_pretrained(experts[0], device_map=device_map, dtype=torch.bfloat16)
    soup = InPlaceSoup(model, experts)
    print(f"model: {args.layers} layers, hidden {args.hidden}: {model_bytes / 2**30:.2f} GiB in bf16, 3 experts, "
          f"dispatched over {len(gpus)} devices: " + ", ".join(f"{g.name} {len(b)} blocks" for g, b in zip(gpus, placed)))
    if device.type != "cuda":
        soup.apply([0.5, 0.2, 0.3])
        print("smoke run on the CPU: the dispatched path ran; no GPU figure from a CPU")
        return
    per_point = timed_points(soup, [torch.device(g.name) for g in gpus], args.points)
    # bytes each GPU moves per soup: its experts' tensors read, its share of the model written
    moved = {}
    for p, tensors in soup.held.items():
        moved[p.device] = moved.get(p.device, 0) + sum(t.numel() * t.element_size() for t in tensors) + p.numel() * p.element_size()
    limit = max(n / bandwidth(d) for d, n in moved.items())
    print(f"dispatched: {per_point * 1e3:.1f} ms per point; the slowest GPU's bytes over its measured copy bandwidth: "
          f"{limit * 1e3:.1f} ms = {limit / per_point:.2f}x of the time (1.00x: every GPU at its bandwidth, in parallel)")
    print("devices: " + ", ".join(torch.cuda.get_device_name(d) for d in moved))


def timed_points(soup, devices: list[torch.device], points: int) -> float:
    """Median seconds per soup over `points` weight points (the first warms up), every device synchronised."""
    grid = [[0.1 * i, 0.1 * j, 1 - 0.1 * (i + j)] for i in range(1, 9) for j in range(1, 9) if i + j < 10][: points + 1]
    times = []
    for w in grid:
        for d in devices:
            sync(d)
        start = time.perf_counter()
        soup.apply(w)
        for d in devices:
            sync(d)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


if __name__ == "__main__":
    main()
