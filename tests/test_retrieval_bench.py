"""Smoke tests of the retrieval benchmark's pure parts (benchmarks/retrieval.py), on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.retrieval import (
    Dataset,
    Quality,
    Row,
    bench_dataset,
    index_specs,
    markdown_table,
    recall_at,
    recommendation_quality,
    synthetic_embeddings,
    target_check,
)
from distgnn.data.graph import item_sets_from_pairs
from distgnn.eval.metrics import evaluate_ranking, finalize
from distgnn.serving.index import build_index


def test_synthetic_embeddings_shapes_and_determinism():
    xb, xq = synthetic_embeddings(3000, 50, 16, num_clusters=40, seed=1)
    assert xb.shape == (3000, 16) and xq.shape == (50, 16)
    assert xb.dtype == np.float32 and xq.dtype == np.float32
    again, _ = synthetic_embeddings(3000, 50, 16, num_clusters=40, seed=1)
    np.testing.assert_array_equal(xb, again)
    other, _ = synthetic_embeddings(3000, 50, 16, num_clusters=40, seed=2)
    assert not np.allclose(xb, other)
    # popularity norm: a heavy right tail, median norm near the noise-plus-center norm
    norms = np.linalg.norm(xb, axis=1)
    assert norms.max() / np.median(norms) > 1.5


def test_recall_at_by_hand_and_against_sets():
    ids = np.array([[1, 2, 3], [4, -1, 6]])
    exact = np.array([[3, 2, 9], [6, 5, 4]])
    assert recall_at(ids, exact, 2) == pytest.approx((1 / 2 + 0 / 2) / 2)  # row 0: {1,2}&{3,2}; row 1: {4}&{6,5}
    assert recall_at(ids, exact, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
    rng = np.random.default_rng(0)
    # search results hold each id at most once per row
    ids = np.array([rng.permutation(30)[:10] for _ in range(40)])
    exact = np.array([rng.permutation(30)[:10] for _ in range(40)])
    slow = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall_at(ids, exact, 10) == pytest.approx(slow)


def _row(family: str, qps: float, recall10: float, flat_now: float = 100.0) -> Row:
    return Row("d", family, "F", "", 0.0, 0, qps, qps / 2, qps, recall10, recall10, flat_now, 1.0)


def test_target_check():
    rows = [_row("flat", 100, 1.0), _row("ivf", 900, 0.99), _row("ivf", 1500, 0.96), _row("hnsw", 5000, 0.90)]
    reached, best, _ = target_check(rows, 1_000_000)
    assert reached and best.qps_b1 == 1500
    reached, best, line = target_check(rows, 999_999)
    assert not reached and "n/a" in line
    reached, best, _ = target_check(rows[:2] + rows[3:], 1_000_000)
    assert not reached and best.family == "hnsw"
    # 10x the Flat row but not 10x Flat re-measured in the same minute: not reached
    reached, _, _ = target_check([rows[0], _row("ivf", 1500, 0.96, flat_now=200.0)], 1_000_000)
    assert not reached


def test_index_specs_include_library_defaults():
    specs = {
        s.family: s
        for s in index_specs(["flat", "ivf", "hnsw", "ivfpq"], 1_000_000, 64, quick=False, ef_construction=None)
    }
    assert specs["ivf"].values[-1] == 256 and 250 in specs["ivf"].values  # nlist 4000 -> default nprobe 250
    assert 64 in specs["hnsw"].values
    assert {"ivfpq m16", "ivfpq m32"} <= specs.keys()
    small = {s.family: s for s in index_specs(["ivf"], 2000, 8, quick=True, ef_construction=None)}
    assert max(small["ivf"].values) <= 51  # never more lists than the index has


def test_bench_dataset_and_quality_match_exact_evaluation():
    rng = np.random.default_rng(0)
    xb, xq = synthetic_embeddings(2000, 64, 8, num_clusters=16, seed=0)
    num_users = 64
    user = rng.integers(0, num_users, 600)
    item = rng.integers(0, 2000, 600)
    pairs = np.unique(user * 2000 + item)
    user, item = pairs // 2000, pairs % 2000
    is_test = rng.random(len(pairs)) < 0.3
    exclude = item_sets_from_pairs(user[~is_test], item[~is_test], num_users)
    truth = item_sets_from_pairs(user[is_test], item[is_test], num_users)
    users = np.flatnonzero(truth.counts.numpy() > 0).astype(np.int64)
    quality = Quality(xq, users, exclude, truth)

    rows = bench_dataset(
        Dataset("tiny", xb, xq, quality),
        index_specs(["flat", "ivf"], 2000, 8, quick=True, ef_construction=None),
        single_queries=5,
        single_max_s=0.2,
    )
    assert rows[0].family == "flat" and rows[0].recall10 == 1.0 and rows[0].recall100 == 1.0
    assert all(0.0 <= r.recall10 <= 1.0 for r in rows)
    exact = finalize(
        evaluate_ranking(
            torch.from_numpy(xq),
            torch.from_numpy(xb),
            torch.from_numpy(users),
            [(exclude.indptr, exclude.indices)],
            (truth.indptr, truth.indices),
            [20],
        )
    )
    assert rows[0].quality["recall@20"] == pytest.approx(exact["recall@20"], abs=1e-9)
    flat = build_index(xb, "flat", use_gpu=False)
    assert recommendation_quality(flat, quality, batch_size=7)["ndcg@20"] == pytest.approx(exact["ndcg@20"])
    assert markdown_table(rows).count("\n") == len(rows) + 1
