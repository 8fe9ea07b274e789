"""Ranking and rating metrics: pure functions on tensors, no I/O and no ``torch.distributed``.

Items are 0-based item indices ``0 .. num_items-1`` (not the homogeneous node ids of
:mod:`distgnn.data.graph`). Per-user item sets (training items to exclude, validation or test truth) come
as CSR ``indptr [U+1]`` / ``indices [nnz]`` int64 tensors indexed by user index, each row sorted and
without duplicates.

The ranking functions return **sums** over users, never means, so that workers holding different
numbers of users can all-reduce the sums and divide once (:func:`finalize`). Definitions follow
LightGCN's reference code (``Procedure.Test`` / ``utils.py``), with binary relevance:

- ``recall@k`` = hits in the top k / |truth|
- ``precision@k`` = hits in the top k / k
- ``ndcg@k`` = DCG / IDCG, DCG = sum over hit ranks r (1-based) of 1 / log2(r + 1), IDCG the same sum
  over the first min(|truth|, k) ranks
- ``hr@k`` = 1 if any hit in the top k
- ``mrr@k`` = 1 / rank of the first hit within the top k, else 0

Users without any truth item are skipped entirely and not counted in ``num_users``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from distgnn.data.graph import csr_row_positions

CSR = tuple[Tensor, Tensor]

# Scores one chunk of evaluation may hold (128 MiB of float32): users are scored a few at a time
# against a large catalogue, never ``batch_size x num_items`` at once (2048 x 1M items = 8 GB).
MAX_CHUNK_SCORES = 1 << 25

RANKING_METRICS = ("recall", "precision", "ndcg", "hr", "mrr")


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of positive cutoffs, got {ks}")
    return ks


def _row_counts(indptr: Tensor, rows: Tensor) -> Tensor:
    return indptr[rows + 1] - indptr[rows]


def topk_items(
    user_emb: Tensor,
    item_emb: Tensor,
    users: Tensor,
    exclude: Sequence[CSR],
    k: int,
) -> Tensor:
    """Top-k items per user by inner product, excluding each user's already-seen items.

    ``scores [B, num_items] = user_emb @ item_emb.T``; the items listed in each user's row of every
    CSR in ``exclude`` (e.g. training items, plus validation items at test time) are set to ``-inf``
    with one vectorised scatter per CSR, then ``torch.topk``.

    Args:
        user_emb: ``[B, d]`` embeddings of the users in ``users`` (row i belongs to ``users[i]``).
        item_emb: ``[num_items, d]`` embeddings of all items.
        users: ``[B]`` int64 user indices, used to look up the rows of the ``exclude`` CSRs.
        exclude: list of ``(indptr [U+1], indices [nnz])`` CSRs of items to exclude per user
            (``indices`` only indexed by positions: a tensor, or a view such as
            :class:`~distgnn.data.graph.ShiftedIndices`).
        k: number of items to return.

    Returns:
        ``[B, k]`` int64 item indices, best first. When a user has fewer than ``k`` candidate items
        (``k`` > num_items minus the user's excluded items), the trailing slots are ``-1``: excluded
        items never come back, so they can never count as hits.
    """
    if user_emb.shape[0] != users.numel():
        raise ValueError(f"user_emb has {user_emb.shape[0]} rows but users has {users.numel()} entries")
    return topk_of_scores(user_emb @ item_emb.T, users, exclude, k)


def topk_of_scores(scores: Tensor, users: Tensor, exclude: Sequence[CSR], k: int) -> Tensor:
    """:func:`topk_items` from ready scores ``[B, num_items]`` (overwritten in place): for scorers
    that are not an inner product, such as item-kNN."""
    num_items = scores.shape[1]
    for indptr, indices in exclude:
        # gather where the CSR lives and move only the selected entries, not the whole CSR
        segment, position = csr_row_positions(indptr, users.to(indptr.device))
        scores[segment.to(scores.device), indices[position].to(scores.device)] = float("-inf")
    values, items = torch.topk(scores, min(k, num_items), dim=1)
    # -inf means excluded: report "no item" rather than an arbitrary excluded one
    items = items.masked_fill(values == float("-inf"), -1)
    if k > num_items:
        pad = items.new_full((items.shape[0], k - num_items), -1)
        items = torch.cat([items, pad], dim=1)
    return items


def _zero_sums(ks: Sequence[int], device: torch.device | str = "cpu") -> dict[str, Tensor]:
    sums = {f"{name}@{k}": torch.zeros((), dtype=torch.float64, device=device) for k in ks for name in RANKING_METRICS}
    sums["num_users"] = torch.zeros((), dtype=torch.float64, device=device)
    return sums


def _hit_matrix(topk: Tensor, users: Tensor, truth_indptr: Tensor, truth_indices: Tensor) -> Tensor:
    """``[B, K]`` bool: is ``topk[i, j]`` in the truth row of ``users[i]``.

    Vectorised by searching keys ``row * stride + item`` (row = position in the batch, so the keys
    stay small) in the sorted keys of the batch's truth entries.
    """
    segment, position = csr_row_positions(truth_indptr, users)
    truth_items = truth_indices[position]
    if truth_items.numel() == 0:
        return torch.zeros(topk.shape, dtype=torch.bool, device=topk.device)
    stride = int(max(int(truth_items.max()), int(topk.max()))) + 1
    truth_keys, _ = torch.sort(segment * stride + truth_items)
    rows = torch.arange(topk.shape[0], device=topk.device).unsqueeze(1)
    keys = rows * stride + topk.clamp(min=0)
    slot = torch.searchsorted(truth_keys, keys).clamp(max=truth_keys.numel() - 1)
    return (truth_keys[slot] == keys) & (topk >= 0)


def ranking_sums(
    topk: Tensor,
    users: Tensor,
    truth_indptr: Tensor,
    truth_indices: Tensor,
    ks: Sequence[int],
) -> dict[str, Tensor]:
    """Sums over users of ranking metrics for one batch of top-k lists.

    Args:
        topk: ``[B, K]`` int64 item indices, best first; ``-1`` marks an empty slot (never a hit).
        users: ``[B]`` int64 user indices, rows of the truth CSR.
        truth_indptr: ``[U+1]`` int64 row pointer of the held-out items per user.
        truth_indices: ``[nnz]`` int64 held-out item indices (no duplicates within a row).
        ks: cutoffs, each at most ``K``.

    Returns:
        ``{"recall@k", "precision@k", "ndcg@k", "hr@k", "mrr@k"}`` for every k, and ``num_users``
        (users of the batch with at least one truth item; the others contribute nothing), each a
        float64 scalar tensor on ``truth_indptr``'s device.
    """
    ks = _check_ks(ks)
    if max(ks) > topk.shape[1]:
        raise ValueError(f"cutoff {max(ks)} exceeds the {topk.shape[1]} items per user in topk")
    device = truth_indptr.device
    topk = topk.to(device)
    users = users.to(device)
    truth_indices = truth_indices.to(device)

    num_truth = _row_counts(truth_indptr, users)
    has_truth = num_truth > 0
    max_k = max(ks)
    hits = _hit_matrix(topk[:, :max_k], users, truth_indptr, truth_indices)[has_truth]
    hits = hits.to(torch.float64)
    num_truth = num_truth[has_truth].to(torch.float64)

    ranks = torch.arange(1, max_k + 1, dtype=torch.float64, device=device)
    discount = 1.0 / torch.log2(ranks + 1.0)
    ideal_dcg = torch.cumsum(discount, 0)  # ideal_dcg[n-1] = IDCG with n relevant items
    # exactly one True per user at the first hit, so mrr is a sum, like the others
    first_hit = hits * (torch.cumsum(hits, 1) == 1)

    sums = {}
    for k in ks:
        hits_k = hits[:, :k]
        num_hits = hits_k.sum(1)
        idcg = ideal_dcg[torch.clamp(num_truth, max=k).long() - 1]
        sums[f"recall@{k}"] = (num_hits / num_truth).sum()
        sums[f"precision@{k}"] = num_hits.sum() / k
        sums[f"ndcg@{k}"] = ((hits_k * discount[:k]).sum(1) / idcg).sum()
        sums[f"hr@{k}"] = (num_hits > 0).to(torch.float64).sum()
        sums[f"mrr@{k}"] = (first_hit[:, :k] / ranks[:k]).sum()
    sums["num_users"] = has_truth.sum().to(torch.float64)
    return sums


def add_sums(total: dict[str, Tensor], part: dict[str, Tensor]) -> dict[str, Tensor]:
    """Key-wise sum of two sum dicts (same keys), e.g. of two chunks or two workers."""
    if total.keys() != part.keys():
        raise ValueError(f"cannot add sums with different keys: {sorted(total)} vs {sorted(part)}")
    return {name: total[name] + part[name] for name in total}


@torch.no_grad()
def evaluate_ranking(
    user_emb: Tensor,
    item_emb: Tensor,
    users: Tensor,
    exclude: Sequence[CSR],
    truth: CSR,
    ks: Sequence[int],
    *,
    batch_size: int = 1024,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Ranking metric sums over ``users``, scoring all items in chunks of ``batch_size`` users,
    each scored in pieces of at most :data:`MAX_CHUNK_SCORES` scores (:func:`score_pieces`).

    Args:
        user_emb: ``[U, d]`` full user embedding table, indexed by user index.
        item_emb: ``[num_items, d]`` item embeddings.
        users: ``[n]`` int64 user indices to evaluate (e.g. this worker's share); those without truth
            items are skipped.
        exclude: CSRs of items not to rank per user (see :func:`topk_items`).
        truth: ``(indptr, indices)`` CSR of held-out items per user.
        ks: cutoffs.
        batch_size: users scored per chunk.
        progress: show a tqdm bar over chunks.

    Returns:
        The sums of :func:`ranking_sums` over all chunks (float64 scalars, on the truth CSR's device).
    """
    return evaluate_scorer(
        lambda chunk: user_emb[chunk.to(user_emb.device)] @ item_emb.T,
        users,
        exclude,
        truth,
        ks,
        batch_size=batch_size,
        progress=progress,
        num_items=item_emb.shape[0],
        width=item_emb.shape[1],
    )


def min_piece_rows(width: int) -> int:
    """Fewest users scored together in a piece of a chunk: matrix products give a row the same bits
    in any block of rows at least this tall as in a chunk of thousands. Measured with torch 2.13's
    CPU BLAS (one thread): blocks of 1-2 rows differ at width 65, 1-5 at 129, 1-15 at 513 (the
    small-matrix kernels); this keeps a margin of about 4x."""
    return max(4, width // 8)


def score_pieces(num_users: int, num_items: int | None, width: int = 0) -> list[tuple[int, int]]:
    """``(start, end)`` pieces of a chunk of ``num_users`` users scored at once against
    ``num_items`` items with vectors ``width`` wide: at most ``MAX_CHUNK_SCORES // num_items``
    users each, never fewer than :func:`min_piece_rows` (a short remainder joins the piece before),
    so splitting changes no score. The whole chunk without ``num_items``."""
    fewest = min_piece_rows(width)
    piece = max(fewest, MAX_CHUNK_SCORES // max(num_items, 1)) if num_items else num_users
    cuts = list(range(0, num_users, max(piece, 1))) + [num_users]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < fewest:
        del cuts[-2]
    return list(zip(cuts[:-1], cuts[1:]))


def evaluate_scorer(
    score: Callable[[Tensor], Tensor],
    users: Tensor,
    exclude: Sequence[CSR],
    truth: CSR,
    ks: Sequence[int],
    *,
    batch_size: int = 1024,
    progress: bool = False,
    num_items: int | None = None,
    width: int = 0,
) -> dict[str, Tensor]:
    """:func:`evaluate_ranking` for any scorer: ``score(users [B]) -> [B, num_items]`` scores.
    With ``num_items`` (and the inner product's vector ``width``) each chunk is scored in pieces of
    at most :data:`MAX_CHUNK_SCORES` scores (:func:`score_pieces`); the metric sums are still taken
    per chunk of ``batch_size``, so the pieces change no number, not even the order of a sum."""
    ks = _check_ks(ks)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    truth_indptr, truth_indices = truth
    users = users.to(truth_indptr.device)
    # drop users without truth up front so no chunk scores them for nothing
    users = users[_row_counts(truth_indptr, users) > 0]
    sums = _zero_sums(ks, truth_indptr.device)
    starts = range(0, users.numel(), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="evaluate", unit="chunk")
    for start in starts:
        chunk = users[start : start + batch_size]
        pieces = [chunk[a:b] for a, b in score_pieces(chunk.numel(), num_items, width)]
        topk = torch.cat([topk_of_scores(score(piece), piece, exclude, max(ks)) for piece in pieces])
        sums = add_sums(sums, ranking_sums(topk, chunk, truth_indptr, truth_indices, ks))
    return sums


def evaluate_popularity(
    item_degree: Tensor,
    users: Tensor,
    exclude: Sequence[CSR],
    truth: CSR,
    ks: Sequence[int],
    *,
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """Ranking metric sums of the most-popular baseline: every user gets the items with the highest
    training degree, minus the items they have seen.

    Runs through :func:`evaluate_ranking` with ``user_emb = 1 [U, 1]`` and ``item_emb = degree
    [num_items, 1]``, so the baseline and the models share one code path.

    Args:
        item_degree: ``[num_items]`` number of training interactions per item.
        users, exclude, truth, ks, batch_size: as in :func:`evaluate_ranking`.
    """
    num_users = truth[0].numel() - 1
    # float64: degrees above 2**24 would collide in float32 and reorder ties
    item_emb = item_degree.to(torch.float64).reshape(-1, 1)
    user_emb = torch.ones(1, 1, dtype=torch.float64, device=item_emb.device).expand(num_users, 1)
    return evaluate_ranking(user_emb, item_emb, users, exclude, truth, ks, batch_size=batch_size)


def finalize(sums: dict[str, Tensor]) -> dict[str, float]:
    """Means from (all-reduced) sums: every metric divided by ``num_users``.

    With ``num_users == 0`` every metric is ``0.0`` (not NaN) and ``num_users`` says why.
    """
    num_users = int(round(float(sums["num_users"])))
    result: dict[str, float] = {
        name: (float(value) / num_users if num_users > 0 else 0.0)
        for name, value in sums.items()
        if name != "num_users"
    }
    result["num_users"] = num_users
    return result


def rating_sums(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Sums for rating-prediction metrics: ``sq_err``, ``abs_err`` and ``count`` (float64 scalars).

    Args:
        pred: ``[n]`` predicted ratings.
        target: ``[n]`` true ratings.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    err = pred.detach().to(torch.float64) - target.to(torch.float64)
    return {
        "sq_err": (err * err).sum(),
        "abs_err": err.abs().sum(),
        "count": torch.tensor(float(err.numel()), dtype=torch.float64, device=err.device),
    }


def finalize_rating(sums: dict[str, Tensor]) -> dict[str, float]:
    """``{rmse, mae, count}`` from (all-reduced) :func:`rating_sums`; 0.0 errors when count is 0."""
    count = int(round(float(sums["count"])))
    if count == 0:
        return {"rmse": 0.0, "mae": 0.0, "count": 0}
    return {
        "rmse": math.sqrt(float(sums["sq_err"]) / count),
        "mae": float(sums["abs_err"]) / count,
        "count": count,
    }


def sampled_ranking_sums(pos_score: Tensor, neg_score: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Sums of the sampled-negatives protocol (NCF, He et al. 2017): each held-out item is ranked
    against ``M`` sampled items the user never interacted with.

    The item's 0-based rank is the number of negatives scoring strictly higher (ties favour the
    held-out item). ``sampled_hr@k`` = 1 if rank < k; ``sampled_ndcg@k`` = 1 / log2(rank + 2) if
    rank < k (one relevant item, so IDCG = 1); ``num_cases`` counts the held-out items.

    Args:
        pos_score: ``[n]`` scores of the held-out items.
        neg_score: ``[n, M]`` scores of each one's sampled negatives.
    """
    ks = _check_ks(ks)
    rank = (neg_score > pos_score.unsqueeze(1)).sum(1).to(torch.float64)
    sums = {}
    for k in ks:
        hit = rank < k
        sums[f"sampled_hr@{k}"] = hit.to(torch.float64).sum()
        sums[f"sampled_ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(rank + 2.0), torch.zeros_like(rank)).sum()
    sums["num_cases"] = torch.tensor(float(rank.numel()), dtype=torch.float64)
    return sums


def finalize_sampled(sums: dict[str, Tensor]) -> dict[str, float]:
    """Means of (all-reduced) :func:`sampled_ranking_sums` over the held-out items (0.0 without any)."""
    n = int(round(float(sums["num_cases"])))
    out = {name: (float(v) / n if n else 0.0) for name, v in sums.items() if name != "num_cases"}
    out["sampled_num_cases"] = n
    return out
