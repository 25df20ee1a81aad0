"""Is a family like the fine-tunes the paper soups? Three criteria, fixed before the default
family was built (issue 18) and measured on its dev split, never tuned to a soup's score:

- the base solves every category reasonably: at least MIN_BASE_SCORE on each. Real candidates
  are fine-tunes of a capable base (Llama 3.x), not of a model that fails whole categories.
- each candidate stays close to the base: ||theta_i - theta_base|| / ||theta_base|| at most
  MAX_RELATIVE_DELTA. Within 10 % the candidate is the base plus a small perturbation (its
  cosine with the base is above 0.99); all but one of the specialists family's candidates move
  15-56 %.
- each candidate keeps at least MIN_KEPT of the base's score on every category it was not
  specialised on (its mixture gives the category no more than an even share). A fine-tune that
  loses more than a tenth of a skill the base had has forgotten it, which is what a real
  fine-tune's general data is there to prevent; the specialists keep as little as 0 %.

    python -m soce.zoo.realism [FAMILY ...]   prints the measurements (default: every family)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from soce.merge.vectors import task_vectors
from soce.threads import compute_threads
from soce.toy_fc import fc
from soce.zoo.family import FAMILIES, Family, build_family, specialised

MIN_BASE_SCORE = 0.5
MAX_RELATIVE_DELTA = 0.10
MIN_KEPT = 0.9


@dataclass(frozen=True)
class CandidateRealism:
    name: str
    relative_delta: float
    specialised: tuple[str, ...]
    scores: dict[str, float]  # category -> dev accuracy
    kept: dict[str, float]  # non-specialised category -> score / base score (1 where the base scores 0)

    def failures(self) -> list[str]:
        out = []
        if self.relative_delta > MAX_RELATIVE_DELTA:
            out.append(f"{self.name}: moved {self.relative_delta:.3f} of the base's norm (at most {MAX_RELATIVE_DELTA})")
        out += [f"{self.name}: kept {share:.0%} of the base's score on {category} (at least {MIN_KEPT:.0%})"
                for category, share in self.kept.items() if share < MIN_KEPT]
        return out


@dataclass(frozen=True)
class Realism:
    family: str
    base_scores: dict[str, float]
    candidates: tuple[CandidateRealism, ...]

    def failures(self) -> list[str]:
        weak = [f"base: {score:.2f} on {category} (at least {MIN_BASE_SCORE})"
                for category, score in self.base_scores.items() if score < MIN_BASE_SCORE]
        return weak + [f for c in self.candidates for f in c.failures()]

    def table(self) -> str:
        head = "| model | ||delta|| / ||base|| | " + " | ".join(fc.CATEGORIES) + " | mean | least kept |"
        rows = [head, "|" + "---|" * (len(fc.CATEGORIES) + 4),
                "| base | | " + " | ".join(f"{self.base_scores[c]:.2f}" for c in fc.CATEGORIES)
                + f" | {_mean(self.base_scores):.3f} | |"]
        for c in self.candidates:
            cells = [f"**{c.scores[k]:.2f}**" if k in c.specialised else f"{c.scores[k]:.2f}" for k in fc.CATEGORIES]
            least = min(c.kept.values(), default=1.0)
            rows.append(f"| {c.name} | {c.relative_delta:.3f} | " + " | ".join(cells) + f" | {_mean(c.scores):.3f} | {least:.0%} |")
        failures = self.failures()
        verdict = ("meets all three criteria" if not failures else "fails: " + "; ".join(failures))
        return (f"family {self.family} (dev split; bold: the categories a candidate is specialised on): {verdict}\n\n"
                + "\n".join(rows))


def _mean(scores: dict[str, float]) -> float:
    return sum(scores.values()) / len(scores)


def measure(family: Family, per_category: int = 100, seed: int = 0) -> Realism:
    """The criteria's measurements for a built family, on toy_fc's dev split."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from soce.engine.hf import HfEngine
    from soce.toy_fc.direct import ToyFcDirect

    evaluator = ToyFcDirect(seed=seed, per_category=per_category, batch_size=100, level=family.spec.level)

    def scores(path) -> dict[str, float]:
        model = AutoModelForCausalLM.from_pretrained(path)
        with compute_threads():
            return evaluator.evaluate(HfEngine(model, AutoTokenizer.from_pretrained(path)), "dev").scores

    base = scores(family.base)
    vectors = task_vectors(family.base, family.candidates)
    candidates = []
    for spec, relative in zip(family.spec.candidates, vectors.relative):
        own = scores(family.candidates[spec.name])
        emphasised = specialised(spec.mixture)
        kept = {c: own[c] / base[c] if base[c] else 1.0 for c in fc.CATEGORIES if c not in emphasised}
        candidates.append(CandidateRealism(spec.name, relative, emphasised, own, kept))
    return Realism(family.spec.name, base, tuple(candidates))


def main(argv: list[str]) -> None:
    for name in argv or list(FAMILIES):
        print(measure(build_family(name)).table(), end="\n\n")


if __name__ == "__main__":
    main(sys.argv[1:])
