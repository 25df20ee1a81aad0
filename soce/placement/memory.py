"""The memory plan of a sweep, made before any weight is read: what each device holds (the live
model's share, the experts' shares, the float32 buffers, an activation allowance), what the host
holds (offloaded experts), and the device map that dispatches the live model over several GPUs.

The model's shape comes from its config alone (an empty model on the meta device): a local
directory or a Hub id's config.json, no weights. Where a pool does not fit, the plan says
which setting would make it fit, with its figure.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from soce.errors import CheckpointError, ConfigError
from soce.merge.inplace import CPU_CHUNK
from soce.placement.devices import DEFAULT_TOKENS, GPU_OVERHEAD, SIZES, Device, gb
from soce.progress import plural

log = logging.getLogger("soce")


# --- the model's shape ----------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """A unit of the device map: a decoder layer, the embedding, the final norm, the head."""

    name: str
    numel: int  # parameters it owns (a tied parameter is owned by its first block)
    largest: int  # numel of its largest parameter
    layer: bool  # a decoder layer (it holds a share of the KV cache)
    tied_to: str | None = None  # a block whose parameters are all another block's: placed with it


@dataclass(frozen=True)
class ModelShape:
    source: str
    dtype: torch.dtype
    blocks: tuple[Block, ...]
    hidden: int
    intermediate: int
    kv_per_token: int  # elements of keys and values one layer caches per token
    heads: int = 1  # attention heads, and key-value heads: a tensor-parallel size divides both
    kv_heads: int = 1

    @property
    def numel(self) -> int:
        return sum(b.numel for b in self.blocks)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def read_config(source: str | Path, architecture: dict | None = None) -> tuple[dict, str]:
    """A model's config.json: a local directory's; else `architecture` (its sizes, as a pool config
    ships them: no network); else a Hub id's (that file only, from the cache or the Hub)."""
    local = Path(source)
    if local.is_dir():
        path = local / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{local}: no config.json (a model directory has one)")
        return json.loads(path.read_text()), str(local)
    if architecture:
        return dict(architecture), f"{source} (the pool config's architecture)"
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(str(source), "config.json", local_files_only=True)).read_text()), str(source)
    except Exception:  # not in the cache
        pass
    log.info("fetching %s's config.json from the Hugging Face Hub (its sizes, for the memory plan)", source)
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retries, one warning each, printed before soce's own line
    try:
        return json.loads(Path(hf_hub_download(str(source), "config.json")).read_text()), str(source)
    except Exception as err:  # offline, gated, missing
        raise CheckpointError(f"{source}: neither a local model directory nor a Hub id whose config.json can be fetched "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Give the pool "
                              f"model a path, or its config.json's sizes as `architecture` in the pool config") from None
    finally:
        hub_log.setLevel(level)


def model_shape(source: str | Path, dtype: torch.dtype | None = None, architecture: dict | None = None) -> ModelShape:
    """The shape of the model at `source` from its config alone (or `architecture`, its sizes as
    the pool config gives them); `dtype`: the live model's, by default the config's (torch_dtype),
    else float32."""
    from transformers import AutoConfig

    raw, where = read_config(source, architecture)
    try:
        config = AutoConfig.for_model(**raw)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{where}/config.json: not a model config transformers knows ({type(err).__name__}: {err})") from None
    _check_sizes(raw, config, where)
    blocks, unique, every = _layout(json.dumps(raw, sort_keys=True))
    if Path(source).is_dir() and any(Path(source).glob("*.safetensors")):
        _check_weights(unique, every, Path(source))
    named = raw.get("torch_dtype") or raw.get("dtype") or "float32"
    dtype = dtype or getattr(torch, named)
    text = getattr(config, "get_text_config", lambda: config)()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelShape(where, dtype, blocks, text.hidden_size, getattr(text, "intermediate_size", 4 * text.hidden_size),
                      2 * kv_heads * head_dim, heads, kv_heads)


@functools.lru_cache(maxsize=8)
def _layout(config_json: str) -> tuple[tuple[Block, ...], int, int]:
    """The blocks of the model a config describes, and its parameters counted once (`unique`)
    and as a state dict holds them (`every`: tied ones twice, persistent buffers too), from an
    empty model on the meta device: built once per config (half a second each)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights(include_buffers=True):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.loads(config_json)))
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    blocks, owner = [], {}

    def visit(prefix: str, module: torch.nn.Module) -> None:
        children = list(module.named_children())
        if type(module).__name__ in no_split or not children or any(True for _ in module.parameters(recurse=False)):
            params = list(module.parameters())
            own = [p for p in params if id(p) not in owner]
            for p in own:
                owner[id(p)] = prefix
            tied = owner[id(params[0])] if params and not own else None
            if params or any(True for _ in module.buffers()):  # a module of buffers only (rotary) is placed too
                blocks.append(Block(prefix, sum(p.numel() for p in own), max((p.numel() for p in params), default=0),
                                    type(module).__name__ in no_split, tied))
            return
        for name, child in children:
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    unique = sum(p.numel() for p in model.parameters())
    every = sum(t.numel() for t in model.state_dict().values())
    return tuple(blocks), unique, every


def _check_sizes(raw: dict, config, where: str) -> None:
    """Each size the plan is made of is in config.json (or its text_config) and a positive integer."""
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    aliases = getattr(type(config), "attribute_map", {}) or {}
    for size in SIZES:
        names = [size, aliases.get(size)]
        value = next((text[n] for n in names if n and n in text), next((raw[n] for n in names if n and n in raw), None))
        if value is None:
            raise CheckpointError(f"{where}/config.json has no {size}: the plan would take transformers' default for it. "
                                  "Give the model's own config.json")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{where}/config.json: {size}={value!r} is not a positive integer. Give the model's own config.json")


def _check_weights(unique: int, every: int, path: Path) -> None:
    """The config's model (`unique` parameters, `every` in its state dict) and the weights beside
    it have the same number of parameters (tied parameters counted once or twice, as a checkpoint
    may store them): a config that does not belong to its weights is refused, never planned."""
    from soce.merge.checkpoint import open_checkpoint

    stored = sum(t.numel for t in open_checkpoint(path).tensors.values())
    if not unique <= stored <= every:
        count = lambda n: f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"  # noqa: E731
        raise CheckpointError(f"{path}/config.json describes a model of {count(unique)} parameters, but the safetensors "
                              f"files beside it hold {count(stored)}: the config does not belong to these weights. "
                              "Give the model's own config.json")


# --- the plan -------------------------------------------------------------------------------
@dataclass
class Share:
    """What one device holds, in bytes."""

    device: Device
    blocks: list[str] = field(default_factory=list)
    model: int = 0
    experts: int = 0
    buffers: int = 0
    activations: int = 0
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.model + self.experts + self.buffers + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.device.memory


@dataclass
class MemoryPlan:
    shape: ModelShape
    n_experts: int
    experts_at: str  # "device" (beside the live model), "host" (pinned: sweep.offload), "disk" (streamed)
    mode: str  # "one device" | "dispatched" | "replicas"
    shares: list[Share]
    host: int  # bytes of experts in pinned host memory
    host_memory: int | None
    processes: int
    tokens: int
    idle: int = 0  # GPUs the plan leaves unused (the model fits one)
    fixes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.shares) and (self.host_memory is None or self.host <= self.host_memory)

    @property
    def device_map(self) -> dict[str, str]:
        """For from_pretrained(device_map=...): each block on its device ('' for one device)."""
        if len(self.shares) == 1:
            return {"": self.shares[0].device.name}
        return {block: s.device.name for s in self.shares for block in s.blocks}

    def text(self) -> str:
        where = {"device": "beside it", "host": "in pinned host memory (sweep.offload)", "disk": "streamed from disk"}
        count = f"{self.shape.numel / 1e9:.2f}B" if self.shape.numel >= 1e9 else f"{self.shape.numel / 1e6:.2f}M"
        head = (f"memory plan: {self.shape.source}, {count} parameters in "
                f"{str(self.shape.dtype).removeprefix('torch.')} ({gb(self.shape.nbytes)}), {plural(self.n_experts, 'expert')} "
                f"{where[self.experts_at]}; {self.tokens} tokens in flight")
        mode = {"one device": "one device", "dispatched": f"the live model dispatched over {len(self.shares)} devices",
                "replicas": f"one copy per process, {self.processes} processes"}[self.mode]
        if self.idle:
            mode += (f" ({self.idle} more GPUs idle: `accelerate launch --num_processes {self.idle + 1} -m soce ...` "
                     "runs one copy per GPU, each on its share of the points)")
        lines = [head, f"  mode: {mode}",
                 f"  {'device':<8} {'memory':>9} {'model':>9} {'experts':>9} {'buffers':>9} {'activ.':>9} {'other':>9} {'total':>9}"]
        for s in self.shares:
            lines.append(f"  {s.device.name:<8} {gb(s.device.memory):>9} {gb(s.model):>9} {gb(s.experts):>9} {gb(s.buffers):>9} "
                         f"{gb(s.activations):>9} {gb(s.overhead):>9} {gb(s.total):>9}{'' if s.fits else '  DOES NOT FIT'}")
        if self.host:
            limit = "" if self.host_memory is None else f" of {gb(self.host_memory)}"
            lines.append(f"  host: {gb(self.host)}{limit}: the experts, pinned"
                         + ("" if self.host_memory is None or self.host <= self.host_memory else "  DOES NOT FIT"))
        if not self.fits:
            lines.append("  it does not fit; what would make it fit:")
            lines += [f"    {fix}" for fix in self.fixes] or ["    nothing soce can change: a smaller pool or bigger devices"]
        return "\n".join(lines)

    def table(self) -> tuple[list[str], list[list]]:
        """The plan as a table (W&B): one row per device, sizes in GB."""
        columns = ["device", "memory_gb", "model_gb", "experts_gb", "buffers_gb", "activations_gb", "other_gb", "total_gb", "fits"]
        rows = [[s.device.name, *(round(v / 1e9, 3) for v in (s.device.memory, s.model, s.experts, s.buffers, s.activations,
                                                              s.overhead, s.total)), s.fits] for s in self.shares]
        if self.host:
            rows.append(["host", round((self.host_memory or 0) / 1e9, 3), 0, round(self.host / 1e9, 3), 0, 0, 0,
                         round(self.host / 1e9, 3), self.host_memory is None or self.host <= self.host_memory])
        return columns, rows

    def check(self) -> None:
        """Refuse a plan that does not fit, naming the fix."""
        if not self.fits:
            raise ConfigError("the sweep does not fit its devices:\n" + self.text())


def plan_memory(shape: ModelShape, n_experts: int, devices: list[Device], *, experts_at: str = "device", processes: int = 1,
                tokens: int = DEFAULT_TOKENS, activations: int | None = None, host_memory: int | None = None,
                node: list[Device] | None = None) -> MemoryPlan:
    """Where the live model and the experts go on `devices` (those of one process, or of each
    process when `processes` > 1: one copy per process). One device when it fits there; else
    the live model is dispatched over all of them, layers split as evenly as their memory allows.
    `node`: the node's GPUs, for the fix of a multi-process launch that does not fit one GPU."""
    if experts_at == "host" and not devices[0].is_gpu:
        experts_at = "device"  # offload from the CPU to the CPU is no offload
    args = dict(shape=shape, n_experts=n_experts, devices=devices, experts_at=experts_at, processes=processes,
                tokens=tokens, activations=activations, host_memory=host_memory)
    plan = _place(**args)
    if not plan.fits:
        plan.fixes = _fixes(args, node)
    return plan


def _place(shape, n_experts, devices, experts_at, processes, tokens, activations, host_memory) -> MemoryPlan:
    def make(mode: str, placed: list[list[Block]]) -> MemoryPlan:
        shares = [_share(shape, n_experts, d, blocks, experts_at, tokens, activations) for d, blocks in zip(devices, placed)]
        host = n_experts * shape.nbytes if experts_at == "host" else 0
        idle = len(devices) - 1 if mode == "one device" else 0
        return MemoryPlan(shape, n_experts, experts_at, mode, shares, host, host_memory, processes, tokens, idle)

    alone = make("replicas" if processes > 1 else "one device", [list(shape.blocks)])
    if alone.fits or processes > 1 or len(devices) == 1:
        return alone
    return make("dispatched", split_blocks(shape, n_experts, devices, experts_at, tokens, activations))


def _share(shape: ModelShape, n_experts: int, device: Device, blocks: list[Block], experts_at: str, tokens: int,
           activations: int | None) -> Share:
    size = shape.dtype.itemsize
    numel = sum(b.numel for b in blocks)
    largest = max((b.largest for b in blocks), default=0)
    share = Share(device, [b.name for b in blocks], model=numel * size)
    # resident experts, or (offloaded, streamed) one piece per expert on the device while it is
    # souped: a whole tensor on a GPU, a 4 MiB chunk on a CPU
    piece = largest if device.is_gpu else min(largest, CPU_CHUNK)
    share.experts = n_experts * (numel if experts_at == "device" else piece) * size
    share.buffers = 2 * 4 * piece  # the in-place soup's two float32 buffers, a piece long
    share.overhead = GPU_OVERHEAD if device.is_gpu else 0
    if activations is not None:
        share.activations = activations
    elif blocks:
        layers = sum(b.layer for b in blocks)
        # the KV cache of its layers, one layer's MLP working set (gate and up projections and the
        # hidden state) on every token in flight
        share.activations = tokens * (layers * shape.kv_per_token + 2 * shape.intermediate + 2 * shape.hidden) * size
    return share


def split_blocks(shape: ModelShape, n_experts: int, devices: list[Device], experts_at: str, tokens: int,
                 activations: int | None) -> list[list[Block]]:
    """Blocks in order over the devices, as evenly as they go: the smallest load level (a share
    of each device's memory) at which filling each device up to it, in order, places every block.
    A tied block goes with the block it is tied to."""
    owned = [b for b in shape.blocks if b.tied_to is None]

    def fill(level: float) -> list[list[Block]] | None:
        placed: list[list[Block]] = [[] for _ in devices]
        d = 0
        for b in owned:
            while placed[d] and _share(shape, n_experts, devices[d], placed[d] + [b], experts_at, tokens,
                                       activations).total > level * devices[d].memory:
                d += 1
                if d == len(devices):
                    return None
            placed[d].append(b)
        return placed

    low, high = 0.0, 1.0
    while fill(high) is None:  # it does not fit: the plan shows by how much
        low, high = high, 2 * high
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (low, mid) if fill(mid) is not None else (mid, high)
    placed = fill(high)
    where = {b.name: i for i, blocks in enumerate(placed) for b in blocks}
    for b in shape.blocks:
        if b.tied_to is not None:
            placed[where[b.tied_to]].append(b)
    return placed


def _fixes(args: dict, node: list[Device] | None) -> list[str]:
    """Settings that would make the plan fit, each with its figure."""
    def fits(**change) -> MemoryPlan | None:
        plan = _place(**{**args, **change})
        return plan if plan.fits else None

    def most(plan: MemoryPlan) -> str:
        return gb(max(s.total for s in plan.shares))

    shape, n, devices = args["shape"], args["n_experts"], args["devices"]
    out = []
    if args["processes"] > 1 and node and node[0].is_gpu and (p := fits(devices=node, processes=1)):
        out.append(f"one process over the node's {len(node)} GPUs (run soce without `accelerate launch`): "
                   f"the live model dispatched, at most {most(p)} per GPU")
    if args["experts_at"] == "device" and devices[0].is_gpu and (p := fits(experts_at="host")):
        out.append(f"sweep.offload=true: the experts ({gb(n * shape.nbytes)}) in pinned host memory, at most {most(p)} per GPU")
    fewer = next((k for k in range(n - 1, 0, -1) if fits(n_experts=k)), None)
    if fewer:
        out.append(f"selection.max_experts={fewer}: {plural(fewer, 'expert')} fit{'s' if fewer == 1 else ''}")
    if shape.dtype == torch.float32 and (p := fits(shape=replace(shape, dtype=torch.bfloat16))):
        out.append(f"sweep.dtype=bfloat16: half the bytes, at most {most(p)} per device")
    if devices[0].is_gpu:
        more = next((k for k in range(len(devices) + 1, 65)
                     if fits(devices=[Device(f"cuda:{i}", devices[0].memory) for i in range(k)], processes=1)), None)
        if more:
            out.append(f"sweep.devices={more}x{devices[0].memory / 1e9:g}GB: {more} such GPUs, the model dispatched over them")
    if args["tokens"] > 4096 and args["activations"] is None and (p := fits(tokens=args["tokens"] // 4)):
        out.append(f"sweep.tokens={args['tokens'] // 4}: fewer tokens in flight (a smaller evaluation batch), at most {most(p)} per device")
    return out
