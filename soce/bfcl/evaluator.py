"""BFCL, scored as the leaderboard scores a model: through its own package, bfcl-eval.

bfcl-eval supplies everything BFCL is made of: the test entries and their possible answers,
each model's prompt handler (prompt format, decoding of the output, the multi-turn loop), and
the checkers (AST, relevance, multi-turn state execution). soce supplies the model: the
handler's completions client is served by the engine (soce.bfcl.completions), so a soup is
evaluated in place, without a disk write or a server.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
from pathlib import Path
from typing import Sequence

from soce.bfcl.data import (CATEGORIES, Entry, bfcl_version, check_categories, check_handler, import_bfcl,
                            load_entries, own_handler, split_entries)
from soce.errors import ConfigError, EvaluationError
from soce.evaluate import EvalResult, Evaluator, only
from soce.progress import Progress
from soce.scores import Outcome

log = logging.getLogger(__name__)


class BfclEvaluator(Evaluator):
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
    def soup_question(self, candidates) -> dict:
        """A soup's prompts are its experts' handlers'."""
        return {"handlers": {c.name: own_handler(c) for c in candidates}}

    def prompt_key(self, source: Sequence[tuple[object, float]] | None) -> str:
        return self.handler_for(source)

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

    def make_handler(self, name: str, engine, client):
        """bfcl-eval's handler for the BFCL model `name`, speaking to `client` (greedy, as the leaderboard)."""
        cfg = import_bfcl().MODEL_CONFIG_MAPPING[name]
        handler = cfg.model_handler(model_name=cfg.model_name, temperature=0.001, registry_name=name,
                                    is_fc_model=cfg.is_fc_model)
        # what spin_up_local_server sets, without a server
        handler.tokenizer = engine.tokenizer
        handler.model_path_or_id = engine.name
        handler.max_context_length = engine.context_length
        handler.client = client
        return handler

    # --- evaluation --------------------------------------------------------------------------------
    def benchmark_objective(self):
        """The leaderboard's Overall Acc from each test file's accuracy (BFCL v3's weights)."""
        from soce.bfcl.data import V3_OVERALL, V3_OVERALL_LABEL
        from soce.objective import Weighted

        return Weighted("bfcl_v3_overall", V3_OVERALL_LABEL, V3_OVERALL,
                        {e.id: e.file for items in self.examples.values() for e in items})

    def example_ids(self, split: str) -> list[tuple[str, str]]:
        return [(e.id, e.category) for e in self.examples[split]]

    def evaluate(self, engine, split: str, source: Sequence[tuple[object, float]] | None = None,
                 label: str | None = None, examples: Sequence[str] | None = None) -> EvalResult:
        from soce.bfcl.completions import BatchedCompletions

        if split not in self.examples:
            raise EvaluationError(f"benchmark=bfcl has no {split!r} split (it has {', '.join(self.examples)}; "
                                  "benchmark.split=none keeps one)")
        name = self.handler_for(source)
        handler = self.make_handler(name, engine, None)
        handler.client = client = BatchedCompletions(engine, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens)
        entries = only(self.examples[split], examples)
        self._check_prompt_format(handler, entries[0], name, engine.name)
        _reset_multi_turn_state()
        # entry by entry: a bar on a terminal, a line every 30 s in soce.log (a model's BFCL run is minutes)
        with contextlib.redirect_stdout(io.StringIO()), \
                Progress(len(entries), f"bfcl {label or engine.name} on {split}", "entry") as bar:  # handlers print every step
            raw = client.run(entries, lambda e: handler.inference(copy.deepcopy(e.prompt), False, True), bar.update)
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

    def _check_prompt_format(self, handler, entry: Entry, name: str, where: str) -> None:
        """The handler formats one prompt before anything is generated: a tokenizer it cannot use
        (no chat template, where the handler applies it) fails here, naming both."""
        try:
            handler._format_prompt([{"role": "user", "content": "hello"}], entry.prompt.get("function", []))
        except (ValueError, AttributeError, TypeError) as err:
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
