"""Sample recommendations of a finished run, for a person to judge: a few test users' top-k with the
items' raw features (category, genres, ...) and whether each item is one of the user's held-out items.
Training writes them to ``RUN/samples.csv`` from the workers' own final scoring vectors
(:func:`distgnn.eval.protocol.samples_table`); this module computes the same from a run directory."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import torch

from distgnn.eval.protocol import SAMPLES_FILE, excluded, sample_users, samples_table, top_items, write_samples_csv
from distgnn.nn.models import exact_vectors
from distgnn.nn.sampler import csr_contains
from distgnn.serving.export import load_run

__all__ = ["SAMPLES_FILE", "sample_recommendations", "write_samples"]


def sample_recommendations(run_dir: str | Path, *, num_users: int = 5, k: int = 10, seed: int = 0) -> pa.Table:
    """Top-``k`` unseen items of ``num_users`` random test users of a run (its best model, scored
    exactly as evaluation does): user_id, rank, item_id, score, held_out (the item is one of the
    user's test items), then every raw feature column prepare kept in items.parquet. Loads the run's
    graph and model and computes every node's vectors (the training driver never calls this)."""
    job, model, graph, _ = load_run(run_dir)
    vectors = exact_vectors(model, graph, job)
    users = sample_users(torch.nonzero(graph.test.counts > 0).flatten(), num_users, seed=seed)
    topk, scores = top_items(model.score, vectors[users], vectors[graph.num_users :], users, excluded(graph, "test"), k)
    held_out = csr_contains(graph.test.indptr, graph.test.indices, users.repeat_interleave(k), topk.flatten())
    return samples_table(graph.path, users, topk, scores, held_out.view(topk.shape))


def write_samples(run_dir: str | Path, **kwargs) -> Path:
    """:func:`sample_recommendations` as ``RUN/samples.csv`` (written atomically)."""
    return write_samples_csv(sample_recommendations(run_dir, **kwargs), Path(run_dir) / SAMPLES_FILE)
