"""The sweep's results store: one JSON object per evaluated soup, in JSON-lines files in the
study's store directory.

Each record is appended and fsynced before the next point starts, so a killed sweep loses
at most the point in flight; a last line cut short by the kill is dropped when the store is
opened again, and the points already stored are skipped. Nothing else is ever deleted: a line
anywhere else that is not a valid record (garbage, a hand edit, bytes that are not UTF-8, a
record lacking a field or holding a NaN; once the benchmark is known, one whose categories or
outcomes are not the benchmark's; one whose scores or outcomes are not those it was stored with,
each record carrying the digest of its answer) is moved to `<file>.rejected` beside the store
with its line number and the reason, and every record around it is kept.

A store reads its own files only: `sweep.jsonl`, and `sweep.shard-K-of-N.jsonl` for shard K of
a sweep split N ways (Hydra multirun jobs, Accelerate processes); any other file of the
directory (a copy, a backup) is not part of it. Each writer holds an exclusive lock on its
file, so two jobs given the same shard cannot both write it: the second is refused; and the
unsharded store (the collect step) is refused while a shard is still being written.

A record is keyed by its soup (experts, weights) and split: a soup's scores do not depend on
which stage asked for it (its `kind` says which did first), so every stage reuses it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterator

from soce.artifacts import digest, question_differences
from soce.errors import DataError
from soce.locks import lock_open
from soce.progress import plural
from soce.weights import key

log = logging.getLogger(__name__)

STORE_FILE = "sweep.jsonl"
SHARD_FILE = re.compile(r"sweep\.shard-(\d+)-of-(\d+)\.jsonl")
# what a record is checked against once the benchmark is known: None, or why it is set aside
Problem = Callable[[dict], "str | None"]


def store_file(shard: int | None = None, num_shards: int = 1) -> str:
    return STORE_FILE if shard is None else f"sweep.shard-{shard}-of-{num_shards}.jsonl"


def store_files(directory: Path) -> list[Path]:
    """The store's own files in `directory`: sweep.jsonl and the shards' files."""
    return sorted(p for p in directory.iterdir() if p.name == STORE_FILE or SHARD_FILE.fullmatch(p.name))


class SweepStore:
    def __init__(self, directory: Path, shard: int | None = None, num_shards: int = 1, problem: Problem | None = None) -> None:
        """problem: what else makes a record unusable (the benchmark's categories and outcomes),
        checked with the lines' form on every read."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / store_file(shard, num_shards)
        if shard is None:
            _check_no_shard_running(self.dir)
        else:
            _check_shards(self.dir, num_shards)
        self._open()
        self.problem = problem
        self.records: dict[tuple[str, str, str], dict] = {}
        self.reload()
        strays = sorted(p.name for p in self.dir.glob("sweep*.jsonl") if p not in store_files(self.dir))
        if strays:
            log.info("%s: %s not read (the store's files are %s and sweep.shard-K-of-N.jsonl)", self.dir, ", ".join(strays),
                     STORE_FILE)

    def reload(self) -> None:
        """Read every file of the store again (other shards may have written since)."""
        self.records = {}
        for path in store_files(self.dir):
            self._load(path)

    def set_aside(self, problem: Problem) -> None:
        """Check every record with `problem` (the benchmark's categories and outcomes), now and on
        every later read: a record it finds a problem with is set aside as a bad line is."""
        self.problem = problem
        self.reload()

    def _load(self, path: Path) -> None:
        own = path == self.path  # only a writer changes its own file; another's may be mid-write
        lines = path.read_bytes().split(b"\n")
        torn = lines.pop()  # what follows the last newline: empty, or a record cut short by a kill
        kept, rejected = [], []
        if torn and parse_record(torn)[0] is not None:  # a whole record whose newline is not written yet (or was lost)
            lines.append(torn)
            torn = b""
        for number, line in enumerate(lines, 1):
            record, why = parse_record(line)
            if record is not None and self.problem is not None:
                why = self.problem(record)
            if record is not None and why is None:  # the most telling reason first: a form, a benchmark, then an edit
                why = edited(record)
            if why is not None:
                rejected.append((number, line, why))
                continue
            kept.append(line)
            self.records.setdefault(self.record_key(record), record)  # the first record of a soup is the one a search saw
        if torn and own:
            log.warning("%s: dropping an unfinished last record (a killed sweep): %d bytes", path, len(torn))
        if rejected:
            many = len(rejected) > 1
            why = "; ".join(f"line {n}: {reason}" for n, _, reason in rejected[:3]) + ("; ..." if len(rejected) > 3 else "")
            what = f"{len(rejected)} line{'s' if many else ''} that {'are' if many else 'is'} not a valid sweep record ({why})"
            if own:
                log.warning("%s: %s moved to %s; the %s around %s %s kept", path, what, self.rejected_path,
                            plural(len(kept), "record"), "them" if many else "it", "is" if len(kept) == 1 else "are")
            else:
                log.warning("%s: skipping %s; that file is its writer's and is left as it is", path, what)
        if own and (rejected or torn):
            self._rewrite(kept, rejected)

    @property
    def rejected_path(self) -> Path:
        return self.path.with_name(self.path.name + ".rejected")

    def _rewrite(self, kept: list[bytes], rejected: list[tuple[int, bytes, str]]) -> None:
        """Move the lines that are not records to the rejected file (saved first), then replace
        the store by its records, keeping this writer's lock across the swap."""
        if rejected:
            with self.rejected_path.open("ab") as f:
                for number, line, why in rejected:
                    f.write(f"# {self.path.name} line {number}: {why}\n".encode() + line + b"\n")
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
    def record_key(record: dict) -> tuple[str, str, str]:
        """What a record is stored under: its soup (experts, weights) and split."""
        return ",".join(record["experts"]), key(record["weights"]), record["split"]

    def get(self, experts: list[str], weights, split: str) -> dict | None:
        return self.records.get((",".join(experts), key(weights), split))

    def append(self, record: dict) -> None:
        record = {**record, "digest": record_digest(record)}  # a later edit of its answer is found on reading
        why = parse_record(json.dumps(record).encode())[1] or (self.problem and self.problem(record))
        if why:  # never store what a later read would set aside
            raise DataError(f"a sweep record of {record.get('experts')} at {record.get('weights')} cannot be stored: {why}")
        try:
            self._file.write((json.dumps(record) + "\n").encode())
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as err:  # a full disk, a file-size limit: the file named (a write's error names none)
            raise OSError(err.errno, err.strerror, str(self.path)) from None
        self.records.setdefault(self.record_key(record), record)

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
        try:
            self._file.close()
        except OSError:  # the bytes of a record whose append failed (a full disk): its error is raised already
            pass

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records.values())

    def __len__(self) -> int:
        return len(self.records)


ANSWER = ("experts", "weights", "split", "question", "scores", "correct", "examples")  # what a record's digest covers


def record_digest(record: dict) -> str:
    """A stored soup's answer (its scores and outcomes for its question; not its times, its kind or
    its objective, which is recomputed on every read): stored with the record, and what a result
    made from it depends on."""
    return digest({k: record.get(k) for k in ANSWER})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_record(line: bytes) -> tuple[dict | None, str | None]:
    """A sweep record and None, or None and why the line is not one: a JSON object naming its
    kind, experts, weights, split, question, finite per-category scores, per-example outcomes
    ('correct': one 0 or 1 per example, in order of example id) and its times; a piece of a
    split (search=halving, split 'dev@...') also names its examples."""
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "not JSON"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    fields = {"kind": str, "experts": list, "weights": list, "split": str, "scores": dict, "correct": str, "question": dict}
    for name, kind in fields.items():
        if not isinstance(record.get(name), kind):
            if name == "question" and name not in record:
                return None, "no 'question' (written before soce recorded what a score answers)"
            return None, f"no {name!r}" if name not in record else f"{name!r} is not a {kind.__name__}"
    experts, weights, scores = record["experts"], record["weights"], record["scores"]
    if not experts or not all(isinstance(e, str) for e in experts) or len(experts) != len(weights):
        return None, "its experts and weights do not match"
    if not all(_number(w) and w >= 0 for w in weights) or abs(math.fsum(weights) - 1) > 1e-6:
        return None, f"its weights are not a soup's (finite, non-negative, summing to 1): {weights}"
    if not scores or not all(_number(v) for v in scores.values()):
        return None, f"a score is not a finite number ({json.dumps(scores)[:120]})"
    if set(record["correct"]) - {"0", "1"}:
        return None, "its outcomes ('correct') are not 0s and 1s"
    for t in ("merge_s", "eval_s"):
        if not (_number(record.get(t)) and record[t] >= 0):
            return None, f"no {t!r}" if t not in record else f"{t!r} is not a time"
    if "@" in record["split"]:
        examples = record.get("examples")
        if not (isinstance(examples, list) and all(isinstance(i, str) for i in examples)
                and len(examples) == len(record["correct"])):
            return None, "a piece of a split whose examples do not match its outcomes"
    return record, None


def edited(record: dict) -> str | None:
    """Why a record's answer is not the one it was stored with (None: it is, or it predates digests)."""
    if "digest" in record and record["digest"] != record_digest(record):
        return "its scores or outcomes are not those it was stored with (edited by hand?)"
    return None


def _check_shards(directory: Path, num_shards: int) -> None:
    for path in store_files(directory):
        m = SHARD_FILE.fullmatch(path.name)
        if m and int(m.group(2)) != num_shards:
            raise DataError(f"sweep.num_shards={num_shards}, but {directory} holds the shards of a sweep split "
                            f"{m.group(2)} ways ({path.name}): the points of one study are split one way. "
                            f"Use sweep.num_shards={m.group(2)}, or another store directory (sweep.store=...)")


def _check_no_shard_running(directory: Path) -> None:
    """The unsharded store (the collect step) would evaluate again the points of a shard still
    running: refused while any shard's writer holds its file."""
    for path in store_files(directory):
        if not SHARD_FILE.fullmatch(path.name):
            continue
        with path.open("rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DataError(f"{path} is still being written by its shard's job: collecting now would evaluate its "
                                "remaining points a second time. Wait for that job to finish, then collect") from None


class SoupCache:
    """Soups evaluated by any run, kept for the question they answered (beside the candidates'
    evaluations, ~/.cache/soce/soups/): one JSON-lines file per question (a digest of the
    benchmark's settings, the evaluator, the experts' files, the engine), appended under a lock,
    so that a later run asking the same question, in any run directory, finds them again instead
    of evaluating them. A record is used only if its question equals the one asked and its
    answer matches its digest; a line that is not such a record is skipped. The run directory's
    store stays the study's own record: a soup found here is copied into it."""

    def __init__(self, directory: Path, question: dict, reuse: bool = True) -> None:
        """reuse=False (benchmark.cache=false): nothing is found, every soup evaluated is kept."""
        self.reuse = reuse
        self.question = json.loads(json.dumps(question))  # as a record holds it
        self.path = Path(directory) / f"{digest(self.question)[:24]}.jsonl"
        self._records: dict[tuple[str, str], dict] | None = None
        self.broken = False  # a write failed: the cache is left alone for the rest of the run

    def _load(self) -> dict[tuple[str, str], dict]:
        if self._records is None:
            self._records = {}
            try:
                lines = self.path.read_bytes().split(b"\n") if self.path.exists() else []
            except OSError:
                lines = []
            for line in lines:
                record, why = parse_record(line)
                if record is None or why or edited(record) or record.get("question") != self.question:
                    continue
                self._records.setdefault((key(record["weights"]), record["split"]), record)
        return self._records

    def get(self, weights, split: str) -> dict | None:
        """The soup at `weights` on the whole of `split`, where some run evaluated it."""
        return self._load().get((key(weights), split)) if self.reuse else None

    def pieces(self, weights, split: str) -> list[dict]:
        """The soup's evaluated pieces of `split` (searches over subsets of the examples)."""
        if not self.reuse:
            return []
        point = key(weights)
        return [r for (k, s), r in self._load().items() if k == point and s.startswith(f"{split}@")]

    def add(self, record: dict) -> None:
        """Kept for later runs; a cache that cannot be written is said once and left alone."""
        if self.broken:
            return
        record = {**record, "digest": record_digest(record)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write((json.dumps(record) + "\n").encode())
        except OSError as err:
            self.broken = True
            log.warning("%s: cannot keep soups for later runs (%s): this run goes on without the cache", self.path,
                        err.strerror or err)
            return
        self._load().setdefault((key(record["weights"]), record["split"]), record)
