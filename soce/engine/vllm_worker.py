"""What soce adds to each of vLLM's workers (`worker_extension_cls`): the experts, captured once
in the layout this worker's model computes with, and the soup of any weights written into the
model's own parameters.

Only weights cross processes (`collective_rpc`); each worker reads the experts' safetensors
files itself, with positional reads (the page cache holds each file once for every worker of a
node).

Capture. Each expert is loaded once through vLLM's own `reload_weights`, from its files: vLLM
fuses (qkv, gate_up), slices (this worker's tensor-parallel shard) and pads as it does at load
time. Every layer's tensors are copied at the moment vLLM has loaded them and is about to process
them for its kernels (on a CPU: pack them, dropping the weight); a tensor no kernel processes
(a norm's) is copied after the load. A worker so holds its shard of each expert, never a whole
expert.

Push, in place (`in_place`): each tensor of the soup is the weighted sum of the experts'
captured tensors (float32 accumulation, soce.merge's arithmetic), written into the parameter,
and each layer vLLM processes is processed again (on a CPU, packed again from the soup). At
capture a soup of unequal weights is pushed both ways: a tensor whose in-place sum differs from
what `reload_weights` makes of the merged checkpoint (a loader that is not a linear map of the
weights) sends every push through `reload`.

Push by reload (`reload`): the merged checkpoint streamed from the experts' files tensor by
tensor (never an expert in memory) through `reload_weights`, as the engine did before.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

IN_PLACE, RELOAD = "in_place", "reload"


class SoupWorker:
    """Mixed into vLLM's worker class; `self.model_runner` is the worker's."""

    def soce_hold(self, experts: Sequence[str], dtype: str | None = None, capture: bool = True) -> dict:
        """Capture the experts (model directories; in `dtype`, default their own), checked as the
        hf engine's in-place soup checks them (compatible, finite), and decide how a push goes;
        capture=False: leave them in their files, every push a reload (sweep.vllm.experts=files).
        Returns {"problem": why they cannot be held (the caller raises it) or None, "path":
        in_place | reload, "differ": the tensors that decided reload, "held_bytes": this worker's
        captured bytes}."""
        from soce.errors import CheckpointError
        from soce.merge.checkpoint import check_compatible, open_checkpoint

        self.soce_captured, self.soce_path, self._buffers = [], RELOAD, None
        try:
            self.soce_checkpoints = [open_checkpoint(p) for p in experts]
            check_compatible(self.soce_checkpoints)
            self.soce_dtype = getattr(torch, dtype) if dtype else None
            if not capture:
                for ck in self.soce_checkpoints:  # read once, checked finite, as a capture would
                    _check_finite(ck)
                return {"problem": None, "path": RELOAD, "differ": [], "held_bytes": 0}
            n = len(experts)
            for i in range(n):
                captured: dict[str, torch.Tensor] = {}
                with self._visiting(lambda name, tensor: captured.__setitem__(name, tensor.detach().clone())):
                    self._reload([1.0 if j == i else 0.0 for j in range(n)])
                self.soce_captured.append(captured)
            probe = [(j + 1) / (n * (n + 1) / 2) for j in range(n)]  # unequal weights, none 0, sum 1
            differ: list[str] = []
            with self._visiting(lambda name, tensor: None if torch.equal(self._sum(name, probe), tensor) else differ.append(name)):
                self._reload(probe)
        except CheckpointError as err:
            return {"problem": str(err), "path": RELOAD, "differ": [], "held_bytes": 0}
        if differ:
            self.soce_captured, self.soce_path = [], RELOAD
        else:
            self.soce_path = IN_PLACE
        self._buffers = None
        held = sum(t.nbytes for captured in self.soce_captured for t in captured.values())
        return {"problem": None, "path": self.soce_path, "differ": differ[:8], "held_bytes": held}

    @torch.no_grad()
    def soce_push(self, weights: Sequence[float], repack: bool = True, path: str | None = None) -> list[str]:
        """Write the soup at `weights` into the model (by `path`, default the one decided at
        capture); returns what differs from the soup after the push (nothing, when the push took):
        the tensors the model keeps as given (norms, the embedding's first rows), and the layers
        whose kernels compute with other weights. repack=False leaves a tied head as vLLM's reload
        leaves it (for the check's own test)."""
        model = self.model_runner.get_model()
        if (path or self.soce_path) == IN_PLACE:
            expected = self._write(weights)
        else:
            expected = self._reload(weights)
        if repack:
            _repack_tied(model)
        params = dict(model.named_parameters())
        differ = [name for name, want in expected.items()
                  if name in params and not torch.equal(params[name][: len(want)], want.to(params[name].dtype))]
        return differ + _stale_kernels(model)

    @torch.no_grad()
    def soce_weights(self) -> dict[str, torch.Tensor]:
        """The weights this worker's model computes with, as CPU tensors: each layer's kernel
        applied to the identity (its weight, transposed: what a packed copy holds), every other
        parameter as held. For comparing two pushes tensor for tensor (small models)."""
        model = self.model_runner.get_model()
        out = {}
        for name, module in model.named_modules():
            method = getattr(module, "quant_method", None)
            width = getattr(module, "input_size_per_partition", None)
            if hasattr(method, "apply") and width:
                eye = torch.eye(width, dtype=self.model_runner.model_config.dtype)
                out[f"{name} (kernel)"] = method.apply(module, eye).cpu()
        for name, param in model.named_parameters():
            if param.numel():
                out[name] = param.detach().cpu().clone()
        return out

    def soce_memory(self, reset_peak: bool = False) -> dict:
        """This worker's resident memory and its peak (since it started, or since the last
        reset_peak), in bytes, as Linux counts them (/proc/self/status)."""
        from pathlib import Path

        if reset_peak:
            Path("/proc/self/clear_refs").write_text("5")
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        kb = lambda key: int(fields[key].split()[0]) * 1024  # noqa: E731
        return {"rss": kb("VmRSS"), "peak": kb("VmHWM")}

    # --- the two pushes ------------------------------------------------------------------
    def _write(self, weights: Sequence[float]) -> dict[str, torch.Tensor]:
        """The soup written into the live parameters from the captured experts; each layer vLLM
        processes for its kernels processed again. Returns the first rows of every parameter the
        model keeps as written, to check."""
        model = self.model_runner.get_model()
        modules = dict(model.named_modules())
        expected, processed = {}, {}
        for name in self.soce_captured[0]:
            owner, _, attr = name.rpartition(".")
            module = modules[owner]
            soup = self._sum(name, weights)  # a view of a buffer the next tensor's sum reuses
            live = getattr(module, attr)
            if isinstance(live, torch.Tensor) and live.shape == soup.shape:
                live.data.copy_(soup)
                expected[name] = soup[:64].clone()
            else:  # a weight the kernel dropped when it packed it (a CPU's linear layer): given again
                setattr(module, attr, torch.nn.Parameter(soup.clone(), requires_grad=False))
            if _processes(module):
                processed[owner] = module
        for module in processed.values():
            module.quant_method.process_weights_after_loading(module)
            if hasattr(module, "update_param_tp_status"):
                module.update_param_tp_status()
        kept = dict(model.named_parameters())
        return {n: t for n, t in expected.items() if n in kept and kept[n].shape[0] >= len(t)}

    def _reload(self, weights: Sequence[float]) -> dict[str, torch.Tensor]:
        """The merged checkpoint streamed from the experts' files through vLLM's reload_weights.
        Returns the first rows of the tensors the model keeps as given (norms, the embedding:
        this worker's rows of it), to check."""
        from soce.merge.checkpoint import TensorReader
        from soce.merge.inplace import finite
        from soce.merge.linear import weighted_sum_into

        checkpoints = self.soce_checkpoints
        largest = max(t.numel for t in checkpoints[0].tensors.values())
        acc, scratch = torch.empty(largest, dtype=torch.float32), torch.empty(largest, dtype=torch.float32)
        readers = [TensorReader(max(t.nbytes for t in ck.tensors.values()), ck.open_weights()) for ck in checkpoints]
        expected: dict[str, torch.Tensor] = {}
        offsets = _row_offsets(self.model_runner.get_model())

        def soups():
            for name in checkpoints[0].tensors:
                infos = [ck.tensors[name] for ck in checkpoints]
                dtype = self.soce_dtype or infos[0].dtype
                n = infos[0].numel
                tensors = [finite(reader.read(info), info).reshape(-1) for reader, info in zip(readers, infos)]
                soup = weighted_sum_into(acc[:n], scratch[:n], tensors, weights)
                # a copy: vLLM may hold a tensor until its layer's others arrive, and acc is reused
                out = soup.to(dtype, copy=True).reshape(infos[0].shape)
                if name.endswith("norm.weight") or name.endswith("embed_tokens.weight"):
                    start = offsets.get(name, 0)
                    expected[name] = out[start: start + 64].clone()
                yield name, out

        try:
            self.model_runner.reload_weights(weights_iterator=soups(), is_checkpoint_format=True)
        finally:
            for reader in readers:
                reader.close()
        return expected

    # --- capture ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _visiting(self, visit):
        """While a reload runs: `visit(name, tensor)` for every layer's tensors as vLLM has loaded
        them, before it processes them for its kernels; after it, for every parameter no kernel
        processes."""
        model = self.model_runner.get_model()
        names = {id(m): n for n, m in model.named_modules()}
        seen: set[str] = set()
        wrapped = []

        def visit_before(method):
            def process(layer):
                prefix = names[id(layer)]
                for attr, tensor in layer.named_parameters(recurse=False):
                    seen.add(f"{prefix}.{attr}")
                    visit(f"{prefix}.{attr}", tensor)
                return method(layer)
            return process

        for module in model.modules():
            method = getattr(module, "quant_method", None)
            if _processes(module) and "process_weights_after_loading" not in vars(method):
                method.process_weights_after_loading = visit_before(method.process_weights_after_loading)
                wrapped.append(method)
        try:
            yield
            for name, param in model.named_parameters():  # the tensors no kernel processes
                if name not in seen:
                    visit(name, param)
        finally:
            for method in wrapped:
                del method.process_weights_after_loading

    def _sum(self, name: str, weights: Sequence[float]) -> torch.Tensor:
        """The captured experts' tensor `name` at `weights`, in float32, cast to its dtype: a view
        of a buffer the next call reuses."""
        from soce.merge.linear import weighted_sum_into

        tensors = [captured[name] for captured in self.soce_captured]
        dtype, n = tensors[0].dtype, tensors[0].numel()
        if self._buffers is None:  # made once: a fresh buffer per tensor and push is a page fault per page
            largest = max(t.numel() for t in self.soce_captured[0].values())
            self._buffers = {torch.float32: [torch.empty(largest, dtype=torch.float32, device=tensors[0].device)
                                             for _ in range(2)]}
        if dtype not in self._buffers:
            self._buffers[dtype] = [torch.empty_like(self._buffers[torch.float32][0], dtype=dtype)]
        acc, scratch = self._buffers[torch.float32]
        soup = weighted_sum_into(acc[:n], scratch[:n], [t.reshape(-1) for t in tensors], weights)
        out = soup if dtype == torch.float32 else self._buffers[dtype][0][:n].copy_(soup)  # rounded as .to(dtype) rounds
        return out.view(tensors[0].shape)


def _check_finite(checkpoint) -> None:
    """Every tensor of the checkpoint read once and refused where it holds NaN or Inf."""
    from soce.merge.checkpoint import TensorReader
    from soce.merge.inplace import finite

    reader = TensorReader(max(t.nbytes for t in checkpoint.tensors.values()), checkpoint.open_weights())
    try:
        for info in checkpoint.tensors.values():
            finite(reader.read(info), info)
    finally:
        reader.close()


def _processes(module: torch.nn.Module) -> bool:
    """vLLM processes the module's tensors for its kernels after loading them."""
    from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase

    return isinstance(getattr(module, "quant_method", None), QuantizeMethodBase)


def _row_offsets(model: torch.nn.Module) -> dict[str, int]:
    """The first checkpoint row of this worker's share of a vocabulary-parallel embedding (0
    without tensor parallelism)."""
    offsets = {}
    for name, module in model.named_modules():
        indices = getattr(module, "shard_indices", None)
        if indices is not None:
            offsets[f"{name}.weight"] = indices.org_vocab_start_index
    return offsets


def _layers(model: torch.nn.Module):
    """The modules that compute with a 2-d `weight` through their quant_method (linear layers,
    the embedding, the head), with their names."""
    for name, module in model.named_modules():
        weight, method = getattr(module, "weight", None), getattr(module, "quant_method", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 2 and weight.numel() and hasattr(method, "apply"):
            yield name, module


def _repack_tied(model: torch.nn.Module) -> None:
    """A module whose weight is another's (a head tied to the embedding) is given no tensor of its
    own by a reload, so vLLM does not process it again: on a CPU its packed copy of the weight
    would stay the previous model's. Process it again from the weight it shares."""
    owners: dict[int, str] = {}
    for name, module in _layers(model):
        if id(module.weight) in owners:
            module.quant_method.process_weights_after_loading(module)
        owners.setdefault(id(module.weight), name)


def _stale_kernels(model: torch.nn.Module) -> list[str]:
    """Modules whose kernel computes with other weights than the ones they hold: the identity's
    first rows through the kernel must give the weight's first columns exactly (on a CPU, vLLM
    computes with a packed copy of the weight; a GPU computes with the weight itself)."""
    stale = []
    for name, module in _layers(model):
        w = module.weight
        x = torch.eye(min(8, w.shape[1]), w.shape[1], dtype=w.dtype, device=w.device)
        if not torch.equal(module.quant_method.apply(module, x), x @ w.T):
            stale.append(f"{name} (its kernel's weights)")
    return stale
