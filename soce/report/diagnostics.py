"""Whether a pool is soupable, before or beside the sweep: linear mode connectivity (the score
along the line between two experts, and the barrier: the largest drop below the straight line
between its ends), and what the task vectors (soce.merge.vectors) predict of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from soce.stats import score_noise


@dataclass(frozen=True)
class Connectivity:
    """The score along the line from expert a (t=0) to expert b (t=1)."""

    a: str
    b: str
    ts: tuple[float, ...]
    scores: tuple[float, ...]
    examples: int = 0  # behind each score (0: unknown): what a difference must clear to be more than noise

    @property
    def barrier(self) -> float:
        """The largest drop of the score below the straight line between its end points (0 if none)."""
        s0, s1 = self.scores[0], self.scores[-1]
        return max(0.0, *((1 - t) * s0 + t * s1 - s for t, s in zip(self.ts, self.scores)))

    @property
    def noise(self) -> float:
        """Two binomial standard errors of the better end's score on its examples (0: unknown): a
        difference on the line smaller than this is inside the sampling noise."""
        return score_noise(max(self.scores[0], self.scores[-1]), self.examples)

    @property
    def gain(self) -> float:
        """The best score on the line above the better end point (0 if none)."""
        return max(0.0, max(self.scores) - max(self.scores[0], self.scores[-1]))


def connectivity(names: Sequence[str], score: Callable[[tuple[float, ...]], float], points: int,
                 examples: int = 0) -> list[Connectivity]:
    """For each pair of `names`, the score (`score(weights)`, weights over all names) at `points`
    evenly spaced points of the line between them, ends included (`examples` behind each score)."""
    ts = tuple(k / (points - 1) for k in range(points))
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            def weights(t: float) -> tuple[float, ...]:
                w = [0.0] * len(names)
                w[i], w[j] = 1 - t, t
                return tuple(w)

            out.append(Connectivity(names[i], names[j], ts, tuple(score(weights(t)) for t in ts), examples))
    return out


def prediction(cosine: float | None, line: Connectivity | None) -> str:
    """One sentence: what the pair's task vectors (cosine None: no base known) and line predict
    for their soup."""
    parts = [] if cosine is None else [_shape(cosine)]
    if line is not None:
        parts.append(_path(line))
    sentence = "; ".join(parts)
    return sentence[:1].upper() + sentence[1:] + "." if cosine is None else sentence + "."


# The thresholds the sentences use, stated in the report beside the figures they read.
ORTHOGONAL = 0.2  # |cosine| below it: near-orthogonal task vectors
ALIGNED = 0.7  # cosine above it: aligned (the same move); between the two: partly aligned
BARRIER = 0.02  # a drop below the straight line between the ends larger than this is a barrier
THRESHOLDS = (f"cosines under {ORTHOGONAL} in size read as near-orthogonal, from {ORTHOGONAL} to {ALIGNED} as partly "
              f"aligned, above {ALIGNED} as aligned; a drop of more than {BARRIER} below the straight line between the "
              "ends is a barrier, and a rise above the better end a gain, each only where it is larger than the noise of "
              "the examples behind the scores (two binomial standard errors of the better end's score)")


def _shape(cosine: float) -> str:
    if math.isnan(cosine):
        shape = "one of them equals the base (no task vector)"
    elif abs(cosine) < ORTHOGONAL:
        shape = f"near-orthogonal task vectors (cosine {cosine:.2f}), which the task-arithmetic literature reads as composable"
    elif cosine > ALIGNED:
        shape = f"aligned task vectors (cosine {cosine:.2f}): they moved the base the same way, so averaging adds little"
    elif cosine > 0:
        shape = f"partly aligned task vectors (cosine {cosine:.2f}): they share part of their move, and averaging keeps the rest of each at half strength"
    else:
        shape = f"opposed task vectors (cosine {cosine:.2f}): averaging cancels part of each"
    return shape


def _path(line: Connectivity) -> str:
    noise = line.noise
    inside = f"inside the noise of {line.examples} examples (+-{noise:.3f})" if noise else ""
    if line.barrier > BARRIER:
        if line.barrier <= noise:
            return f"a drop of {line.barrier:.3f} below the line between them, {inside}: no sign of a barrier either way"
        return f"a barrier of {line.barrier:.3f} on the line between them: their soup loses what neither end loses"
    drop = f"no barrier (the largest drop below the line, {line.barrier:.4f}, is under {BARRIER})" if line.barrier > 0 else "no barrier"
    if line.gain > noise:
        return f"{drop}, and a point on the line {line.gain:.3f} above the better end: the soup should help"
    if line.gain > 0:
        return f"{drop}, and a point on the line {line.gain:.3f} above the better end, {inside}: no sign it helps"
    return f"{drop}, and no point above the better end: the soup should not hurt, nor help much"
