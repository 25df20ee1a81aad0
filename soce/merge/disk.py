"""Merge to disk: stream every tensor of the experts through a float32 weighted sum into
sharded safetensors files, one chunk of rows at a time.

Memory stays flat as models grow: each shard's header is computed before any data (every
shape and dtype is known), then its tensors are written chunk by chunk. The output is built
in a hidden '.NAME.partial' directory beside it and renamed into place when complete, so an
interrupted merge never leaves a directory at the output path. A merge owns its output path
for its whole life (a lock on '.NAME.lock' beside it): a second merge to the same path is
refused, so an output is always one complete soup or absent. Under `accelerate launch` the
processes split the output shards; the main process holds the lock, writes the index and renames.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
import struct
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from soce.errors import CheckpointError
from soce.locks import lock_open
from soce.merge.checkpoint import DTYPE_NAMES, INDEX, Checkpoint, TensorInfo, TensorReader, check_compatible, open_checkpoint
from soce.merge.linear import check_weights, mergekit_yaml, parse_size, weighted_sum_into
from soce.pool import warn_duplicates
from soce.progress import Progress, plural, size_text
from soce.threads import torch_threads

log = logging.getLogger(__name__)

OUTPUT_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Files besides the weights that make a model directory usable: copied from one expert.
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json")


@dataclass(frozen=True)
class Shard:
    file: str
    tensors: tuple[TensorInfo, ...]  # the first expert's, giving name and shape
    dtypes: tuple[torch.dtype, ...]  # the output dtype of each

    @property
    def nbytes(self) -> int:
        return sum(t.numel * d.itemsize for t, d in zip(self.tensors, self.dtypes))


def plan_shards(ref: Checkpoint, dtype: torch.dtype | None, shard_size: int) -> list[Shard]:
    """Tensors in the first expert's order, grouped into shards of at most shard_size bytes."""
    groups: list[list[tuple[TensorInfo, torch.dtype]]] = [[]]
    size = 0
    for t in ref.tensors.values():
        d = dtype or t.dtype
        nbytes = t.numel * d.itemsize
        if groups[-1] and size + nbytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append((t, d))
        size += nbytes
    n = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{n:05d}.safetensors", tuple(t for t, _ in g), tuple(d for _, d in g)) for i, g in enumerate(groups)]


def shard_header(shard: Shard) -> bytes:
    """The safetensors header (length prefix included), padded so that data starts 8-byte aligned."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t, d in zip(shard.tensors, shard.dtypes):
        nbytes = t.numel * d.itemsize
        header[t.name] = {"dtype": DTYPE_NAMES[d], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class _Streamer:
    """Reads the experts' rows, sums them in float32 on `device`, writes the result."""

    def __init__(self, checkpoints: Sequence[Checkpoint], weights: Sequence[float], device: torch.device,
                 chunk_bytes: int, allow_nonfinite: bool) -> None:
        self.checkpoints, self.weights, self.device = checkpoints, weights, device
        self.allow_nonfinite = allow_nonfinite
        ref = checkpoints[0]
        self.rows = {name: max(1, chunk_bytes // (4 * _row_numel(t))) for name, t in ref.tensors.items()}
        chunk_numel = {n: min(self.rows[n], _nrows(t)) * _row_numel(t) for n, t in ref.tensors.items()}
        in_bytes = max(chunk_numel[n] * max(ck.tensors[n].dtype.itemsize for ck in checkpoints) for n in chunk_numel)
        numel = max(chunk_numel.values())
        self.readers = []  # each checkpoint's files held open from the start: one model read, whatever replaces it
        try:
            for ck in checkpoints:
                self.readers.append(TensorReader(in_bytes, ck.open_weights()))
        except BaseException:
            self.close()
            raise
        self.acc = torch.empty(numel, dtype=torch.float32, device=device)
        self.scratch = torch.empty(numel, dtype=torch.float32, device=device)
        self.out = torch.empty(numel * 4, dtype=torch.uint8)  # the largest output dtype is float32

    def write_tensor(self, f, name: str, dtype: torch.dtype, progress: Progress) -> None:
        ref = self.checkpoints[0].tensors[name]
        step = self.rows[name]
        for start in range(0, _nrows(ref), step):
            end = min(start + step, _nrows(ref))
            chunks = [reader.read(ck.tensors[name], start, end).to(self.device) for ck, reader in zip(self.checkpoints, self.readers)]
            numel = chunks[0].numel()
            acc = weighted_sum_into(self.acc[:numel].view(chunks[0].shape), self.scratch[:numel].view(chunks[0].shape), chunks, self.weights)
            nbytes = numel * dtype.itemsize
            out = self.out[:nbytes].view(dtype).view(acc.shape)
            out.copy_(acc)
            if not self.allow_nonfinite:
                self._check_chunk(name, chunks, acc, out)
            f.write(memoryview(self.out[:nbytes].numpy()))
            progress.update(nbytes)

    def _check_chunk(self, name: str, chunks: Sequence[torch.Tensor], acc: torch.Tensor, out: torch.Tensor) -> None:
        """The soup's values are finite and fit the output dtype. With weights >= 0 summing to 1
        the soup is finite exactly where every input is, and a min and max carry NaN and Inf
        along: one pass over the chunk, not one per input."""
        low, high = (v.item() for v in torch.aminmax(acc))
        if not (math.isfinite(low) and math.isfinite(high)):
            self._check_finite(name, chunks, acc)
        if max(-low, high) > torch.finfo(out.dtype).max and not torch.isfinite(out).all():  # beyond the dtype's range
            at = int(torch.argmax((~torch.isfinite(out)).view(-1).to(torch.uint8)))
            terms = [float(chunk.reshape(-1)[at]) for chunk in chunks]
            largest = max(range(len(terms)), key=lambda i: abs(terms[i]))
            dtype = str(out.dtype).removeprefix("torch.")
            raise CheckpointError(f"the soup of tensor {name!r} has the value {acc.view(-1)[at].item():.6g}, which {dtype} cannot "
                                  f"hold (its largest is {torch.finfo(out.dtype).max:.6g}; the value {terms[largest]:.6g} comes "
                                  f"from {self.checkpoints[largest].path}): merge.dtype=float32 or bfloat16 keeps it")

    def _check_finite(self, name: str, chunks: Sequence[torch.Tensor], acc: torch.Tensor) -> None:
        """Name the input holding NaN or Inf (the sum may also have overflowed on finite values)."""
        for ck, chunk in zip(self.checkpoints, chunks):
            if not torch.isfinite(chunk).all():
                raise CheckpointError(f"{ck.path}: tensor {name!r} has NaN or Inf values (merge.allow_nonfinite=true merges it anyway)")
        if not torch.isfinite(acc).all():
            raise CheckpointError(f"the soup of tensor {name!r} overflows float32")

    def close(self) -> None:
        for r in self.readers:
            r.close()


def _nrows(t: TensorInfo) -> int:
    return t.shape[0] if t.shape else 1


def _row_numel(t: TensorInfo) -> int:
    return math.prod(t.shape[1:]) if len(t.shape) > 1 else 1


def check_output(output: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    out = output.resolve()
    for p in inputs:
        src = p.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise CheckpointError(f"merge.output {output} overlaps the input model directory {p}: write the soup elsewhere")
    if not (output.exists() or output.is_symlink()):
        return
    if not overwrite:
        raise CheckpointError(f"merge.output {output} already exists (merge.overwrite=true replaces it)")
    # overwrite replaces a soup, never whatever else a typo may name
    if output.is_symlink() or not output.is_dir():
        kind = "a symbolic link" if output.is_symlink() else "a file"
        raise CheckpointError(f"merge.output {output} is {kind}, not a soup directory: merge.overwrite=true replaces only "
                              "a soup soce wrote. Remove it yourself, or write the soup elsewhere")
    if not (output / "mergekit.yaml").is_file() and any(output.iterdir()):
        raise CheckpointError(f"merge.output {output} is a directory that is not a soup (no mergekit.yaml): "
                              "merge.overwrite=true replaces only a soup soce wrote. Empty it yourself, or write the soup elsewhere")


@contextmanager
def output_lock(output: Path):
    """Hold '.NAME.lock' beside `output` for the merge's life; refuse if another merge holds it."""
    path = output.parent / f".{output.name}.lock"
    f = lock_open(path, "a+")
    if f is None:
        raise CheckpointError(f"merge.output {output} is being written by another merge (it holds {path}): "
                              "wait for it to finish, or write this soup elsewhere")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiter then locks a new file
        f.close()


def io_error(err: OSError, output: Path) -> CheckpointError:
    """One sentence for a failed read or write: the path and the cause."""
    hint = {errno.ENOSPC: ": free some space, or write the soup elsewhere", errno.EACCES: ": write the soup where you can write",
            errno.EROFS: ": write the soup where you can write"}.get(err.errno or 0, "")
    return CheckpointError(f"the merge to {output} failed: {err.filename or output}: {err.strerror or err}{hint}")


def merge_to_disk(
    models: Sequence[str | Path],
    weights: Sequence[float],
    output: str | Path,
    *,
    dtype: str | None = None,
    shard_size: str | int = "2GB",
    normalize: bool = False,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    allow_vocab_mismatch: bool = False,
    config_from: str | Path | None = None,
    device: str | torch.device | None = None,
    model_ids: Sequence[str] | None = None,
    chunk_bytes: int = 1 << 20,
    progress: bool = True,
    all_processes: bool = True,
) -> Path:
    """Write the soup sum_i weights[i] * models[i] to `output` as a Hugging Face model directory.

    dtype: 'bfloat16' | 'float16' | 'float32' (default: each tensor's dtype in the first model).
    config_from: the model whose config and tokenizer files are copied (default: the first).
    model_ids: how the mergekit YAML beside the soup names the models (default: their paths).
    chunk_bytes: float32 bytes summed at a time; 1 MiB keeps the arithmetic in the CPU's cache
    (measured: 2.7 s for 3 x 1 GiB, against 5.7 s with 64 MiB chunks).
    Under `accelerate launch`, call it from every process: they split the shards (or, with
    all_processes=False, from one process, which writes them all).
    """
    from soce.processes import Processes

    if not models:
        raise CheckpointError("merge.models is empty: name the model directories to average")
    paths = [Path(m) for m in models]
    output = Path(output)
    warn_duplicates(paths, "merge.models", "it is averaged in twice, with the sum of their weights")
    checkpoints = [open_checkpoint(p) for p in paths]
    mixed = check_compatible(checkpoints, allow_vocab_mismatch)
    weights = check_weights(weights, len(paths), normalize)
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise CheckpointError(f"merge.dtype={dtype!r}: expected one of {', '.join(OUTPUT_DTYPES)}")
    if mixed:
        log.warning("%s; the soup stores %s", mixed, f"every tensor as {dtype}" if dtype else
                    f"each tensor as {paths[0]} has it (merge.dtype chooses one)")
    source = Path(config_from) if config_from is not None else paths[0]
    if source.resolve() not in [p.resolve() for p in paths]:
        raise CheckpointError(f"merge.config_from={config_from}: not one of merge.models")
    check_output(output, paths, overwrite)

    state = Processes(alone=not all_processes)
    device = torch.device(device or state.device or "cpu")
    shards = plan_shards(checkpoints[0], OUTPUT_DTYPES.get(dtype), parse_size(shard_size))
    partial = output.parent / f".{output.name}.partial"
    with _claim(output, partial, state, lambda: check_output(output, paths, overwrite)):
        mine = shards[state.rank::state.count]
        if state.count > 1:
            log.info("process %d of %d: %d of the %d shards", state.rank, state.count, len(mine), len(shards))
        started = time.perf_counter()
        try:
            # The arithmetic is memory-bound, in 1 MiB chunks: one thread (scripts/bench_threads.py:
            # two threads stall whenever one is descheduled on a busy machine)
            with torch_threads(1):
                _write_shards(partial, mine, _Streamer(checkpoints, weights, device, chunk_bytes, allow_nonfinite),
                              progress and state.is_main)
        except OSError as err:
            error = io_error(err, output)
        except BaseException as err:  # noqa: BLE001 - tell the other processes, remove the partial output, re-raise
            error = err
        else:
            error = None
        errors = [e for e in state.gather(None if error is None else str(error)) if e is not None]
        if errors:
            if state.is_main:
                shutil.rmtree(partial, ignore_errors=True)
            state.wait()
            if error is not None:
                raise error
            raise CheckpointError(f"merge failed in another process: {errors[0]}")

        if state.is_main:
            try:
                _finish(partial, output, shards, source, weights, model_ids or [str(p) for p in paths],
                        dtype or _dtype_name(shards), overwrite, checkpoints)
            except BaseException as err:
                shutil.rmtree(partial, ignore_errors=True)
                if isinstance(err, OSError):
                    raise io_error(err, output) from None
                raise
            log.info("soup of %d models written to %s (%s, %s) in %.1f s", len(paths), output, plural(len(shards), "shard"),
                     size_text(sum(s.nbytes for s in shards)), time.perf_counter() - started)
        state.wait()
    return output


@contextmanager
def _claim(output: Path, partial: Path, state, check) -> None:
    """The main process locks the output path for the merge's life, checks it again (another
    merge may have written it meanwhile) and makes an empty partial directory; every process
    raises the same error if that fails."""
    with ExitStack() as stack:
        refused = None
        if state.is_main:
            try:
                output.parent.mkdir(parents=True, exist_ok=True)
                stack.enter_context(output_lock(output))
                check()
                shutil.rmtree(partial, ignore_errors=True)  # left by a killed merge (a live one would hold the lock)
                partial.mkdir()
            except CheckpointError as err:
                refused = str(err)
            except OSError as err:
                refused = str(io_error(err, output))
        refused = state.share(refused)
        if refused:
            raise CheckpointError(refused)
        yield


def _write_shards(partial: Path, shards: Sequence[Shard], streamer: _Streamer, progress: bool) -> None:
    try:
        with Progress(sum(s.nbytes for s in shards), "merge", "B", enabled=progress, unit_scale=True) as bar:
            for shard in shards:
                with (partial / shard.file).open("wb") as f:
                    f.write(shard_header(shard))
                    for t, d in zip(shard.tensors, shard.dtypes):
                        streamer.write_tensor(f, t.name, d, bar)
    finally:
        streamer.close()


def _dtype_name(shards: Sequence[Shard]) -> str:
    names = {str(d).removeprefix("torch.") for s in shards for d in s.dtypes}
    return names.pop() if len(names) == 1 else "float32"


def _finish(partial: Path, output: Path, shards: Sequence[Shard], source: Path, weights: Sequence[float],
            model_ids: Sequence[str], dtype: str, overwrite: bool, checkpoints: Sequence[Checkpoint]) -> None:
    """Index, config and tokenizer files, mergekit YAML; then, if every input is still the model
    that was read, the rename into place."""
    index = {"metadata": {"total_size": sum(s.nbytes for s in shards)},
             "weight_map": {t.name: s.file for s in shards for t in s.tensors}}
    (partial / INDEX).write_text(json.dumps(index, indent=2))
    for name in COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, partial / name)
    config = json.loads((partial / "config.json").read_text())
    for key in ("torch_dtype", "dtype"):
        if key in config or key == "dtype":
            config[key] = dtype
    config.pop("transformers_weights", None)  # the soup's weights are its own index, not the source's file
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (partial / "mergekit.yaml").write_text(mergekit_yaml(model_ids, weights, dtype))
    for ck in checkpoints:  # the weights were read from files held open; the config and tokenizer were copied now
        changed = ck.changed()
        if changed:
            raise CheckpointError(f"the merge input {ck.path} changed while the soup was made ({changed}; another merge "
                                  f"with merge.overwrite=true?): the soup would mix two models, so nothing was written to "
                                  f"{output}. Merge again once {ck.path} is complete")
    if output.exists() and overwrite:  # a soup (check_output): set aside, replaced, then removed
        old = output.parent / f".{output.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
        partial.rename(output)
        shutil.rmtree(old)
    elif output.exists() or output.is_symlink():
        raise CheckpointError(f"merge.output {output} appeared while the soup was written (not by soce): it is left as it is")
    else:
        partial.rename(output)
