"""Vectorised neighbor sampling on the CSR graph, plugged into PyG's loaders as a ``BaseSampler``.

PyG's own ``NeighborSampler`` needs pyg-lib or torch-sparse, and neither installs from the package
index here, so distgnn samples with plain torch ops: no Python loop over nodes or edges, only over
hops and over the ``k`` draws of a fanout.

The graph is the one of :mod:`distgnn.data.graph`: users ``0 .. U-1``, items ``U .. U+I-1``, a CSR
``indptr [N+1]`` / ``indices [nnz]`` holding both directions of the bipartite training graph, rows
sorted. The id of an edge is its position in ``indices``.

Subgraphs follow PyG's ``NeighborSampler`` (directional, non-disjoint, as pyg-lib with ``csc=True``):
``node`` lists the seeds first, then each hop's newly reached nodes in order of first appearance; only
new nodes are expanded at the next hop; ``row`` is the local id of the sampled neighbor (the message
source) and ``col`` the local id of the node it was sampled for. Negative sampling deliberately
differs from PyG's: negatives are items only, and never one of the source user's training items.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable

import torch
import torch_geometric.typing
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import (
    BaseSampler,
    EdgeSamplerInput,
    NegativeSampling,
    NodeSamplerInput,
    SamplerOutput,
)

from distgnn.core.errors import ConfigError
from distgnn.data.graph import csr_row_positions

logger = logging.getLogger(__name__)

# Redraw rounds for a negative that hits a training positive. A user holding a fraction p of all
# items keeps a false negative with probability p**(rounds + 1): 1e-3 at p = 0.5.
_NEGATIVE_REDRAW_ROUNDS = 10


def _single_threaded(fn):
    """Run ``fn`` with one torch intra-op thread, restoring the count after.

    Sampling is ~300 small ops per batch (<= 1e5 elements): a second thread gains little on an idle
    machine (Gowalla: 6.3 ms/batch with 1 thread, 7.8 ms with 2), and when other processes hold the
    cores every op waits at an OpenMP barrier for a descheduled thread: 200+ ms/batch measured, slower
    than PyG's single-threaded C++ sampler. Setting the count costs ~0.2 us. Torch ops running
    concurrently in other Python threads of this process also get one thread meanwhile.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        num_threads = torch.get_num_threads()
        if num_threads == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(num_threads)

    return wrapper


@_single_threaded
def sample_neighbors(
    indptr: Tensor,
    indices: Tensor,
    nodes: Tensor,
    num_neighbors: int,
    *,
    replace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample up to ``num_neighbors`` neighbors of each node, uniformly.

    Without replacement a node of degree ``deg`` gets ``min(k, deg)`` distinct neighbors, every
    subset of that size being equally likely; with replacement it gets exactly ``k`` independent
    draws (none when ``deg == 0``). ``k = -1`` takes every neighbor.

    Args:
        indptr: ``[N+1]`` int64 CSR row pointer.
        indices: ``[nnz]`` int64 CSR neighbor ids.
        nodes: ``[n]`` int64 node ids (may repeat).
        num_neighbors: fanout ``k``, or -1 for all.
        replace: draw with replacement.
        generator: random source; ``None`` uses torch's global one.

    Returns:
        ``(segment [m], position [m])``: for each sampled entry, the index into ``nodes`` it was
        sampled for and its position in ``indices`` (the edge id). Entries are grouped by node, in
        the order of ``nodes``.
    """
    k = num_neighbors
    if k < 0:
        return csr_row_positions(indptr, nodes)
    # index_select rather than x[idx]: 5-10x faster for 1-D gathers in torch 2.13 (measured)
    device = indptr.device
    start = indptr.index_select(0, nodes)
    deg = indptr.index_select(0, nodes + 1) - start
    arange_n = torch.arange(nodes.numel(), device=device)
    if replace:
        segment = torch.repeat_interleave(arange_n, torch.where(deg > 0, k, 0))
        draw = torch.rand(segment.numel(), dtype=torch.float64, generator=generator, device=device)
        offset = (draw * deg.index_select(0, segment)).long()
        return segment, start.index_select(0, segment) + offset

    count = deg.clamp(max=k)
    segment = torch.repeat_interleave(arange_n, count)
    first_slot = torch.cumsum(count, 0) - count
    # Rows with deg <= k are taken whole: slot s of the output holds start + (s - first_slot).
    position = (start - first_slot).index_select(0, segment) + torch.arange(segment.numel(), device=device)
    big = (deg > k).nonzero().view(-1)
    if big.numel() > 0 and k > 0:
        slots = first_slot.index_select(0, big).view(1, -1) + torch.arange(k, device=device).view(-1, 1)  # [k, n_big]
        floyd = _floyd_sample(deg.index_select(0, big), k, generator=generator)
        picked = start.index_select(0, big).view(1, -1) + floyd
        position.index_copy_(0, slots.view(-1), picked.view(-1))
    return segment, position


def _floyd_sample(deg: Tensor, k: int, *, generator: torch.Generator | None) -> Tensor:
    """``k`` distinct offsets uniform in ``0 .. deg-1`` for each of ``n`` rows (``deg > k``), ``[k, n]``.

    Floyd's algorithm (Bentley & Floyd, CACM 1987): for ``j = deg-k .. deg-1`` draw ``t`` uniform in
    ``0 .. j`` and keep ``j`` if ``t`` was already taken, else ``t``. It is exactly uniform over
    ``k``-subsets and costs O(k^2) per row whatever the degree, so hub items of degree 10^4 cost the
    same as a row of degree k+1. Vectorised over rows, looped over the k draws.
    """
    top = deg.view(1, -1) - k + torch.arange(k, device=deg.device).view(-1, 1)  # [k, n]: draw i is uniform in 0..top[i]
    # float64 draws: the floor(u * m) rounding bias is ~m / 2^53, far below sampling noise
    draws = torch.rand(k, deg.numel(), dtype=torch.float64, generator=generator, device=deg.device)
    taken = (draws * (top + 1)).long()
    for i in range(1, k):
        # an OR over pairwise compares beats (taken[:i] == taken[i]).any(0) by ~1.5x (measured)
        seen = taken[0] == taken[i]
        for j in range(1, i):
            seen |= taken[j] == taken[i]
        taken[i] = torch.where(seen, top[i], taken[i])
    return taken


@_single_threaded
def sample_subgraph(
    indptr: Tensor,
    indices: Tensor,
    seeds: Tensor,
    num_neighbors: list[int],
    *,
    replace: bool = False,
    generator: torch.Generator | None = None,
    node_map: Tensor | None = None,
) -> SamplerOutput:
    """Multi-hop neighbor sampling from ``seeds``, relabelled into a PyG subgraph.

    Hop ``h`` samples ``num_neighbors[h]`` neighbors of each node first reached at hop ``h-1`` (the
    seeds at hop 0), as PyG's directional, non-disjoint ``NeighborSampler`` does.

    Args:
        indptr: ``[N+1]`` int64 CSR row pointer.
        indices: ``[nnz]`` int64 CSR neighbor ids.
        seeds: ``[S]`` int64 distinct node ids.
        num_neighbors: fanout per hop (-1 = all).
        replace: sample with replacement.
        generator: random source; ``None`` uses torch's global one.
        node_map: optional ``[N]`` int64 workspace filled with -1, left filled with -1 on return.
            Reusing it makes relabelling O(nodes touched) instead of O(N) per call.

    Returns:
        ``SamplerOutput`` with ``node [n]`` (global ids: seeds, then each hop's new nodes in order of
        first appearance), ``row [E]`` (local id of the sampled neighbor, the message source),
        ``col [E]`` (local id of the node it was sampled for), ``edge [E]`` (edge ids),
        ``num_sampled_nodes`` (``len(num_neighbors) + 1`` counts) and ``num_sampled_edges``.
    """
    if node_map is None:
        node_map = torch.full((indptr.numel() - 1,), -1, dtype=torch.long, device=indptr.device)

    def neighbors(frontier: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        segment, position = sample_neighbors(indptr, indices, frontier, k, replace=replace, generator=generator)
        return segment, indices.index_select(0, position), position

    return expand_subgraph(seeds.long(), num_neighbors, neighbors, node_map=node_map)


def expand_subgraph(
    seeds: Tensor,
    num_neighbors: list[int],
    neighbors: Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor]],
    *,
    node_map: Tensor,
) -> SamplerOutput:
    """Hop-by-hop expansion and PyG-order relabelling around ``seeds``.

    ``neighbors(frontier, k)`` samples up to ``k`` neighbors of each frontier node and returns
    ``(segment, neighbor, edge)``: per sampled entry, its index into ``frontier`` (entries grouped
    by frontier node, in frontier order), the neighbor's global id and an edge id. It reads a local
    CSR in :func:`sample_subgraph` and asks the owning workers in the partitioned sampler.
    ``node_map`` is the ``[N]`` workspace of :func:`sample_subgraph`, left filled with -1.
    """
    try:
        out = _expand(seeds, num_neighbors, neighbors, node_map)
    except BaseException:
        node_map.fill_(-1)  # rare path: we do not know which entries were written, reset them all
        raise
    node_map.index_fill_(0, out.node, -1)
    return out


def _expand(
    seeds: Tensor,
    num_neighbors: list[int],
    neighbors: Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor]],
    node_map: Tensor,
) -> SamplerOutput:
    num_seeds, device = seeds.numel(), node_map.device
    node_map[seeds] = torch.arange(num_seeds, device=device)
    if not bool((node_map[seeds] == torch.arange(num_seeds, device=device)).all()):
        raise ValueError("sample_subgraph: seeds must be distinct node ids")

    nodes, rows, cols, edges = [seeds], [], [], []
    frontier, frontier_start, num_nodes = seeds, 0, num_seeds
    for k in num_neighbors:
        segment, neighbor, position = neighbors(frontier, k)
        local = node_map.index_select(0, neighbor)
        # First appearance without sorting: scatter amax of tag = -2 - (entry index) leaves each
        # unseen node's map entry at -2 - (its first entry); seen nodes scatter their own local id,
        # which leaves them unchanged. Entries that find their own tag are first appearances, in order.
        tag = -2 - torch.arange(neighbor.numel(), device=device)
        node_map.scatter_reduce_(0, neighbor, torch.where(local < 0, tag, local), "amax", include_self=False)
        new_nodes = neighbor[node_map.index_select(0, neighbor) == tag]
        node_map.index_copy_(0, new_nodes, torch.arange(num_nodes, num_nodes + new_nodes.numel(), device=device))

        rows.append(node_map.index_select(0, neighbor))
        cols.append(segment + frontier_start)
        edges.append(position)
        nodes.append(new_nodes)
        frontier, frontier_start, num_nodes = new_nodes, num_nodes, num_nodes + new_nodes.numel()

    none = torch.empty(0, dtype=torch.long, device=device)
    return SamplerOutput(
        node=torch.cat(nodes),
        row=torch.cat(rows) if rows else none,
        col=torch.cat(cols) if cols else none,
        edge=torch.cat(edges) if edges else none,
        num_sampled_nodes=[t.numel() for t in nodes],
        num_sampled_edges=[t.numel() for t in edges],
    )


def csr_contains(indptr: Tensor, indices: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """Whether each ``(rows[i], cols[i])`` is an edge, by a binary search vectorised over pairs.

    Needs each CSR row sorted; no extra memory beyond the pairs, so it works on memory-mapped graphs.

    Args:
        indptr: ``[N+1]`` int64 CSR row pointer.
        indices: ``[nnz]`` int64 CSR neighbor ids, each row sorted ascending.
        rows, cols: ``[m]`` int64 node ids.

    Returns:
        ``[m]`` bool.
    """
    if rows.numel() == 0 or indices.numel() == 0:
        return torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    lo, end = indptr.index_select(0, rows), indptr.index_select(0, rows + 1)
    hi = end.clone()
    last = indices.numel() - 1
    for _ in range(int((hi - lo).max()).bit_length()):  # lower bound: first entry >= col
        mid = (lo + hi) // 2
        active = lo < hi
        less = indices.index_select(0, mid.clamp(max=last)) < cols
        lo = torch.where(active & less, mid + 1, lo)
        hi = torch.where(active & ~less, mid, hi)
    return (lo < end) & (indices.index_select(0, lo.clamp(max=last)) == cols)


@_single_threaded
def sample_negative_items(
    indptr: Tensor,
    indices: Tensor,
    users: Tensor,
    num_per_user: int,
    *,
    num_users: int,
    num_items: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform negative items for each user, excluding the user's training items.

    A draw that hits one of the user's items (an edge of the CSR) is redrawn, up to
    ``_NEGATIVE_REDRAW_ROUNDS`` times; after that it is kept, so a user owning almost every item
    cannot stall training.

    Args:
        indptr, indices: the training graph's CSR (rows sorted).
        users: ``[B]`` int64 user node ids.
        num_per_user: negatives per user.
        num_users, num_items: ``U`` and ``I``; items are node ids ``U .. U+I-1``.
        generator: random source; ``None`` uses torch's global one.

    Returns:
        ``[B, num_per_user]`` int64 global item node ids.
    """
    device = indptr.device
    flat_users = users.long().repeat_interleave(num_per_user)
    neg = num_users + torch.randint(num_items, (flat_users.numel(),), generator=generator, device=device)
    redo = csr_contains(indptr, indices, flat_users, neg).nonzero().view(-1)
    for _ in range(_NEGATIVE_REDRAW_ROUNDS):
        if redo.numel() == 0:
            break
        draw = num_users + torch.randint(num_items, (redo.numel(),), generator=generator, device=device)
        neg[redo] = draw
        redo = redo[csr_contains(indptr, indices, flat_users[redo], draw)]
    return neg.view(-1, num_per_user)


def hardest_of_pools(vectors: Tensor, users: Tensor, candidates: Tensor, num_per_user: int) -> Tensor:
    """Dynamic negative sampling (Zhang et al., SIGIR 2013): ``candidates [B, k * pool]`` holds ``k``
    consecutive pools of draws per user; keep the best-scoring draw of each pool, scores being inner
    products of ``vectors [N, d]`` (the model's scoring vectors). Returns ``[B, k]`` node ids."""
    pool = candidates.shape[1] // num_per_user
    scores = torch.bmm(vectors[candidates], vectors[users].unsqueeze(-1)).view(users.numel(), num_per_user, pool)
    best = scores.argmax(dim=-1, keepdim=True)
    return candidates.view(users.numel(), num_per_user, pool).gather(-1, best).squeeze(-1)


class NeighborSampler(BaseSampler):
    """distgnn's neighbor sampler for PyG's ``NodeLoader`` and ``LinkLoader``.

    Pass a ``Data(num_nodes=N, edge_index=torch.empty(2, 0, dtype=torch.long))`` (plus node features
    if any) as the loader's ``data``: the loader takes node features from it and builds the batch's
    ``edge_index`` from the sampled ``row``/``col``.

    Negative sampling (``LinkLoader(neg_sampling=...)``) draws items only, never a training item of
    the source user; the sources must therefore be users. Triplet mode draws ``amount`` negatives per
    positive; binary mode pairs ``ceil(amount * B)`` negatives with the batch's users, cycled.

    Hard negatives: with ``hard_negative_pool > 1`` and ``scoring_vectors`` set (``[N, d]``, inner
    product ranks as the model), each negative is the best-scoring of that many uniform draws
    (:func:`hardest_of_pools`); the trainer refreshes the vectors as the model changes.

    The graph may live on a GPU: every tensor the sampler makes is on the CSR's device (its
    :attr:`device`), and the seed edges or nodes that PyG's loader hands it are moved there, so a
    batch never leaves the device it is used on. Loader worker processes sample on the CPU only.

    Random numbers come from a generator seeded with ``seed``. In a ``DataLoader`` worker process it
    is reseeded from the worker's seed, so workers differ from each other and from epoch to epoch,
    and still reproduce when the loader's seed is fixed.

    Args:
        indptr: ``[N+1]`` int64 CSR row pointer, ``N = num_users + num_items``.
        indices: ``[nnz]`` int64 CSR neighbor ids, rows sorted.
        num_neighbors: fanout per hop (-1 = all).
        num_users, num_items: ``U`` and ``I``.
        replace: sample neighbors with replacement.
        seed: generator seed; ``None`` = nondeterministic.
    """

    def __init__(
        self,
        indptr: Tensor,
        indices: Tensor,
        num_neighbors: list[int],
        *,
        num_users: int,
        num_items: int,
        replace: bool = False,
        seed: int | None = None,
    ):
        if indptr.numel() != num_users + num_items + 1:
            raise ValueError(
                f"indptr has {indptr.numel()} entries, expected num_users + num_items + 1 = {num_users + num_items + 1}"
            )
        if indptr.dtype != torch.long or indices.dtype != torch.long:
            raise ValueError(f"indptr and indices must be int64 (got {indptr.dtype}, {indices.dtype})")
        if indices.device != indptr.device:
            raise ValueError(f"indptr and indices must be on one device (got {indptr.device}, {indices.device})")
        self.indptr = indptr
        self.indices = indices
        self._init_sampling(
            num_neighbors, num_users=num_users, num_items=num_items, replace=replace, seed=seed, device=indptr.device
        )

    def _init_sampling(
        self,
        num_neighbors: list[int],
        *,
        num_users: int,
        num_items: int,
        replace: bool,
        seed: int | None,
        device: torch.device = torch.device("cpu"),
    ) -> None:
        """Settings and random state shared by every subclass, whatever holds its graph."""
        self.num_neighbors = list(num_neighbors)
        self.num_users = num_users
        self.num_items = num_items
        self.num_nodes = num_users + num_items
        self.replace = replace
        self.device = device
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self._pid: int | None = None
        self._node_map: Tensor | None = None
        self.hard_negative_pool = 1
        self.scoring_vectors: Tensor | None = None

    def _enter_process(self) -> None:
        # The relabelling workspace is private to a process (worker copies, forked or pickled into
        # shared memory, must not write into one another's), and each DataLoader worker needs its
        # own random stream.
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._node_map = torch.full((self.num_nodes,), -1, dtype=torch.long, device=self.device)
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            self.generator.manual_seed(worker.seed)

    def _sample_subgraph(self, seeds: Tensor) -> SamplerOutput:
        return sample_subgraph(
            self.indptr,
            self.indices,
            seeds,
            self.num_neighbors,
            replace=self.replace,
            generator=self.generator,
            node_map=self._node_map,
        )

    def sample_negative_items(self, users: Tensor, num_per_user: int) -> Tensor:
        """``[B, num_per_user]`` negative item node ids per user, training items excluded: uniform,
        or the hardest of pools of uniform draws (see the class notes)."""
        self._enter_process()
        pool = self.hard_negative_pool if self.scoring_vectors is not None else 1
        neg = sample_negative_items(
            self.indptr,
            self.indices,
            users,
            num_per_user * pool,
            num_users=self.num_users,
            num_items=self.num_items,
            generator=self.generator,
        )
        return neg if pool == 1 else hardest_of_pools(self.scoring_vectors, users, neg, num_per_user)

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs) -> SamplerOutput:
        """Sample around ``index.node`` (distinct seeds); ``metadata = (input_id, None)``."""
        self._enter_process()
        if index.time is not None or index.input_type is not None:
            raise ValueError("distgnn's NeighborSampler samples homogeneous graphs without time")
        out = self._sample_subgraph(index.node.to(self.device))
        out.metadata = (index.input_id, None)
        return out

    def sample_from_edges(self, index: EdgeSamplerInput, neg_sampling: NegativeSampling | None = None) -> SamplerOutput:
        """Sample around the endpoints of the seed edges (and of their negatives).

        ``metadata`` is what PyG's ``edge_sample`` produces for homogeneous non-disjoint sampling:
        ``(input_id, edge_label_index [2, B'], edge_label [B'], None)`` without negatives or in binary
        mode (``B' = B + ceil(amount * B)``), and
        ``(input_id, src_index [B], dst_pos_index [B], dst_neg_index [B] or [B, amount], None)`` in
        triplet mode; indices are local ids into ``node``.
        """
        self._enter_process()
        if index.time is not None or index.input_type is not None:
            raise ValueError("distgnn's NeighborSampler samples homogeneous graphs without time")
        device = self.device
        src, dst = index.row.long().to(device), index.col.long().to(device)
        edge_label = None if index.label is None else index.label.to(device)
        num_pos = src.numel()
        neg_sampling = NegativeSampling.cast(neg_sampling)

        if neg_sampling is not None:
            if neg_sampling.src_weight is not None or neg_sampling.dst_weight is not None:
                raise ValueError(
                    "distgnn's NeighborSampler draws negatives uniformly: NegativeSampling weights are not supported"
                )
            if num_pos > 0 and int(src.max()) >= self.num_users:
                raise ValueError("negative sampling needs users as edge sources (edge_label_index[0] < num_users)")
            if neg_sampling.is_binary():
                num_neg = math.ceil(num_pos * neg_sampling.amount)
                src_neg = src.repeat(math.ceil(neg_sampling.amount))[:num_neg]
                dst_neg = self.sample_negative_items(src_neg, 1).view(-1)
                src, dst = torch.cat([src, src_neg]), torch.cat([dst, dst_neg])
                if edge_label is None:
                    edge_label = torch.ones(num_pos, device=device)
                edge_label = torch.cat([edge_label, edge_label.new_zeros((num_neg,) + edge_label.shape[1:])])
            else:
                # row i of the [B, amount] block holds src[i]'s negatives, matching PyG's
                # dst_neg_index = inverse[2B:].view(B, -1)
                dst_neg = self.sample_negative_items(src, int(neg_sampling.amount)).view(-1)
                dst = torch.cat([dst, dst_neg])

        seeds, inverse = torch.cat([src, dst]).unique(return_inverse=True)
        out = self._sample_subgraph(seeds)
        if neg_sampling is None or neg_sampling.is_binary():
            out.metadata = (index.input_id, inverse.view(2, -1), edge_label, None)
        else:
            dst_neg_index = inverse[2 * num_pos :].view(num_pos, -1).squeeze(-1)
            out.metadata = (index.input_id, inverse[:num_pos], inverse[num_pos : 2 * num_pos], dst_neg_index, None)
        return out

    @property
    def edge_permutation(self) -> None:
        return None  # edge ids are CSR positions already


class _PyGBackedSampler(NeighborSampler):
    """distgnn's sampler with the subgraph expansion done by PyG's NeighborSampler (pyg-lib or
    torch-sparse); negatives stay distgnn's. PyG draws from torch's global random state."""

    def __init__(self, indptr: Tensor, indices: Tensor, num_neighbors: list[int], **kwargs):
        super().__init__(indptr, indices, num_neighbors, **kwargs)
        from torch_geometric.sampler import NeighborSampler as PyGNeighborSampler

        node = torch.repeat_interleave(torch.arange(self.num_nodes), indptr.diff())
        # edge_index = [neighbor, node] is sorted by destination: its CSC is our CSR, so PyG keeps
        # the CSR positions as edge ids (is_sorted=True, no permutation).
        data = Data(edge_index=torch.stack([indices, node]), num_nodes=self.num_nodes)
        self._pyg = PyGNeighborSampler(data, self.num_neighbors, replace=self.replace, is_sorted=True)

    def _sample_subgraph(self, seeds: Tensor) -> SamplerOutput:
        return self._pyg._sample(seeds)


def sampling_device(
    setting: str, train_device: torch.device, *, graph_bytes: int, free_bytes: int, num_workers: int
) -> torch.device:
    """Where the sampler keeps the graph and samples: the training GPU under ``"auto"`` when the
    graph's CSR takes at most a quarter of the GPU's free memory (the rest is for the model, the
    subgraphs and the optimizer) and batches are sampled in the training process; the CPU otherwise
    (``"cpu"``, a CPU worker, loader processes, or a graph too large)."""
    if setting not in ("auto", "cpu"):
        raise ConfigError(f"sampler.device: expected 'auto' or 'cpu' (got {setting!r})")
    on_gpu = setting == "auto" and train_device.type == "cuda" and num_workers == 0
    return train_device if on_gpu and 4 * graph_bytes <= free_bytes else torch.device("cpu")


def make_sampler(
    indptr: Tensor,
    indices: Tensor,
    num_neighbors: list[int],
    *,
    num_users: int,
    num_items: int,
    backend: str = "auto",
    replace: bool = False,
    seed: int | None = None,
    device: torch.device = torch.device("cpu"),
) -> NeighborSampler:
    """Build the neighbor sampler for ``backend``: ``"distgnn"``, ``"pyg"`` (PyG's sampling, needs
    pyg-lib or torch-sparse) or ``"auto"`` (PyG's only when pyg-lib is installed). Logs which one.

    Both backends take the same arguments as :class:`NeighborSampler` and sample negatives the
    distgnn way (items only, training positives excluded). distgnn's samples on ``device`` (the CSR
    is copied there); PyG's on the CPU, whatever ``device``: the sampler's :attr:`device` says which.
    """
    if backend not in ("auto", "distgnn", "pyg"):
        raise ConfigError(f"sampler.backend: expected 'auto', 'distgnn' or 'pyg' (got {backend!r})")
    if backend == "pyg" and not (torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE):
        raise ConfigError(
            "sampler.backend='pyg' needs pyg-lib or torch-sparse, and neither is importable; use 'distgnn' or 'auto'"
        )
    use_pyg = backend == "pyg" or (backend == "auto" and torch_geometric.typing.WITH_PYG_LIB)
    kwargs = dict(num_users=num_users, num_items=num_items, replace=replace, seed=seed)
    if use_pyg:
        lib = "pyg-lib" if torch_geometric.typing.WITH_PYG_LIB else "torch-sparse"
        logger.info("neighbor sampler: PyG's NeighborSampler (%s) on the CPU, distgnn negatives", lib)
        return _PyGBackedSampler(indptr, indices, num_neighbors, **kwargs)
    logger.info("neighbor sampler: distgnn's vectorised sampler, on %s", device)
    return NeighborSampler(indptr.to(device), indices.to(device), num_neighbors, **kwargs)
