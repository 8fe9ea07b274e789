"""Stage 2b: training on a partitioned graph, each worker holding only its part.

    python -m distgnn.partition --graph data/gowalla --partitions 2
    python -m distgnn.train --graph data/gowalla --cluster.partitioned true --cluster.num_workers 2

Worker ``r`` of ``P`` loads ``parts/part-r`` (the CSR rows of the nodes it owns, in both directions,
with global neighbor ids, and the training edges of its users), the ``[N]`` node -> part map, and
the ``[N]`` full-graph degrees LightGCN's weights need. Nothing else of the graph is read.

- **Sampling across parts.** Hop by hop, the frontier is grouped by owner and sent to the owners
  with one ``all_to_all``; each owner samples its nodes' neighbors in its own CSR (the same
  vectorised :func:`~distgnn.sampler.sample_neighbors`) and sends them back with a second. Entries are
  then put back in frontier order, so the subgraph has exactly the layout and distribution of
  single-machine sampling (:func:`~distgnn.sampler.expand_subgraph` is shared).
- **Row-sharded embedding tables.** A worker stores the embedding rows (and SparseAdam state) of the
  nodes it owns. A step fetches the rows its subgraph touches from their owners; after ``backward``
  it sends their gradients back, and each owner back-propagates them into its own rows, so one
  sparse SparseAdam step updates exactly the touched rows. Communication per step is proportional
  to the rows a batch touches, never to the size of the table.

Collectives run on the process group Ray Train already set up (gloo on CPU): no extra servers and no
serialisation, and ``all_to_all_single`` with uneven splits moves each block once. Sampling tensors
live on the CPU, so on NCCL machines a gloo group is created next to the default one.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch_geometric.data import Data

from distgnn import dist
from distgnn.checkpoint import load_checked, load_training_state, save_checked, save_model
from distgnn.files import write_json_atomic
from distgnn.config import ConfigError, TrainJobConfig, config_to_dict
from distgnn.graph import ItemSets, csr_row_positions, item_sets_from_pairs
from distgnn.metrics import evaluate_popularity, evaluate_ranking, finalize
from distgnn.models import build_model, lightgcn_edge_weight, sampled_adjacency
from distgnn.partition import Partition, global_to_local, load_partition
from distgnn.rundir import RESULTS_FILE, write_history
from distgnn.sampler import NeighborSampler, expand_subgraph, sample_negative_items, sample_neighbors
from distgnn.train import (ReportFn, Restored, _flat, _log_epoch, _maybe_crash, _report_with_checkpoint,
                           candidate_log_q, check_job, evaluated_users, link_loader, link_loss, make_optimizers,
                           over_budget, peak_rss_mb, positive_cells, positive_draw_weights, scheduled_lr,
                           scoring_metric, set_lr)

log = logging.getLogger(__name__)

SHARDS_DIR = "model-parts"


# ---------------------------------------------------------------------------------------------------
# Communication


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


_group: Any = None


def cpu_group() -> Any:
    """Process group for CPU tensors: the default one under gloo, a gloo group next to NCCL."""
    global _group
    if _group is None:
        _group = tdist.new_group(backend="gloo") if tdist.get_backend() != "gloo" else tdist.group.WORLD
    return _group


def exchange(send: Tensor, send_counts: Tensor, traffic: Traffic | None = None, *,
             recv_counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
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
    group = cpu_group()
    if recv_counts is None:
        recv_counts = torch.empty_like(send_counts)
        tdist.all_to_all_single(recv_counts, send_counts, group=group)
    received = send.new_empty((int(recv_counts.sum()),) + tuple(send.shape[1:]))
    tdist.all_to_all_single(received, send.contiguous(), recv_counts.tolist(), send_counts.tolist(),
                            group=group)
    if traffic is not None:
        row_bytes = send.element_size() * (send[0].numel() if send.dim() > 1 else 1)
        others = int(send_counts.sum()) - int(send_counts[dist.rank()])
        traffic.bytes_sent += others * row_bytes + (8 * send_counts.numel() if recv_counts is None else 0)
    return received, recv_counts


def group_by_owner(nodes: Tensor, node_part: Tensor, world_size: int) -> tuple[Tensor, Tensor]:
    """``(order, counts)``: ``nodes[order]`` lists rank 0's nodes first, then rank 1's, ...; ``counts
    [P]`` how many each rank owns. Stable, so each rank's nodes keep their order."""
    owner = node_part.index_select(0, nodes).long()
    return torch.argsort(owner, stable=True), torch.bincount(owner, minlength=world_size)


def _block_sums(values: Tensor, counts: Tensor) -> Tensor:
    """Sum of ``values`` over consecutive blocks of ``counts`` entries."""
    ends = torch.cumsum(torch.cat([values.new_zeros(1), values]), 0)
    bounds = torch.cumsum(torch.cat([counts.new_zeros(1), counts]), 0)
    return ends[bounds[1:]] - ends[bounds[:-1]]


# ---------------------------------------------------------------------------------------------------
# Sampling across parts


def remote_neighbors(partition: Partition, frontier: Tensor, k: int, *, replace: bool,
                     generator: torch.Generator | None, traffic: Traffic | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Up to ``k`` uniform neighbors of each frontier node, each sampled by the part owning it.

    Every rank must call this together (it runs three ``all_to_all``), with its own frontier.

    Returns:
        ``(segment, neighbor, edge)`` as :func:`~distgnn.sampler.expand_subgraph` wants them: entries
        grouped by frontier node in frontier order; ``edge`` is -1 (edge ids are local to a part).
    """
    world = dist.world_size()
    order, counts = group_by_owner(frontier, partition.node_part, world)
    asked, asked_counts = exchange(frontier.index_select(0, order), counts, traffic)
    rows = global_to_local(partition, asked)
    if bool((rows < 0).any()):
        raise RuntimeError(f"part {partition.part_id} was asked for nodes it does not own; "
                           "the workers disagree about the partition")
    segment, position = sample_neighbors(partition.indptr, partition.indices, rows, k, replace=replace,
                                         generator=generator)
    neighbor = partition.indices.index_select(0, position)
    per_request = torch.bincount(segment, minlength=asked.numel())
    got_per_node, _ = exchange(per_request, asked_counts, traffic, recv_counts=counts)
    got, _ = exchange(neighbor, _block_sums(per_request, asked_counts), traffic,
                      recv_counts=_block_sums(got_per_node, counts))
    # got lists the neighbors of frontier[order[0]], then of frontier[order[1]], ...: map the
    # entries back to frontier positions and restore frontier order (stable, so the owner's draw
    # order within a node is kept).
    owner_segment = order.index_select(0, torch.repeat_interleave(torch.arange(order.numel()), got_per_node))
    back = torch.argsort(owner_segment, stable=True)
    if traffic is not None:
        traffic.frontier_nodes += frontier.numel()
        traffic.remote_frontier_nodes += frontier.numel() - int(counts[dist.rank()])
    return owner_segment[back], got[back], torch.full((got.numel(),), -1, dtype=torch.long)


class PartitionedNeighborSampler(NeighborSampler):
    """:class:`~distgnn.sampler.NeighborSampler` over a partitioned graph: neighbors of nodes other
    parts own are sampled by those parts (see :func:`remote_neighbors`); negatives are drawn locally,
    since a batch's users (the seeds' sources) are always owned by this part.

    Every rank must draw the same number of batches, in step (each batch runs collectives).
    """

    def __init__(self, partition: Partition, num_neighbors: list[int], *, replace: bool = False,
                 seed: int | None = None, traffic: Traffic | None = None):
        self.partition = partition
        self.traffic = traffic
        self._init_sampling(num_neighbors, num_users=partition.num_users, num_items=partition.num_items,
                            replace=replace, seed=seed)

    def _sample_subgraph(self, seeds: Tensor):
        def neighbors(frontier: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
            return remote_neighbors(self.partition, frontier, k, replace=self.replace,
                                    generator=self.generator, traffic=self.traffic)

        return expand_subgraph(seeds.long(), self.num_neighbors, neighbors, node_map=self._node_map)

    def sample_negative_items(self, users: Tensor, num_per_user: int) -> Tensor:
        self._enter_process()
        rows = global_to_local(self.partition, users.long())
        if bool((rows < 0).any()):
            raise ValueError(f"part {self.partition.part_id}: negatives asked for users it does not own")
        # csr_contains works on the part's CSR: its neighbor ids are global, rows sorted
        neg = sample_negative_items(self.partition.indptr, self.partition.indices, rows, num_per_user,
                                    num_users=self.num_users, num_items=self.num_items, generator=self.generator)
        return neg


# ---------------------------------------------------------------------------------------------------
# Row-sharded embeddings


@dataclass
class Fetched:
    """Rows handed out by this worker in :func:`fetch_rows`, kept to route their gradients back."""

    served: Tensor  # [m, d] rows this worker looked up for others (with autograd graph)
    order: Tensor  # owner-grouping permutation of the requested nodes
    counts: Tensor  # [P] rows requested from each owner
    asked_counts: Tensor  # [P] rows each rank requested from this worker


def fetch_rows(lookup: Callable[[Tensor], Tensor], partition: Partition, nodes: Tensor,
               traffic: Traffic | None = None) -> tuple[Tensor, Fetched]:
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
    rows (gradients of a row used by several workers add up, as DDP's all-reduce would)."""
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    back, _ = exchange(grad.index_select(0, fetched.order), fetched.counts, traffic,
                       recv_counts=fetched.asked_counts)
    fetched.served.backward(back)


# ---------------------------------------------------------------------------------------------------
# The worker's view of the graph


@dataclass(frozen=True)
class PartView:
    """What a worker holds: its part, the routing arrays and its users' held-out items."""

    partition: Partition
    degree: Tensor  # [N] full-graph training degree of every node
    num_owned_users: int
    val: ItemSets  # over local user rows 0..num_owned_users-1, item indices
    test: ItemSets

    @property
    def train(self) -> ItemSets:
        """Training items of the owned users: the part's user rows (item node ids -> item indices)."""
        p = self.partition
        end = int(p.indptr[self.num_owned_users])
        return ItemSets(p.indptr[: self.num_owned_users + 1], p.indices[:end] - p.num_users)

    def split(self, name: str) -> ItemSets:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def held_bytes(view: PartView, model: nn.Module) -> dict[str, int]:
    """Bytes of what a worker holds between steps: its part's structure and features, the routing
    arrays, its embedding rows and their two Adam moments."""
    p = view.partition
    structure = sum(t.numel() * t.element_size() for t in (p.nodes, p.indptr, p.indices, p.train_edges))
    params = sum(t.numel() * t.element_size() for t in model.parameters())
    return {"structure": structure,
            "features": p.features.numel() * p.features.element_size() if p.features is not None else 0,
            "routing": p.node_part.numel() * p.node_part.element_size() + view.degree.numel() * 8,
            "embeddings_and_adam": 3 * params}


def load_part_view(graph_dir: str | Path, rank: int, world_size: int) -> PartView:
    """Load this worker's part (checksums verified) and what it needs besides."""
    graph_dir = Path(graph_dir)
    partition = load_partition(graph_dir, rank, num_parts=world_size)
    # Degrees of every node: LightGCN weighs a message by both ends' full-graph degrees. [N] int64
    # from the global row pointer, read once; the rest of the global CSR is never touched.
    indptr = np.load(graph_dir / "graph" / "indptr.npy", mmap_mode="r")
    degree = torch.from_numpy(np.diff(indptr))
    num_owned_users = int(torch.searchsorted(partition.nodes, partition.num_users))
    held_out = {}
    for name in ("val", "test"):
        table = pq.read_table(graph_dir / f"{name}.parquet", columns=["user", "item"])
        user = torch.from_numpy(table["user"].to_numpy().astype(np.int64))
        row = global_to_local(partition, user)
        keep = (row >= 0) & (row < num_owned_users)
        held_out[name] = item_sets_from_pairs(row[keep].numpy(), table["item"].to_numpy()[keep.numpy()],
                                              num_owned_users)
    return PartView(partition=partition, degree=degree, num_owned_users=num_owned_users,
                    val=held_out["val"], test=held_out["test"])


# ---------------------------------------------------------------------------------------------------
# Exact embeddings and evaluation, partitioned


def row_chunks(indptr: Tensor, max_entries: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` row ranges of a CSR holding at most ``max_entries`` entries each
    (a single row longer than that gets a range of its own). Rows, not entries, are the natural
    unit, but power-law graphs put 10^4-10^5 entries in one hub row."""
    num_rows, bounds = indptr.numel() - 1, [0]
    while bounds[-1] < num_rows:
        start = bounds[-1]
        end = int(torch.searchsorted(indptr, indptr[start] + max_entries, right=True)) - 1
        bounds.append(min(max(end, start + 1), num_rows))
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def partitioned_embeddings(model: nn.Module, view: PartView, *, cosine: bool, max_entries: int = 1 << 19,
                           traffic: Traffic | None = None) -> Tensor:
    """Exact (unsampled) output embeddings of the nodes this part owns, ``[n_p, d]``.

    Layer-wise, as :func:`distgnn.models.full_graph_embeddings`: each layer is materialised for every
    node before the next, in chunks of owned rows holding at most ``max_entries`` adjacency entries;
    for each chunk the worker fetches the previous layer's rows of the chunk's neighbors from their
    owners and multiplies by the chunk's rows of the normalised adjacency. Chunks bound the extra
    memory to a few ``[max_entries]`` index buffers and ``[max_entries, d]`` fetched rows.
    Normalised when the model scores by cosine.
    """
    p = view.partition
    x = model.embedding.weight.detach()
    out = x
    if model.num_layers > 0:
        chunks = row_chunks(p.indptr, max_entries)
        # every rank runs the same number of chunks (each one is a collective); spare ones are empty
        chunks += [(p.num_nodes, p.num_nodes)] * (int(dist.all_reduce_max(len(chunks))) - len(chunks))
        out = x / (model.num_layers + 1)
        for _ in range(model.num_layers):
            layer, x = x, torch.empty_like(x)
            for start, end in chunks:
                rows = torch.arange(start, end)
                adj_t, halo = _chunk_adjacency(view, rows)
                x_halo, _ = fetch_rows(lambda r: layer.index_select(0, r), p, halo, traffic)
                x[rows] = torch.sparse.mm(adj_t, x_halo)
            out = out + x / (model.num_layers + 1)
    return torch.nn.functional.normalize(out, dim=-1) if cosine else out


def _chunk_adjacency(view: PartView, rows: Tensor) -> tuple[Tensor, Tensor]:
    """``(adj_t [len(rows), len(halo)], halo)``: LightGCN-normalised rows of owned nodes ``rows``
    (local ids) against ``halo``, the distinct global ids of their neighbors."""
    p = view.partition
    segment, position = csr_row_positions(p.indptr, rows)
    neighbor = p.indices.index_select(0, position)
    halo, column = torch.unique(neighbor, return_inverse=True)
    dst = p.nodes.index_select(0, rows).index_select(0, segment)
    weight = lightgcn_edge_weight(view.degree, neighbor, dst, view.degree.index_select(0, dst))
    crow = torch.zeros(rows.numel() + 1, dtype=torch.long)
    torch.cumsum(p.indptr.index_select(0, rows + 1) - p.indptr.index_select(0, rows), 0, out=crow[1:])
    return torch.sparse_csr_tensor(crow, column, weight, (rows.numel(), halo.numel())), halo


def gather_items(embeddings: Tensor, view: PartView) -> Tensor:
    """``[I, d]`` embeddings of all items on every worker (ranking scores every item)."""
    p, world = view.partition, dist.world_size()
    item_rows = embeddings[view.num_owned_users:]
    ids = p.nodes[view.num_owned_users:] - p.num_users
    counts = torch.full((world,), ids.numel(), dtype=torch.long)
    all_ids, _ = exchange(ids.repeat(world), counts)
    all_rows, _ = exchange(item_rows.repeat(world, 1), counts)
    items = torch.empty(p.num_items, embeddings.shape[1], dtype=embeddings.dtype)
    items[all_ids] = all_rows
    return items


def _evaluated_rows(view: PartView, max_users: int) -> Tensor:
    """Local rows of this part's users that evaluation scores (all, or those in the global sample)."""
    rows = torch.arange(view.num_owned_users)
    mask = evaluated_users(view.partition.num_users, max_users)
    return rows if mask is None else rows[mask[view.partition.nodes[: view.num_owned_users]]]


@torch.no_grad()
def evaluate_partitioned(embeddings: Tensor, view: PartView, split: str, ks: tuple[int, ...], *,
                         batch_size: int, max_users: int = 0) -> dict[str, float]:
    """Full-ranking metrics of this worker's users against all items, summed over workers."""
    items = gather_items(embeddings, view)
    exclude = [view.train] + ([view.val] if split == "test" else [])
    truth = view.split(split)
    sums = evaluate_ranking(embeddings[: view.num_owned_users], items, _evaluated_rows(view, max_users),
                            [(s.indptr, s.indices) for s in exclude], (truth.indptr, truth.indices),
                            list(ks), batch_size=batch_size)
    return finalize(dist.all_reduce_sum(sums))


def popularity_partitioned(view: PartView, split: str, ks: tuple[int, ...], *, batch_size: int,
                           max_users: int = 0) -> dict[str, float]:
    exclude = [view.train] + ([view.val] if split == "test" else [])
    truth = view.split(split)
    item_degree = view.degree[view.partition.num_users:].to(torch.float32)
    sums = evaluate_popularity(item_degree, _evaluated_rows(view, max_users),
                               [(s.indptr, s.indices) for s in exclude], (truth.indptr, truth.indices),
                               list(ks), batch_size=batch_size)
    return finalize(dist.all_reduce_sum(sums))


# ---------------------------------------------------------------------------------------------------
# One training step


def make_sharded_model(job: TrainJobConfig, view: PartView) -> nn.Module:
    """The model with an embedding table of this part's rows only (row ``i`` = ``partition.nodes[i]``)."""
    num_layers = 0 if job.model.name == "mf" else job.model.num_layers
    if num_layers and len(job.sampler.num_neighbors) != num_layers:
        raise ConfigError(f"config key 'sampler.num_neighbors': expected {num_layers} values "
                          f"(one per layer of model.num_layers), got {len(job.sampler.num_neighbors)}")
    return build_model(job.model.name, num_nodes=view.partition.num_nodes, dim=job.model.dim,
                       num_layers=num_layers)


def partitioned_step(model: nn.Module, batch: Data, view: PartView, job: TrainJobConfig,
                     item_log_q: Tensor | None, optimizers: list, traffic: Traffic) -> Tensor:
    """Forward, backward and update of one batch with row-sharded embeddings."""
    n_id = batch.n_id
    x, fetched = fetch_rows(model.embedding, view.partition, n_id, traffic)
    adj_t = None
    if job.model.name != "mf":
        adj_t = sampled_adjacency(n_id, batch.edge_index[0], batch.edge_index[1], view.degree)
    out = model.propagate(x, adj_t, batch.num_sampled_nodes)  # the seeds' rows only
    p = view.partition
    user_rows = global_to_local(p, n_id[batch.src_index])
    loss = link_loss(out, lambda local: x[local], batch, job, item_log_q,
                     lambda rows, cand: positive_cells(p.indptr, p.indices, rows, cand),
                     num_users=p.num_users, user_rows=user_rows)
    for opt in optimizers:
        opt.zero_grad()
    # Each worker's loss is the mean over its batch; dividing by the number of workers makes the
    # summed gradients an average, as DDP's all-reduce does.
    (loss / dist.world_size()).backward()
    push_gradients(x, fetched, traffic)
    for opt in optimizers:
        opt.step()
    return loss.detach()


# ---------------------------------------------------------------------------------------------------
# Model shards on disk


def save_shard(folder: Path, model: nn.Module, view: PartView, info: dict) -> None:
    """This part's embedding rows with their global node ids: ``folder/part-XXX.pt``."""
    save_checked({"nodes": view.partition.nodes.clone(), "model": model.state_dict(), "info": info},
                folder / f"part-{view.partition.part_id:03d}.pt")


def load_shard(folder: Path, model: nn.Module, view: PartView) -> dict:
    state = load_checked(folder / f"part-{view.partition.part_id:03d}.pt", "model shard")
    model.load_state_dict(state["model"])
    return state["info"]


def assemble_model(folder: Path, num_parts: int, out: Path) -> None:
    """Write one whole-graph ``model.pt`` (what export reads) from the per-part best shards in
    ``folder``. Runs in the driver after training: the only place where the full table is held."""
    shards = [load_checked(folder / f"part-{p:03d}.pt", "model shard") for p in range(num_parts)]
    num_nodes = sum(s["nodes"].numel() for s in shards)
    state: dict[str, Tensor] = {}
    for key in shards[0]["model"]:
        first = shards[0]["model"][key]
        if key.endswith("embedding.weight"):
            table = first.new_empty((num_nodes,) + tuple(first.shape[1:]))
            for s in shards:
                table[s["nodes"]] = s["model"][key]
            state[key] = table
        else:
            state[key] = first
    save_model(out, state, shards[0]["info"])


# ---------------------------------------------------------------------------------------------------
# The training loop


def partitioned_train_loop(job: TrainJobConfig, run_dir: Path, *, report: ReportFn | None = None,
                           restore: Restored | None = None) -> dict[str, Any]:
    """:func:`distgnn.train.train_loop` for a partitioned graph: worker ``r`` holds part ``r`` and
    its rows of the embedding table. Same epochs, evaluation, early stopping, checkpoints and
    results; the best model is kept as one shard per part (``run_dir/model-parts/``) and joined
    into ``model.pt`` by the driver (:func:`assemble_model`)."""
    check_job(job)
    rank, world_size = dist.rank(), dist.world_size()
    torch.set_num_threads(job.cluster.threads_per_worker)
    rss_before_mb = peak_rss_mb()
    view = load_part_view(job.graph, rank, world_size)
    torch.manual_seed(job.run.seed + 7 * rank)  # each part initialises its own rows
    model = make_sharded_model(job, view)
    optimizers = make_optimizers(model, job.optim.lr)
    state_file = f"state-part-{rank:03d}.pt"
    start_epoch, history, best = 0, [], None
    if restore is not None:
        state = load_training_state(restore.folder, model=model, optimizers=optimizers, name=state_file)
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        log.info("resumed from %s at epoch %d", restore.folder, start_epoch)

    held_mb = {k: v / 2**20 for k, v in held_bytes(view, model).items()}
    traffic = Traffic()
    fanouts = list(job.sampler.num_neighbors) if job.model.name != "mf" else []
    sampler = PartitionedNeighborSampler(view.partition, fanouts, replace=job.sampler.replace,
                                         seed=job.run.seed + 7919 * rank + start_epoch, traffic=traffic)
    torch.manual_seed(job.run.seed + 1000 * rank + start_epoch)  # distinct batch order per rank
    edges = view.partition.train_edges
    loader = link_loader(sampler, view.partition.node_part.numel(), edges, job)
    steps = dist.all_reduce_min(len(loader))  # every batch runs collectives: equal steps everywhere
    if job.optim.max_steps_per_epoch:
        steps = min(steps, job.optim.max_steps_per_epoch)
    if steps == 0:
        raise ConfigError(f"config key 'optim.batch_size': {job.optim.batch_size} exceeds the training "
                          f"edges of part {rank} ({edges.shape[1]}); use fewer parts or smaller batches")
    item_log_q = None
    if job.optim.loss == "softmax" and job.optim.log_q:
        num_users = view.partition.num_users
        item_log_q = candidate_log_q(positive_draw_weights(edges, num_users, view.degree.numel() - num_users,
                                                           job.optim.edge_sampling), job)
    split = "val" if dist.all_reduce_sum({"n": view.val.counts.sum()})["n"] > 0 else "test"
    metric, cosine = job.eval.metric, scoring_metric(job) == "cosine"
    log.info("%d worker(s) on %d parts, part %d: %s nodes, %s training edges, %d steps of %d per epoch",
             world_size, view.partition.num_parts, rank, f"{view.partition.num_nodes:,}",
             f"{edges.shape[1]:,}", steps, job.optim.batch_size)

    spent_s = sum(h["train_s"] + h.get("eval_s", 0.0) for h in history)
    for epoch in range(start_epoch, job.optim.epochs):
        if job.optim.time_budget_min and history and over_budget(history, spent_s, job.optim.time_budget_min):
            log.info("time budget of %g min reached after %d epochs: stopping", job.optim.time_budget_min, epoch)
            break
        _maybe_crash(job, run_dir, epoch)
        t0, before = time.perf_counter(), Traffic(**traffic.as_dict())
        loss_sum = torch.zeros((), dtype=torch.float64)
        for step, batch in zip(range(steps), loader):
            set_lr(optimizers, scheduled_lr(job, (epoch + step / steps) / job.optim.epochs))
            loss_sum += partitioned_step(model, batch, view, job, item_log_q, optimizers, traffic)
        train_s = time.perf_counter() - t0
        totals = dist.all_reduce_sum({"loss": loss_sum, "steps": steps, **_traffic_delta(before, traffic)})
        record: dict[str, Any] = {"epoch": epoch, "loss": totals["loss"] / totals["steps"], "steps": steps,
                                  "train_s": round(dist.all_reduce_max(train_s), 3),
                                  "traffic": _traffic_summary(totals, steps, world_size)}
        if (epoch + 1) % job.eval.every == 0 or epoch == job.optim.epochs - 1:
            t1 = time.perf_counter()
            emb = partitioned_embeddings(model, view, cosine=cosine)
            record["eval"] = evaluate_partitioned(emb, view, split, job.eval.ks, batch_size=job.eval.batch_size,
                                                  max_users=job.eval.max_users)
            record["eval_split"] = split
            record["eval_s"] = round(dist.all_reduce_max(time.perf_counter() - t1), 3)
            if best is None or split == "test" or record["eval"][metric] > best["value"]:
                best = {"epoch": epoch, "value": record["eval"][metric]}
                save_shard(run_dir / SHARDS_DIR, model, view, {"epoch": epoch, metric: best["value"],
                                                              "config": config_to_dict(job)})
        history.append(record)
        spent_s += record["train_s"] + record.get("eval_s", 0.0)
        if rank == 0:
            write_history(run_dir, history)
            _log_epoch(record, metric)
        stop = (split == "val" and job.eval.patience > 0 and best is not None
                and epoch - best["epoch"] >= job.eval.patience * job.eval.every)
        _report_with_checkpoint(report, {**_flat({k: v for k, v in record.items() if k != "traffic"}),
                                         "stop": stop}, model, optimizers, epoch, history, best,
                                state_file=state_file)
        if stop:
            log.info("no %s improvement for %d epochs: stopping early", metric, epoch - best["epoch"])
            break

    dist.barrier()
    training_peak = peak_rss_mb()
    best_info = load_shard(run_dir / SHARDS_DIR, model, view)
    emb = partitioned_embeddings(model, view, cosine=cosine)
    test = evaluate_partitioned(emb, view, "test", job.eval.ks, batch_size=job.eval.batch_size,
                                max_users=job.eval.max_users)
    popularity = popularity_partitioned(view, "test", job.eval.ks, batch_size=job.eval.batch_size,
                                        max_users=job.eval.max_users)
    peak = peak_rss_mb()
    results = {"model": job.model.name, "best_epoch": best_info["epoch"], "test": test,
               "popularity_test": popularity, "epochs_run": len(history),
               "train_s": sum(h["train_s"] for h in history), "num_workers": world_size,
               "partitioned": True, "peak_rss_mb_per_worker": dist.all_reduce_max(peak),
               # what the worker added to a bare process: part, routing arrays, embeddings, buffers
               "peak_rss_mb_above_start": dist.all_reduce_max(peak - rss_before_mb),
               "peak_rss_mb_training": dist.all_reduce_max(training_peak),
               "held_mb": {k: dist.all_reduce_max(v) for k, v in held_mb.items()},
               "traffic_per_step": history[-1]["traffic"] if history else {}}
    if rank == 0:
        write_json_atomic(results, run_dir / RESULTS_FILE)
    if report is not None:
        report({"final": True, **{f"test/{k}": v for k, v in test.items()}}, None)
    return results


def _traffic_delta(before: Traffic, after: Traffic) -> dict[str, int]:
    return {k: v - getattr(before, k) for k, v in after.as_dict().items()}


def _traffic_summary(totals: dict[str, float], steps: int, world_size: int) -> dict[str, float]:
    """Per-step, per-worker averages of the epoch's traffic (sums over workers come in)."""
    per = steps * world_size
    return {"bytes_sent_per_step": totals["bytes_sent"] / per,
            "remote_sample_fraction": totals["remote_frontier_nodes"] / max(totals["frontier_nodes"], 1),
            "rows_fetched_per_step": totals["rows_fetched"] / per,
            "remote_row_fraction": totals["remote_rows_fetched"] / max(totals["rows_fetched"], 1)}
