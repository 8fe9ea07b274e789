"""Averaging gradients and updating weights over workers with dense collectives only, so the same
code runs on gloo (CPU) and NCCL (GPU).

Why not DDP: the embedding tables have sparse gradients (``nn.Embedding(sparse=True)``, the rows a
batch touched), and PyTorch has no sparse all-reduce on NCCL (pytorch/pytorch#22400), so DDP over
them works on gloo only.

The tables are updated by their rows' owners instead (ZeRO stage 1, Rajbhandari et al. 2020, for
row tables): every worker holds the whole table, because any batch may read any row, but it
owns one contiguous block of rows, and only the owner keeps those rows' Adam moments and applies
their update. A step:
1. every worker sends the gradient rows it touched to their owners (``all_to_all`` of ids and of
   values, uneven blocks);
2. each owner sums what it received, which is the average over workers of each of its rows'
   gradients (what DDP's sparse all-reduce computes), and steps SparseAdam on its block;
3. each owner sends the rows it updated to every other worker (``all_to_all`` again).
The optimizer's work and memory per worker shrink with the number of workers, and no worker
materialises a gradient or a moment the size of the whole table. DeepSpeed and FSDP shard dense
parameters this way but not sparse row gradients, hence this file.

The dense weights (GraphSAGE's projections) are few: one flat ``all_reduce`` of all of them per
step is DDP's arithmetic. Wrapping only part of the model in DDP would need that part's forward to
run through the wrapper, which the layer-wise evaluation and the export do not do.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from distgnn.core import dist
from distgnn.training.exchange import exchange, group_by_rank

# Tables of at most this many numbers (1 MiB of float32) always travel as whole blocks: at that
# size a collective's latency costs more than its bytes, and the blocked path needs fewer of them.
SMALL_TABLE = 2**18


def row_bounds(num_rows: int, world_size: int) -> Tensor:
    """``[P + 1]``: where each worker's block of rows starts, then the end. Contiguous blocks whose
    sizes differ by at most one row."""
    return torch.tensor([r * num_rows // world_size for r in range(world_size + 1)])


def route_to_owners(ids: Tensor, values: Tensor, bounds: Tensor) -> tuple[Tensor, Tensor]:
    """Send gradient rows (``ids [n]`` with ``values [n, d]``, repeats allowed) to the workers that
    own them; returns the ``(ids, values)`` every worker sent to this one. Collective."""
    owner = torch.bucketize(ids, bounds[1:-1].to(ids.device), right=True)
    order, counts = group_by_rank(owner, bounds.numel() - 1)
    got_ids, got_counts = exchange(ids.index_select(0, order), counts)
    got_values, _ = exchange(values.index_select(0, order), counts, recv_counts=got_counts)
    return got_ids, got_values


class RowSlots:
    """Distinct rows of a table among a step's ids, in O(ids): a ``[num_rows]`` map kept from step
    to step (-1: no slot) and reset where it was written, as the sampler's relabelling map is. A
    step then never allocates, zeroes or scans anything the size of the table (a fresh ``[rows, d]``
    buffer per step cost more than the step's arithmetic at 2.6M rows)."""

    def __init__(self, num_rows: int, device: torch.device):
        self.map = torch.full((num_rows,), -1, dtype=torch.long, device=device)

    def assign(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """``(rows [m], slot [n])``: the distinct ``ids`` (in no particular order) and, for each id,
        its row's position in ``rows``."""
        entry = torch.arange(ids.numel(), device=ids.device)
        self.map.index_put_((ids,), entry)  # one entry per distinct id keeps its own number
        rows = ids[self.map.index_select(0, ids) == entry]
        self.map.index_copy_(0, rows, torch.arange(rows.numel(), device=ids.device))
        slot = self.map.index_select(0, ids)
        self.map.index_fill_(0, rows, -1)
        return rows, slot


def owned_average(local_ids: Tensor, values: Tensor, num_rows: int, world_size: int, slots: RowSlots) -> Tensor:
    """The averaged gradient of a block of ``num_rows`` rows from the rows workers sent it
    (``local_ids`` within the block, repeats summed): a sparse ``[num_rows, d]`` tensor holding each
    row any worker touched once (as DDP's sparse all-reduce keeps them), in no particular order.
    Repeats are added in the order they came, from zero, as a table-sized ``index_add_`` adds them,
    so the sums are the same to the bit; the work follows the rows received."""
    rows, slot = slots.assign(local_ids)
    summed = values.new_zeros((rows.numel(), values.shape[1]))
    summed.index_add_(0, slot, values)
    return torch.sparse_coo_tensor(rows[None], summed / world_size, (num_rows, values.shape[1]))


def send_to_all(ids: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """This worker's rows to every other worker; returns the rows every other worker sent here.
    Collective. (``all_to_all`` rather than ``all_gather``: the blocks are uneven, and gloo's
    all_gather took twice as long for the same bytes here.)"""
    world, rank = dist.world_size(), dist.rank()
    counts = torch.full((world,), ids.numel(), dtype=torch.long, device=ids.device)
    counts[rank] = 0
    copies = world - 1  # one copy of the rows per destination (a view when there is one)
    got_ids, got_counts = exchange(ids.expand(copies, -1).reshape(-1), counts)
    got_values, _ = exchange(values.expand(copies, -1, -1).reshape(-1, values.shape[1]), counts, recv_counts=got_counts)
    return got_ids, got_values


def unique_rows(grad: Tensor, slots: RowSlots | None = None) -> tuple[Tensor, Tensor]:
    """``(rows, values)`` of a sparse ``[N, d]`` gradient, each row once (repeats summed), in any
    order. Coalescing sorts and gathers every touched row; a subgraph's rows are unique already,
    and then nothing moves. ``slots`` (the table's :class:`RowSlots`) tells in O(rows touched);
    without it a sort of the ids does (never a pass over all ``N`` rows). Repeats are summed by
    ``coalesce``, as torch's SparseAdam sums them."""
    if not grad.is_coalesced():
        ids = grad._indices()[0]  # torch's documented accessor of an uncoalesced tensor
        distinct = slots.assign(ids)[0].numel() if slots is not None else torch.unique(ids).numel()
        if distinct == ids.numel():
            return ids, grad._values()
        grad = grad.coalesce()
    return grad.indices()[0], grad.values()


@torch.no_grad()
def sparse_adam_rows(
    param: Tensor,
    grad: Tensor,
    state: dict,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    slots: RowSlots | None = None,
) -> None:
    """One step of torch's SparseAdam (``torch.optim._functional.sparse_adam``) on ``param``, its
    arithmetic op for op, so the result is the same to the bit, with the touched rows addressed by
    index (``index_select``/``index_copy_``/``index_add_``) instead of through sparse_mask and
    sparse adds, and without coalescing rows that are unique already (:func:`unique_rows`). Written
    here because no library ships a faster SparseAdam for CPU, and torch's is 1.35-1.56x slower on
    Gowalla steps (65k x 64 rows touched, one thread, ``benchmarks/sparse_adam.py``): +8% edges/s
    for one worker.
    ``state`` holds SparseAdam's ``step`` (already incremented), ``exp_avg`` and ``exp_avg_sq``;
    ``slots``: the table's :class:`RowSlots` (see :func:`unique_rows`)."""
    rows, values = unique_rows(grad, slots)
    if values.numel() == 0:
        return
    (beta1, beta2), step = betas, state["step"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    old_exp_avg = exp_avg.index_select(0, rows)
    old_exp_avg_sq = exp_avg_sq.index_select(0, rows)
    numer = values.sub(old_exp_avg).mul_(1 - beta1).add_(old_exp_avg)  # old + (1 - b1)(new - old)
    second = values.pow(2).sub_(old_exp_avg_sq).mul_(1 - beta2).add_(old_exp_avg_sq)
    exp_avg.index_copy_(0, rows, numer)
    exp_avg_sq.index_copy_(0, rows, second)
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    param.index_add_(0, rows, numer.div_(second.sqrt_().add_(eps)).mul_(-step_size))


class IndexedSparseAdam(torch.optim.SparseAdam):
    """torch's SparseAdam (its state, checkpoints and ``lr`` handling) with the step computed by
    :func:`sparse_adam_rows`: the same numbers to the bit, faster. Keeps one :class:`RowSlots` per
    table (``8 x rows`` bytes), made at its first step."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.slots: dict[int, RowSlots] = {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():  # as torch's optimizers run it
                loss = closure()
        for group in self.param_groups:
            if group.get("maximize", False):
                raise ValueError("IndexedSparseAdam minimises only")
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:  # as SparseAdam initialises it
                    state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
                state["step"] += 1
                slots = self.slots.setdefault(id(param), RowSlots(param.shape[0], param.device))
                sparse_adam_rows(
                    param, param.grad, state, lr=group["lr"], betas=group["betas"], eps=group["eps"], slots=slots
                )
        return loss


class RowShardedSparseAdam:
    """SparseAdam over embedding tables whose rows are updated by their owners (see the module
    notes). Used like a torch optimizer, plus two collectives around :meth:`step`:
    :meth:`reduce_gradients` after ``backward`` and :meth:`share_updated_rows` after the step
    (whose transfers must be waited for before the next forward).

    Same arithmetic as DDP + SparseAdam over the whole tables: a row's moments see the same
    averaged gradients, and every block steps whenever its table does (an empty gradient when no
    worker touched the block), so the step counts behind Adam's bias correction agree.
    Checkpoints: each worker writes :meth:`shard_state_dict` (its blocks' moments, no collective)
    and :meth:`load_shard_states` rebuilds any worker's blocks from the shards of any number of
    workers: a checkpoint resumes on any number of workers. :meth:`state_dict` gathers SparseAdam's
    own format over whole tables on every worker (a collective holding the whole moments: for
    tests and tools, not checkpoints).
    """

    def __init__(self, tables: list[nn.Parameter], lr: float):
        rank, world = dist.rank(), dist.world_size()
        self.tables = tables
        self.bounds = [row_bounds(t.shape[0], world) for t in tables]
        self.blocks = [(int(b[rank]), int(b[rank + 1])) for b in self.bounds]
        self.block_sizes = [(b[1:] - b[:-1]).tolist() for b in self.bounds]  # every rank's, per table
        # views of the owned rows: SparseAdam's in-place update lands in the tables themselves
        self.shards = [nn.Parameter(t.detach()[lo:hi]) for t, (lo, hi) in zip(tables, self.blocks)]
        self.inner = IndexedSparseAdam(self.shards, lr=lr)
        self.param_groups = self.inner.param_groups  # the learning-rate schedule sets lr here
        self.dense = [False] * len(tables)  # per table: this step's exchange moved whole blocks
        self.buffers: dict[tuple[int, str], Tensor] = {}
        self.slots = [RowSlots(shard.shape[0], shard.device) for shard in self.shards]
        self.inner.slots = {id(shard): slots for shard, slots in zip(self.shards, self.slots)}  # one map per block

    def buffer(self, index: int, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A buffer kept from step to step: a fresh table-sized tensor each step costs more in page
        faults than the arithmetic done in it."""
        key = (index, name)
        if key not in self.buffers or self.buffers[key].shape != shape:
            self.buffers[key] = like.new_empty(shape)
        return self.buffers[key]

    def zero_grad(self) -> None:
        for p in (*self.tables, *self.shards):
            p.grad = None

    def reduce_gradients(self) -> None:
        """After ``backward``: each block's owner gets the average over workers of its rows'
        gradients. Collective: every worker calls it, for the same tables.

        Rows go to their owners one by one, unless the workers' rows together outnumber the table's
        (a 2-hop sampled subgraph touches most of Gowalla) or the table is small (an item-bias
        column): then each worker sums its rows into a table-sized buffer first and sends each owner
        its whole block, which moves fewer bytes, or takes fewer collectives."""
        world = dist.world_size()
        if world == 1:
            for table, shard in zip(self.tables, self.shards):
                shard.grad, table.grad = table.grad, None  # the whole table is the block
            return
        grads = []
        for table in self.tables:
            grad, table.grad = table.grad, None
            if grad is None:  # untouched here, maybe not elsewhere: still join the collectives
                grad = torch.sparse_coo_tensor(
                    torch.empty(1, 0, dtype=torch.long, device=table.device),
                    table.new_empty((0, table.shape[1])),
                    table.shape,
                )
            grads.append(grad)
        # one small all-reduce decides, for every table at once, which way its rows travel
        counts = torch.tensor([g._nnz() for g in grads], dtype=torch.long, device=self.tables[0].device)
        tdist.all_reduce(counts)
        for i, (table, shard, grad) in enumerate(zip(self.tables, self.shards, grads)):
            # uncoalesced: a row looked up twice appears twice, and the sums below add repeats
            # (_indices/_values are torch's documented accessors of an uncoalesced tensor)
            ids, values = grad._indices()[0], grad._values()
            self.dense[i] = int(counts[i]) > table.shape[0] or table.numel() <= SMALL_TABLE
            if self.dense[i]:
                shard.grad = self.reduce_blocks(i, ids, values)
            else:
                got_ids, got_values = route_to_owners(ids, values, self.bounds[i])
                lo = self.blocks[i][0]
                shard.grad = owned_average(got_ids - lo, got_values, shard.shape[0], world, self.slots[i])

    def reduce_blocks(self, index: int, ids: Tensor, values: Tensor) -> Tensor:
        """The dense way of :meth:`reduce_gradients` for table ``index``: sum into a table-sized
        buffer, send each owner its block (``all_to_all`` of fixed sizes), add up the blocks
        received; the rows' lookup counts travel the same way, so the owner learns which rows any
        worker touched."""
        table, world = self.tables[index], dist.world_size()
        lo, hi = self.blocks[index]
        sizes = self.block_sizes[index]
        lookups = torch.bincount(ids, minlength=table.shape[0])
        summed = self.buffer(index, "summed", tuple(table.shape), table)
        summed.zero_()
        if int(lookups.max()) <= 1:  # each row once (a subgraph's nodes): a copy, cheaper than an add
            summed.index_copy_(0, ids, values)
        else:
            summed.index_add_(0, ids, values)
        received = self.buffer(index, "received", (world * (hi - lo), table.shape[1]), table)
        tdist.all_to_all_single(received, summed, [hi - lo] * world, sizes)
        received_lookups = lookups.new_empty(world * (hi - lo))
        tdist.all_to_all_single(received_lookups, lookups, [hi - lo] * world, sizes)
        rows = torch.nonzero(received_lookups.view(world, -1).sum(0)).flatten()  # sorted, unique: coalesced
        # the touched rows of each worker's block, added up: fewer bytes than adding whole blocks
        blocks = received.view(world, hi - lo, -1)
        average = blocks[0].index_select(0, rows)
        for block in blocks[1:]:
            average += block.index_select(0, rows)
        average /= world
        return torch.sparse_coo_tensor(rows[None], average, (hi - lo, table.shape[1]), is_coalesced=True)

    def step(self) -> None:
        """Update this worker's rows (SparseAdam on its blocks)."""
        self.inner.step()

    @torch.no_grad()
    def share_updated_rows(self) -> list[Any]:
        """After :meth:`step`: the rows each owner updated, to every worker's copy of the tables
        (whole blocks when the gradients travelled as blocks). Collective. Whole blocks travel in
        the background: returns the transfers in flight, to ``wait()`` for before the tables are
        read again (the next batch can be sampled meanwhile)."""
        world = dist.world_size()
        in_flight: list[Any] = []
        if world == 1:
            return in_flight
        for i, (table, shard, (lo, _)) in enumerate(zip(self.tables, self.shards, self.blocks)):
            if self.dense[i]:
                sizes = self.block_sizes[i]
                copies = self.buffer(i, "copies", (world * shard.shape[0], shard.shape[1]), table)
                copies.view(world, *shard.shape).copy_(shard.detach().expand(world, -1, -1))
                # straight into the table: block r of the output is rank r's rows
                in_flight.append(
                    tdist.all_to_all_single(table.detach(), copies, sizes, [shard.shape[0]] * world, async_op=True)
                )
                continue
            rows = shard.grad._indices()[0]  # reduce_gradients gave every block a gradient, maybe empty
            ids, values = send_to_all(rows + lo, shard.index_select(0, rows))
            table.index_copy_(0, ids, values)
        return in_flight

    def shard_state_dict(self) -> dict[str, Any]:
        """This worker's part of the state, no collective: SparseAdam's state of its blocks (the
        moments' owned rows, tensors of their own) and, per table, ``[first row, end, rows]`` of
        the block. What each worker writes into its own checkpoint file."""
        inner = self.inner.state_dict()
        blocks = [[lo, hi, table.shape[0]] for (lo, hi), table in zip(self.blocks, self.tables)]
        return {"blocks": blocks, "state": inner["state"], "param_groups": inner["param_groups"]}

    @torch.no_grad()
    def load_shard_states(self, shards) -> None:
        """Restore from the :meth:`shard_state_dict` of every worker of a checkpoint, whichever
        their number: this worker copies its blocks' rows out of the shards that hold them.
        ``shards`` is iterated once (a generator reading one file at a time keeps one in memory)."""
        world_rows = [table.shape[0] for table in self.tables]
        moments: dict[int, dict[str, Any]] = {}
        covered = [0] * len(self.tables)
        param_groups = None
        for shard in shards:
            param_groups = param_groups or shard["param_groups"]
            if [int(b[2]) for b in shard["blocks"]] != world_rows:
                raise ValueError(f"a checkpoint shard of tables {shard['blocks']} does not fit tables {world_rows}")
            for index, (lo, hi) in enumerate(self.blocks):
                shard_lo, shard_hi = int(shard["blocks"][index][0]), int(shard["blocks"][index][1])
                first, end = max(lo, shard_lo), min(hi, shard_hi)
                saved = shard["state"].get(index)
                if first >= end or saved is None:
                    continue
                covered[index] += end - first
                mine = moments.setdefault(index, {})
                for key, value in saved.items():
                    if isinstance(value, Tensor) and value.dim():
                        if key not in mine:
                            mine[key] = value.new_zeros((hi - lo, *value.shape[1:]), device=self.shards[index].device)
                        mine[key][first - lo : end - lo] = value[first - shard_lo : end - shard_lo]
                    else:
                        mine[key] = value
        for index, (lo, hi) in enumerate(self.blocks):
            if index in moments and covered[index] != hi - lo:
                raise ValueError(
                    f"the checkpoint's shards cover {covered[index]} of rows {lo}..{hi - 1} of table {index}"
                )
        self.inner.load_state_dict({"state": moments, "param_groups": param_groups})

    def state_dict(self) -> dict[str, Any]:
        """SparseAdam's state dict over the whole tables, on every worker. Collective with more
        than one worker, and it holds the whole moments: checkpoints use :meth:`shard_state_dict`."""
        inner = self.inner.state_dict()
        if dist.world_size() == 1:
            return inner
        state = {}
        for index, shard_state in sorted(inner["state"].items()):
            state[index] = {
                key: torch.cat(dist.all_gather_uneven(value)) if isinstance(value, Tensor) and value.dim() else value
                for key, value in sorted(shard_state.items())
            }
        return {"state": state, "param_groups": inner["param_groups"]}

    def load_state_dict(self, full: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`'s format (whichever number of workers wrote it): this
        worker keeps a copy of its blocks' rows of the moments (a view would pin the whole)."""
        state = {}
        for index, table_state in full["state"].items():
            lo, hi = self.blocks[int(index)]
            state[index] = {
                key: value[lo:hi].clone() if isinstance(value, Tensor) and value.dim() else value
                for key, value in table_state.items()
            }
        self.inner.load_state_dict({"state": state, "param_groups": full["param_groups"]})


def average_dense(params: list[Tensor]) -> None:
    """Average the gradients of dense parameters over workers in place (one flat all-reduce)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or dist.world_size() == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
