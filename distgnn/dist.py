"""Distributed helpers: rank, world size, reductions. In a single process they do nothing."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Sum scalar counts over ranks (one collective for the whole dict). Reduce sums, never means:
    ranks hold different numbers of users/edges."""
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(keys, packed.tolist()))


def all_reduce_min(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_reduce_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()
