"""The devices a plan places on: parsed from a spec (8xH100-80GB, 2x80GB, cpu), or this machine's;
sizes in bytes, and how they print."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch

from soce.errors import ConfigError
from soce.merge.linear import parse_size

GIB = 2**30
GPU_OVERHEAD = 1 * GIB  # per GPU: the CUDA context and the allocator's slack
DEFAULT_TOKENS = 8 * 4096  # tokens the evaluation holds at once: 8 sequences of 4k
MAX_GPUS = 64  # GPUs one process's plan may name: more than any node has
# The sizes a plan is made of: a config.json without one would be planned with transformers' defaults.
SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def gb(n: float) -> str:
    """Bytes as GB (MB, kB for small models)."""
    if n == 0:
        return "0"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale or unit == "kB":
            return f"{n / scale:.1f} {unit}"


# --- devices --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    name: str  # "cuda:0", "cpu"
    memory: int  # bytes soce may use

    @property
    def is_gpu(self) -> bool:
        return self.name != "cpu"


def parse_devices(spec: str, key: str = "sweep.devices") -> list[Device]:
    """'8xH100-80GB', '2x80GB', '80GB,40GB' (per GPU), 'cpu' or 'cpu:256GB': the devices to
    plan for. A size is decimal (GB) or binary (GiB), as written."""
    text = str(spec).strip().strip("[]")
    if text.startswith("cpu"):
        size = text.partition(":")[2]
        return [Device("cpu", parse_size(size, key) if size else host_memory())]
    devices = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(?:(\d+)\s*x\s*)?(?:[A-Za-z][\w.]*-)?(\d+(?:\.\d+)?\s*[GT]i?B)", part, re.IGNORECASE)
        if not m:
            raise ConfigError(f"{key}={spec!r}: expected GPUs as COUNTxMEMORY (8xH100-80GB, 2x80GB), "
                              "memory per GPU (80GB,40GB), or cpu")
        count = int(m.group(1) or 1)
        if count < 1:
            raise ConfigError(f"{key}={spec!r} asks for {count} GPUs: name at least one, or plan for the cpu")
        if len(devices) + count > MAX_GPUS:
            raise ConfigError(f"{key}={spec!r} names {len(devices) + count} GPUs: a sweep process places its model on the "
                              f"GPUs of one node, at most {MAX_GPUS}; to use more nodes, split the sweep into shards "
                              "(sweep.num_shards), one node each")
        devices += [Device(f"cuda:{len(devices) + i}", parse_size(m.group(2).replace(" ", ""), key)) for i in range(count)]
    if not devices:
        raise ConfigError(f"{key}={spec!r} names no device")
    return devices


def host_memory() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def visible_devices(max_memory: int | None = None) -> list[Device]:
    """This machine's GPUs (each capped at max_memory), or its CPU where it has none."""
    if not torch.cuda.is_available():
        return [one_device("cpu")]
    return [one_device(f"cuda:{i}", max_memory) for i in range(torch.cuda.device_count())]


def one_device(name: str, max_memory: int | None = None) -> Device:
    """A named device of this machine ('cpu', 'cuda', 'cuda:1') with its memory."""
    device = torch.device(name)
    if device.type == "cpu":
        return Device("cpu", host_memory())
    if device.type != "cuda" or not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"sweep.device={name}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    index = device.index or 0
    return Device(f"cuda:{index}", min(torch.cuda.get_device_properties(index).total_memory, max_memory or math.inf))


