"""Exact layer-wise inference on Ray: every node's embeddings computed by N actors, each owning a
contiguous range of destination rows, one layer at a time.

    emb, info = distributed_embeddings(model, job, graph, num_workers=4)

The arithmetic is that of :func:`distgnn.nn.models.full_graph_embeddings` (same adjacency, same
per-chunk layer function, imported from there), so the result equals the single-process one to
float tolerance (bitwise for LightGCN); only who computes which rows changes. Per layer the driver
puts the current ``[N, d]`` table in Ray's object store once (actors on the same node read it
zero-copy), every actor computes its rows, and the driver assembles the next layer: cost
``O(E * L * d)`` in all, as in one process.

Why actors rather than tasks: an actor builds the adjacency of its rows once, from the memory-mapped
graph directory (it reads only its own rows of ``indices``), and keeps it for every layer; tasks
would rebuild it, or ship it, at each layer.
"""

from __future__ import annotations

import logging
import os
import resource
import time
import warnings

import numpy as np
import psutil
import torch
from torch import Tensor

from distgnn.core.cluster import start_ray
from distgnn.core.config import TrainJobConfig
from distgnn.data.graph import Graph, load_graph
from distgnn.nn.models import Recommender, full_adjacency, full_graph_embeddings, model_from_config

log = logging.getLogger(__name__)

NODE_TABLE = "embedding.weight"  # [N, d] id embeddings: only the driver, which computes layer 0, needs them


def row_ranges(indptr: Tensor, num_parts: int) -> list[tuple[int, int]]:
    """Split rows ``0..N-1`` into at most ``num_parts`` contiguous ``(start, stop)`` ranges of about
    equal cost, a row costing ``1 + degree`` (the sparse product is linear in CSR entries; the 1 is
    the row's output). Empty ranges are dropped, so a tiny graph may get fewer parts.

    Args:
        indptr: ``[N+1]`` CSR row pointer.
        num_parts: number of ranges wanted, at least 1.
    """
    if num_parts < 1:
        raise ValueError(f"num_parts must be at least 1, got {num_parts}")
    num_rows = indptr.numel() - 1
    cost_before = indptr.to(torch.float64) + torch.arange(num_rows + 1, dtype=torch.float64)  # [N+1]
    targets = cost_before[-1] * torch.arange(1, num_parts, dtype=torch.float64) / num_parts
    cuts = torch.searchsorted(cost_before, targets).tolist()
    bounds = sorted({0, num_rows, *cuts})
    return list(zip(bounds[:-1], bounds[1:]))


class LayerWorker:
    """One Ray actor: destination rows ``start..stop-1``, their adjacency (built once, in chunks of
    ``chunk_size`` rows, kept for every layer) and the model's layer weights.

    Args:
        job: the training job (model architecture); the model is built as training builds it.
        graph_path: graph directory, memory-mapped here rather than shipped through Ray.
        state: the model's layer weights, its state dict without ``embedding.weight`` (``ray.put``
            once by the driver, shared by all actors).
        start, stop: this actor's destination rows.
        chunk_size: destination rows per chunk; bounds the size of one sparse product.
    """

    def __init__(self, job: TrainJobConfig, graph_path: str, state: dict, start: int, stop: int, chunk_size: int):
        torch.set_num_threads(1)  # one CPU reserved per actor
        self.memory_at_start = psutil.Process().memory_full_info()  # imports done, nothing loaded
        graph = load_graph(graph_path)
        # Layers never read the id embeddings or features (the driver computes layer 0), so the
        # model is built on the meta device and only the layer weights are loaded: no [N, d] table
        # (or SAGE's [N, F] features) is allocated in any actor.
        with torch.device("meta"):
            self.model = model_from_config(job.model, graph, task=job.task)
        missing, unexpected = self.model.load_state_dict(state, strict=False, assign=True)
        assert missing == [NODE_TABLE] and not unexpected, (missing, unexpected)
        self.model.eval()
        self.start, self.stop = start, stop
        self.chunks = []
        for first in range(start, stop, chunk_size):
            rows = torch.arange(first, min(first + chunk_size, stop))
            self.chunks.append((rows, full_adjacency(graph.indptr, graph.indices, rows=rows)))

    def describe(self) -> dict:
        """Rows, CSR entries and bytes this actor holds (also tells the driver it is ready)."""
        held = sum(
            a.crow_indices().nbytes + a.col_indices().nbytes + a.values().nbytes + r.nbytes for r, a in self.chunks
        )
        return {
            "start": self.start,
            "stop": self.stop,
            "nnz": sum(a.col_indices().numel() for _, a in self.chunks),
            "held_mb": held / 2**20,
            "rss_at_start_mb": self.memory_at_start.rss / 2**20,
            "uss_at_start_mb": self.memory_at_start.uss / 2**20,
        }

    @torch.no_grad()
    def layer(self, index: int, x: np.ndarray) -> np.ndarray:
        """This actor's rows of layer ``index + 1`` from the whole layer ``index``, ``x [N, d]``."""
        with warnings.catch_warnings():
            # x is the object store's shared read-only copy; it is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(x)
        out = torch.empty(self.stop - self.start, x.shape[1], dtype=x.dtype)
        for rows, adj_t in self.chunks:
            first = int(rows[0]) - self.start
            out[first : first + rows.numel()] = self.model.layer(index, x, adj_t, x[rows])
        return out.numpy()

    def memory_mb(self) -> dict:
        """Peak RSS so far, and private memory now (USS: RSS less pages shared with other processes,
        such as the object store's layer tables this actor reads in place)."""
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        return {"peak_rss_mb": peak_rss_mb, "uss_mb": psutil.Process().memory_full_info().uss / 2**20}


@torch.no_grad()
def distributed_embeddings(
    model: Recommender,
    job: TrainJobConfig,
    graph: Graph,
    *,
    num_workers: int,
    chunk_size: int = 65536,
    progress: bool = False,
) -> tuple[Tensor, dict]:
    """Exact ``[N, d]`` embeddings of every node (before any cosine normalisation), computed
    layer-wise by ``num_workers`` Ray actors; equal to :func:`full_graph_embeddings`.

    Returns the embeddings (float32, CPU) and what it cost: ``ray_init_s``, ``workers_start_s``
    (actors started, graph rows loaded), ``layers_s``, and per worker its rows, CSR entries,
    adjacency held, and RSS and private memory (USS) after imports, peak RSS and USS at the end (MiB).
    """
    import ray
    from tqdm import tqdm

    if model.num_layers == 0:  # MF: the embeddings are the table itself, nothing to distribute
        return full_graph_embeddings(model, graph.indptr, graph.indices), {"per_worker": []}
    info: dict = {"ray_init_s": start_ray(num_cpus=max(num_workers, os.cpu_count() or 1))}
    t0 = time.perf_counter()
    ranges = row_ranges(graph.indptr, num_workers)
    state = ray.put({k: v.cpu() for k, v in model.state_dict().items() if k != NODE_TABLE})
    remote_worker = ray.remote(num_cpus=1)(LayerWorker)
    workers = [
        remote_worker.remote(job, str(graph.path.resolve()), state, start, stop, chunk_size) for start, stop in ranges
    ]
    try:
        described = ray.get([w.describe.remote() for w in workers])
        info["workers_start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        x = model.inputs(torch.arange(model.embedding.num_embeddings)).detach().cpu().contiguous()
        out = model.readout(None, x)
        for index in tqdm(range(model.num_layers), desc="layer-wise inference", unit="layer", disable=not progress):
            table = ray.put(x.numpy())
            x = torch.from_numpy(np.concatenate(ray.get([w.layer.remote(index, table) for w in workers])))
            out = model.readout(out, x)
        info["layers_s"] = time.perf_counter() - t0
        memory = ray.get([w.memory_mb.remote() for w in workers])
    finally:
        for w in workers:
            ray.kill(w)
    info["per_worker"] = [{**d, **m} for d, m in zip(described, memory)]
    log.info(
        "%d Ray workers: started in %.1f s, %d layers in %.1f s",
        len(workers),
        info["workers_start_s"],
        model.num_layers,
        info["layers_s"],
    )
    return out, info
