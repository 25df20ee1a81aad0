"""Hugging Face checkpoints on disk: config, safetensors files, tensor names, shapes, dtypes.

Headers are parsed here (8-byte length + JSON) and data is read with positional reads into
reusable buffers, not through mmap: streaming a 100 GB soup then keeps resident memory flat
(mapped pages would count towards the process's memory as they are touched).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

import torch

from soce.errors import CheckpointError

# Every dtype a safetensors file may name, as torch reads it (the format's sub-byte F4/F6
# types aside: a header naming one is refused by name).
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E4M3FNUZ": torch.float8_e4m3fnuz, "F8_E5M2": torch.float8_e5m2,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz, "F8_E8M0": torch.float8_e8m0fnu, "C64": torch.complex64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """Which file a path held when it was read: a file replaced (renamed over) or rewritten since
    has another inode, size or modification time."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class Checkpoint:
    """A model directory: its config.json and its tensors (in file order); `files`: every file
    read to make it (config, index, weights), as each was when read."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]
    files: dict[Path, tuple] = field(default_factory=dict, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def open_weights(self) -> dict[Path, IO]:
        """Its weight files opened now, each checked to be the file whose header was read: a
        reader of these handles reads this checkpoint, whatever later replaces its files."""
        handles: dict[Path, IO] = {}
        try:
            for file in dict.fromkeys(t.file for t in self.tensors.values()):
                handles[file] = file.open("rb", buffering=0)
                if identity(os.fstat(handles[file].fileno())) != self.files[file]:
                    raise CheckpointError(f"{file} changed after its header was read (another process is writing "
                                          f"{self.path}?): read it again once it is complete")
        except BaseException:
            for h in handles.values():
                h.close()
            raise
        return handles

    def changed(self) -> str | None:
        """Which of its files is no longer the file that was read (None: none)."""
        for file, was in self.files.items():
            try:
                if identity(file.stat()) != was:
                    return f"{file} was replaced or rewritten"
            except FileNotFoundError:
                return f"{file} was removed"
        return None


def read_header(file: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, checked against the file's size."""
    return _read_header(file)[0]


def _read_header(file: Path) -> tuple[dict[str, TensorInfo], tuple]:
    """read_header, with the identity of the file it read."""
    try:
        with file.open("rb") as f:
            seen = identity(os.fstat(f.fileno()))
            size = seen[2]
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{file}: truncated safetensors file (no header)")
            (length,) = struct.unpack("<Q", raw)
            if length > size - 8:
                raise CheckpointError(f"{file}: corrupt safetensors header (length {length} past the end of the file)")
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header")
    header.pop("__metadata__", None)
    base, out = 8 + length, {}
    for name, entry in header.items():
        if isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and entry["dtype"] not in DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {entry['dtype']}, which soce cannot read "
                                  f"(it reads {', '.join(DTYPES)})")
        try:
            dtype = DTYPES[entry["dtype"]]
            shape, offsets = list(entry["shape"]), list(entry["data_offsets"])
        except (KeyError, TypeError):
            raise CheckpointError(f"{file}: corrupt safetensors header entry for tensor {name!r}") from None
        if not all(_is_count(d) for d in shape) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise CheckpointError(f"{file}: corrupt safetensors header: tensor {name!r} has shape {shape} and offsets "
                                  f"{offsets} (expected integers >= 0)")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{file}: tensor {name!r} has {end - begin} bytes for shape {shape} {entry['dtype']}")
        out[name] = TensorInfo(name, file, dtype, tuple(shape), base + begin, nbytes)
    # As safetensors itself requires: the tensors' data is contiguous, without overlap or gap,
    # and ends where the file does.
    at = 0
    for t in sorted(out.values(), key=lambda t: (t.start, t.nbytes)):
        if t.start - base != at:
            what = "overlaps the tensor before it" if t.start - base < at else f"leaves a gap of {t.start - base - at} bytes before it"
            raise CheckpointError(f"{file}: corrupt safetensors header: tensor {t.name!r} {what}")
        at += t.nbytes
    if base + at != size:
        if base + at > size:
            raise CheckpointError(f"{file}: truncated: its tensors end at byte {base + at}, the file has {size}")
        raise CheckpointError(f"{file}: corrupt safetensors file: {size - base - at} bytes after its last tensor")
    return out, seen


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def weight_files(path: Path, config: dict) -> tuple[list[str], dict | None]:
    """The safetensors files that hold a model directory's weights, decided as transformers'
    from_pretrained decides (config.json's transformers_weights, then model.safetensors, then
    model.safetensors.index.json), so that soce and transformers always read the same weights.
    Returns the file names and the index's weight_map (None without an index). A file outside
    the directory is refused, and so is a checkpoint that is not safetensors (a pickle)."""
    explicit = config.get("transformers_weights")
    if explicit is not None:
        name = str(explicit)
    elif (path / SINGLE).is_file():
        name = SINGLE
    elif (path / INDEX).is_file():
        name = INDEX
    else:
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        found = f" (it has {', '.join(pickles[:3])}: pickled weights, which soce never loads)" if pickles else ""
        raise CheckpointError(f"model directory {path}: no {SINGLE} or {INDEX}{found}; only safetensors checkpoints are supported")
    if not _inside(path, name):
        raise CheckpointError(f"{path / 'config.json'}: transformers_weights={name!r} is outside the model directory")
    if not name.endswith(INDEX.removeprefix("model")):
        if not name.endswith(".safetensors"):
            raise CheckpointError(f"{path / 'config.json'}: transformers_weights={name!r} is not a safetensors file; "
                                  "only safetensors checkpoints are supported")
        return [name], None
    index = path / name
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = list(dict.fromkeys(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index}: unreadable ({type(err).__name__}: {err})") from None
    for f in files:
        if not isinstance(f, str) or not f.endswith(".safetensors") or not _inside(path, f):
            raise CheckpointError(f"{index}: names {f!r}, which is not a safetensors file in the model directory: "
                                  "a model's weights are its own files")
    return files, weight_map


def _inside(directory: Path, name: str) -> bool:
    """`name` is a file in `directory` itself (no '..', no absolute path, no link leading out)."""
    target = (directory / name).resolve()
    return not Path(name).is_absolute() and ".." not in Path(name).parts and target.parent == directory.resolve()


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Inspect a model directory without reading any tensor data."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path}: not found")
    config_file = path / "config.json"
    seen: dict[Path, tuple] = {}
    try:
        with config_file.open("rb") as f:
            seen[config_file] = identity(os.fstat(f.fileno()))
            config = json.loads(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"model directory {path}: no config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file}: unreadable ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_file}: not a model config (a JSON object)")
    files, weight_map = weight_files(path, config)
    if weight_map is not None and (path / INDEX).is_file():
        seen[path / INDEX] = identity((path / INDEX).stat())
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: {name} is named in its weights index but missing")
        header, seen[file] = _read_header(file)
        for t in sorted(header.values(), key=lambda t: t.start):
            if t.name in tensors:
                raise CheckpointError(f"{path}: tensor {t.name!r} is in both {tensors[t.name].file.name} and {name}")
            tensors[t.name] = t
    if weight_map is not None and set(weight_map) != set(tensors):
        diff = sorted(set(weight_map) ^ set(tensors))
        raise CheckpointError(f"{path / INDEX}: its weight_map and the files disagree on {diff[:3]}")
    return Checkpoint(path, config, tensors, seen)


def check_soupable(models: dict[str, str | Path]) -> None:
    """The pool's models (name -> directory) can be souped together: the same architecture,
    vocabulary, tensor names and shapes, read from their configs and safetensors headers alone;
    a model that cannot is refused by name before any is evaluated."""
    if len(models) < 2:
        return
    try:
        check_compatible([open_checkpoint(d) for d in models.values()])
    except CheckpointError as err:
        text = str(err)
        for name, d in models.items():
            text = text.replace(str(d), f"pool model {name!r} ({d})")
        raise CheckpointError(f"the pool's models cannot be souped together: {text}. A pool is fine-tunes of one base model "
                              "(one architecture and tokenizer): leave the odd one out of pool.models") from None


def check_compatible(checkpoints: Sequence[Checkpoint], allow_vocab_mismatch: bool = False) -> str | None:
    """Same architecture, tensor names, shapes and vocabulary, floating-point tensors only; names
    the first model and tensor that differ. Returns what differs in dtype (allowed), or None."""
    ref = checkpoints[0]
    for key in ("architectures", "model_type"):
        for ck in checkpoints[1:]:
            if ck.config.get(key) != ref.config.get(key):
                raise CheckpointError(f"{ck.path}: {key} {ck.config.get(key)} differs from {ref.path}'s {ref.config.get(key)}")
    for ck in checkpoints[1:]:
        if ck.config.get("vocab_size") != ref.config.get("vocab_size") and not allow_vocab_mismatch:
            raise CheckpointError(
                f"{ck.path}: vocab_size {ck.config.get('vocab_size')} differs from {ref.path}'s {ref.config.get('vocab_size')}"
                " (the tokenizers differ: their embeddings cannot be averaged row by row)")
        missing = [n for n in ref.tensors if n not in ck.tensors]
        extra = [n for n in ck.tensors if n not in ref.tensors]
        if missing or extra:
            what = f"lacks tensor {missing[0]!r}" if missing else f"has extra tensor {extra[0]!r}"
            raise CheckpointError(f"{ck.path}: {what} (compared with {ref.path})")
        for name, t in ref.tensors.items():
            if ck.tensors[name].shape != t.shape:
                raise CheckpointError(f"{ck.path}: tensor {name!r} has shape {list(ck.tensors[name].shape)}, {ref.path} has {list(t.shape)}")
    mixed = []
    for ck in checkpoints:
        for name, t in ck.tensors.items():
            if not t.dtype.is_floating_point:
                raise CheckpointError(f"{ck.path}: tensor {name!r} is {DTYPE_NAMES[t.dtype]}: only floating-point tensors can be averaged")
            if t.dtype != ref.tensors[name].dtype:
                mixed.append((ck, name, t.dtype))
    if not mixed:
        return None
    ck, name, dtype = mixed[0]
    return (f"the models' dtypes differ: tensor {name!r} is {DTYPE_NAMES[dtype]} in {ck.path} and "
            f"{DTYPE_NAMES[ref.tensors[name].dtype]} in {ref.path}" + (f" ({len(mixed) - 1} more such tensors)" if len(mixed) > 1 else ""))


class TensorReader:
    """Reads rows of tensors with positional reads into one reusable buffer."""

    def __init__(self, capacity: int, files: dict[Path, IO] | None = None) -> None:
        """files: handles opened already (Checkpoint.open_weights), read instead of their paths."""
        self.buffer = torch.empty(capacity, dtype=torch.uint8)
        self.files: dict[Path, IO] = dict(files or {})

    def read(self, t: TensorInfo, row_start: int = 0, row_end: int | None = None) -> torch.Tensor:
        """Rows [row_start, row_end) of `t` (dim 0), as a view of the buffer (valid until the next read)."""
        row_numel = math.prod(t.shape[1:]) if t.shape else 1
        rows = (t.shape[0] if t.shape else 1) if row_end is None else row_end
        begin, end = row_start * row_numel * t.dtype.itemsize, rows * row_numel * t.dtype.itemsize
        view = self.buffer[: end - begin]
        f = self.files.get(t.file)
        if f is None:
            f = self.files[t.file] = t.file.open("rb", buffering=0)
        f.seek(t.start + begin)
        got = f.readinto(memoryview(view.numpy()))
        if got != end - begin:
            raise CheckpointError(f"{t.file}: truncated while reading tensor {t.name!r}")
        shape = ((rows - row_start), *t.shape[1:]) if t.shape else ()
        return view.view(t.dtype).view(shape)

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()
