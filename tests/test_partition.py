"""Graph partitioning: statistics on a graph checked by hand and, counted chunk by chunk, against a
whole-array reference and brute force; METIS and LDG against random/hash on planted clusters, LDG's
capacity, the hash's independence from the graph, the automatic choice by memory budget, and the
invariants of the files written (parts cover every node once, rows and training edges equal the full
graph's, bytes equal to a whole-array writer's), load errors."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distgnn.core.config import PrepareConfig, SyntheticConfig
from distgnn.core.errors import ConfigError, DataError
from distgnn.data.graph import csr_row_positions, load_graph, verify_graph_dir, write_meta
from distgnn.data.partition import (
    NpyAppender,
    _fit_capacity,
    choose_method,
    entry_reader,
    feature_rows,
    global_to_local,
    hash_partition,
    ldg_partition,
    load_partition,
    partition_memory_bytes,
    partition_nodes,
    partition_stats,
    write_partitions,
)
from distgnn.data.prepare import prepare
from distgnn.data.writing import build_csr
from distgnn.partition import main

SMALL = SyntheticConfig(num_users=300, num_items=200, mean_interactions=12, num_factors=4, seed=5)


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory) -> Path:
    """300 users x 200 items (~3k training edges, item features), random 80/10/10 split."""
    return prepare(PrepareConfig(output=str(tmp_path_factory.mktemp("part") / "small"), synthetic=SMALL))


@pytest.fixture()
def graph_copy(small_graph, tmp_path) -> Path:
    """A private copy, since writing parts/ rewrites the graph directory's meta.json."""
    return Path(shutil.copytree(small_graph, tmp_path / "graph"))


def planted_clusters(num_clusters: int, users_per: int, items_per: int, *, p_in: float, p_out: float, seed: int):
    """Bipartite graph whose users mostly pick items of their own cluster: CSR and num_users."""
    rng = np.random.default_rng(seed)
    num_users, num_items = num_clusters * users_per, num_clusters * items_per
    same = (np.arange(num_users)[:, None] // users_per) == (np.arange(num_items)[None, :] // items_per)
    links = rng.random((num_users, num_items)) < np.where(same, p_in, p_out)
    user, item = np.nonzero(links)
    indptr, indices = build_csr(num_users, num_items, user, item)
    return indptr, indices, num_users


# ---------------------------------------------------------------------------------------------------
# Pure core


def test_stats_by_hand():
    # users 0,1,2; items 0,1,2 are nodes 3,4,5. Edges: 0-3, 0-4, 1-4, 1-5, 2-5.
    indptr, indices = build_csr(3, 3, np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2]))
    part = np.array([0, 0, 1, 0, 1, 1])  # part 0 = {0, 1, 3}, part 1 = {2, 4, 5}
    s = partition_stats(indptr, indices, part, 2, num_users=3)
    # cut edges: 0-4 (0|1), 1-4 (0|1), 1-5 (0|1); kept: 0-3 (0|0), 2-5 (1|1)
    assert s["num_cut_edges"] == 3 and s["edge_cut"] == pytest.approx(3 / 5)
    assert s["num_nodes"] == [3, 3] and s["num_users"] == [2, 1] and s["num_items"] == [1, 2]
    # degrees: 0:2, 1:2, 2:1, 3:1, 4:2, 5:2 -> part 0 owns 2+2+1 = 5 entries, part 1 owns 1+2+2 = 5
    assert s["num_edges"] == [5, 5] and s["balance"] == pytest.approx(1.0)
    assert s["num_train_edges"] == [4, 1]  # edges of users 0, 1 and of user 2
    # part 0 reaches remote nodes 4, 5; part 1 reaches remote nodes 0, 1
    assert s["num_halo_nodes"] == [2, 2]
    s = partition_stats(indptr, indices, np.array([0, 0, 0, 0, 0, 1]), 2, num_users=3)
    assert s["num_cut_edges"] == 2 and s["num_edges"] == [8, 2] and s["balance"] == pytest.approx(1.6)


def random_bipartite(num_users: int, num_items: int, num_edges: int, *, seed: int):
    """CSR of a random bipartite graph with skewed item popularity; some nodes end up isolated."""
    rng = np.random.default_rng(seed)
    key = np.unique(rng.integers(0, num_users, num_edges) * num_items + rng.zipf(1.6, num_edges) % num_items)
    return build_csr(num_users, num_items, key // num_items, key % num_items)


def reference_stats(indptr, indices, part, num_parts, num_users):
    """Cut and halo the whole-array way (distgnn before chunking): one np.repeat over every entry
    and a global np.unique of (part, remote node) keys."""
    entry_part = np.repeat(part, np.diff(indptr))
    cut = entry_part != part[indices]
    halo_key = np.unique(entry_part[cut] * part.size + indices[cut])
    return int(np.count_nonzero(cut)) // 2, np.bincount(halo_key // part.size, minlength=num_parts).tolist()


def brute_force_stats(indptr, indices, part, num_parts):
    """Cut edges and halo sets by looping over every stored entry in Python."""
    cut, halo = 0, [set() for _ in range(num_parts)]
    for node in range(part.size):
        for neighbor in indices[indptr[node] : indptr[node + 1]].tolist():
            if part[node] != part[neighbor]:
                cut += 1
                halo[part[node]].add(neighbor)
    return cut // 2, [len(h) for h in halo]


@pytest.mark.parametrize("chunk_entries", [1, 3, 1 << 22])
def test_stats_by_hand_in_any_chunking(chunk_entries):
    indptr, indices = build_csr(3, 3, np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 2, 2]))
    s = partition_stats(indptr, indices, np.array([0, 0, 1, 0, 1, 1]), 2, num_users=3, chunk_entries=chunk_entries)
    assert s["num_cut_edges"] == 3 and s["num_halo_nodes"] == [2, 2] and s["num_edges"] == [5, 5]
    # a third, empty part has no halo; part 1 = {5} reaches 1 and 2, part 0 reaches 5 only
    s = partition_stats(indptr, indices, np.array([0, 0, 0, 0, 0, 1]), 3, num_users=3, chunk_entries=chunk_entries)
    assert s["num_cut_edges"] == 2 and s["num_halo_nodes"] == [1, 2, 0] and s["num_nodes"] == [5, 1, 0]


@pytest.mark.parametrize("seed", range(4))
def test_chunked_stats_equal_whole_array_reference_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    num_users, num_items, num_parts = int(rng.integers(5, 60)), int(rng.integers(5, 40)), int(rng.integers(2, 7))
    indptr, indices = random_bipartite(num_users, num_items, int(rng.integers(10, 400)), seed=seed)
    part = rng.integers(0, num_parts, num_users + num_items)
    cut, halo = reference_stats(indptr, indices, part, num_parts, num_users)
    assert (cut, halo) == brute_force_stats(indptr, indices, part, num_parts)
    for chunk_entries in (1, 7, 64, 1 << 22):
        s = partition_stats(indptr, indices, part, num_parts, num_users=num_users, chunk_entries=chunk_entries)
        assert s["num_cut_edges"] == cut and s["num_halo_nodes"] == halo
        assert s["edge_cut"] == pytest.approx(2 * cut / indices.size)
        assert s["num_edges"] == np.bincount(part, weights=np.diff(indptr), minlength=num_parts).tolist()


def test_stats_read_a_memory_mapped_csr_by_file_reads(tmp_path):
    indptr, indices = random_bipartite(40, 30, 300, seed=1)
    np.save(tmp_path / "indices.npy", indices)
    mapped = np.load(tmp_path / "indices.npy", mmap_mode="r")
    read = entry_reader(mapped)
    assert read(5, 77).tolist() == indices[5:77].tolist() and read(0, 0).size == 0
    assert entry_reader(mapped[10:])(3, 9).tolist() == indices[13:19].tolist()  # a slice is read as a slice
    part = hash_partition(np.arange(70), 3)
    expected = partition_stats(indptr, indices, part, 3, num_users=40)
    assert partition_stats(indptr, mapped, part, 3, num_users=40, chunk_entries=11) == expected


def test_npy_appender_writes_what_np_save_writes(tmp_path):
    edges = np.arange(14).reshape(2, 7)
    out = NpyAppender(tmp_path / "e.npy", np.int64, (2, 7), streams=(0, 7))
    for cols in (slice(0, 3), slice(3, 3), slice(3, 7)):  # the two rows appended piece by piece
        out.append(edges[0, cols], stream=0)
        out.append(edges[1, cols], stream=1)
    out.check_full()
    np.save(tmp_path / "ref.npy", edges)
    assert (tmp_path / "e.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    x = np.random.default_rng(0).random((5, 3)).astype(np.float32)
    out = NpyAppender(tmp_path / "x.npy", np.float32, (5, 3))
    out.append(x[:2])
    with pytest.raises(AssertionError, match="written"):
        out.check_full()
    out.append(x[2:])
    np.save(tmp_path / "xref.npy", x)
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "xref.npy").read_bytes()
    NpyAppender(tmp_path / "empty.npy", np.int64, (0,)).check_full()
    np.save(tmp_path / "eref.npy", np.zeros(0, dtype=np.int64))
    assert (tmp_path / "empty.npy").read_bytes() == (tmp_path / "eref.npy").read_bytes()


def test_fit_capacity_by_hand():
    # part 0 has room 4: nodes 0, 1 (weight 2 each) fit, node 2 does not and goes to part 1 (room 9 left)
    assert _fit_capacity(np.array([0, 0, 0, 1]), np.array([2.0, 2, 2, 1]), np.array([4.0, 10])).tolist() == [0, 0, 1, 1]
    # everything fits: choices kept
    assert _fit_capacity(np.array([1, 0, 1]), np.array([1.0, 1, 1]), np.array([5.0, 5])).tolist() == [1, 0, 1]
    # overflow laid over the remaining room [0, 2, 3] end to end: starts 0, 1 -> part 1; 2, 3, 4 -> part 2
    got = _fit_capacity(np.zeros(6, dtype=np.int64), np.ones(6), np.array([1.0, 2, 3]))
    assert got.tolist() == [0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("num_parts", [2, 3, 7])
def test_ldg_gives_every_node_one_part_within_capacity(num_parts):
    indptr, indices = random_bipartite(300, 120, 2500, seed=num_parts)
    weight = np.diff(indptr) + 1.0
    capacity = 1.05 * weight.sum() / num_parts
    for chunk_entries in (5, 1 << 22):
        part = ldg_partition(indptr, indices, num_parts, seed=3, chunk_entries=chunk_entries)
        assert part.shape == (indptr.size - 1,) and part.dtype == np.int64
        assert part.min() >= 0 and part.max() < num_parts
        load = np.bincount(part, weights=weight, minlength=num_parts)
        assert load.max() <= capacity + weight.max()
        assert np.array_equal(part, ldg_partition(indptr, indices, num_parts, seed=3, chunk_entries=chunk_entries))


def test_ldg_cuts_far_fewer_edges_than_hash_on_planted_clusters():
    indptr, indices, num_users = planted_clusters(4, 60, 40, p_in=0.25, p_out=0.005, seed=2)
    cut = {}
    for method in ("ldg", "hash"):
        part = partition_nodes(indptr, indices, 4, method=method, seed=0)
        cut[method] = partition_stats(indptr, indices, part, 4, num_users=num_users)["edge_cut"]
    assert cut["ldg"] < 0.15 and cut["hash"] > 0.6  # planted: ~7% of edges cross clusters


def test_auto_takes_metis_within_the_budget_and_ldg_over_it():
    size = dict(num_nodes=1_000_000, num_entries=16_000_000, num_parts=4)
    need = partition_memory_bytes("metis", **size)
    assert need > partition_memory_bytes("ldg", **size) == partition_memory_bytes("hash", **size)
    method, reason = choose_method("auto", memory_bytes=need, **size)
    assert method == "metis" and "within" in reason
    method, reason = choose_method("auto", memory_bytes=need - 1, **size)
    assert method == "ldg" and "over" in reason
    assert choose_method("auto", memory_bytes=need, metis_available=False, **size)[0] == "ldg"
    method, reason = choose_method("metis", memory_bytes=need - 1, **size)
    assert method == "metis" and "over" in reason  # asked for by name: kept, with a warning
    with pytest.raises(ConfigError, match="partition_method"):
        choose_method("spectral", memory_bytes=need, **size)


def test_memory_model_grows_with_the_graph():
    # METIS holds the CSR: its estimate grows with entries; the chunked methods only with nodes
    small = dict(num_nodes=1_000_000, num_entries=10_000_000, num_parts=2)
    big = dict(num_nodes=1_000_000, num_entries=100_000_000, num_parts=2)
    assert partition_memory_bytes("metis", **big) > 5 * partition_memory_bytes("metis", **small) / 2
    assert partition_memory_bytes("ldg", **big) == partition_memory_bytes("ldg", **small)
    many_parts = dict(small, num_parts=64)  # the halo bitmap: P x N bits
    assert partition_memory_bytes("hash", **many_parts) - partition_memory_bytes("hash", **small) == 62 * 10**6 // 8


def test_feature_rows_block_layout():
    # 2 users with 2 features, 3 items with 1 feature; rows of nodes 1 (user), 3 and 4 (items 1, 2)
    user_features = np.array([[1, 2], [3, 4]], dtype=np.float32)
    item_features = np.array([[5], [6], [7]], dtype=np.float32)
    x = feature_rows(np.array([1, 3, 4]), 2, user_features, item_features)
    assert x.tolist() == [[3, 4, 0], [0, 0, 6], [0, 0, 7]]
    assert feature_rows(np.array([0, 2]), 2, None, item_features).tolist() == [[0], [5]]
    assert feature_rows(np.array([0]), 2, None, None) is None


@pytest.mark.parametrize("method", ["metis", "ldg", "random", "hash"])
def test_partition_nodes_covers_all_parts_and_is_seeded(method):
    indptr, indices, _ = planted_clusters(4, 40, 30, p_in=0.3, p_out=0.01, seed=0)
    part = partition_nodes(indptr, indices, 4, method=method, seed=1)
    assert part.dtype == torch.int64 and part.shape == (indptr.size - 1,)
    assert set(part.tolist()) == {0, 1, 2, 3}
    assert torch.equal(part, partition_nodes(indptr, indices, 4, method=method, seed=1))


def test_metis_cuts_far_fewer_edges_than_random_and_balances_edges():
    indptr, indices, num_users = planted_clusters(4, 60, 40, p_in=0.25, p_out=0.005, seed=2)
    cut = {}
    for method in ("metis", "random"):
        part = partition_nodes(indptr, indices, 4, method=method, seed=0)
        stats = partition_stats(indptr, indices, part, 4, num_users=num_users)
        cut[method] = stats["edge_cut"]
        if method == "metis":
            assert stats["balance"] < 1.1
    # planted: ~7% of edges cross clusters; random: ~3/4 of edges cross parts
    assert cut["metis"] < 0.15 and cut["random"] > 0.6


def test_hash_depends_only_on_node_ids():
    indptr, indices, _ = planted_clusters(2, 30, 20, p_in=0.3, p_out=0.05, seed=0)
    other_indptr, other_indices, _ = planted_clusters(2, 30, 20, p_in=0.1, p_out=0.1, seed=9)
    part = partition_nodes(indptr, indices, 3, method="hash", seed=4)
    assert torch.equal(part, partition_nodes(other_indptr, other_indices, 3, method="hash", seed=4))
    # a streaming pass: chunks of ids hashed alone give the same parts
    chunks = [hash_partition(np.arange(a, min(a + 17, 100)), 3, seed=4) for a in range(0, 100, 17)]
    assert np.concatenate(chunks).tolist() == part.tolist()
    counts = np.bincount(hash_partition(np.arange(30_000), 4), minlength=4)
    assert counts.min() > 0.95 * 30_000 / 4  # spreads consecutive ids evenly
    assert not torch.equal(part, partition_nodes(indptr, indices, 3, method="hash", seed=5))


def test_partition_nodes_rejects_bad_arguments():
    indptr, indices = build_csr(2, 2, np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ConfigError, match="partition_method"):
        partition_nodes(indptr, indices, 2, method="spectral")
    with pytest.raises(ConfigError, match="expected 1..4 parts"):
        partition_nodes(indptr, indices, 5, method="random")


def test_metis_without_pymetis_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymetis", None)  # makes `import pymetis` raise ImportError
    indptr, indices = build_csr(2, 2, np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"pip install distgnn\[partition\]"):
        partition_nodes(indptr, indices, 2, method="metis")
    assert partition_nodes(indptr, indices, 2, method="hash").numel() == 4


# ---------------------------------------------------------------------------------------------------
# Files written


@pytest.mark.parametrize("method", ["metis", "ldg", "random", "hash"])
def test_written_parts_match_the_full_graph(graph_copy, method):
    num_parts = 3
    stats = write_partitions(graph_copy, num_parts, method=method, seed=0)
    graph = load_graph(graph_copy, verify=True)  # top-level checksums now cover parts/ too
    assert graph.meta["partitions"] == {"num_parts": num_parts, "method": method, "seed": 0}
    parts = [load_partition(graph_copy, p, num_parts=num_parts) for p in range(num_parts)]

    # every node owned by exactly one part, and node_part agrees
    owned = torch.cat([p.nodes for p in parts])
    assert torch.equal(torch.sort(owned).values, torch.arange(graph.num_nodes))
    for p in parts:
        assert torch.equal(p.nodes, torch.sort(p.nodes).values)
        assert (p.node_part[p.nodes] == p.part_id).all()
    assert [p.num_nodes for p in parts] == stats["num_nodes"]

    # each part's rows are the full graph's rows of its nodes; features in distgnn.training.loop.node_features'
    # [N, Fu + Fi] block layout (built here by hand: importing train costs seconds)
    assert graph.user_features is None and graph.item_features is not None
    x = torch.cat([torch.zeros(graph.num_users, graph.item_features.shape[1]), graph.item_features])
    for p in parts:
        assert torch.equal(p.indptr[1:] - p.indptr[:-1], graph.degree[p.nodes])
        _, pos = csr_row_positions(graph.indptr, p.nodes)
        assert torch.equal(p.indices, graph.indices[pos])
        assert torch.equal(p.features, x[p.nodes])
    assert [p.indices.numel() for p in parts] == stats["num_edges"]

    # the parts' training edges are all training edges, each once, each with an owned user
    user, item = graph.train_edges
    full = set(zip(user.tolist(), (item + graph.num_users).tolist()))
    got = [tuple(e) for p in parts for e in p.train_edges.T.tolist()]
    assert len(got) == len(full) and set(got) == full
    for p in parts:
        assert (p.node_part[p.train_edges[0]] == p.part_id).all()


def reference_parts(graph_dir: Path, part: np.ndarray, num_parts: int, out: Path) -> None:
    """Each part's arrays built whole and saved with np.save (distgnn's writer before chunking)."""
    graph = load_graph(graph_dir)
    degree = graph.degree.numpy()
    order = np.argsort(part, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=num_parts))])
    uf = graph.user_features.numpy() if graph.user_features is not None else None
    itf = graph.item_features.numpy() if graph.item_features is not None else None
    for p in range(num_parts):
        folder = out / f"part-{p:03d}"
        folder.mkdir(parents=True)
        nodes = order[bounds[p] : bounds[p + 1]].astype(np.int64)
        _, position = csr_row_positions(graph.indptr, torch.from_numpy(nodes))
        indices = graph.indices.index_select(0, position).numpy()
        indptr = np.zeros(nodes.size + 1, dtype=np.int64)
        np.cumsum(degree[nodes], out=indptr[1:])
        users = nodes[nodes < graph.num_users]
        np.save(folder / "nodes.npy", nodes)
        np.save(folder / "indptr.npy", indptr)
        np.save(folder / "indices.npy", indices)
        np.save(folder / "train_edges.npy", np.stack([np.repeat(users, degree[users]), indices[: indptr[users.size]]]))
        np.save(folder / "features.npy", feature_rows(nodes, graph.num_users, uf, itf))


@pytest.mark.parametrize("method", ["metis", "ldg", "random", "hash"])
def test_parts_written_by_chunks_are_the_whole_array_writers_bytes(graph_copy, tmp_path, method):
    # user features too, so both blocks of features.npy are exercised; meta.json re-blessed with them
    user_features = np.random.default_rng(0).random((300, 2)).astype(np.float32)
    np.save(graph_copy / "features" / "user.npy", user_features)
    write_meta(graph_copy, {k: v for k, v in json.loads((graph_copy / "meta.json").read_text()).items()})
    num_parts = 3
    stats = write_partitions(graph_copy, num_parts, method=method, seed=2, chunk_entries=97)  # ~60 chunks
    part = np.load(graph_copy / "parts" / "node_part.npy").astype(np.int64)
    graph = load_graph(graph_copy)
    # the assignment is the method's own, unchanged by chunked writing
    if method == "random":
        assert part.tolist() == np.random.default_rng(2).integers(0, num_parts, graph.num_nodes).tolist()
    elif method == "hash":
        assert part.tolist() == hash_partition(np.arange(graph.num_nodes), num_parts, seed=2).tolist()
    elif method == "metis":
        assert part.tolist() == partition_nodes(graph.indptr, graph.indices, num_parts, method="metis", seed=2).tolist()
    reference_parts(graph_copy, part, num_parts, tmp_path / "reference")
    for p in range(num_parts):
        for name in ("nodes", "indptr", "indices", "train_edges", "features"):
            got = (graph_copy / "parts" / f"part-{p:03d}" / f"{name}.npy").read_bytes()
            assert got == (tmp_path / "reference" / f"part-{p:03d}" / f"{name}.npy").read_bytes(), (p, name)
    cut, halo = reference_stats(graph.indptr.numpy(), graph.indices.numpy(), part, num_parts, graph.num_users)
    assert stats["num_cut_edges"] == cut and stats["num_halo_nodes"] == halo


def test_auto_logs_its_choice_and_follows_the_budget(graph_copy, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="distgnn")
    write_partitions(graph_copy, 2, memory_gb=1000.0)  # method defaults to auto
    assert json.loads((graph_copy / "parts" / "meta.json").read_text())["method"] == "metis"
    assert load_graph(graph_copy).meta["partitions"]["method"] == "metis"
    choice = [r.getMessage() for r in caplog.records if "partition method" in r.getMessage()]
    assert len(choice) == 1 and "auto -> metis" in choice[0] and "within the 1000.0 GB budget" in choice[0]
    caplog.clear()
    stats = write_partitions(graph_copy, 2, memory_gb=0.001)
    meta = json.loads((graph_copy / "parts" / "meta.json").read_text())
    assert meta["method"] == "ldg" and meta["method_choice"]["requested"] == "auto"
    assert "over the 0.0 GB budget" in meta["method_choice"]["reason"]
    log_text = caplog.text
    assert "auto -> ldg" in log_text and f"edge cut (ldg): {100 * stats['edge_cut']:.1f}%" in log_text
    # a budget that the prediction fits, exactly, takes METIS
    monkeypatch.setattr("distgnn.data.partition.partition_memory_bytes", lambda method, **_: 5 << 30)
    write_partitions(graph_copy, 2, memory_gb=5.0)
    assert json.loads((graph_copy / "parts" / "meta.json").read_text())["method"] == "metis"


def test_global_to_local(graph_copy):
    write_partitions(graph_copy, 2, method="hash")
    p = load_partition(graph_copy, 1)
    local = global_to_local(p, torch.arange(p.node_part.numel()))
    mine = p.node_part == 1
    assert torch.equal(local[mine], torch.arange(p.num_nodes))
    assert (local[~mine] == -1).all()
    assert global_to_local(p, torch.tensor([p.node_part.numel() + 5])).tolist() == [-1]


def test_load_errors(graph_copy):
    with pytest.raises(DataError, match="no parts/ folder"):
        load_partition(graph_copy, 0)
    write_partitions(graph_copy, 3, method="random")
    with pytest.raises(DataError, match="holds 3 partitions, but 4 were requested"):
        load_partition(graph_copy, 0, num_parts=4)
    with pytest.raises(DataError, match="no part 3"):
        load_partition(graph_copy, 3)
    damaged = graph_copy / "parts" / "part-000" / "indices.npy"
    damaged.write_bytes(damaged.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(DataError, match=r"part-000/indices.npy: checksum differs"):
        load_partition(graph_copy, 0)
    load_partition(graph_copy, 0, verify=False)  # only verification notices
    load_partition(graph_copy, 1)  # other parts are not affected
    shutil.rmtree(graph_copy / "parts" / "part-002")
    with pytest.raises(DataError, match=r"part-002: part folder missing"):
        load_partition(graph_copy, 2)


def test_prepare_with_partitions_writes_parts(tmp_path):
    out = prepare(PrepareConfig(output=str(tmp_path / "g"), synthetic=SMALL, partitions=2, partition_method="metis"))
    meta = verify_graph_dir(out)
    assert meta["partitions"]["num_parts"] == 2 and "parts/node_part.npy" in meta["checksums"]
    parts_meta = json.loads((out / "parts" / "meta.json").read_text())
    assert parts_meta["method"] == "metis"
    assert sum(parts_meta["stats"]["num_nodes"]) == meta["num_users"] + meta["num_items"]
    assert (out / "parts" / "part-001" / "train_edges.npy").is_file()
    assert not list(tmp_path.glob(".*tmp*")) and not list(out.glob("*.tmp"))


def test_cli(graph_copy, tmp_path, capsys):
    assert main(["--graph", str(graph_copy), "--partitions", "2", "--method", "hash"]) == 0
    assert load_partition(graph_copy, 0, num_parts=2).meta["method"] == "hash"
    assert main(["--graph", str(graph_copy), "--partitions", "2", "--memory-gb", "0.001"]) == 0  # auto
    assert load_partition(graph_copy, 0, num_parts=2).meta["method"] == "ldg"
    assert main(["--graph", str(graph_copy), "--partitions", "2", "--memory_gb", "0"]) == 2
    assert "memory_gb" in capsys.readouterr().err
    assert main(["--graph", str(tmp_path / "nowhere"), "--partitions", "2"]) == 2
    assert "not a graph directory" in capsys.readouterr().err
