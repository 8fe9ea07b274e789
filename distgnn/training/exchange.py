"""Moving rows between workers that each own a part of the graph: variable-sized all-to-all
blocks on a CPU process group, fetching rows from their owners and sending gradients back.

Collectives run on the process group Ray Train already set up (gloo on CPU): no extra servers and no
serialisation, and ``all_to_all_single`` with uneven splits moves each block once. Sampling tensors
live on the CPU, so on NCCL machines a gloo group is created next to the default one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor

from distgnn.core import dist
from distgnn.data.partition import Partition, global_to_local


@dataclass
class Traffic:
    """What this worker sent to other workers, and how much of its sampling another part did."""

    bytes_sent: int = 0
    frontier_nodes: int = 0  # nodes expanded by sampling (all hops)
    remote_frontier_nodes: int = 0  # of which another part owns
    rows_fetched: int = 0  # embedding rows fetched (all owners, this worker included)
    remote_rows_fetched: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def exchange(
    send: Tensor, send_counts: Tensor, traffic: Traffic | None = None, *, recv_counts: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """All-to-all of variable-sized blocks of rows.

    Args:
        send: ``[n, ...]`` rows grouped by destination rank: ``send_counts[r]`` rows for rank ``r``.
        send_counts: ``[P]`` int64.
        recv_counts: ``[P]`` rows this rank gets from each rank, when the caller already knows them
            (saves one collective).

    Returns:
        ``(received rows grouped by source rank, recv_counts [P])``. With one worker: ``send`` itself.
    """
    if dist.world_size() == 1:
        return send, send_counts
    # sampling's tensors live on the CPU (a gloo group); device tensors take the default group (NCCL)
    group = dist.group_for(send)
    if recv_counts is None:
        recv_counts = torch.empty_like(send_counts)
        tdist.all_to_all_single(recv_counts, send_counts, group=dist.group_for(send_counts))
    received = send.new_empty((int(recv_counts.sum()),) + tuple(send.shape[1:]))
    tdist.all_to_all_single(received, send.contiguous(), recv_counts.tolist(), send_counts.tolist(), group=group)
    if traffic is not None:
        row_bytes = send.element_size() * (send[0].numel() if send.dim() > 1 else 1)
        others = int(send_counts.sum()) - int(send_counts[dist.rank()])
        traffic.bytes_sent += others * row_bytes + (8 * send_counts.numel() if recv_counts is None else 0)
    return received, recv_counts


def group_by_owner(nodes: Tensor, node_part: Tensor, world_size: int) -> tuple[Tensor, Tensor]:
    """``(order, counts)``: ``nodes[order]`` lists rank 0's nodes first, then rank 1's, ...; ``counts
    [P]`` how many each rank owns. Stable, so each rank's nodes keep their order."""
    return group_by_rank(node_part.index_select(0, nodes).long(), world_size)


def group_by_rank(owner: Tensor, world_size: int) -> tuple[Tensor, Tensor]:
    """:func:`group_by_owner` from each entry's owning rank ``owner [n]``."""
    return torch.argsort(owner, stable=True), torch.bincount(owner, minlength=world_size)


def block_sums(values: Tensor, counts: Tensor) -> Tensor:
    """Sum of ``values`` over consecutive blocks of ``counts`` entries."""
    ends = torch.cumsum(torch.cat([values.new_zeros(1), values]), 0)
    bounds = torch.cumsum(torch.cat([counts.new_zeros(1), counts]), 0)
    return ends[bounds[1:]] - ends[bounds[:-1]]


# Row-sharded tables


@dataclass
class Fetched:
    """Rows handed out by this worker in :func:`fetch_rows`, kept to route their gradients back."""

    served: Tensor  # [m, d] rows this worker looked up for others (with autograd graph)
    order: Tensor  # owner-grouping permutation of the requested nodes
    counts: Tensor  # [P] rows requested from each owner
    asked_counts: Tensor  # [P] rows each rank requested from this worker


def fetch_rows(
    lookup: Callable[[Tensor], Tensor], partition: Partition, nodes: Tensor, traffic: Traffic | None = None
) -> tuple[Tensor, Fetched]:
    """Rows of ``nodes`` (global ids) from the workers that own them.

    Args:
        lookup: local row ids -> ``[m, d]`` rows of this worker's shard (an ``nn.Embedding`` in
            training, so its autograd graph is kept for :func:`push_gradients`).

    Returns:
        ``(x [n, d], fetched)``; ``x`` is a leaf that requires grad when the lookup does.
    """
    order, counts = group_by_owner(nodes, partition.node_part, dist.world_size())
    asked, asked_counts = exchange(nodes.index_select(0, order), counts, traffic)
    served = lookup(global_to_local(partition, asked))
    got, _ = exchange(served.detach(), asked_counts, traffic, recv_counts=counts)
    x = torch.empty_like(got)
    x[order] = got
    if traffic is not None:
        traffic.rows_fetched += nodes.numel()
        traffic.remote_rows_fetched += nodes.numel() - int(counts[dist.rank()])
    return x.requires_grad_(served.requires_grad), Fetched(served, order, counts, asked_counts)


def push_gradients(x: Tensor, fetched: Fetched, traffic: Traffic | None = None) -> None:
    """Send the gradients of fetched rows to their owners and back-propagate them into the owners'
    rows: the average over workers of the gradients of each row (a row used by several workers
    gets their sum over the number of workers, as DDP's all-reduce gives)."""
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    back, _ = exchange(grad.index_select(0, fetched.order), fetched.counts, traffic, recv_counts=fetched.asked_counts)
    # averaged over workers, as the replicated strategy's exchange and DDP do
    fetched.served.backward(back / dist.world_size())
