"""The replicated strategy: every worker memory-maps the whole graph and holds a full copy of the
model; it trains on its own shard of the training edges. After ``backward`` the dense weights'
gradients are averaged over workers; the embedding tables' gradient rows go to the rows' owners,
which update them and share the new rows (:mod:`.gradients`).

What :func:`distgnn.training.loop.fit` asks of a strategy: ``model``, ``optimizers``,
``make_loader``, ``loss``, ``sync_gradients``, ``share_parameters``, ``vectors``, ``evaluate``,
``baselines``, ``write_samples``, ``save_best``, ``load_best``, ``save_state``, ``restore``,
``begin_epoch`` and ``epoch_stats``. The partitioned strategy answers the same.

Memory of a worker (``W`` = the id table, ``N x d x 4`` bytes): the table ``W``, its owned rows'
two Adam moments ``2 W / P``, the memory-mapped CSR, its shard of the training edges, and in
evaluation the scoring vectors ``[N, d + 1]`` plus one ``[N, d]`` layer (:func:`exact_vectors`).
Checkpoints: every worker writes its blocks' moments (rank 0 also the model), so no worker ever
gathers the whole optimizer state.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Data

from distgnn.core import dist
from distgnn.core.checkpoint import (
    BEST_MODEL,
    STATE_FILE,
    load_checked,
    load_model_into,
    load_training_state,
    loop_state,
    owned,
    restore_loop_state,
    save_checked,
    save_model,
)
from distgnn.core.config import TrainJobConfig
from distgnn.core.errors import DataError
from distgnn.data.graph import Graph, load_graph
from distgnn.eval.protocol import (
    SAMPLES_FILE,
    ScoringVectors,
    eval_split,
    evaluate_job,
    evaluate_rating_baselines,
    excluded,
    popularity_vectors,
    sample_users,
    samples_table,
    scored_users,
    top_items,
    write_samples_csv,
)
from distgnn.nn.loaders import link_loader, positive_draw_weights
from distgnn.nn.models import exact_vectors, model_from_config, sampled_adjacency
from distgnn.nn.sampler import csr_contains, make_sampler, sampling_device
from distgnn.training.gradients import average_dense
from distgnn.training.objective import (
    candidate_log_q,
    contrastive_term,
    link_loss,
    make_optimizers,
    positive_cells,
    rating_loss,
)

log = logging.getLogger(__name__)

NUM_SAMPLE_USERS, SAMPLE_K = 5, 10  # samples.csv: top-10 of 5 test users


def shard_positions(num_edges: int, rank: int, world_size: int, seed: int) -> Tensor:
    """``[E_r]`` positions (in :attr:`Graph.train_edges` order) of this worker's training edges: a
    fixed random permutation dealt round-robin, so shards differ in size by at most one edge. The
    permutation (``8 E`` bytes) lives only while the shard is copied out of it."""
    return torch.randperm(num_edges, generator=torch.Generator().manual_seed(seed))[rank::world_size].clone()


def edges_at(graph: Graph, positions: Tensor) -> Tensor:
    """The training edges at ``positions`` as ``edge_label_index [2, E_r]`` (user node, item node)."""
    return graph.train_edges_at(positions)


def shard_edges(graph: Graph, rank: int, world_size: int, seed: int) -> Tensor:
    """This worker's training edges (:func:`shard_positions`) as ``edge_label_index [2, E_r]``."""
    return edges_at(graph, shard_positions(graph.num_train_edges, rank, world_size, seed))


def rank_state_file(rank: int) -> str:
    """The replicated strategy's checkpoint file of worker ``rank`` (each writes its own)."""
    return f"state-rank-{rank:03d}.pt"


class Replicated:
    def __init__(self, job: TrainJobConfig, *, device: torch.device = torch.device("cpu")):
        self.job, self.device = job, device
        torch.manual_seed(job.run.seed)  # same initial weights on every rank
        self.graph = load_graph(job.graph)
        self.model = model_from_config(job.model, self.graph, task=job.task).to(device)
        self.ratings: Tensor | None = None  # [E_r] the shard's training ratings (rating task)
        if job.task == "rating":
            with torch.no_grad():  # start from the mean rating: the biases and dot products learn the rest
                self.model.global_bias.fill_(float(self.graph.train_values("rating").mean()))
        # after .to(device): the row-sharded optimizer holds views of the tables' storage
        self.optimizers = make_optimizers(self.model, job.optim.lr, row_sharded=True)
        self.eval_split = eval_split(self.graph)
        self.item_log_q: Tensor | None = None
        self.degree = self.graph.degree.to(device)  # LightGCN's edge weights, next to the subgraphs

    def make_loader(self, start_epoch: int):
        """The worker's loader (its shard of the edges), seeded per rank and epoch of (re)start."""
        job, graph, rank = self.job, self.graph, dist.rank()
        torch.manual_seed(job.run.seed + 1000 * rank + start_epoch)  # distinct batches per rank
        positions = shard_positions(graph.num_train_edges, rank, dist.world_size(), job.run.seed)
        edges = edges_at(graph, positions)
        if job.task == "rating":
            self.ratings = graph.train_values("rating")[positions].to(self.device)
        edge_weight = graph.train_values("weight")[positions] if job.optim.edge_weight else None
        device = sampling_device(
            job.sampler.device,
            self.device,
            graph_bytes=sum(t.numel() * t.element_size() for t in (graph.indptr, graph.indices)),
            free_bytes=torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else 0,
            num_workers=job.sampler.num_workers,
        )
        sampler = make_sampler(
            graph.indptr,
            graph.indices,
            list(job.fanouts),
            num_users=graph.num_users,
            num_items=graph.num_items,
            backend=job.sampler.backend,
            replace=job.sampler.replace,
            seed=job.run.seed + 7919 * rank + start_epoch,
            device=device,
        )
        sampler.hard_negative_pool = job.optim.hard_negative_pool  # vectors: refreshed each epoch
        if job.optim.loss == "softmax" and job.optim.log_q:
            self.item_log_q = candidate_log_q(
                positive_draw_weights(edges, graph.num_users, graph.num_items, job.optim.edge_sampling, edge_weight),
                job.optim,
            ).to(self.device)
        self.loader = link_loader(
            sampler,
            graph.num_nodes,
            edges,
            batch_size=job.optim.batch_size,
            num_negatives=job.num_negatives,
            edge_sampling=job.optim.edge_sampling,
            edge_weight=edge_weight,
            num_workers=job.sampler.num_workers,
            pin_memory=self.device.type == "cuda",
            device=sampler.device,
        )
        return self.loader, edges.shape[1]

    def begin_epoch(self) -> None:
        if self.job.optim.hard_negative_pool > 1:  # mine with the model as it is now (~0.2 s on Gowalla)
            sampler = self.loader.link_sampler
            sampler.scoring_vectors = self.vectors().to(sampler.device)

    def loss(self, batch: Data) -> Tensor:
        """Loss of one sampled batch: forward over the subgraph, then BPR or sampled softmax. The
        batch comes to the training device first (a no-op when it was sampled there; a copy that
        does not block from pinned memory when sampled on the CPU for a GPU), so its index
        bookkeeping runs next to the arithmetic."""
        model, graph, device, o = self.model, self.graph, self.device, self.job.optim
        batch = batch.to(device, non_blocking=True)
        n_id = batch.n_id
        adj_t = None
        if model.num_layers:
            adj_t = sampled_adjacency(n_id, batch.edge_index[0], batch.edge_index[1], self.degree)
        x = model.inputs(n_id)
        out = model.propagate(x, adj_t, batch.num_sampled_nodes)  # the seeds' rows only
        if self.job.task == "rating":
            return rating_loss(model, out, batch, self.ratings, o)

        def ego(local: Tensor) -> Tensor:
            # the inputs' rows when they are the id embeddings: no second lookup, so the table's
            # gradient holds each row once (the exchange copies rows instead of adding them)
            return x[local] if model.inputs_are_ego else model.ego(n_id[local])

        def positives(users: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
            sampler = self.loader.link_sampler  # its CSR: on the GPU or the CPU (sampler.device)
            users, candidates = users.to(sampler.device), candidates.to(sampler.device)
            return positive_cells(sampler.indptr, sampler.indices, users, candidates)

        loss = link_loss(
            out,
            ego,
            batch,
            o,
            self.item_log_q,
            positives,
            num_users=graph.num_users,
            item_bias=None if model.bias_embedding is None else model.item_bias,
            score=model.score,
        )
        if o.contrastive_weight > 0:
            loss = loss + o.contrastive_weight * contrastive_term(model, x, adj_t, batch, o)
        return loss

    def sync_gradients(self) -> None:
        """Table gradients to their rows' owners; dense gradients averaged everywhere."""
        tables, *dense = self.optimizers
        tables.reduce_gradients()
        average_dense([p for opt in dense for group in opt.param_groups for p in group["params"]])

    def share_parameters(self) -> list:
        """Start sending the rows each worker updated to every worker's copy of the tables;
        returns the transfers in flight (``wait()`` before the next forward)."""
        return self.optimizers[0].share_updated_rows()

    def epoch_stats(self, steps: int) -> dict:
        return {}

    def results(self, history: list[dict]) -> dict:
        return {}

    def vectors(self, rows: Tensor | None = None) -> Tensor:
        """``[N, d (+ columns)]`` exact scoring vectors of every node (or of the ascending node ids
        ``rows``); every worker computes them."""
        return exact_vectors(self.model, self.graph, self.job, rows=rows)

    def evaluate(self, split: str, *, samples_to: Path | None = None) -> dict[str, float]:
        """The job's metrics on ``split``, from the vectors of the users this worker scores and of
        every item (:func:`scored_users`: the whole ``[N, d]`` only when it scores every user);
        ``samples_to``: also write the run's ``samples.csv`` there (rank 0). Collective."""
        graph, job = self.graph, self.job
        users = [scored_users(graph, split, job.eval, task=job.task)]
        if samples_to is not None and dist.rank() == 0:
            users.append(self.sample_users())
        rows = torch.cat([torch.unique(torch.cat(users)), torch.arange(graph.num_users, graph.num_nodes)])
        vectors = ScoringVectors(self.vectors(rows), rows, graph.num_users)
        score = self.model.score if self.model.pair_model else None
        results = evaluate_job(vectors, graph, split, job.eval, task=job.task, score=score)
        if samples_to is not None:
            self.write_samples(samples_to, vectors)
        return results

    def sample_users(self) -> Tensor:
        """The users ``samples.csv`` shows: 5 random ones with test items."""
        return sample_users(torch.nonzero(self.graph.test.counts > 0).flatten(), NUM_SAMPLE_USERS)

    @torch.no_grad()
    def write_samples(self, run_dir: Path, vectors: ScoringVectors) -> None:
        """``run_dir/samples.csv``: the top-10 of :meth:`sample_users` (rank 0 writes it)."""
        graph, k = self.graph, SAMPLE_K
        if dist.rank() != 0:
            return
        users = self.sample_users()
        exclude = excluded(graph, "test")
        topk, scores = top_items(self.model.score, vectors.users(users), vectors.items, users, exclude, k)
        held_out = csr_contains(graph.test.indptr, graph.test.indices, users.repeat_interleave(k), topk.flatten())
        table = samples_table(graph.path, users, topk, scores, held_out.view(topk.shape))
        write_samples_csv(table, run_dir / SAMPLES_FILE)

    def baselines(self, split: str) -> dict[str, dict[str, float]]:
        """The task's baselines under the same protocol: popularity (ranking); the global mean and
        the user + item bias model (rating)."""
        if self.job.task == "rating":
            return evaluate_rating_baselines(self.graph, split)
        return {"popularity": evaluate_job(popularity_vectors(self.graph), self.graph, split, self.job.eval)}

    def save_best(self, run_dir: Path, info: dict) -> None:
        if dist.rank() == 0:
            save_model(run_dir / BEST_MODEL, self.model.state_dict(), info)

    def load_best(self, run_dir: Path) -> dict:
        dist.barrier()  # rank 0 has written the best model
        return load_model_into(run_dir / BEST_MODEL, self.model)

    def save_state(self, folder: Path, epoch: int, history: list[dict], best: dict | None) -> None:
        """This worker's checkpoint file in ``folder``: its blocks' Adam moments (no collective);
        rank 0's also holds the model (the same on every worker), the dense optimizers' state and
        the loop's. Ray merges every worker's file into one checkpoint folder."""
        tables, *dense = self.optimizers
        payload = {"tables": tables.shard_state_dict(), **loop_state(epoch, history, best)}
        if dist.rank() == 0:
            payload.update(model=self.model.state_dict(), optimizers=[opt.state_dict() for opt in dense])
        save_checked(payload, Path(folder) / rank_state_file(dist.rank()))

    def restore(self, folder: Path) -> dict:
        """Resume from a checkpoint folder written by any number of workers (:meth:`save_state`,
        or one ``state.pt`` of whole tables written before): the model and the loop's state from
        rank 0's file, this worker's moment rows from every file that holds some, one file at a
        time. Returns ``{"epoch", "history", "best"}``."""
        folder = Path(folder)
        if (folder / STATE_FILE).is_file() and not (folder / rank_state_file(0)).is_file():
            return load_training_state(folder, model=self.model, optimizers=self.optimizers)
        files = sorted(folder.glob("state-rank-*.pt"))
        if [f.name for f in files] != [rank_state_file(r) for r in range(len(files))] or not files:
            raise DataError(
                f"{folder}: expected checkpoint files state-rank-000.pt ..., found {[f.name for f in files]}"
            )
        tables, *dense = self.optimizers
        first = load_checked(files[0], "training checkpoint")
        self.model.load_state_dict(first["model"])
        for opt, opt_state in zip(dense, first["optimizers"]):
            opt.load_state_dict(owned(opt_state))
        try:
            tables.load_shard_states(
                load_checked(f, "training checkpoint")["tables"] if f != files[0] else first["tables"] for f in files
            )
        except ValueError as err:
            raise DataError(f"{folder}: {err}") from None
        log.debug("read %d worker checkpoint file(s) on %d worker(s)", len(files), dist.world_size())
        return restore_loop_state(first)
