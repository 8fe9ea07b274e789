"""Averaging gradients over workers with dense collectives only, so the same code runs on gloo
(CPU) and NCCL (GPU).

Why not DDP: the embedding tables have sparse gradients (``nn.Embedding(sparse=True)``, the rows a
batch touched), and PyTorch has no sparse all-reduce on NCCL (pytorch/pytorch#22400), so DDP over
them works on gloo only. The touched rows are exchanged instead: an ``all_gather`` of each worker's
row count, then of its padded row ids and values; every worker sums the rows it receives, so all
hold the same averaged sparse gradient, exactly what DDP's sparse all-reduce computes. When the
workers' rows together outnumber the table's (a 2-hop sampled subgraph touches most of Gowalla),
a dense all-reduce of the table and of a touched-row mask moves less and gives the same result. The dense
weights (GraphSAGE's projections and convolutions) are few: one flat ``all_reduce`` of all of them
per step is DDP's arithmetic. Excluding the tables from a DDP wrapper needs a private DDP API, and a
DDP over part of the model needs that part's forward to run through the wrapper, which the
layer-wise evaluation and export do not do; one plain collective per kind avoids both.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from distgnn.core import dist


def average_touched_rows(grad: Tensor) -> Tensor:
    """The average over workers of a sparse ``[N, d]`` row gradient (COO, as ``nn.Embedding(sparse=
    True)`` leaves it), as a coalesced sparse tensor holding the union of the touched rows. Every
    worker must call it, in the same order for each table."""
    world = dist.world_size()
    # Not coalesced here: a row looked up twice appears twice, and both paths below sum repeats
    # (index_add_, or the final coalesce), so the local sort would be wasted work. _indices() and
    # _values() are torch's documented accessors of an uncoalesced tensor's entries.
    ids, values = grad._indices()[0], grad._values()
    counts = [torch.zeros(1, dtype=torch.long, device=ids.device) for _ in range(world)]
    tdist.all_gather(counts, torch.tensor([ids.numel()], device=ids.device))
    counts = [int(c) for c in counts]
    if sum(counts) > grad.shape[0]:
        # The workers' rows cover most of the table (a sampled multi-hop subgraph often does): one
        # dense all-reduce moves 2 N d numbers per worker, less than gathering every worker's rows.
        return average_rows_densely(ids, values, grad.shape)
    longest = max(counts)
    # all_gather needs equal sizes: pad every worker's rows to the longest list
    padded_ids = torch.cat([ids, ids.new_zeros(longest - ids.numel())])
    padded_values = torch.cat([values, values.new_zeros((longest - ids.numel(), *values.shape[1:]))])
    all_ids = [torch.empty_like(padded_ids) for _ in range(world)]
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    tdist.all_gather(all_ids, padded_ids)
    tdist.all_gather(all_values, padded_values)
    ids = torch.cat([part[:n] for part, n in zip(all_ids, counts)])
    values = torch.cat([part[:n] for part, n in zip(all_values, counts)])
    return torch.sparse_coo_tensor(ids[None], values / world, grad.shape).coalesce()


def average_rows_densely(ids: Tensor, values: Tensor, shape: torch.Size) -> Tensor:
    """:func:`average_touched_rows` through dense all-reduces: the summed ``[N, d]`` table, and which
    rows any worker touched (their union, as DDP keeps it, so SparseAdam steps the same rows)."""
    # one extra column counts the lookups of each row, so one all-reduce carries the touched mask too
    table = values.new_zeros((shape[0], shape[1] + 1))
    table.index_add_(0, ids, torch.cat([values, values.new_ones((values.shape[0], 1))], dim=1))
    tdist.all_reduce(table)
    rows = torch.nonzero(table[:, -1]).flatten()  # sorted and unique: already coalesced
    return torch.sparse_coo_tensor(
        rows[None], table[:, :-1].index_select(0, rows) / dist.world_size(), shape, is_coalesced=True
    )


def average_dense(params: list[Tensor]) -> None:
    """Average the gradients of dense parameters over workers in place (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def average_gradients(model: nn.Module) -> None:
    """After ``backward``: average every gradient of ``model`` over workers, the sparse embedding
    tables by their touched rows, the rest densely. A no-op in one process."""
    if dist.world_size() == 1:
        return
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    dense = []
    for param in model.parameters():
        if id(param) in tables:
            grad = param.grad
            if grad is None:  # untouched here, maybe not elsewhere: still join the collective
                grad = torch.sparse_coo_tensor(
                    torch.empty(1, 0, dtype=torch.long, device=param.device),
                    param.new_empty((0, *param.shape[1:])),
                    param.shape,
                )
            param.grad = average_touched_rows(grad)
        elif param.requires_grad:
            dense.append(param)
    average_dense(dense)
