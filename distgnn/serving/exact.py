"""Recommendations straight from a training run, by exact scoring of the whole catalogue with the
model itself. This is how a pair model (NCF: an MLP scores each (user, item) pair) is served: no inner
product of a user vector and an item vector ranks as it does, so it has no export or ANN index. It also
works for every other model. Cost: one ``[B, num_items]`` score matrix per chunk of users."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from distgnn.core.errors import DataError
from distgnn.eval.metrics import CSR
from distgnn.eval.protocol import interacted
from distgnn.eval.protocol import top_items as protocol_top_items
from distgnn.nn.models import Recommender, exact_vectors
from distgnn.serving.export import load_run


def top_items(
    model: Recommender, vectors: Tensor, users: Tensor, num_users: int, exclude: list[CSR], k: int
) -> tuple[Tensor, Tensor]:
    """``(topk [B, k], scores [B, k])``: each user's best items by the model's own score
    (:meth:`Recommender.score`: the MLP for a pair model, the inner product otherwise) over exact
    scoring vectors ``[N, d]``, leaving out ``exclude``; ``-1`` where fewer than k items are left."""
    return protocol_top_items(model.score, vectors[users], vectors[num_users:], users, exclude, k)


class RunScorer:
    """A finished run loaded once: its best model, exact vectors, id maps and every user's seen items."""

    def __init__(self, run_dir: str | Path):
        self.job, self.model, self.graph, _ = load_run(run_dir)
        self.vectors = exact_vectors(self.model, self.graph, self.job)
        self.user_ids = pq.read_table(self.graph.path / "users.parquet", columns=["raw_id"])["raw_id"]
        self.item_ids = pq.read_table(self.graph.path / "items.parquet", columns=["raw_id"])["raw_id"]
        seen = interacted(self.graph)
        self.seen = [(seen.indptr, seen.indices)]

    def user_index(self, raw_ids: list[str]) -> np.ndarray:
        """Dense indices of raw user ids; an unknown id fails naming it."""
        index = pc.index_in(pa.array(raw_ids, pa.string()), value_set=self.user_ids.cast(pa.string()))
        missing = index.is_null().to_numpy(zero_copy_only=False)
        if missing.any():
            raise DataError(f"user id {raw_ids[int(np.argmax(missing))]!r} is not in the run's graph {self.graph.path}")
        return index.to_numpy(zero_copy_only=False).astype(np.int64)

    @torch.no_grad()
    def recommend(self, raw_ids: list[str], k: int = 10, *, chunk_size: int = 256) -> pa.Table:
        """Top-``k`` unseen items per user: ``user_id, rank, item_id, score`` (as ``Export.recommend``)."""
        users = torch.from_numpy(self.user_index(raw_ids))
        parts = []
        for start in range(0, users.numel(), chunk_size):  # bounds the [chunk, num_items] scores
            chunk = users[start : start + chunk_size]
            parts.append((chunk, *top_items(self.model, self.vectors, chunk, self.graph.num_users, self.seen, k)))
        user = torch.cat([c.repeat_interleave(k) for c, _, _ in parts]).numpy()
        item = torch.cat([t.flatten() for _, t, _ in parts]).numpy()
        score = torch.cat([s.flatten() for _, _, s in parts]).numpy()
        valid = item >= 0  # fewer than k unseen items
        return pa.table(
            {
                "user_id": self.user_ids.take(pa.array(user[valid])).cast(pa.string()),
                "rank": pa.array(np.tile(np.arange(1, k + 1), users.numel())[valid]),
                "item_id": self.item_ids.take(pa.array(item[valid])).cast(pa.string()),
                "score": pa.array(score[valid].astype(np.float32)),
            }
        )
