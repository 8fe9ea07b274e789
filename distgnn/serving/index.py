"""FAISS indexes over item embeddings: build (CPU or GPU), search, search excluding seen items,
shard, save and load.

Thin on purpose: index types are FAISS factory strings (``"Flat"``, ``"IVF512,Flat"``,
``"IVF512,PQ8x8np"``, ``"HNSW32,Flat"``) chosen by :func:`index_factory_string` from the data size, and
every index searches by inner product (``faiss.METRIC_INNER_PRODUCT``), which is how the models score
user-item pairs. ``metric="cosine"`` is inner product on L2-normalised vectors: the base vectors are
normalised when added and the queries when searched, so :func:`search` must be told the metric
(callers record it next to the index file, e.g. in the export stage's manifest).

Names follow FAISS: ``xb [n, d]`` base vectors, ``xq [q, d]`` queries, ``k`` results per query,
``D, I`` scores and ids of the results, ``nprobe`` IVF lists visited per query.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Mapping

import faiss
import numpy as np
import torch

from distgnn.core.errors import ConfigError, DataError
from distgnn.data.graph import csr_row_positions

logger = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")
METRICS = ("ip", "cosine")
SHARD_MANIFEST = "manifest.json"

# rows normalised and added per call, so cosine needs at most this many extra rows of memory
_ADD_CHUNK_ROWS = 65_536
# FAISS k-means warns below 39 training points per centroid; fewer gives poor centroids
_MIN_POINTS_PER_CENTROID = 39


def default_nprobe(nlist: int) -> int:
    """IVF lists probed by default: nlist / 16, at least 8 (or all, for tiny indexes)."""
    return min(nlist, max(8, math.ceil(nlist / 16)))


def choose_index_params(num_vectors: int, dim: int) -> dict[str, int]:
    """Default index parameters for ``num_vectors`` vectors of dimension ``dim``.

    - ``nlist`` ~ 4 sqrt(n) IVF lists (FAISS's guideline is 4-16 sqrt(n)), clipped to [1, n / 39] so
      k-means has 39 points per centroid.
    - ``nprobe`` = nlist / 16 (rounded up), at least 8 lists: learned recommendation embeddings are
      far less clustered than image descriptors, and 1-2 probed lists of a small IVF lost over half
      the top-10 on a trained LightGCN export.
    - ``pq_m`` = the largest divisor of ``dim`` that is <= dim / 4 (at least 4 dimensions per
      sub-quantizer), ``pq_nbits`` = 8, lowered for tiny ``n`` so each codebook of 2**nbits centroids
      still gets 39 training points.
    - ``hnsw_m`` = 32 links per node, ``ef_construction`` = 80, ``ef_search`` = 64.
    """
    if num_vectors < 1 or dim < 1:
        raise ValueError(f"need at least one vector of positive dimension, got {num_vectors} x {dim}")
    nlist = int(min(max(1, round(4 * math.sqrt(num_vectors))), max(1, num_vectors // _MIN_POINTS_PER_CENTROID)))
    pq_m = max([m for m in range(1, dim // 4 + 1) if dim % m == 0], default=1)
    pq_nbits = int(min(8, max(1, math.floor(math.log2(max(2, num_vectors / _MIN_POINTS_PER_CENTROID))))))
    return {
        "nlist": nlist,
        "nprobe": default_nprobe(nlist),
        "pq_m": pq_m,
        "pq_nbits": pq_nbits,
        "hnsw_m": 32,
        "ef_construction": 80,
        "ef_search": 64,
    }


def _resolve_params(num_vectors: int, dim: int, overrides: Mapping[str, int]) -> dict[str, int]:
    params = choose_index_params(num_vectors, dim)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ConfigError(f"unknown index parameter(s) {unknown}; known: {sorted(params)}")
    params.update({name: int(value) for name, value in overrides.items()})
    return params


def index_factory_string(index_type: str, num_vectors: int, dim: int, **overrides: int) -> str:
    """FAISS factory string for ``index_type`` with parameters from :func:`choose_index_params`.

    Args:
        index_type: ``"flat"`` (exact), ``"ivf"`` (IVF-Flat), ``"ivfpq"`` (IVF with product
            quantisation) or ``"hnsw"``; any other string is taken as a raw FAISS factory string and
            returned unchanged.
        num_vectors, dim: size of the data the index will hold.
        overrides: replacements for the defaults, e.g. ``nlist=1024``, ``pq_m=16``.
    """
    if index_type not in INDEX_TYPES:
        return index_type
    params = _resolve_params(num_vectors, dim, overrides)
    if index_type == "flat":
        return "Flat"
    if index_type == "ivf":
        return f"IVF{params['nlist']},Flat"
    if index_type == "ivfpq":
        if dim % params["pq_m"] != 0:
            raise ConfigError(f"pq_m={params['pq_m']} must divide the dimension {dim}")
        # "np": skip polysemous training, which made a 20k-vector build take 9 s instead of 1 s and
        # only helps Hamming-distance filtering, which search does not use
        return f"IVF{params['nlist']},PQ{params['pq_m']}x{params['pq_nbits']}np"
    return f"HNSW{params['hnsw_m']},Flat"


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {METRICS}, got {metric!r}")


def _as_float32(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"{name} must be a 2-d array [n, d], got shape {x.shape}")
    return x


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as FAISS wants them for ``metric``: a normalised copy for cosine, else unchanged."""
    if metric == "cosine":
        x = x.copy()
        faiss.normalize_L2(x)  # leaves all-zero rows at zero
    return x


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


@functools.cache
def _gpu_resources():
    # one set of GPU resources (streams, temp memory) per process, alive as long as the indexes
    return faiss.StandardGpuResources()


def _is_gpu_index(index: faiss.Index) -> bool:
    return type(faiss.downcast_index(index)).__name__.startswith("Gpu")


def _has_hnsw(index: faiss.Index) -> bool:
    return hasattr(faiss.downcast_index(index), "hnsw")


def set_search_params(index: faiss.Index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set the search-time knobs of a built or loaded index (also every shard of an IndexShards).

    ``nprobe`` applies to IVF indexes, ``ef_search`` to HNSW; asking for one the index does not have
    raises :class:`ConfigError`.
    """
    if isinstance(index, faiss.IndexShards):
        # per shard, because the CPU ParameterSpace does not recognise GPU shards
        for shard_id in range(index.count()):
            set_search_params(faiss.downcast_index(index.at(shard_id)), nprobe=nprobe, ef_search=ef_search)
        return
    space = faiss.GpuParameterSpace() if _is_gpu_index(index) else faiss.ParameterSpace()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, int(value))
        except RuntimeError as err:
            raise ConfigError(f"cannot set {name}={value} on this index: {err}") from err


def build_index(
    xb: np.ndarray | torch.Tensor,
    index_type: str,
    *,
    metric: str = "ip",
    train_size: int = 100_000,
    nprobe: int | None = None,
    ef_search: int | None = None,
    seed: int = 0,
    use_gpu: str | bool = "auto",
    index_params: Mapping[str, int] | None = None,
) -> faiss.Index:
    """Build a trained and filled inner-product index over ``xb``; vector ids are row numbers.

    Args:
        xb: ``[n, d]`` base vectors (converted to float32).
        index_type: ``"flat"``, ``"ivf"``, ``"ivfpq"``, ``"hnsw"`` or a raw FAISS factory string.
        metric: ``"ip"`` (inner product) or ``"cosine"`` (inner product of L2-normalised vectors).
        train_size: IVF/PQ train on a random sample of this many vectors, raised to 39 per IVF
            centroid when that is more.
        nprobe: IVF lists visited per query; default from :func:`choose_index_params`.
        ef_search: HNSW search breadth; default from :func:`choose_index_params`.
        seed: seed of the training sample and of k-means.
        use_gpu: ``True`` (fail without a GPU), ``False``, or ``"auto"`` (GPU when FAISS sees one).
            HNSW always stays on CPU: FAISS has no GPU HNSW.
        index_params: overrides of :func:`choose_index_params` (``nlist``, ``pq_m``, ...).

    Returns:
        The index, on GPU or CPU. :func:`save_index` copies a GPU index back to CPU to write it.
    """
    _check_metric(metric)
    xb = _as_float32(xb, "xb")
    num_vectors, dim = xb.shape
    params = _resolve_params(num_vectors, dim, index_params or {})
    factory = index_factory_string(index_type, num_vectors, dim, **(index_params or {}))
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise ConfigError(f"index_type {index_type!r} (factory {factory!r}) is not valid: {err}") from err

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = seed
        pq = getattr(faiss.downcast_index(ivf), "pq", None)
        if pq is not None:
            pq.cp.seed = seed
    if _has_hnsw(index):
        faiss.downcast_index(index).hnsw.efConstruction = params["ef_construction"]

    if use_gpu not in (True, False, "auto"):
        raise ConfigError(f"use_gpu must be True, False or 'auto', got {use_gpu!r}")
    if use_gpu is True and not _gpu_available():
        raise ConfigError("use_gpu=True but this FAISS build sees no GPU (faiss-cpu, or no device)")
    on_gpu = bool(use_gpu) and _gpu_available() and not _has_hnsw(index)
    if on_gpu:
        # clone before training: GPU k-means and adds are the slow parts worth moving
        index = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)

    start = time.perf_counter()
    if not index.is_trained:
        num_lists = ivf.nlist if ivf is not None else 0
        num_train = max(train_size, _MIN_POINTS_PER_CENTROID * num_lists)
        num_train = min(num_vectors, num_train)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(num_vectors, num_train, replace=False))
        index.train(_prepare(xb[sample], metric))
    for chunk_start in range(0, num_vectors, _ADD_CHUNK_ROWS):
        index.add(_prepare(xb[chunk_start : chunk_start + _ADD_CHUNK_ROWS], metric))

    if ivf is not None:
        # the default follows the index's own nlist, which a raw factory string may have set
        # precedence: the nprobe argument, then an index_params override, then the default for the
        # index's own nlist (which a raw factory string may have set)
        if nprobe is None:
            nprobe = (
                int(index_params["nprobe"]) if index_params and "nprobe" in index_params else default_nprobe(ivf.nlist)
            )
        set_search_params(index, nprobe=nprobe)
    elif nprobe is not None:
        raise ConfigError(f"nprobe applies to IVF indexes only, not {factory!r}")
    if _has_hnsw(index):
        set_search_params(index, ef_search=params["ef_search"] if ef_search is None else ef_search)
    elif ef_search is not None:
        raise ConfigError(f"ef_search applies to HNSW indexes only, not {factory!r}")

    logger.info(
        "built %s (%s) over %d x %d on %s in %.1f s",
        factory,
        metric,
        num_vectors,
        dim,
        "GPU" if on_gpu else "CPU",
        time.perf_counter() - start,
    )
    return index


def search(index: faiss.Index, xq: np.ndarray | torch.Tensor, k: int, *, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product (cosine: queries normalised first, as the base vectors were).

    Args:
        index: from :func:`build_index`, :func:`load_index` or the sharded variants.
        xq: ``[q, d]`` queries.
        k: results per query.
        metric: the metric the index was built with.

    Returns:
        ``D [q, k]`` float32 scores and ``I [q, k]`` int64 ids, best first; ``I = -1`` where fewer
        than ``k`` results exist.
    """
    _check_metric(metric)
    xq = _prepare(_as_float32(xq, "xq"), metric)
    if xq.shape[1] != index.d:
        raise DataError(f"xq has dimension {xq.shape[1]}, the index {index.d}")
    D, I = index.search(xq, k)
    return D, I


def search_excluding(
    index: faiss.Index,
    xq: np.ndarray | torch.Tensor,
    k: int,
    exclude_indptr: np.ndarray | torch.Tensor,
    exclude_indices: np.ndarray | torch.Tensor,
    rows: np.ndarray | torch.Tensor,
    *,
    metric: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` per query, skipping the ids listed in the query's row of an exclusion CSR.

    Searches ``k + max excluded count`` over the batch (capped at ``ntotal``), so with an exact index
    the result is exactly the top-k of the non-excluded ids; then removes excluded ids with one
    vectorised membership test and keeps the first ``k`` survivors per query. One heavy user makes the
    whole batch search deeper: batch queries of similar counts if that matters (GPU indexes cap the
    search depth at 2048).

    Args:
        index, xq, k, metric: as in :func:`search`.
        exclude_indptr: ``[R+1]`` int64 row pointer of ids to exclude (e.g. a user's training items).
        exclude_indices: ``[nnz]`` int64 excluded ids.
        rows: ``[q]`` int64 row of the exclusion CSR for each query (e.g. the user index).

    Returns:
        ``D [q, k]``, ``I [q, k]`` as in :func:`search`, padded with ``-inf`` / ``-1`` where fewer than
        ``k`` ids remain.
    """
    indptr = torch.as_tensor(np.asarray(exclude_indptr), dtype=torch.int64)
    indices = np.asarray(exclude_indices, dtype=np.int64)
    rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
    num_queries = len(rows_t)
    if num_queries != len(xq):
        raise DataError(f"rows has {num_queries} entries but xq has {len(xq)} queries")
    counts = indptr[rows_t + 1] - indptr[rows_t]
    max_excluded = int(counts.max()) if num_queries else 0
    depth = max(1, min(k + max_excluded, index.ntotal))
    D, I = search(index, xq, depth, metric=metric)

    segment, position = csr_row_positions(indptr, rows_t)
    excluded_ids = indices[position.numpy()]
    # key = query * stride + id; the stride covers every id on either side so keys never collide
    stride = max(index.ntotal, int(excluded_ids.max()) + 1 if excluded_ids.size else 0, 1)
    excluded_keys = np.sort(segment.numpy() * stride + excluded_ids)
    keys = np.arange(num_queries, dtype=np.int64)[:, None] * stride + np.maximum(I, 0)
    if excluded_keys.size:
        slot = np.minimum(np.searchsorted(excluded_keys, keys), excluded_keys.size - 1)
        is_excluded = excluded_keys[slot] == keys
    else:
        is_excluded = np.zeros(I.shape, dtype=bool)
    keep = (I >= 0) & ~is_excluded

    if depth < k:
        pad = ((0, 0), (0, k - depth))
        D = np.pad(D, pad, constant_values=-np.inf)
        I = np.pad(I, pad, constant_values=-1)
        keep = np.pad(keep, pad, constant_values=False)
    # a stable sort of "not kept" moves the kept results to the front, in their original order
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    kept = np.take_along_axis(keep, order, axis=1)
    D = np.where(kept, np.take_along_axis(D, order, axis=1), -np.inf).astype(np.float32)
    I = np.where(kept, np.take_along_axis(I, order, axis=1), -1)
    return D, I


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` (a GPU index is copied to CPU first), via a temporary file and a
    rename so a crash never leaves a truncated index at ``path``."""
    if isinstance(index, faiss.IndexShards):
        raise ConfigError("an IndexShards is saved with save_sharded_index, not save_index")
    if _is_gpu_index(index):
        index = faiss.index_gpu_to_cpu(index)
    path = os.fspath(path)
    tmp_path = path + ".tmp"
    faiss.write_index(index, tmp_path)
    os.replace(tmp_path, path)


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by :func:`save_index` (on CPU; search parameters such as nprobe are
    saved with it)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such index file")
    try:
        return faiss.read_index(path)
    except RuntimeError as err:  # FAISS reports a truncated or foreign file as a RuntimeError
        reason = next((line for line in str(err).splitlines() if line.strip()), "unreadable")
        raise DataError(f"{path}: not a readable FAISS index ({reason.strip()[:160]})") from None


def build_sharded_index(
    xb: np.ndarray | torch.Tensor,
    index_type: str,
    *,
    max_shard_size: int,
    metric: str = "ip",
    train_size: int = 100_000,
    nprobe: int | None = None,
    ef_search: int | None = None,
    seed: int = 0,
    use_gpu: str | bool = "auto",
    index_params: Mapping[str, int] | None = None,
) -> faiss.IndexShards:
    """One index per contiguous block of at most ``max_shard_size`` rows of ``xb``, searched together.

    Each shard is built by :func:`build_index` (parameters chosen from its own size) and the shards
    are combined in a ``faiss.IndexShards`` with ``successive_ids``, so ids are global row numbers and
    :func:`search` / :func:`search_excluding` work unchanged. Arguments as in :func:`build_index`.
    """
    xb = _as_float32(xb, "xb")
    if max_shard_size < 1:
        raise ConfigError(f"max_shard_size must be positive, got {max_shard_size}")
    # not threaded: each shard's search already spreads queries over all cores with OpenMP
    shards = faiss.IndexShards(xb.shape[1], False, True)
    for shard_id, start in enumerate(range(0, len(xb), max_shard_size)):
        shard = build_index(
            xb[start : start + max_shard_size],
            index_type,
            metric=metric,
            train_size=train_size,
            nprobe=nprobe,
            ef_search=ef_search,
            seed=seed + shard_id,
            use_gpu=use_gpu,
            index_params=index_params,
        )
        shards.add_shard(shard)  # faiss's wrapper keeps a reference, so the shard stays alive
    return shards


def save_sharded_index(index: faiss.IndexShards, directory: str | os.PathLike) -> None:
    """Write each shard to ``directory/shard_NNN.faiss`` and then ``manifest.json`` listing them;
    the manifest is written last, so its presence marks a complete save."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    files, sizes = [], []
    for shard_id in range(index.count()):
        shard = faiss.downcast_index(index.at(shard_id))
        name = f"shard_{shard_id:03d}.faiss"
        save_index(shard, os.path.join(directory, name))
        files.append(name)
        sizes.append(int(shard.ntotal))
    manifest = {"num_shards": len(files), "dim": int(index.d), "files": files, "ntotal": sizes}
    tmp_path = os.path.join(directory, SHARD_MANIFEST + ".tmp")
    with open(tmp_path, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp_path, os.path.join(directory, SHARD_MANIFEST))


def load_sharded_index(directory: str | os.PathLike) -> faiss.IndexShards:
    """Read shards written by :func:`save_sharded_index` back into one ``IndexShards`` (on CPU)."""
    directory = os.fspath(directory)
    manifest_path = os.path.join(directory, SHARD_MANIFEST)
    if not os.path.exists(manifest_path):
        raise DataError(f"{manifest_path}: missing; the sharded index was not (completely) saved")
    with open(manifest_path) as f:
        manifest = json.load(f)
    shards = faiss.IndexShards(manifest["dim"], False, True)
    for name, expected in zip(manifest["files"], manifest["ntotal"], strict=True):
        shard = load_index(os.path.join(directory, name))
        if shard.ntotal != expected:
            raise DataError(
                f"{os.path.join(directory, name)}: holds {shard.ntotal} vectors, {SHARD_MANIFEST} says {expected}"
            )
        shards.add_shard(shard)  # faiss's wrapper keeps a reference, so the shard stays alive
    return shards
