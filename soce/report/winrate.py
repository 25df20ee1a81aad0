"""Win rates of a soup against its ingredients, from per-example outcomes (the paper's
section on which tasks the soup solves that its ingredients fail)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping
from soce.errors import DataError


@dataclass(frozen=True)
class Share:
    solved: int  # of `of` tasks, how many the soup solves
    of: int

    @property
    def rate(self) -> float:
        return self.solved / self.of if self.of else float("nan")


@dataclass(frozen=True)
class WinRates:
    tasks: int
    kept: dict[str, Share]  # per ingredient: of the tasks it solves, those the soup solves too
    all_fail: Share  # tasks every ingredient fails
    one_fails: Share  # tasks exactly one ingredient fails


def win_rates(ingredients: Mapping[str, Mapping[str, bool]], soup: Mapping[str, bool]) -> WinRates:
    """`ingredients`: model -> {task id: solved}; `soup`: {task id: solved}. Every model must
    have an outcome for every one of the soup's tasks."""
    tasks = sorted(soup)
    for model, outcomes in ingredients.items():
        missing = [t for t in tasks if t not in outcomes]
        if missing:
            raise DataError(f"{model}: no outcome for {len(missing)} of the soup's {len(tasks)} tasks (e.g. {missing[0]!r})")
    kept = {m: Share(sum(soup[t] for t in tasks if o[t]), sum(bool(o[t]) for t in tasks)) for m, o in ingredients.items()}
    failures = {t: sum(not o[t] for o in ingredients.values()) for t in tasks}
    n = len(ingredients)
    all_fail = [t for t in tasks if failures[t] == n]
    one_fails = [t for t in tasks if failures[t] == 1]
    return WinRates(len(tasks), kept, Share(sum(soup[t] for t in all_fail), len(all_fail)),
                    Share(sum(soup[t] for t in one_fails), len(one_fails)))
