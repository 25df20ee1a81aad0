"""search=halving, search=race and search=surrogate against the full grid, on three studies of the
embedded families (the default study, the specialists' top 4, the micro family's top 3).

The grid's every point is evaluated on dev and test once (stored in --workdir: a re-run reuses
them); each strategy is then replayed from those outcomes for --seeds subset orders
(search.seed), counting the examples it evaluates. For each seed: the examples evaluated as a
share of the grid's, and whether the point it returns is tied with or better than the grid's
best (best on dev) on test, by a paired bootstrap (95%) of their difference.

    .venv/bin/python scripts/bench_search.py                  # the three studies, 20 seeds

The surrogate's experts alone are known from their candidate evaluations (free, as in a study).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from omegaconf import OmegaConf


def strategy(name: str):
    """search=NAME as the command line composes it (its YAML's settings over the schema's)."""
    from hydra import compose, initialize_config_dir

    from soce import cli

    with initialize_config_dir(config_dir=cli.CONF_DIR, version_base="1.3"):
        return OmegaConf.to_object(compose("soce", overrides=[f"search={name}"]).search)


# The studies compared: the default study, the specialists' top 4 and the micro family's top 3
STUDIES = {"default": ["pool=toy_zoo"],
           "specialists": ["pool=toy_zoo_specialists", "selection=topk", "selection.k=4"],
           "micro": ["pool=toy_zoo_micro", "selection=topk", "selection.k=3"]}


def grid_outcomes(family: str, workdir: Path, per_category: int):
    """The selection's experts, and every grid point's outcomes on dev and test (id -> solved)."""
    from hydra import compose, initialize_config_dir

    from soce import cli, config
    from soce.search import grid_points
    from soce.stages.runner import STAGES, ready
    from soce.stages.select import experts as selected_experts
    from soce.stages.study import Study
    from soce.sweep import solved_by_id
    from soce.tracking import NoTracker

    config.register()
    with initialize_config_dir(config_dir=cli.CONF_DIR, version_base="1.3"):
        cfg = compose("soce", overrides=[*STUDIES[family], "benchmark.backend=direct", f"benchmark.per_category={per_category}",
                                         "tracker=none"])
    run = Study(cfg, workdir / family, NoTracker())
    run.dir.mkdir(parents=True, exist_ok=True)
    ready(run, STAGES["sweep"])  # the analysis and selection the sweep reads
    experts = selected_experts(run)
    candidates = run.candidates(experts)
    souper = run.souper([candidates[n] for n in experts])
    search = OmegaConf.to_object(cfg.search)
    points = grid_points(len(experts), search.lo, search.hi, search.step, search.include_uniform)
    out = {}
    for split in ("dev", "test"):
        ids = [i for i, _ in souper.example_ids(split)]
        out[split] = {p: solved_by_id(souper.evaluate(p, split)["correct"], ids) for p in points}
        out[split + "_objective"] = {p: souper.evaluate(p, split)["objective"] for p in points}
    known = run.expert_outcomes(experts, "dev")
    run.close()
    return experts, points, souper.example_ids("dev"), souper.example_ids("test"), out, known


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("outputs/bench_search"))
    ap.add_argument("--families", nargs="+", default=list(STUDIES), choices=list(STUDIES))
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--per-category", type=int, default=100)
    args = ap.parse_args()

    from soce.halving import successive_halving
    from soce.objective import Objective
    from soce.surrogate import surrogate_search
    from soce.stats import Bootstrap

    print(f"load average at start {os.getloadavg()[0]:.2f}")
    for family in args.families:
        experts, points, dev, test, out, known = grid_outcomes(family, args.workdir, args.per_category)
        grid_cost = len(points) * len(dev)
        grid_best = max(points, key=lambda p: out["dev_objective"][p])
        test_ids = [i for i, _ in test]
        boot = Bootstrap(test, Objective(), 2000, 0, 0.95)
        print(f"\n{family}: {len(experts)} experts, {len(points)} grid points, {len(dev)} dev examples; grid's best "
              f"{grid_best} (dev {out['dev_objective'][grid_best]:.4f}, test {out['test_objective'][grid_best]:.4f})")
        for name in ("halving", "race"):
            s = strategy(name)
            shares, ties, same = [], 0, 0
            for seed in range(args.seeds):
                run = successive_halving(points, dev, lambda p, r, ids: {i: out["dev"][p][i] for i in ids}, eta=s.eta,
                                         min_examples=s.min_examples, seed=seed, race=s.race, confidence=s.confidence,
                                         resamples=s.resamples)
                best = max(run.alive[-1], key=lambda p: out["dev_objective"][p])
                shares.append(run.evaluated / grid_cost)
                d = boot.difference([out["test"][best][i] for i in test_ids], [out["test"][grid_best][i] for i in test_ids])
                ties += d.high >= 0  # tied with or better than the grid's best on test
                same += best == grid_best
            print(f"  {name:<8} (eta {s.eta}{f', confidence {s.confidence}' if s.race else ''}): examples {statistics.median(shares):.1%} of the grid's (median; "
                  f"{min(shares):.1%} to {max(shares):.1%}); returned point tied or better on test in {ties}/{args.seeds} "
                  f"seeds; the grid's own best in {same}/{args.seeds}")
        s = strategy("surrogate")
        shares, ties, same, counts, diffs, lows, highs = [], 0, 0, [], [], [], []
        for seed in range(args.seeds):
            run = surrogate_search(s.space_points(len(experts)), dev, lambda p, ids: {i: out["dev"][p][i] for i in ids},
                                   Objective(), budget=s.budget_of(len(experts)), known=known, chunks=s.chunks,
                                   explore=s.explore, confidence=s.confidence, seed=seed, pairwise=s.pairwise)
            best = run.best
            shares.append(run.evaluated / grid_cost)
            counts.append(len({tuple(step["point"]) for step in run.steps}))
            d = boot.difference([out["test"][best][i] for i in test_ids], [out["test"][grid_best][i] for i in test_ids])
            diffs.append(d.estimate)
            lows.append(d.low)
            highs.append(d.high)
            ties += d.high >= 0
            same += best == grid_best
        print(f"  surrogate (budget {s.budget_of(len(experts)):.2f} splits, {s.chunks} chunks): examples "
              f"{statistics.median(shares):.1%} of the grid's (median; {min(shares):.1%} to {max(shares):.1%}); points "
              f"evaluated {statistics.median(counts)} (median); test objective minus the grid's best: median "
              f"{statistics.median(diffs):+.4f} (its interval [{statistics.median(lows):+.4f}, {statistics.median(highs):+.4f}]); "
              f"tied or better on test in {ties}/{args.seeds} seeds; the grid's own best in {same}/{args.seeds}")


if __name__ == "__main__":
    main()
