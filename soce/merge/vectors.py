"""Task vectors: each model's parameter delta from the base it was fine-tuned from (its norm
relative to the base's, and the cosine between every pair), read tensor by tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from soce.merge.checkpoint import TensorReader, check_compatible, open_checkpoint


@dataclass(frozen=True)
class TaskVectors:
    models: tuple[str, ...]
    base_norm: float  # ||theta_base||
    norms: tuple[float, ...]  # ||theta_i - theta_base||
    cosines: np.ndarray  # cos(delta_i, delta_j)

    @property
    def relative(self) -> tuple[float, ...]:
        """||theta_i - theta_base|| / ||theta_base||."""
        return tuple(n / self.base_norm for n in self.norms)


def task_vectors(base: str | Path, models: dict[str, str | Path]) -> TaskVectors:
    """The task vectors of `models` from `base`, read tensor by tensor (memory: one tensor per
    model), accumulated in float64."""
    checkpoints = [open_checkpoint(base), *(open_checkpoint(p) for p in models.values())]
    check_compatible(checkpoints)
    n = len(models)
    gram = np.zeros((n, n))
    base_sq = 0.0
    reader = TensorReader(max(t.nbytes for ck in checkpoints for t in ck.tensors.values()))
    try:
        for name in checkpoints[0].tensors:
            theta = reader.read(checkpoints[0].tensors[name]).to(torch.float64)
            base_sq += float(theta.square().sum())
            deltas = torch.stack([reader.read(ck.tensors[name]).to(torch.float64).flatten() - theta.flatten()
                                  for ck in checkpoints[1:]])
            gram += (deltas @ deltas.T).numpy()
    finally:
        reader.close()
    norms = np.sqrt(np.diag(gram))
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = gram / np.outer(norms, norms)
    return TaskVectors(tuple(models), math.sqrt(base_sq), tuple(float(x) for x in norms), cosines)
