"""The hf engine's in-place sweep on one GPU, in one short run: a ~1B Llama-shaped stand-in
(three experts of random bfloat16 weights, the BFCL stand-in's tokenizer; built here, nothing
downloaded), a 10-point sweep of soups written into the live model in place, and per point:
the push's time against the GPU's memory bandwidth (bytes read and written by the soup), and
greedy tokens/s; then the last soup against the same soup written to disk by soce's merge and
loaded fresh, tensor for tensor. Prints one line per figure and `gpu check: PASSED` or FAILED.

Made for a lent GPU machine (PyTorch, transformers and accelerate there; no network): carry the
repository and run

    python scripts/gpu_check.py                          # cuda, ~1B (2048 wide, 16 layers)
    python scripts/gpu_check.py --device cpu --hidden 128 --layers 2 --points 3   # the tests' run

Everything it writes goes to --workdir (default: a temporary directory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu_soup import bandwidth, sync  # noqa: E402


def build_experts(out: Path, hidden: int, layers: int, n: int = 3) -> list[Path]:
    from soce.bfcl.standin import build_standin, build_tokenizer

    tokenizer = build_tokenizer()
    paths = [out / f"expert-{seed}" for seed in range(n)]
    for seed, path in enumerate(paths):
        if not (path / "config.json").exists():
            build_standin(path, seed=seed, hidden=hidden, layers=layers, tokenizer=tokenizer, heads=max(1, hidden // 64),
                          kv_heads=max(1, hidden // 256), intermediate=4 * hidden, dtype="bfloat16")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--points", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: --device cpu runs the same check on the CPU")
    torch.set_num_threads(min(os.cpu_count() or 1, 16))

    from soce.engine.hf import HfEngine
    from soce.merge import merge_to_disk
    from soce.pool import Candidate
    from soce.sweep import Placement

    work = args.workdir or Path(tempfile.mkdtemp(prefix="soce-gpu-check-"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {name}; torch {torch.__version__}")
    start = time.perf_counter()
    experts = build_experts(work, args.hidden, args.layers)
    print(f"built 3 experts ({args.hidden} wide, {args.layers} layers) in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    engine = HfEngine.for_soup([Candidate(p.name, path=str(p)) for p in experts],
                               Placement(device_map={"": str(device)}, dtype="bfloat16"))
    params = sum(p.numel() for p in engine.model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
    print(f"loaded: {count} parameters ({nbytes / 1e9:.2f} GB in bfloat16), experts resident on {device}, "
          f"in {time.perf_counter() - start:.1f} s")
    peak = bandwidth(device, 1 << 28)
    vocab = len(engine.tokenizer)
    prompts = [[3 + (7 * i + j) % (vocab - 3) for j in range(48 + i % 16)] for i in range(args.prompts)]
    engine.generate(prompts[:2], [4, 4], [])  # warm-up
    pushes, rates = [], []
    points = [(0.1 + 0.8 * k / max(1, args.points - 1), *([(0.9 - 0.8 * k / max(1, args.points - 1)) / 2] * 2))
              for k in range(args.points)]
    for weights in points:
        sync(device)
        begin = time.perf_counter()
        engine.apply(weights)
        sync(device)
        pushes.append(time.perf_counter() - begin)
        begin = time.perf_counter()
        out = engine.generate(prompts, [args.max_tokens] * len(prompts), [])
        sync(device)
        rates.append(sum(map(len, out)) / (time.perf_counter() - begin))
    push = statistics.median(pushes)
    moved = 4 * nbytes  # each soup reads 3 experts and writes the live model (bfloat16), at least
    print(f"sweep: {args.points} points; push median {push * 1e3:.1f} ms ({push / (nbytes / 1e9) * 1e3:.1f} ms per GB of "
          f"model), {moved / push / 1e9:.0f} GB/s moved against a copy bandwidth of {peak / 1e9:.0f} GB/s "
          f"({moved / push / peak:.0%})")
    print(f"generation: median {statistics.median(rates):.0f} tokens/s ({args.prompts} prompts, {args.max_tokens} tokens each)")
    soup = merge_to_disk([str(p) for p in experts], list(points[-1]), work / "soup", progress=False, dtype="bfloat16")
    from safetensors.torch import load_file

    written = {}
    for f in sorted(Path(soup).glob("*.safetensors")):
        written.update(load_file(f))
    live = {k: v.detach().to("cpu") for k, v in engine.model.state_dict().items()}
    differ = [k for k, v in written.items() if k in live and not torch.equal(live[k], v)]
    missing = [k for k in written if k not in live]
    print(f"the last soup against the merge written to disk: {len(written) - len(differ) - len(missing)} of {len(written)} "
          f"tensors equal{'' if not differ else f'; differ: {differ[:5]}'}{'' if not missing else f'; missing: {missing[:5]}'}")
    print("gpu check: PASSED" if not differ and not missing else "gpu check: FAILED")
    sys.exit(1 if differ or missing else 0)


if __name__ == "__main__":
    main()
