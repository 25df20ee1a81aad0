"""Benchmark the merge engine: soce against mergekit-yaml, the physical limit, a float64
reference, and memory bandwidth. Prints one line per figure.

    make bench-deps && .venv/bin/python scripts/bench_merge.py            # 3 experts of ~1 GiB
    .venv/bin/python scripts/bench_merge.py --layers 1 --hidden 256 --runs 1   # a quick try

Generated Llama-shaped checkpoints (random bfloat16 weights, several shards each) are cached
in --workdir. soce and mergekit run as their command-line tools, alternately, with the same
weights, dtype and shard size; each figure is the median over --runs. The page cache is warm
for every run alike (the inputs fit in memory and are read once before timing), and each
timed run starts after a sync, with no dirty pages left by the run before. Then both tools
run again beside a busy loop on every core (a shared machine): --loaded-runs each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

WEIGHTS = [0.5, 0.2, 0.3]


def llama_tensors(layers: int, hidden: int, intermediate: int, vocab: int, kv_heads: int, head_dim: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        }
    return shapes | {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}


def llama_config(args) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
        "intermediate_size": args.intermediate, "num_hidden_layers": args.layers, "num_attention_heads": args.hidden // 128,
        "num_key_value_heads": args.kv_heads, "head_dim": 128, "vocab_size": args.vocab, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
    }


def write_expert(path: Path, config: dict, shapes: dict, seed: int, shard_bytes: int) -> None:
    """A random bfloat16 checkpoint, sharded like save_pretrained does it."""
    if (path / "config.json").exists():
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    groups, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if groups[-1] and size + nbytes > shard_bytes:
            groups, size = groups + [[]], 0
        groups[-1].append(name)
        size += nbytes
    weight_map = {}
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: (torch.randn(shapes[n], generator=gen) * 0.02).to(torch.bfloat16) for n in names}
        save_file(tensors, tmp / file, metadata={"format": "pt"})
        weight_map |= {n: file for n in names}
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp / "config.json").write_text(json.dumps(config))
    tmp.rename(path)


def run_timed(cmd: list[str], cwd: Path) -> tuple[float, int]:
    """Wall time and peak resident memory (bytes) of a command."""
    os.sync()  # every run starts with no dirty pages from the run before
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{err[-3000:]}")
    return elapsed, usage.ru_maxrss * 1024


@contextlib.contextmanager
def busy_cores():
    """A busy loop on every core, for the block's duration."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        yield len(loops)
    finally:
        for p in loops:
            p.kill()
            p.wait()


def physical_limit(inputs: list[Path], out_bytes: int, out_file: Path) -> float:
    """Read every input file once and write out_bytes once: the floor for any merge.

    1 MiB buffers: the fastest size measured here (64 MiB copies miss the CPU's cache).
    """
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    os.sync()
    start = time.perf_counter()
    for f in inputs:
        with f.open("rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    with out_file.open("wb") as fh:
        left = out_bytes
        while left:
            n = min(left, len(buf))
            fh.write(view[:n])
            left -= n
    elapsed = time.perf_counter() - start
    out_file.unlink()
    return elapsed


def merge_in_process(experts: list[Path], out: Path, shard_mb: int) -> float:
    """soce's merge without the command line's start-up: the part that grows with the models."""
    from soce.merge import merge_to_disk

    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    start = time.perf_counter()
    merge_to_disk(experts, WEIGHTS, out, shard_size=f"{shard_mb}MB", progress=False)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return elapsed


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(torch.finfo(torch.bfloat16).tiny))) - 7)


def exactness(experts: list[Path], soce_out: Path, mergekit_out: Path) -> dict:
    """Error of soce against a float64 reference (in bf16 units in the last place), and soce vs mergekit."""
    def handles(path):
        files = {f.name: safe_open(f, "pt") for f in path.glob("*.safetensors")}
        return {name: file for file, h in files.items() for name in h.keys()}, files

    ins = [handles(e) for e in experts]
    soup_index, soup_files = handles(soce_out)
    mk_index, mk_files = handles(mergekit_out)
    over_one, over_bound, total, mk_max, mk_differ = 0, 0, 0, 0.0, 0
    for name in soup_index:
        terms = [files[index[name]].get_tensor(name) for index, files in ins]
        reference = sum(w * t.double() for w, t in zip(WEIGHTS, terms))
        soup = soup_files[soup_index[name]].get_tensor(name)
        error = (soup.double() - reference).abs()
        over_one += int((error > bf16_ulp(reference)).sum())
        # float32 accumulation adds a few float32 roundings of the terms' magnitude (visible only where they cancel)
        accumulation = 4 * torch.finfo(torch.float32).eps * sum(w * t.double().abs() for w, t in zip(WEIGHTS, terms))
        over_bound += int((error > bf16_ulp(reference) + accumulation).sum())
        total += soup.numel()
        mk = mk_files[mk_index[name]].get_tensor(name)
        diff = (mk.double() - soup.double()).abs()
        mk_max = max(mk_max, diff.max().item())
        mk_differ += int((diff > 0).sum())
    return {"over_bound": over_bound, "over_one": over_one, "total": total, "mk_max": mk_max, "mk_differ": mk_differ}


def in_place(experts: list[Path], config: dict, points: int) -> tuple[float, int]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from soce.merge import InPlaceSoup

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config)).to(torch.bfloat16)
    model.to_empty(device="cpu")
    soup = InPlaceSoup(model, experts)
    grid = [[0.1 * i, 0.1 * j, 1 - 0.1 * (i + j)] for i in range(1, 9) for j in range(1, 9) if i + j < 10][:points]
    times = []
    for w in grid:
        start = time.perf_counter()
        soup.apply(w)
        times.append(time.perf_counter() - start)
    moved = soup.nbytes + sum(p.numel() * p.element_size() for p in model.parameters())
    return statistics.median(times), moved


def copy_bandwidth(nbytes: int, runs: int = 5) -> float:
    a = torch.ones(nbytes, dtype=torch.uint8)
    b = torch.empty_like(a)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times)  # read + write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("outputs/bench_merge"))
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--shard-mb", type=int, default=300, help="input shard size")
    ap.add_argument("--out-shard-mb", type=int, default=500, help="output shard size, the same for both tools")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--points", type=int, default=5, help="weight points for the in-place figure")
    ap.add_argument("--loaded-runs", type=int, default=3, help="runs of each tool beside a busy loop per core (0: none)")
    args = ap.parse_args()

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = llama_config(args)
    shapes = llama_tensors(args.layers, args.hidden, args.intermediate, args.vocab, args.kv_heads, 128)
    model_bytes = sum(math.prod(s) * 2 for s in shapes.values())
    experts = [work / f"expert{i}" for i in range(3)]
    # Written by another process: a child's peak RSS (ru_maxrss) counts the memory of the
    # parent it was forked from, which generating 3 GiB of tensors here would inflate.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for i, e in enumerate(experts):
            pool.submit(write_expert, e, config, shapes, i, args.shard_mb * 10**6).result()
    inputs = sorted(p for e in experts for p in e.glob("*.safetensors"))
    print(f"setup: 3 experts x {model_bytes / 2**30:.2f} GiB bfloat16, {len(inputs) // 3} shards each; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cpus")

    (work / "mergekit.yaml").write_text(
        "merge_method: linear\ndtype: bfloat16\nparameters:\n  normalize: false\nmodels:\n"
        + "".join(f"  - model: {e}\n    parameters:\n      weight: {w}\n" for e, w in zip(experts, WEIGHTS)))
    soce_out, mk_out = work / "soup-soce", work / "soup-mergekit"
    soce_cmd = [sys.executable, "-m", "soce", "stage=merge", "merge.models=[" + ",".join(map(str, experts)) + "]",
                f"merge.weights={WEIGHTS}", f"merge.output={soce_out}", f"merge.shard_size={args.out_shard_mb}MB",
                "tracker=none", f"hydra.run.dir={work / 'run'}"]
    mk_cmd = [str(Path(sys.executable).with_name("mergekit-yaml")), str(work / "mergekit.yaml"), str(mk_out),
              "--out-shard-size", f"{args.out_shard_mb // 2}M", "--no-copy-tokenizer", "--quiet", "--no-write-model-card"]
    if not Path(mk_cmd[0]).exists():
        sys.exit("mergekit-yaml is not installed: run `make bench-deps` first")

    physical_limit(inputs, 0, work / "warm")  # warm the page cache alike for every run
    soce_t, soce_rss, mk_t, mk_rss, floor_t, api_t = [], [], [], [], [], []
    for run in range(args.runs):
        for out in (soce_out, mk_out):
            shutil.rmtree(out, ignore_errors=True)
        t, rss = run_timed(soce_cmd, work)
        soce_t.append(t)
        soce_rss.append(rss)
        t, rss = run_timed(mk_cmd, work)
        mk_t.append(t)
        mk_rss.append(rss)
        floor_t.append(physical_limit(inputs, model_bytes, work / "floor.bin"))
        api_t.append(merge_in_process(experts, work / "soup-api", args.out_shard_mb))
        print(f"run {run + 1}: soce {soce_t[-1]:.2f} s (merge_to_disk in-process {api_t[-1]:.2f} s), "
              f"mergekit {mk_t[-1]:.2f} s, read+write floor {floor_t[-1]:.2f} s")
    soce_med, mk_med, floor_med = map(statistics.median, (soce_t, mk_t, floor_t))
    print(f"wall time, soce (CLI, startup included): {soce_med:.2f} s (median of {args.runs})")
    print(f"wall time, mergekit-yaml: {mk_med:.2f} s (median of {args.runs})")
    print(f"soce / mergekit wall time: {soce_med / mk_med:.3f}x (target <= 0.5x)")
    print(f"peak RSS, soce: {statistics.median(soce_rss) / 2**30:.3f} GiB (target < 1 GiB and below mergekit)")
    print(f"peak RSS, mergekit-yaml: {statistics.median(mk_rss) / 2**30:.3f} GiB")
    print(f"physical floor (read 3 inputs + write 1 output once): {floor_med:.2f} s")
    api_med = statistics.median(api_t)
    print(f"soce / physical floor: {soce_med / floor_med:.2f}x with the CLI's start-up (Python, Hydra, torch); "
          f"merge_to_disk in-process {api_med:.2f} s = {api_med / floor_med:.2f}x (target <= 2x)")

    if args.loaded_runs:
        loaded_soce, loaded_mk = [], []
        with busy_cores() as n:
            for run in range(args.loaded_runs):
                for out in (soce_out, mk_out):
                    shutil.rmtree(out, ignore_errors=True)
                loaded_soce.append(run_timed(soce_cmd, work)[0])
                loaded_mk.append(run_timed(mk_cmd, work)[0])
                print(f"loaded run {run + 1}: soce {loaded_soce[-1]:.2f} s, mergekit {loaded_mk[-1]:.2f} s")
        ls, lm = statistics.median(loaded_soce), statistics.median(loaded_mk)
        print(f"beside {n} busy loops (one per core): soce {ls:.2f} s, mergekit {lm:.2f} s (medians of {args.loaded_runs}); "
              f"soce / mergekit {ls / lm:.3f}x (target <= 1x); soce loaded / idle {ls / soce_med:.2f}x")

    ex = exactness(experts, soce_out, mk_out)
    print(f"exactness, soce vs float64 reference: {ex['total'] - ex['over_one']} of {ex['total']} elements within 1 bf16 ulp; "
          f"{ex['over_bound']} beyond 1 ulp + float32 accumulation error (the rest: terms that cancel to ~0)")
    print(f"soce vs mergekit: max abs difference {ex['mk_max']:.3g}; {ex['mk_differ']} of {ex['total']} elements differ")

    per_point, moved = in_place(experts, config, args.points)
    bandwidth = copy_bandwidth(min(model_bytes, 1 << 30))
    print(f"in-place soup: {per_point * 1e3:.0f} ms per weight point (median of {args.points}), "
          f"{moved / per_point / 1e9:.2f} GB/s moved (3 experts read, 1 model written)")
    print(f"memory bandwidth (large tensor copy, read+write): {bandwidth / 1e9:.2f} GB/s; "
          f"in-place soup at {moved / per_point / bandwidth:.2f}x of it")


if __name__ == "__main__":
    main()
