"""Neighbor sampler: a graph checked by hand, then the vectorised sampler against brute-force
neighborhoods on small random bipartite graphs, uniformity, negatives and PyG loader integration."""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch_geometric.typing
from torch_geometric.data import Data
from torch_geometric.loader import LinkLoader, NodeLoader
from torch_geometric.sampler import NegativeSampling, NodeSamplerInput

from distgnn.core.errors import ConfigError
from distgnn.nn.sampler import (
    NeighborSampler,
    csr_contains,
    hardest_of_pools,
    make_sampler,
    sample_negative_items,
    sample_neighbors,
    sample_subgraph,
)


def bipartite_csr(pairs: list[tuple[int, int]], num_users: int, num_items: int):
    """Both-direction CSR of (user, item) pairs, item ids offset by num_users, rows sorted."""
    adj = [set() for _ in range(num_users + num_items)]
    for u, i in pairs:
        adj[u].add(num_users + i)
        adj[num_users + i].add(u)
    counts = torch.tensor([len(a) for a in adj])
    indptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    indices = torch.tensor([v for a in adj for v in sorted(a)], dtype=torch.long)
    return indptr, indices, adj


def random_graph(num_users=60, num_items=40, density=0.15, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_users, num_items, generator=g) < density
    mask[:, 0] = True  # nobody isolated: user rows and item 0 non-empty
    mask[0, :] = True  # every item has a user; user 0 is a hub of degree num_items
    pairs = [tuple(p) for p in mask.nonzero().tolist()]
    return (*bipartite_csr(pairs, num_users, num_items), num_users, num_items)


# 3 users x 3 items; items are nodes 3, 4, 5.
#   user 0: items 0, 1    user 1: items 1, 2    user 2: items 0, 1, 2
HAND = bipartite_csr([(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)], 3, 3)


def test_hand_made_graph_full_fanout():
    indptr, indices, _ = HAND
    assert indptr.tolist() == [0, 2, 4, 7, 9, 12, 14]
    out = sample_subgraph(indptr, indices, torch.tensor([0]), [-1, -1])
    # hop 1: user 0 -> items 3, 4; hop 2: item 3 -> users 0, 2; item 4 -> users 0, 1, 2
    assert out.node.tolist() == [0, 3, 4, 2, 1]
    assert out.num_sampled_nodes == [1, 2, 2]
    assert out.num_sampled_edges == [2, 5]
    assert out.row.tolist() == [1, 2, 0, 3, 0, 4, 3]
    assert out.col.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert out.edge.tolist() == [0, 1, 7, 8, 9, 10, 11]


def test_sample_neighbors_fanout_distinct_and_in_row():
    indptr, indices, adj, _, _ = random_graph()
    n = indptr.numel() - 1
    nodes = torch.cat([torch.arange(n), torch.arange(n)])  # repeated nodes are sampled independently
    deg = indptr[nodes + 1] - indptr[nodes]
    g = torch.Generator().manual_seed(1)
    for k in (0, 1, 3, 7, 100, -1):
        segment, position = sample_neighbors(indptr, indices, nodes, k, generator=g)
        counts = torch.bincount(segment, minlength=nodes.numel())
        assert torch.equal(counts, deg if k < 0 else deg.clamp(max=k))
        assert bool((segment[1:] >= segment[:-1]).all()), "grouped by node, in input order"
        owner = nodes[segment]
        assert bool(((position >= indptr[owner]) & (position < indptr[owner + 1])).all())
        pairs = segment * indices.numel() + position
        assert pairs.unique().numel() == pairs.numel(), "a neighbor drawn twice for one node"


def test_sample_neighbors_with_replacement():
    indptr, indices, _, _, _ = random_graph()
    nodes = torch.arange(indptr.numel() - 1)
    deg = indptr[1:] - indptr[:-1]
    segment, position = sample_neighbors(
        indptr, indices, nodes, 30, replace=True, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(torch.bincount(segment, minlength=nodes.numel()), torch.where(deg > 0, 30, 0))
    owner = nodes[segment]
    assert bool(((position >= indptr[owner]) & (position < indptr[owner + 1])).all())
    # a hub row of degree 40 sampled 30 times with replacement repeats some neighbor
    hub = position[segment == 0]
    assert hub.unique().numel() < hub.numel()


def check_subgraph(out, indptr, indices, adj, seeds, fanouts):
    """Invariants of a directional non-disjoint sample, checked entry by entry."""
    node, row, col, edge = out.node.tolist(), out.row.tolist(), out.col.tolist(), out.edge.tolist()
    assert len(set(node)) == len(node), "node ids repeat"
    assert node[: len(seeds)] == seeds.tolist(), "seeds first, in input order"
    assert sum(out.num_sampled_nodes) == len(node)
    assert sum(out.num_sampled_edges) == len(edge) == len(row) == len(col)
    assert len(out.num_sampled_nodes) == len(fanouts) + 1 and len(out.num_sampled_edges) == len(fanouts)
    for r, c, e in zip(row, col, edge):
        dst, src = node[c], node[r]
        assert src in adj[dst], "sampled edge not in graph"
        assert indptr[dst] <= e < indptr[dst + 1] and indices[e] == src, "edge id is not dst's CSR entry"
    hop_nodes = list(itertools.accumulate([0] + out.num_sampled_nodes))
    hop_edges = list(itertools.accumulate([0] + out.num_sampled_edges))
    seen = set(node[: len(seeds)])
    for h, k in enumerate(fanouts):
        lo, hi = hop_edges[h], hop_edges[h + 1]
        frontier = range(hop_nodes[h], hop_nodes[h + 1])
        per_dst = Counter(col[lo:hi])
        assert set(per_dst) <= set(frontier), "only the previous hop's new nodes are expanded"
        for c in frontier:
            deg = len(adj[node[c]])
            assert per_dst.get(c, 0) == (deg if k < 0 else min(k, deg))
        assert len(set(zip(row[lo:hi], col[lo:hi]))) == hi - lo, "duplicate neighbor for a node"
        first_seen = []
        for r in row[lo:hi]:  # new nodes are appended in order of first appearance
            if node[r] not in seen:
                seen.add(node[r])
                first_seen.append(node[r])
        assert first_seen == node[hop_nodes[h + 1] : hop_nodes[h + 2]]


@pytest.mark.parametrize("fanouts", [[3, 2], [1, 1, 1], [5], []])
def test_sample_subgraph_invariants(fanouts):
    indptr, indices, adj, num_users, _ = random_graph()
    g = torch.Generator().manual_seed(2)
    for seeds in (torch.tensor([0]), torch.tensor([5, 70, 3, 99]), torch.randperm(100, generator=g)[:30]):
        out = sample_subgraph(indptr, indices, seeds, fanouts, generator=g)
        check_subgraph(out, indptr, indices, adj, seeds, fanouts)


def brute_force_hops(adj, seeds, num_hops):
    """Nodes of each hop and the (node, neighbor) pairs expanded, by breadth-first search."""
    seen, frontier, pairs = set(seeds), list(seeds), set()
    for _ in range(num_hops):
        new = []
        for v in frontier:
            for u in adj[v]:
                pairs.add((v, u))
                if u not in seen:
                    seen.add(u)
                    new.append(u)
        frontier = new
    return seen, pairs


@pytest.mark.parametrize("fanout", [-1, 60])
def test_exact_neighborhood_when_fanout_covers_degree(fanout):
    indptr, indices, adj, _, _ = random_graph(density=0.05)
    assert max(len(a) for a in adj) <= 60
    seeds = torch.tensor([7, 61, 90])
    g = torch.Generator().manual_seed(0)
    out = sample_subgraph(indptr, indices, seeds, [fanout, fanout], generator=g)
    nodes, pairs = brute_force_hops(adj, seeds.tolist(), 2)
    assert set(out.node.tolist()) == nodes
    got = {(int(out.node[c]), int(out.node[r])) for r, c in zip(out.row, out.col)}
    assert got == pairs and len(got) == out.row.numel()


def test_relabel_workspace_is_restored_and_duplicate_seeds_rejected():
    indptr, indices, adj, _, _ = random_graph()
    node_map = torch.full((indptr.numel() - 1,), -1, dtype=torch.long)
    sample_subgraph(indptr, indices, torch.tensor([1, 2, 3]), [4, 4], node_map=node_map)
    assert bool((node_map == -1).all())
    with pytest.raises(ValueError, match="distinct"):
        sample_subgraph(indptr, indices, torch.tensor([1, 2, 1]), [4, 4], node_map=node_map)
    assert bool((node_map == -1).all())
    seeds = torch.tensor([4, 80])
    out = sample_subgraph(indptr, indices, seeds, [4, 4], node_map=node_map)
    check_subgraph(out, indptr, indices, adj, seeds, [4, 4])


def test_memory_mapped_csr_gives_the_same_sample(tmp_path):
    indptr, indices, _, _, _ = random_graph()
    np.save(tmp_path / "indptr.npy", indptr.numpy())
    np.save(tmp_path / "indices.npy", indices.numpy())
    mapped = [torch.from_numpy(np.load(tmp_path / f"{name}.npy", mmap_mode="c")) for name in ("indptr", "indices")]
    seeds = torch.tensor([3, 77, 12])
    a = sample_subgraph(indptr, indices, seeds, [3, 3], generator=torch.Generator().manual_seed(5))
    b = sample_subgraph(*mapped, seeds, [3, 3], generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.node, b.node) and torch.equal(a.edge, b.edge) and torch.equal(a.row, b.row)


def test_thread_count_restored():
    indptr, indices, _, _, _ = random_graph()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sample_subgraph(indptr, indices, torch.tensor([1, 2]), [3, 3])
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError):
            sample_subgraph(indptr, indices, torch.tensor([1, 1]), [3, 3])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


def test_uniform_without_replacement():
    # a user with 12 items, 5 drawn 20000 times: every item equally often (chi-square, 11 dof,
    # p < 1e-6 beyond 50), and every pair of items equally often (66 pairs, 65 dof, p < 1e-6 beyond 130).
    indptr, indices, _ = bipartite_csr([(0, i) for i in range(12)], 1, 12)
    draws = 20_000
    segment, position = sample_neighbors(
        indptr, indices, torch.zeros(draws, dtype=torch.long), 5, generator=torch.Generator().manual_seed(0)
    )
    assert chi_square(torch.bincount(position, minlength=12).double()) < 50
    picked = torch.zeros(draws, 12, dtype=torch.bool)
    picked[segment, position] = True
    pair_counts = torch.tensor(
        [float((picked[:, a] & picked[:, b]).sum()) for a, b in itertools.combinations(range(12), 2)]
    )
    assert chi_square(pair_counts) < 130


def test_csr_contains_matches_brute_force():
    indptr, indices, adj, _, _ = random_graph()
    n = indptr.numel() - 1
    rows, cols = torch.cartesian_prod(torch.arange(n), torch.arange(n)).t()
    expected = torch.tensor([c in adj[r] for r, c in zip(rows.tolist(), cols.tolist())])
    assert torch.equal(csr_contains(indptr, indices, rows, cols), expected)


def test_negatives_are_items_never_positives():
    indptr, indices, adj, num_users, num_items = random_graph()
    users = torch.arange(1, num_users)  # user 0 owns every item, see below
    neg = sample_negative_items(
        indptr, indices, users, 50, num_users=num_users, num_items=num_items, generator=torch.Generator().manual_seed(0)
    )
    assert neg.shape == (num_users - 1, 50)
    assert bool(((neg >= num_users) & (neg < num_users + num_items)).all())
    for u, row in zip(users.tolist(), neg.tolist()):
        assert not adj[u] & set(row)
    # uniform over the allowed items: every non-positive item shows up
    assert set(neg.view(-1).tolist()) == set(range(num_users + 1, num_users + num_items))
    # a user owning every item cannot be satisfied: the last draws are kept instead of looping forever
    neg = sample_negative_items(indptr, indices, torch.tensor([0]), 5, num_users=num_users, num_items=num_items)
    assert neg.shape == (1, 5)


def test_hardest_of_pools_by_hand():
    # 1-d scoring vectors: user node 0 scores item nodes 1..4 by their value times the user's
    vectors = torch.tensor([[1.0], [0.5], [-2.0], [3.0], [0.1]])
    users = torch.tensor([0, 0])
    # 2 negatives per user, pools of 2 draws: [1, 2 | 3, 4] and [2, 4 | 1, 3]
    candidates = torch.tensor([[1, 2, 3, 4], [2, 4, 1, 3]])
    assert hardest_of_pools(vectors, users, candidates, 2).tolist() == [[1, 3], [4, 3]]
    # a user with a negative vector prefers the lowest values
    vectors[0] = -1.0
    assert hardest_of_pools(vectors, users, candidates, 2).tolist() == [[2, 4], [2, 1]]


def test_sampler_mines_hard_negatives_and_still_never_returns_positives():
    indptr, indices, adj, num_users, num_items = random_graph()
    sampler = NeighborSampler(indptr, indices, [2], num_users=num_users, num_items=num_items, seed=0)
    users = torch.arange(1, num_users).repeat(20)
    # scores: every user likes items by their id, so the hardest negatives are the highest ids
    vectors = torch.cat([torch.ones(num_users), torch.arange(num_items, dtype=torch.float)])[:, None]
    uniform = sampler.sample_negative_items(users, 1)
    sampler.hard_negative_pool, sampler.scoring_vectors = 8, vectors
    hard = sampler.sample_negative_items(users, 1)
    assert hard.shape == uniform.shape
    assert hard.float().mean() > uniform.float().mean() + 0.25 * num_items  # E[max of 8] vs E[uniform]
    for u, row in zip(users.tolist(), hard.tolist()):
        assert not adj[u] & set(row)


def training_edges(adj, num_users: int) -> torch.Tensor:
    """``[2, E]`` (user, item node) pairs of users 1.. (user 0 owns every item: no negative exists)."""
    return torch.tensor([[u, v] for u in range(1, num_users) for v in sorted(adj[u])]).t()


def edge_data(num_nodes: int, with_x: bool = False) -> Data:
    data = Data(num_nodes=num_nodes, edge_index=torch.empty(2, 0, dtype=torch.long))
    if with_x:
        data.x = torch.arange(num_nodes, dtype=torch.float).view(-1, 1).repeat(1, 3)
    return data


def check_batch_edges(batch, adj):
    src, dst = batch.n_id[batch.edge_index[0]], batch.n_id[batch.edge_index[1]]
    assert all(s in adj[d] for s, d in zip(src.tolist(), dst.tolist()))
    assert batch.edge_index.size(1) == sum(batch.num_sampled_edges)
    assert batch.n_id.numel() == sum(batch.num_sampled_nodes)


def test_link_loader_triplet():
    indptr, indices, adj, num_users, num_items = random_graph()
    edge_label_index = training_edges(adj, num_users)
    sampler = NeighborSampler(indptr, indices, [4, 3], num_users=num_users, num_items=num_items, seed=0)
    loader = LinkLoader(
        edge_data(num_users + num_items, with_x=True),
        link_sampler=sampler,
        edge_label_index=edge_label_index,
        batch_size=64,
        shuffle=True,
        neg_sampling=NegativeSampling("triplet", amount=3),
    )
    covered = []
    for batch in loader:
        users, items = edge_label_index[:, batch.input_id]
        assert torch.equal(batch.n_id[batch.src_index], users)
        assert torch.equal(batch.n_id[batch.dst_pos_index], items)
        assert batch.dst_neg_index.shape == (users.numel(), 3)
        neg = batch.n_id[batch.dst_neg_index]
        assert bool((neg >= num_users).all())
        assert not any(adj[u] & set(n) for u, n in zip(users.tolist(), neg.tolist()))
        assert torch.equal(batch.x[:, 0], batch.n_id.float())
        check_batch_edges(batch, adj)
        covered.append(batch.input_id)
    assert torch.equal(torch.cat(covered).sort().values, torch.arange(edge_label_index.size(1)))


def test_link_loader_binary():
    indptr, indices, adj, num_users, num_items = random_graph()
    edge_label_index = training_edges(adj, num_users)
    sampler = NeighborSampler(indptr, indices, [4], num_users=num_users, num_items=num_items, seed=0)
    loader = LinkLoader(
        edge_data(num_users + num_items),
        link_sampler=sampler,
        edge_label_index=edge_label_index,
        batch_size=50,
        neg_sampling=NegativeSampling("binary", amount=2),
    )
    batch = next(iter(loader))
    pairs = batch.n_id[batch.edge_label_index]
    assert pairs.shape == (2, 150)
    assert torch.equal(pairs[:, :50], edge_label_index[:, batch.input_id])
    assert batch.edge_label.tolist() == [1.0] * 50 + [0.0] * 100
    assert torch.equal(pairs[0, 50:], pairs[0, :50].repeat(2))
    assert not any(i in adj[u] for u, i in pairs[:, 50:].t().tolist())
    check_batch_edges(batch, adj)


def test_node_loader_and_seeded_reproducibility():
    indptr, indices, adj, num_users, num_items = random_graph()
    n = num_users + num_items

    def run(seed):
        sampler = NeighborSampler(indptr, indices, [3, 3], num_users=num_users, num_items=num_items, seed=seed)
        loader = NodeLoader(edge_data(n), node_sampler=sampler, input_nodes=torch.arange(n), batch_size=32)
        batches = list(loader)
        for batch in batches:
            assert torch.equal(batch.n_id[: batch.batch_size], batch.input_id)
            check_batch_edges(batch, adj)
        return [(b.n_id, b.edge_index) for b in batches]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(first, other))


def test_loader_workers_draw_different_streams():
    # the same seed batch handed to two worker processes must not be sampled identically
    indptr, indices, adj, num_users, num_items = random_graph()
    n = num_users + num_items
    seeds = torch.arange(0, n, 3)
    sampler = NeighborSampler(indptr, indices, [3, 3], num_users=num_users, num_items=num_items, seed=0)
    loader = NodeLoader(
        edge_data(n),
        node_sampler=sampler,
        input_nodes=torch.cat([seeds, seeds]),
        batch_size=seeds.numel(),
        num_workers=2,
    )
    a, b = list(loader)
    check_batch_edges(a, adj)
    assert torch.equal(a.n_id[: seeds.numel()], b.n_id[: seeds.numel()])
    assert not torch.equal(a.edge_index, b.edge_index)


def test_sampler_rejects_temporal_and_non_user_sources():
    indptr, indices, _, num_users, num_items = random_graph()
    sampler = NeighborSampler(indptr, indices, [2], num_users=num_users, num_items=num_items, seed=0)
    with pytest.raises(ValueError):
        sampler.sample_from_nodes(NodeSamplerInput(None, torch.tensor([1]), time=torch.tensor([0])))
    loader = LinkLoader(
        edge_data(num_users + num_items),
        link_sampler=sampler,
        edge_label_index=torch.tensor([[num_users], [0]]),
        batch_size=1,
        neg_sampling=NegativeSampling("triplet"),
    )
    with pytest.raises(ValueError, match="users as edge sources"):
        next(iter(loader))
    with pytest.raises(ValueError, match="num_users"):
        NeighborSampler(indptr, indices, [2], num_users=num_users, num_items=num_items + 1)


def test_make_sampler_backends(caplog):
    indptr, indices, _, num_users, num_items = random_graph()
    kwargs = dict(num_users=num_users, num_items=num_items)
    with pytest.raises(ConfigError, match="sampler.backend"):
        make_sampler(indptr, indices, [2], backend="fast", **kwargs)
    with caplog.at_level(logging.INFO, logger="distgnn.nn.sampler"):
        sampler = make_sampler(indptr, indices, [2], backend="distgnn", **kwargs)
    assert type(sampler) is NeighborSampler and "distgnn" in caplog.text
    if not torch_geometric.typing.WITH_PYG_LIB:
        assert type(make_sampler(indptr, indices, [2], **kwargs)) is NeighborSampler
    if not (torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE):
        with pytest.raises(ConfigError, match="pyg-lib or torch-sparse"):
            make_sampler(indptr, indices, [2], backend="pyg", **kwargs)


@pytest.mark.skipif(
    not (torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE),
    reason="PyG's NeighborSampler needs pyg-lib or torch-sparse",
)
def test_matches_pyg_distribution():
    # same seeds, many draws: mean nodes and edges per hop agree with PyG's sampler within 3%
    indptr, indices, adj, num_users, num_items = random_graph(num_users=300, num_items=200, density=0.04)
    kwargs = dict(num_users=num_users, num_items=num_items, seed=0)
    ours = make_sampler(indptr, indices, [4, 3], backend="distgnn", **kwargs)
    pyg = make_sampler(indptr, indices, [4, 3], backend="pyg", **kwargs)
    torch.manual_seed(0)
    seeds = torch.randperm(num_users + num_items)[:40]
    stats = {}
    for name, sampler in (("ours", ours), ("pyg", pyg)):
        nodes, edges = [], []
        for _ in range(200):
            out = sampler.sample_from_nodes(NodeSamplerInput(None, seeds))
            nodes.append(out.node.numel())
            edges.append(out.row.numel())
        stats[name] = (sum(nodes) / len(nodes), sum(edges) / len(edges))
    for a, b in zip(stats["ours"], stats["pyg"]):
        assert math.isclose(a, b, rel_tol=0.03), stats
    # the PyG-backed sampler keeps distgnn's negatives and feeds LinkLoader the same way
    edge_label_index = training_edges(adj, num_users)
    loader = LinkLoader(
        edge_data(num_users + num_items),
        link_sampler=pyg,
        edge_label_index=edge_label_index,
        batch_size=64,
        neg_sampling=NegativeSampling("triplet", amount=2),
    )
    batch = next(iter(loader))
    assert torch.equal(batch.n_id[batch.src_index], edge_label_index[0, batch.input_id])
    neg = batch.n_id[batch.dst_neg_index]
    assert bool((neg >= num_users).all())
    assert not any(adj[u] & set(n) for u, n in zip(batch.n_id[batch.src_index].tolist(), neg.tolist()))
    src, dst = batch.n_id[batch.edge_index[0]], batch.n_id[batch.edge_index[1]]
    assert all(s in adj[d] for s, d in zip(src.tolist(), dst.tolist()))
