"""What soce adds to each of vLLM's workers (`worker_extension_cls`): the experts, read once
where the worker lives, and the soup of any weights pushed into the worker's model in place.

Only weights cross processes (`collective_rpc`): the experts are read from their safetensors
files by the worker itself, each soup is computed there (float32 accumulation, the arithmetic
of soce.merge, so a pushed soup equals the one written to disk bit for bit) and handed to
vLLM's own `reload_weights` in checkpoint format: vLLM fuses, slices and repacks as it does
at load time (qkv and gate_up fused, tensor-parallel shards, the CPU's packed linear weights).
"""

from __future__ import annotations

from typing import Sequence

import torch


class SoupWorker:
    """Mixed into vLLM's worker class; `self.model_runner` is the worker's."""

    def soce_hold(self, experts: Sequence[str], dtype: str | None = None) -> str | None:
        """Read the experts' tensors (in `dtype`, default their own) into this worker's memory,
        checked as the hf engine's in-place soup checks them (compatible, finite); returns why
        they cannot be held (the caller raises it), or None."""
        from soce.errors import CheckpointError
        from soce.merge.checkpoint import TensorReader, check_compatible, open_checkpoint
        from soce.merge.inplace import finite

        self.soce_experts = {}
        try:
            checkpoints = [open_checkpoint(p) for p in experts]
            check_compatible(checkpoints)
            largest = max(t.nbytes for ck in checkpoints for t in ck.tensors.values())
            reader = TensorReader(largest, {f: h for ck in checkpoints for f, h in ck.open_weights().items()})
            want = getattr(torch, dtype) if dtype else None
            try:
                self.soce_experts = {name: [finite(reader.read(ck.tensors[name]), ck.tensors[name]).to(
                    want or ck.tensors[name].dtype, copy=True) for ck in checkpoints] for name in checkpoints[0].tensors}
            finally:
                reader.close()
        except CheckpointError as err:
            return str(err)
        return None

    @torch.no_grad()
    def soce_push(self, weights: Sequence[float], repack: bool = True) -> list[str]:
        """Write the soup at `weights` into the model; returns what differs from the soup after
        the push (nothing, when the push took): the tensors the model keeps as given (norms, the
        embedding's first rows), and the layers whose kernels compute with other weights.
        repack=False leaves a tied head as vLLM's reload leaves it (for the check's own test)."""
        from soce.merge.linear import weighted_sum_into

        largest = max(ts[0].numel() for ts in self.soce_experts.values())
        acc, scratch = torch.empty(largest, dtype=torch.float32), torch.empty(largest, dtype=torch.float32)
        expected: dict[str, torch.Tensor] = {}

        def soups():
            for name, tensors in self.soce_experts.items():
                n = tensors[0].numel()
                soup = weighted_sum_into(acc[:n], scratch[:n], [t.reshape(-1) for t in tensors], weights)
                # a copy: vLLM may hold a tensor until its layer's others arrive, and acc is reused
                out = soup.to(tensors[0].dtype, copy=True).reshape(tensors[0].shape)
                if name.endswith("norm.weight") or name.endswith("embed_tokens.weight"):
                    expected[name] = out[:64].clone()
                yield name, out

        self.model_runner.reload_weights(weights_iterator=soups(), is_checkpoint_format=True)
        model = self.model_runner.get_model()
        if repack:
            _repack_tied(model)
        params = dict(model.named_parameters())
        differ = [name for name, want in expected.items()
                  if name in params and not torch.equal(params[name][: len(want)], want.to(params[name].dtype))]
        return differ + _stale_kernels(model)


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
