"""Partitioned training: sampling across parts, row-sharded embeddings, layer-wise inference and the
training loop, run for real on 2 processes over gloo (torch.multiprocessing), plus 2 Ray workers."""

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from distgnn.core.errors import DataError
from distgnn.core.rundir import create_run_dir, read_history
from distgnn.data.graph import load_graph
from distgnn.data.partition import load_partition, verify_partitions, write_partitions
from distgnn.nn.models import LightGCN, full_graph_embeddings
from distgnn.nn.sampler import sample_subgraph
from distgnn.training.exchange import Traffic, fetch_rows, push_gradients
from distgnn.training.partitioned import (
    PartitionedNeighborSampler,
    load_part_view,
    partitioned_embeddings,
    remote_neighbors,
)

from test_train import tiny_job


@pytest.fixture(scope="module")
def parted_graph(tiny_graph, tmp_path_factory) -> Path:
    """The tiny graph split into 2 random parts (a random split cuts ~half the edges: the hard case)."""
    folder = tmp_path_factory.mktemp("parted") / "tiny"
    shutil.copytree(tiny_graph, folder)
    write_partitions(folder, 2, method="random", seed=1)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_two_ranks(fn, *args) -> list:
    """Run ``fn(rank, *args)`` on 2 processes joined in a gloo group; returns each rank's result."""
    port = _free_port()
    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    procs = [ctx.Process(target=_rank_main, args=(rank, port, fn, args, results)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [results[r] for r in range(2)]


def _rank_main(rank, port, fn, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        results[rank] = fn(rank, *args)
    finally:
        tdist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------
# Sampling across parts


def _sample_all_neighbors(rank, graph_dir):
    part = load_partition(graph_dir, rank, num_parts=2)
    sampler = PartitionedNeighborSampler(part, [-1, -1], seed=rank)
    sampler._enter_process()
    # each rank starts from its own users plus nodes the other part owns
    seeds = torch.cat([part.nodes[:5], torch.nonzero(part.node_part != rank).flatten()[:5]])
    out = sampler._sample_subgraph(seeds)
    return seeds, out.node, out.row, out.col, out.num_sampled_nodes


def test_taking_every_neighbor_gives_the_single_machine_subgraph_exactly(parted_graph):
    """With fanout -1 sampling is deterministic: the partitioned sampler must return the same
    subgraph, node order and edge order included, as the single-machine sampler."""
    g = load_graph(parted_graph)
    for seeds, node, row, col, counts in run_on_two_ranks(_sample_all_neighbors, parted_graph):
        ref = sample_subgraph(g.indptr, g.indices, seeds, [-1, -1])
        assert torch.equal(node, ref.node) and counts == ref.num_sampled_nodes
        assert torch.equal(row, ref.row) and torch.equal(col, ref.col)


def _sample_fanout(rank, graph_dir, k, draws):
    part = load_partition(graph_dir, rank, num_parts=2)
    frontier = torch.arange(part.node_part.numel())[rank::2]  # half the nodes, from both parts
    gen = torch.Generator().manual_seed(10 + rank)
    traffic = Traffic()
    samples = [
        remote_neighbors(part, frontier, k, replace=False, generator=gen, traffic=traffic)[:2] for _ in range(draws)
    ]
    return frontier, samples, traffic.as_dict()


def test_remote_sampling_respects_fanouts_and_is_uniform(parted_graph):
    g = load_graph(parted_graph)
    k, draws = 3, 200
    edge_keys = torch.repeat_interleave(torch.arange(g.num_nodes), g.degree) * g.num_nodes + g.indices
    for frontier, samples, traffic in run_on_two_ranks(_sample_fanout, parted_graph, k, draws):
        deg = g.degree[frontier]
        hits = torch.zeros(g.indices.numel())
        for segment, neighbor in samples:
            # grouped by frontier node in frontier order, min(k, deg) distinct real neighbors each
            assert torch.equal(segment, torch.repeat_interleave(torch.arange(frontier.numel()), deg.clamp(max=k)))
            # (node, neighbor) -> position in the CSR: rows sorted, so the keys are sorted too
            pos = torch.searchsorted(edge_keys, frontier[segment] * g.num_nodes + neighbor)
            assert torch.equal(
                edge_keys[pos.clamp(max=edge_keys.numel() - 1)], frontier[segment] * g.num_nodes + neighbor
            )  # real edges only
            assert len(set(zip(segment.tolist(), neighbor.tolist()))) == segment.numel()
            hits[pos] += 1
        # every neighbor of a node with deg > k is drawn with probability k / deg
        big = deg > k
        rows = frontier[big][:200]
        for node in rows.tolist():
            s, e = int(g.indptr[node]), int(g.indptr[node + 1])
            freq = hits[s:e] / draws
            expected = k / (e - s)
            assert abs(float(freq.mean()) - expected) < 1e-6  # exactly k per draw
            assert float((freq - expected).abs().max()) < 5 * (expected * (1 - expected) / draws) ** 0.5 + 0.02
        assert 0.3 < traffic["remote_frontier_nodes"] / traffic["frontier_nodes"] < 0.7  # random 2-way split
        assert traffic["bytes_sent"] > 0


# ---------------------------------------------------------------------------------------------------
# Row-sharded embeddings and exact layer-wise inference


def _fetch_and_push(rank, graph_dir, table):
    part = load_partition(graph_dir, rank, num_parts=2)
    shard = torch.nn.Embedding.from_pretrained(table[part.nodes].clone(), freeze=False, sparse=True)
    nodes = torch.tensor([0, 5, 7, 5, 900, 1201]) + rank  # repeats and both parts' nodes
    x, fetched = fetch_rows(shard, part, nodes)
    weight = torch.arange(1.0, nodes.numel() + 1).view(-1, 1) * (rank + 1)
    (x * weight).sum().backward()
    push_gradients(x, fetched)
    return part.nodes, x.detach(), shard.weight.grad.to_dense(), nodes, weight


def test_fetched_rows_and_pushed_gradients_are_exact(parted_graph):
    table = torch.randn(load_graph(parted_graph).num_nodes, 4)
    results = run_on_two_ranks(_fetch_and_push, parted_graph, table)
    expected_grad = torch.zeros_like(table)
    for _, x, _, nodes, weight in results:
        assert torch.equal(x, table[nodes])
        expected_grad.index_add_(0, nodes, weight.expand(-1, 4) / 2)  # averaged over the 2 workers
    for owned, _, grad, _, _ in results:
        assert torch.allclose(grad, expected_grad[owned])


def _exact_embeddings(rank, graph_dir, table):
    view = load_part_view(graph_dir, rank, 2)
    model = LightGCN(view.partition.num_nodes, table.shape[1], num_layers=3)
    model.embedding.weight.data.copy_(table[view.partition.nodes])
    return view.partition.nodes, partitioned_embeddings(model, view)


def _vectors_items_and_samples(rank, graph_dir, table, bias, run_dir):
    from distgnn.eval.protocol import ScoringVectors
    from distgnn.training.partitioned import Partitioned, gather_items

    three_layers = _exact_embeddings(rank, graph_dir, table[:, :8])  # one start of 2 processes for both tests
    job = tiny_job(graph_dir, **VECTOR_JOB)
    strategy = Partitioned(job)
    nodes = strategy.view.partition.nodes
    with torch.no_grad():
        strategy.model.embedding.weight.copy_(table[nodes])
        strategy.model.bias_embedding.weight.copy_(bias[nodes])
    vectors = strategy.vectors()
    owned_users = strategy.view.num_owned_users
    items = gather_items(vectors[owned_users:], strategy.view)
    strategy.write_samples(Path(run_dir), ScoringVectors(vectors, None, owned_users), strategy.sample_users())
    rows = torch.cat([torch.tensor([1, 4]), torch.arange(owned_users, nodes.numel())])  # what evaluation reads
    assert torch.equal(strategy.vectors(rows), vectors[rows])  # the last layer for these rows only
    return nodes, vectors, items, three_layers


VECTOR_JOB = {
    "cluster.partitioned": True,
    "cluster.num_workers": 2,
    "model.item_bias": True,
    "optim.loss": "softmax",
    "optim.temperature": 0.2,
}


def test_partitioned_inference_vectors_gathered_items_and_samples_are_the_whole_graphs(parted_graph, tmp_path):
    """Layer-wise inference (3 layers) and each part's scoring vectors (2 layers, cosine, item-bias
    column) against the whole graph's; every worker's gathered items are the owners' rows exactly;
    samples.csv ranks the users the replicated strategy picks, from the whole graph's CSRs."""
    from distgnn.eval.protocol import excluded, sample_users, top_items
    from distgnn.nn.models import exact_vectors

    g = load_graph(parted_graph)
    table, bias = torch.randn(g.num_nodes, 32), torch.randn(g.num_nodes, 1)
    results = run_on_two_ranks(_vectors_items_and_samples, parted_graph, table, bias, str(tmp_path))
    check_layerwise_inference(g, table[:, :8], [r[3] for r in results])
    whole = LightGCN(g.num_nodes, 32, num_layers=2, item_bias=True)
    with torch.no_grad():
        whole.embedding.weight.copy_(table)
        whole.bias_embedding.weight.copy_(bias)
    expected = exact_vectors(whole, g, tiny_job(parted_graph, **VECTOR_JOB))
    assembled = torch.empty_like(expected)
    for nodes, vectors, _, _ in results:
        assert torch.equal(vectors, expected[nodes])
        assembled[nodes] = vectors
    for _, _, items, _ in results:
        assert torch.equal(items, assembled[g.num_users :])
    users = sample_users(torch.nonzero(g.test.counts > 0).flatten(), 5)
    topk, _ = top_items(None, assembled[users], assembled[g.num_users :], users, excluded(g, "test"), 10)
    rows = (tmp_path / "samples.csv").read_text().splitlines()
    assert len(rows) == 1 + 50
    user_ids = pq.read_table(g.path / "users.parquet")["raw_id"].to_pylist()
    item_ids = pq.read_table(g.path / "items.parquet")["raw_id"].to_pylist()
    shown = [line.split(",")[:3] for line in rows[1:]]
    want = [[f'"{user_ids[u]}"', str(r + 1), f'"{item_ids[i]}"'] for u, t in zip(users, topk) for r, i in enumerate(t)]
    assert shown == want


def check_layerwise_inference(g, table, results):
    """Each part's exact embeddings (3 layers, :func:`_exact_embeddings`) are the whole graph's."""
    whole = LightGCN(g.num_nodes, 8, num_layers=3)
    whole.embedding.weight.data.copy_(table)
    expected = full_graph_embeddings(whole, g.indptr, g.indices)
    for nodes, emb in results:
        assert torch.equal(emb, expected[nodes])  # the same sums in the same order: the same bits


# ---------------------------------------------------------------------------------------------------
# Negatives shared across workers

# Each rank: its users (node ids), its candidate items (node ids; some also on the other rank) and
# the column of each user's positive among its own candidates. Rank 1 has fewer candidates (padding).
SHARED_CASE = {0: ([0, 1, 2], [10, 11, 12, 13], [0, 2, 3]), 1: ([3, 4, 5], [12, 14, 15], [2, 0, 0])}


def _shared_softmax(rank, table):
    from distgnn.nn.losses import sampled_softmax_loss
    from distgnn.training.objective import share_candidates

    users, cands, targets = (torch.tensor(v) for v in SHARED_CASE[rank])
    weight = torch.nn.Parameter(table.clone())
    nodes, cand_emb = share_candidates(cands, weight[cands])
    loss = sampled_softmax_loss(weight[users], cand_emb, targets, temperature=0.2)
    (loss / 2).backward()  # summed over ranks below: the average, as DDP's all-reduce makes it
    grad = weight.grad.clone()
    tdist.all_reduce(grad)
    return nodes, float(loss), grad


def test_shared_negatives_give_the_single_process_loss_and_gradients():
    table = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    ranks = run_on_two_ranks(_shared_softmax, table)

    # One process with both ranks' batches: every candidate once, every user against all of them.
    from distgnn.nn.losses import sampled_softmax_loss

    users = torch.tensor(SHARED_CASE[0][0] + SHARED_CASE[1][0])
    union = torch.tensor([10, 11, 12, 13, 14, 15])
    positive = [SHARED_CASE[r][1][t] for r in (0, 1) for t in SHARED_CASE[r][2]]
    targets = torch.searchsorted(union, torch.tensor(positive))
    weight = torch.nn.Parameter(table.clone())
    loss = sampled_softmax_loss(weight[users], weight[union], targets, temperature=0.2)
    loss.backward()
    loss = loss.detach()

    (nodes0, loss0, grad0), (nodes1, loss1, grad1) = ranks
    assert nodes0.tolist() == [10, 11, 12, 13, 14, 15]  # own candidates first, then the other's new ones
    assert nodes1.tolist() == [12, 14, 15, 10, 11, 13]
    assert (loss0 + loss1) / 2 == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(grad0, weight.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad1, grad0)


# ---------------------------------------------------------------------------------------------------
# Training


def _train(rank, job, run_dir):
    from distgnn.training.launcher import train_in_process

    return train_in_process(job, Path(run_dir))


@pytest.mark.parametrize("options", [{}, {"model.item_bias": True, "optim.contrastive_weight": 0.1}])
def test_two_process_partitioned_training_beats_popularity(parted_graph, tmp_path, options):
    job = tiny_job(
        parted_graph, **{"cluster.partitioned": True, "cluster.num_workers": 2, "optim.batch_size": 256, **options}
    )
    run_dir = create_run_dir(job, str(tmp_path), "run")
    results = run_on_two_ranks(_train, job, str(run_dir))
    assert results[0]["test"] == results[1]["test"]  # metrics reduced over both parts' users
    g = load_graph(parted_graph)
    assert results[0]["test"]["num_users"] == int((g.test.counts > 0).sum())
    assert results[0]["test"]["recall@20"] > 1.4 * results[0]["popularity_test"]["recall@20"]
    traffic = read_history(run_dir)[-1]["traffic"]
    assert traffic["bytes_sent_per_step"] > 0 and 0.3 < traffic["remote_sample_fraction"] < 0.7
    assert sorted(p.name for p in (run_dir / "model-parts").iterdir()) == ["part-000.pt", "part-001.pt"]


# ---------------------------------------------------------------------------------------------------
# Mismatched or damaged partitions are refused before training


def test_partition_mismatch_is_refused_before_training(parted_graph, tmp_path, capsys):
    from distgnn.train import main as train_main

    with pytest.raises(DataError, match="holds 2 partitions, but 3 were requested"):
        verify_partitions(parted_graph, 3)
    broken = tmp_path / "broken"
    shutil.copytree(parted_graph, broken)
    shutil.rmtree(broken / "parts" / "part-001")
    with pytest.raises(DataError, match="part-001: part folder missing"):
        verify_partitions(broken, 2)
    damaged = tmp_path / "damaged"
    shutil.copytree(parted_graph, damaged)
    indices = damaged / "parts" / "part-000" / "indices.npy"
    data = np.load(indices)
    data[0] += 1
    np.save(indices, data)
    code = train_main(
        [
            "--graph",
            str(damaged),
            "--cluster.partitioned",
            "true",
            "--cluster.num_workers",
            "2",
            "--run.output_dir",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "indices.npy" in err and "checksum" in err
    code = train_main(
        [
            "--graph",
            str(parted_graph),
            "--cluster.partitioned",
            "true",
            "--cluster.num_workers",
            "4",
            "--run.output_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 2 and "holds 2 partitions, but 4 were requested" in capsys.readouterr().err
    code = train_main(
        [
            "--graph",
            str(parted_graph),
            "--cluster.partitioned",
            "true",
            "--model.name",
            "sage",
            "--cluster.num_workers",
            "2",
            "--run.output_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 2 and "not 'sage'" in capsys.readouterr().err
    code = train_main(
        [
            "--graph",
            str(parted_graph),
            "--cluster.partitioned",
            "true",
            "--optim.hard_negative_pool",
            "4",
            "--cluster.num_workers",
            "2",
            "--run.output_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert code == 2 and "optim.hard_negative_pool" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_two_ray_workers_train_on_their_parts_and_survive_a_crash(parted_graph, tmp_path, ray_session):
    """Ray Train with 2 workers, each loading only its part; worker 0 dies in epoch 2 and both
    resume from their own checkpoint shards. Export's loader reads the best shards (no process
    joined them), and the workers wrote samples.csv."""
    from distgnn.core.checkpoint import load_checked, shard_file
    from distgnn.serving.export import load_run
    from distgnn.training.launcher import launch
    from distgnn.training.partitioned import SHARDS_DIR

    job = tiny_job(
        parted_graph,
        **{
            "optim.epochs": 4,
            "run.crash_at_epoch": 2,
            "cluster.num_workers": 2,
            "cluster.partitioned": True,
            "optim.batch_size": 256,
        },
    )
    run_dir = create_run_dir(job, str(tmp_path), "run")
    results = launch(job, run_dir)
    assert (run_dir / ".crashed-once").exists()
    assert [h["epoch"] for h in read_history(run_dir)] == [0, 1, 2, 3]
    assert results["partitioned"] and results["test"]["recall@20"] > 1.4 * results["popularity_test"]["recall@20"]
    table = load_run(run_dir)[1].embedding.weight
    assert table.shape == (load_graph(parted_graph).num_nodes, 32)
    for part in range(2):  # every row is its owner's best row
        shard = load_checked(shard_file(run_dir / SHARDS_DIR, part), "model shard")
        assert torch.equal(table[shard["nodes"]], shard["model"]["embedding.weight"])
    assert json.loads((run_dir / "results.json").read_text())["test"] == results["test"]
    assert len((run_dir / "samples.csv").read_text().splitlines()) == 1 + 50


def test_row_chunks_bound_entries_and_cover_every_row():
    from distgnn.training.partitioned import row_chunks

    indptr = torch.tensor([0, 2, 3, 13, 14, 15, 16, 20])  # row 2 holds 10 entries
    chunks = row_chunks(indptr, max_entries=4)
    assert chunks[0] == (0, 2) and (2, 3) in chunks and chunks[-1][1] == 7
    assert all(a == b for (_, a), (b, _) in zip(chunks, chunks[1:]))
    assert all(int(indptr[e] - indptr[s]) <= 4 or e - s == 1 for s, e in chunks)
