import torch

from distgnn.data.graph import load_graph
from distgnn.nn import models
from distgnn.nn.losses import bpr_loss, info_nce, sampled_softmax_loss
from distgnn.nn.models import (
    LightGCN,
    build_model,
    exact_vectors,
    full_adjacency,
    full_graph_embeddings,
    lightgcn_edge_weight,
    sampled_adjacency,
)
from distgnn.nn.sampler import sample_subgraph

from test_train import tiny_job


def test_edge_weight_is_symmetric_normalisation_when_nothing_is_dropped():
    degree = torch.tensor([4, 1, 9])
    w = lightgcn_edge_weight(degree, torch.tensor([0, 2]), torch.tensor([2, 1]), num_sampled=torch.tensor([9, 1]))
    assert torch.allclose(w, torch.tensor([1 / (2 * 3), 1 / 3]))


def test_sampled_weights_are_unbiased():
    # a node of degree 4 sampled 2 at a time: the mean sampled propagation equals the exact one
    degree = torch.tensor([4, 1, 1, 1, 1])
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    exact = sum(x[u] / (degree[u] * degree[0]).sqrt() for u in range(1, 5))
    estimates = []
    for a in range(1, 5):
        for b in range(a + 1, 5):
            src = torch.tensor([a, b])
            w = lightgcn_edge_weight(degree, src, torch.tensor([0, 0]), torch.tensor([2, 2]))
            estimates.append((w[:, None] * x[src]).sum(0))
    assert torch.allclose(torch.stack(estimates).mean(0), exact)


def test_sampled_forward_with_all_neighbors_equals_full_graph(tiny_graph):
    """The mini-batch LightGCN over an unsampled (fanout -1) subgraph is the exact full-graph model."""
    g = load_graph(tiny_graph)
    torch.manual_seed(0)
    model = LightGCN(g.num_nodes, 8, num_layers=2)
    seeds = torch.tensor([0, 5, g.num_users + 3, g.num_users + 50])
    out = sample_subgraph(g.indptr, g.indices, seeds, [-1, -1])
    adj_t = sampled_adjacency(out.node, out.row, out.col, g.degree)
    with torch.no_grad():
        sampled = model(out.node, adj_t)[: seeds.numel()]
    exact = full_graph_embeddings(model, g.indptr, g.indices, chunk_size=97)[seeds]
    assert torch.allclose(sampled, exact, atol=1e-6)


def test_layerwise_chunks_equal_one_shot_for_every_model(tiny_graph):
    g = load_graph(tiny_graph)
    features = torch.randn(g.num_nodes, 5)
    for name in ("lightgcn", "sage", "mf"):
        torch.manual_seed(0)
        model = build_model(name, num_nodes=g.num_nodes, dim=8, num_layers=2, features=features).eval()
        with torch.no_grad():
            one_shot = model(torch.arange(g.num_nodes), full_adjacency(g.indptr, g.indices))
        chunked = full_graph_embeddings(model, g.indptr, g.indices, chunk_size=61)
        assert torch.allclose(one_shot, chunked, atol=1e-5), name


def test_chunks_bounded_by_entries_change_no_bit(tiny_graph, monkeypatch):
    """Rows cut into pieces of at most 50 adjacency entries give the same bits as whole chunks, for a
    middle layer (3 layers) and for GraphSAGE's dense projections (never a 1- or 2-row product), and
    so do the outputs of a subset of rows (a few users, every item)."""
    g = load_graph(tiny_graph)
    features = torch.randn(g.num_nodes, 5, generator=torch.Generator().manual_seed(1))
    rows = torch.cat([torch.tensor([3, 17, 18, 400]), torch.arange(g.num_users, g.num_nodes)])  # what evaluation reads
    for name, layers in (("lightgcn", 3), ("sage", 2)):
        torch.manual_seed(0)
        model = build_model(name, num_nodes=g.num_nodes, dim=8, num_layers=layers, features=features).eval()
        monkeypatch.setattr(models, "MAX_CHUNK_ENTRIES", 1 << 30)
        whole = full_graph_embeddings(model, g.indptr, g.indices, chunk_size=61)
        monkeypatch.setattr(models, "MAX_CHUNK_ENTRIES", 50)
        assert torch.equal(full_graph_embeddings(model, g.indptr, g.indices, chunk_size=61), whole), name
        subset = full_graph_embeddings(model, g.indptr, g.indices, chunk_size=61, rows=rows)
        assert torch.equal(subset, whole[rows]), name


def test_exact_vectors_are_the_dense_model_normalised_with_its_bias_column(tiny_graph):
    """The vectors built in one buffer against the dense computation: ``mean_l A^l x`` normalised
    for cosine, then ``[1 | t * b]``; the embeddings are computed into the buffer itself."""
    g = load_graph(tiny_graph)
    job = tiny_job(tiny_graph, **{"model.item_bias": True, "optim.loss": "softmax", "optim.temperature": 0.2})
    torch.manual_seed(0)
    model = build_model("lightgcn", num_nodes=g.num_nodes, dim=8, num_layers=2, item_bias=True)
    torch.nn.init.normal_(model.bias_embedding.weight)
    with torch.no_grad():
        a = full_adjacency(g.indptr, g.indices).to_dense()
        x = model.embedding.weight
        dense = (x + a @ x + a @ (a @ x)) / 3
        expected = torch.cat([torch.nn.functional.normalize(dense, dim=-1), 0.2 * model.bias_embedding.weight], 1)
    expected[: g.num_users, 8] = 1.0
    assert job.cosine_scores
    vectors = exact_vectors(model, g, job, chunk_size=97)
    assert vectors.shape == (g.num_nodes, 9)
    torch.testing.assert_close(vectors, expected, rtol=1e-5, atol=1e-6)
    rows = torch.cat([torch.tensor([0, 9, 100]), torch.arange(g.num_users, g.num_nodes)])
    assert torch.equal(exact_vectors(model, g, job, chunk_size=97, rows=rows), vectors[rows])
    buffer = torch.empty(g.num_nodes, 9)
    assert full_graph_embeddings(model, g.indptr, g.indices, out=buffer[:, :8]).data_ptr() == buffer.data_ptr()


def test_bpr_by_hand():
    u, p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.isclose(bpr_loss(u, p, n), torch.nn.functional.softplus(torch.tensor(-2.0)))


def test_sampled_softmax_by_hand_and_masking():
    user = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = sampled_softmax_loss(user, items, torch.tensor([0]), temperature=1.0)
    e = torch.exp(torch.tensor([1.0, 0.0, 1.0]))
    assert torch.isclose(loss, -torch.log(e[0] / e.sum()))
    # cell (0, 2) masked; (0, 0) is the target and stays even when listed
    masked = sampled_softmax_loss(
        user, items, torch.tensor([0]), temperature=1.0, masked=(torch.tensor([0, 0]), torch.tensor([0, 2]))
    )
    assert torch.isclose(masked, -torch.log(e[0] / (e[0] + e[1])))
    # log-q correction: subtracting log q from each logit, by hand
    log_q = torch.tensor([0.5, -1.0, 2.0])
    corrected = sampled_softmax_loss(user, items, torch.tensor([0]), temperature=1.0, log_q=log_q)
    z = torch.exp(torch.tensor([1.0, 0.0, 1.0]) - log_q)
    assert torch.isclose(corrected, -torch.log(z[0] / z.sum()))
    # a learned item offset adds to the (corrected) logits; cosines are divided by the temperature
    bias = torch.tensor([-0.3, 0.2, 1.5], requires_grad=True)
    biased = sampled_softmax_loss(user, 3 * items, torch.tensor([0]), temperature=0.5, log_q=log_q, item_bias=bias)
    z = torch.exp(torch.tensor([1.0, 0.0, 1.0]) / 0.5 + bias.detach() - log_q)
    assert torch.isclose(biased, -torch.log(z[0] / z.sum()))
    biased.backward()  # d loss / d b = softmax - one-hot target
    assert torch.allclose(bias.grad, z / z.sum() - torch.tensor([1.0, 0.0, 0.0]))


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    # cosines: row 0 vs (1, 0.7071), row 1 vs (0, 0.7071); targets on the diagonal
    c = torch.tensor([[1.0, 2**-0.5], [0.0, 2**-0.5]]) / 0.5
    expected = -(torch.log_softmax(c, dim=1).diagonal()).mean()
    assert torch.isclose(info_nce(a, b, temperature=0.5), expected)


def test_simgcl_noise_moves_each_layer_by_its_norm_within_the_orthant():
    torch.manual_seed(0)
    model = LightGCN(num_nodes=4, dim=8, num_layers=1)
    x = torch.randn(4, 8)
    adj_t = torch.eye(4).to_sparse_csr()  # one layer of identity propagation: layer output = x
    clean = model.propagate(x, adj_t)
    noisy = model.propagate(x, adj_t, noise=0.3)
    shift = (noisy - clean) * 2  # the layer mean halves the layer's perturbation
    assert torch.allclose(shift.norm(dim=-1), torch.full((4,), 0.3), atol=1e-5)
    assert bool((torch.sign(shift) == torch.sign(x)).all())


def test_trimmed_propagation_equals_full_on_the_seeds(tiny_graph):
    """Computing each layer only for the nodes later layers read gives the seeds the same output."""
    g = load_graph(tiny_graph)
    torch.manual_seed(0)
    model = LightGCN(g.num_nodes, 16, num_layers=3)
    sub = sample_subgraph(
        g.indptr, g.indices, torch.tensor([0, 3, 900, 1000]), [5, 5, 5], generator=torch.Generator().manual_seed(1)
    )
    adj_t = sampled_adjacency(sub.node, sub.row, sub.col, g.degree)
    full = model(sub.node, adj_t)
    trimmed = model(sub.node, adj_t, sub.num_sampled_nodes)
    assert trimmed.shape == (4, 16) and torch.allclose(trimmed, full[:4], atol=1e-6)
