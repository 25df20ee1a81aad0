"""The sweep's results store: sweep.jsonl, one JSON object per evaluated point.

Each record is appended and fsynced before the next point starts, so a killed sweep loses
at most the point in flight; a line cut short by the kill is dropped when the store is
opened again, and the points already stored are skipped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterator

from soce.weights import key

log = logging.getLogger(__name__)


class SweepStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[tuple[str, str, str], dict] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        good = 0
        with self.path.open("rb") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s: dropping an unfinished last record (a killed sweep)", self.path)
                    break
                self.records[self._key(record)] = record
                good += len(line)
        if good != self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good)

    @staticmethod
    def _key(record: dict) -> tuple[str, str, str]:
        return ",".join(record["experts"]), key(record["weights"]), record["split"]

    def get(self, experts: list[str], weights, split: str) -> dict | None:
        return self.records.get((",".join(experts), key(weights), split))

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[self._key(record)] = record

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)
