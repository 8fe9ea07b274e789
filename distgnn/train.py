"""Stage 2: distributed training with Ray Train + PyTorch DDP on neighbor-sampled mini-batches.

    python -m distgnn.train                                  # synthetic default, 2 workers
    python -m distgnn.train --config configs/gowalla.yaml --optim.epochs 30
    ray job submit --address http://127.0.0.1:8265 -- python -m distgnn.train --config ...

:func:`train_loop` is the whole training procedure as one plain function; it runs the same in one
process (tests) and inside each Ray Train worker, where :func:`_ray_worker` hands it Ray's
``report``, checkpoint and ``prepare_model``. Each worker trains on its own shard of the training
edges; gradients of the embedding tables are sparse, so DDP exchanges only the rows a step touched.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.loader import LinkLoader
from torch_geometric.sampler import NegativeSampling

from distgnn import dist
from distgnn.cli import configure_logging, run_command
from distgnn.checkpoint import (BEST_MODEL, STATE_FILE, load_model_state, load_training_state, save_model,
                                save_training_state)
from distgnn.files import write_json_atomic
from distgnn.config import (ConfigError, TrainJobConfig, build_config, config_from_args, config_to_dict,
                            make_parser, replace_nested)
from distgnn.graph import Graph, csr_row_positions, load_graph, verify_graph_dir
from distgnn.losses import bpr_loss, info_nce, l2_penalty, sampled_softmax_loss
from distgnn.baselines import item_knn_scores, item_knn_weights
from distgnn.metrics import RANKING_METRICS, evaluate_popularity, evaluate_ranking, evaluate_scorer, finalize
from distgnn.models import build_model, full_graph_embeddings, sampled_adjacency
from distgnn.rundir import RESULTS_FILE, create_run_dir, plot_curves, read_history, results_table, write_history
from distgnn.sampler import make_sampler

log = logging.getLogger(__name__)

ReportFn = Callable[[dict, "Path | None"], None]


# ---------------------------------------------------------------------------------------------------
# Building blocks (pure or nearly)


def node_features(graph: Graph) -> Tensor | None:
    """``[N, Fu + Fi]`` block layout of user and item features (zeros where a side has none)."""
    if graph.user_features is None and graph.item_features is None:
        return None
    fu = graph.user_features.shape[1] if graph.user_features is not None else 0
    fi = graph.item_features.shape[1] if graph.item_features is not None else 0
    x = torch.zeros(graph.num_nodes, fu + fi)
    if fu:
        x[: graph.num_users, :fu] = graph.user_features
    if fi:
        x[graph.num_users:, fu:] = graph.item_features
    return x


def check_job(job: TrainJobConfig) -> None:
    """Fail before any training (before Ray starts, when called by the CLI) on a config that cannot
    run: an evaluation metric ``eval.ks`` does not compute, or options that do not go together."""
    names = [f"{m}@{k}" for k in job.eval.ks for m in RANKING_METRICS]
    if job.eval.metric not in names:
        raise ConfigError(f"config key 'eval.metric': {job.eval.metric!r} is not computed with "
                          f"eval.ks={list(job.eval.ks)} (one of {', '.join(names)})")
    if job.optim.contrastive_weight > 0 and job.model.name != "lightgcn":
        raise ConfigError("config key 'optim.contrastive_weight': the SimGCL term needs model.name lightgcn")
    if job.model.item_bias and job.optim.loss != "softmax":
        raise ConfigError("config key 'model.item_bias': needs optim.loss softmax (a BPR model's dot "
                          "products carry popularity in their norms)")
    if job.cluster.partitioned:
        _check_partitioned_options(job)


def _check_partitioned_options(job: TrainJobConfig) -> None:
    """Options the partitioned path does not have."""
    if job.model.name not in ("lightgcn", "mf"):  # SAGE's dense weights are not sharded
        raise ConfigError(f"config key 'cluster.partitioned': supported for model.name lightgcn and mf, "
                          f"not {job.model.name!r}")
    if job.model.item_bias:  # its rows are not sharded or exchanged yet
        raise ConfigError("config key 'model.item_bias': not supported with cluster.partitioned")
    if job.optim.contrastive_weight > 0:  # its extra propagations are not wired to the row exchange
        raise ConfigError("config key 'optim.contrastive_weight': not supported with cluster.partitioned")
    if job.optim.hard_negative_pool > 1:  # mining needs every item's vector on every worker
        raise ConfigError("config key 'optim.hard_negative_pool': not supported with cluster.partitioned")


def make_model(job: TrainJobConfig, graph: Graph) -> nn.Module:
    features = node_features(graph) if job.model.name == "sage" and job.model.use_features else None
    num_layers = 0 if job.model.name == "mf" else job.model.num_layers
    if num_layers and len(job.sampler.num_neighbors) != num_layers:
        raise ConfigError(f"config key 'sampler.num_neighbors': expected {num_layers} values "
                          f"(one per layer of model.num_layers), got {len(job.sampler.num_neighbors)}")
    return build_model(job.model.name, num_nodes=graph.num_nodes, dim=job.model.dim,
                       num_layers=num_layers, features=features, item_bias=job.model.item_bias)


def shard_edges(graph: Graph, rank: int, world_size: int, seed: int) -> Tensor:
    """This worker's training edges as ``edge_label_index [2, E_r]`` (user node, item node): a fixed
    random permutation dealt round-robin, so shards differ in size by at most one edge."""
    user, item = graph.train_edges
    perm = torch.randperm(user.numel(), generator=torch.Generator().manual_seed(seed))[rank::world_size]
    return torch.stack([user[perm], item[perm] + graph.num_users])


def make_optimizers(model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    """SparseAdam for the embedding tables (sparse gradients), Adam for dense weights if any."""
    sparse = [p for n, p in model.named_parameters() if n.endswith("embedding.weight")]
    dense = [p for n, p in model.named_parameters() if not n.endswith("embedding.weight")]
    opts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(sparse, lr=lr)]
    if dense:
        opts.append(torch.optim.Adam(dense, lr=lr))
    return opts


def scheduled_lr(job: TrainJobConfig, progress: float) -> float:
    """Learning rate at ``progress`` (fraction of ``optim.epochs`` done, in [0, 1]). A pure function
    of progress rather than a stateful scheduler, so a resumed run continues the same curve."""
    o = job.optim
    if o.lr_schedule == "constant":
        return o.lr
    final = o.lr * o.lr_final_fraction
    return final + (o.lr - final) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


def make_train_loader(graph: Graph, job: TrainJobConfig, edge_label_index: Tensor, seed: int) -> LinkLoader:
    """PyG's LinkLoader driven by distgnn's sampler: each batch holds the sampled subgraph around
    the batch's users, positive items and negative items (items only, never a user's positive)."""
    fanouts = list(job.sampler.num_neighbors) if job.model.name != "mf" else []
    sampler = make_sampler(graph.indptr, graph.indices, fanouts, num_users=graph.num_users,
                           num_items=graph.num_items, backend=job.sampler.backend,
                           replace=job.sampler.replace, seed=seed)
    sampler.hard_negative_pool = job.optim.hard_negative_pool  # vectors: refreshed each epoch
    return link_loader(sampler, graph.num_nodes, edge_label_index, job)


class ShuffledIndices(torch.utils.data.Sampler):
    """``0 .. n-1`` in a fresh random order each epoch (torch's global generator), as
    ``RandomSampler`` does, but handed out from the permutation tensor in chunks: RandomSampler
    turns the whole permutation into a Python list, ~36 bytes per training edge per worker."""

    def __init__(self, n: int, chunk: int = 1 << 16):
        self.n, self.chunk = n, chunk

    def __len__(self) -> int:
        return self.n

    def draw(self) -> Tensor:
        return torch.randperm(self.n)

    def __iter__(self):
        for block in self.draw().split(self.chunk):
            yield from block.tolist()


class UserUniformIndices(ShuffledIndices):
    """``n`` draws of edge indices, each edge with probability ``1 / (num users * its user's edge
    count)``: a uniform user, then a uniform one of their edges (LightGCN's own sampling)."""

    def __init__(self, users: Tensor, chunk: int = 1 << 16):
        super().__init__(users.numel(), chunk)
        self.weights = edge_draw_weights(users, "user_uniform")

    def draw(self) -> Tensor:
        return torch.multinomial(self.weights, self.n, replacement=True)


def link_loader(sampler, num_nodes: int, edge_label_index: Tensor, job: TrainJobConfig) -> LinkLoader:
    """PyG's LinkLoader over ``edge_label_index`` with triplet negatives, driven by ``sampler``."""
    # The graph itself lives in the sampler; LinkLoader only needs an `edge_index` key to emit the
    # sampled one.
    data = Data(num_nodes=num_nodes, edge_index=torch.empty(2, 0, dtype=torch.long))
    amount = 1 if job.optim.loss == "bpr" else job.optim.num_negatives
    return LinkLoader(data, link_sampler=sampler, edge_label_index=edge_label_index,
                      neg_sampling=NegativeSampling("triplet", amount=amount),
                      batch_size=job.optim.batch_size, sampler=edge_order(edge_label_index, job),
                      drop_last=True)


def edge_draw_weights(users: Tensor, edge_sampling: str) -> Tensor:
    """``[E]`` float64 weight of each training edge (its user node given) in an epoch's draws, up to
    a constant: 1 under shuffle, 1 / its user's edge count under user_uniform."""
    if edge_sampling == "user_uniform":
        return 1.0 / torch.bincount(users)[users].to(torch.float64)
    return torch.ones(users.numel(), dtype=torch.float64)


def positive_draw_weights(edge_label_index: Tensor, num_users: int, num_items: int,
                          edge_sampling: str) -> Tensor:
    """``[num_items]`` how often the epoch's draws bring each item in as a positive, up to a
    constant: its edge count under shuffle, the sum of its users' 1 / edge count under user_uniform.
    The in-batch half of the log-Q correction must follow the sampling actually used."""
    users, items = edge_label_index
    return torch.bincount(items - num_users, weights=edge_draw_weights(users, edge_sampling),
                          minlength=num_items)


def edge_order(edge_label_index: Tensor, job: TrainJobConfig) -> torch.utils.data.Sampler:
    if job.optim.edge_sampling == "user_uniform":
        return UserUniformIndices(edge_label_index[0])
    return ShuffledIndices(edge_label_index.shape[1])


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


def batch_loss(model: nn.Module, raw_model: nn.Module, batch: Data, graph: Graph, job: TrainJobConfig,
               item_log_q: Tensor | None, device: torch.device = torch.device("cpu")) -> Tensor:
    """Loss of one sampled batch: forward over the subgraph, then BPR or sampled softmax.
    Sampling and index bookkeeping stay on the CPU; the model's arithmetic runs on ``device``."""
    n_id = batch.n_id
    adj_t = None
    if job.model.name != "mf":
        adj_t = sampled_adjacency(n_id, batch.edge_index[0], batch.edge_index[1], graph.degree).to(device)
    if job.model.name == "lightgcn":  # only the seeds' outputs are needed: skip the rest (trimmed)
        out = model(n_id.to(device), adj_t, batch.num_sampled_nodes)
    else:
        out = model(n_id.to(device), adj_t)
    bias = getattr(raw_model, "bias_embedding", None)
    loss = link_loss(out, lambda local: raw_model.ego(n_id[local].to(device)), batch, job, item_log_q,
                     lambda users, cand: positive_cells(graph.indptr, graph.indices, users, cand),
                     num_users=graph.num_users,
                     item_bias=None if bias is None else lambda nodes: bias(nodes.to(device)).squeeze(-1))
    if job.optim.contrastive_weight > 0:
        loss = loss + job.optim.contrastive_weight * contrastive_term(raw_model, n_id.to(device), adj_t, batch, job)
    return loss


def contrastive_term(raw_model: nn.Module, n_id: Tensor, adj_t: Tensor, batch: Data, job: TrainJobConfig) -> Tensor:
    """SimGCL (Yu et al., SIGIR 2022) on the sampled subgraph: two propagations with noise after
    every layer; InfoNCE between the views of the batch's users, plus the same for its positive
    items. It spreads embeddings out (uniformity) without graph augmentation."""
    o = job.optim
    ego = raw_model.ego(n_id)
    views = [raw_model.propagate(ego, adj_t, batch.num_sampled_nodes, noise=o.contrastive_noise) for _ in range(2)]
    return sum(info_nce(views[0][rows], views[1][rows], temperature=o.contrastive_temperature)
               for rows in (torch.unique(batch.src_index).to(n_id.device),
                            torch.unique(batch.dst_pos_index).to(n_id.device)))


def link_loss(out: Tensor, ego: Callable[[Tensor], Tensor], batch: Data, job: TrainJobConfig,
              item_log_q: Tensor | None, positives: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], *,
              num_users: int, user_rows: Tensor | None = None,
              item_bias: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """BPR or sampled-softmax loss of a batch from the subgraph's output embeddings ``out [n, d]``.

    Args:
        ego: layer-0 embeddings of local node ids (the L2 penalty's input).
        positives: ``(user CSR rows, candidate item nodes) -> (rows, cols)`` of known positives,
            masked out of the softmax (:func:`positive_cells`).
        user_rows: the CSR rows of the batch's users for ``positives``; default their global ids.
        item_bias: global item node ids ``[C]`` -> their learned logit offsets ``[C]`` (softmax only).
    """
    n_id, device = batch.n_id, out.device
    user_local, pos_local = batch.src_index, batch.dst_pos_index
    neg_index = batch.dst_neg_index.view(user_local.numel(), -1)
    if job.optim.loss == "bpr":
        neg_local = neg_index[:, 0]
        loss = bpr_loss(*(out[i.to(device)] for i in (user_local, pos_local, neg_local)))
        return loss + job.optim.l2 * l2_penalty(*ego(torch.cat([user_local, pos_local, neg_local])).chunk(3))
    cand_local, inverse = torch.unique(torch.cat([pos_local, neg_index.flatten()]), return_inverse=True)
    target = inverse[: pos_local.numel()]
    cand_nodes, cand_emb = n_id[cand_local], out[cand_local.to(device)]
    if job.optim.shared_negatives and dist.world_size() > 1:
        cand_nodes, cand_emb = share_candidates(cand_nodes, cand_emb)
    rows, cols = positives(n_id[user_local] if user_rows is None else user_rows, cand_nodes)
    log_q = item_log_q[cand_nodes - num_users].to(device) if item_log_q is not None else None
    loss = sampled_softmax_loss(out[user_local.to(device)], cand_emb, target.to(device),
                                temperature=job.optim.temperature, masked=(rows.to(device), cols.to(device)),
                                log_q=log_q, item_bias=None if item_bias is None else item_bias(cand_nodes))
    return loss + job.optim.l2 * l2_penalty(*ego(torch.cat([user_local, pos_local])).chunk(2))


def share_candidates(nodes: Tensor, emb: Tensor) -> tuple[Tensor, Tensor]:
    """The candidate items of every worker's batch, this worker's first and in their order (so its
    targets' columns stay valid), each item once: node ids ``[C]`` (CPU) and embeddings ``[C, d]``.
    A gathered item's gradient goes back to the worker that computed it. Collective: every worker
    calls it once per step."""
    rank = dist.rank()
    all_nodes = dist.all_gather_uneven(nodes.to(emb.device))
    all_emb = dist.all_gather_uneven(emb, differentiable=True)
    order = [rank] + [r for r in range(len(all_nodes)) if r != rank]
    all_nodes = torch.cat([all_nodes[r] for r in order]).cpu()
    all_emb = torch.cat([emb] + [all_emb[r] for r in order[1:]])  # own rows: the local graph, no round trip
    # keep each item's first copy: this worker's own candidates are unique and come first
    _, inverse = torch.unique(all_nodes, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), all_nodes.numel()).scatter_reduce(
        0, inverse, torch.arange(all_nodes.numel()), "amin")
    keep = torch.sort(first).values
    return all_nodes[keep], all_emb[keep.to(emb.device)]


def candidate_log_q(positive_weight: Tensor, job: TrainJobConfig) -> Tensor:
    """log of the expected number of times each item enters a batch: in-batch positives are drawn
    in proportion to ``positive_weight`` (:func:`positive_draw_weights`), uniform negatives evenly."""
    positive_weight = positive_weight.to(torch.float64)
    batch = job.optim.batch_size
    expected = (batch * positive_weight / positive_weight.sum()
                + batch * job.optim.num_negatives / positive_weight.numel())
    return expected.clamp(min=1e-12).log().to(torch.float32)


def scoring_metric(job: TrainJobConfig) -> str:
    """How exported vectors compare (user, item): cosine when trained with the (cosine) softmax
    loss, else inner product; also inner product when an item bias column is appended (the
    vectors are then normalised already, and must not be normalised again)."""
    if job.model.item_bias:
        return "ip"
    return "cosine" if job.optim.loss == "softmax" else "ip"


def scoring_vectors(emb: Tensor, model: nn.Module, job: TrainJobConfig, num_users: int) -> Tensor:
    """``[N, d]`` model outputs -> vectors whose plain inner product ranks as the model scores:
    normalised for cosine scoring, plus a column ``[1 | temperature * item bias]`` for a learned
    item bias (``cos + t * b`` ranks as the logit ``cos / t + b``)."""
    if job.optim.loss == "softmax":
        emb = torch.nn.functional.normalize(emb, dim=-1)
    bias = getattr(model, "bias_embedding", None)
    if bias is None:
        return emb
    column = bias.weight.detach().cpu().to(emb.dtype) * job.optim.temperature
    column[:num_users] = 1.0
    return torch.cat([emb, column], dim=1)


@torch.no_grad()
def final_embeddings(model: nn.Module, graph: Graph, job: TrainJobConfig, *, chunk_size: int = 65536,
                     progress: bool = False) -> Tensor:
    """``[N, d]`` (``d + 1`` with an item bias) exact scoring vectors: a plain inner product ranks as
    the model does, in evaluation, export and FAISS alike (:func:`scoring_vectors`)."""
    emb = full_graph_embeddings(model, graph.indptr, graph.indices, chunk_size=chunk_size, progress=progress)
    return scoring_vectors(emb, model, job, graph.num_users)


@torch.no_grad()
def evaluate(embeddings: Tensor, graph: Graph, split: str, ks: tuple[int, ...], *,
             batch_size: int, max_users: int = 0) -> dict[str, float]:
    """Full-ranking metrics on ``split`` ('val' or 'test') from ``[N, d]`` node embeddings: this
    rank's share of users (all, or the sample of ``max_users``), summed over ranks. Seen items are
    excluded: training items, plus validation items when testing."""
    emb = embeddings
    users = _my_users(graph, split, max_users)
    sums = evaluate_ranking(emb[: graph.num_users], emb[graph.num_users:], users, _exclude(graph, split),
                            _truth(graph, split), list(ks), batch_size=batch_size)
    return finalize(dist.all_reduce_sum(sums))


@torch.no_grad()
def evaluate_item_knn_baseline(graph: Graph, split: str, ks: tuple[int, ...], *, neighbors: int,
                               batch_size: int, max_users: int = 0, inverse_user_degree: bool = True
                               ) -> dict[str, float]:
    """Item-kNN (:mod:`distgnn.baselines`) under the same protocol and users as :func:`evaluate`."""
    weights = item_knn_weights(graph.train, graph.num_items, neighbors=neighbors,
                               inverse_user_degree=inverse_user_degree)
    sums = evaluate_scorer(lambda users: item_knn_scores(weights, graph.train, users),
                           _my_users(graph, split, max_users), _exclude(graph, split), _truth(graph, split),
                           list(ks), batch_size=batch_size)
    return finalize(dist.all_reduce_sum(sums))


def evaluate_popularity_baseline(graph: Graph, split: str, ks: tuple[int, ...], *,
                                 batch_size: int, max_users: int = 0) -> dict[str, float]:
    item_degree = graph.degree[graph.num_users:].to(torch.float32)
    sums = evaluate_popularity(item_degree, _my_users(graph, split, max_users), _exclude(graph, split),
                               _truth(graph, split), list(ks), batch_size=batch_size)
    return finalize(dist.all_reduce_sum(sums))


def _my_users(graph: Graph, split: str, max_users: int = 0) -> Tensor:
    users = torch.nonzero(graph.split(split).counts > 0).flatten()
    mask = evaluated_users(graph.num_users, max_users)
    if mask is not None:
        users = users[mask[users]]
    return users[dist.rank()::dist.world_size()]


def evaluated_users(num_users: int, max_users: int, seed: int = 0) -> Tensor | None:
    """``[U]`` bool mask of the fixed random sample of ``max_users`` users that evaluation scores
    (the same on every worker and every epoch), or None to score every user."""
    if not 0 < max_users < num_users:
        return None
    mask = torch.zeros(num_users, dtype=torch.bool)
    mask[torch.randperm(num_users, generator=torch.Generator().manual_seed(seed))[:max_users]] = True
    return mask


def _exclude(graph: Graph, split: str) -> list[tuple[Tensor, Tensor]]:
    seen = [graph.train] + ([graph.val] if split == "test" else [])
    return [(s.indptr, s.indices) for s in seen]


def _truth(graph: Graph, split: str) -> tuple[Tensor, Tensor]:
    sets = graph.split(split)
    return sets.indptr, sets.indices


def eval_split(graph: Graph) -> str:
    """Validate on 'val' when the split has one; otherwise monitor 'test' (no model selection)."""
    return "val" if int(graph.val.counts.sum()) > 0 else "test"


# ---------------------------------------------------------------------------------------------------
# The training loop


@dataclass(frozen=True)
class Restored:
    """What a worker resumes from: the folder of a checkpoint written by :func:`train_loop`."""

    folder: Path


def train_loop(job: TrainJobConfig, run_dir: Path, *, report: ReportFn | None = None,
               restore: Restored | None = None, wrap_model: Callable[[nn.Module], nn.Module] = lambda m: m,
               device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    """Train, validate every ``eval.every`` epochs, checkpoint, stop early; then test the best model.

    Returns the final results (test metrics of the model and of the popularity baseline).
    """
    check_job(job)
    rank, world_size = dist.rank(), dist.world_size()
    torch.set_num_threads(job.cluster.threads_per_worker)
    torch.manual_seed(job.run.seed)  # same initial weights on every rank
    graph = load_graph(job.graph)
    raw_model = make_model(job, graph)
    optimizers = make_optimizers(raw_model, job.optim.lr)
    start_epoch, history, best = 0, [], None
    if restore is not None:
        state = load_training_state(restore.folder, model=raw_model, optimizers=optimizers)
        start_epoch, history, best = state["epoch"] + 1, state["history"], state["best"]
        log.info("resumed from %s at epoch %d", restore.folder, start_epoch)
    model = wrap_model(raw_model)

    torch.manual_seed(job.run.seed + 1000 * rank + start_epoch)  # distinct batches per rank
    edges = shard_edges(graph, rank, world_size, job.run.seed)
    loader = make_train_loader(graph, job, edges, seed=job.run.seed + 7919 * rank + start_epoch)
    steps = dist.all_reduce_min(len(loader))  # equal steps on every rank, or DDP would hang
    if job.optim.max_steps_per_epoch:
        steps = min(steps, job.optim.max_steps_per_epoch)
    if steps == 0:
        raise ConfigError(f"config key 'optim.batch_size': {job.optim.batch_size} exceeds a worker's "
                          f"{edges.shape[1]} training edges")
    item_log_q = None
    if job.optim.loss == "softmax" and job.optim.log_q:
        item_log_q = candidate_log_q(positive_draw_weights(edges, graph.num_users, graph.num_items,
                                                           job.optim.edge_sampling), job)
    split = eval_split(graph)
    metric = job.eval.metric
    log.info("%d worker(s), %s edges each, %d steps of %d per epoch, evaluating on %s", world_size,
             f"{edges.shape[1]:,}", steps, job.optim.batch_size, split)

    spent_s = sum(h["train_s"] + h.get("eval_s", 0.0) for h in history)
    for epoch in range(start_epoch, job.optim.epochs):
        if job.optim.time_budget_min and history and over_budget(history, spent_s, job.optim.time_budget_min):
            log.info("time budget of %g min reached after %d epochs: stopping", job.optim.time_budget_min, epoch)
            break
        _maybe_crash(job, run_dir, epoch)
        t0 = time.perf_counter()
        if job.optim.hard_negative_pool > 1:  # mine with the model as it is now (~0.2 s on Gowalla)
            loader.link_sampler.scoring_vectors = final_embeddings(raw_model, graph, job)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        for step, batch in zip(range(steps), loader):
            set_lr(optimizers, scheduled_lr(job, (epoch + step / steps) / job.optim.epochs))
            loss = batch_loss(model, raw_model, batch, graph, job, item_log_q, device)
            for opt in optimizers:
                opt.zero_grad()
            loss.backward()
            for opt in optimizers:
                opt.step()
            loss_sum += loss.detach().cpu()  # the device loss, on the CPU the reductions use
        totals = dist.all_reduce_sum({"loss": loss_sum, "steps": steps})
        record: dict[str, Any] = {"epoch": epoch, "loss": totals["loss"] / totals["steps"],
                                  # the slowest rank's time, so every rank keeps the same history
                                  "train_s": round(dist.all_reduce_max(time.perf_counter() - t0), 3)}
        if (epoch + 1) % job.eval.every == 0 or epoch == job.optim.epochs - 1:
            model.eval()
            t1 = time.perf_counter()
            emb = final_embeddings(raw_model, graph, job)
            record["eval"] = evaluate(emb, graph, split, job.eval.ks, batch_size=job.eval.batch_size,
                                      max_users=job.eval.max_users)
            record["eval_split"] = split
            record["eval_s"] = round(dist.all_reduce_max(time.perf_counter() - t1), 3)
            # Without a validation split the last epoch is kept: choosing by test would be cheating.
            if best is None or split == "test" or record["eval"][metric] > best["value"]:
                best = {"epoch": epoch, "value": record["eval"][metric]}
                if rank == 0:
                    save_model(run_dir / BEST_MODEL, raw_model.state_dict(), {"epoch": epoch, metric: best["value"],
                                                                 "config": config_to_dict(job)})
        history.append(record)
        spent_s += record["train_s"] + record.get("eval_s", 0.0)
        if rank == 0:
            write_history(run_dir, history)
            _log_epoch(record, metric)
        stop = (split == "val" and job.eval.patience > 0 and best is not None
                and epoch - best["epoch"] >= job.eval.patience * job.eval.every)
        _report_with_checkpoint(report, {**_flat(record), "stop": stop}, raw_model, optimizers, epoch,
                                history, best)
        if stop:
            log.info("no %s improvement for %d epochs: stopping early", metric, epoch - best["epoch"])
            break

    dist.barrier()  # rank 0 has written the best model
    best_state = load_model_state(run_dir / BEST_MODEL)
    raw_model.load_state_dict(best_state["model"])
    model.eval()
    emb = final_embeddings(raw_model, graph, job)
    test = evaluate(emb, graph, "test", job.eval.ks, batch_size=job.eval.batch_size, max_users=job.eval.max_users)
    popularity = evaluate_popularity_baseline(graph, "test", job.eval.ks, batch_size=job.eval.batch_size,
                                              max_users=job.eval.max_users)
    results = {"model": job.model.name, "best_epoch": best_state["info"]["epoch"], "test": test,
               "popularity_test": popularity, "epochs_run": len(history),
               "train_s": sum(h["train_s"] for h in history), "num_workers": world_size,
               "peak_rss_mb_per_worker": dist.all_reduce_max(peak_rss_mb())}
    if rank == 0:
        write_json_atomic(results, run_dir / RESULTS_FILE)
    if report is not None:
        report({"final": True, **{f"test/{k}": v for k, v in test.items()}}, None)
    return results


def over_budget(history: list[dict], spent_s: float, budget_min: float) -> bool:
    """True when one more epoch, as long as the slowest so far, would end past the budget. Every
    rank decides from the same reduced history, so all stop together."""
    longest_s = max(h["train_s"] + h.get("eval_s", 0.0) for h in history)
    return spent_s + longest_s > 60 * budget_min


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _flat(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k != "eval"}
    out.update({f"{record.get('eval_split', 'val')}/{k}": v for k, v in record.get("eval", {}).items()})
    return out


def _report_with_checkpoint(report: ReportFn | None, metrics: dict, model: nn.Module,
                            optimizers: list, epoch: int, history: list, best: dict | None, *,
                            state_file: str | None = None) -> None:
    """Report an epoch with a checkpoint: rank 0's copy of the replicated state, or, given a
    ``state_file`` name per rank, every rank's own shard (Ray merges the files into one folder)."""
    if report is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = None
        if state_file is not None or dist.rank() == 0:
            folder = save_training_state(Path(tmp), model=model, optimizers=optimizers, epoch=epoch,
                                         history=history, best=best, name=state_file or STATE_FILE)
        report(metrics, folder)


def _maybe_crash(job: TrainJobConfig, run_dir: Path, epoch: int) -> None:
    """Testing aid: worker 0 dies abruptly once, at the start of ``run.crash_at_epoch``."""
    marker = run_dir / ".crashed-once"
    if epoch == job.run.crash_at_epoch and dist.rank() == 0 and not marker.exists():
        marker.touch()
        log.warning("crash_at_epoch=%d: worker 0 exits now (testing fault tolerance)", epoch)
        os._exit(1)


def _log_epoch(record: dict, metric: str) -> None:
    text = f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  train {record['train_s']:.1f}s"
    if "eval" in record:
        shown = dict.fromkeys([metric, "recall@20", "ndcg@20"])
        text += "".join(f"  {record['eval_split']} {m} {record['eval'][m]:.4f}" for m in shown if m in record["eval"])
    log.info(text)


# ---------------------------------------------------------------------------------------------------
# Ray Train shell


def _ray_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch

    configure_logging()
    if ray.train.get_context().get_world_rank() != 0:  # one worker's log is enough
        logging.getLogger().setLevel(logging.WARNING)
    job = build_config(TrainJobConfig, loop_config["job"])
    checkpoint = ray.train.get_checkpoint()

    def report(metrics: dict, folder: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    def run(restore: Restored | None) -> None:
        if job.cluster.partitioned:
            from distgnn.partitioned import partitioned_train_loop

            partitioned_train_loop(job, Path(loop_config["run_dir"]), report=report, restore=restore)
        else:
            train_loop(job, Path(loop_config["run_dir"]), report=report, restore=restore,
                       wrap_model=ray.train.torch.prepare_model, device=ray.train.torch.get_device())

    if checkpoint is None:
        run(None)
    else:
        with checkpoint.as_directory() as folder:
            run(Restored(Path(folder)))


def launch(job: TrainJobConfig, run_dir: Path) -> dict[str, Any]:
    """Run :func:`train_loop` on ``cluster.num_workers`` Ray Train workers; returns the results."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        # Under `ray job submit` RAY_ADDRESS points at the cluster; otherwise a local one starts.
        ray.init(address=job.cluster.address or None, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    use_gpu = job.cluster.use_gpu == "true" or (
        job.cluster.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"job": config_to_dict(job), "run_dir": str(run_dir.resolve())},
        scaling_config=ScalingConfig(num_workers=job.cluster.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": job.cluster.cpus_per_worker}),
        run_config=RunConfig(name="ray", storage_path=str(run_dir.resolve()),
                             failure_config=FailureConfig(max_failures=job.cluster.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return _read_results(run_dir)


def _read_results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / RESULTS_FILE).read_text())


def resolve_graph(job: TrainJobConfig) -> TrainJobConfig:
    """Point the job at a verified graph directory (an absolute path: Ray workers run in other
    folders), preparing the synthetic default if none is given."""
    if job.graph:
        verify_graph_dir(job.graph)
        if job.cluster.partitioned:
            from distgnn.partition import verify_partitions

            verify_partitions(job.graph, job.cluster.num_workers)
        return replace_nested(job, graph=str(Path(job.graph).resolve()))
    if job.cluster.partitioned:
        raise ConfigError("config key 'cluster.partitioned': needs a partitioned --graph (python -m "
                          "distgnn.partition --graph DIR --partitions N, N = cluster.num_workers)")
    from distgnn.config import PrepareConfig
    from distgnn.prepare import prepare

    s = job.synthetic
    # the folder name carries a digest of every generator setting, so a changed setting never
    # reuses a stale graph
    digest = hashlib.sha1(json.dumps(config_to_dict(s), sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(job.run.output_dir) / f"synthetic-u{s.num_users}-i{s.num_items}-{digest}"
    if not (folder / "meta.json").exists():
        log.info("no --graph given: preparing the built-in synthetic dataset in %s", folder)
        prepare(PrepareConfig(output=str(folder), synthetic=s, split="random"))
    return replace_nested(job, graph=str(folder.resolve()))


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(TrainJobConfig, prog="python -m distgnn.train",
                         description="Train a GNN recommender with Ray Train workers (PyTorch DDP) on "
                                     "neighbor-sampled mini-batches. With no arguments: the built-in "
                                     "synthetic dataset, LightGCN, 2 workers.")
    parser.add_argument("--single-process", action="store_true",
                        help="run the training loop in this process, without Ray (debugging)")
    args = parser.parse_args(argv)
    single = args.__dict__.pop("single_process")
    configure_logging()
    return run_command(lambda: _train_command(args, single))


def _train_command(args, single: bool) -> int:
    job = config_from_args(TrainJobConfig, args)
    check_job(job)
    job = resolve_graph(job)
    run_dir = create_run_dir(job, job.run.output_dir, job.run.name)
    log.info("run directory: %s", run_dir)
    t0 = time.perf_counter()
    if single and job.cluster.partitioned:
        raise ConfigError("--single-process trains on the whole graph; drop --cluster.partitioned")
    results = train_loop(job, run_dir) if single else launch(job, run_dir)
    if job.cluster.partitioned:  # export reads one model.pt: join the parts' best shards
        from distgnn.partitioned import SHARDS_DIR, assemble_model

        assemble_model(run_dir / SHARDS_DIR, job.cluster.num_workers, run_dir / BEST_MODEL)
    wall_s = time.perf_counter() - t0
    history = read_history(run_dir)
    plot = plot_curves(run_dir, history, job.eval.metric)
    ks = [f"{m}@{k}" for k in job.eval.ks for m in ("recall", "ndcg")]
    print(f"\nTest metrics (best epoch {results['best_epoch']}, {results['epochs_run']} epochs, "
          f"{wall_s:.0f} s wall):")
    print(results_table({job.model.name: results["test"], "popularity": results["popularity_test"]}, ks))
    print(f"peak RSS per worker {results['peak_rss_mb_per_worker']:.0f} MiB, driver {peak_rss_mb():.0f} MiB")
    print(f"\nrun directory: {run_dir}  (curves: {plot.name if plot else '-'}, metrics.jsonl, results.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
