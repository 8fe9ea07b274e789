"""The evaluation protocol on a graph directory: which users are scored, what is excluded, what
counts as truth. Used by training (validation, the final test), export (the recomputed test) and
the baselines, so every number distgnn prints is computed the same way.

Full ranking over the catalogue; training items are excluded, and validation items too at test
time. Each rank scores its share of the users and the metric *sums* are reduced over ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from distgnn.core import dist
from distgnn.data.graph import Graph
from distgnn.eval.baselines import item_knn_scores, item_knn_weights
from distgnn.eval.metrics import CSR, evaluate_popularity, evaluate_ranking, evaluate_scorer, finalize


def eval_split(graph: Graph) -> str:
    """Validate on 'val' when the split has one; otherwise monitor 'test' (no model selection)."""
    return "val" if int(graph.val.counts.sum()) > 0 else "test"


def evaluated_users(num_users: int, max_users: int, seed: int = 0) -> Tensor | None:
    """``[U]`` bool mask of the fixed random sample of ``max_users`` users that evaluation scores
    (the same on every worker and every epoch), or None to score every user."""
    if not 0 < max_users < num_users:
        return None
    mask = torch.zeros(num_users, dtype=torch.bool)
    mask[torch.randperm(num_users, generator=torch.Generator().manual_seed(seed))[:max_users]] = True
    return mask


def rank_users(graph: Graph, split: str, max_users: int = 0) -> Tensor:
    """This rank's share of the users with held-out items in ``split`` (of the sample, if any)."""
    users = torch.nonzero(graph.split(split).counts > 0).flatten()
    mask = evaluated_users(graph.num_users, max_users)
    if mask is not None:
        users = users[mask[users]]
    return users[dist.rank() :: dist.world_size()]


def excluded(graph: Graph, split: str) -> list[CSR]:
    """Items never ranked for ``split``: training items, plus validation items at test time.
    ``graph`` is anything with ``train``/``val`` item sets: a whole graph, or one part's view of
    its users (the partitioned strategy), so both follow this one rule."""
    seen = [graph.train] + ([graph.val] if split == "test" else [])
    return [(s.indptr, s.indices) for s in seen]


def truth(graph: Graph, split: str) -> CSR:
    sets = graph.split(split)
    return sets.indptr, sets.indices


@torch.no_grad()
def evaluate(
    embeddings: Tensor, graph: Graph, split: str, ks: tuple[int, ...], *, batch_size: int, max_users: int = 0
) -> dict[str, float]:
    """Full-ranking metrics on ``split`` ('val' or 'test') from ``[N, d]`` scoring vectors (inner
    product ranks), summed over ranks."""
    sums = evaluate_ranking(
        embeddings[: graph.num_users],
        embeddings[graph.num_users :],
        rank_users(graph, split, max_users),
        excluded(graph, split),
        truth(graph, split),
        list(ks),
        batch_size=batch_size,
    )
    return finalize(dist.all_reduce_sum(sums))


def evaluate_with(
    scorer: Callable[[Tensor], Tensor],
    graph: Graph,
    split: str,
    ks: tuple[int, ...],
    *,
    batch_size: int,
    max_users: int = 0,
) -> dict[str, float]:
    """The protocol for any scorer ``users [B] -> scores [B, num_items]``."""
    sums = evaluate_scorer(
        scorer,
        rank_users(graph, split, max_users),
        excluded(graph, split),
        truth(graph, split),
        list(ks),
        batch_size=batch_size,
    )
    return finalize(dist.all_reduce_sum(sums))


def evaluate_popularity_baseline(
    graph: Graph, split: str, ks: tuple[int, ...], *, batch_size: int, max_users: int = 0
) -> dict[str, float]:
    item_degree = graph.degree[graph.num_users :].to(torch.float32)
    sums = evaluate_popularity(
        item_degree,
        rank_users(graph, split, max_users),
        excluded(graph, split),
        truth(graph, split),
        list(ks),
        batch_size=batch_size,
    )
    return finalize(dist.all_reduce_sum(sums))


@torch.no_grad()
def evaluate_item_knn_baseline(
    graph: Graph,
    split: str,
    ks: tuple[int, ...],
    *,
    neighbors: int,
    batch_size: int,
    max_users: int = 0,
    inverse_user_degree: bool = True,
) -> dict[str, float]:
    """Item-kNN (:mod:`distgnn.eval.baselines`) under the same protocol and users as :func:`evaluate`."""
    weights = item_knn_weights(
        graph.train, graph.num_items, neighbors=neighbors, inverse_user_degree=inverse_user_degree
    )
    return evaluate_with(
        lambda users: item_knn_scores(weights, graph.train, users),
        graph,
        split,
        ks,
        batch_size=batch_size,
        max_users=max_users,
    )
