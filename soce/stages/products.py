"""What the stages hand each other, and when each is current: the lineage rule, in one place.

Every product a stage writes into the run directory is entered in `lineage.json` (as DVC's
dvc.lock holds a hash per dependency and output): the settings it was made with, the digest of
every input it was made from (the files of the products it read, the models' files, a score
table, the evaluator, the sweep store's records) and the digest of each of its own files. A
product is current when all of these hold now and every product it was made from is current
(Make's rule); otherwise it is stale, whatever settings it records: a stage that reads it has its
producer make it again first, and never uses it. A stage reads a product only through this
module (`read_json`, `read_scores`), which checks the file against its record and notes it as an
input of what the stage makes.

Whatever a stage replaces moves to superseded/<time>/ with its lineage entry and the reason:
its own stale products before it runs, and after it has written, every product made from a file
it replaced (which belongs to another study now), so the run directory always holds one study.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from omegaconf import DictConfig

from soce import __version__
from soce.artifacts import (ANALYSIS, OUTCOMES, OUTCOMES_TEST, REPORT, RESULTS, SCORES, SCORES_TEST, SELECTION, SOUP,
                            differences, digest, model_fingerprint, resolved)
from soce.errors import DataError
from soce.store import record_digest

if TYPE_CHECKING:
    from soce.scores import ScoreTable

log = logging.getLogger("soce")

LINEAGE = "lineage.json"
SUPERSEDED = "superseded"


class Study(Protocol):
    """What of the run's study (soce.stages.study.Study) the rule needs: the run directory, the
    config, and what finds an input again (the store, the evaluator, a model's fingerprint)."""

    dir: Path
    cfg: DictConfig
    searched: tuple | None
    _lineage: "Lineage | None"

    @property
    def store(self): ...

    @property
    def evaluator(self): ...

    def fingerprint(self, candidate) -> str: ...


# --- what each product depends on -----------------------------------------------------------------
def analysis_settings(cfg: DictConfig) -> dict:
    """What scores.csv and analysis.json depend on (the objective: an evaluated pool's overall
    column, which ranks the candidates)."""
    return {**resolved(cfg, "benchmark", "pool", "analysis"), "objective": str(cfg.search.objective)}


def selection_settings(cfg: DictConfig) -> dict:
    """What selection.json depends on: the analysis and the selection strategy."""
    return {**analysis_settings(cfg), **resolved(cfg, "selection")}


def results_settings(cfg: DictConfig) -> dict:
    """What results.json depends on: the selection, the search (its objective and split too) and
    the bootstrap of its intervals."""
    return {**selection_settings(cfg), **resolved(cfg, "search"), **resolved(cfg, "report.bootstrap")}


def report_settings(cfg: DictConfig) -> dict:
    """What report.md depends on: the results' settings and the report's own."""
    return {**results_settings(cfg), **resolved(cfg, "report")}


@dataclass(frozen=True)
class Product:
    """Files a stage writes into the run directory (those it made are recorded; `label` names
    them in messages) and the settings they depend on."""

    name: str
    label: str
    files: tuple[str, ...]
    settings: Callable[[DictConfig], dict]
    stage: str  # the stage that makes it

    def stale(self, study: Study) -> list[str]:
        return stale(study, self)

    @property
    def plural(self) -> bool:
        return " and " in self.label


@dataclass(frozen=True)
class Transient:
    """What a stage hands the next within one run and writes nowhere of its own (the sweep's
    soups: they are in the store, and the sweep replays them from it in a later run)."""

    name: str
    label: str
    made: Callable[[Study], bool]

    plural = True

    def stale(self, study: Study) -> list[str]:
        return [] if self.made(study) else ["were not made in this run (the sweep finds them in its store)"]


ANALYZED = Product("analysis", "scores.csv and analysis.json",
                   (SCORES, OUTCOMES, SCORES_TEST, OUTCOMES_TEST, ANALYSIS, "correlation.png", "entry_tau.png"),
                   analysis_settings, "analyze")
SELECTED = Product("selection", "selection.json", (SELECTION,), selection_settings, "select")
SEARCHED = Transient("search", "the search's soups (sweep.jsonl)", lambda study: study.searched is not None)
RESULTED = Product("results", "results.json and soup/", (RESULTS, SOUP), results_settings, "soup")
REPORTED = Product("report", "report.md", (REPORT, "landscape.png", "shapley.png", "consistency.png", "diagnostics.png",
                                           "surrogate.png"), report_settings, "report")
PRODUCTS = {p.name: p for p in (ANALYZED, SELECTED, RESULTED, REPORTED)}


@dataclass(frozen=True)
class Stage:
    """A stage: `run` on the study, after every product it `reads` is current; it makes `writes`.
    `consults`: products it uses where they are current and goes without otherwise (the report's
    results.json); a stale one is moved aside before it runs, never left beside what it makes."""

    name: str
    run: Callable[[Study], object]
    reads: tuple = ()
    writes: tuple = ()
    consults: tuple[Product, ...] = ()


# --- digests -------------------------------------------------------------------------------------
BIG = 64 << 20  # a file above this is known by its size and modification time, not read at every check


def file_digest(path: Path) -> str | None:
    """sha256 of a file's content (above BIG: of its size and modification time), of a directory's
    files by their relative paths; None where there is nothing."""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(f"{p.relative_to(path)}\0{file_digest(p)}\0".encode())
        return "dir:" + h.hexdigest()
    if stat.st_size > BIG:
        return f"stat:{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- inputs beyond the run directory's files: each kind found again by its key ---------------------
def _record_now(study: Study, key: str) -> str | None:
    experts, weights, split = json.loads(key)
    record = study.store.get(experts, weights, split)
    return None if record is None else record_digest(record)


def _hub_now(study: Study, hub_id: str) -> str | None:
    from soce.pool import Candidate

    return study.fingerprint(Candidate(hub_id, hub_id=hub_id))


def _dir_now(study: Study, path: str) -> str | None:
    return model_fingerprint(Path(path)) if Path(path).is_dir() else None


INPUTS: dict[str, Callable[[Study, str], "str | None"]] = {
    "dir": _dir_now,  # a local model directory: its files' fingerprint
    "hub": _hub_now,  # a Hub model: its snapshot's files' fingerprint
    "file": lambda study, path: file_digest(Path(path)),  # a score table, a data file
    "evaluator": lambda study, name: digest(study.evaluator.fingerprint),  # its code and task files
    "record": _record_now,  # a soup in the sweep store: its scores and outcomes
}


def input_key(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def record_key(record: dict) -> str:
    return input_key("record", json.dumps([record["experts"], record["weights"], record["split"]]))


def _describe(key: str) -> str:
    kind, _, name = key.partition(":")
    if kind not in INPUTS:
        return key
    return {"dir": f"model directory {name}", "hub": f"Hub model {name}", "file": f"file {name}",
            "evaluator": "evaluator (its code or task files)", "record": f"stored soup {name}"}[kind]


def _now(study: Study, key: str) -> str | None:
    kind, _, name = key.partition(":")
    if kind in INPUTS:
        return INPUTS[kind](study, name)
    return file_digest(study.dir / key)  # a file of the run directory


# --- the lineage file -----------------------------------------------------------------------------
class Lineage:
    """The run directory's lineage.json, and what the stage running now has read."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / LINEAGE
        self.entries: dict[str, dict] = self._load()
        self.reads: dict[str, str | None] | None = None  # inputs of the stage running now
        self.folder: Path | None = None  # where this run moves what it replaces

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict) and all(isinstance(e, dict) and {"settings", "inputs", "files"} <= set(e)
                                              for e in data.values()):
                return data
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        kept = self.path.with_name(LINEAGE + ".unreadable")
        self.path.rename(kept)
        log.warning("%s is not a lineage record (cut short?): it moved to %s, and every product of %s is made again where "
                    "a stage reads it", self.path, kept.name, self.dir)
        return {}

    def save(self) -> None:
        tmp = self.path.with_name(LINEAGE + ".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1))
        os.replace(tmp, self.path)


def owner(file: str) -> Product | None:
    """The product whose files include `file` of the run directory."""
    return next((p for p in PRODUCTS.values() if file in p.files), None)


def lineage(study: Study) -> Lineage:
    if study._lineage is None or study._lineage.dir != study.dir:
        study._lineage = Lineage(study.dir)
    return study._lineage


def stale(study: Study, product: Product, _seen: dict | None = None) -> list[str]:
    """Why `product` in the run directory cannot be used now, each reason a phrase after its label
    ('was made with other settings (...)'); empty: it is current."""
    seen = {} if _seen is None else _seen
    if product.name in seen:
        return seen[product.name]
    seen[product.name] = []
    lin = lineage(study)
    entry = lin.entries.get(product.name)
    present = [f for f in product.files if (study.dir / f).exists()]
    was, it = ("were", "them") if product.plural else ("was", "it")
    if entry is None:
        why = [f"{'are' if product.plural else 'is'} in {study.dir} without a lineage record (made by soce before it kept "
               f"one, or put there by hand): {', '.join(present)}"] if present else \
              [f"{'are' if product.plural else 'is'} not in {study.dir} yet"]
        seen[product.name] = why
        return why
    why = []
    changed = differences(entry["settings"], product.settings(study.cfg))
    if changed:
        why.append(f"{was} made with other settings ({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''})")
    for file in product.files:
        made, now = entry["files"].get(file), file_digest(study.dir / file)
        if made is None and now is not None:
            why.append(f"{'have' if product.plural else 'has'} {file} beside {it}, which stage {entry['stage']} did not make")
        elif made is not None and now is None:
            why.append(f"{'have' if product.plural else 'has'} lost {file}")
        elif made != now:
            why.append(f"{'have' if product.plural else 'has'} changed since stage {entry['stage']} made {it}: {file} is not "
                       "the file it wrote (edited by hand, or cut short)")
    for key, made in entry["inputs"].items():
        made_by = None if ":" in key else owner(key)
        if made is None:
            if _now(study, key) is not None:
                why.append(f"{was} made without {key}, which is there now")
        elif made_by is not None and made_by != product and stale(study, made_by, seen):
            why.append(f"{was} made from {key}, which is stale")
        elif _now(study, key) != made:
            why.append(f"{was} made from another {_describe(key)} than the one there now (it changed, or is gone)")
    seen[product.name] = why
    return why


# --- reading a product ------------------------------------------------------------------------------
def _checked(study: Study, file: str) -> Path:
    """`file` of the run directory, checked against the lineage of the product it belongs to and
    noted as an input of what the stage running now makes."""
    lin = lineage(study)
    path = study.dir / file
    product = owner(file)
    entry = lin.entries.get(product.name)
    now = file_digest(path)
    if entry is None or entry["files"].get(file) != now:
        raise DataError(f"{path} is not the file stage {product.stage} made ({'it has no lineage record' if entry is None else 'it changed'} "
                        f"while this run was using the directory): run again, and stage {product.stage} makes it anew")
    if lin.reads is not None:
        lin.reads[file] = now
    return path


def read_json(study: Study, file: str) -> dict:
    """A JSON product of the run directory (analysis.json, selection.json, results.json), checked."""
    return json.loads(_checked(study, file).read_text())


def read_scores(study: Study, split: str = "dev") -> "ScoreTable":
    """The candidates' scores on `split` that the analysis wrote (scores.csv, scores_test.csv, with
    their outcomes where the benchmark has them), checked."""
    from soce.scores import outcomes_path, read_scores as read

    file = SCORES if split == "dev" else SCORES_TEST
    path = _checked(study, file)
    outcomes = outcomes_path(Path(file)).name
    if has(study, outcomes) or (study.dir / outcomes).exists():
        _checked(study, outcomes)
    return read(path)


def has(study: Study, file: str) -> bool:
    """Whether the product that holds `file` made it (scores_test.csv: a benchmark with a test split)."""
    entry = lineage(study).entries.get(owner(file).name)
    return entry is not None and file in entry["files"]


def read_if_current(study: Study, product: Product, file: str) -> dict | None:
    """`file` of `product` where the product is current, else None (and its absence noted as an input)."""
    if not stale(study, product):
        return read_json(study, file)
    if lineage(study).reads is not None:
        lineage(study).reads[file] = None
    return None


def used(study: Study, key: str, value: str | None) -> None:
    """An input beyond the run directory's files (INPUTS' kinds) and its digest, noted for what the
    stage running now makes."""
    reads = lineage(study).reads
    if reads is not None:
        reads[key] = value


def note(study: Study, kind: str, name: str) -> None:
    """The input `kind:name` as it is now (INPUTS finds it: the same function that later checks
    it), noted for what the stage running now makes."""
    if lineage(study).reads is not None:
        used(study, input_key(kind, name), INPUTS[kind](study, name))


def use_record(study: Study, record: dict) -> None:
    used(study, record_key(record), record_digest(record))


# --- making a product -------------------------------------------------------------------------------
@contextmanager
def making(study: Study, stage: Stage) -> Iterator[None]:
    """Around a stage's run: what it will replace that is stale moved aside first; on success, its
    products entered in lineage.json with their settings, inputs and files, and every product made
    from a file it replaced moved aside after it."""
    lin = lineage(study)
    products = [p for p in stage.writes if isinstance(p, Product)]
    if not products and not stage.consults:
        yield
        return
    for product in (*products, *stage.consults):
        if any((study.dir / f).exists() for f in product.files):
            why = stale(study, product)
            if why:
                _supersede(study, product, why, making=product in products)
    lin.reads = {}
    try:
        yield
        reads = lin.reads
    finally:
        lin.reads = None
    for product in products:
        files = {f: d for f in product.files if (d := file_digest(study.dir / f)) is not None}
        lin.entries[product.name] = {"stage": stage.name, "made": time.strftime("%Y-%m-%dT%H:%M:%S"), "soce": __version__,
                                     "settings": product.settings(study.cfg), "inputs": dict(sorted(reads.items())),
                                     "files": files}
    _supersede_orphans(study, {f for p in products for f in p.files})
    lin.save()


def _folder(study: Study, names: list[str]) -> Path:
    """This run's superseded/<time>/ (a new one where it holds one of `names` already)."""
    lin = lineage(study)
    if lin.folder is None or any((lin.folder / n).exists() for n in names):
        target = study.dir / SUPERSEDED / time.strftime("%Y-%m-%d_%H-%M-%S")
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{target.name.split('.')[0]}.{n}")
        target.mkdir(parents=True)
        lin.folder = target
    return lin.folder


def _supersede(study: Study, product: Product, why: list[str], making: bool) -> None:
    """Move `product`'s files and lineage entry to this stage's superseded/<time>/, saying why."""
    lin = lineage(study)
    moved = [f for f in product.files if (study.dir / f).exists()]
    folder = _folder(study, moved)
    for f in moved:
        (study.dir / f).rename(folder / f)
    entry = lin.entries.pop(product.name, None)
    record = folder / LINEAGE
    kept = json.loads(record.read_text()) if record.exists() else {}
    kept[product.name] = {**(entry or {}), "superseded_because": why}
    record.write_text(json.dumps(kept, indent=1))
    lin.save()
    then = f"stage {product.stage} makes {'them' if product.plural else 'it'} again" if making else "not used"
    log.warning("%s %s: moved to %s (%s; %s)", product.label, "; ".join(why[:3]), folder, ", ".join(moved), then)


def _supersede_orphans(study: Study, replaced: set[str]) -> None:
    """Every product made from a file that is no longer the one it read (the stage just replaced
    it, or it moved aside), moved aside after it, until none is left."""
    lin = lineage(study)
    while True:
        for name, entry in list(lin.entries.items()):
            gone = [k for k, d in entry["inputs"].items() if ":" not in k and file_digest(study.dir / k) != d]
            if gone:
                why = [f"{'were' if PRODUCTS[name].plural else 'was'} made from the {gone[0]} "
                       f"{'this stage replaced' if gone[0] in replaced else 'moved aside with it'}"]
                _supersede(study, PRODUCTS[name], why, making=False)
                break
        else:
            return
