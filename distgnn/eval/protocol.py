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
from distgnn.core.config import EvalConfig
from distgnn.data.graph import Graph, ItemSets, csr_row_positions, item_sets_from_pairs
from distgnn.eval.baselines import bias_baseline, item_knn_scores, item_knn_weights
from distgnn.eval.metrics import (
    CSR,
    add_sums,
    evaluate_ranking,
    evaluate_scorer,
    finalize,
    finalize_rating,
    finalize_sampled,
    rating_sums,
    sampled_ranking_sums,
)
from distgnn.nn.sampler import csr_contains

# A pair scorer: users' vectors [B, d] against items' [C, d] (every pair, [B, C]) or [B, M, d]
# (each user's own items, [B, M]); None = the inner product.
PairScore = Callable[[Tensor, Tensor], Tensor] | None


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
    embeddings: Tensor,
    graph: Graph,
    split: str,
    ks: tuple[int, ...],
    *,
    batch_size: int,
    max_users: int = 0,
    users: Tensor | None = None,
    score: PairScore = None,
) -> dict[str, float]:
    """Full-ranking metrics on ``split`` ('val' or 'test') from ``[N, d]`` scoring vectors (inner
    product ranks, or ``score``), summed over ranks. ``users``: this rank's users, default
    :func:`rank_users`."""
    users = rank_users(graph, split, max_users) if users is None else users
    user_vec, item_vec = embeddings[: graph.num_users], embeddings[graph.num_users :]
    if score is None:
        sums = evaluate_ranking(
            user_vec, item_vec, users, excluded(graph, split), truth(graph, split), list(ks), batch_size=batch_size
        )
    else:  # a pair model's scores cost [B, num_items, width]: fewer users at once
        batch_size = max(1, min(batch_size, (1 << 25) // max(1, graph.num_items * embeddings.shape[1])))
        sums = evaluate_scorer(
            lambda chunk: score(user_vec[chunk], item_vec),
            users,
            excluded(graph, split),
            truth(graph, split),
            list(ks),
            batch_size=batch_size,
        )
    return finalize(dist.all_reduce_sum(sums))


def evaluate_job(
    embeddings: Tensor, graph: Graph, split: str, e: EvalConfig, *, task: str = "ranking", score: PairScore = None
) -> dict:
    """Every metric ``e`` asks for on ``split``: full ranking; RMSE/MAE for the rating task
    (``TrainJobConfig.task``); the sampled-negatives protocol (``eval.sampled_negatives``); cold
    users apart (``eval.cold_users``). The one entry point of training's validation and test, of
    its baselines and of export's recomputed test."""
    results = evaluate(embeddings, graph, split, e.ks, batch_size=e.batch_size, max_users=e.max_users, score=score)
    if task == "rating":
        results.update(evaluate_ratings(embeddings, graph, split))
    if e.sampled_negatives:
        results.update(evaluate_sampled(embeddings, graph, split, e.ks, num_negatives=e.sampled_negatives, score=score))
    if e.cold_users:
        users = rank_users(graph, split, e.max_users)
        cold = users[graph.train.counts[users] <= e.cold_users]
        cold_results = evaluate(embeddings, graph, split, e.ks, batch_size=e.batch_size, users=cold, score=score)
        results.update({f"cold/{k}": v for k, v in cold_results.items()})
    return results


def rating_range(ratings: Tensor) -> tuple[float, float]:
    """Lowest and highest training rating: predictions are clipped to it (the scale is known)."""
    return float(ratings.min()), float(ratings.max())


@torch.no_grad()
def evaluate_ratings(embeddings: Tensor, graph: Graph, split: str) -> dict[str, float]:
    """RMSE and MAE of predicted ratings on ``split``'s rating column: the inner product of a
    rating model's scoring vectors (:func:`distgnn.nn.models.scoring_vectors`), clipped to the
    training ratings' range. Each rank predicts its share of the pairs; the sums are reduced."""
    user, item, rating = graph.held_out(split, "rating")
    share = slice(dist.rank(), None, dist.world_size())
    user, item, rating = user[share], item[share], rating[share]
    pred = (embeddings[user] * embeddings[graph.num_users + item]).sum(-1)
    low, high = rating_range(graph.train_values("rating"))
    return finalize_rating(dist.all_reduce_sum(rating_sums(pred.clamp(low, high), rating)))


def evaluate_rating_baselines(graph: Graph, split: str) -> dict[str, dict[str, float]]:
    """The global mean rating and the regularised user + item bias model (:func:`bias_baseline`),
    fitted on the training ratings, scored like :func:`evaluate_ratings` (every rank computes the
    same numbers: no collective)."""
    train_user, train_item = graph.train_edges
    ratings = graph.train_values("rating")
    mean, user_bias, item_bias = bias_baseline(train_user, train_item, ratings, graph.num_users, graph.num_items)
    user, item, target = graph.held_out(split, "rating")
    low, high = rating_range(ratings)
    predictions = {
        "global_mean": torch.full_like(target, mean),
        "user_item_bias": (mean + user_bias[user] + item_bias[item]).clamp(low, high),
    }
    return {name: finalize_rating(rating_sums(pred, target)) for name, pred in predictions.items()}


def interacted(graph: Graph) -> ItemSets:
    """Every item each user has interacted with, in any split (what sampled negatives avoid)."""
    pairs = [graph.train_edges] + [
        (torch.repeat_interleave(torch.arange(graph.num_users), s.counts), s.indices) for s in (graph.val, graph.test)
    ]
    user = torch.cat([u for u, _ in pairs]).numpy()
    item = torch.cat([i for _, i in pairs]).numpy()
    return item_sets_from_pairs(user, item, graph.num_users)


def sampled_negatives(seen: ItemSets, users: Tensor, num_items: int, num: int, *, seed: int = 0) -> Tensor:
    """``[n, num]`` item indices drawn uniformly (with replacement) among the items ``users [n]``
    never interacted with. Vectorised rejection: redraw only the cells that hit a seen item; each
    round keeps a user's fraction of unseen items, so few rounds suffice."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(num_items, (users.numel(), num), generator=generator)
    rows = users.repeat_interleave(num)
    bad = torch.arange(draws.numel())
    while bad.numel():
        flat = draws.view(-1)
        hit = csr_contains(seen.indptr, seen.indices, rows[bad], flat[bad])
        bad = bad[hit]
        flat[bad] = torch.randint(num_items, (bad.numel(),), generator=generator)
    return draws


@torch.no_grad()
def evaluate_sampled(
    embeddings: Tensor,
    graph: Graph,
    split: str,
    ks: tuple[int, ...],
    *,
    num_negatives: int,
    score: PairScore = None,
    batch_size: int = 4096,
) -> dict[str, float]:
    """The sampled-negatives protocol on ``split``: every held-out (user, item) pair of this rank's
    users is ranked against ``num_negatives`` items the user never interacted with, drawn with a
    fixed seed (the same candidates every epoch and for every model)."""
    users = rank_users(graph, split)
    sets = graph.split(split)
    segment, position = csr_row_positions(sets.indptr, users)
    case_user, case_item = users[segment], sets.indices[position]
    seen = interacted(graph)
    keep = seen.counts[case_user] < graph.num_items  # a user who has seen every item has no negatives
    case_user, case_item = case_user[keep], case_item[keep]
    negatives = sampled_negatives(seen, case_user, graph.num_items, num_negatives)
    score = score or (lambda u, v: torch.einsum("bd,bmd->bm", u, v))
    sums = sampled_ranking_sums(torch.zeros(0), torch.zeros(0, num_negatives), ks)  # a rank with no cases
    for start in range(0, case_user.numel(), batch_size):
        u = case_user[start : start + batch_size]
        items = torch.cat([case_item[start : start + batch_size, None], negatives[start : start + batch_size]], 1)
        scores = score(embeddings[u], embeddings[graph.num_users + items])
        sums = add_sums(sums, sampled_ranking_sums(scores[:, 0], scores[:, 1:], ks))
    return finalize_sampled(dist.all_reduce_sum(sums))


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


def popularity_vectors(graph: Graph) -> Tensor:
    """``[N, 1]`` scoring vectors of the most-popular baseline: users 1, items their training degree
    (float64, so that degrees above 2**24 do not tie), for :func:`evaluate_job`'s every protocol."""
    vectors = graph.degree.to(torch.float64).reshape(-1, 1).clone()
    vectors[: graph.num_users] = 1.0
    return vectors


def evaluate_popularity_baseline(
    graph: Graph, split: str, ks: tuple[int, ...], *, batch_size: int, max_users: int = 0
) -> dict[str, float]:
    """Full-ranking metrics of the most-popular baseline (:func:`popularity_vectors`)."""
    return evaluate(popularity_vectors(graph), graph, split, ks, batch_size=batch_size, max_users=max_users)


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
