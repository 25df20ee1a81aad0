"""BFCL, scored as the leaderboard scores a model: through its own package, bfcl-eval.

bfcl-eval supplies everything BFCL is made of: the test entries and their possible answers,
each model's prompt handler (prompt format, decoding of the output, the multi-turn loop), and
the checkers (AST, relevance, multi-turn state execution). soce supplies the model: the
handler's completions client is served by the live model in this process
(soce.evaluate.completions), so a soup is evaluated in place, without a disk write or a server.

Categories are the leaf columns of the leaderboard's data_overall.csv; a column pooling
several BFCL test files is their unweighted mean, as the leaderboard computes it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from soce.errors import ConfigError, EvaluationError
from soce.evaluate import EvalResult, only
from soce.scores import Outcome, closest

log = logging.getLogger(__name__)

# The leaderboard's leaf columns (data_overall.csv) and the BFCL test files each pools.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Non-Live Simple AST": ("simple_python", "simple_java", "simple_javascript"),
    "Non-Live Multiple AST": ("multiple",),
    "Non-Live Parallel AST": ("parallel",),
    "Non-Live Parallel Multiple AST": ("parallel_multiple",),
    "Live Simple AST": ("live_simple",),
    "Live Multiple AST": ("live_multiple",),
    "Live Parallel AST": ("live_parallel",),
    "Live Parallel Multiple AST": ("live_parallel_multiple",),
    "Multi Turn Base": ("multi_turn_base",),
    "Multi Turn Miss Func": ("multi_turn_miss_func",),
    "Multi Turn Miss Param": ("multi_turn_miss_param",),
    "Multi Turn Long Context": ("multi_turn_long_context",),
    "Relevance Detection": ("live_relevance",),
    "Irrelevance Detection": ("irrelevance", "live_irrelevance"),
}
INSTALL = "pip install 'soce[bfcl]' (bfcl-eval, the leaderboard's own evaluator)"


def read_bfcl_scores(path: str | Path, categories: Sequence[str]):
    """A BFCL score table: a leaderboard snapshot (data_overall.csv), or the score folder
    `bfcl evaluate` writes (its data_overall.csv holds every model it scored)."""
    from soce.scores import read_table

    path = Path(path)
    if path.is_dir():
        if not (path / "data_overall.csv").exists():
            raise ConfigError(f"benchmark.table={path}: a folder without data_overall.csv (a BFCL score folder has one, "
                              "written by `bfcl evaluate`)")
        path = path / "data_overall.csv"
    return read_table(path, format="bfcl", categories=check_categories(categories))


def bfcl_home() -> Path:
    """Where bfcl-eval keeps its project folder (it creates result/ and score/ there when imported;
    by default inside site-packages, which may be read-only)."""
    root = Path(os.environ.get("SOCE_CACHE", Path.home() / ".cache" / "soce")) / "bfcl"
    return Path(os.environ.setdefault("BFCL_PROJECT_ROOT", str(root)))


def import_bfcl():
    """bfcl_eval, imported with its project folder outside site-packages; a clear error where it is missing."""
    bfcl_home().mkdir(parents=True, exist_ok=True)
    try:
        import bfcl_eval  # noqa: F401
        from bfcl_eval.constants import model_config
    except ModuleNotFoundError as err:
        missing = err.name or "bfcl_eval"
        hint = f"; {missing} is one of its dependencies" if not missing.startswith("bfcl_eval") else ""
        raise EvaluationError(f"benchmark=bfcl needs bfcl-eval, which cannot be imported ({err}{hint}): {INSTALL}") from None
    return model_config


def bfcl_version() -> str:
    from importlib.metadata import version

    return version("bfcl-eval")


def check_categories(categories: Sequence[str]) -> list[str]:
    """The leaderboard columns asked for, each checked."""
    if not categories:
        raise ConfigError("benchmark.categories is empty: name at least one leaderboard column, or leave it unset for all 14")
    for c in categories:
        if c not in CATEGORIES:
            raise ConfigError(f"benchmark.categories: {c!r} is not a BFCL leaderboard column{closest(c, CATEGORIES)}; "
                              f"the columns: {', '.join(CATEGORIES)}")
    return list(categories)


def handler_names() -> list[str]:
    """The BFCL models whose handler runs an open-weights model (one soce can serve in-process)."""
    from bfcl_eval.model_handler.local_inference.base_oss_handler import OSSHandler

    return [name for name, cfg in import_bfcl().MODEL_CONFIG_MAPPING.items()
            if isinstance(cfg.model_handler, type) and issubclass(cfg.model_handler, OSSHandler)]


def check_handler(name: str, where: str) -> str:
    """`name`, if bfcl-eval has a handler for it that soce can serve; otherwise an error naming the closest."""
    mapping = import_bfcl().MODEL_CONFIG_MAPPING
    served = handler_names()
    if name not in mapping:
        raise ConfigError(f"{where}: bfcl-eval {bfcl_version()} has no model {name!r}{closest(name, served)} "
                          "(a BFCL model name, e.g. Salesforce/Llama-xLAM-2-8b-fc-r)")
    if name not in served:
        raise ConfigError(f"{where}: {name!r} is served by a vendor's API in bfcl-eval, not by an open-weights model: "
                          f"soce runs the model itself; choose an open-weights model's handler{closest(name, served)}")
    return name


@dataclass(frozen=True)
class Entry:
    """One BFCL test entry: as the handler gets it (with the language hints), as the checker gets
    it (without), and its possible answer (none for relevance and irrelevance)."""

    id: str
    file: str  # the BFCL test category, e.g. simple_java
    category: str  # the leaderboard column
    prompt: dict
    checked: dict
    answer: object = None


def load_entries(categories: Sequence[str]) -> dict[str, list[Entry]]:
    """Per BFCL test file of the chosen columns, its entries in BFCL's order."""
    import_bfcl()
    from bfcl_eval.utils import is_relevance_or_irrelevance, load_dataset_entry, load_ground_truth_entry

    out = {}
    for category in categories:
        for file in CATEGORIES[category]:
            prompts = load_dataset_entry(file, include_prereq=False, include_language_specific_hint=True)
            checked = load_dataset_entry(file, include_prereq=False, include_language_specific_hint=False)
            answers = [None] * len(prompts) if is_relevance_or_irrelevance(file) else load_ground_truth_entry(file)
            if not len(prompts) == len(checked) == len(answers):
                raise EvaluationError(f"bfcl-eval's {file}: {len(prompts)} entries, {len(answers)} possible answers")
            out[file] = [Entry(p["id"], file, category, p, c, a if a is None else a["ground_truth"])
                         for p, c, a in zip(prompts, checked, answers)]
    return out


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"benchmark.limit={limit}: at least 1 example of each BFCL test file (or unset, for all)")


def own_handler(candidate) -> str | None:
    """The BFCL model a candidate is prompted as: its pool entry's handler, or its Hub id."""
    return getattr(candidate, "handler", None) or getattr(candidate, "hub_id", None)


def split_entries(entries: dict[str, list[Entry]], *, split: str, seed: int, limit: int | None) -> dict[str, list[Entry]]:
    """split='halves': each test file's entries shuffled with `seed` and halved (stratified by
    file, so by category): dev the first half, test the second. split='none': one split, dev,
    with every entry (the paper's protocol). `limit`: at most this many of each file per split."""
    check_limit(limit)
    splits: dict[str, list[Entry]] = {"dev": []} if split == "none" else {"dev": [], "test": []}
    for file, items in entries.items():
        if split == "none":
            parts = {"dev": list(items)}
        else:
            order = list(items)
            random.Random(f"{seed}:{file}").shuffle(order)
            half = (len(order) + 1) // 2
            parts = {"dev": order[:half], "test": order[half:]}
        for name, part in parts.items():
            splits[name] += part[:limit] if limit else part
    return splits


class BfclEvaluator:
    """Per-category scores and per-example outcomes on BFCL, for any model in memory.

    handler: the BFCL model whose prompt handler formats prompts and decodes outputs; None: the
    handler of the model evaluated (a candidate's own, from the pool), or for a soup the handler
    of its expert with the largest weight.
    """

    def __init__(self, categories: Sequence[str], *, handler: str | None = None, split: str = "halves", seed: int = 0,
                 limit: int | None = None, batch_size: int = 16, max_new_tokens: int | None = None,
                 result_dir: str | Path | None = None) -> None:
        import_bfcl()
        self.categories = tuple(check_categories(categories))
        self.handler = handler and check_handler(handler, "benchmark.handler")
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ConfigError(f"benchmark.max_new_tokens={max_new_tokens}: at least 1 (or unset, for the handler's own)")
        if batch_size < 1:
            raise ConfigError(f"benchmark.batch_size={batch_size}: at least 1")
        self.examples = split_entries(load_entries(self.categories), split=split, seed=seed, limit=limit)
        self.splits = tuple(self.examples)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.result_dir = Path(result_dir) if result_dir else None
        if self.result_dir is not None:
            _check_writable(self.result_dir)
        self._announced: set[str] = set()
        # what a score depends on besides the model: bfcl-eval's version (its data, handlers and
        # checkers), the entries asked, and the decoding settings; the handler is the caller's
        self.fingerprint = {"backend": "bfcl-eval", "bfcl_eval": bfcl_version(), "max_new_tokens": max_new_tokens,
                            "examples": {s: [e.id for e in items] for s, items in self.examples.items()}}

    # --- which handler --------------------------------------------------------------------------
    def handler_for(self, source: Sequence[tuple[object, float]] | None) -> str:
        """benchmark.handler; otherwise the handler of the model evaluated: `source` lists the
        candidates it is made of, with their weights (one candidate, weight 1, for a candidate);
        a soup's is that of its expert with the largest weight (the first of equal weights)."""
        if self.handler:
            return self.handler
        if not source:
            raise ConfigError("benchmark=bfcl: set benchmark.handler (the BFCL model whose prompt format to use)")
        candidate, _ = max(source, key=lambda cw: cw[1])
        name = own_handler(candidate)
        if not name:
            raise ConfigError(f"pool model {candidate.name!r} has no BFCL handler: set one in its pool entry (handler: a BFCL "
                              "model name, e.g. Salesforce/Llama-xLAM-2-8b-fc-r), or set benchmark.handler")
        name = check_handler(name, f"pool model {candidate.name!r} (its handler)")
        if len(source) > 1 and name not in self._announced:
            self._announced.add(name)
            log.info("  BFCL prompts of a soup: the handler of its largest-weight expert, %s (%s); benchmark.handler "
                     "sets one for every soup", candidate.name, name)
        return name

    def make_handler(self, name: str, model, tokenizer, client):
        """bfcl-eval's handler for the BFCL model `name`, speaking to `client` (greedy, as the leaderboard)."""
        cfg = import_bfcl().MODEL_CONFIG_MAPPING[name]
        handler = cfg.model_handler(model_name=cfg.model_name, temperature=0.001, registry_name=name,
                                    is_fc_model=cfg.is_fc_model)
        # what spin_up_local_server sets, without a server
        handler.tokenizer = tokenizer
        handler.model_path_or_id = getattr(model, "name_or_path", name)
        handler.max_context_length = _context_length(model, tokenizer)
        handler.client = client
        return handler

    # --- evaluation --------------------------------------------------------------------------------
    def example_ids(self, split: str) -> list[tuple[str, str]]:
        return [(e.id, e.category) for e in self.examples[split]]

    def evaluate(self, model, tokenizer, split: str, source: Sequence[tuple[object, float]] | None = None,
                 label: str | None = None, examples: Sequence[str] | None = None) -> EvalResult:
        from soce.evaluate.completions import BatchedCompletions

        if split not in self.examples:
            raise EvaluationError(f"benchmark=bfcl has no {split!r} split (it has {', '.join(self.examples)}; "
                                  "benchmark.split=none keeps one)")
        name = self.handler_for(source)
        handler = self.make_handler(name, model, tokenizer, None)
        handler.client = client = BatchedCompletions(model, tokenizer, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens,
                                                     context_length=handler.max_context_length)
        entries = only(self.examples[split], examples)
        self._check_prompt_format(handler, entries[0], name, model)
        _reset_multi_turn_state()
        with contextlib.redirect_stdout(io.StringIO()):  # the handlers print every multi-turn step
            raw = client.run(entries, lambda e: handler.inference(copy.deepcopy(e.prompt), False, True))
        records = [_result_record(e, r) for e, r in zip(entries, raw)]
        failed = sum(isinstance(r, BaseException) for r in raw)
        if failed:
            log.warning("  %d of %d BFCL entries failed during generation (scored wrong, as bfcl-eval scores them): %s",
                        failed, len(entries), _first_error(raw))
        outcomes = self.check(handler, entries, records)
        if self.result_dir is not None:
            folder = self.result_dir / f"{_slug(label or name)}-{split}"
            try:  # a piece of a split (search=halving's rungs) joins the point's earlier pieces
                self.write_results(handler, records, folder, whole=examples is None)
            except OSError as err:  # the scores are computed: they are kept, the files are not
                log.warning("  BFCL result files not written to %s (%s: %s); the scores are kept. Free the space or "
                            "make the folder writable; benchmark.result_files=false writes none",
                            err.filename or folder, type(err).__name__, err.strerror or err)
        return EvalResult(self.scores(outcomes, entries), tuple(outcomes))

    def check(self, handler, entries: Sequence[Entry], records: Sequence[dict]) -> list[Outcome]:
        """Each entry's result scored by bfcl-eval's checker for its category."""
        from bfcl_eval.eval_checker import eval_runner as er
        from bfcl_eval.constants.enums import Language, ReturnFormat
        from bfcl_eval.utils import is_java, is_js, is_multi_turn, is_relevance_or_irrelevance

        model_name = handler.registry_dir_name
        _reset_multi_turn_state()
        outcomes = []
        with contextlib.redirect_stdout(io.StringIO()):
            for e, rec in zip(entries, records):
                prompt, result = copy.deepcopy(e.checked), rec["result"]
                if is_relevance_or_irrelevance(e.file):
                    verdict = er._evaluate_single_relevance_entry(handler, e.id, result, prompt, model_name, e.file)
                elif is_multi_turn(e.file):
                    verdict = er._evaluate_single_multi_turn_entry(handler, e.id, result, e.answer, prompt, model_name, e.file)
                else:
                    language, fmt = ((Language.JAVA, ReturnFormat.JAVA) if is_java(e.file) else
                                     (Language.JAVASCRIPT, ReturnFormat.JAVASCRIPT) if is_js(e.file) else
                                     (Language.PYTHON, ReturnFormat.PYTHON))
                    verdict = er._evaluate_single_ast_entry(handler, e.id, result, e.answer, prompt, model_name, e.file,
                                                            language=language, return_format=fmt, has_tool_call_tag=False)
                output = result if isinstance(result, str) else _json(result)
                outcomes.append(Outcome("", e.id, e.category, bool(verdict["valid"]), output))
        return outcomes

    def scores_of(self, split: str, outcomes: Sequence[Outcome]) -> dict[str, float]:
        """The scores of a whole split from its outcomes, gathered (search=halving's rungs)."""
        by_id = {o.example_id: o for o in outcomes}
        entries = [e for e in self.examples[split] if e.id in by_id]
        return self.scores([by_id[e.id] for e in entries], entries)

    def scores(self, outcomes: Sequence[Outcome], entries: Sequence[Entry]) -> dict[str, float]:
        """Per column, the unweighted mean over its test files of their accuracies (the leaderboard's rule)."""
        by_file: dict[str, list[bool]] = {}
        for e, o in zip(entries, outcomes):
            by_file.setdefault(e.file, []).append(o.correct)
        scores = {}
        for category in self.categories:
            files = [f for f in CATEGORIES[category] if by_file.get(f)]
            scores[category] = sum(sum(by_file[f]) / len(by_file[f]) for f in files) / len(files) if files else 0.0
        return scores

    @staticmethod
    def write_results(handler, records: Sequence[dict], folder: Path, whole: bool = True) -> None:
        """The generations as BFCL result files (folder/<model>/<group>/BFCL_v4_<file>_result.json),
        written by the handler's own writer: `bfcl evaluate --result-dir folder --partial-eval` scores them.
        whole: the records are a whole split's, replacing what the folder held; otherwise a piece of it,
        merged by entry id into the files (a point evaluated rung by rung ends with every generation)."""
        folder.mkdir(parents=True, exist_ok=True)
        if whole:
            for path in folder.rglob("*_result.json"):  # an evaluation's files are its own, never appended to another's
                path.unlink()
        handler.write(list(records), result_dir=folder, update_mode=True)

    def _check_prompt_format(self, handler, entry: Entry, name: str, model) -> None:
        """The handler formats one prompt before anything is generated: a tokenizer it cannot use
        (no chat template, where the handler applies it) fails here, naming both."""
        try:
            handler._format_prompt([{"role": "user", "content": "hello"}], entry.prompt.get("function", []))
        except (ValueError, AttributeError, TypeError) as err:
            where = getattr(model, "name_or_path", "the model")
            if "chat_template" in str(err) or "chat template" in str(err):
                raise EvaluationError(f"{where}: its tokenizer has no chat template, and the BFCL handler of {name!r} formats "
                                      "prompts with it: give the tokenizer a chat_template, or choose a handler that writes "
                                      "its own prompt format (benchmark.handler)") from None
            raise EvaluationError(f"{where}: the BFCL handler of {name!r} cannot format a prompt with this tokenizer "
                                  f"({type(err).__name__}: {err})") from None


def _result_record(entry: Entry, raw) -> dict:
    """A BFCL result-file line: the handler's result, or the error it raised (bfcl-eval records
    'Error during inference: ...', which every checker scores wrong)."""
    if isinstance(raw, BaseException):
        if isinstance(raw, (KeyboardInterrupt, SystemExit, MemoryError)):
            raise raw
        return {"id": entry.id, "result": f"Error during inference: {raw}"}
    result, metadata = raw
    return {"id": entry.id, "result": result, **{k: v for k, v in metadata.items() if k != "inference_log"}}


def _check_writable(folder: Path) -> None:
    """The result folder can be written, checked before anything is generated."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".soce-write-check"):
            pass
    except OSError as err:
        raise EvaluationError(f"BFCL result files cannot be written to {folder} ({err.strerror or err}): make it writable, "
                              "or set benchmark.result_files=false to write none") from None


def _first_error(raw: Sequence) -> str:
    err = next(r for r in raw if isinstance(r, BaseException))
    return f"{type(err).__name__}: {err}"


def _reset_multi_turn_state() -> None:
    """bfcl-eval keeps each multi-turn entry's API instances (file system, ...) as globals of its
    executor, named by model and entry, for a process that evaluates each entry once. A sweep
    evaluates the same entries again: every evaluation starts from the entries' initial state."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    for key in [k for k in vars(multi_turn_utils) if k.endswith("_instance")]:
        del vars(multi_turn_utils)[key]


def _context_length(model, tokenizer) -> int:
    n = getattr(model.config, "max_position_embeddings", None)
    return int(n) if n else int(tokenizer.model_max_length)


def _json(value) -> str:
    import json

    return json.dumps(value, default=str)


def _slug(text: str) -> str:
    """A folder name for `text`: itself where it is one; otherwise its safe characters and a hash
    of the whole, so that two names never share a folder ('m+1' and 'm_1')."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "model"
    if safe == text:
        return text
    import hashlib

    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
