"""This process's place in a ``torch.distributed`` run, for the code that shards data over ranks."""

from __future__ import annotations

import torch


def dist_info() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
