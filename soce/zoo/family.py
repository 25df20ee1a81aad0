"""The embedded model families: a tiny Llama base model trained on every toy_fc category, and
candidates fine-tuned from it.

- `default` is made the way the paper's pool is: every candidate is a short, low-learning-rate
  fine-tune of one base that already solves every category reasonably, with general
  (all-category) data mixed in, each emphasising some categories. The candidates stay close to
  the base and keep its skills; soce.zoo.realism measures that against criteria fixed in
  advance (docs/zoo.md).
- `specialists` (the default before) fine-tunes a weaker base on narrow mixtures at learning
  rates near the base's own: the candidates forget what the base knew outside their mixture,
  so souping them trades one skill for another.
- `micro`, for tests: four candidates of the specialists kind, built in well under a minute.

Built once into a cache directory keyed by the family's spec; a model whose files do not
match the manifest's checksums is rebuilt, never trusted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from soce.artifacts import files_digest
from soce.errors import ConfigError
from soce.locks import wait_for_lock
from soce.progress import Progress
from soce.threads import compute_threads
from soce.toy_fc import fc, tokenizer

log = logging.getLogger(__name__)
# The code a family is made by (its data, tokenizer and training): part of the cache key, so
# that a change to any of it builds the family anew instead of reusing models made otherwise.
# (Trained with MKL's strict reproducibility, soce/__init__.py: the same bits on 1 or 2 threads.)
SOURCES = [Path(__file__), Path(fc.__file__), Path(tokenizer.__file__)]


@dataclass(frozen=True)
class CandidateSpec:
    name: str
    mixture: dict[str, float]  # category -> share of the training batches
    steps: int
    lr: float
    seed: int


@dataclass(frozen=True)
class FamilySpec:
    name: str
    hidden: int
    layers: int
    base_steps: int
    base_lr: float
    candidates: tuple[CandidateSpec, ...]
    batch_size: int = 64
    train_per_category: int = 2000
    seed: int = 0
    level: int = 1  # the toy_fc level it is trained on (and evaluated on: benchmark.level)
    base_mixture: dict[str, float] | None = None  # the base's training batches by category (None: every one alike)
    # level 3: the share of the base's examples that ask for their category's own skill (None:
    # the level's, as the candidates'): a base that has seen little of each
    base_twisted: float | None = None
    # Each step's batch sorted by length and run in this many pieces, each padded to its own
    # longest: the same gradient (each piece's loss weighted by its share of the answer tokens)
    # for less padding (a third of a mixed batch). 1: one piece, as the families before it.
    length_buckets: int = 1

    def key(self) -> str:
        blob = json.dumps({"code": files_digest(SOURCES), **asdict(self)}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


UNIFORM = {c: 1.0 for c in fc.CATEGORIES}


def mixed(general: float, **emphasis: float) -> dict[str, float]:
    """A fine-tuning mixture: the share `general` of the batches drawn from every category alike
    (the general data real fine-tunes mix in), the rest from the emphasised categories, in the
    given proportions."""
    unknown = set(emphasis) - set(fc.CATEGORIES)
    if unknown or not 0 <= general <= 1:
        raise ValueError(f"mixed({general}, {emphasis}): categories are {', '.join(fc.CATEGORIES)}, general in [0, 1]")
    total = sum(emphasis.values())
    return {c: general / len(fc.CATEGORIES) + (1 - general) * emphasis.get(c, 0.0) / total for c in fc.CATEGORIES}


def specialised(mixture: dict[str, float]) -> tuple[str, ...]:
    """The categories a mixture emphasises: those given more than an even share of its batches."""
    total = sum(mixture.values())
    return tuple(c for c in fc.CATEGORIES if mixture.get(c, 0.0) / total > 1 / len(fc.CATEGORIES) + 1e-9)


FAMILIES = {
    # Trained and scored on toy_fc level 3, where each category asks for a skill of its own in 40 %
    # of its requests (numbers in words, namesakes, two values of one argument, a request that
    # refers back, a namesake asked for; json: its format). The base is a general model that has
    # never seen those skills (base_twisted=0): 500 steps on every category's other requests, at
    # least 0.5 on each on dev. The candidates are fine-tunes at a third of its learning rate or
    # less, for 30-180 steps; the specialised ones (one skill each, fc-multi-long two) draw 20-50 %
    # of their batches from every category alike. Chosen from trial builds judged on the
    # candidates alone (scripts/zoo_trials.py t17, issue 37), before any soup of it was evaluated.
    "default": FamilySpec(
        name="default", hidden=128, layers=2, base_steps=500, base_lr=3e-3, level=3, length_buckets=2, base_twisted=0.0,
        base_mixture={"simple": 1, "multiple": 1, "parallel": 1.3, "parallel_multiple": 1.3, "irrelevance": 1, "json": 0.8},
        candidates=(
            CandidateSpec("fc-generalist", UNIFORM, 100, 5e-4, 1),
            CandidateSpec("fc-json", mixed(0.2, json=1), 150, 6e-4, 2),
            CandidateSpec("fc-parallel", mixed(0.5, parallel=1), 180, 6e-4, 3),
            CandidateSpec("fc-relevance", mixed(0.4, irrelevance=1), 160, 8e-4, 4),
            CandidateSpec("fc-simple-short", mixed(0.4, simple=1), 120, 8e-4, 5),
            CandidateSpec("fc-hot", UNIFORM, 60, 1e-3, 6),
            CandidateSpec("fc-multi-long", mixed(0.3, multiple=1, parallel_multiple=1), 170, 8e-4, 7),
            CandidateSpec("fc-undertrained", UNIFORM, 30, 5e-4, 8),
        ),
    ),
    # The default until issue 18, unchanged but for its name (same seeds, same weights).
    "specialists": FamilySpec(
        name="specialists", hidden=128, layers=2, base_steps=250, base_lr=3e-3,
        candidates=(
            CandidateSpec("fc-generalist", UNIFORM, 200, 1e-3, 1),
            CandidateSpec("fc-json", {"json": 0.6, "simple": 0.2, "multiple": 0.1, "irrelevance": 0.1}, 200, 2e-3, 2),
            CandidateSpec("fc-parallel", {"parallel": 0.45, "parallel_multiple": 0.45, "simple": 0.1}, 200, 2e-3, 3),
            CandidateSpec("fc-relevance", {"irrelevance": 0.4, "multiple": 0.4, "simple": 0.2}, 150, 2e-3, 4),
            CandidateSpec("fc-simple-short", {"simple": 1.0}, 60, 2e-3, 5),
            CandidateSpec("fc-hot", UNIFORM, 120, 8e-3, 6),
            CandidateSpec("fc-multi-long", {"parallel_multiple": 0.5, "json": 0.2, "multiple": 0.3}, 300, 1e-3, 7),
            CandidateSpec("fc-undertrained", UNIFORM, 30, 1e-3, 8),
        ),
    ),
    "micro": FamilySpec(
        name="micro", hidden=128, layers=2, base_steps=300, base_lr=3e-3, train_per_category=600, batch_size=32,
        candidates=(
            CandidateSpec("micro-generalist", UNIFORM, 80, 1e-3, 1),
            CandidateSpec("micro-json", {"json": 0.7, "simple": 0.3}, 80, 2e-3, 2),
            CandidateSpec("micro-parallel", {"parallel": 0.5, "parallel_multiple": 0.5}, 80, 2e-3, 3),
            CandidateSpec("micro-relevance", {"irrelevance": 0.5, "multiple": 0.5}, 60, 2e-3, 4),
        ),
    ),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SOCE_CACHE", Path.home() / ".cache" / "soce")) / "zoo"


@dataclass
class Family:
    """A built family: the base model's and the candidates' directories."""

    spec: FamilySpec
    root: Path
    base: Path = field(init=False)
    candidates: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        self.base = self.root / "base"
        self.candidates = {c.name: self.root / c.name for c in self.spec.candidates}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_intact(model_dir: Path) -> bool:
    """The model directory holds exactly the files its manifest names (no more: an extra weights
    index would change what is loaded), with their checksums."""
    manifest = model_dir / "manifest.json"
    try:
        files = json.loads(manifest.read_text())["files"]
        present = {p.name for p in model_dir.iterdir()} - {manifest.name}
        return present == set(files) and all(_sha256(model_dir / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _save(model, tokenizer, model_dir: Path, meta: dict) -> None:
    tmp = model_dir.with_name(model_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
    (tmp / "manifest.json").write_text(json.dumps({"files": files, **meta}, indent=2))
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)


def build_family(variant: str = "default", cache_dir: str | Path | None = None, progress: bool = True) -> Family:
    """The family, from the cache where intact, trained here otherwise."""
    if variant not in FAMILIES:
        raise ConfigError(f"pool.zoo={variant!r}: expected one of {', '.join(FAMILIES)}")
    spec = FAMILIES[variant]
    family = Family(spec, Path(cache_dir or default_cache_dir()) / spec.key())
    if _missing(family):
        family.root.mkdir(parents=True, exist_ok=True)
        # one builder at a time (processes of a launch, jobs of a multirun); the others wait,
        # then find the family intact
        with (family.root.parent / f"{family.root.name}.lock").open("w") as lock:
            wait_for_lock(lock, f"the {spec.name} family, which another process is building (a few minutes)", log)
            todo = _missing(family)
            if todo:
                _build(family, todo, progress)
    return family


def _missing(family: Family) -> list[str]:
    """The family's models to train: those not intact in the cache (all of them without the base)."""
    spec = family.spec
    todo = [] if _is_intact(family.base) else ["base"]
    return todo + [c.name for c in spec.candidates if "base" in todo or not _is_intact(family.candidates[c.name])]


def _build(family: Family, todo: list[str], progress: bool) -> None:
    for name in todo:
        if (family.root / name).exists():
            log.warning("zoo: %s in %s does not match its manifest (missing, extra or changed files): rebuilding it", name, family.root)
    Trainer(family.spec).build(family, todo, progress)


class Trainer:
    """Trains the family's models on toy_fc's training examples: the train side of the prompt
    space, disjoint by construction from every dev and test split (fc.side_of)."""

    def __init__(self, spec: FamilySpec) -> None:
        self.spec = spec
        self.tokenizer = tokenizer.build_tokenizer(spec.level)
        self.by_category = self.examples(None)

    @functools.cached_property
    def base_by_category(self) -> dict[str, list[fc.Example]]:
        """The base's training examples: the candidates', unless its spec sets its own share of
        each category's own skill (drawn only when the base is trained)."""
        twisted = self.spec.base_twisted
        return self.by_category if twisted is None else self.examples(twisted)

    def examples(self, twisted: float | None) -> dict[str, list[fc.Example]]:
        spec = self.spec
        examples = fc.generate_examples(spec.seed + 1000, spec.train_per_category, "train", tag="train-", level=spec.level,
                                        twisted=twisted)
        return {c: [e for e in examples if e.category == c] for c in fc.CATEGORIES}

    def new_model(self):
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = self.tokenizer
        config = LlamaConfig(
            vocab_size=len(tok), hidden_size=self.spec.hidden, intermediate_size=2 * self.spec.hidden,
            num_hidden_layers=self.spec.layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
            tie_word_embeddings=True, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )
        torch.manual_seed(self.spec.seed)
        return LlamaForCausalLM(config)

    def build(self, family: Family, todo: list[str], progress: bool) -> None:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per model saved and loaded: the build has its own

        spec = self.spec
        specs = {c.name: c for c in spec.candidates}
        total = sum(spec.base_steps if n == "base" else specs[n].steps for n in todo)
        started = time.perf_counter()
        log.info("zoo %s: training %s (%d steps; a few minutes on 2 idle cores, more on a busy machine)",
                 spec.name, ", ".join(todo), total)
        with Progress(total, f"zoo {spec.name}", "step", enabled=progress) as bar:
            if "base" in todo:
                model = self.new_model()
                self.train(model, spec.base_mixture or UNIFORM, spec.base_steps, spec.base_lr, spec.seed, bar, self.base_by_category)
                _save(model, self.tokenizer, family.base, {"role": "base"})
            for name in todo:
                if name == "base":
                    continue
                c = specs[name]
                model = AutoModelForCausalLM.from_pretrained(family.base)
                self.train(model, c.mixture, c.steps, c.lr, c.seed, bar, self.by_category)
                _save(model, self.tokenizer, family.candidates[name], {"role": "candidate", **asdict(c)})
        log.info("zoo %s: built %s in %.0f s, in %s", spec.name, ", ".join(todo), time.perf_counter() - started, family.root)

    def batch(self, examples: list[fc.Example]) -> dict[str, torch.Tensor]:
        """Prompt and answer token ids; the loss is on the answer and </s> only."""
        tok = self.tokenizer
        seqs, starts = [], []
        for e in examples:
            prompt = tok(e.prompt)["input_ids"]  # <s> first
            answer = tok(e.answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seqs.append(prompt + answer)
            starts.append(len(prompt))
        length = max(map(len, seqs))
        ids = torch.full((len(seqs), length), tok.pad_token_id)
        labels = torch.full((len(seqs), length), -100)
        mask = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, (s, start) in enumerate(zip(seqs, starts)):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, start: len(s)] = torch.tensor(s[start:])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def train(self, model, mixture: dict[str, float], steps: int, lr: float, seed: int, bar: Progress,
              by_category: dict[str, list[fc.Example]]) -> None:
        torch.manual_seed(seed)
        rng = random.Random(seed)
        categories = list(mixture)
        shares = [mixture[c] for c in categories]
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        warmup = max(1, min(50, steps // 5))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.05, 1 - s / steps))
        model.train()
        with compute_threads():  # tiny models: the free cores, chosen again for each model (soce.threads)
            self._steps(model, opt, sched, categories, shares, rng, steps, bar, by_category)
        model.eval()

    def _steps(self, model, opt, sched, categories, shares, rng, steps: int, bar: Progress, by_category) -> None:
        for _ in range(steps):
            cats = rng.choices(categories, shares, k=self.spec.batch_size)
            loss = self._backward(model, [rng.choice(by_category[c]) for c in cats])
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def _backward(self, model, examples: list[fc.Example]) -> float:
        """The batch's gradient (mean loss over its answer tokens) accumulated piece by piece
        (spec.length_buckets pieces of similar length); the batch's loss."""
        if self.spec.length_buckets == 1:
            loss = model(**self.batch(examples)).loss
            loss.backward()
            return loss.item()
        batches = [self.batch(piece) for piece in _pieces(sorted(examples, key=_characters), self.spec.length_buckets)]
        tokens = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]  # the tokens the shifted loss counts
        total = 0.0
        for b, n in zip(batches, tokens):
            loss = model(**b).loss * (n / sum(tokens))
            loss.backward()
            total += loss.item()
        return total


def _characters(example: fc.Example) -> int:
    return len(example.prompt) + len(example.answer)  # the order of the token counts, near enough to bucket by


def _pieces(items: list, k: int) -> list[list]:
    size = -(-len(items) // k)
    return [items[i: i + size] for i in range(0, len(items), size)]
