"""Exclusive locks on files, for one writer at a time (the sweep store, a merge's output)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO


def lock_open(path: Path, mode: str) -> IO | None:
    """`path` opened in `mode` and locked for this process alone, or None when another holds it.
    A file another writer swapped away (renamed over, or removed) between our open and our lock
    is never trusted: the path is opened again."""
    while True:
        f = path.open(mode)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            return None
        try:
            if os.fstat(f.fileno()).st_ino == path.stat().st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def wait_for_lock(f: IO, waiting_for: str, log, every: float = 30.0) -> None:
    """`f` locked for this process alone, waiting as long as another holds it, and saying so: what
    it waits for at once, then how long it has waited every `every` seconds (never silent for
    longer, on a terminal or in a log file)."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        log.info("waiting for %s (%s is locked by another process)", waiting_for, f.name)
    started = last = time.monotonic()
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            log.info("done waiting for %s, after %.0f s", waiting_for, time.monotonic() - started)
            return
        except BlockingIOError:
            time.sleep(0.2)
        if time.monotonic() - last >= every:
            last = time.monotonic()
            log.info("still waiting for %s: %.0f s so far (%s)", waiting_for, last - started, f.name)
