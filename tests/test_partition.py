"""Graph partitioning: statistics on a graph checked by hand, METIS against random on planted
clusters, the hash's independence from the graph, and the invariants of the files written (parts
cover every node once, rows and training edges equal the full graph's), load errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distgnn.core.config import PrepareConfig, SyntheticConfig
from distgnn.core.errors import ConfigError, DataError
from distgnn.data.graph import csr_row_positions, load_graph, verify_graph_dir
from distgnn.data.partition import (
    feature_rows,
    global_to_local,
    hash_partition,
    load_partition,
    partition_nodes,
    partition_stats,
    write_partitions,
)
from distgnn.data.prepare import build_csr, prepare
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


def test_feature_rows_block_layout():
    # 2 users with 2 features, 3 items with 1 feature; rows of nodes 1 (user), 3 and 4 (items 1, 2)
    user_features = np.array([[1, 2], [3, 4]], dtype=np.float32)
    item_features = np.array([[5], [6], [7]], dtype=np.float32)
    x = feature_rows(np.array([1, 3, 4]), 2, user_features, item_features)
    assert x.tolist() == [[3, 4, 0], [0, 0, 6], [0, 0, 7]]
    assert feature_rows(np.array([0, 2]), 2, None, item_features).tolist() == [[0], [5]]
    assert feature_rows(np.array([0]), 2, None, None) is None


@pytest.mark.parametrize("method", ["metis", "random", "hash"])
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


@pytest.mark.parametrize("method", ["metis", "random", "hash"])
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
    assert main(["--graph", str(tmp_path / "nowhere"), "--partitions", "2"]) == 2
    assert "not a graph directory" in capsys.readouterr().err
