"""How many threads torch uses on the CPU, chosen per path (measured in scripts/bench_threads.py).

Many small operations (1 MiB merge chunks, tiny models) stall in torch's thread pool whenever
one of its threads is descheduled: on a 2-core machine beside two busy processes, the in-place
soup took 66x as long with 2 threads as with 1. So:

- memory-bound chunked arithmetic (the disk merge, the in-place CPU soup): one thread, always;
  a second adds little the memory bus can carry (idle: 1.0x for the merge, 1.6x for the
  in-place soup) and costs the most under load (loaded: 2.9x to 66x slower with two).
- compute on tiny models (the family's training, their evaluation): the cores no other process
  is using right now, at least one.

OMP_NUM_THREADS, when set, is the user's choice and is left as it is.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int):
    """torch.set_num_threads(n) inside the block, restored after (unless OMP_NUM_THREADS is set)."""
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


_probed: tuple[float, int] | None = None  # (when, free cores): a sweep asks at every point
FRESH = 10.0  # seconds a probe is trusted


def free_cores(samples: int = 10, interval: float = 0.002) -> int:
    """The cores not busy with other processes now: this process's cores less the median count
    of other runnable tasks over 20 ms (/proc/loadavg's running count, less the probing thread).
    Probed at most once every FRESH seconds."""
    global _probed
    now = time.monotonic()
    if _probed is None or now - _probed[0] > FRESH:
        _probed = (now, _probe(samples, interval))
    return _probed[1]


def _probe(samples: int, interval: float) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = []
    try:
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
            time.sleep(interval)
    except (OSError, ValueError, IndexError):
        return 1  # no way to tell: the choice that never stalls
    counts.sort()
    return max(1, cores - counts[len(counts) // 2])


def compute_threads(device: torch.device | str = "cpu"):
    """torch_threads for compute on `device`: on the CPU the free cores; elsewhere unchanged."""
    return torch_threads(free_cores() if torch.device(device).type == "cpu" else torch.get_num_threads())
