"""Re-ranking of top-k candidate lists: rule-based exclusions and boosts, maximal marginal relevance
(MMR), and the measures of what re-ranking changes (intra-list diversity, catalogue coverage).

Pure functions on tensors, vectorised over a batch of users; no I/O, no index. A candidate list is
``D [B, P]`` scores and ``I [B, P]`` item indices, best first, padded with ``-inf`` / ``-1`` (the
shape :func:`distgnn.serving.index.search_excluding` returns). :meth:`distgnn.serving.recommend.Export.top_items`
chains them: search a pool, drop the excluded items, merge in the boosted items with their boosted
scores, then MMR.

MMR (Carbonell & Goldstein, SIGIR 1998) picks ``k`` of the ``P`` candidates greedily; each pick maximises

    mmr_lambda * relevance - (1 - mmr_lambda) * max cosine(item, items picked so far)

Relevance is the candidate's score (boost included) min-max normalised per user over the pool to
[0, 1]: cosine similarity lies in [-1, 1] whatever the model, while scores do not (a cosine model's
lie in [-1, 1], one with a temperature-scaled item bias spreads wider, per user differently), so raw
scores would make one ``mmr_lambda`` mean a different trade-off for every model and user. The price:
relevance is relative to the pool, so the pool size shifts it a little.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from distgnn.core.errors import DataError
from distgnn.data.graph import csr_row_positions

DEFAULT_POOL = 100


def _empty_ids() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class RerankRules:
    """What changes a plain top-k, with items as item indices (resolved from raw ids by the caller).

    Attributes:
        mmr_lambda: MMR's weight of relevance against novelty, in [0, 1]; 1.0 = no MMR (plain order).
        pool: candidates per user MMR chooses from (raised to ``k`` when smaller).
        exclude: ``[n]`` int64 items never recommended.
        boost_items: ``[m]`` int64 items whose score is raised (or lowered) before MMR.
        boost: ``[m]`` float32 added to the score of ``boost_items[j]``.
    """

    mmr_lambda: float = 1.0
    pool: int = DEFAULT_POOL
    exclude: np.ndarray = field(default_factory=_empty_ids)
    boost_items: np.ndarray = field(default_factory=_empty_ids)
    boost: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __post_init__(self) -> None:
        if isinstance(self.mmr_lambda, bool) or not 0.0 <= float(self.mmr_lambda) <= 1.0:
            raise DataError(f"mmr_lambda: expected a number from 0 to 1 (1 = no MMR), got {self.mmr_lambda!r}")
        if isinstance(self.pool, bool) or not isinstance(self.pool, (int, np.integer)) or self.pool < 1:
            raise DataError(f"pool: expected a whole number of at least 1, got {self.pool!r}")
        if len(self.boost_items) != len(self.boost):
            raise DataError(f"boost: {len(self.boost)} weights for {len(self.boost_items)} boosted items")
        if len(np.unique(self.boost_items)) != len(self.boost_items):
            raise DataError("boost_items: an item is listed twice")
        if not np.all(np.isfinite(self.boost)):
            raise DataError("boost: expected finite weights")

    @property
    def is_plain(self) -> bool:
        """True when the rules change nothing: the answer is the plain top-k."""
        return self.mmr_lambda == 1.0 and not len(self.exclude) and not len(self.boost_items)


def in_rows(indptr: Tensor, indices: Tensor, rows: Tensor, items: Tensor) -> Tensor:
    """``[B, m]`` bool: is ``items[b, j]`` in row ``rows[b]`` of the CSR ``(indptr, indices)``.

    One membership test of keys ``b * stride + item`` in the sorted keys of the batch's rows, as
    :func:`distgnn.serving.index.search_excluding` does; ``-1`` items are never members.
    """
    segment, position = csr_row_positions(indptr, rows)
    member = indices[position]
    stride = max(int(items.max()) + 1 if items.numel() else 0, int(member.max()) + 1 if member.numel() else 0, 1)
    keys = torch.sort(segment * stride + member).values
    query = torch.arange(len(rows)).unsqueeze(1) * stride + items.clamp(min=0)
    if not keys.numel():
        return torch.zeros(items.shape, dtype=torch.bool)
    slot = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    return (keys[slot] == query) & (items >= 0)


def keep_best(D: Tensor, I: Tensor, keep: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The first ``width`` kept candidates of each row, in their order, padded with ``-inf`` / ``-1``.

    Args:
        D, I: ``[B, P]`` scores and item indices.
        keep: ``[B, P]`` bool, False for candidates to drop.
        width: columns of the result.
    """
    # a stable sort of "not kept" moves the kept candidates to the front, in their original order
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    kept = torch.gather(keep, 1, order)
    D = torch.where(kept, torch.gather(D, 1, order), float("-inf"))
    I = torch.where(kept, torch.gather(I, 1, order), -1)
    if D.shape[1] < width:
        pad = width - D.shape[1]
        D = torch.nn.functional.pad(D, (0, pad), value=float("-inf"))
        I = torch.nn.functional.pad(I, (0, pad), value=-1)
    return D, I


def merge_by_score(D: Tensor, I: Tensor, D2: Tensor, I2: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """The best ``width`` of two candidate sets per row (no item in both), by score; on equal scores
    the first set's candidates come first, each set in its own order. ``-inf`` scores are dropped."""
    D_all, I_all = torch.cat([D, D2], dim=1), torch.cat([I, I2], dim=1)
    order = torch.argsort(D_all, dim=1, descending=True, stable=True)
    D_all, I_all = torch.gather(D_all, 1, order), torch.gather(I_all, 1, order)
    return keep_best(D_all, I_all, (I_all >= 0) & (D_all > float("-inf")), width)


def normalise_relevance(scores: Tensor) -> Tensor:
    """``[B, P]`` scores min-max normalised per row over its finite entries to [0, 1] (best = 1);
    ``-inf`` entries (no candidate) stay ``-inf``; a row whose finite scores are all equal gets 1."""
    finite = torch.isfinite(scores)
    low = torch.where(finite, scores, float("inf")).amin(dim=1, keepdim=True)
    high = torch.where(finite, scores, float("-inf")).amax(dim=1, keepdim=True)
    spread = high - low
    relevance = torch.where(spread > 0, (scores - low) / torch.where(spread > 0, spread, 1.0), 1.0)
    return torch.where(finite, relevance, float("-inf"))


def maximal_marginal_relevance(relevance: Tensor, vectors: Tensor, k: int, *, mmr_lambda: float) -> Tensor:
    """Greedy MMR picks among ``P`` candidates per user.

    Args:
        relevance: ``[B, P]`` relevance of each candidate (e.g. :func:`normalise_relevance`); ``-inf``
            marks an empty slot, never picked.
        vectors: ``[B, P, d]`` L2-normalised embeddings of the candidates (their inner product is the
            cosine similarity).
        k: picks per user.
        mmr_lambda: weight of relevance, in [0, 1]. The first pick is always the most relevant
            candidate; with ``mmr_lambda = 1`` every pick is (the candidates' own order, ties to the
            earlier one).

    Returns:
        ``[B, k]`` int64 positions into the ``P`` candidates, in pick order; ``-1`` once a row has no
        candidate left.
    """
    num_users, num_candidates = relevance.shape
    # picked and empty candidates hold -inf here, so no mask is needed (and 0 * -inf never happens)
    base = torch.where(torch.isfinite(relevance), mmr_lambda * relevance, float("-inf"))
    max_similarity = torch.zeros_like(relevance)  # no penalty before the first pick
    picks = torch.full((num_users, k), -1, dtype=torch.int64)
    users = torch.arange(num_users)
    num_slots = min(k, num_candidates)
    # A loop over the k output slots, not over users: each pick depends on the picks before it
    # (greedy), while every slot is one vectorised step over all users and candidates.
    for slot in range(num_slots):
        gain = torch.add(base, max_similarity, alpha=-(1.0 - mmr_lambda))
        best = torch.argmax(gain, dim=1)  # the first of equal gains: the better-scored candidate
        found = torch.isfinite(gain[users, best])
        picks[:, slot] = torch.where(found, best, -1)
        base[users, best] = float("-inf")
        if slot + 1 < num_slots:
            similarity = torch.bmm(vectors, vectors[users, best].unsqueeze(2)).squeeze(2)  # [B, P] cosines
            max_similarity = similarity if slot == 0 else torch.maximum(max_similarity, similarity)
    return picks


def mmr_rerank(D: Tensor, I: Tensor, item_vectors: Tensor, k: int, *, mmr_lambda: float) -> tuple[Tensor, Tensor]:
    """The ``k`` MMR picks of candidate lists ``D, I [B, P]`` (best first), as ``D, I [B, k]`` in pick
    order, scores unchanged; ``item_vectors [num_items, d]`` L2-normalised. ``mmr_lambda = 1`` returns
    the first ``k`` candidates exactly."""
    if mmr_lambda == 1.0:
        return keep_best(D, I, I >= 0, k)
    relevance = normalise_relevance(torch.where(I >= 0, D, float("-inf")))
    # index_select rather than item_vectors[I]: 2 ms instead of 9.5 ms for 1024 x 100 x 32 (measured)
    vectors = item_vectors.index_select(0, I.clamp(min=0).flatten()).view(*I.shape, -1)
    picks = maximal_marginal_relevance(relevance, vectors, k, mmr_lambda=mmr_lambda)
    found = picks >= 0
    safe = picks.clamp(min=0)
    return (
        torch.where(found, torch.gather(D, 1, safe), float("-inf")),
        torch.where(found, torch.gather(I, 1, safe), -1),
    )


def unit_rows(vectors: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    return torch.nn.functional.normalize(vectors, dim=-1)


# ---------------------------------------------------------------------------------------------------
# What re-ranking changes


def intra_list_diversity(topk: Tensor, item_vectors: Tensor) -> Tensor:
    """``[B]`` mean over the pairs of each list of ``1 - cosine`` of the two items' vectors.

    Args:
        topk: ``[B, k]`` int64 item indices; ``-1`` marks an empty slot (left out).
        item_vectors: ``[num_items, d]`` L2-normalised item vectors.

    Returns:
        float64 per list; NaN for a list with fewer than two items (no pair).
    """
    valid = topk >= 0
    vectors = item_vectors[topk.clamp(min=0)].to(torch.float64) * valid.unsqueeze(-1)
    similarity = vectors @ vectors.transpose(1, 2)  # [B, k, k], zero wherever a slot is empty
    n = valid.sum(1).to(torch.float64)
    num_pairs = n * (n - 1) / 2
    # off-diagonal sum / 2 = sum over unordered pairs; the diagonal holds |v|^2 = 1 per valid slot
    pair_similarity = (similarity.sum((1, 2)) - torch.diagonal(similarity, dim1=1, dim2=2).sum(1)) / 2
    return torch.where(num_pairs > 0, 1.0 - pair_similarity / num_pairs.clamp(min=1), float("nan"))


def catalogue_coverage(topk: Tensor, num_items: int) -> float:
    """Distinct items recommended in ``topk [B, k]`` (``-1`` = empty) / ``num_items``."""
    items = topk[topk >= 0]
    return float(torch.unique(items).numel()) / num_items if num_items else 0.0
