"""An OpenAI completions endpoint served by an engine (soce.engine), for bfcl-eval's handlers.

bfcl-eval's open-weights handlers format a prompt and call `client.completions.create(...)` on
a vLLM or SGLang server. soce hands them this client instead: each test entry runs in its own
thread (as bfcl-eval's own generation runs them, against a server), and the requests of the
entries in flight are generated together, in batches, by the engine: no server, no disk.

A batch is generated when every entry in flight is waiting for its completion, so which
requests share a batch does not depend on thread timing: the same weights give the same
generations. Decoding is greedy, as the leaderboard's (temperature 0.001, in effect greedy).
Prompts are tokenized as vLLM's completions endpoint tokenizes them (special tokens added).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Iterable, Sequence

# A batch's rows are padded to its longest prompt, and a padded batch's attention is computed with
# an explicit mask: batch x width^2 scores per head (on a CPU, materialised). A batch holds at most
# this many, so long prompts (multi-turn entries: 10k tokens and more) are generated alone.
ATTENTION_BUDGET = 4096 * 4096


class PromptTooLong(ValueError):
    """The prompt does not fit the model's context (a server answers such a request with an error)."""


@dataclass
class _Request:
    prompt: str
    max_tokens: int
    stop_token_ids: tuple[int, ...]
    skip_special_tokens: bool
    done: threading.Event = field(default_factory=threading.Event)
    response: object = None
    error: BaseException | None = None


class _Completions:
    def __init__(self, server: "BatchedCompletions") -> None:
        self._server = server

    def create(self, *, prompt: str, max_tokens: int, extra_body: dict | None = None, **_ignored):
        """The completions call bfcl-eval's OSSHandler makes (model, temperature and timeout are the
        server's concern: the model is the live one, decoding is greedy, nothing times out)."""
        extra = extra_body or {}
        request = _Request(prompt, int(max_tokens), tuple(extra.get("stop_token_ids") or ()),
                           bool(extra.get("skip_special_tokens", True)))
        return self._server.submit(request)


class BatchedCompletions:
    """The client (`.completions.create`) and the scheduler that serves it from `engine`."""

    def __init__(self, engine, *, batch_size: int, max_new_tokens: int | None = None) -> None:
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens  # a cap on every request's max_tokens (smoke runs)
        self.completions = _Completions(self)
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._running = 0  # entries in flight: each is computing, or waiting in _pending
        self._failed: BaseException | None = None  # generation failed: every later request fails at once
        self.generated_tokens = 0
        self.prompt_tokens = 0

    # --- the worker side --------------------------------------------------------------------
    def submit(self, request: _Request):
        with self._cond:
            if self._failed is not None:
                raise self._failed
            self._pending.append(request)
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.response

    # --- the scheduler ------------------------------------------------------------------------
    def run(self, items: Sequence, work: Callable[[object], object], done: Callable[[], None] = lambda: None) -> list:
        """work(item) for every item, `batch_size` at a time in threads, their completions served
        here in batches; returns the results in the order of `items`. An exception in `work`
        is its item's result (the caller decides what it means); one in generation is raised.
        done() is called after each item, one call at a time (a progress bar's update)."""
        results: list = [None] * len(items)
        queue = iter(range(len(items)))
        lock = threading.Lock()

        def next_item() -> int | None:
            with lock:
                return next(queue, None)

        def worker(first: int) -> None:
            i = first
            while i is not None:
                try:
                    results[i] = work(items[i])
                except BaseException as err:  # noqa: BLE001 - the item's result, judged by the caller
                    results[i] = err
                with lock:
                    done()
                # the next item is taken before this one counts as done: the number in flight
                # changes only when the items run out, so a batch never starts early
                i = next_item()
                if i is None:
                    with self._cond:
                        self._running -= 1
                        self._cond.notify_all()

        firsts = [i for i in (next_item() for _ in range(min(self.batch_size, len(items)))) if i is not None]
        with self._cond:
            self._running = len(firsts)
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in firsts]
        for t in threads:
            t.start()
        self._failed, batch = None, []
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._running == 0 or len(self._pending) == self._running)
                    if self._running == 0:
                        break
                    batch, self._pending = self._pending, []
                self._serve(batch)
        except BaseException as err:
            with self._cond:  # let the workers finish: their requests, now and later, fail
                self._failed = err
                for r in self._pending + batch:
                    r.error = r.error or err
                    r.done.set()
                self._pending = []
            raise
        finally:
            for t in threads:
                t.join()
        return results

    def _serve(self, requests: list[_Request]) -> None:
        """Generate every waiting request, in batches of similar length (in an order that depends
        on the prompts only)."""
        encoded = []
        for r in requests:
            ids = self.tokenizer(r.prompt, add_special_tokens=True)["input_ids"]
            if self.engine.context_length is not None and len(ids) + 1 > self.engine.context_length:
                r.error = PromptTooLong(f"the prompt has {len(ids)} tokens; the model's context is {self.engine.context_length}")
                r.done.set()
                continue
            encoded.append((r, ids))
        encoded.sort(key=lambda pair: (len(pair[1]), pair[0].prompt))
        for chunk in self._batches(encoded):
            texts = self._generate([ids for _, ids in chunk], [r for r, _ in chunk])
            for (r, ids), (text, n_new) in zip(chunk, texts):
                r.response = SimpleNamespace(choices=[SimpleNamespace(text=text, finish_reason="stop")],
                                             usage=SimpleNamespace(prompt_tokens=len(ids), completion_tokens=n_new))
                r.done.set()

    def _batches(self, encoded: list) -> Iterable[list]:
        """Consecutive runs of the length-sorted requests: at most batch_size, within ATTENTION_BUDGET."""
        chunk: list = []
        for pair in encoded:
            width = len(pair[1])  # sorted: the newest is the longest
            if chunk and (len(chunk) >= self.batch_size or (len(chunk) + 1) * width * width > ATTENTION_BUDGET):
                yield chunk
                chunk = []
            chunk.append(pair)
        if chunk:
            yield chunk

    def _generate(self, prompts: list[list[int]], requests: list[_Request]) -> list[tuple[str, int]]:
        limits = [self._limit(r, len(p)) for r, p in zip(requests, prompts)]
        stops = set(self.engine.eos_ids) | {s for r in requests for s in r.stop_token_ids}
        texts = []
        for new, r in zip(self.engine.generate(prompts, limits, stops), requests):
            self.generated_tokens += len(new)
            texts.append((self.tokenizer.decode(new, skip_special_tokens=r.skip_special_tokens), len(new)))
        self.prompt_tokens += sum(map(len, prompts))
        return texts

    def _limit(self, request: _Request, prompt_len: int) -> int:
        limit = max(1, request.max_tokens)
        if self.engine.context_length is not None:
            limit = min(limit, self.engine.context_length - prompt_len)
        return max(1, min(limit, self.max_new_tokens) if self.max_new_tokens else limit)

