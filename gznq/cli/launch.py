"""Running a command as one of several processes: `accelerate launch` (or torchrun) starts them; this sets up
the process group through accelerate (gloo on CPU, NCCL on GPU) so that `dfq.distributed` reduces across them."""

from __future__ import annotations

import os


def start_processes() -> str | None:
    """With more than one process launched (WORLD_SIZE > 1), initialize the process group with accelerate and
    return this process's device; in a single process, do nothing and return None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return str(PartialState().device)
