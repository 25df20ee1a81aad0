"""The memory plan of the vllm engine, made before any weight is read: its tensor-parallel
workers (one per GPU, or CPU workers on a CPU), what each holds (its shard of the model's
weights, the KV cache, an activation allowance, its shard of each expert) and what the host
holds; and, where it does not fit, the settings that would make it fit, each with its figure.

vLLM takes `gpu_memory_utilization` of each GPU for its weights, activations and KV cache; the
experts' shards a worker captures (sweep.vllm.experts=shards) live in the rest. With
sweep.vllm.experts=files they stay in their files (the host's page cache holds them once for
every worker) and each push streams one tensor of each expert at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from soce.placement.devices import GPU_OVERHEAD, MAX_GPUS, Device, gb
from soce.placement.memory import ModelShape
from soce.progress import plural


@dataclass(frozen=True)
class Worker:
    """One tensor-parallel worker's device and what it holds, in bytes."""

    device: Device
    weights: int
    kv_cache: int
    activations: int
    experts: int
    overhead: int
    utilization: float  # vLLM's share of the device (a GPU's); on a CPU, the KV cache is set in GiB

    @property
    def engine(self) -> int:
        """vLLM's own: weights, activations, KV cache."""
        return self.weights + self.kv_cache + self.activations

    @property
    def share(self) -> int:
        """What vLLM takes of the device: gpu_memory_utilization of a GPU (at least its own needs)."""
        return max(self.engine, int(self.utilization * self.device.memory)) if self.device.is_gpu else self.engine

    @property
    def total(self) -> int:
        return self.share + self.experts + self.overhead

    @property
    def fits(self) -> bool:
        if not self.device.is_gpu:
            return True  # a CPU's workers share the host's memory: the plan checks the host
        return (self.engine <= self.utilization * self.device.memory
                and self.experts + self.overhead <= (1 - self.utilization) * self.device.memory)


@dataclass
class VllmPlan:
    shape: ModelShape
    n_experts: int
    experts: str  # shards | files
    tensor_parallel_size: int
    workers: list[Worker]
    host: int  # the host memory the plan needs: a CPU's workers, or the experts' files in the page cache
    host_memory: int | None
    tokens: int
    fixes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(w.fits for w in self.workers) and not (self._host_over and self._host_required)

    @property
    def _host_over(self) -> bool:
        return self.host_memory is not None and self.host > self.host_memory

    @property
    def _host_required(self) -> bool:
        """The host must hold `host`: not so for a GPU engine's experts in their files (page cache only)."""
        return not (self.experts == "files" and self._gpu)

    @property
    def _gpu(self) -> bool:
        return self.workers[0].device.is_gpu

    def text(self) -> str:
        count = f"{self.shape.numel / 1e9:.2f}B" if self.shape.numel >= 1e9 else f"{self.shape.numel / 1e6:.2f}M"
        where = ("each worker holds its shard of each in its model's layout, every soup written in place"
                 if self.experts == "shards" else "they stay in their files, every soup streamed through vLLM's reload")
        lines = [f"vllm plan: {self.shape.source}, {count} parameters in {str(self.shape.dtype).removeprefix('torch.')} "
                 f"({gb(self.shape.nbytes)}), {plural(self.n_experts, 'expert')}: {where}; {self.tokens} tokens in flight",
                 f"  tensor parallel: {plural(self.tensor_parallel_size, 'worker')}"
                 + (f", one per GPU (sweep.vllm.gpu_memory_utilization={self.workers[0].utilization:g}: vLLM's share)"
                    if self._gpu else " on the CPU" + (", each on cores of its own" if self.tensor_parallel_size > 1 else "")),
                 f"  {'worker':<8} {'memory':>9} {'vLLM':>9} {'weights':>9} {'KV cache':>9} {'activ.':>9} {'experts':>9} "
                 f"{'other':>9} {'total':>9}"]
        for i, w in enumerate(self.workers):
            lines.append(f"  {w.device.name if self._gpu else f'cpu #{i}':<8} {gb(w.device.memory) if self._gpu else '':>9} "
                         f"{gb(w.share):>9} {gb(w.weights):>9} {gb(w.kv_cache):>9} {gb(w.activations):>9} {gb(w.experts):>9} "
                         f"{gb(w.overhead):>9} {gb(w.total):>9}{'' if w.fits else '  DOES NOT FIT'}")
        lines.append("  (vLLM: its share of the device, holding the weights, the activations and a KV cache of at least the "
                     "tokens in flight)" if self._gpu else "  (vLLM: the weights, the activations and the KV cache, "
                     "sweep.vllm.kv_cache_gb)")
        limit = "" if self.host_memory is None else f" of {gb(self.host_memory)}"
        what = ("the workers" if not self._gpu else "the experts' files in the page cache, read at each push"
                if self.experts == "files" else "the experts' files, read once at capture")
        lines.append(f"  host: {gb(self.host)}{limit}: {what}"
                     + ("" if not self._host_over else "  DOES NOT FIT" if self._host_required else
                        "  (more than the host: each push reads them from disk)"))
        if not self.fits:
            lines.append("  it does not fit; what would make it fit:")
            lines += [f"    {fix}" for fix in self.fixes] or ["    nothing soce can change: a smaller pool or bigger devices"]
        return "\n".join(lines)

    def table(self) -> tuple[list[str], list[list]]:
        columns = ["worker", "memory_gb", "vllm_gb", "weights_gb", "kv_cache_gb", "activations_gb", "experts_gb", "other_gb", "total_gb",
                   "fits"]
        rows = [[w.device.name if self._gpu else f"cpu #{i}", *(round(v / 1e9, 3) for v in (
            w.device.memory, w.share, w.weights, w.kv_cache, w.activations, w.experts, w.overhead, w.total)), w.fits]
            for i, w in enumerate(self.workers)]
        rows.append(["host", round((self.host_memory or 0) / 1e9, 3), 0, 0, 0, 0, 0, 0, round(self.host / 1e9, 3),
                     self.fits])
        return columns, rows


def plan_vllm(shape: ModelShape, n_experts: int, devices: list[Device], *, tensor_parallel_size: int | None,
              utilization: float, experts: str = "shards", tokens: int, kv_cache_gb: int = 1,
              host_memory: int | None = None, activations: int | None = None) -> VllmPlan:
    """The engine's workers over `devices` (a node's GPUs, or its CPU), `n_experts` experts of
    `shape`; tensor_parallel_size None: 1 on a CPU, on GPUs the fewest that fit."""
    args = dict(shape=shape, n_experts=n_experts, devices=devices, utilization=utilization, experts=experts,
                tokens=tokens, kv_cache_gb=kv_cache_gb, host_memory=host_memory, activations=activations)
    if tensor_parallel_size is None:
        sizes = _sizes(shape, devices)
        tensor_parallel_size = next((tp for tp in sizes if _place(**args, tp=tp).fits), sizes[-1])
    plan = _place(**args, tp=tensor_parallel_size)
    if not plan.fits:
        plan.fixes = _fixes(args, plan)
    return plan


def _sizes(shape: ModelShape, devices: list[Device]) -> list[int]:
    """Tensor-parallel sizes vLLM takes for this model on these devices: divisors of its heads (and
    KV heads), at most the GPUs (on a CPU, 1: more workers share the same memory)."""
    if not devices[0].is_gpu:
        return [1]
    return [tp for tp in range(1, len(devices) + 1) if shape.heads % tp == 0 and shape.kv_heads % tp == 0] or [1]


def _place(shape: ModelShape, n_experts: int, devices: list[Device], utilization: float, experts: str, tokens: int,
           kv_cache_gb: int, host_memory: int | None, activations: int | None, tp: int) -> VllmPlan:
    size = shape.dtype.itemsize
    weights = -(-shape.nbytes // tp)  # every layer split; the norms' few MB counted as split too
    layers = sum(b.layer for b in shape.blocks)
    on_gpu = devices[0].is_gpu
    kv = tokens * layers * shape.kv_per_token * size // tp if on_gpu else kv_cache_gb * 2**30
    act = activations if activations is not None else tokens * (2 * shape.intermediate // tp + 2 * shape.hidden) * size
    held = n_experts * weights if experts == "shards" else 0
    if on_gpu:
        workers = [Worker(d, weights, kv, act, held, GPU_OVERHEAD, utilization) for d in devices[:tp]]
        host = n_experts * shape.nbytes  # the experts' files: read once at capture, or at every push from the page cache
    else:
        workers = [Worker(devices[0], weights, kv, act, held, 0, 1.0) for _ in range(tp)]
        host = sum(w.total for w in workers)
    memory = host_memory if on_gpu else devices[0].memory
    return VllmPlan(shape, n_experts, experts, tp, workers, host, memory, tokens)


def _fixes(args: dict, plan: VllmPlan) -> list[str]:
    """Settings that would make the plan fit, each with its figure."""
    shape, devices, tp = args["shape"], args["devices"], plan.tensor_parallel_size
    out = []
    if devices[0].is_gpu:
        worker = plan.workers[0]
        share = (worker.engine + 0.5e9) / worker.device.memory  # vLLM's own, with a little room
        if share < 1 and _place(**{**args, "utilization": round(share + 0.005, 2)}, tp=tp).fits:
            out.append(f"sweep.vllm.gpu_memory_utilization={round(share + 0.005, 2):g}: vLLM's weights, activations and KV "
                       f"cache ({gb(worker.engine)}) in that share, the experts' shards ({gb(worker.experts)}) in the rest")
        more = next((t for t in _sizes(shape, devices) if t > tp and (p := _fit_any_share(args, t))), None)
        if more:
            out.append(f"sweep.vllm.tensor_parallel_size={more}: each worker's shards a {more}th of each tensor"
                       f" (with sweep.vllm.gpu_memory_utilization={p.workers[0].utilization:g})")
    if args["experts"] == "shards" and _place(**{**args, "experts": "files"}, tp=tp).fits:
        out.append(f"sweep.vllm.experts=files: the experts ({gb(args['n_experts'] * shape.nbytes)}) stay in their files, "
                   "read at each push (slower pushes)")
    fewer = next((k for k in range(args["n_experts"] - 1, 1, -1) if _fit_any_share({**args, "n_experts": k}, tp)), None)
    if fewer:
        out.append(f"selection.max_experts={fewer}: {fewer} experts fit")
    if devices[0].is_gpu:
        gpus = next((k for k in range(len(devices) + 1, MAX_GPUS + 1) if shape.heads % k == 0 and shape.kv_heads % k == 0
                     and _fit_any_share({**args, "devices": [Device(f"cuda:{i}", devices[0].memory) for i in range(k)]}, k)),
                    None)
        if gpus:
            out.append(f"sweep.devices={gpus}x{devices[0].memory / 1e9:g}GB: {gpus} such GPUs, a worker on each")
    if devices[0].is_gpu and args["tokens"] > 4096 and _fit_any_share({**args, "tokens": args["tokens"] // 4}, tp):
        out.append(f"sweep.tokens={args['tokens'] // 4}: a smaller KV cache (fewer sequences in flight)")
    return out


def _fit_any_share(args: dict, tp: int) -> VllmPlan | None:
    """The plan at `tp` with the GPU share that fits it, if one does (the given share first)."""
    for utilization in (args["utilization"], *(u / 100 for u in range(95, 4, -5))):
        plan = _place(**{**args, "utilization": utilization}, tp=tp)
        if plan.fits:
            return plan
    return None


def fewest_workers(model: str, settings) -> int:
    """The engine's tensor-parallel size on this machine's GPUs when none is set: the fewest that
    hold the model (its weights and KV cache in vLLM's share), else all of them."""
    from soce.placement.devices import DEFAULT_TOKENS, visible_devices
    from soce.placement.memory import model_shape

    shape = model_shape(model)
    if settings.dtype:
        import torch

        shape = replace(shape, dtype=getattr(torch, settings.dtype))
    devices = visible_devices()
    return plan_vllm(shape, 0, devices, tensor_parallel_size=None, utilization=settings.gpu_memory_utilization,
                     tokens=DEFAULT_TOKENS).tensor_parallel_size
