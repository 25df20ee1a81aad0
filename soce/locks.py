"""Exclusive locks on files, for one writer at a time (the sweep store, a merge's output)."""

from __future__ import annotations

import fcntl
import os
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
