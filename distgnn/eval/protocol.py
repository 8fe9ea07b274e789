"""The evaluation protocol on a graph directory: which users are scored, what is excluded, what
counts as truth. Used by training (validation, the final test), export (the recomputed test) and
the baselines, so every number distgnn prints is computed the same way.

Full ranking over the catalogue; training items are excluded, and validation items too at test
time. Each rank scores its share of the users and the metric *sums* are reduced over ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from torch import Tensor

from distgnn.core import dist
from distgnn.core.config import EvalConfig
from distgnn.core.files import write_atomic
from distgnn.data.graph import Graph, ItemSets, csr_row_positions, item_sets_from_pairs
from distgnn.eval.baselines import bias_baseline, item_knn_scores, item_knn_weights
from distgnn.eval.metrics import (
    CSR,
    add_sums,
    evaluate_scorer,
    finalize,
    finalize_rating,
    finalize_sampled,
    rating_sums,
    sampled_ranking_sums,
    topk_of_scores,
)
from distgnn.nn.sampler import csr_contains

# A pair scorer: users' vectors [B, d] against items' [C, d] (every pair, [B, C]) or [B, M, d]
# (each user's own items, [B, M]); None = the inner product.
PairScore = Callable[[Tensor, Tensor], Tensor] | None


@dataclass(frozen=True)
class ScoringVectors:
    """Scoring vectors of the nodes an evaluation reads: ``vectors [R, d]`` of the ascending node
    ids ``nodes [R]``, every item among them (they come last: item ids follow user ids), or of
    every node (``nodes`` None: row = node id). Evaluation ranks a sample of the users against all
    items, so it needs all ``[N, d]`` vectors only when it scores every user."""

    vectors: Tensor
    nodes: Tensor | None
    num_users: int

    def __post_init__(self):
        num_items = self.vectors.shape[0] - self.num_user_rows
        assert self.nodes is None or num_items == 0 or int(self.nodes[self.num_user_rows]) == self.num_users

    @property
    def num_user_rows(self) -> int:
        return self.num_users if self.nodes is None else int(torch.searchsorted(self.nodes, self.num_users))

    @property
    def items(self) -> Tensor:
        """``[I, d]`` every item's vector, in item order (a view)."""
        return self.vectors[self.num_user_rows :]

    def users(self, ids: Tensor) -> Tensor:
        """``[n, d]`` the vectors of user indices ``ids`` (each must be among the nodes)."""
        if self.nodes is None:
            return self.vectors[ids]
        rows = torch.searchsorted(self.nodes, ids).clamp_(max=max(self.nodes.numel() - 1, 0))
        assert ids.numel() == 0 or bool((self.nodes[rows] == ids).all()), "a user without a vector"
        return self.vectors[rows]


def as_scoring_vectors(vectors: Tensor | ScoringVectors, num_users: int) -> ScoringVectors:
    """``[N, d]`` vectors of every node (row = node id) as :class:`ScoringVectors`."""
    return vectors if isinstance(vectors, ScoringVectors) else ScoringVectors(vectors, None, num_users)


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
    ``graph`` is anything with ``train_csr`` (the training items, read in place from the CSR) and
    ``val`` item sets: a whole graph, or one part's view of its users (the partitioned strategy),
    so both follow this one rule."""
    return [graph.train_csr] + ([(graph.val.indptr, graph.val.indices)] if split == "test" else [])


def truth(graph: Graph, split: str) -> CSR:
    sets = graph.split(split)
    return sets.indptr, sets.indices


def scored_users(graph: Graph, split: str, e: EvalConfig, *, task: str = "ranking") -> Tensor:
    """``[n]`` ascending user indices whose vectors :func:`evaluate_job` reads on this rank: its
    share of the sample, its users with held-out items for the sampled protocol, its held-out
    pairs' users for the rating task. The rows :class:`ScoringVectors` needs besides the items."""
    users = [rank_users(graph, split, e.max_users)]
    if e.sampled_negatives:
        users.append(rank_users(graph, split))
    if task == "rating":
        users.append(graph.held_out(split, "rating")[0][dist.rank() :: dist.world_size()])
    return torch.unique(torch.cat(users))


@torch.no_grad()
def evaluate(
    embeddings: Tensor | ScoringVectors,
    graph: Graph,
    split: str,
    ks: tuple[int, ...],
    *,
    batch_size: int,
    max_users: int = 0,
    users: Tensor | None = None,
    score: PairScore = None,
) -> dict[str, float]:
    """Full-ranking metrics on ``split`` ('val' or 'test') from ``[N, d]`` scoring vectors (or the
    :class:`ScoringVectors` of the nodes read; inner product ranks, or ``score``), summed over
    ranks. ``users``: this rank's users, default :func:`rank_users`."""
    users = rank_users(graph, split, max_users) if users is None else users
    vectors = as_scoring_vectors(embeddings, graph.num_users)
    item_vec = vectors.items
    if score is None:  # evaluate_ranking's arithmetic, users' rows looked up among the nodes read
        sums = evaluate_scorer(
            lambda chunk: vectors.users(chunk) @ item_vec.T,
            users,
            excluded(graph, split),
            truth(graph, split),
            list(ks),
            batch_size=batch_size,
            num_items=item_vec.shape[0],
            width=item_vec.shape[1],
        )
    else:  # a pair model's scores cost [B, num_items, width]: fewer users at once
        batch_size = max(1, min(batch_size, (1 << 25) // max(1, graph.num_items * item_vec.shape[1])))
        sums = evaluate_scorer(
            lambda chunk: score(vectors.users(chunk), item_vec),
            users,
            excluded(graph, split),
            truth(graph, split),
            list(ks),
            batch_size=batch_size,
        )
    return finalize(dist.all_reduce_sum(sums))


def evaluate_job(
    embeddings: Tensor | ScoringVectors,
    graph: Graph,
    split: str,
    e: EvalConfig,
    *,
    task: str = "ranking",
    score: PairScore = None,
) -> dict:
    """Every metric ``e`` asks for on ``split``: full ranking; RMSE/MAE for the rating task
    (``TrainJobConfig.task``); the sampled-negatives protocol (``eval.sampled_negatives``); cold
    users apart (``eval.cold_users``). The one entry point of training's validation and test, of
    its baselines and of export's recomputed test. ``embeddings``: ``[N, d]`` scoring vectors, or
    the :class:`ScoringVectors` of :func:`scored_users` and the items."""
    results = evaluate(embeddings, graph, split, e.ks, batch_size=e.batch_size, max_users=e.max_users, score=score)
    if task == "rating":
        results.update(evaluate_ratings(embeddings, graph, split))
    if e.sampled_negatives:
        results.update(evaluate_sampled(embeddings, graph, split, e.ks, num_negatives=e.sampled_negatives, score=score))
    if e.cold_users:
        users = rank_users(graph, split, e.max_users)
        train_counts = graph.indptr.index_select(0, users + 1) - graph.indptr.index_select(0, users)
        cold = users[train_counts <= e.cold_users]
        cold_results = evaluate(embeddings, graph, split, e.ks, batch_size=e.batch_size, users=cold, score=score)
        results.update({f"cold/{k}": v for k, v in cold_results.items()})
    return results


RATING_CHUNK = 1 << 16  # held-out pairs predicted at a time


def rating_range(ratings: Tensor) -> tuple[float, float]:
    """Lowest and highest training rating: predictions are clipped to it (the scale is known)."""
    return float(ratings.min()), float(ratings.max())


@torch.no_grad()
def evaluate_ratings(embeddings: Tensor | ScoringVectors, graph: Graph, split: str) -> dict[str, float]:
    """RMSE and MAE of predicted ratings on ``split``'s rating column: the inner product of a
    rating model's scoring vectors (:func:`distgnn.nn.models.scoring_vectors`), clipped to the
    training ratings' range. Each rank predicts its share of the pairs; the sums are reduced."""
    user, item, rating = graph.held_out(split, "rating")
    share = slice(dist.rank(), None, dist.world_size())
    user, item, rating = user[share], item[share], rating[share]
    vectors = as_scoring_vectors(embeddings, graph.num_users)
    # by chunks of pairs: two [pairs, d] gathers of a whole split would be table-sized
    pred = torch.cat(
        [
            (vectors.users(u) * vectors.items[i]).sum(-1)
            for u, i in zip(user.split(RATING_CHUNK), item.split(RATING_CHUNK))
        ]
        or [vectors.vectors.new_zeros(0)]
    )
    low, high = graph.value_range("train", "rating")
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
    embeddings: Tensor | ScoringVectors,
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
    vectors = as_scoring_vectors(embeddings, graph.num_users)
    sums = sampled_ranking_sums(torch.zeros(0), torch.zeros(0, num_negatives), ks)  # a rank with no cases
    for start in range(0, case_user.numel(), batch_size):
        u = case_user[start : start + batch_size]
        items = torch.cat([case_item[start : start + batch_size, None], negatives[start : start + batch_size]], 1)
        scores = score(vectors.users(u), vectors.items[items])
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


# ---------------------------------------------------------------------------------------------------
# Sample recommendations for a person to judge (``RUN/samples.csv``)

SAMPLES_FILE = "samples.csv"


@torch.no_grad()
def top_items(
    score: PairScore, user_vectors: Tensor, item_vectors: Tensor, rows: Tensor, exclude: list[CSR], k: int
) -> tuple[Tensor, Tensor]:
    """``(topk [B, k], scores [B, k])``: each user's best items by ``score`` (a model's
    :meth:`~distgnn.nn.models.Recommender.score`: an MLP for a pair model; None: the inner product)
    of ``user_vectors [B, d]`` against ``item_vectors [I, d]``, leaving out ``exclude`` (CSRs over
    ``rows [B]``, the users' rows); ``-1`` where fewer than k items are left."""
    scores = user_vectors @ item_vectors.T if score is None else score(user_vectors, item_vectors)
    topk = topk_of_scores(scores, rows, exclude, k)
    return topk, scores.gather(1, topk.clamp(min=0))


def sample_users(with_test: Tensor, num_users: int, *, seed: int = 0) -> Tensor:
    """``[num_users]`` user indices drawn (with a fixed seed) from ``with_test``, the ascending user
    indices that have test items: the same users on every worker and in every strategy."""
    order = torch.randperm(with_test.numel(), generator=torch.Generator().manual_seed(seed))
    return with_test[order[:num_users]]


def samples_table(graph_dir: str | Path, users: Tensor, topk: Tensor, scores: Tensor, held_out: Tensor) -> pa.Table:
    """Sample recommendations as a person reads them: user_id, rank, item_id, score, held_out (the
    item is one of the user's test items), then every raw feature column prepare kept in
    items.parquet. ``users [B]`` user indices; ``topk``, ``scores``, ``held_out`` ``[B, k]``."""
    graph_dir = Path(graph_dir)
    k = topk.shape[1]
    item = pa.array(topk.flatten().numpy())
    items = pq.read_table(graph_dir / "items.parquet")
    raw_users = pq.read_table(graph_dir / "users.parquet", columns=["raw_id"])["raw_id"]
    columns = {
        "user_id": raw_users.take(pa.array(users.repeat_interleave(k).numpy())),
        "rank": pa.array(np.tile(np.arange(1, k + 1), users.numel())),
        "item_id": items["raw_id"].take(item),
        "score": pa.array(scores.flatten().numpy()),
        "held_out": pa.array(held_out.flatten().numpy()),
    }
    for name in items.column_names:
        if name not in ("index", "raw_id"):
            columns[name] = items[name].take(item)
    return pa.table(columns)


def write_samples_csv(table: pa.Table, path: str | Path) -> Path:
    """``table`` as CSV, written atomically."""
    write_atomic(Path(path), lambda tmp: pacsv.write_csv(table, str(tmp)))
    return Path(path)
