"""Training losses for ranking and rating. Pure functions of scores and embeddings; no optimiser here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(user: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """Bayesian personalised ranking: ``mean(-log sigmoid(<u, p> - <u, n>))``.

    Args:
        user, pos, neg: ``[B, d]`` embeddings of users, their positive items and one negative each.
    """
    return F.softplus(-((user * pos).sum(-1) - (user * neg).sum(-1))).mean()


def pointwise_bce_loss(pos_score: Tensor, neg_score: Tensor) -> Tensor:
    """The NCF paper's log loss: each positive labelled 1, each of its sampled negatives 0,
    ``mean over positives of [-log sigmoid(s_pos) - sum_j log(1 - sigmoid(s_neg_j))]``.

    Args:
        pos_score: ``[B]`` scores of the positives; neg_score: ``[B, M]`` of their negatives.
    """
    return (F.softplus(-pos_score) + F.softplus(neg_score).sum(-1)).mean()


def squared_error_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Rating regression: ``mean((pred - target)^2)`` over ``[B]`` aligned predictions and ratings."""
    return (pred - target).pow(2).mean()


def l2_penalty(*ego: Tensor) -> Tensor:
    """LightGCN's regulariser: ``sum of squared layer-0 embeddings / 2 / B`` over the batch."""
    batch_size = ego[0].shape[0]
    return sum(e.pow(2).sum() for e in ego) / (2 * batch_size)


def sampled_softmax_loss(
    user: Tensor,
    items: Tensor,
    target: Tensor,
    *,
    temperature: float,
    masked: tuple[Tensor, Tensor] | None = None,
    log_q: Tensor | None = None,
    item_bias: Tensor | None = None,
) -> Tensor:
    """Softmax cross-entropy of each user's positive against the other items of the batch.

    Scores are cosine similarities divided by ``temperature``. The candidate items are all items
    of the batch (in-batch positives of other users plus uniform negatives), shared by every user.

    Args:
        user: ``[B, d]`` user embeddings.
        items: ``[C, d]`` embeddings of the batch's candidate items.
        target: ``[B]`` column of each user's positive item in ``items``.
        masked: optional ``(rows [m], cols [m])`` logits that must not count as negatives (other
            training positives of that user); a target cell listed there is kept.
        log_q: optional ``[C]`` log of each candidate's sampling probability, subtracted from the
            logits to correct the popularity bias of in-batch negatives (Yi et al., RecSys 2019).
        item_bias: optional ``[C]`` learned offset of each candidate, added to its logits.
    """
    u = F.normalize(user, dim=-1) / temperature
    v = F.normalize(items, dim=-1)
    offset = item_bias
    if log_q is not None:
        offset = -log_q if offset is None else offset - log_q
    if offset is not None:
        # one extra column folds the [B, C] addition into the matmul: <[u, 1], [v, offset]>
        u = torch.cat([u, u.new_ones((u.shape[0], 1))], dim=1)
        v = torch.cat([v, offset[:, None].to(v.dtype)], dim=1)
    logits = u @ v.T
    if masked is not None:
        rows, cols = masked
        keep = cols != target[rows]
        logits = logits.index_put((rows[keep], cols[keep]), logits.new_tensor(float("-inf")))
    return F.cross_entropy(logits, target)


def info_nce(view_a: Tensor, view_b: Tensor, *, temperature: float) -> Tensor:
    """Contrastive loss between two views of the same ``[n, d]`` nodes: row ``i`` of ``view_a``
    should match row ``i`` of ``view_b`` (cosine over ``temperature``) against the other rows."""
    logits = F.normalize(view_a, dim=-1) @ F.normalize(view_b, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
