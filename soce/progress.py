"""Progress of the long steps: a tqdm bar on a terminal; elsewhere (a log file, a batch job)
log lines with the step, the count, the rate and the time left: the first once the step has
run `first` seconds (the first estimate), then one every `every` seconds, then one at the end.
The rate is measured from the first item on: the time before it (loading, warming up) is no
guide to the time left.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("soce.progress")


def plural(n: int, noun: str) -> str:
    """'1 point', '2 points'."""
    return f"{n} {noun}" if n == 1 else f"{n} {_plural(noun)}"


def _plural(word: str) -> str:
    """'point' -> 'points', 'entry' -> 'entries'."""
    return word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in tuple("aeiou") else word + "s"


def size_text(nbytes: float) -> str:
    """Bytes as a person reads them: '812 B', '3.4 MB', '16.1 GB'."""
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """brief: a step among many (one evaluation of a sweep's): its bar is cleared when it ends, and
    in a log it has a closing line only where it ran long enough to have had a line before."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", *, first: float = 5.0, every: float = 30.0,
                 enabled: bool = True, terminal: bool | None = None, brief: bool = False, **bar_options) -> None:
        self.total, self.desc, self.unit, self.every, self.enabled, self.brief = total, desc, unit, every, enabled, brief
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        if brief:
            bar_options.setdefault("leave", False)
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not enabled, **bar_options) if self.terminal else None
        self.n, self.stored, self.postfix, self.first = 0, 0, "", first
        self.started = time.monotonic()
        self.last = None  # when the last line was written
        self.mark = None  # (count, time) at the first item: the rate is measured from there
        self.scale = bar_options.get("unit_scale", False)

    def update(self, n: int = 1, stored: bool = False) -> None:
        """`n` more items done; stored: found done already (a sweep point in the store), not
        counted in the rate."""
        self.n += n
        self.stored += n if stored else 0
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.mark is None and not stored:
            self.mark = (self.n - self.stored, now)
        due = now - self.started >= self.first if self.last is None else now - self.last >= self.every
        if self.enabled and due and self.n != self.total:
            self.last = now
            log.info("%s: %s", self.desc, self._line(now))

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(refresh=refresh, **values)

    def _line(self, now: float) -> str:
        elapsed = now - self.started
        count = f"{self._amount(self.n)}/{self._amount(self.total)}" if self.total else self._amount(self.n)
        # a symbol (B, with unit_scale) is never plural; a word is, but for one
        units = self.unit if self.scale or self.n == 1 and not self.total or self.total == 1 else _plural(self.unit)
        done = self.n - self.stored  # done now: the rate's items
        if done == 0:
            return f"{count} {units}, all found in the store" + (f"; {self.postfix}" if self.postfix else "")
        n0, t0 = self.mark if self.mark and done > self.mark[0] and now > self.mark[1] else (0, self.started)
        rate = (done - n0) / (now - t0) if now > t0 else 0.0
        if rate >= 1:
            per = f"{self._amount(rate) if self.scale else f'{rate:.3g}' if rate < 100 else f'{rate:.0f}'} {self.unit}/s"
        else:
            per = f"{1 / rate:.3g} s/{self.unit}" if rate > 0 else "-"
        left = f", about {_duration((self.total - self.n) / rate)} left" if self.total and rate > 0 and self.n < self.total else ""
        stored = f"{self._amount(self.stored)} found in the store, " if self.stored else ""
        return f"{count} {units} in {_duration(elapsed)} ({stored}{per}{left})" + (f"; {self.postfix}" if self.postfix else "")

    def _amount(self, x: float) -> str:
        if self.scale:
            for prefix in ("", "k", "M", "G", "T"):
                if abs(x) < 1000:
                    return f"{x:.3g}{prefix}"
                x /= 1000
            return f"{x:.3g}P"
        return f"{int(x)}"

    def close(self, stopped: bool = False) -> None:
        """The last line: done, or stopped (an error, Ctrl-C or SIGTERM ended the loop early)."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.n and (self.last is not None or not self.brief):
            log.info("%s: %s, %s", self.desc, "stopped" if stopped else "done", self._line(time.monotonic()))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(stopped=exc_type is not None)
