"""The soup as a Hub model: soup/README.md, a model card with the Hugging Face Hub's YAML front
matter (the experts as the base models of a merge, tags), the experts and their weights, how
they were chosen, the objective and its scores with intervals on each split, and the command
that reproduces it; and its upload (soup.push_to_hub=REPO)."""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from soce import __version__
from soce.errors import ConfigError, SoceError
from soce.objective import label_of
from soce.progress import plural
from soce.significance import supported
from soce.weights import weight_text

log = logging.getLogger("soce")

TAGS = ["merge", "model-soup", "soce"]


@dataclass(frozen=True)
class Ingredient:
    name: str  # its pool name
    source: str | None  # its Hub id, or its directory where it has none (None: its name alone, local_source)
    hub_id: str | None
    weight: float


def model_card(*, study: str, benchmark: str, results: dict, selection: dict, ingredients: Sequence[Ingredient],
               command: str) -> str:
    """The card's text: front matter (huggingface_hub.ModelCardData) and markdown."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="transformers", tags=TAGS,
                         base_model=[i.hub_id for i in ingredients if i.hub_id] or None,
                         base_model_relation="merge" if any(i.hub_id for i in ingredients) else None)
    searched = results["rows"][-1]
    splits = [s for s in ("dev", "test") if s in searched]
    md = [f"# {study}: a soup of {plural(len(ingredients), 'model')}", "",
          f"A weighted average of the parameters of {plural(len(ingredients), 'fine-tune')} of one base model, made by "
          "[soce](https://arxiv.org/abs/2511.13254) (Soup Of Category Experts) on the benchmark "
          f"`{benchmark}`. No training: the weights were searched ({results['search']} search) on the {results['select_on']} split.",
          "", "## Ingredients", "", "| model | weight | why |", "|---|---|---|"]
    why = {e["model"]: e["reason"] for e in selection["experts"]}
    md += [f"| {i.source if i.hub_id else f'{i.name} (`{i.source}`)' if i.source else f'{i.name} (a local checkpoint)'} | "
           f"{weight_text(i.weight)} | {why.get(i.name, '')} |" for i in ingredients]
    weak = selection.get("weak_set")
    md += ["", "## How the experts were chosen", "",
           f"selection: {selection['strategy']}" + (f"; the weak set of categories: {', '.join(weak)}" if weak else "") + ".",
           "", f"## Scores ({label_of(results)}; {results['protocol']})", "",
           "| | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for row in results["rows"]:
        md.append(f"| {row['name']} | " + " | ".join(_score(row.get(s)) for s in splits) + " |")
    stats = results.get("statistics")
    if stats:
        md += ["", f"In brackets, {stats['confidence']:.0%} intervals of a paired bootstrap ({stats['bootstrap']} resamples "
               "of the examples, within each category)."]
        split = splits[-1]
        md += ["", f"What the data supports, on {split} (better or worse only where the interval is clear of 0):", ""]
        md += [f"- {sentence}" for sentence in supported(results, split)]
    md += ["", "## Reproduce", "", f"With soce {__version__} (`pip install soce=={__version__}`, CPU or CUDA torch first):", "",
           "```bash", command, "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(md)


def local_source(path: str, run_dir: Path) -> str | None:
    """A local expert as its card names it: relative to the run directory where it lies inside
    it, as given where the user gave it outside their home; None (its name alone) for a path in
    a home directory, such as a cache (the card is public, the path is nobody else's)."""
    resolved = Path(path).expanduser().resolve()
    if resolved.is_relative_to(run_dir.resolve()):
        return str(resolved.relative_to(run_dir.resolve()))
    return None if resolved.is_relative_to(Path.home().resolve()) else path


def _score(part: dict | None) -> str:
    if not part:
        return "n/a"
    ci = part.get("ci")
    return f"{part['objective']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def command_line(overrides: Sequence[str], multirun: bool = False) -> str:
    """`soce [-m] OVERRIDES...` as a shell reads it (each override quoted where it needs to be)."""
    return " ".join(["soce", *(["-m"] if multirun else []), *(shlex.quote(str(o)) for o in overrides)])


def command_of(run_dir: Path, fallback: Sequence[str]) -> str:
    """`soce` with the overrides the run was started with (Hydra's .hydra/overrides.yaml), or
    with `fallback` where there is none (a study run from Python)."""
    from omegaconf import OmegaConf

    saved = run_dir / ".hydra" / "overrides.yaml"
    return command_line(list(OmegaConf.load(saved)) if saved.exists() else list(fallback))


def check_push(repo: str | None) -> None:
    """soup.push_to_hub: a valid repo id and a token to push with, known before any evaluation."""
    if repo is None:
        return
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ConfigError(f"soup.push_to_hub={repo}: not a Hub repo id ({err}); write it as NAME or OWNER/NAME") from None
    if get_token() is None:
        raise ConfigError(f"soup.push_to_hub={repo}: no Hugging Face token here; log in (`hf auth login`) or set HF_TOKEN")
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise ConfigError(f"soup.push_to_hub={repo}: the Hugging Face Hub is in offline mode here (HF_HUB_OFFLINE=1), so the "
                          "upload would fail after the whole study: unset HF_HUB_OFFLINE, or drop soup.push_to_hub and upload "
                          "soup/ later (`hf upload REPO soup/`)")


def push(folder: Path, repo: str, private: bool | None) -> str:
    """Upload the soup's folder to the Hub repo `repo` (created where it does not exist); its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="soce: the soup, its config and model card")
    except Exception as err:  # offline, no rights, a name taken: the soup stays on disk
        raise SoceError(f"soup.push_to_hub={repo}: the upload failed ({type(err).__name__}: {err}); the soup and its card "
                        f"are kept in {folder}: `hf upload {repo} {folder}` uploads them") from None
    log.info("soup: pushed to %s", url)
    return str(url)
