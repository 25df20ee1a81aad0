"""What the stages hand each other, and when each is current: a stage that reads one runs its
producer first where it is missing or was made with other settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from soce import artifacts
from soce.artifacts import ANALYSIS, SCORES, SELECTION
from soce.stages.study import Study


@dataclass(frozen=True)
class Product:
    name: str
    current: Callable[[Study], bool]


def _analysis_current(study: Study) -> bool:
    return (artifacts.read_current(study.path(ANALYSIS), artifacts.analysis_settings(study.cfg)) is not None
            and study.path(SCORES).exists())


def _selection_current(study: Study) -> bool:
    return artifacts.read_current(study.path(SELECTION), artifacts.selection_settings(study.cfg)) is not None


ANALYZED = Product("scores.csv and analysis.json", _analysis_current)
SELECTED = Product("selection.json", _selection_current)
SEARCHED = Product("the search's soups (sweep.jsonl)", lambda study: study.searched is not None)


@dataclass(frozen=True)
class Stage:
    """A stage: `run` on the study, after every product it `reads` is current; it makes `writes`."""

    name: str
    run: Callable[[Study], object]
    reads: tuple[Product, ...] = ()
    writes: tuple[Product, ...] = ()
