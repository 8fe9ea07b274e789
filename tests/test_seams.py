"""Direct tests at the seams between stages: each one fails on a small change that the rest of the
suite let through (listed in the issue's mutation spot-check), instead of catching it incidentally."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import distgnn
import distgnn.serving.export as export_module
import distgnn.training.objective
from distgnn.data.graph import load_graph
from distgnn.data.partition import load_partition
from distgnn.eval.protocol import evaluate
from distgnn.nn.models import LightGCN, full_graph_embeddings, sampled_adjacency
from distgnn.serving.export import export
from distgnn.training.partitioned import PartitionedNeighborSampler
from distgnn.training.replicated import Replicated

from test_partitioned import parted_graph  # noqa: F401  (fixture)
from test_train import spy, tiny_job
from test_trust import run_and_export  # noqa: F401  (fixture)


def test_partitioned_negatives_are_never_the_users_positives(parted_graph):  # noqa: F811
    """Mutation: the partitioned sampler's negatives ignoring the user's positives."""
    graph = load_graph(parted_graph)
    part = load_partition(parted_graph, 0, num_parts=2)
    sampler = PartitionedNeighborSampler(part, [10, 10], seed=0)
    users = part.nodes[part.nodes < part.num_users]
    heavy = users[(graph.train.counts[users] > 0.2 * graph.num_items).nonzero().flatten()]
    users = torch.cat([users, heavy.repeat(50)])  # users who own many items: collisions are likely
    negatives = sampler.sample_negative_items(users, 8)
    assert negatives.shape == (users.numel(), 8)
    assert bool(((negatives >= graph.num_users) & (negatives < graph.num_nodes)).all())
    positive_pairs = set(zip(*[t.tolist() for t in graph.train_edges]))
    drawn = zip(users.repeat_interleave(8).tolist(), (negatives.flatten() - graph.num_users).tolist())
    assert not [pair for pair in drawn if pair in positive_pairs]


def test_sampled_adjacency_scales_by_the_sampled_count_not_the_degree():
    """Mutation: sampled LightGCN weights losing their sampling factor (s_v replaced by d_v). The
    full-graph equality test uses fanout -1, where the two are the same; here s_v < d_v."""
    degree = torch.tensor([4, 1, 1, 9, 16])  # node 0 has 4 neighbors, 2 of them sampled
    n_id = torch.tensor([0, 3, 4])  # local 0 = node 0, local 1 = node 3, local 2 = node 4
    row, col = torch.tensor([1, 2]), torch.tensor([0, 0])  # messages 3 -> 0 and 4 -> 0
    adj = sampled_adjacency(n_id, row, col, degree).to_dense()
    # w = sqrt(d_v) / (s_v sqrt(d_u)): sqrt(4) / (2 * 3) and sqrt(4) / (2 * 4)
    assert adj[0].tolist() == pytest.approx([0.0, 1 / 3, 1 / 4])
    assert adj[1:].abs().sum() == 0


def test_softmax_masks_the_users_other_positives(tiny_graph, monkeypatch):
    """Mutation: link_loss passing no mask of the other positives."""
    job = tiny_job(tiny_graph, **{"optim.log_q": False, "optim.num_negatives": 8})
    strategy = Replicated(job)
    loader, _ = strategy.make_loader(0)
    batch = next(iter(loader))
    calls = []
    spy(monkeypatch, distgnn.training.objective, "sampled_softmax_loss", calls)
    strategy.loss(batch)
    [(args, kwargs, _)] = calls
    rows, cols = kwargs["masked"]
    assert rows.numel() > 0
    graph = strategy.graph
    users = batch.n_id[batch.src_index]
    candidates = torch.unique(torch.cat([batch.dst_pos_index, batch.dst_neg_index.flatten()]))
    cand_items = batch.n_id[candidates] - graph.num_users
    positives = set(zip(*[t.tolist() for t in graph.train_edges]))
    expected = {
        (b, c)
        for b in range(users.numel())
        for c in range(cand_items.numel())
        if (int(users[b]), int(cand_items[c])) in positives
    }
    assert set(zip(rows.tolist(), cols.tolist())) == expected


def test_evaluation_never_ranks_training_items(tiny_graph):
    """Mutation: evaluation without train-item exclusion. Scores that put every training item on
    top must still give the recall of ranking the other items."""
    graph = load_graph(tiny_graph)
    torch.manual_seed(0)
    dim = graph.num_items
    emb = torch.zeros(graph.num_nodes, dim)
    emb[graph.num_users :] = torch.eye(dim)
    user, item = graph.train_edges
    emb[user, item] = 10.0  # each user's own training items score highest
    emb[: graph.num_users] += 0.01 * torch.rand(graph.num_users, dim)
    got = evaluate(emb, graph, "test", (20,), batch_size=256)
    # by hand: each user's top 20 among the items that are not training items
    scores = emb[: graph.num_users] @ emb[graph.num_users :].T
    scores[user, item] = -float("inf")
    top = torch.topk(scores, 20).indices
    hits, users = 0.0, 0
    for u in range(graph.num_users):
        truth = set(graph.test.indices[graph.test.indptr[u] : graph.test.indptr[u + 1]].tolist())
        if truth:
            hits += len(truth & set(top[u].tolist())) / len(truth)
            users += 1
    assert got["recall@20"] == pytest.approx(hits / users, rel=1e-6) and got["recall@20"] > 0


def test_lightgcn_output_is_the_mean_of_its_layers_by_hand():
    """Mutation: the layer mean dropped (the output = last layer, or the sum)."""
    # path graph user 0 - item 0 (node 1) - user 1 (node 2): degrees 1, 2, 1
    indptr, indices = torch.tensor([0, 1, 3, 4]), torch.tensor([1, 0, 2, 1])
    model = LightGCN(3, 2, num_layers=2)
    x0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    model.embedding.weight.data.copy_(x0)
    a = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float32)
    d = a.sum(1)
    norm = a / torch.sqrt(d[:, None] * d[None, :])
    expected = (x0 + norm @ x0 + norm @ norm @ x0) / 3
    assert torch.allclose(full_graph_embeddings(model, indptr, indices), expected, atol=1e-6)


def test_seen_parquet_holds_every_known_interaction_and_recommend_skips_them(run_and_export):  # noqa: F811
    """Mutations: load_export building an empty seen set; seen.parquet holding only training
    interactions. The truth comes from the graph's own files, not from the export."""
    run_dir, exported = run_and_export
    graph_dir = Path(json.loads((exported / "manifest.json").read_text())["graph"])
    known = set()
    for split in ("train", "val", "test"):
        t = pq.read_table(graph_dir / f"{split}.parquet", columns=["user", "item"])
        known |= set(zip(t["user"].to_pylist(), t["item"].to_pylist()))
    seen = pq.read_table(exported / "seen.parquet")
    assert set(zip(seen["user"].to_pylist(), seen["item"].to_pylist())) == known
    rec = distgnn.load_export(exported)
    users = rec.user_ids.to_pylist()[:200]
    table = rec.recommend(users, k=20)
    user_index = {u: i for i, u in enumerate(rec.user_ids.to_pylist())}
    item_index = {str(v): i for i, v in enumerate(rec.item_ids)}
    pairs = {
        (user_index[u], item_index[str(i)]) for u, i in zip(table["user_id"].to_pylist(), table["item_id"].to_pylist())
    }
    assert pairs and not pairs & known


def test_export_is_written_aside_and_the_manifest_last(run_and_export, tmp_path, monkeypatch):  # noqa: F811
    """Mutations: the export written in place, or the manifest before the data files."""
    run_dir, exported = run_and_export
    out = tmp_path / "exp"
    export(run_dir, out, indexes=("flat",))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    observed = {}
    real_save_index = export_module.save_index

    def save_and_look(index, path):
        real_save_index(index, path)
        observed["final"] = {p.name: p.read_bytes() for p in out.iterdir()}
        observed["tmp_has_manifest"] = (Path(path).parent / "manifest.json").exists()
        observed["tmp"] = Path(path).parent

    monkeypatch.setattr(export_module, "save_index", save_and_look)
    export(run_dir, out, indexes=("flat",))
    assert observed["final"] == before  # the published folder is untouched while the new one is written
    assert observed["tmp"] != out and not observed["tmp_has_manifest"]
    assert not observed["tmp"].exists() and (out / "manifest.json").is_file()
