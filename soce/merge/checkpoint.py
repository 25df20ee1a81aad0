"""Hugging Face checkpoints on disk: config, safetensors files, tensor names, shapes, dtypes.

Headers are parsed here (8-byte length + JSON) and data is read with positional reads into
reusable buffers, not through mmap: streaming a 100 GB soup then keeps resident memory flat
(mapped pages would count towards the process's memory as they are touched).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

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


@dataclass(frozen=True)
class Checkpoint:
    """A model directory: its config.json and its tensors (in file order)."""

    path: Path
    config: dict
    tensors: dict[str, TensorInfo]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def read_header(file: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, checked against the file's size."""
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
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
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{file}: corrupt safetensors header entry for tensor {name!r}") from None
        nbytes = math.prod(shape) * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{file}: tensor {name!r} has {end - begin} bytes for shape {list(shape)} {entry['dtype']}")
        if base + end > size:
            raise CheckpointError(f"{file}: truncated: tensor {name!r} ends at byte {base + end}, the file has {size}")
        out[name] = TensorInfo(name, file, dtype, shape, base + begin, nbytes)
    return out


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Inspect a model directory without reading any tensor data."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path}: not found")
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"model directory {path}: no config.json") from None
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{config_file}: unreadable ({err})") from None
    index = path / INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{index}: unreadable ({err})") from None
        files = list(dict.fromkeys(weight_map.values()))
    elif (path / SINGLE).exists():
        files, weight_map = [SINGLE], None
    else:
        raise CheckpointError(f"model directory {path}: no {SINGLE} or {INDEX} (only safetensors checkpoints are supported)")
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        file = path / name
        if not file.exists():
            raise CheckpointError(f"{path}: {name} is named in {INDEX} but missing")
        for t in sorted(read_header(file).values(), key=lambda t: t.start):
            tensors[t.name] = t
    if weight_map is not None and set(weight_map) != set(tensors):
        diff = sorted(set(weight_map) ^ set(tensors))
        raise CheckpointError(f"{index}: its weight_map and the files disagree on {diff[:3]}")
    return Checkpoint(path, config, tensors)


def check_compatible(checkpoints: Sequence[Checkpoint], allow_vocab_mismatch: bool = False) -> None:
    """Same architecture, tensor names, shapes and vocabulary; names the first model and tensor that differ."""
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
    for name, t in ref.tensors.items():
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{ref.path}: tensor {name!r} is {DTYPE_NAMES[t.dtype]}: only floating-point tensors can be averaged")


class TensorReader:
    """Reads rows of tensors with positional reads into one reusable buffer."""

    def __init__(self, capacity: int) -> None:
        self.buffer = torch.empty(capacity, dtype=torch.uint8)
        self.files: dict[Path, object] = {}

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
