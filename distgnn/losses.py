"""Training losses for implicit-feedback ranking. Pure functions of embeddings; no optimiser here."""
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


def l2_penalty(*ego: Tensor) -> Tensor:
    """LightGCN's regulariser: ``sum of squared layer-0 embeddings / 2 / B`` over the batch."""
    batch_size = ego[0].shape[0]
    return sum(e.pow(2).sum() for e in ego) / (2 * batch_size)


def sampled_softmax_loss(user: Tensor, items: Tensor, target: Tensor, *, temperature: float,
                         mask: Tensor | None = None, log_q: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy of each user's positive against the other items of the batch.

    Scores are cosine similarities divided by ``temperature``. The candidate items are all items
    of the batch (in-batch positives of other users plus uniform negatives), shared by every user.

    Args:
        user: ``[B, d]`` user embeddings.
        items: ``[C, d]`` embeddings of the batch's candidate items.
        target: ``[B]`` column of each user's positive item in ``items``.
        mask: optional ``[B, C]`` bool, True where a candidate must not count as a negative (another
            training positive of that user); the target column is never masked.
        log_q: optional ``[C]`` log of each candidate's sampling probability, subtracted from the
            logits to correct the popularity bias of in-batch negatives (Yi et al., RecSys 2019).
    """
    logits = F.normalize(user, dim=-1) @ F.normalize(items, dim=-1).T / temperature
    if log_q is not None:
        logits = logits - log_q
    if mask is not None:
        mask = mask.clone()
        mask[torch.arange(target.numel()), target] = False
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, target)
