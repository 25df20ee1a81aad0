"""The soup as a Hub model: its model card (soup/README.md) read back by huggingface_hub, and
soup.push_to_hub with the network mocked (the Hub's create_repo and upload_folder: the only mock)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import MICRO_STUDY, compose_cfg
from soce import config
from soce.card import Ingredient, command_of, model_card, push
from soce.errors import ConfigError, SoceError
from soce.weights import weight_text


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hub's calls recorded instead of sent; a token in the environment, none stored."""
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, folder_path, repo_id, **kw):
        calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_the_soup_has_a_model_card_and_is_pushed_to_the_hub(study, zoo_cache, tmp_path, hub):
    from huggingface_hub import ModelCard

    study(*MICRO_STUDY, "search.budget=3", f"pool.cache_dir={zoo_cache}", "stage=soup", "tracker=none",
          "soup.push_to_hub=someone/micro-soup", "soup.private=true")
    soup = tmp_path / "run" / "soup"
    card = ModelCard.load(soup / "README.md")
    assert card.data.tags == ["merge", "model-soup", "soce"] and card.data.library_name == "transformers"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    searched = results["rows"][-1]
    for name, weight in zip(searched["models"], searched["weights"]):
        assert f"| {name} (" in card.text and f"| {weight_text(weight)} |" in card.text
    test = searched["test"]
    assert f"{test['objective']:.4f} [{test['ci'][0]:.4f}, {test['ci'][1]:.4f}]" in card.text  # the score, its interval
    from soce.significance import supported

    claims = supported(results, "test")  # the same sentences as the log and the report, by the same rule
    assert len(claims) >= 7 and all(f"- {c}" in card.text for c in claims)
    command = ("soce benchmark=toy_fc benchmark.backend=direct benchmark.per_category=20 pool=toy_zoo_micro selection=topk "
               "selection.k=3 search=grid search.budget=3")
    assert command in card.text  # the overrides it was run with
    assert hub == [("create_repo", "someone/micro-soup", {"private": True, "exist_ok": True}),
                   ("upload_folder", "someone/micro-soup", sorted(p.name for p in soup.iterdir()))]
    assert "README.md" in hub[1][2] and "config.json" in hub[1][2]


def test_the_push_comes_after_the_report_and_a_failed_one_costs_no_product(study, zoo_cache, tmp_path, hub, monkeypatch):
    """The upload is the study's last step: report.md is written before it, and when it fails
    every product is recorded and kept (a rerun makes nothing again) and the error says how to
    upload later. Local experts in a home directory are named, never shown by their path."""
    from huggingface_hub import HfApi

    def refused(self, **kw):
        raise PermissionError("403 Forbidden: this token cannot write to someone/micro-soup")

    monkeypatch.setattr(HfApi, "upload_folder", refused)
    args = [*MICRO_STUDY, "search.budget=3", "report.line_points=0", f"pool.cache_dir={zoo_cache}", "tracker=none"]
    monkeypatch.setenv("HOME", str((zoo_cache / "zoo").resolve().parent))  # the family's cache in the user's home, as by default
    with pytest.raises(SoceError, match=r"the upload failed \(PermissionError: 403 Forbidden.*`hf upload someone/micro-soup "):
        study(*args, "soup.push_to_hub=someone/micro-soup")
    run = tmp_path / "run"
    assert (run / "report.md").exists() and (run / "soup" / "README.md").exists()
    card = (run / "soup" / "README.md").read_text()
    assert "(a local checkpoint)" in card and str((zoo_cache / "zoo").resolve()) not in card and "pip install soce==" in card
    again = study(*args, "stage=soup")  # everything current: nothing made again, nothing moved aside
    assert not (run / "superseded").exists() and "stage soup makes" not in again.log


def test_a_card_names_hub_experts_as_the_base_models_of_a_merge_and_the_command_run(tmp_path):
    from huggingface_hub import ModelCard

    results = {"objective": "mean", "protocol": "one split", "search": "grid", "select_on": "dev",
               "rows": [{"name": "searched soup", "dev": {"objective": 0.81}}]}
    selection = {"strategy": "soce", "weak_set": ["Live Simple AST", "Multi Turn Base"],
                 "experts": [{"model": "a", "reason": "best on Live Simple AST"}, {"model": "b", "reason": "best on Multi Turn Base"}]}
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- experiment=paper_bfcl_8b\n- selection.tau=0.1\n- study=it's\n")
    text = model_card(study="s", benchmark="bfcl", results=results, selection=selection, command=command_of(tmp_path, []),
                      ingredients=[Ingredient("a", "org/a", "org/a", 0.7), Ingredient("b", "/models/b", None, 0.3)])
    card = ModelCard(text)
    assert card.data.base_model == ["org/a"] and card.data.base_model_relation == "merge"
    assert "| org/a | 0.70 | best on Live Simple AST |" in text and "| b (`/models/b`) | 0.30 |" in text
    assert "the weak set of categories: Live Simple AST, Multi Turn Base" in text and "| searched soup | 0.8100 |" in text
    assert "soce experiment=paper_bfcl_8b selection.tau=0.1 'study=it'\"'\"'s'" in text  # as a shell reads it


def test_a_failed_upload_names_the_repo_and_keeps_the_soup(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    def offline(self, *a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(HfApi, "create_repo", offline)
    (tmp_path / "soup").mkdir()
    with pytest.raises(SoceError, match=r"soup.push_to_hub=me/soup: the upload failed \(ConnectionError: no network\); "
                                        rf"the soup and its card are kept in {tmp_path / 'soup'}: `hf upload me/soup"):
        push(tmp_path / "soup", "me/soup", None)
    assert (tmp_path / "soup").exists()


@pytest.mark.parametrize("repo, token, message", [
    ("me/too/deep", "hf_x", "soup.push_to_hub=me/too/deep: not a Hub repo id"),
    ("me/soup", None, "soup.push_to_hub=me/soup: no Hugging Face token here; log in (`hf auth login`) or set HF_TOKEN"),
])
def test_a_push_that_cannot_happen_is_refused_before_any_evaluation(monkeypatch, tmp_path, repo, token, message):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate(compose_cfg([f"soup.push_to_hub={repo}"]))
