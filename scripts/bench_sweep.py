"""Benchmark the sweep on the embedded default (3 experts of the toy_zoo family, toy_fc dev
through lm-eval). Prints one line per figure.

    make bench-deps && .venv/bin/python scripts/bench_sweep.py

- per point: the in-place merge against the evaluation (target: merge < 5% of evaluation);
- per point, alternating on the same points: soce's sweep (experts loaded once, soup in
  place, one HFLM wrapper) against the naive loops a user would otherwise write:
  (a) in Python: merge to disk, load the soup fresh, wrap it in HFLM, evaluate;
  (b) on the command line: mergekit-yaml, then the lm_eval CLI on the soup.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from soce.engine.hf import HfEngine
from soce.toy_fc.harness import TOY_FC_TASKS, toy_fc_backend
from soce.merge import merge_to_disk
from soce.pool import Candidate
from soce.weights import simplex_grid
from soce.zoo.family import build_family

EXPERTS = ["fc-multi-long", "fc-parallel", "fc-json"]


def naive_python(experts: list[Path], weights, work: Path, level: int) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    out = merge_to_disk(experts, weights, work / "naive-soup", overwrite=True, progress=False)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    # a fresh harness and wrapper, as a script would
    toy_fc_backend(seed=0, per_category=100, batch_size=64, level=level).evaluate(HfEngine(model, tokenizer), "dev")
    return time.perf_counter() - start


def naive_cli(experts: list[Path], weights, work: Path, level: int) -> float:
    bin_dir = Path(sys.executable).parent
    recipe = work / "naive.yaml"
    recipe.write_text("merge_method: linear\ndtype: float32\nmodels:\n"
                      + "".join(f"  - model: {e}\n    parameters:\n      weight: {w}\n" for e, w in zip(experts, weights)))
    out = work / "naive-cli-soup"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([str(bin_dir / "mergekit-yaml"), str(recipe), str(out), "--quiet", "--no-write-model-card"],
                   check=True, capture_output=True)
    subprocess.run([str(bin_dir / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={out}", "--tasks", "toy_fc_dev",
                    "--include_path", str(TOY_FC_TASKS), "--metadata", json.dumps({"level": level}), "--batch_size", "64", "--output_path", str(work / "lm_eval_out")],
                   check=True, capture_output=True, cwd=work)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("outputs/bench_sweep"))
    ap.add_argument("--points", type=int, default=5, help="grid points timed for each method")
    ap.add_argument("--no-cli", action="store_true", help="skip the mergekit-yaml + lm_eval command-line loop")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    family = build_family("default")
    experts = [family.candidates[n] for n in EXPERTS]
    grid = simplex_grid(3)
    points = [grid[i * len(grid) // args.points] for i in range(args.points)]

    engine = HfEngine.load(Candidate(EXPERTS[0], path=str(experts[0])), experts=[str(e) for e in experts])
    backend = toy_fc_backend(seed=0, per_category=100, batch_size=64, level=family.spec.level)
    backend.evaluate(engine, "dev")  # warm-up: the HFLM wrapper is built once per sweep
    merge_t, eval_t, ours, py_naive, cli_naive = [], [], [], [], []
    for w in points:
        start = time.perf_counter()
        engine.apply(w)
        merged = time.perf_counter()
        backend.evaluate(engine, "dev")
        done = time.perf_counter()
        merge_t.append(merged - start)
        eval_t.append(done - merged)
        ours.append(done - start)
        py_naive.append(naive_python(experts, w, work, family.spec.level))
        if not args.no_cli:
            cli_naive.append(naive_cli(experts, w, work, family.spec.level))
        print(f"point {w}: soce {ours[-1]:.2f} s (merge {merge_t[-1] * 1e3:.1f} ms), naive Python {py_naive[-1]:.2f} s"
              + (f", naive CLI {cli_naive[-1]:.2f} s" if cli_naive else ""), flush=True)

    m, e, o, p = map(statistics.median, (merge_t, eval_t, ours, py_naive))
    print(f"in-place merge per point: {m * 1e3:.1f} ms; evaluation per point: {e:.2f} s; merge = {100 * m / e:.2f}% of evaluation (target < 5%)")
    print(f"soce sweep per point: {o:.2f} s (median of {len(points)})")
    print(f"naive Python loop per point (merge to disk, load fresh, new HFLM, evaluate): {p:.2f} s -> soce {p / o:.1f}x faster")
    if cli_naive:
        c = statistics.median(cli_naive)
        print(f"naive CLI loop per point (mergekit-yaml + lm_eval): {c:.2f} s -> soce {c / o:.1f}x faster (target >= 5x)")


if __name__ == "__main__":
    main()
