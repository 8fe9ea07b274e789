"""Item-kNN baseline: similarity and scores against a dense brute-force computation; on planted
data it must beat popularity under the training protocol."""

import pytest
import torch

from distgnn.data.graph import ItemSets, load_graph
from distgnn.eval.baselines import item_knn_scores, item_knn_weights, item_transpose
from distgnn.eval.protocol import evaluate_item_knn_baseline, evaluate_popularity_baseline


def _random_sets(num_users=60, num_items=25, density=0.2, seed=0):
    x = (torch.rand(num_users, num_items, generator=torch.Generator().manual_seed(seed)) < density).float()
    indptr = torch.zeros(num_users + 1, dtype=torch.long)
    torch.cumsum(x.sum(1).long(), 0, out=indptr[1:])
    return x, ItemSets(indptr, x.nonzero()[:, 1])


def _dense_cosine(x, inverse_user_degree=False):
    norm = x.sum(0).sqrt().clamp(min=1.0)
    user_weight = 1.0 / x.sum(1).clamp(min=1.0) if inverse_user_degree else torch.ones(x.shape[0])
    sim = (x.T @ (x * user_weight[:, None])) / norm[:, None] / norm[None, :]
    return sim.fill_diagonal_(0.0)  # sim[i, j]


def test_item_transpose_lists_each_items_users():
    x, sets = _random_sets()
    by_item = item_transpose(sets, x.shape[1])
    for item in range(x.shape[1]):
        users = by_item.indices[by_item.indptr[item] : by_item.indptr[item + 1]]
        assert users.tolist() == x[:, item].nonzero().flatten().tolist()


@pytest.mark.parametrize("inverse_user_degree", [False, True])
def test_item_knn_with_every_neighbor_is_the_dense_cosine(inverse_user_degree):
    x, sets = _random_sets()
    weights = item_knn_weights(
        sets,
        x.shape[1],
        neighbors=x.shape[1],
        block=7,  # blocks not dividing I
        inverse_user_degree=inverse_user_degree,
    )
    sim = _dense_cosine(x, inverse_user_degree)
    torch.testing.assert_close(weights.to_dense(), sim.T)
    users = torch.tensor([3, 0, 17, 59])
    torch.testing.assert_close(item_knn_scores(weights, sets, users), x[users] @ sim)


def test_item_knn_keeps_each_items_k_most_similar():
    x, sets = _random_sets(seed=1)
    k = 4
    dense = item_knn_weights(sets, x.shape[1], neighbors=k, block=5, inverse_user_degree=False).to_dense()
    sim = _dense_cosine(x)
    for j in range(x.shape[1]):
        kept = dense[j][dense[j] > 0]
        assert kept.numel() <= k
        expected = torch.topk(sim[:, j], k).values
        torch.testing.assert_close(kept.sort(descending=True).values, expected[expected > 0])


def test_item_knn_beats_popularity_on_planted_data(tiny_graph):
    graph = load_graph(tiny_graph)
    knn = evaluate_item_knn_baseline(graph, "test", (20,), neighbors=50, batch_size=256)
    pop = evaluate_popularity_baseline(graph, "test", (20,), batch_size=256)
    assert knn["num_users"] == pop["num_users"] > 0
    assert knn["recall@20"] > 1.3 * pop["recall@20"], (knn, pop)
