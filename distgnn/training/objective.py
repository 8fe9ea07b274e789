"""The training objective of one batch and the optimiser around it: pure functions of tensors,
with the only collective being the optional sharing of softmax candidates across workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from distgnn.core import dist
from distgnn.core.config import OptimConfig
from distgnn.data.graph import csr_row_positions
from distgnn.nn.losses import (
    bpr_loss,
    info_nce,
    l2_penalty,
    pointwise_bce_loss,
    sampled_softmax_loss,
    squared_error_loss,
)
from distgnn.nn.models import Recommender
from distgnn.training.gradients import IndexedSparseAdam, RowShardedSparseAdam


def make_optimizers(model: nn.Module, lr: float, *, row_sharded: bool = False) -> list[Any]:
    """SparseAdam for the embedding tables (sparse gradients; computed by index,
    :class:`~distgnn.training.gradients.IndexedSparseAdam`), Adam for dense weights if any. With
    ``row_sharded`` the tables' SparseAdam is split by rows over the workers
    (:class:`~distgnn.training.gradients.RowShardedSparseAdam`): the replicated strategy's tables."""
    sparse = [p for n, p in model.named_parameters() if n.endswith("embedding.weight")]
    dense = [p for n, p in model.named_parameters() if not n.endswith("embedding.weight")]
    tables = RowShardedSparseAdam(sparse, lr) if row_sharded else IndexedSparseAdam(sparse, lr=lr)
    opts: list[Any] = [tables]
    if dense:
        opts.append(torch.optim.Adam(dense, lr=lr))
    return opts


def positive_cells(indptr: Tensor, indices: Tensor, user_rows: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, cols)`` of the ``[B, C]`` cells where candidate item node ``candidates[c]`` is a
    training positive of the user in CSR row ``user_rows[b]`` (the whole graph's CSR with global
    ids, or a part's CSR with local rows). Vectorised over the batch's CSR rows; only these few
    cells are touched, never a dense ``[B, C]`` mask."""
    segment, position = csr_row_positions(indptr, user_rows)
    item_nodes = indices[position]
    sorted_cand, order = torch.sort(candidates)
    loc = torch.searchsorted(sorted_cand, item_nodes).clamp(max=candidates.numel() - 1)
    hit = sorted_cand[loc] == item_nodes
    return segment[hit], order[loc[hit]]


def link_loss(
    out: Tensor,
    ego: Callable[[Tensor], Tensor],
    batch: Data,
    o: OptimConfig,
    item_log_q: Tensor | None,
    positives: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    *,
    num_users: int,
    user_rows: Tensor | None = None,
    item_bias: Callable[[Tensor], Tensor] | None = None,
    score: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """BPR, pointwise BCE or sampled-softmax loss of a batch from the subgraph's output embeddings
    ``out [n, d]``.

    Args:
        ego: layer-0 embeddings of local node ids (the L2 penalty's input).
        positives: ``(user CSR rows, candidate item nodes) -> (rows, cols)`` of known positives,
            masked out of the softmax (:func:`positive_cells`).
        user_rows: the CSR rows of the batch's users for ``positives``; default their global ids.
        item_bias: global item node ids ``[C]`` -> their learned logit offsets ``[C]`` (softmax only).
        score: the model's pair scores (:meth:`Recommender.score`) for bce: ``[B, d]`` users
            against ``[B, M, d]`` items -> ``[B, M]``.
    """
    n_id, device = batch.n_id, out.device
    user_local, pos_local = batch.src_index, batch.dst_pos_index
    neg_index = batch.dst_neg_index.view(user_local.numel(), -1)
    if o.loss == "bpr":
        neg_local = neg_index[:, 0]
        loss = bpr_loss(*(out[i.to(device)] for i in (user_local, pos_local, neg_local)))
        return loss + o.l2 * l2_penalty(*ego(torch.cat([user_local, pos_local, neg_local])).chunk(3))
    if o.loss == "bce":
        user, pos, neg = (out[i.to(device)] for i in (user_local, pos_local, neg_index))
        pos_score, neg_score = score(user, pos.unsqueeze(1)).squeeze(1), score(user, neg)
        penalty = l2_penalty(ego(user_local), ego(pos_local), ego(neg_index.flatten()))
        return pointwise_bce_loss(pos_score, neg_score) + o.l2 * penalty
    cand_local, inverse = torch.unique(torch.cat([pos_local, neg_index.flatten()]), return_inverse=True)
    target = inverse[: pos_local.numel()]
    cand_nodes, cand_emb = n_id[cand_local], out[cand_local.to(device)]
    if o.shared_negatives and dist.world_size() > 1:
        cand_nodes, cand_emb = share_candidates(cand_nodes, cand_emb)
    rows, cols = positives(n_id[user_local] if user_rows is None else user_rows, cand_nodes)
    log_q = item_log_q[cand_nodes - num_users].to(device) if item_log_q is not None else None
    loss = sampled_softmax_loss(
        out[user_local.to(device)],
        cand_emb,
        target.to(device),
        temperature=o.temperature,
        masked=(rows.to(device), cols.to(device)),
        log_q=log_q,
        item_bias=None if item_bias is None else item_bias(cand_nodes),
    )
    return loss + o.l2 * l2_penalty(*ego(torch.cat([user_local, pos_local])).chunk(2))


def rating_loss(model: Recommender, out: Tensor, batch: Data, ratings: Tensor, o: OptimConfig) -> Tensor:
    """Squared error of the batch's predicted ratings (:meth:`Recommender.predict_rating`) plus
    the L2 penalty on the pairs' layer-0 embeddings and biases.

    Args:
        out: ``[n, d]`` subgraph outputs (the seeds' rows first).
        batch: a loader batch without negatives: ``edge_label_index [2, B]`` local (user, item).
        ratings: ``[E]`` ratings of the worker's training edges, indexed by ``batch.input_id``.
    """
    device = out.device
    user_local, item_local = batch.edge_label_index.to(device)
    user_nodes, item_nodes = batch.n_id.to(device)[user_local], batch.n_id.to(device)[item_local]
    pred = model.predict_rating(out[user_local], out[item_local], user_nodes, item_nodes)
    target = ratings[batch.input_id].to(device)
    penalty = l2_penalty(model.ego(user_nodes), model.ego(item_nodes), model.bias_embedding(user_nodes))
    penalty = penalty + l2_penalty(model.bias_embedding(item_nodes))
    return squared_error_loss(pred, target) + o.l2 * penalty


def share_candidates(nodes: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
    """The candidate items of every worker's batch, this worker's first and in their order (so its
    targets' columns stay valid), each item once: node ids ``[C]`` (on the device of ``nodes``) and
    embeddings ``[C, d]``.
    A gathered item's gradient goes back to the worker that computed it. Collective: every worker
    calls it once per step."""
    rank = dist.rank()
    all_nodes = dist.all_gather_uneven(nodes.to(emb.device))
    all_emb = dist.all_gather_uneven(emb, differentiable=True)
    order = [rank] + [r for r in range(len(all_nodes)) if r != rank]
    all_nodes = torch.cat([all_nodes[r] for r in order])
    all_emb = torch.cat([emb] + [all_emb[r] for r in order[1:]])  # own rows: the local graph, no round trip
    # keep each item's first copy: this worker's own candidates are unique and come first
    _, inverse = torch.unique(all_nodes, return_inverse=True)
    device = all_nodes.device
    first = torch.full((int(inverse.max()) + 1,), all_nodes.numel(), device=device).scatter_reduce(
        0, inverse, torch.arange(all_nodes.numel(), device=device), "amin"
    )
    keep = torch.sort(first).values
    return all_nodes[keep].to(nodes.device), all_emb[keep]


def candidate_log_q(positive_weight: Tensor, o: OptimConfig) -> Tensor:
    """log of the expected number of times each item enters a batch: in-batch positives are drawn
    in proportion to ``positive_weight`` (:func:`positive_draw_weights`), uniform negatives evenly."""
    positive_weight = positive_weight.to(torch.float64)
    batch = o.batch_size
    expected = batch * positive_weight / positive_weight.sum() + batch * o.num_negatives / positive_weight.numel()
    return expected.clamp(min=1e-12).log().to(torch.float32)


def contrastive_term(model: Recommender, x: Tensor, adj_t: Tensor, batch: Data, o: OptimConfig) -> Tensor:
    """SimGCL (Yu et al., SIGIR 2022) on the sampled subgraph: two propagations with noise after
    every layer; InfoNCE between the views of the batch's users, plus the same for its positive
    items. It spreads embeddings out (uniformity) without graph augmentation."""
    views = [model.propagate(x, adj_t, batch.num_sampled_nodes, noise=o.contrastive_noise) for _ in range(2)]
    return sum(
        info_nce(views[0][rows], views[1][rows], temperature=o.contrastive_temperature)
        for rows in (torch.unique(batch.src_index).to(x.device), torch.unique(batch.dst_pos_index).to(x.device))
    )
