"""Sample recommendations of a finished run, for a person to judge: a few test users' top-k with the
items' raw features (category, genres, ...) and whether each item is one of the user's held-out items.
``python -m distgnn.train`` writes them to ``RUN/samples.csv``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from distgnn.core.files import write_bytes_atomic
from distgnn.eval.protocol import excluded
from distgnn.nn.models import exact_vectors
from distgnn.nn.sampler import csr_contains
from distgnn.serving.exact import top_items
from distgnn.serving.export import load_run

SAMPLES_FILE = "samples.csv"


def sample_recommendations(run_dir: str | Path, *, num_users: int = 5, k: int = 10, seed: int = 0) -> pa.Table:
    """Top-``k`` unseen items of ``num_users`` random test users of a run (its best model, scored
    exactly as evaluation does): user_id, rank, item_id, score, held_out (the item is one of the
    user's test items), then every raw feature column prepare kept in items.parquet."""
    job, model, graph, _ = load_run(run_dir)
    vectors = exact_vectors(model, graph, job)
    with_test = torch.nonzero(graph.test.counts > 0).flatten()
    users = with_test[torch.randperm(with_test.numel(), generator=torch.Generator().manual_seed(seed))[:num_users]]
    topk, scores = top_items(model, vectors, users, graph.num_users, excluded(graph, "test"), k)
    item = topk.flatten()
    user = users.repeat_interleave(k)
    held_out = csr_contains(graph.test.indptr, graph.test.indices, user, item)
    items = pq.read_table(graph.path / "items.parquet")
    raw_users = pq.read_table(graph.path / "users.parquet", columns=["raw_id"])["raw_id"]
    columns = {
        "user_id": raw_users.take(pa.array(user.numpy())),
        "rank": pa.array(np.tile(np.arange(1, k + 1), users.numel())),
        "item_id": items["raw_id"].take(pa.array(item.numpy())),
        "score": pa.array(scores.flatten().numpy()),
        "held_out": pa.array(held_out.numpy()),
    }
    for name in items.column_names:
        if name not in ("index", "raw_id"):
            columns[name] = items[name].take(pa.array(item.numpy()))
    return pa.table(columns)


def write_samples(run_dir: str | Path, **kwargs) -> Path:
    """:func:`sample_recommendations` as ``RUN/samples.csv`` (written atomically)."""
    table = sample_recommendations(run_dir, **kwargs)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    path = Path(run_dir) / SAMPLES_FILE
    write_bytes_atomic(path, sink.getvalue().to_pybytes())
    return path
