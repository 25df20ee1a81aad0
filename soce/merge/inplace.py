"""In-place souping for sweeps: the experts' tensors are loaded once onto a device, and each
weight vector's soup is written straight into the parameters of one live model: no disk,
no model re-load, one pass over the experts' memory per point.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import torch

from soce.errors import CheckpointError
from soce.merge.checkpoint import TensorReader, check_compatible, open_checkpoint
from soce.merge.linear import check_weights, weighted_sum_into
from soce.threads import torch_threads

CPU_CHUNK = 1 << 20  # float32 elements the in-place soup sums at a time on a CPU (the memory plan counts them)

log = logging.getLogger(__name__)



class InPlaceSoup:
    """Writes sum_i w_i * expert_i into `model`'s parameters for any weights w.

    Each expert's tensor is kept on the device of the parameter it is souped into, so a model
    dispatched over several GPUs soups each GPU's layers on that GPU (kernels of different
    devices run concurrently; no tensor moves between devices). Tied parameters
    (tie_word_embeddings) are one parameter in the model and are written once.
    Where the experts are:
      - default: on the parameters' devices (memory: the experts' tensors in their own dtype, plus
        two float32 buffers per device: 4 MiB each on CPU, the largest tensor on a GPU);
      - offload=True (a GPU model): in pinned CPU memory, each tensor copied to its device when souped;
      - stream=True: on disk, read piece by piece at every soup (memory: one buffer-sized piece
        per expert; for a soup evaluated once, such as the uniform soup of a whole pool).
    """

    def __init__(self, model: torch.nn.Module, experts: Sequence[str | Path], *, allow_nonfinite: bool = False,
                 offload: bool = False, stream: bool = False, dtype: torch.dtype | None = None) -> None:
        """dtype: the experts' tensors held (or read) in this dtype; default: their own."""
        checkpoints = [open_checkpoint(p) for p in experts]
        check_compatible(checkpoints)
        self.model = model
        self.n_experts = len(checkpoints)
        self.allow_nonfinite, self.stream, self.dtype = allow_nonfinite, stream, dtype
        params = dict(model.named_parameters())  # a tied parameter appears once
        check_parameters(params, checkpoints[0])
        # offload: the experts stay in CPU memory (pinned, for fast copies) and each tensor is
        # copied to its device when it is souped; the devices then hold only the model.
        self.offload = offload and not stream and any(p.device.type != "cpu" for p in params.values())
        self.names = {p: name for name, p in params.items()}
        self.infos = {p: [ck.tensors[name] for ck in checkpoints] for name, p in params.items()}
        # Two float32 buffers per device. On CPU, 4 MiB of float32 at a time, so that the
        # arithmetic stays in cache (3x faster than whole tensors, measured); a GPU takes whole
        # tensors, one kernel each. A streamed piece is whole rows: at least one row long.
        self.buffers: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        for device in {p.device for p in params.values()}:
            numel = max(p.numel() for p in params.values() if p.device == device)
            size = min(numel, CPU_CHUNK) if device.type == "cpu" else numel
            if stream:
                size = max(size, *(_row(i) for p, infos in self.infos.items() if p.device == device for i in infos))
            self.buffers[device] = (torch.empty(size, dtype=torch.float32, device=device),
                                    torch.empty(size, dtype=torch.float32, device=device))
        largest = max(t.nbytes for ck in checkpoints for t in ck.tensors.values())
        piece = max(b.numel() for b, _ in self.buffers.values()) * max(i.dtype.itemsize for infos in self.infos.values() for i in infos)
        # the experts' files are held open from here: every soup reads the models that were checked
        self.readers = [TensorReader(min(largest, piece), ck.open_weights()) for ck in checkpoints] if stream else None
        self.held: dict[torch.nn.Parameter, list[torch.Tensor]] = {}  # the experts' tensors, unless streamed
        if not stream:
            reader = TensorReader(largest, {f: h for ck in checkpoints for f, h in ck.open_weights().items()})
            try:
                for p, infos in self.infos.items():
                    storage = torch.device("cpu") if self.offload else p.device
                    tensors = [self._checked(reader.read(info).to(storage, dtype or info.dtype, copy=True), info) for info in infos]
                    self.held[p] = [t.pin_memory() for t in tensors] if self.offload else tensors
            finally:
                reader.close()
        # parameters of a narrower range than the experts' (float16 from float32) can overflow
        self.narrowing = {p for p, infos in self.infos.items() if not allow_nonfinite and p.dtype.is_floating_point
                          and torch.finfo(p.dtype).max < max(torch.finfo(dtype or i.dtype).max for i in infos)}

    def _checked(self, t: torch.Tensor, info) -> torch.Tensor:
        return t if self.allow_nonfinite else finite(t, info)

    @property
    def nbytes(self) -> int:
        """Bytes of expert tensors read per soup."""
        return sum(i.nbytes for infos in self.infos.values() for i in infos)

    def _pieces(self):
        """The soup's work in pieces of at most a buffer: (parameter, start, end, the experts'
        elements [start, end) of it, flat, on its device)."""
        for p, infos in self.infos.items():
            size = self.buffers[p.device][0].numel()
            if self.stream:  # whole rows read from disk, as many as fit a buffer
                row, rows = _row(infos[0]), infos[0].shape[0] if infos[0].shape else 1
                step = max(1, size // row)
                for first in range(0, rows, step):
                    last = min(first + step, rows)
                    yield p, first * row, last * row, [
                        self._checked(r.read(info, first, last), info).to(p.device, self.dtype or info.dtype).view(-1)
                        for r, info in zip(self.readers, infos)]
            else:
                tensors = self.held[p]
                if self.offload:
                    tensors = [t.to(p.device, non_blocking=True) for t in tensors]
                flats = [t.view(-1) for t in tensors]
                for start in range(0, p.numel(), size):
                    end = min(start + size, p.numel())
                    yield p, start, end, [t[start:end] for t in flats]

    @torch.no_grad()
    def apply(self, weights: Sequence[float], normalize: bool = False) -> None:
        weights = check_weights(weights, self.n_experts, normalize)
        # memory-bound chunks on the CPU: one thread (see soce.threads); a GPU ignores it
        on_cpu = all(d.type == "cpu" for d in self.buffers)
        with torch_threads(1 if on_cpu else torch.get_num_threads()):
            for p, start, end, parts in self._pieces():
                acc_buffer, scratch_buffer = self.buffers[p.device]
                acc = weighted_sum_into(acc_buffer[: end - start], scratch_buffer[: end - start], parts, weights)
                piece = p.view(-1)[start:end]
                piece.copy_(acc)
                if p in self.narrowing and not torch.isfinite(piece).all():
                    raise CheckpointError(f"the soup of parameter {self.names[p]!r} at weights {list(weights)} overflows the "
                                          f"model's {str(p.dtype).removeprefix('torch.')}: load the model in float32 or bfloat16")

    def close(self) -> None:
        """Close the expert files a streaming soup reads."""
        for r in self.readers or ():
            r.close()


def finite(t: torch.Tensor, info) -> torch.Tensor:
    """`t`, the checkpoint tensor `info` names, refused where it holds NaN or Inf."""
    if not torch.isfinite(t).all():
        raise CheckpointError(f"{info.file.parent}: tensor {info.name!r} has NaN or Inf values")
    return t


def _row(info) -> int:
    """Elements in one row (dim 0) of a checkpoint tensor."""
    return math.prod(info.shape[1:]) if info.shape else 1


def check_parameters(params: dict[str, torch.nn.Parameter], ref) -> None:
    """Every parameter of the live model is in memory and matches the checkpoint's tensor."""
    for name, p in params.items():
        if p.device.type == "meta":
            raise CheckpointError(f"model parameter {name!r} is on the meta device (a device map that offloads it to "
                                  "disk or leaves it unloaded): soce soups only parameters held in memory; give the "
                                  "model more device memory (sweep.max_memory), more devices, or sweep.offload=true")
        if name not in ref.tensors:
            raise CheckpointError(f"model parameter {name!r} is not in {ref.path}")
        if tuple(p.shape) != ref.tensors[name].shape:
            raise CheckpointError(f"model parameter {name!r} has shape {list(p.shape)}, {ref.path} has {list(ref.tensors[name].shape)}")
    unused = [n for n in ref.tensors if n not in params]
    if unused:
        log.info("checkpoint tensors without a model parameter (tied or unused): %s", ", ".join(unused[:5]))
