"""Experiment tracking: a Tracker protocol, a W&B tracker, a no-op one and one that records.

A tracker never costs a result: every W&B failure is logged as a warning and the tracker
goes quiet, while the stages keep writing their files to the run directory.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Protocol, Sequence

from soce.choices import WandbMode
from soce.registry import Registry

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_summary(self, values: dict[str, Any]) -> None: ...
    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...
    def log_image(self, name: str, path: Path) -> None: ...
    def log_reference(self, name: str, path: Path) -> None: ...
    def finish(self) -> None: ...
    def where(self) -> str | None: ...


class NoTracker:
    """tracker=none: logs nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_summary(self, values: dict[str, Any]) -> None:
        pass

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        pass

    def log_image(self, name: str, path: Path) -> None:
        pass

    def log_reference(self, name: str, path: Path) -> None:
        pass

    def where(self) -> str | None:
        return None

    def finish(self) -> None:
        pass


class RecordingTracker:
    """Keeps what it is given in memory: for a Python caller that wants the study's logs as data,
    and for tests. `metrics` is every log_metrics call, `tables` name -> (columns, rows)."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []
        self.summary: dict[str, Any] = {}
        self.tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
        self.images: dict[str, Path] = {}
        self.references: dict[str, Path] = {}
        self.finished = False

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append(dict(metrics))

    def log_summary(self, values: dict[str, Any]) -> None:
        self.summary.update(values)

    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.tables[name] = (list(columns), [list(r) for r in rows])

    def log_image(self, name: str, path: Path) -> None:
        self.images[name] = Path(path)

    def log_reference(self, name: str, path: Path) -> None:
        self.references[name] = Path(path)

    def where(self) -> str | None:
        return None

    def finish(self) -> None:
        self.finished = True


def _guarded(method):
    """Run a W&B call; on failure warn once and stop talking to W&B."""

    @functools.wraps(method)
    def wrapper(self: "WandbTracker", *args, **kwargs):
        if self.run is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - W&B must never cost a result
            log.warning("W&B %s failed (%s: %s); results are still written to the run directory", method.__name__, type(err).__name__, err)
            self.run = None
            return None

    return wrapper


def wandb_credentials() -> bool:
    """Whether W&B has an API key to use: WANDB_API_KEY, or the netrc entry `wandb login` writes."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """One W&B run per Hydra job, grouped by study; offline by default (no account needed)."""

    def __init__(
        self,
        *,
        project: str,
        group: str,
        name: str | None,
        config: dict,
        dir: Path,
        mode: str = "offline",
        entity: str | None = None,
        tags: Sequence[str] = (),
        job_type: str | None = None,
    ) -> None:
        self.run = None
        if mode == "online" and not wandb_credentials():
            log.warning("tracker.mode=online needs W&B credentials (`wandb login`, or WANDB_API_KEY) and there are none: "
                        "logging offline to %s/wandb instead; upload it later with `wandb sync %s/wandb/offline-run-*`", dir, dir)
            mode = "offline"
        try:
            import wandb

            self._wandb = wandb
            self.run = wandb.init(
                project=project, entity=entity, group=group, name=name, config=config, dir=str(dir),
                mode=mode, tags=list(tags), job_type=job_type, reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, save_code=False),
            )
        except Exception as err:  # noqa: BLE001
            log.warning("W&B could not start a run (%s: %s); results are still written to the run directory", type(err).__name__, err)
            self.run = None
        self.log_path = Path(dir) / "soce.log"  # Hydra's log of this run: it goes into the W&B run's files at the end

    @_guarded
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    @_guarded
    def log_summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    @_guarded
    def log_table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    @_guarded
    def log_image(self, name: str, path: Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    @_guarded
    def log_reference(self, name: str, path: Path) -> None:
        """A directory as a W&B artifact by reference: its files are checksummed, not uploaded."""
        artifact = self._wandb.Artifact(name, type="model")
        artifact.add_reference(Path(path).resolve().as_uri())
        self.run.log_artifact(artifact)

    @_guarded
    def where(self) -> str | None:
        """Where this run's W&B record is: its URL, or the offline run and how to upload it."""
        if self.run.settings.mode == "offline":
            local = Path(self.run.dir).parent
            return f"W&B: offline run {local} (upload it with `wandb sync {local}`)"
        return f"W&B: {self.run.url}" if self.run.url else None

    @_guarded
    def finish(self) -> None:
        if self.log_path.is_file():
            shutil.copy2(self.log_path, Path(self.run.dir) / self.log_path.name)
        self.run.finish()
        self.run = None


# --- the config group `tracker` ----------------------------------------------------------------
TRACKERS: Registry[type] = Registry("tracker")


@TRACKERS.register("wandb")
@dataclass
class WandbTrackerConfig:
    name: str = "wandb"
    project: str = "soce"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline  # offline: runs land in <run dir>/wandb, no account needed
    group: Optional[str] = None  # default: the study name
    tags: List[str] = field(default_factory=list)

    def tracker(self, *, study: str, name: str | None, settings: dict, run_dir: Path, job_type: str) -> Tracker:
        return WandbTracker(project=self.project, entity=self.entity, mode=self.mode.value, group=self.group or study,
                            name=name, config=settings, dir=run_dir, tags=list(self.tags), job_type=job_type)


@TRACKERS.register("none")
@dataclass
class NoTrackerConfig:
    name: str = "none"

    def tracker(self, **_) -> Tracker:
        return NoTracker()
