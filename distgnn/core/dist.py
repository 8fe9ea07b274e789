"""Distributed helpers: rank, world size, reductions. In a single process they do nothing."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


_gloo_group: Any = None


def cpu_group() -> Any:
    """The process group for CPU tensors: ``None`` (the default group) under gloo; under NCCL,
    which moves device tensors only (Ray Train's backend with GPUs), a gloo group over the same
    ranks, made once, by every rank at its first CPU collective."""
    global _gloo_group
    if dist.get_backend() == "gloo":
        return None
    if _gloo_group is None:
        _gloo_group = dist.new_group(backend="gloo")
    return _gloo_group


def group_for(t: Tensor) -> Any:
    """The process group that moves ``t``: :func:`cpu_group` for a CPU tensor, else the default."""
    return cpu_group() if t.device.type == "cpu" else None


def all_reduce_sum(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Sum scalar counts over ranks (one collective for the whole dict). Reduce sums, never means:
    ranks hold different numbers of users/edges."""
    keys = sorted(values)
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device="cpu")
    if is_distributed():
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=cpu_group())
    return dict(zip(keys, packed.tolist()))


def all_reduce_min(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64, device="cpu")
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=cpu_group())
    return int(t.item())


def all_reduce_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device="cpu")
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=cpu_group())
    return float(t.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_uneven(x: Tensor, *, differentiable: bool = False) -> list[Tensor]:
    """Every rank's ``x`` (``[n_r, ...]``, ``n_r`` may differ between ranks), in rank order. With
    ``differentiable`` the gradients of the gathered copies are summed back into each rank's ``x``
    (collective in the backward too: every rank must run it)."""
    if not is_distributed():
        return [x]
    group = group_for(x)
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size, group=group)
    counts = [int(s.item()) for s in sizes]
    padded = torch.cat([x, x.new_zeros((max(counts) - x.shape[0], *x.shape[1:]))])  # all_gather needs equal sizes
    gathered = _AllGather.apply(padded) if differentiable else _AllGather.forward(None, padded)
    return [part[:n] for part, n in zip(gathered.chunk(len(counts)), counts)]


class _AllGather(torch.autograd.Function):
    """``[m, ...]`` on every rank -> ``[P * m, ...]`` in rank order; backward sends each slice's
    gradient to its rank and sums them there (a reduce-scatter, as all_to_all, which gloo has).
    Written here because torch.distributed.nn's differentiable all_gather is deprecated and its
    replacement is private."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous(), group=group_for(x))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        received = torch.empty_like(grad)
        dist.all_to_all_single(received, grad.contiguous(), group=group_for(grad))
        return received.view(world_size(), -1, *grad.shape[1:]).sum(0)
