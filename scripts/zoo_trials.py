"""Trial builds of a model family, judged on its candidates alone, never on a soup.

Measured: the realism criteria (soce.zoo.realism), and per category the reliability of the
candidates' spread and how often the dev leader leads in redraws of the examples (as soce's
analysis and stability compute them). How the default family's spec is chosen before any soup
of it is evaluated (docs/zoo.md). The pilots' soups (--soups) are a diagnosis, never a
default's choice.

    python scripts/zoo_trials.py                 every trial below
    python scripts/zoo_trials.py t1 t2 --per-category 100
    python scripts/zoo_trials.py t17 --partial 0.25 0.5
                                                 and, per specialised candidate, the share of its gain
                                                 on its own categories that base + f * its move keeps
    python scripts/zoo_trials.py p1 --soups      and soups of the category leaders, on dev: a
                                                 diagnosis of the pilots (p1-p4), whose candidates
                                                 are trained with other seeds than any default's

Each trial is built into --cache (default /tmp/zoo_trials); a base with the same spec as an
earlier trial's is copied, not trained again.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np

from soce.analysis import reliability
from soce.threads import compute_threads
from soce.zoo.family import FAMILIES, UNIFORM, CandidateSpec, Family, FamilySpec, _build, _missing, mixed, specialised
from soce.zoo.realism import measure

# the default family until issue 37 (trial 8 of issue 28, docs/zoo.md): every trial starts from it
DEFAULT = FamilySpec(
    name="former", hidden=128, layers=2, base_steps=450, base_lr=3e-3, level=2,
    candidates=(
        CandidateSpec("fc-generalist", UNIFORM, 150, 5e-4, 1),
        CandidateSpec("fc-json", mixed(0.4, json=1), 120, 1e-3, 2),
        CandidateSpec("fc-parallel", mixed(0.4, parallel=1, parallel_multiple=1, json=0.25), 120, 1e-3, 3),
        CandidateSpec("fc-relevance", mixed(0.4, irrelevance=1, multiple=1), 100, 1e-3, 4),
        CandidateSpec("fc-simple-short", mixed(0.3, simple=1), 60, 5e-4, 5),
        CandidateSpec("fc-hot", UNIFORM, 100, 1e-3, 6),
        CandidateSpec("fc-multi-long", mixed(0.4, parallel_multiple=2, json=1, multiple=1), 200, 6e-4, 7),
        CandidateSpec("fc-undertrained", UNIFORM, 30, 5e-4, 8),
    ),
)
def changed(spec: FamilySpec, name: str, *candidates: CandidateSpec, **fields) -> FamilySpec:
    """A trial made from `spec`: named `name`, the `candidates` given in place of those of the same
    names, and `fields` (the base's spec) set."""
    given = {c.name: c for c in candidates}
    return dataclasses.replace(spec, name=name, candidates=tuple(given.get(c.name, c) for c in spec.candidates), **fields)


TRIALS: dict[str, FamilySpec] = {
    "t1": dataclasses.replace(DEFAULT, name="t1", length_buckets=2, candidates=(
        CandidateSpec("fc-generalist", UNIFORM, 100, 5e-4, 1),
        CandidateSpec("fc-json", mixed(0.3, json=1), 200, 1.5e-3, 2),
        CandidateSpec("fc-parallel", mixed(0.3, parallel=1, parallel_multiple=1), 200, 1.5e-3, 3),
        CandidateSpec("fc-relevance", mixed(0.3, irrelevance=1), 200, 1.5e-3, 4),
        CandidateSpec("fc-simple-short", mixed(0.3, simple=1), 100, 1.5e-3, 5),
        CandidateSpec("fc-hot", UNIFORM, 80, 1e-3, 6),
        CandidateSpec("fc-multi-long", mixed(0.3, multiple=1), 200, 1.5e-3, 7),
        CandidateSpec("fc-undertrained", UNIFORM, 30, 5e-4, 8),
    )),
    # a base trained less (360 steps): headroom on every category for the fine-tunes to take
    "t2": dataclasses.replace(DEFAULT, name="t2", base_steps=360, length_buckets=2, candidates=(
        CandidateSpec("fc-generalist", UNIFORM, 100, 5e-4, 1),
        CandidateSpec("fc-json", mixed(0.3, json=1), 150, 1e-3, 2),
        CandidateSpec("fc-parallel", mixed(0.3, parallel=1, parallel_multiple=1), 150, 1e-3, 3),
        CandidateSpec("fc-relevance", mixed(0.3, irrelevance=1), 150, 1e-3, 4),
        CandidateSpec("fc-simple-short", mixed(0.3, simple=1), 80, 1e-3, 5),
        CandidateSpec("fc-hot", UNIFORM, 60, 1e-3, 6),
        CandidateSpec("fc-multi-long", mixed(0.3, multiple=1), 200, 6e-4, 7),
        CandidateSpec("fc-undertrained", UNIFORM, 30, 5e-4, 8),
    )),
}
# a base that has seen little but simple calls: headroom on the skills the fine-tunes teach
TRIALS["t3"] = changed(
    TRIALS["t2"], "t3",
    CandidateSpec("fc-relevance", mixed(0.3, irrelevance=1), 120, 1e-3, 4),
    CandidateSpec("fc-simple-short", mixed(0.3, simple=1), 60, 1e-3, 5),
    base_steps=450,
    base_mixture={"simple": 3, "multiple": 1, "parallel": 1, "parallel_multiple": 1, "irrelevance": 0.6, "json": 0.6})
TRIALS["t4"] = changed(TRIALS["t3"], "t4", base_mixture={
    "simple": 4, "multiple": 0.8, "parallel": 0.8, "parallel_multiple": 0.5, "irrelevance": 0.4, "json": 0.4})

# a base that has seen few calls but simple and multiple ones (3-6 % of its batches each)
TRIALS["t5"] = changed(TRIALS["t3"], "t5", base_mixture={
    "simple": 5, "multiple": 3, "parallel": 0.6, "parallel_multiple": 0.6, "irrelevance": 0.4, "json": 0.4})

# between t3 and t5: json 7 % and irrelevance 4 % of the base's batches; fc-json at a lower rate,
# fc-relevance longer. The default family from issue 37's first stop until level 3 (t15)
TRIALS["t6"] = changed(
    TRIALS["t5"], "t6",
    CandidateSpec("fc-json", mixed(0.3, json=1), 150, 7e-4, 2),
    CandidateSpec("fc-relevance", mixed(0.3, irrelevance=1), 150, 1e-3, 4),
    CandidateSpec("fc-simple-short", mixed(0.4, simple=1), 60, 1e-3, 5),
    base_mixture={"simple": 4, "multiple": 2, "parallel": 1.2, "parallel_multiple": 1.2, "irrelevance": 0.4, "json": 0.7})

# specialists of two categories each, on a base that has seen little json and relevance detection
TRIALS["t7"] = changed(
    TRIALS["t6"], "t7",
    CandidateSpec("fc-json", mixed(0.3, json=1, simple=1), 150, 1e-3, 2),
    CandidateSpec("fc-parallel", mixed(0.3, parallel=1, parallel_multiple=1), 170, 1e-3, 3),
    CandidateSpec("fc-relevance", mixed(0.3, irrelevance=1, multiple=1), 150, 1e-3, 4),
    CandidateSpec("fc-multi-long", mixed(0.3, multiple=1, parallel_multiple=1), 200, 6e-4, 7),
    base_mixture={"simple": 1, "multiple": 1, "parallel": 1, "parallel_multiple": 1, "irrelevance": 0.5, "json": 0.35})

# toy_fc level 3: a skill of each category's own (fc.LEVEL_3), 40 % of each category's examples;
# a base that has seen it in 5 % of its examples (on every category alike), specialists of one
# category each
TRIALS["t8"] = changed(
    TRIALS["t6"], "t8",
    CandidateSpec("fc-json", mixed(0.3, json=1), 150, 1e-3, 2),
    CandidateSpec("fc-simple-short", mixed(0.4, simple=1), 100, 1e-3, 5),
    CandidateSpec("fc-multi-long", mixed(0.3, multiple=1), 200, 1e-3, 7),
    level=3, base_twisted=0.05, base_mixture=None)

# level 3 as it stands (namesakes in multiple, undoable requests in irrelevance); the base on more
# parallel_multiple and json; one specialist a skill but fc-multi-long (multiple, parallel_multiple)
TRIALS["t9"] = changed(
    TRIALS["t8"], "t9",
    CandidateSpec("fc-json", mixed(0.3, json=1), 150, 7e-4, 2),
    CandidateSpec("fc-parallel", mixed(0.3, parallel=1), 200, 1e-3, 3),
    CandidateSpec("fc-simple-short", mixed(0.3, simple=1), 150, 1e-3, 5),
    CandidateSpec("fc-multi-long", mixed(0.3, multiple=1, parallel_multiple=1), 200, 8e-4, 7),
    base_mixture={"simple": 1, "multiple": 1, "parallel": 1, "parallel_multiple": 1.5, "irrelevance": 1, "json": 1.5})

# level 3 as it stands; specialists on 80 % of their skill's category, the base on more json
TRIALS["t10"] = changed(
    TRIALS["t9"], "t10",
    CandidateSpec("fc-json", mixed(0.2, json=1), 150, 6e-4, 2),
    CandidateSpec("fc-parallel", mixed(0.2, parallel=1), 150, 1e-3, 3),
    CandidateSpec("fc-relevance", mixed(0.2, irrelevance=1), 150, 1e-3, 4),
    CandidateSpec("fc-simple-short", mixed(0.2, simple=1), 100, 1e-3, 5),
    CandidateSpec("fc-multi-long", mixed(0.2, multiple=1, parallel_multiple=1), 200, 8e-4, 7),
    base_steps=500,
    base_mixture={"simple": 1, "multiple": 1, "parallel": 1, "parallel_multiple": 1.3, "irrelevance": 1, "json": 1.6})

# the same, on a base that has never seen any category's own skill
TRIALS["t11"] = dataclasses.replace(TRIALS["t10"], name="t11", base_twisted=0.0)

# json's own skill its format (no second twist); irrelevance's namesakes either asked for; the
# base on less json; numbers in words up to 99
TRIALS["t12"] = dataclasses.replace(TRIALS["t11"], name="t12", base_mixture={
    "simple": 1, "multiple": 1, "parallel": 1, "parallel_multiple": 1.3, "irrelevance": 1, "json": 0.8})

# simple's numbers in words of one word each; the base on more parallel; fc-parallel and
# fc-relevance at 8e-4 (they moved 0.10 and 0.11), fc-parallel with 30 % general data
TRIALS["t13"] = changed(
    TRIALS["t12"], "t13",
    CandidateSpec("fc-parallel", mixed(0.3, parallel=1), 130, 8e-4, 3),
    CandidateSpec("fc-relevance", mixed(0.2, irrelevance=1), 150, 8e-4, 4),
    base_mixture={"simple": 1, "multiple": 1, "parallel": 1.3, "parallel_multiple": 1.3, "irrelevance": 1, "json": 0.8})

# t13's base; more general data where json was forgotten, fc-relevance longer, fc-multi-long shorter
TRIALS["t14"] = changed(
    TRIALS["t13"], "t14",
    CandidateSpec("fc-parallel", mixed(0.4, parallel=1), 130, 8e-4, 3),
    CandidateSpec("fc-relevance", mixed(0.3, irrelevance=1), 180, 8e-4, 4),
    CandidateSpec("fc-simple-short", mixed(0.4, simple=1), 100, 1e-3, 5),
    CandidateSpec("fc-multi-long", mixed(0.3, multiple=1, parallel_multiple=1), 180, 8e-4, 7))

# irrelevance's own skill: a namesake asked for, offered (its call) or its namesake in its place (no
# call), not either of the two; more general data and a lower rate where json was forgotten
TRIALS["t15"] = changed(
    TRIALS["t14"], "t15",
    CandidateSpec("fc-relevance", mixed(0.4, irrelevance=1), 180, 8e-4, 4),
    CandidateSpec("fc-simple-short", mixed(0.4, simple=1), 120, 8e-4, 5))

# t15 with fc-parallel on half general data (it kept 81 % of json), fc-relevance and fc-multi-long
# a little shorter (they moved 0.102 and 0.101)
TRIALS["t16"] = changed(
    TRIALS["t15"], "t16",
    CandidateSpec("fc-parallel", mixed(0.5, parallel=1), 150, 8e-4, 3),
    CandidateSpec("fc-relevance", mixed(0.4, irrelevance=1), 160, 8e-4, 4),
    CandidateSpec("fc-multi-long", mixed(0.3, multiple=1, parallel_multiple=1), 170, 8e-4, 7))

# t16 with fc-parallel at a lower rate, longer (it kept 87 % of json). Chosen: the default family
# since level 3, whose spec (but for its name) is this trial's
TRIALS["t17"] = changed(TRIALS["t16"], "t17", CandidateSpec("fc-parallel", mixed(0.5, parallel=1), 180, 6e-4, 3))


# Pilots, after t17's study (its soup level with its best candidate): can any recipe of this kind
# give a soup above its best candidate? Candidates trained with other seeds (seed + 100) than any
# default family's, judged with --soups on dev only (docs/zoo.md, "What averaging keeps").
def pilot(spec: FamilySpec, name: str, general: float | None = None, steps: int | None = None, lr: float | None = None,
          **fields) -> FamilySpec:
    """`spec` with its candidates' seeds moved by 100 and, where given, every specialised
    candidate's general share, steps (simple's 50 fewer) and learning rate set."""
    def recipe(c: CandidateSpec) -> CandidateSpec:
        emphasis = {k: 1.0 for k in specialised(c.mixture)}
        if general is None or not 0 < len(emphasis) < len(c.mixture):
            return dataclasses.replace(c, seed=c.seed + 100)
        return CandidateSpec(c.name, mixed(general, **emphasis), steps - 50 * ("simple" in emphasis), lr, c.seed + 100)
    return dataclasses.replace(spec, name=name, candidates=tuple(map(recipe, spec.candidates)), **fields)


TRIALS["p1"] = pilot(TRIALS["t17"], "p1", general=0.6, steps=250, lr=4e-4)  # more general data, longer, slower
TRIALS["p2"] = pilot(TRIALS["t17"], "p2", general=0.75, steps=300, lr=4e-4)  # more still
TRIALS["p3"] = pilot(TRIALS["t17"], "p3", general=0.5, steps=250, lr=5e-4)
TRIALS["p4"] = pilot(TRIALS["t17"], "p4", hidden=256)  # t17's recipe on a model twice as wide


def base_key(spec: FamilySpec) -> str:
    return FamilySpec.key(dataclasses.replace(spec, name="base", candidates=()))


def build(spec: FamilySpec, cache: Path) -> Family:
    family = Family(spec, cache / spec.key())
    bases = cache / "bases" / base_key(spec)
    if not family.base.exists() and bases.exists():
        family.root.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bases, family.base)
    todo = _missing(family)
    if todo:
        family.root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        _build(family, todo, progress=False)
        print(f"{spec.name}: built {', '.join(todo)} in {time.perf_counter() - started:.0f} s")
    if not bases.exists():
        shutil.copytree(family.base, bases)
    return family


def lead_shares(values: np.ndarray, n: int, redraws: int = 1000, seed: int = 0) -> np.ndarray:
    """Per category, the share of binomial redraws in which the dev leader leads (ties split)."""
    rng = np.random.default_rng(seed)
    leader = values.argmax(axis=0)
    wins = np.zeros(values.shape[1])
    for _ in range(redraws):
        drawn = rng.binomial(n, values) / n
        best = drawn == drawn.max(axis=0)
        wins += best[leader, np.arange(values.shape[1])] / best.sum(axis=0)
    return wins / redraws


class DevScorer:
    """Scores soups of a family's models on toy_fc's dev split: any weights, souped in place into
    one model by soce's own soup (soce.merge.InPlaceSoup)."""

    def __init__(self, family: Family, per_category: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from soce.toy_fc.direct import ToyFcDirect

        self.evaluator = ToyFcDirect(seed=0, per_category=per_category, batch_size=100, level=family.spec.level)
        self.tokenizer = AutoTokenizer.from_pretrained(family.base)
        self.model = AutoModelForCausalLM.from_pretrained(family.base)

    def __call__(self, weights: dict[Path, float]) -> dict[str, float]:
        """The dev scores of sum_i w_i * model_i, the models given by their directories."""
        from soce.engine.hf import HfEngine
        from soce.merge import InPlaceSoup

        InPlaceSoup(self.model, list(weights)).apply(list(weights.values()))
        with compute_threads():
            return self.evaluator.evaluate(HfEngine(self.model, self.tokenizer), "dev").scores


def partial_moves(score: DevScorer, family: Family, realism, fractions: list[float]) -> None:
    """Per specialised candidate, the share of its gain over the base, on each category it is
    specialised on, that base + f * (candidate - base) keeps: a property of one candidate (how
    far its skill survives a shorter move), measured without any soup of candidates."""
    base = realism.base_scores
    print(f"{family.spec.name}: the share of each specialist's gain on its own categories kept at a fraction of its move")
    for c in realism.candidates:
        if not c.specialised:
            continue
        cells = []
        for f in fractions:
            scores = score({family.base: 1 - f, family.candidates[c.name]: f})
            cells.append(f"{f}: " + ", ".join(f"{k} {(scores[k] - base[k]) / (c.scores[k] - base[k]):.0%}"
                                              for k in c.specialised if c.scores[k] != base[k]))
        print(f"  {c.name:16s} " + " | ".join(cells))
    print()


def leader_soups(score: DevScorer, family: Family, realism) -> None:
    """On dev: the category leaders' uniform soup, and each leader at 0.4 (the others sharing the
    rest), against the best single candidate. A diagnosis of pilots, never a default's choice."""
    by_name = {c.name: c for c in realism.candidates}
    categories = list(realism.base_scores)
    leaders = list(dict.fromkeys(max(realism.candidates, key=lambda c: c.scores[k]).name for k in categories))

    def line(label: str, scores: dict[str, float]) -> str:
        return f"  {label:28s} " + " ".join(f"{scores[k]:.2f}" for k in categories) + f" | {np.mean(list(scores.values())):.3f}"

    best = max(realism.candidates, key=lambda c: np.mean(list(c.scores.values())))
    print(f"{family.spec.name}, dev: {' '.join(categories)} | mean")
    print(line(f"best single ({best.name})", best.scores))
    for n in leaders:
        print(line(n, by_name[n].scores))
    mixes = {"uniform soup of the leaders": {n: 1 / len(leaders) for n in leaders}}
    if len(leaders) > 1:
        mixes.update({f"{n} 0.4": {m: 0.4 if m == n else 0.6 / (len(leaders) - 1) for m in leaders} for n in leaders})
    for label, w in mixes.items():
        print(line(label, score({family.candidates[n]: w[n] for n in leaders})))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trials", nargs="*", default=list(TRIALS))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/zoo_trials"))
    ap.add_argument("--per-category", type=int, default=100)
    ap.add_argument("--partial", type=float, nargs="+", metavar="F",
                    help="also the share of each specialist's own gain kept at these fractions of its move")
    ap.add_argument("--soups", action="store_true", help="also soups of the category leaders, on dev (pilots only)")
    args = ap.parse_args()
    for name in args.trials:
        spec = TRIALS[name]
        family = build(spec, args.cache)
        realism = measure(family, per_category=args.per_category)
        print(realism.table())
        categories = list(realism.base_scores)
        values = np.array([[c.scores[k] for k in categories] for c in realism.candidates])
        names = [c.name for c in realism.candidates]
        rel = reliability(values, [args.per_category] * len(categories))
        shares = lead_shares(values, args.per_category)
        print(f"\n{name}, {args.per_category} dev examples a category: category, reliability, leader (its share of redraws), "
              "spread (max - median)")
        for j, c in enumerate(categories):
            column = values[:, j]
            print(f"  {c:18s} {rel[j]:6.2f}  {names[int(column.argmax())]:16s} {shares[j]:4.0%}  "
                  f"{column.max() - np.median(column):+.3f}")
        print()
        score = DevScorer(family, args.per_category) if args.partial or args.soups else None
        if args.partial:
            partial_moves(score, family, realism, args.partial)
        if args.soups:
            leader_soups(score, family, realism)


if __name__ == "__main__":
    main()
