"""The memory plan of a study's models from its `sweep` settings: the devices one process places
its live model on (this machine's, or those sweep.devices names), the experts' home, the
allowances; no weight is read."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from soce.errors import ConfigError
from soce.merge.linear import parse_size
from soce.placement.devices import host_memory, one_device, parse_devices, visible_devices
from soce.placement.memory import MemoryPlan, model_shape, plan_memory
from soce.pool import Candidate


def sweep_devices(sweep: DictConfig, device: str | None = None, planning: bool = False) -> tuple[list, int]:
    """The devices one process places its live model on, and the number of processes, each with
    its own copy (under `accelerate launch`, one device each: `device`). planning: for another
    machine (stage=plan), whose GPUs need not be here."""
    import torch

    cap = parse_size(sweep.max_memory, "sweep.max_memory") if sweep.max_memory else None
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    other_machine = planning and sweep.devices  # its devices, whatever sweep.device says of this one's
    if (device or sweep.device) and not other_machine:  # this process's device under accelerate launch, or the one asked for
        return [one_device(device or sweep.device, cap)], processes
    if sweep.devices:
        devices = [replace(d, memory=min(d.memory, cap or d.memory)) for d in parse_devices(sweep.devices)]
        if not planning and devices[0].is_gpu and len(devices) > torch.cuda.device_count():
            raise ConfigError(f"sweep.devices={sweep.devices} names {len(devices)} GPUs; this machine has "
                              f"{torch.cuda.device_count()} (stage=plan plans for another machine)")
        return devices, processes
    return visible_devices(cap), processes


def memory_plan(sweep: DictConfig, models: list[Candidate], *, device: str | None = None, n_experts: int | None = None,
                stream: bool = False, planning: bool = False) -> MemoryPlan:
    """Where the live model (the first of `models`) and the experts (`models`; n_experts=0: a
    model evaluated alone, in its own dtype) go on this process's devices, from the models'
    configs and headers. A pool of experts in different dtypes is refused unless sweep.dtype
    names one for all."""
    import torch

    from soce.merge import open_checkpoint
    from soce.merge.checkpoint import check_compatible

    dtype = getattr(torch, sweep.dtype.value) if sweep.dtype and n_experts != 0 else None
    local = [c.path for c in models if c.path and any(Path(c.path).glob("*.safetensors"))]
    if len(local) == len(models):  # weights here: their headers say their dtypes
        checkpoints = [open_checkpoint(p) for p in local]
        mixed = check_compatible(checkpoints)
        if mixed and dtype is None:
            raise ConfigError(f"{mixed}: the live model would take {models[0].name}'s dtypes and the experts keep theirs; "
                              "set sweep.dtype (bfloat16, float32) to hold the live model and every expert in one dtype")
        largest = max(checkpoints[0].tensors.values(), key=lambda t: t.nbytes)
        dtype = dtype or largest.dtype
    devices, processes = sweep_devices(sweep, device, planning)
    cap = parse_size(sweep.max_memory, "sweep.max_memory") if sweep.max_memory else None
    host = (parse_size(sweep.host_memory, "sweep.host_memory") if sweep.host_memory
            else None if planning and sweep.devices else host_memory())
    try:
        shape = model_shape(models[0].path or models[0].hub_id, dtype, models[0].architecture)
    except ConfigError as err:
        raise ConfigError(f"sweep: {err}") from None
    return plan_memory(shape, len(models) if n_experts is None else n_experts, devices,
                       experts_at="disk" if stream else "host" if sweep.offload else "device", processes=processes,
                       tokens=sweep.tokens, host_memory=host,
                       activations=parse_size(sweep.activations, "sweep.activations") if sweep.activations else None,
                       node=visible_devices(cap) if processes > 1 and not planning else None)


def vllm_memory_plan(sweep: DictConfig, models: list[Candidate], *, planning: bool = False):
    """The vllm engine's plan for `models` (the live model's shape, every one an expert) on the
    devices sweep.devices names (or this machine's): its tensor-parallel workers and what each
    holds."""
    import torch

    from soce.placement.vllm_plan import plan_vllm

    devices, _ = sweep_devices(sweep, None, planning)
    dtype = getattr(torch, sweep.dtype.value) if sweep.dtype else None
    try:
        shape = model_shape(models[0].path or models[0].hub_id, dtype, models[0].architecture)
    except ConfigError as err:
        raise ConfigError(f"sweep: {err}") from None
    host = (parse_size(sweep.host_memory, "sweep.host_memory") if sweep.host_memory
            else None if planning and sweep.devices else host_memory())
    return plan_vllm(shape, len(models), devices, tensor_parallel_size=sweep.vllm.tensor_parallel_size,
                     utilization=sweep.vllm.gpu_memory_utilization, experts=str(sweep.vllm.experts), tokens=sweep.tokens,
                     kv_cache_gb=sweep.vllm.kv_cache_gb, host_memory=host,
                     activations=parse_size(sweep.activations, "sweep.activations") if sweep.activations else None)
