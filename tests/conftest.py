from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BFCL_FIXTURE = ROOT / "tests" / "data" / "bfcl_overall_fixture.csv"


@pytest.fixture
def soce(tmp_path):
    """Run the real CLI (`python -m soce ...`) in a subprocess, with W&B kept inside tmp_path."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        environ.update(WANDB_CONFIG_DIR=str(tmp_path / ".wandb-config"), WANDB_CACHE_DIR=str(tmp_path / ".wandb-cache"))
        environ.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "soce", *args], cwd=cwd or tmp_path, env=environ,
            capture_output=True, text=True, timeout=300,
        )

    return run


def accelerate_launch(args: list[str], cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """`accelerate launch -m soce ...` with `processes` processes. On a machine without a GPU,
    --multi_gpu is what starts several processes (through torchrun); soce then joins them over
    gloo on the CPU. (--cpu starts a single process.)"""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "soce", *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
    )


def write_csv(path: Path, text: str) -> Path:
    path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")
    return path


@pytest.fixture(scope="session")
def zoo_cache(tmp_path_factory) -> Path:
    """A cache holding the micro model family, built once per test session (about 30 s)."""
    from soce.zoo.family import build_family

    cache = tmp_path_factory.mktemp("soce-cache")
    build_family("micro", cache / "zoo", progress=False)
    return cache
