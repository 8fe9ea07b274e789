"""Approximate top-k retrieval over item embeddings: FAISS Flat, IVF, HNSW and IVF-PQ side by side.

    python -m benchmarks.retrieval [--items 1000000] [--dim 64] [--export DIR] [--out DIR] [--quick]

Every index is built by ``distgnn.serving.index.build_index`` and searched through ``distgnn.serving.index.search``
(inner product, as the models score), one build per index and one row per search setting
(``nprobe`` for IVF and IVF-PQ, ``ef_search`` for HNSW, set with ``set_search_params``). Per row:

- build time (training + adding, seconds) and index size (bytes of ``faiss.serialize_index``);
- QPS at batch 1 (single queries one after another, with 1 and with 2 OpenMP threads) and at batch 1024
  (2 threads), all at ``k = 10``;
- recall@10 and recall@100 against exact search (the Flat index) on the same queries: the fraction of
  the exact top-k ids that the index returns in its top-k. HNSW searches at least ``k`` deep, so its
  recall@100 is measured at ``max(ef_search, 100)``;
- with ``--export``: Recall@20 / NDCG@20 of recommendations served from that index for every user
  with test items, training and validation items excluded by ``distgnn.serving.index.search_excluding``.

Data: (a) synthetic item and query vectors (:func:`synthetic_embeddings`) drawn from a mixture of
Gaussian clusters with power-law sizes and a power-law popularity norm; (b) optionally a real export
folder (items are the base, users the queries), with product-level quality when the manifest's graph
directory is readable.

The issue's target is checked on every dataset of at least 1M items: some IVF or HNSW setting with
recall@10 >= 0.95 and batch-1 QPS >= 10x that of Flat, each at its better thread count, both against
the Flat row and against Flat re-measured right after the row (the machine may be shared). Prints the
tables, writes them with a JSON of all rows and a recall@10-vs-QPS plot to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import torch

from distgnn.data.graph import ItemSets, item_sets_from_pairs
from distgnn.eval.metrics import add_sums, finalize, ranking_sums
from distgnn.serving.export import read_embeddings
from distgnn.serving.index import (
    build_index,
    choose_index_params,
    default_nprobe,
    index_factory_string,
    search,
    search_excluding,
    set_search_params,
)

log = logging.getLogger("benchmarks.retrieval")

BATCH_SIZE = 1024
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0
TARGET_MIN_ITEMS = 1_000_000
QUALITY_K = 20
NPROBES = (4, 8, 16, 32, 64, 128, 256)
EF_SEARCHES = (16, 32, 64, 128, 256)
PQ_NPROBES = (16, 64, 256)


# ---------------------------------------------------------------- data


def synthetic_embeddings(
    num_items: int,
    num_queries: int,
    dim: int,
    *,
    num_clusters: int = 4096,
    size_exponent: float = 0.9,
    spectrum_exponent: float = 0.1,
    spread: float = 0.6,
    norm_exponent: float = 0.1,
    seed: int = 0,
    chunk_rows: int = 262_144,
) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors ``xb [num_items, dim]`` and query vectors ``xq [num_queries, dim]`` (float32)
    that look like learned recommendation embeddings rather than uniform noise.

    Generative process, shared by items and queries (different draws):

    - ``num_clusters`` unit-norm cluster directions, anisotropic: per-axis scales
      ``j ** -spectrum_exponent`` (j = 1..dim, a decaying spectrum as in trained embedding tables),
      then a random rotation;
    - cluster sizes follow a power law, ``p(c) ~ (c + 1) ** -size_exponent``; users pick their cluster
      from the same law (most users like the popular tastes);
    - each vector is its cluster direction plus Gaussian noise of the same anisotropy and expected
      norm ``spread`` (clusters overlap, as tastes do);
    - items only: a popularity norm ``(num_items / rank) ** norm_exponent`` (rank a random
      permutation, rescaled to median 1), since inner-product models give popular items longer vectors.

    Generated in chunks of ``chunk_rows`` so the float32 output is the only full-size array.
    """
    if min(num_items, num_queries, dim, num_clusters) < 1:
        raise ValueError(
            f"sizes must be positive, got items={num_items} queries={num_queries} dim={dim} clusters={num_clusters}"
        )
    rng = np.random.default_rng(seed)
    axis_scale = np.arange(1, dim + 1, dtype=np.float64) ** -spectrum_exponent
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    centers = rng.standard_normal((num_clusters, dim)) * axis_scale
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    centers = centers.astype(np.float32)
    noise_scale = (spread * axis_scale / np.linalg.norm(axis_scale)).astype(np.float32)
    weights = np.arange(1, num_clusters + 1, dtype=np.float64) ** -size_exponent
    weights /= weights.sum()
    rotation = rotation.astype(np.float32)

    def draw(num: int, draw_rng: np.random.Generator) -> np.ndarray:
        out = np.empty((num, dim), dtype=np.float32)
        for start in range(0, num, chunk_rows):
            rows = min(chunk_rows, num - start)
            cluster = draw_rng.choice(num_clusters, rows, p=weights)
            x = draw_rng.standard_normal((rows, dim), dtype=np.float32) * noise_scale
            x += centers[cluster]
            out[start : start + rows] = x @ rotation
        return out

    item_rng, query_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=2))
    xb = draw(num_items, item_rng)
    rank = item_rng.permutation(num_items) + 1.0
    norm = (num_items / rank) ** norm_exponent
    xb *= (norm / np.median(norm)).astype(np.float32)[:, None]
    xq = draw(num_queries, query_rng)
    return xb, xq


def embedding_stats(x: np.ndarray, *, sample: int = 40_000, num_clusters: int = 200, seed: int = 0) -> dict[str, float]:
    """A few shape statistics of ``x [n, d]`` for comparing synthetic with learned embeddings.

    ``norm_cv`` is the coefficient of variation of the row norms; ``top8_var`` the share of variance
    in the 8 leading principal components; ``cluster_cos`` the mean cosine of a (normalised) row to
    its nearest of ``num_clusters`` spherical k-means centroids, on a sample of ``sample`` rows: 1.0
    means tight clusters, near 0 unclustered noise.
    """
    rng = np.random.default_rng(seed)
    rows = x[np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))].astype(np.float32)
    norms = np.linalg.norm(rows, axis=1)
    centred = rows - rows.mean(0)
    eig = np.linalg.eigvalsh(centred.T.astype(np.float64) @ centred)[::-1]
    unit = rows / np.maximum(norms, 1e-12)[:, None]
    num_clusters = max(1, min(num_clusters, len(unit) // 39))
    kmeans = faiss.Kmeans(unit.shape[1], num_clusters, niter=10, seed=seed, spherical=True, verbose=False)
    kmeans.train(unit)
    cos, _ = kmeans.index.search(unit, 1)
    return {
        "norm_cv": float(norms.std() / norms.mean()),
        "top8_var": float(eig[:8].sum() / eig.sum()),
        "cluster_cos": float(cos.mean()),
    }


@dataclass
class Quality:
    """Product-level check of an export: recommend for ``users`` and score against the test split."""

    user_emb: np.ndarray  # [U, d] all user vectors, indexed by user index
    users: np.ndarray  # [m] int64 users with test items, ordered by number of excluded items
    exclude: ItemSets  # training + validation items per user (not recommended)
    truth: ItemSets  # test items per user
    reference: dict[str, float] = field(default_factory=dict)  # the export's own test metrics


@dataclass
class Dataset:
    name: str
    xb: np.ndarray  # [n, d] base (item) vectors
    xq: np.ndarray  # [q, d] queries timed and compared with exact search
    quality: Quality | None = None


def load_export(path: str | Path, *, num_queries: int, seed: int = 0) -> Dataset:
    """Items as the base, a random sample of ``num_queries`` users as queries; with a readable graph
    directory (the manifest's ``graph``), the test users and their train/val/test item sets."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    _, user_emb = read_embeddings(path / "users.parquet")
    _, item_emb = read_embeddings(path / "items.parquet")
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(len(user_emb), min(num_queries, len(user_emb)), replace=False))
    dataset = Dataset(f"export {path.name} ({len(item_emb):,} items)", item_emb, user_emb[queries])

    graph = Path(manifest.get("graph", ""))
    needed = [graph / f"{name}.parquet" for name in ("train", "val", "test")]
    if not all(f.is_file() for f in needed):
        log.warning("graph directory %s not readable: no recommendation-quality check", graph)
        return dataset
    pairs = {f.stem: pq.read_table(f, columns=["user", "item"]) for f in needed}
    num_users = len(user_emb)
    # seen.parquet holds train + val + test; test items must stay rankable, so exclude train + val only
    exclude = item_sets_from_pairs(
        np.concatenate([pairs[s]["user"].to_numpy() for s in ("train", "val")]),
        np.concatenate([pairs[s]["item"].to_numpy() for s in ("train", "val")]),
        num_users,
    )
    truth = item_sets_from_pairs(pairs["test"]["user"].to_numpy(), pairs["test"]["item"].to_numpy(), num_users)
    users = np.flatnonzero(truth.counts.numpy() > 0)
    # similar exclusion counts per batch: search_excluding searches k + the batch's largest count deep
    users = users[np.argsort(exclude.counts.numpy()[users], kind="stable")]
    reference = {k: v for k, v in manifest.get("test_metrics", {}).items() if k.endswith(f"@{QUALITY_K}")}
    dataset.quality = Quality(user_emb, users.astype(np.int64), exclude, truth, reference)
    return dataset


# ---------------------------------------------------------------- measurements (pure where possible)


def recall_at(ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of ``|ids[:, :k] & exact_ids[:, :k]| / k``; ``-1`` (no result) never counts.

    Vectorised with sorted keys ``query * stride + id`` instead of a per-query set intersection.
    """
    if ids.shape[0] != exact_ids.shape[0] or min(ids.shape[1], exact_ids.shape[1]) < k:
        raise ValueError(f"need [q, >={k}] ids from both, got {ids.shape} and {exact_ids.shape}")
    got, exact = ids[:, :k].astype(np.int64), exact_ids[:, :k].astype(np.int64)
    stride = int(max(got.max(initial=0), exact.max(initial=0))) + 1
    row = np.arange(len(got), dtype=np.int64)[:, None] * stride
    exact_keys = np.sort((row + exact)[exact >= 0])
    if exact_keys.size == 0:
        return 0.0
    keys = row + np.maximum(got, 0)
    slot = np.minimum(np.searchsorted(exact_keys, keys), exact_keys.size - 1)
    hits = (exact_keys[slot] == keys) & (got >= 0)
    return float(hits.sum() / (len(got) * k))


def single_query_qps(
    index: faiss.Index, xq: np.ndarray, k: int, *, threads: int, max_queries: int, max_seconds: float, rounds: int = 5
) -> float:
    """Queries per second answering one query at a time with ``threads`` OpenMP threads: the median
    over ``rounds`` rounds (the machine is shared, so a median resists bursts of other work).

    Each round runs ``max_queries // rounds`` different queries or stops after ``max_seconds / rounds``;
    10 warm-up queries come first.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        for i in range(min(10, len(xq))):
            search(index, xq[i : i + 1], k, metric="ip")
        per_round = max(1, min(max_queries, len(xq)) // rounds)
        qps = []
        for r in range(rounds):
            done, start = 0, time.perf_counter()
            for i in range(r * per_round, (r + 1) * per_round):
                search(index, xq[i % len(xq) : i % len(xq) + 1], k, metric="ip")
                done += 1
                if time.perf_counter() - start > max_seconds / rounds:
                    break
            qps.append(done / (time.perf_counter() - start))
        return float(np.median(qps))
    finally:
        faiss.omp_set_num_threads(previous)


def batch_search(index: faiss.Index, xq: np.ndarray, k: int, batch_size: int = BATCH_SIZE) -> tuple[np.ndarray, float]:
    """``I [q, k]`` over all of ``xq`` in batches of ``batch_size``, and the queries per second of the
    median batch."""
    search(index, xq[:16], k, metric="ip")  # warm-up: OpenMP threads, first touch
    ids = np.empty((len(xq), k), dtype=np.int64)
    seconds_per_query = []
    for lo in range(0, len(xq), batch_size):
        start = time.perf_counter()
        ids[lo : lo + batch_size] = search(index, xq[lo : lo + batch_size], k, metric="ip")[1]
        seconds_per_query.append((time.perf_counter() - start) / len(ids[lo : lo + batch_size]))
    return ids, float(1.0 / np.median(seconds_per_query))


def recommendation_quality(index: faiss.Index, quality: Quality, *, batch_size: int = BATCH_SIZE) -> dict:
    """Recall/NDCG@20 of ``search_excluding`` top-20 lists over ``quality.users`` (sums, then means)."""
    total = None
    for lo in range(0, len(quality.users), batch_size):
        users = quality.users[lo : lo + batch_size]
        _, ids = search_excluding(
            index,
            quality.user_emb[users],
            QUALITY_K,
            quality.exclude.indptr,
            quality.exclude.indices,
            users,
            metric="ip",
        )
        sums = ranking_sums(
            torch.from_numpy(ids), torch.from_numpy(users), quality.truth.indptr, quality.truth.indices, [QUALITY_K]
        )
        total = sums if total is None else add_sums(total, sums)
    result = finalize(total)
    return {f"recall@{QUALITY_K}": result[f"recall@{QUALITY_K}"], f"ndcg@{QUALITY_K}": result[f"ndcg@{QUALITY_K}"]}


@dataclass
class Row:
    dataset: str
    family: str  # flat, ivf, hnsw, ivfpq m16, ...
    factory: str
    setting: str  # e.g. "nprobe=32"; "(default)" marks distgnn's default
    build_s: float
    index_bytes: int
    qps_b1_t1: float
    qps_b1_t2: float
    qps_b1024: float
    recall10: float
    recall100: float
    flat_qps_b1_now: float  # Flat's batch-1 QPS (1 thread) measured right after this row's timings
    load: float  # 1-minute load average when the row was measured
    quality: dict = field(default_factory=dict)

    @property
    def qps_b1(self) -> float:
        """Batch-1 QPS at the better of the two thread counts."""
        return max(self.qps_b1_t1, self.qps_b1_t2)

    @property
    def speedup(self) -> float:
        """Batch-1 QPS over Flat's, measured in the same minute."""
        return self.qps_b1 / self.flat_qps_b1_now


@dataclass(frozen=True)
class IndexSpec:
    family: str
    index_type: str
    index_params: dict
    knob: str | None  # "nprobe", "ef_search" or None
    values: tuple[int, ...]


def index_specs(
    families: list[str], num_items: int, dim: int, *, quick: bool, ef_construction: int | None
) -> list[IndexSpec]:
    """What to build for a dataset of ``num_items x dim``, each library default included in its sweep."""
    params = choose_index_params(num_items, dim)
    nlist = params["nlist"]

    def sweep(values: tuple[int, ...], default: int, limit: int) -> tuple[int, ...]:
        return tuple(sorted({v for v in values if v <= limit} | {default}))

    nprobes = sweep(NPROBES[1::2] if quick else NPROBES, default_nprobe(nlist), nlist)
    specs = []
    for family in families:
        if family == "flat":
            specs.append(IndexSpec("flat", "flat", {}, None, (0,)))
        elif family == "ivf":
            specs.append(IndexSpec("ivf", "ivf", {}, "nprobe", nprobes))
        elif family == "hnsw":
            hnsw_params = {} if ef_construction is None else {"ef_construction": ef_construction}
            specs.append(
                IndexSpec(
                    "hnsw",
                    "hnsw",
                    hnsw_params,
                    "ef_search",
                    sweep(EF_SEARCHES[::2] if quick else EF_SEARCHES, params["ef_search"], 10**9),
                )
            )
        elif family == "ivfpq":
            for pq_m in (16, 32):
                if dim % pq_m == 0:
                    specs.append(
                        IndexSpec(
                            f"ivfpq m{pq_m}",
                            "ivfpq",
                            {"pq_m": pq_m},
                            "nprobe",
                            sweep(PQ_NPROBES, default_nprobe(nlist), nlist),
                        )
                    )
        else:
            raise ValueError(f"unknown index family {family!r}; known: flat, ivf, hnsw, ivfpq")
    return specs


def bench_dataset(dataset: Dataset, specs: list[IndexSpec], *, single_queries: int, single_max_s: float) -> list[Row]:
    """Build every index of ``specs`` over ``dataset.xb`` and measure every search setting."""
    num_items, dim = dataset.xb.shape
    rows: list[Row] = []
    exact_ids = flat = None
    defaults = choose_index_params(num_items, dim)
    for spec in specs:
        factory = index_factory_string(spec.index_type, num_items, dim, **spec.index_params)
        log.info("%s: building %s", dataset.name, factory)
        start = time.perf_counter()
        index = build_index(dataset.xb, spec.index_type, use_gpu=False, index_params=spec.index_params)
        build_s = time.perf_counter() - start
        index_bytes = int(faiss.serialize_index(index).size)
        log.info("%s: built %s in %.1f s, %.1f MB", dataset.name, factory, build_s, index_bytes / 1e6)
        for value in spec.values:
            setting = ""
            if spec.knob == "nprobe":
                set_search_params(index, nprobe=value)
                setting = f"nprobe={value}"
                is_default = value == default_nprobe(faiss.extract_index_ivf(index).nlist)
            elif spec.knob == "ef_search":
                set_search_params(index, ef_search=value)
                setting = f"ef_search={value}"
                is_default = value == defaults["ef_search"]
            else:
                is_default = False
            if is_default:
                setting += " (default)"
            ids100, _ = batch_search(index, dataset.xq, 100)
            if exact_ids is None:
                if spec.family != "flat":
                    raise ValueError("the first index of a dataset must be flat (the exact reference)")
                exact_ids, flat = ids100, index
            ids10, qps_b1024 = batch_search(index, dataset.xq, 10)
            qps = [
                single_query_qps(index, dataset.xq, 10, threads=t, max_queries=single_queries, max_seconds=single_max_s)
                for t in (1, 2)
            ]
            # Flat again, briefly, so every row has a reference taken under the same machine load
            flat_now = (
                qps[0]
                if index is flat
                else single_query_qps(
                    flat,
                    dataset.xq[::-1],
                    10,
                    threads=1,
                    max_queries=single_queries // 5,
                    max_seconds=single_max_s / 5,
                    rounds=3,
                )
            )
            row = Row(
                dataset.name,
                spec.family,
                factory,
                setting,
                build_s,
                index_bytes,
                qps[0],
                qps[1],
                qps_b1024,
                recall_at(ids10, exact_ids, 10),
                recall_at(ids100, exact_ids, 100),
                flat_now,
                os.getloadavg()[0],
            )
            if dataset.quality is not None:
                row.quality = recommendation_quality(index, dataset.quality)
            log.info(
                "%s | %s %s | b1 %.0f/%.0f qps (%.1fx Flat now), b1024 %.0f qps | R@10 %.4f R@100 %.4f | load %.1f %s",
                dataset.name,
                spec.family,
                setting,
                row.qps_b1_t1,
                row.qps_b1_t2,
                row.speedup,
                row.qps_b1024,
                row.recall10,
                row.recall100,
                row.load,
                row.quality or "",
            )
            rows.append(row)
        if index is not flat:
            del index
            gc.collect()
    return rows


def target_check(rows: list[Row], num_items: int) -> tuple[bool, Row | None, str]:
    """Is there an IVF/HNSW row with recall@10 >= 0.95 whose batch-1 QPS (better thread count) is
    >= 10x Flat's, both against the Flat row (better thread count) and against Flat re-measured in the
    same minute? Returns (reached, the fastest qualifying row, or else the best-recall row of those
    10x faster, one line of explanation)."""
    flat = [r for r in rows if r.family == "flat"]
    if not flat:
        return False, None, "no Flat row to compare with"
    flat_qps = flat[0].qps_b1

    def fast(r: Row) -> bool:
        return r.qps_b1 >= TARGET_SPEEDUP * flat_qps and r.speedup >= TARGET_SPEEDUP

    candidates = [r for r in rows if r.family in ("ivf", "hnsw")]
    passing = [r for r in candidates if r.recall10 >= TARGET_RECALL and fast(r)]
    size_ok = num_items >= TARGET_MIN_ITEMS
    prefix = "" if size_ok else f"(n/a: {num_items:,} < 1M items; informative only) "
    if passing:
        best = max(passing, key=lambda r: r.qps_b1)
        reached = size_ok
        # the fastest passing setting of each family, fastest family first
        per_family = {}
        for r in sorted(passing, key=lambda r: -r.qps_b1):
            per_family.setdefault(r.family, r)
        line = (
            prefix
            + f"{'REACHED' if reached else 'met'}: "
            + "; ".join(
                f"{r.family} {r.setting} recall@10 {r.recall10:.4f} at {r.qps_b1:,.0f} QPS (batch 1) = "
                f"{r.qps_b1 / flat_qps:.1f}x the Flat row's {flat_qps:,.0f} QPS and {r.speedup:.1f}x Flat "
                f"re-measured in the same minute"
                for r in per_family.values()
            )
        )
        return reached, best, line
    quick = [r for r in candidates if fast(r)]
    best = max(quick, key=lambda r: r.recall10) if quick else None
    line = prefix + (
        f"NOT reached: no IVF/HNSW setting has recall@10 >= {TARGET_RECALL} at >= "
        f"{TARGET_SPEEDUP:.0f}x Flat's batch-1 QPS ({flat_qps:,.0f} in the Flat row)"
    )
    if best is not None:
        line += f"; best at >= 10x: {best.family} {best.setting} recall@10 {best.recall10:.4f}"
    return False, best, line


# ---------------------------------------------------------------- output


def markdown_table(rows: list[Row]) -> str:
    has_quality = any(r.quality for r in rows)
    head = [
        "index",
        "factory",
        "setting",
        "build s",
        "index MB",
        "QPS b1 (1 thr)",
        "QPS b1 (2 thr)",
        "x Flat b1 (same min)",
        "QPS b1024 (2 thr)",
        "recall@10",
        "recall@100",
        "load",
    ]
    if has_quality:
        head += [f"Recall@{QUALITY_K}", f"NDCG@{QUALITY_K}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
    for r in rows:
        cells = [
            r.family,
            f"`{r.factory}`",
            r.setting or "-",
            f"{r.build_s:.1f}",
            f"{r.index_bytes / 1e6:,.1f}",
            f"{r.qps_b1_t1:,.0f}",
            f"{r.qps_b1_t2:,.0f}",
            f"{r.speedup:.1f}",
            f"{r.qps_b1024:,.0f}",
            f"{r.recall10:.4f}",
            f"{r.recall100:.4f}",
            f"{r.load:.1f}",
        ]
        if has_quality:
            cells += [
                f"{r.quality.get(f'recall@{QUALITY_K}', float('nan')):.4f}",
                f"{r.quality.get(f'ndcg@{QUALITY_K}', float('nan')):.4f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows_by_dataset: dict[str, list[Row]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows_by_dataset), figsize=(6.5 * len(rows_by_dataset), 4.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], rows_by_dataset.items()):
        families = list(dict.fromkeys(r.family for r in rows))
        for family in families:
            fam = [r for r in rows if r.family == family]
            marker = "*" if family == "flat" else "o"
            ax.plot(
                [r.qps_b1 for r in fam],
                [r.recall10 for r in fam],
                marker=marker,
                markersize=10 if family == "flat" else 5,
                label=family,
            )
        flat = [r for r in rows if r.family == "flat"]
        if flat:
            ax.axvline(
                TARGET_SPEEDUP * flat[0].qps_b1,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"{TARGET_SPEEDUP:.0f}x Flat QPS",
            )
        ax.axhline(TARGET_RECALL, color="grey", linestyle=":", linewidth=1, label=f"recall@10 = {TARGET_RECALL}")
        ax.set_xscale("log")
        ax.set_xlabel("queries/s at batch 1 (better of 1 and 2 threads, log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(name, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{model}, {os.cpu_count()} CPUs, {mem_gib:.0f} GiB; Python {platform.python_version()}, "
        f"faiss {faiss.__version__}, numpy {np.__version__}"
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="synthetic items (0: no synthetic set)")
    parser.add_argument("--dim", type=int, default=64, help="synthetic embedding dimension")
    parser.add_argument("--queries", type=int, default=4096, help="queries per dataset for recall and batch QPS")
    parser.add_argument("--clusters", type=int, default=4096, help="synthetic taste clusters")
    parser.add_argument("--single-queries", type=int, default=300, help="queries timed one at a time")
    parser.add_argument("--single-max-s", type=float, default=20.0, help="time cap of one batch-1 measurement")
    parser.add_argument("--indexes", default="flat,ivf,hnsw,ivfpq", help="families to build (flat is always first)")
    parser.add_argument(
        "--hnsw-items",
        type=int,
        default=0,
        help="build HNSW over only the first N synthetic items, with its own exact reference (0: all items)",
    )
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW efConstruction (default: distgnn's)")
    parser.add_argument("--export", default=None, help="an export folder written by distgnn.serving.export")
    parser.add_argument("--out", default="benchmarks/out", help="folder for the table, JSON and plot")
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads for building and batch search")
    parser.add_argument("--quick", action="store_true", help="100k items, 1024 queries, shorter sweeps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.items = min(args.items, 100_000)
        args.queries = min(args.queries, 1024)
        args.single_queries = min(args.single_queries, 100)
    faiss.omp_set_num_threads(args.threads)
    families = ["flat"] + [f for f in args.indexes.split(",") if f and f != "flat"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, load_start, t_start = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()[0], time.perf_counter()

    def run(dataset: Dataset, fams: list[str]) -> list[Row]:
        specs = index_specs(fams, *dataset.xb.shape, quick=args.quick, ef_construction=args.ef_construction)
        return bench_dataset(dataset, specs, single_queries=args.single_queries, single_max_s=args.single_max_s)

    results: dict[str, list[Row]] = {}
    stats: dict[str, dict] = {}
    references: dict[str, str] = {}
    datasets_info: dict[str, int] = {}
    if args.items > 0:
        t0 = time.perf_counter()
        xb, xq = synthetic_embeddings(args.items, args.queries, args.dim, num_clusters=args.clusters, seed=args.seed)
        name = f"synthetic {args.items:,} x {args.dim}"
        log.info("generated %s in %.1f s", name, time.perf_counter() - t0)
        synthetic = Dataset(name, xb, xq)
        stats[name] = embedding_stats(xb)
        datasets_info[name] = args.items
        split_hnsw = "hnsw" in families and 0 < args.hnsw_items < args.items
        results[name] = run(synthetic, [f for f in families if not (split_hnsw and f == "hnsw")])
        if split_hnsw:
            sub = Dataset(f"synthetic first {args.hnsw_items:,} x {args.dim}", xb[: args.hnsw_items], xq)
            datasets_info[sub.name] = args.hnsw_items
            results[sub.name] = run(sub, ["flat", "hnsw"])
        del synthetic, xb, xq
        gc.collect()
    if args.export:
        dataset = load_export(args.export, num_queries=args.queries, seed=args.seed)
        stats[dataset.name] = embedding_stats(dataset.xb)
        datasets_info[dataset.name] = len(dataset.xb)
        results[dataset.name] = run(dataset, families)
        if dataset.quality is not None:
            references[dataset.name] = (
                f"Recall@{QUALITY_K}/NDCG@{QUALITY_K} over the {len(dataset.quality.users):,} users with test "
                f"items, train+val items excluded; the export's manifest reports "
                + ", ".join(f"{k} {v:.4f}" for k, v in dataset.quality.reference.items())
                + " (exact, from training's evaluator)."
            )

    command = "python -m benchmarks.retrieval " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [
        f"## Retrieval benchmark ({started})",
        "",
        f"    {command.strip()}",
        "",
        f"Machine: {machine_description()}. Load average (1 min) at start {load_start:.1f}, "
        f"at end {os.getloadavg()[0]:.1f}.",
        "",
        f"{args.queries} queries per dataset; k = 10 for all QPS; batch 1: up to {args.single_queries} "
        f"single queries (at most {args.single_max_s:.0f} s) per thread count; batch 1024 and builds: "
        f"{args.threads} OpenMP threads. Recall is against Flat on the same queries.",
        "",
    ]
    for name, rows in results.items():
        reached, _, line = target_check(rows, datasets_info[name])
        report += [f"### {name}", ""]
        if name in stats:
            report += [
                "Embedding statistics: "
                + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats[name].items()),
                "",
            ]
        if name in references:
            report += [references[name], ""]
        report += [markdown_table(rows), "", f"Target: {line}", ""]
    peak = peak_rss_mib()
    report.append(f"Peak RSS: {peak:,.0f} MiB; whole run {(time.perf_counter() - t_start) / 60:.1f} min.")
    text = "\n".join(report) + "\n"
    print("\n" + text)
    write_atomic(out / "retrieval.md", text)
    write_atomic(
        out / "retrieval.json",
        json.dumps(
            {
                "command": command,
                "machine": machine_description(),
                "stats": stats,
                "peak_rss_mib": peak,
                "rows": [
                    asdict(r) | {"qps_b1": r.qps_b1, "speedup": r.speedup} for rows in results.values() for r in rows
                ],
            },
            indent=2,
        ),
    )
    plot(results, out / "retrieval.png")
    log.info("wrote %s, %s, %s", out / "retrieval.md", out / "retrieval.json", out / "retrieval.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
