"""The few collective operations training needs under ``torchrun`` (no-ops in one process)."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["rank_world", "allreduce", "sync_grads"]


def rank_world() -> tuple[int, int]:
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size()
    return 0, 1


def allreduce(t: torch.Tensor) -> torch.Tensor:
    if rank_world()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


def sync_grads(params: Sequence[torch.nn.Parameter]) -> None:
    if rank_world()[1] == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
