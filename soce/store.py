"""The sweep's results store: one JSON object per evaluated soup, in JSON-lines files in the
study's store directory.

Each record is appended and fsynced before the next point starts, so a killed sweep loses
at most the point in flight; a line cut short by the kill is dropped when the store is
opened again, and the points already stored are skipped.

A store reads every `sweep*.jsonl` file of its directory and appends to its own: `sweep.jsonl`,
or `sweep.shard-K-of-N.jsonl` for shard K of a sweep split N ways (Hydra multirun jobs,
Accelerate processes). Each writer holds an exclusive lock on its file, so two jobs given
the same shard cannot both write it: the second is refused.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator

from soce.artifacts import question_differences
from soce.errors import DataError
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
        good = 0
        with path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if path == self.path:  # only a writer trims its own file; another's may be mid-write
                        log.warning("%s: dropping an unfinished last record (a killed sweep)", path)
                    break
                self.records[self._key(record)] = record
                good += len(line)
        if path == self.path and good != path.stat().st_size:
            self._file.truncate(good)

    def _open(self) -> None:
        self._file = self.path.open("a+b")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise DataError(f"{self.path} is being written by another process (a soce run in the same directory, "
                            "or a job given the same sweep.shard): wait for it to finish, or give this job another shard") from None

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


def _check_shards(directory: Path, num_shards: int) -> None:
    for path in sorted(directory.glob("sweep.shard-*.jsonl")):
        m = SHARD_FILE.match(path.name)
        if m and int(m.group(2)) != num_shards:
            raise DataError(f"sweep.num_shards={num_shards}, but {directory} holds the shards of a sweep split "
                            f"{m.group(2)} ways ({path.name}): the points of one study are split one way. "
                            f"Use sweep.num_shards={m.group(2)}, or another store directory (sweep.store=...)")
