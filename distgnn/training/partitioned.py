"""The partitioned strategy: each worker holds only its part of the graph and its rows of the
embedding tables.

    python -m distgnn.partition --graph data/gowalla --partitions 2
    python -m distgnn.train --graph data/gowalla --cluster.partitioned true --cluster.num_workers 2

Worker ``r`` of ``P`` loads ``parts/part-r`` (the CSR rows of the nodes it owns, in both directions,
with global neighbor ids, and the training edges of its users), the ``[N]`` node -> part map, and
the ``[N]`` full-graph degrees LightGCN's weights need. Nothing else of the graph is read.

- **Sampling across parts.** Hop by hop, the frontier is grouped by owner and sent to the owners
  with one ``all_to_all``; each owner samples its nodes' neighbors in its own CSR (the same
  vectorised :func:`~distgnn.nn.sampler.sample_neighbors`) and sends them back with a second.
  Entries are then put back in frontier order, so the subgraph has exactly the layout and
  distribution of single-machine sampling (:func:`~distgnn.nn.sampler.expand_subgraph` is shared).
- **Row-sharded tables.** A worker stores the embedding rows, item-bias rows and SparseAdam state of
  the nodes it owns. A step fetches the rows its subgraph and its candidates touch from their owners;
  after ``backward`` it sends their gradients back (:mod:`distgnn.training.exchange`), so one sparse
  SparseAdam step updates exactly the touched rows. Communication per step is proportional to the
  rows a batch touches, never to the size of the tables.

The epoch loop is :func:`distgnn.training.loop.fit`, the same as for the replicated strategy.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as tdist
from torch import Tensor, nn
from torch_geometric.data import Data

from distgnn.core import dist
from distgnn.core.checkpoint import (
    BEST_MODEL,
    load_checked,
    load_training_state,
    save_model_shard,
    save_sharded_model,
    save_training_state,
    shard_file,
)
from distgnn.core.config import TrainJobConfig
from distgnn.data.graph import SPLITS, ItemSets, ShiftedIndices, csr_row_positions, item_sets_from_pairs, row_chunks
from distgnn.data.partition import Partition, global_to_local, load_partition
from distgnn.eval.metrics import evaluate_popularity, evaluate_scorer, finalize
from distgnn.eval.protocol import (
    SAMPLES_FILE,
    ScoringVectors,
    as_scoring_vectors,
    evaluated_users,
    excluded,
    sample_users,
    samples_table,
    top_items,
    truth,
    write_samples_csv,
)
from distgnn.nn.loaders import link_loader, positive_draw_weights
from distgnn.nn.models import (
    Recommender,
    build_model,
    finish_scoring_vectors,
    lightgcn_edge_weight,
    sampled_adjacency,
    scoring_columns,
)
from distgnn.nn.sampler import (
    NeighborSampler,
    csr_contains,
    expand_subgraph,
    sample_negative_items,
    sample_neighbors,
)
from distgnn.training.exchange import Fetched, Traffic, block_sums, exchange, fetch_rows, group_by_owner, push_gradients
from distgnn.training.objective import candidate_log_q, contrastive_term, link_loss, make_optimizers, positive_cells

log = logging.getLogger(__name__)

SHARDS_DIR = "model-parts"
NUM_SAMPLE_USERS, SAMPLE_K = 5, 10  # samples.csv, as the replicated strategy writes it


# ---------------------------------------------------------------------------------------------------
# Sampling across parts


def remote_neighbors(
    partition: Partition,
    frontier: Tensor,
    k: int,
    *,
    replace: bool,
    generator: torch.Generator | None,
    traffic: Traffic | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Up to ``k`` uniform neighbors of each frontier node, each sampled by the part owning it.

    Every rank must call this together (it runs three ``all_to_all``), with its own frontier.

    Returns:
        ``(segment, neighbor, edge)`` as :func:`~distgnn.nn.sampler.expand_subgraph` wants them: entries
        grouped by frontier node in frontier order; ``edge`` is -1 (edge ids are local to a part).
    """
    world = dist.world_size()
    order, counts = group_by_owner(frontier, partition.node_part, world)
    asked, asked_counts = exchange(frontier.index_select(0, order), counts, traffic)
    rows = global_to_local(partition, asked)
    if bool((rows < 0).any()):
        raise RuntimeError(
            f"part {partition.part_id} was asked for nodes it does not own; the workers disagree about the partition"
        )
    segment, position = sample_neighbors(
        partition.indptr, partition.indices, rows, k, replace=replace, generator=generator
    )
    neighbor = partition.indices.index_select(0, position)
    per_request = torch.bincount(segment, minlength=asked.numel())
    got_per_node, _ = exchange(per_request, asked_counts, traffic, recv_counts=counts)
    got, _ = exchange(
        neighbor, block_sums(per_request, asked_counts), traffic, recv_counts=block_sums(got_per_node, counts)
    )
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
    """:class:`~distgnn.nn.sampler.NeighborSampler` over a partitioned graph: neighbors of nodes other
    parts own are sampled by those parts (see :func:`remote_neighbors`); negatives are drawn locally,
    since a batch's users (the seeds' sources) are always owned by this part.

    Every rank must draw the same number of batches, in step (each batch runs collectives).
    """

    def __init__(
        self,
        partition: Partition,
        num_neighbors: list[int],
        *,
        replace: bool = False,
        seed: int | None = None,
        traffic: Traffic | None = None,
    ):
        self.partition = partition
        self.traffic = traffic
        self._init_sampling(
            num_neighbors, num_users=partition.num_users, num_items=partition.num_items, replace=replace, seed=seed
        )

    def _sample_subgraph(self, seeds: Tensor):
        def neighbors(frontier: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
            return remote_neighbors(
                self.partition, frontier, k, replace=self.replace, generator=self.generator, traffic=self.traffic
            )

        return expand_subgraph(seeds.long(), self.num_neighbors, neighbors, node_map=self._node_map)

    def sample_negative_items(self, users: Tensor, num_per_user: int) -> Tensor:
        self._enter_process()
        rows = global_to_local(self.partition, users.long())
        if bool((rows < 0).any()):
            raise ValueError(f"part {self.partition.part_id}: negatives asked for users it does not own")
        # csr_contains works on the part's CSR: its neighbor ids are global, rows sorted
        neg = sample_negative_items(
            self.partition.indptr,
            self.partition.indices,
            rows,
            num_per_user,
            num_users=self.num_users,
            num_items=self.num_items,
            generator=self.generator,
        )
        return neg


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

    @property
    def train_csr(self) -> tuple[Tensor, ShiftedIndices]:
        """:attr:`train` read in place from the part's CSR (no copy), for exclusion."""
        p = self.partition
        end = int(p.indptr[self.num_owned_users])
        return p.indptr[: self.num_owned_users + 1], ShiftedIndices(p.indices[:end], p.num_users)

    def split(self, name: str) -> ItemSets:
        if name not in SPLITS:
            raise KeyError(name)
        return getattr(self, name)  # only the one asked for: the training sets are built on use


def held_bytes(view: PartView, model: nn.Module) -> dict[str, int]:
    """Bytes of what a worker holds between steps: its part's structure and features, the routing
    arrays, its embedding rows and their two Adam moments."""
    p = view.partition
    structure = sum(t.numel() * t.element_size() for t in (p.nodes, p.indptr, p.indices, p.train_edges))
    params = sum(t.numel() * t.element_size() for t in model.parameters())
    return {
        "structure": structure,
        "features": p.features.numel() * p.features.element_size() if p.features is not None else 0,
        "routing": p.node_part.numel() * p.node_part.element_size() + view.degree.numel() * 8,
        "embeddings_and_adam": 3 * params,
    }


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
        held_out[name] = item_sets_from_pairs(
            row[keep].numpy(), table["item"].to_numpy()[keep.numpy()], num_owned_users
        )
    return PartView(
        partition=partition, degree=degree, num_owned_users=num_owned_users, val=held_out["val"], test=held_out["test"]
    )


# ---------------------------------------------------------------------------------------------------
# Exact embeddings and evaluation, partitioned


@torch.no_grad()
def partitioned_embeddings(
    model: Recommender,
    view: PartView,
    *,
    max_entries: int = 1 << 17,
    traffic: Traffic | None = None,
    out: Tensor | None = None,
    rows: Tensor | None = None,
) -> Tensor:
    """Exact (unsampled) output embeddings of the nodes this part owns, ``[n_p, d]`` (of its local
    rows ``rows`` only, ``[R, d]``, when given; into ``out`` when given: the first columns of the
    scoring vectors, see :meth:`Partitioned.vectors`).

    Layer-wise, as :func:`distgnn.nn.models.full_graph_embeddings`: each layer is materialised for
    every node before the next (the last one for the rows asked only), in chunks of owned rows
    holding at most ``max_entries`` adjacency entries; for each chunk the worker fetches the
    previous layer's rows of the chunk's neighbors from their owners and applies the model's layer
    to the chunk's rows of the normalised adjacency. Memory: the output and one ``[n_p, d]`` layer
    (the id rows are the first layer's input, read in place; the last layer goes into the output
    chunk by chunk), plus a few ``[max_entries]`` index buffers and ``[max_entries, d]`` fetched
    rows (2^17 entries: ~34 MB each at d = 64). The result does not depend on ``max_entries`` or
    ``rows``: each row's sum runs over the same entries in the same order (tested against the
    whole graph's, bit for bit). Collective: every rank runs the same number of chunks.
    """
    p = view.partition
    x = model.embedding.weight.detach()
    num_rows = p.num_nodes if rows is None else rows.numel()
    if out is None:
        out = x.new_empty((num_rows, x.shape[1]))

    def rows_of(table: Tensor, start: int, end: int) -> Tensor:  # table's rows at output rows start..end-1
        return table[start:end] if rows is None else table.index_select(0, rows[start:end])

    for start in range(0, num_rows, 1 << 16):
        out[start : start + (1 << 16)] = model.readout(None, rows_of(x, start, start + (1 << 16)))
    if model.num_layers == 0:
        return out

    def padded(chunks: list[tuple[int, int]], end: int) -> list[tuple[int, int]]:
        # every rank runs the same number of chunks (each one is a collective); spare ones are empty
        return chunks + [(end, end)] * (int(dist.all_reduce_max(len(chunks))) - len(chunks))

    every_row = padded(row_chunks(p.indptr, max_entries), p.num_nodes)
    if rows is None:
        wanted = every_row
    else:
        degree = p.indptr.index_select(0, rows + 1) - p.indptr.index_select(0, rows)
        wanted = padded(row_chunks(torch.cat([degree.new_zeros(1), torch.cumsum(degree, 0)]), max_entries), num_rows)
    for index in range(model.num_layers):
        last = index == model.num_layers - 1
        layer, x = x, None if last else torch.empty_like(x)
        for start, end in wanted if last else every_row:
            ids = torch.arange(start, end) if rows is None or not last else rows[start:end]
            adj_t, halo = chunk_adjacency(view, ids)
            x_halo, _ = fetch_rows(lambda r, layer=layer: layer.index_select(0, r), p, halo, traffic)
            h = model.layer(index, x_halo, adj_t)
            if not last:
                x[start:end] = h
            if last or rows is None:
                out[start:end] = model.readout(out[start:end], h)
        if not last and rows is not None:
            for start in range(0, num_rows, 1 << 16):
                end = min(start + (1 << 16), num_rows)
                out[start:end] = model.readout(out[start:end], rows_of(x, start, end))
    return out


def chunk_adjacency(view: PartView, rows: Tensor) -> tuple[Tensor, Tensor]:
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


GATHER_ROWS = 1 << 16  # item rows broadcast at a time


def gather_items(own: Tensor, view: PartView) -> Tensor:
    """``[I, d]`` scoring vectors of all items on every worker (ranking scores every item), from
    ``own``, this part's items' ``[n_items_p, d]`` in its local order: each worker broadcasts its
    rows, a block of :data:`GATHER_ROWS` at a time, so the only memory beyond the items' table is
    one block. Collective."""
    p, rank = view.partition, dist.rank()
    ids = p.nodes[view.num_owned_users :] - p.num_users
    items = own.new_empty((p.num_items, own.shape[1]))
    if dist.world_size() == 1:
        return items.index_copy_(0, ids, own)
    for owner, owner_ids in enumerate(dist.all_gather_uneven(ids)):
        for start in range(0, owner_ids.numel(), GATHER_ROWS):
            block_ids = owner_ids[start : start + GATHER_ROWS]
            if owner == rank:
                block = own[start : start + GATHER_ROWS].contiguous()
            else:
                block = own.new_empty((block_ids.numel(), own.shape[1]))
            tdist.broadcast(block, src=owner, group=dist.group_for(block))
            items.index_copy_(0, block_ids, block)
    return items


def evaluated_rows(view: PartView, max_users: int) -> Tensor:
    """Local rows of this part's users that evaluation scores (all, or those in the global sample)."""
    rows = torch.arange(view.num_owned_users)
    mask = evaluated_users(view.partition.num_users, max_users)
    return rows if mask is None else rows[mask[view.partition.nodes[: view.num_owned_users]]]


def scored_rows(view: PartView, split: str, max_users: int) -> Tensor:
    """Local rows of the users :func:`evaluate_partitioned` scores on ``split`` (in the sample, with
    held-out items): the user rows :class:`ScoringVectors` needs besides the items."""
    rows = evaluated_rows(view, max_users)
    return rows[view.split(split).counts[rows] > 0]


@torch.no_grad()
def evaluate_partitioned(
    embeddings: Tensor | ScoringVectors,
    view: PartView,
    split: str,
    ks: tuple[int, ...],
    *,
    batch_size: int,
    max_users: int = 0,
) -> dict[str, float]:
    """Full-ranking metrics of this worker's users against all items, summed over workers, from
    the part's ``[n_p, d]`` scoring vectors (or the :class:`ScoringVectors` of its local rows
    :func:`scored_rows` and its items)."""
    vectors = as_scoring_vectors(embeddings, view.num_owned_users)
    items = gather_items(vectors.items, view)
    sums = evaluate_scorer(  # evaluate_ranking's arithmetic, users' rows looked up among the rows held
        lambda chunk: vectors.users(chunk) @ items.T,
        evaluated_rows(view, max_users),
        excluded(view, split),  # the protocol's rule, over this part's users
        truth(view, split),
        list(ks),
        batch_size=batch_size,
        num_items=items.shape[0],
        width=items.shape[1],
    )
    return finalize(dist.all_reduce_sum(sums))


def popularity_partitioned(
    view: PartView, split: str, ks: tuple[int, ...], *, batch_size: int, max_users: int = 0
) -> dict[str, float]:
    item_degree = view.degree[view.partition.num_users :].to(torch.float32)
    sums = evaluate_popularity(
        item_degree,
        evaluated_rows(view, max_users),
        excluded(view, split),
        truth(view, split),
        list(ks),
        batch_size=batch_size,
    )
    return finalize(dist.all_reduce_sum(sums))


# ---------------------------------------------------------------------------------------------------
# The strategy


class Partitioned:
    """Worker ``r`` holds part ``r`` and its rows of the tables (see the module notes). The best
    model is kept as one shard per part (``run_dir/model-parts/``) with a ``model.pt`` saying so
    (:func:`~distgnn.core.checkpoint.save_sharded_model`); export reads the shards one by one
    (:func:`~distgnn.core.checkpoint.load_model_into`), so no process ever joins the tables."""

    def __init__(self, job: TrainJobConfig, *, device: torch.device = torch.device("cpu")):
        rank = dist.rank()
        self.rss_at_start_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # a bare process
        self.job, self.state_file = job, f"state-part-{rank:03d}.pt"
        self.view = load_part_view(job.graph, rank, dist.world_size())
        torch.manual_seed(job.run.seed + 7 * rank)  # each part initialises its own rows
        m = job.model
        self.model = build_model(
            m.name,
            num_nodes=self.view.partition.num_nodes,
            dim=m.dim,
            num_layers=0 if m.name == "mf" else m.num_layers,
            item_bias=m.item_bias,
        )
        self.optimizers = make_optimizers(self.model, job.optim.lr)
        self.traffic = Traffic()
        self.fetched: list[tuple[Tensor, Fetched]] = []
        self.item_log_q: Tensor | None = None
        self.eval_split = "val" if dist.all_reduce_sum({"n": self.view.val.counts.sum()})["n"] > 0 else "test"

    def make_loader(self, start_epoch: int):
        job, p, rank = self.job, self.view.partition, dist.rank()
        sampler = PartitionedNeighborSampler(
            p,
            list(job.fanouts),
            replace=job.sampler.replace,
            seed=job.run.seed + 7919 * rank + start_epoch,
            traffic=self.traffic,
        )
        torch.manual_seed(job.run.seed + 1000 * rank + start_epoch)  # distinct batch order per rank
        edges = p.train_edges
        if job.optim.loss == "softmax" and job.optim.log_q:
            weights = positive_draw_weights(edges, p.num_users, p.num_items, job.optim.edge_sampling)
            self.item_log_q = candidate_log_q(weights, job.optim)
        loader = link_loader(
            sampler,
            p.node_part.numel(),
            edges,
            batch_size=job.optim.batch_size,
            num_negatives=job.num_negatives,
            edge_sampling=job.optim.edge_sampling,
        )
        log.info("part %d: %s nodes, %s training edges", rank, f"{p.num_nodes:,}", f"{edges.shape[1]:,}")
        return loader, edges.shape[1]

    def begin_epoch(self) -> None:
        self.epoch_start = Traffic(**self.traffic.as_dict())

    def fetch(self, table: torch.nn.Embedding, nodes: Tensor) -> Tensor:
        """Rows of ``nodes`` (global ids) of a row-sharded table; their gradients go back to the
        owners in :meth:`sync_gradients`. Collective."""
        x, fetched = fetch_rows(table, self.view.partition, nodes, self.traffic)
        self.fetched.append((x, fetched))
        return x

    def loss(self, batch: Data) -> Tensor:
        model, view, o = self.model, self.view, self.job.optim
        p, n_id = view.partition, batch.n_id
        x = self.fetch(model.embedding, n_id)
        adj_t = None
        if model.num_layers:
            adj_t = sampled_adjacency(n_id, batch.edge_index[0], batch.edge_index[1], view.degree)
        out = model.propagate(x, adj_t, batch.num_sampled_nodes)  # the seeds' rows only
        user_rows = global_to_local(p, n_id[batch.src_index])
        bias = (
            None if model.bias_embedding is None else lambda nodes: self.fetch(model.bias_embedding, nodes).squeeze(-1)
        )
        loss = link_loss(
            out,
            lambda local: x[local],
            batch,
            o,
            self.item_log_q,
            lambda rows, cand: positive_cells(p.indptr, p.indices, rows, cand),
            num_users=p.num_users,
            user_rows=user_rows,
            item_bias=bias,
        )
        if o.contrastive_weight > 0:
            loss = loss + o.contrastive_weight * contrastive_term(model, x, adj_t, batch, o)
        return loss

    def sync_gradients(self) -> None:
        for x, fetched in self.fetched:  # the same order on every rank
            push_gradients(x, fetched, self.traffic)
        self.fetched = []

    def share_parameters(self) -> list:
        """Nothing to share: each part's rows live only with their owner."""
        return []

    def epoch_stats(self, steps: int) -> dict:
        """The epoch's traffic per step and worker (collective)."""
        delta = {k: v - getattr(self.epoch_start, k) for k, v in self.traffic.as_dict().items()}
        return {"traffic": traffic_summary(dist.all_reduce_sum(delta), steps, dist.world_size())}

    def results(self, history: list[dict]) -> dict:
        """What the run's results add for this strategy: memory held per worker and added to a bare
        process (MiB), and the last epoch's traffic per step."""
        held = {k: dist.all_reduce_max(v / 2**20) for k, v in held_bytes(self.view, self.model).items()}
        above = dist.all_reduce_max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.rss_at_start_mb)
        return {
            "partitioned": True,
            "held_mb": held,
            "peak_rss_mb_above_start": above,
            "traffic_per_step": history[-1]["traffic"] if history else {},
        }

    def vectors(self, rows: Tensor | None = None) -> Tensor:
        """Scoring vectors of the owned nodes ``[n_p, d (+ 1)]`` (of the local rows ``rows`` only,
        when given): normalised for cosine, item-bias column appended, built in place in one
        buffer. Collective."""
        model, job = self.model, self.job
        dim = model.embedding.weight.shape[1]
        num_rows = self.view.partition.num_nodes if rows is None else rows.numel()
        vectors = model.embedding.weight.new_empty((num_rows, dim + scoring_columns(model)))
        partitioned_embeddings(model, self.view, out=vectors[:, :dim], rows=rows)
        owned_users = self.view.num_owned_users
        return finish_scoring_vectors(
            vectors,
            model,
            dim=dim,
            cosine=job.cosine_scores,
            temperature=job.optim.temperature,
            num_user_rows=owned_users if rows is None else int(torch.searchsorted(rows, owned_users)),
            rows=rows,
        )

    def evaluate(self, split: str, *, samples_to: Path | None = None) -> dict[str, float]:
        """Full-ranking metrics on ``split``, from the vectors of the users this part scores and
        of its items (:func:`scored_rows`); ``samples_to``: also write the run's ``samples.csv``
        there (rank 0). Collective."""
        e, view = self.job.eval, self.view
        users = [scored_rows(view, split, e.max_users)]
        samples = self.sample_users() if samples_to is not None else None
        if samples is not None:
            users.append(samples[1])
        rows = torch.cat([torch.unique(torch.cat(users)), torch.arange(view.num_owned_users, view.partition.num_nodes)])
        vectors = ScoringVectors(self.vectors(rows), rows, view.num_owned_users)
        results = evaluate_partitioned(vectors, view, split, e.ks, batch_size=e.batch_size, max_users=e.max_users)
        if samples is not None:
            self.write_samples(samples_to, vectors, samples)
        return results

    def sample_users(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(users, rows, here)``: the 5 random users with test items ``samples.csv`` shows (the
        replicated strategy's draw), the local rows of those this part owns and their positions
        among ``users``. Collective."""
        view = self.view
        p, owned_users = view.partition, view.num_owned_users
        mine = p.nodes[:owned_users][view.test.counts > 0]  # global ids, ascending
        users = sample_users(torch.sort(torch.cat(dist.all_gather_uneven(mine))).values, NUM_SAMPLE_USERS)
        rows = global_to_local(p, users)
        here = torch.nonzero((rows >= 0) & (rows < owned_users)).flatten()
        return users, rows[here], here

    @torch.no_grad()
    def write_samples(self, run_dir: Path, vectors: ScoringVectors, samples: tuple[Tensor, Tensor, Tensor]) -> None:
        """``run_dir/samples.csv``: the top-10 of the users of :meth:`sample_users`; each part
        ranks those it owns, rank 0 writes. Collective."""
        view, k = self.view, SAMPLE_K
        users, rows, here = samples
        if users.numel() == 0:  # no test items anywhere: nothing to show (every rank agrees)
            return
        items = gather_items(vectors.items, view)
        topk, scores = top_items(None, vectors.users(rows), items, rows, excluded(view, "test"), k)
        held_out = csr_contains(view.test.indptr, view.test.indices, rows.repeat_interleave(k), topk.flatten())
        gathered = [
            torch.cat(dist.all_gather_uneven(t))
            for t in (here, topk, scores, held_out.view(topk.shape).to(torch.int64))
        ]
        if dist.rank() == 0:
            order = torch.argsort(gathered[0])
            topk, scores, held_out = (t[order] for t in gathered[1:])
            table = samples_table(self.job.graph, users, topk, scores, held_out.bool())
            write_samples_csv(table, run_dir / SAMPLES_FILE)

    def baselines(self, split: str) -> dict[str, dict[str, float]]:
        e = self.job.eval
        popularity = popularity_partitioned(self.view, split, e.ks, batch_size=e.batch_size, max_users=e.max_users)
        return {"popularity": popularity}

    def save_best(self, run_dir: Path, info: dict) -> None:
        """This part's shard of the best model; rank 0 also writes ``model.pt``, which points at
        the shards (the epoch in every shard's info must match it)."""
        p = self.view.partition
        save_model_shard(run_dir / SHARDS_DIR, p.part_id, p.nodes, self.model.state_dict(), info)
        if dist.rank() == 0:
            save_sharded_model(
                run_dir / BEST_MODEL, self.model.state_dict(), info, folder=SHARDS_DIR, num_parts=p.num_parts
            )

    def load_best(self, run_dir: Path) -> dict:
        dist.barrier()
        shard = load_checked(shard_file(run_dir / SHARDS_DIR, self.view.partition.part_id), "model shard")
        self.model.load_state_dict(shard["model"])
        return shard["info"]

    def save_state(self, folder: Path, epoch: int, history: list[dict], best: dict | None) -> None:
        """This part's checkpoint file in ``folder`` (its rows and their optimizer state: every
        rank writes its own; Ray merges them into one folder)."""
        save_training_state(
            folder,
            model=self.model,
            optimizer_states=[opt.state_dict() for opt in self.optimizers],
            epoch=epoch,
            history=history,
            best=best,
            name=self.state_file,
        )

    def restore(self, folder: Path) -> dict:
        """Resume this part from its file of a checkpoint folder; returns the loop's state."""
        return load_training_state(folder, model=self.model, optimizers=self.optimizers, name=self.state_file)


def traffic_summary(totals: dict[str, float], steps: int, world_size: int) -> dict[str, float]:
    """Per-step, per-worker averages of an epoch's traffic (sums over workers come in)."""
    per = steps * world_size
    return {
        "bytes_sent_per_step": totals["bytes_sent"] / per,
        "remote_sample_fraction": totals["remote_frontier_nodes"] / max(totals["frontier_nodes"], 1),
        "rows_fetched_per_step": totals["rows_fetched"] / per,
        "remote_row_fraction": totals["remote_rows_fetched"] / max(totals["rows_fetched"], 1),
    }
