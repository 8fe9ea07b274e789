"""Stage 1b: split a prepared graph into parts, one per worker, each holding only what it owns.

    python -m distgnn.partition --graph data/gowalla --partitions 4 --method metis

Every node (users ``0..U-1``, items ``U..U+I-1``) is owned by exactly one part. A part holds the CSR
rows of its nodes (both directions of the bipartite training graph, neighbor ids kept global), their
feature rows, and the training edges whose *user* it owns. Written inside the graph directory::

    parts/meta.json            method, num_parts, seed, statistics, sha256 of every file below
    parts/node_part.npy        [N] int32 owner part of every node
    parts/part-000/nodes.npy   [n_p] int64 global ids of the owned nodes, ascending
                  /indptr.npy  [n_p+1] int64 CSR row pointer of the owned rows
                  /indices.npy [nnz_p] int64 global neighbor ids
                  /features.npy [n_p, Fu+Fi] float32 (only when the graph has node features)
                  /train_edges.npy [2, E_p] int64 (user node, item node), edges of owned users
    parts/part-001/...

Methods: ``metis`` minimises the edge cut (needs ``pip install distgnn[partition]``), ``random``
assigns nodes uniformly at random, ``hash`` derives the part from the node id alone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from distgnn.core.errors import ConfigError, DataError
from distgnn.core.files import atomic_folder, sha256_file
from distgnn.data.graph import csr_row_positions, load_graph, verify_graph_dir, write_meta

log = logging.getLogger(__name__)

METHODS = ("metis", "random", "hash")
PARTS_DIR = "parts"
NODE_PART_FILE = "node_part.npy"

# Fibonacci hashing (Knuth, TAOCP vol. 3, 6.4): multiply by 2^64 / golden ratio and keep the high
# bits, which mixes consecutive ids well; a second odd constant folds the seed in.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED_MIX = np.uint64(0xBF58476D1CE4E5B9)


def part_folder_name(part_id: int) -> str:
    return f"part-{part_id:03d}"


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------------
# Pure core


def hash_partition(nodes: Tensor | np.ndarray, num_parts: int, *, seed: int = 0) -> np.ndarray:
    """Part of each node id from the id alone: ``[n]`` int64 in ``0..num_parts-1``.

    Needs no adjacency and no global view, so a streaming pass over inputs too big for one machine
    can assign nodes chunk by chunk, and any worker can find a node's owner without the
    ``node_part`` map. The price: it ignores the graph, so its edge cut is that of a random split.
    """
    ids = _numpy(nodes).astype(np.uint64)
    with np.errstate(over="ignore"):  # wrap-around mod 2^64 is the point of the hash
        h = (ids + np.uint64(seed % 2**64) * _SEED_MIX) * _GOLDEN
    return ((h >> np.uint64(32)) % np.uint64(num_parts)).astype(np.int64)


def _metis_partition(indptr: np.ndarray, indices: np.ndarray, num_parts: int, seed: int) -> np.ndarray:
    try:
        import pymetis
    except ImportError:
        raise ConfigError(
            "partition method 'metis' needs pymetis: pip install distgnn[partition] (or use --method random / hash)"
        ) from None
    # METIS balances the sum of vertex weights per part, by default the node count. A worker's cost
    # (sampling, memory) follows the edges it owns, and in power-law graphs a few nodes hold most of
    # them, so weight every node by degree + 1: parts get similar numbers of CSR entries, and the +1
    # keeps isolated nodes (items seen only in val/test) weighted for their feature/embedding rows.
    vweights = (np.diff(indptr) + 1).astype(np.int64)
    adjacency = pymetis.CSRAdjacency(
        np.ascontiguousarray(indptr, dtype=np.int64), np.ascontiguousarray(indices, dtype=np.int64)
    )
    result = pymetis.part_graph(num_parts, adjacency, vweights=vweights, options=pymetis.Options(seed=seed))
    return np.asarray(result.vertex_part, dtype=np.int64)


def partition_nodes(
    indptr: Tensor | np.ndarray, indices: Tensor | np.ndarray, num_parts: int, *, method: str, seed: int = 0
) -> Tensor:
    """Assign every node of a graph to one of ``num_parts`` parts.

    Args:
        indptr: ``[N+1]`` CSR row pointer of the undirected training graph (both directions stored).
        indices: ``[nnz]`` neighbor ids.
        num_parts: number of parts ``P`` (1 <= P <= N).
        method: ``metis`` (minimum edge cut with edge-balanced parts, via pymetis), ``random``
            (uniform, seeded) or ``hash`` (from the node id only, see :func:`hash_partition`).
        seed: seeds METIS's randomised coarsening, the random draw, or the hash.

    Returns:
        ``[N]`` int64 part id of every node.
    """
    indptr, indices = _numpy(indptr), _numpy(indices)
    num_nodes = indptr.size - 1
    if method not in METHODS:
        raise ConfigError(f"config key 'partition_method': expected one of {', '.join(METHODS)}, got {method!r}")
    if not 1 <= num_parts <= max(num_nodes, 1):
        raise ConfigError(
            f"config key 'partitions': expected 1..{num_nodes} parts for a graph of {num_nodes} nodes, got {num_parts}"
        )
    if num_parts == 1:
        part = np.zeros(num_nodes, dtype=np.int64)
    elif method == "metis":
        part = _metis_partition(indptr, indices, num_parts, seed)
    elif method == "random":
        part = np.random.default_rng(seed).integers(0, num_parts, num_nodes, dtype=np.int64)
    else:
        part = hash_partition(np.arange(num_nodes), num_parts, seed=seed)
    return torch.from_numpy(part)


def partition_stats(
    indptr: Tensor | np.ndarray,
    indices: Tensor | np.ndarray,
    part: Tensor | np.ndarray,
    num_parts: int,
    *,
    num_users: int,
) -> dict:
    """Sizes and quality of a partition, as a JSON-ready dict.

    Args:
        indptr, indices: ``[N+1]``, ``[nnz]`` CSR of the undirected graph (both directions).
        part: ``[N]`` part id of every node.
        num_parts: ``P``.
        num_users: ``U``; nodes ``0..U-1`` are users, the rest items.

    Returns:
        ``num_nodes``/``num_users``/``num_items`` ``[P]`` owned nodes per part; ``num_edges`` ``[P]``
        CSR entries owned (sum of the degrees of owned nodes); ``num_train_edges`` ``[P]`` training
        edges owned (those of owned users); ``num_halo_nodes`` ``[P]`` distinct nodes of other parts
        adjacent to the part (what it must fetch for one hop); ``num_cut_edges`` and ``edge_cut``
        (count and fraction of undirected edges whose ends lie in different parts); ``balance``
        (max / mean of ``num_edges``) and ``node_balance`` (the same for ``num_nodes``).
    """
    indptr, indices = _numpy(indptr), _numpy(indices)
    part = _numpy(part).astype(np.int64)
    num_nodes = part.size
    degree = np.diff(indptr)
    nodes = np.bincount(part, minlength=num_parts)
    users = np.bincount(part[:num_users], minlength=num_parts)
    edges = np.bincount(part, weights=degree, minlength=num_parts).astype(np.int64)
    train_edges = np.bincount(part[:num_users], weights=degree[:num_users], minlength=num_parts).astype(np.int64)
    # Each undirected edge is stored twice (u->i and i->u) and both copies are cut or neither, so the
    # fraction of cut CSR entries is the fraction of cut edges.
    entry_part = np.repeat(part, degree)
    cut = entry_part != part[indices]
    num_cut_entries = int(np.count_nonzero(cut))
    # distinct (part, remote neighbor) pairs; the key fits int64 while P * N < 2^63
    halo_key = np.unique(entry_part[cut] * num_nodes + indices[cut])
    halo = np.bincount(halo_key // max(num_nodes, 1), minlength=num_parts)
    return {
        "num_parts": int(num_parts),
        "num_nodes": nodes.tolist(),
        "num_users": users.tolist(),
        "num_items": (nodes - users).tolist(),
        "num_edges": edges.tolist(),
        "num_train_edges": train_edges.tolist(),
        "num_halo_nodes": halo.tolist(),
        "num_cut_edges": num_cut_entries // 2,
        "edge_cut": num_cut_entries / indices.size if indices.size else 0.0,
        "balance": float(edges.max() / edges.mean()) if edges.sum() else 1.0,
        "node_balance": float(nodes.max() / nodes.mean()) if num_nodes else 1.0,
    }


def feature_rows(
    nodes: np.ndarray, num_users: int, user_features: np.ndarray | None, item_features: np.ndarray | None
) -> np.ndarray | None:
    """``[n, Fu + Fi]`` float32 feature rows of the sorted node ids ``nodes``, in the block layout of
    ``Graph.node_features`` (user features in the first Fu columns, item features in the last
    Fi, zeros elsewhere), built without materialising all N rows. None when the graph has none."""
    fu = user_features.shape[1] if user_features is not None else 0
    fi = item_features.shape[1] if item_features is not None else 0
    if fu + fi == 0:
        return None
    x = np.zeros((nodes.size, fu + fi), dtype=np.float32)
    num_owned_users = int(np.searchsorted(nodes, num_users))  # sorted: users come first
    if fu:
        x[:num_owned_users, :fu] = user_features[nodes[:num_owned_users]]
    if fi:
        x[num_owned_users:, fu:] = item_features[nodes[num_owned_users:] - num_users]
    return x


# ---------------------------------------------------------------------------------------------------
# Writing


def log_partition_stats(stats: dict, *, method: str) -> None:
    """One log line each: per-part counts, edge cut, balance."""
    per_part = "; ".join(
        f"{p}: {n:,} nodes ({u:,} users, {i:,} items), {e:,} edges, {h:,} halo"
        for p, (n, u, i, e, h) in enumerate(
            zip(stats["num_nodes"], stats["num_users"], stats["num_items"], stats["num_edges"], stats["num_halo_nodes"])
        )
    )
    log.info("%s partition into %d parts: %s", method, stats["num_parts"], per_part)
    log.info(
        "edge cut: %.1f%% of training edges (%s) cross parts", 100 * stats["edge_cut"], f"{stats['num_cut_edges']:,}"
    )
    log.info(
        "balance: largest part holds %.3fx the mean edges, %.3fx the mean nodes",
        stats["balance"],
        stats["node_balance"],
    )


def write_partitions(graph_dir: str | Path, num_parts: int, *, method: str = "metis", seed: int = 0) -> dict:
    """Partition a prepared graph directory and write ``parts/`` inside it (see the module docstring).

    The graph directory is verified first (so its checksums are not re-blessed over damaged files),
    ``parts/`` is built in a temporary sibling and renamed into place, then the top-level meta.json
    records ``partitions`` and fresh checksums of every file, ``parts/`` included.

    Returns:
        the :func:`partition_stats` dict, plus ``elapsed_s`` of the partitioning itself.
    """
    graph_dir = Path(graph_dir)
    verify_graph_dir(graph_dir)
    graph = load_graph(graph_dir)
    indptr, indices = graph.indptr.numpy(), graph.indices.numpy()
    t0 = time.perf_counter()
    part = partition_nodes(indptr, indices, num_parts, method=method, seed=seed).numpy()
    elapsed_s = time.perf_counter() - t0
    stats = partition_stats(indptr, indices, part, num_parts, num_users=graph.num_users)
    stats["elapsed_s"] = round(elapsed_s, 3)
    degree = np.diff(indptr)
    user_features = graph.user_features.numpy() if graph.user_features is not None else None
    item_features = graph.item_features.numpy() if graph.item_features is not None else None

    # One stable sort groups nodes by part with ids ascending inside each part: O(N log N) once
    # instead of a scan of all N nodes per part.
    order = np.argsort(part, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(part, minlength=num_parts))])
    with atomic_folder(graph_dir / PARTS_DIR, kind="parts") as tmp:
        np.save(tmp / NODE_PART_FILE, part.astype(np.int32))
        for p in range(num_parts):
            folder = tmp / part_folder_name(p)
            folder.mkdir()
            nodes = order[bounds[p] : bounds[p + 1]].astype(np.int64)
            _, position = csr_row_positions(graph.indptr, torch.from_numpy(nodes))
            part_indices = graph.indices.index_select(0, position).numpy()
            part_indptr = np.zeros(nodes.size + 1, dtype=np.int64)
            np.cumsum(degree[nodes], out=part_indptr[1:])
            # user rows come first (sorted ids) and hold exactly the training edges of owned users
            num_owned_users = int(np.searchsorted(nodes, graph.num_users))
            user_entries = int(part_indptr[num_owned_users])
            train_user = np.repeat(nodes[:num_owned_users], degree[nodes[:num_owned_users]])
            np.save(folder / "nodes.npy", nodes)
            np.save(folder / "indptr.npy", part_indptr)
            np.save(folder / "indices.npy", part_indices)
            np.save(folder / "train_edges.npy", np.stack([train_user, part_indices[:user_entries]]))
            x = feature_rows(nodes, graph.num_users, user_features, item_features)
            if x is not None:
                np.save(folder / "features.npy", x)
        write_meta(
            tmp,
            {
                "method": method,
                "num_parts": num_parts,
                "seed": seed,
                "num_users": graph.num_users,
                "num_items": graph.num_items,
                "stats": stats,
            },
        )

    top = {k: v for k, v in graph.meta.items() if k != "checksums"}
    top["partitions"] = {"num_parts": num_parts, "method": method, "seed": seed}
    write_meta(graph_dir, top)
    log_partition_stats(stats, method=method)
    log.info("wrote %s in %.1f s (partitioning %.1f s)", graph_dir / PARTS_DIR, time.perf_counter() - t0, elapsed_s)
    return stats


# ---------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class Partition:
    """One part of a partitioned graph directory. Arrays are memory-mapped."""

    path: Path  # the part's folder, parts/part-XXX
    part_id: int
    num_parts: int
    num_users: int
    num_items: int
    nodes: Tensor  # [n_p] int64 global ids of owned nodes, ascending
    indptr: Tensor  # [n_p+1] int64 CSR rows of the owned nodes
    indices: Tensor  # [nnz_p] int64 global neighbor ids
    features: Tensor | None  # [n_p, Fu+Fi] float32 feature rows of owned nodes
    train_edges: Tensor  # [2, E_p] int64 (user node, item node), training edges of owned users
    node_part: Tensor  # [N] int32 owner part of every node
    meta: dict  # parts/meta.json

    @property
    def num_nodes(self) -> int:
        """Number of owned nodes ``n_p``."""
        return self.nodes.numel()


def _load_npy(path: Path) -> Tensor:
    # mmap_mode="c": pages stay shared with other processes on the machine; torch needs a writable array
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def read_parts_meta(graph_dir: str | Path, num_parts: int | None = None) -> dict:
    """``parts/meta.json`` of a graph directory, refusing a missing or incomplete folder and, given
    ``num_parts`` (e.g. the number of workers), a different stored number of parts."""
    graph_dir = Path(graph_dir)
    parts_dir = graph_dir / PARTS_DIR
    meta_file = parts_dir / "meta.json"
    if not parts_dir.is_dir():
        raise DataError(
            f"{graph_dir}: no {PARTS_DIR}/ folder; partition it first with "
            f"python -m distgnn.partition --graph {graph_dir} --partitions P"
        )
    if not meta_file.is_file():
        raise DataError(f"{parts_dir}: no meta.json; the folder is incomplete, re-run python -m distgnn.partition")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{meta_file}: not valid JSON ({err})") from None
    stored = int(meta["num_parts"])
    if num_parts is not None and num_parts != stored:
        raise DataError(
            f"{parts_dir}: holds {stored} partitions, but {num_parts} were requested (one per "
            f"worker); re-partition with python -m distgnn.partition --graph {graph_dir} "
            f"--partitions {num_parts}"
        )
    return meta


def _verify_part(parts_dir: Path, meta: dict, part_id: int) -> None:
    stored = int(meta["num_parts"])
    if not 0 <= part_id < stored:
        raise DataError(f"{parts_dir}: holds parts 0..{stored - 1}, no part {part_id}")
    name = part_folder_name(part_id)
    folder = parts_dir / name
    if not folder.is_dir():
        raise DataError(f"{folder}: part folder missing ({stored} parts listed in {parts_dir / 'meta.json'})")
    mine = {f: d for f, d in meta.get("checksums", {}).items() if f == NODE_PART_FILE or f.startswith(name + "/")}
    for file, digest in mine.items():
        path = parts_dir / file
        if not path.is_file():
            raise DataError(f"{path}: missing, but listed in {parts_dir / 'meta.json'}")
        if sha256_file(path) != digest:
            raise DataError(
                f"{path}: checksum differs from {parts_dir / 'meta.json'}; the partition is "
                "damaged, re-run python -m distgnn.partition"
            )


def verify_partitions(graph_dir: str | Path, num_parts: int) -> dict:
    """Check, before any worker starts, that ``graph_dir/parts`` holds exactly ``num_parts`` complete
    parts whose files match their checksums. Returns parts/meta.json."""
    meta = read_parts_meta(graph_dir, num_parts)
    for part_id in range(num_parts):
        _verify_part(Path(graph_dir) / PARTS_DIR, meta, part_id)
    return meta


def load_partition(
    graph_dir: str | Path, part_id: int, *, num_parts: int | None = None, verify: bool = True
) -> Partition:
    """Load part ``part_id`` of ``graph_dir/parts``.

    Args:
        num_parts: the number of parts the caller expects (e.g. its number of workers); a different
            stored number raises instead of silently training on a wrong share of the graph.
        verify: check the sha256 of this part's files and of ``node_part.npy`` against parts/meta.json.
    """
    parts_dir = Path(graph_dir) / PARTS_DIR
    meta = read_parts_meta(graph_dir, num_parts)
    if verify:
        _verify_part(parts_dir, meta, part_id)
    else:
        _verify_part(parts_dir, {**meta, "checksums": {}}, part_id)
    folder = parts_dir / part_folder_name(part_id)
    features = folder / "features.npy"
    return Partition(
        path=folder,
        part_id=part_id,
        num_parts=int(meta["num_parts"]),
        num_users=int(meta["num_users"]),
        num_items=int(meta["num_items"]),
        nodes=_load_npy(folder / "nodes.npy"),
        indptr=_load_npy(folder / "indptr.npy"),
        indices=_load_npy(folder / "indices.npy"),
        features=_load_npy(features) if features.is_file() else None,
        train_edges=_load_npy(folder / "train_edges.npy"),
        node_part=_load_npy(parts_dir / NODE_PART_FILE),
        meta=meta,
    )


def global_to_local(partition: Partition, nodes: Tensor) -> Tensor:
    """Local row in ``partition`` of each global node id, -1 where the part does not own it.

    Args:
        nodes: ``[n]`` int64 global node ids.

    Returns:
        ``[n]`` int64 rows into ``partition.nodes`` / ``indptr`` / ``features``.
    """
    owned = partition.nodes
    if owned.numel() == 0:
        return torch.full_like(nodes, -1)
    pos = torch.searchsorted(owned, nodes).clamp_(max=owned.numel() - 1)
    return torch.where(owned.index_select(0, pos) == nodes, pos, torch.full_like(pos, -1))


# ---------------------------------------------------------------------------------------------------
# CLI
