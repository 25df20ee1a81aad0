"""Read an offline W&B run file (run-*.wandb) back, to check what soce logged.

The file is W&B's LevelDB-style log (a 7-byte header, then 32 KiB blocks of records, each
with a 7-byte header: crc32, length, type) of protobuf `Record`s.
"""

from __future__ import annotations

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, out, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def run_record(path: Path) -> pb.RunRecord:
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def logged_keys(path: Path, full: bool = False) -> set[str]:
    """The keys logged through run.log (tables, images, metrics): top-level ('sweep' for
    'sweep/dev/objective'), or whole with full=True."""
    keys = set()
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            keys.update(item.key or "/".join(item.nested_key) for item in r.history.item)
    return keys if full else {k.split("/")[0] for k in keys}
