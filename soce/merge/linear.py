"""Linear souping: theta = sum_i w_i theta_i, accumulated in float32.

The disk merge and the in-place merge both call `weighted_sum_into`, one rounded multiply
and one rounded add per expert and element (no fused multiply-add), so their results agree
bit for bit on the same device, however the tensors are split into chunks.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import torch

from soce.errors import ConfigError


def check_weights(weights: Sequence[float], n_models: int, normalize: bool = False, group: str | None = None) -> list[float]:
    """Finite, non-negative, one per model, summing to 1 (or rescaled to, with normalize=True).
    group: the config group the weights come from (merge: the messages name merge.weights and
    merge.normalize=true); None: the Python arguments."""
    key, rescale = (f"{group}.weights", f"{group}.normalize=true") if group else ("weights", "normalize=True")
    weights = [float(w) for w in weights]
    if len(weights) != n_models:
        raise ConfigError(f"{key} has {len(weights)} values for {n_models} models")
    for i, w in enumerate(weights):
        if not math.isfinite(w):
            raise ConfigError(f"{key}[{i}]={w} is not finite")
        if w < 0:
            raise ConfigError(f"{key}[{i}]={w} is negative")
    total = math.fsum(weights)
    if total <= 0:
        raise ConfigError(f"{key} sum to 0")
    if abs(total - 1.0) > 1e-6:
        if not normalize:
            raise ConfigError(f"{key} sum to {total:g}, not 1 ({rescale} rescales them)")
        weights = [w / total for w in weights]
    return weights


def weighted_sum_into(acc: torch.Tensor, scratch: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """acc <- sum_i weights[i] * tensors[i], in float32 (acc and scratch: float32, same shape).
    Each term is rounded once as a float32 product, then added: a float32 tensor is multiplied
    into place in one pass, another dtype converted (exactly) first."""
    def term(out: torch.Tensor, t: torch.Tensor, w: float) -> torch.Tensor:
        return torch.mul(t, w, out=out) if t.dtype == torch.float32 else out.copy_(t).mul_(w)

    term(acc, tensors[0], weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        acc.add_(term(scratch, t, w))
    return acc


def parse_size(size: str | int, key: str = "shard_size") -> int:
    """'2GB', '500MB', '1GiB', 4096 -> bytes (`key`: the setting it came from, for the error)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([KMGT]?i?B)?\s*", str(size), re.IGNORECASE)
    if not m:
        raise ConfigError(f"{key}={size!r}: expected a size such as 2GB, 500MB or 1GiB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def mergekit_yaml(models: Sequence[str | Path], weights: Sequence[float], dtype: str) -> str:
    """The same soup as a mergekit config: `mergekit-yaml mergekit.yaml OUT` reproduces it.
    Written by a YAML library, so that any path (with '#', ': ', quotes) reads back as itself."""
    import yaml

    recipe = {"merge_method": "linear", "dtype": dtype, "parameters": {"normalize": False},
              "models": [{"model": str(m), "parameters": {"weight": float(w)}} for m, w in zip(models, weights)]}
    return ("# Reproduce this soup with mergekit: mergekit-yaml mergekit.yaml OUTPUT_DIR\n"
            + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
