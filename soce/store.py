"""The sweep's results store: one JSON object per evaluated soup, in JSON-lines files in the
study's store directory.

Each record is appended and fsynced before the next point starts, so a killed sweep loses
at most the point in flight; a last line cut short by the kill is dropped when the store is
opened again, and the points already stored are skipped. Nothing else is ever deleted: a line
anywhere else that is not a record (garbage, a hand edit, bytes that are not UTF-8) is moved to
`<file>.rejected` beside the store with its line number, and every record around it is kept.

A store reads every `sweep*.jsonl` file of its directory and appends to its own: `sweep.jsonl`,
or `sweep.shard-K-of-N.jsonl` for shard K of a sweep split N ways (Hydra multirun jobs,
Accelerate processes). Each writer holds an exclusive lock on its file, so two jobs given
the same shard cannot both write it: the second is refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from soce.artifacts import question_differences
from soce.errors import DataError
from soce.locks import lock_open
from soce.weights import key

log = logging.getLogger(__name__)

SHARD_FILE = re.compile(r"sweep\.shard-(\d+)-of-(\d+)\.jsonl$")


def store_file(shard: int | None = None, num_shards: int = 1) -> str:
    return "sweep.jsonl" if shard is None else f"sweep.shard-{shard}-of-{num_shards}.jsonl"


class SweepStore:
    def __init__(self, directory: Path, shard: int | None = None, num_shards: int = 1) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / store_file(shard, num_shards)
        if shard is not None:
            _check_shards(self.dir, num_shards)
        self._open()
        self.records: dict[tuple[str, str, str], dict] = {}
        self.reload()

    def reload(self) -> None:
        """Read every file of the directory again (other shards may have written since)."""
        for path in sorted(self.dir.glob("sweep*.jsonl")):
            self._load(path)

    def _load(self, path: Path) -> None:
        own = path == self.path  # only a writer changes its own file; another's may be mid-write
        lines = path.read_bytes().split(b"\n")
        torn = lines.pop()  # what follows the last newline: empty, or a record cut short by a kill
        kept, rejected = [], []
        for number, line in enumerate(lines, 1):
            record = parse_record(line)
            if record is None:
                rejected.append((number, line))
            else:
                self.records[self._key(record)] = record
                kept.append(line)
        last = parse_record(torn) if torn else None
        if last is not None:  # a whole record whose newline is not written yet (or was lost)
            self.records[self._key(last)] = last
            kept.append(torn)
        if torn and last is None and own:
            log.warning("%s: dropping an unfinished last record (a killed sweep): %d bytes", path, len(torn))
        if rejected:
            many = len(rejected) > 1
            numbers = ", ".join(str(n) for n, _ in rejected[:5]) + (" ..." if len(rejected) > 5 else "")
            if own:
                log.warning("%s: %d line%s that %s not a sweep record (line %s) moved to %s; the %d records around %s are kept",
                            path, len(rejected), "s" if many else "", "are" if many else "is", numbers, self.rejected_path,
                            len(kept), "them" if many else "it")
            else:
                log.warning("%s: skipping %d line%s that %s not a sweep record (line %s)", path, len(rejected),
                            "s" if many else "", "are" if many else "is", numbers)
        if own and (rejected or torn):
            self._rewrite(kept, rejected)

    @property
    def rejected_path(self) -> Path:
        return self.path.with_name(self.path.name + ".rejected")

    def _rewrite(self, kept: list[bytes], rejected: list[tuple[int, bytes]]) -> None:
        """Move the lines that are not records to the rejected file (saved first), then replace
        the store by its records, keeping this writer's lock across the swap."""
        if rejected:
            with self.rejected_path.open("ab") as f:
                for number, line in rejected:
                    f.write(f"# {self.path.name} line {number}:\n".encode() + line + b"\n")
                f.flush()
                os.fsync(f.fileno())
        tmp = self.path.with_name(self.path.name + ".rewrite")
        with tmp.open("wb") as f:
            f.write(b"".join(line + b"\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        old = self._file
        self._file = lock_open(tmp, "a+b")  # a file only this process knows of yet
        tmp.rename(self.path)
        old.close()

    def _open(self) -> None:
        self._file = lock_open(self.path, "a+b")
        if self._file is None:
            raise DataError(f"{self.path} is being written by another process (a soce run in the same directory, "
                            "or a job given the same sweep.shard): wait for it to finish, or give this job another shard")

    @staticmethod
    def _key(record: dict) -> tuple[str, str, str]:
        return ",".join(record["experts"]), key(record["weights"]), record["split"]

    def get(self, experts: list[str], weights, split: str) -> dict | None:
        return self.records.get((",".join(experts), key(weights), split))

    def append(self, record: dict) -> None:
        self._file.write((json.dumps(record) + "\n").encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records[self._key(record)] = record

    def check_question(self, question: dict) -> None:
        """Refuse a store holding soups evaluated for another question (another benchmark
        setting, evaluator, or models' files): their scores do not answer this one."""
        stale = [changed for r in self if (changed := question_differences(r.get("question"), question))]
        if stale:
            raise DataError(
                f"{self.dir}: {len(stale)} of the {len(self)} stored soups were evaluated for another question "
                f"({'; '.join(stale[0][:3])}): their scores do not answer this one. Start fresh in a new run directory "
                f"(leave out hydra.run.dir, or give sweep.store another directory), or move {self.dir}/sweep*.jsonl away")

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)


def parse_record(line: bytes) -> dict | None:
    """A sweep record (a JSON object naming its experts, weights, split and scores), or None."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("experts"), list) and isinstance(record.get("weights"), list)
            and len(record["experts"]) == len(record["weights"]) and isinstance(record.get("split"), str)
            and isinstance(record.get("scores"), dict) and all(isinstance(e, str) for e in record["experts"])
            and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in record["weights"])):
        return None
    return record


def _check_shards(directory: Path, num_shards: int) -> None:
    for path in sorted(directory.glob("sweep.shard-*.jsonl")):
        m = SHARD_FILE.match(path.name)
        if m and int(m.group(2)) != num_shards:
            raise DataError(f"sweep.num_shards={num_shards}, but {directory} holds the shards of a sweep split "
                            f"{m.group(2)} ways ({path.name}): the points of one study are split one way. "
                            f"Use sweep.num_shards={m.group(2)}, or another store directory (sweep.store=...)")
