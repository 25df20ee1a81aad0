"""This process among those of an `accelerate launch` (or torchrun): one process without it."""

from __future__ import annotations

import os
from pathlib import Path


class Processes:
    def __init__(self, alone: bool = False) -> None:
        """alone=True: this process by itself, whatever the launch (work only it does)."""
        self.count = 1 if alone else int(os.environ.get("WORLD_SIZE", "1"))
        self.state = None
        if self.count > 1:
            import torch
            from accelerate import PartialState

            # Without a GPU, the processes talk over gloo on the CPU (accelerate only picks that
            # when told it runs on the CPU).
            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.is_main = self.rank == 0
        self.device = str(self.state.device) if self.state else None

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def share(self, value):
        """The main process's `value`, on every process."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def gather(self, value) -> list:
        """Every process's `value`, on every process (in rank order)."""
        if self.state is None:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def main_process_dir(self, run_dir: Path) -> Path:
        """One run directory for all processes: the main process's (their clocks may differ by a second)."""
        return Path(self.share(str(run_dir)))
