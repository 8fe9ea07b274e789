"""Stage 1b: split a prepared graph into parts, one per worker, each holding only what it owns.

    python -m distgnn.partition --graph data/gowalla --partitions 4             # --method auto
    python -m distgnn.partition --graph data/big --partitions 2 --method ldg --memory_gb 6

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

Methods: ``metis`` minimises the edge cut (pymetis; holds the whole graph several times over, see
:func:`partition_memory_bytes`), ``ldg`` is a streaming balanced partitioner that reads the graph in
chunks of rows (restreamed linear deterministic greedy), ``random`` assigns nodes uniformly at
random, ``hash`` derives the part from the node id alone. ``auto`` (the default) takes METIS when
its predicted peak fits the memory budget, else ``ldg``, and logs which and why in one line.

Memory: apart from METIS, nothing here holds more than a few arrays of N entries plus one chunk of
CSR entries (``chunk_entries``): statistics are counted chunk by chunk, and each part's files are
appended to chunk by chunk, so a graph of any number of edges partitions in the memory its nodes need.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from distgnn.core.errors import ConfigError, DataError
from distgnn.core.files import atomic_folder, sha256_file
from distgnn.data.graph import row_chunks, verify_graph_dir, write_meta

log = logging.getLogger(__name__)

METHODS = ("metis", "ldg", "hash", "random")  # what partition_nodes takes
CHOICES = ("auto", *METHODS)  # what write_partitions and the command take
STREAMING_METHOD = "ldg"  # what auto takes when METIS does not fit
PARTS_DIR = "parts"
NODE_PART_FILE = "node_part.npy"

# CSR entries read at once by the chunked passes (32 MB of int64); their temporaries are a few times that.
CHUNK_ENTRIES = 1 << 22

# Fibonacci hashing (Knuth, TAOCP vol. 3, 6.4): multiply by 2^64 / golden ratio and keep the high
# bits, which mixes consecutive ids well; a second odd constant folds the seed in.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SEED_MIX = np.uint64(0xBF58476D1CE4E5B9)

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # np.bitwise_count needs numpy 2


def part_folder_name(part_id: int) -> str:
    return f"part-{part_id:03d}"


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.numpy() if isinstance(x, Tensor) else np.asarray(x)


# ---------------------------------------------------------------------------------------------------
# Reading a CSR by chunks of rows


def entry_reader(indices: Tensor | np.ndarray) -> Callable[[int, int], np.ndarray]:
    """A function ``(start, stop) -> indices[start:stop]`` as an int64 array in memory.

    A memory-mapped ``.npy`` (``np.load(..., mmap_mode=...)``) is read with plain file reads instead
    of through its mapping: pages of a mapping count in this process's resident memory once touched
    (1.5 GB for the CSR of 100M interactions), while reads leave them in the page cache only."""
    arr = indices.numpy() if isinstance(indices, Tensor) else indices
    if (
        isinstance(arr, np.memmap)
        and arr.ndim == 1
        and arr.flags.c_contiguous
        and arr.filename
        and os.path.getsize(arr.filename) == arr.offset + arr.nbytes  # the whole file, not a slice of it
    ):
        path, offset, dtype = arr.filename, arr.offset, arr.dtype

        def read(start: int, stop: int) -> np.ndarray:
            chunk = np.fromfile(path, dtype=dtype, count=stop - start, offset=offset + start * dtype.itemsize)
            return chunk.astype(np.int64, copy=False)

        return read
    arr = np.asarray(arr)
    return lambda start, stop: np.asarray(arr[start:stop], dtype=np.int64)


def _chunks(indptr: np.ndarray, indices, chunk_entries: int, max_rows: int | None = None) -> Iterator:
    """``(first row, stop row, neighbor ids of those rows)`` over the whole CSR, in row order."""
    read = entry_reader(indices)
    for a, b in row_chunks(torch.from_numpy(indptr), chunk_entries, max_rows=max_rows):
        yield a, b, read(int(indptr[a]), int(indptr[b]))


# ---------------------------------------------------------------------------------------------------
# Memory each method needs, and the automatic choice

# Calibrated by measurement (peak RSS of write_partitions in a fresh process, benchmarks/partition.py,
# on its planted-cluster graphs of 0.8M-95M edges; table in benchmarks/RESULTS.md). Chunked passes
# (hash, random, ldg alike: LDG's own state is smaller than the statistics' and writing's):
_BASE_BYTES = 260 << 20  # the interpreter with numpy and torch imported (249 MB measured)
_NODE_BYTES = 40  # per node: indptr, degrees, part ids, bincount temporaries (29-33 measured, 2.4M-12M nodes)
_CHUNK_BYTES_PER_ENTRY = 52  # per entry of one chunk: neighbor ids, their parts, cut mask, keys, sort orders
# METIS: pymetis hands our int64 CSR to METIS without a copy (idx_t is 64-bit; the mapped pages count),
# then METIS adds unit edge weights, the coarsened graphs and, in recursive bisection (P <= 8), the
# split subgraphs. METIS alone measured 86, 102, 110, 118 bytes per CSR entry at 1.6M, 8.9M, 18M, 37M
# entries (P = 2 and 8 alike, k-way at P = 16/32 3% more): the cost per entry grows with the number of
# coarsening levels, so the model is (-60 + 7 log2 entries) per entry + 150 per node: 2-5% above the
# peaks of write_partitions measured at 0.7M-18.5M edges, 16-22% above on a denser and a sparser graph.
_METIS_BYTES_PER_ENTRY_LOG2 = 7
_METIS_BYTES_PER_ENTRY_OFFSET = -60
_METIS_BYTES_PER_NODE = 150


def partition_memory_bytes(
    method: str, *, num_nodes: int, num_entries: int, num_parts: int, chunk_entries: int = CHUNK_ENTRIES
) -> int:
    """Predicted peak resident bytes of :func:`write_partitions` with ``method``.

    Args:
        method: one of :data:`METHODS`.
        num_nodes: ``N``; num_entries: CSR entries (twice the training edges); num_parts: ``P``.
        chunk_entries: CSR entries read at once by the chunked passes.

    Every method pays for the chunked passes (statistics, writing): O(N) arrays, a halo bitmap of
    ``P x N`` bits and one chunk's temporaries. METIS also holds the whole CSR in memory while it runs.
    """
    chunk = min(chunk_entries, num_entries)
    passes = _BASE_BYTES + _NODE_BYTES * num_nodes + num_parts * num_nodes // 8 + _CHUNK_BYTES_PER_ENTRY * chunk
    if method == "metis":
        per_entry = max(_METIS_BYTES_PER_ENTRY_OFFSET + _METIS_BYTES_PER_ENTRY_LOG2 * np.log2(max(num_entries, 2)), 8)
        metis = _BASE_BYTES + int(per_entry * num_entries) + _METIS_BYTES_PER_NODE * num_nodes
        return max(passes, metis)
    return passes


def default_memory_bytes() -> int:
    """The default budget: half of the memory available now (``MemAvailable`` in /proc/meminfo), since
    the machine also runs other jobs; half the physical memory where /proc is missing."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _metis_available() -> bool:
    try:
        import pymetis  # noqa: F401
    except ImportError:
        return False
    return True


def choose_method(
    method: str,
    *,
    num_nodes: int,
    num_entries: int,
    num_parts: int,
    memory_bytes: int,
    chunk_entries: int = CHUNK_ENTRIES,
    metis_available: bool = True,
) -> tuple[str, str]:
    """``(method, reason)``: the method ``method`` stands for, and why, in words for the log.

    ``auto`` is METIS when its predicted peak (:func:`partition_memory_bytes`) fits ``memory_bytes``
    and pymetis is installed, else :data:`STREAMING_METHOD`. A named method is kept, with a warning
    in the reason when it is predicted to exceed the budget. Raises ConfigError for an unknown method.
    """
    if method not in CHOICES:
        raise ConfigError(f"config key 'partition_method': expected one of {', '.join(CHOICES)}, got {method!r}")
    size = dict(num_nodes=num_nodes, num_entries=num_entries, num_parts=num_parts, chunk_entries=chunk_entries)
    budget = f"the {memory_bytes / 2**30:.1f} GB budget"
    graph = f"{num_nodes:,} nodes and {num_entries:,} CSR entries"
    if method != "auto":
        need = partition_memory_bytes(method, **size)
        over = f"; predicted {need / 2**30:.1f} GB, over {budget}" if need > memory_bytes else ""
        return method, f"requested{over}"
    streaming = f"{STREAMING_METHOD} needs ~{partition_memory_bytes(STREAMING_METHOD, **size) / 2**30:.1f} GB"
    if not metis_available:
        return STREAMING_METHOD, f"pymetis is not installed (pip install distgnn[partition]); {streaming}"
    metis = partition_memory_bytes("metis", **size)
    if metis <= memory_bytes:
        return "metis", f"METIS needs ~{metis / 2**30:.1f} GB for {graph}, within {budget}"
    return STREAMING_METHOD, f"METIS would need ~{metis / 2**30:.1f} GB for {graph}, over {budget}; {streaming}"


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
            "partition method 'metis' needs pymetis: pip install distgnn[partition] (or use --method ldg / hash)"
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


def _fit_capacity(choice: np.ndarray, weight: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Parts for a chunk of nodes that each chose ``choice [n]``, such that no part takes more than
    its ``room [P]`` (plus at most one node's weight).

    Nodes are taken in chunk order within each part while they fit; the rest are laid end to end
    over the parts' remaining room (each lands where its weight starts), so they go to the parts
    with room in proportion to it. Needs ``room.clip(0).sum() >= weight.sum()``, which holds while a
    pass's capacity totals at least all the weight."""
    num_parts = room.size
    order = np.argsort(choice, kind="stable")
    cum = np.cumsum(weight[order])
    first = np.searchsorted(choice[order], np.arange(num_parts))
    before = np.concatenate([[0], cum])[first]  # weight of the chunk's nodes in earlier parts
    fits = np.empty(choice.size, dtype=bool)
    fits[order] = cum - before[choice[order]] <= room[choice[order]]
    if fits.all():
        return choice
    left = np.maximum(room - np.bincount(choice[fits], weights=weight[fits], minlength=num_parts), 0)
    over = np.flatnonzero(~fits)
    start = np.cumsum(weight[over]) - weight[over]
    target = np.searchsorted(np.cumsum(left), start, side="right")
    choice = choice.copy()
    choice[over] = np.where(target < num_parts, target, np.argmax(left))  # past the end only by rounding
    return choice


def ldg_partition(
    indptr: Tensor | np.ndarray,
    indices: Tensor | np.ndarray,
    num_parts: int,
    *,
    seed: int = 0,
    passes: int = 8,
    steps: int = 256,
    slack: float = 0.05,
    chunk_entries: int = CHUNK_ENTRIES,
) -> np.ndarray:
    """Streaming balanced partition: restreamed linear deterministic greedy, chunk by chunk.

    LDG (Stanton & Kliot, KDD 2012) puts each node in the part holding most of its neighbors,
    scaled by ``1 - load / capacity``; restreaming (Nishimura & Ugander, KDD 2013) runs it again,
    each pass seeing every neighbor's latest part, which brings the cut closer to METIS's. Here one
    step assigns a whole chunk of rows with numpy (its nodes see the parts of earlier chunks and of
    the previous pass, not each other), chunks are visited in a seeded random order so users and
    items interleave, and :func:`_fit_capacity` caps every part at ``capacity`` = ``(1 + slack)``
    times the mean of weight ``degree + 1`` (METIS's balance here), plus at most one node's weight.
    Hand-written: no maintained package does streaming partitioning (KaHIP's wheel ships KaFFPa,
    which holds the whole graph like METIS; HeiStream has no Python package).

    Passes: on Gowalla (P = 2) the cut is 0.117 after 2 passes, 0.102 after 4, 0.094 after 8, 0.093
    after 16 (METIS 0.063, hash 0.5); each pass costs one read of the CSR.

    Memory: ``[N]`` weights and parts, ``[rows, P]`` scores and the temporaries of one chunk.

    Returns:
        ``[N]`` int64 part of every node, each part's weight at most ``capacity + max weight``.
    """
    indptr = _numpy(indptr)
    num_nodes = indptr.size - 1
    degree = np.diff(indptr)
    weight = (degree + 1).astype(np.float64)
    capacity = (1 + slack) * weight.sum() / num_parts
    part = np.full(num_nodes, -1, dtype=np.int32)  # -1: not assigned yet (first pass)
    # At least `steps` steps a pass, whatever the memory allows: with a handful of big steps, users
    # and items would all move at once on stale views of each other and flip (after 4 passes, a cut of
    # 0.9 for P = 2 with 3 steps, 0.11 with 256, METIS 0.11, on a planted-cluster graph of 4.4M edges)
    step_entries = min(chunk_entries, max(-(-int(indptr[-1]) // steps), 1))
    chunks = row_chunks(torch.from_numpy(indptr), step_entries, max_rows=max(chunk_entries // num_parts, 1))
    read = entry_reader(indices)
    rng = np.random.default_rng(seed)
    for _ in range(passes):  # each pass re-assigns every node; loads restart from zero
        load = np.zeros(num_parts)
        for c in rng.permutation(len(chunks)):  # over chunks, each assigned at once with numpy
            a, b = chunks[c]
            neighbor_part = part[read(int(indptr[a]), int(indptr[b]))]
            row = np.repeat(np.arange(b - a), degree[a:b])
            known = neighbor_part >= 0
            counts = np.bincount(row[known] * num_parts + neighbor_part[known], minlength=(b - a) * num_parts)
            penalty = 1 - load / capacity
            # ties (no placed neighbor) go to the least loaded part: the penalty breaks them
            score = counts.reshape(b - a, num_parts) * penalty + 1e-6 * penalty
            choice = _fit_capacity(np.argmax(score, axis=1), weight[a:b], capacity - load)
            part[a:b] = choice
            load += np.bincount(choice, weights=weight[a:b], minlength=num_parts)
    return part.astype(np.int64)


def partition_nodes(
    indptr: Tensor | np.ndarray,
    indices: Tensor | np.ndarray,
    num_parts: int,
    *,
    method: str,
    seed: int = 0,
    chunk_entries: int = CHUNK_ENTRIES,
) -> Tensor:
    """Assign every node of a graph to one of ``num_parts`` parts.

    Args:
        indptr: ``[N+1]`` CSR row pointer of the undirected training graph (both directions stored).
        indices: ``[nnz]`` neighbor ids (a memory-mapped array is read in chunks by ``ldg``).
        num_parts: number of parts ``P`` (1 <= P <= N).
        method: ``metis`` (minimum edge cut with edge-balanced parts, via pymetis), ``ldg``
            (streaming, see :func:`ldg_partition`), ``random`` (uniform, seeded) or ``hash`` (from the
            node id only, see :func:`hash_partition`).
        seed: seeds METIS's randomised coarsening, LDG's chunk order, the random draw, or the hash.
        chunk_entries: CSR entries ``ldg`` reads at once.

    Returns:
        ``[N]`` int64 part id of every node.
    """
    indptr = _numpy(indptr)
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
        part = _metis_partition(indptr, _numpy(indices), num_parts, seed)
    elif method == "ldg":
        part = ldg_partition(indptr, indices, num_parts, seed=seed, chunk_entries=chunk_entries)
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
    chunk_entries: int = CHUNK_ENTRIES,
) -> dict:
    """Sizes and quality of a partition, as a JSON-ready dict, counted chunk by chunk of rows.

    Args:
        indptr, indices: ``[N+1]``, ``[nnz]`` CSR of the undirected graph (both directions).
        part: ``[N]`` part id of every node.
        num_parts: ``P``.
        num_users: ``U``; nodes ``0..U-1`` are users, the rest items.
        chunk_entries: CSR entries read at once.

    Returns:
        ``num_nodes``/``num_users``/``num_items`` ``[P]`` owned nodes per part; ``num_edges`` ``[P]``
        CSR entries owned (sum of the degrees of owned nodes); ``num_train_edges`` ``[P]`` training
        edges owned (those of owned users); ``num_halo_nodes`` ``[P]`` distinct nodes of other parts
        adjacent to the part (what it must fetch for one hop); ``num_cut_edges`` and ``edge_cut``
        (count and fraction of undirected edges whose ends lie in different parts); ``balance``
        (max / mean of ``num_edges``) and ``node_balance`` (the same for ``num_nodes``).

    Memory: O(N) arrays, a bitmap of ``P x N`` bits for the halo, and one chunk's temporaries.
    """
    indptr = _numpy(indptr)
    part = _numpy(part).astype(np.int64)
    num_nodes = part.size
    num_entries = int(indptr[-1])
    degree = np.diff(indptr)
    nodes = np.bincount(part, minlength=num_parts)
    users = np.bincount(part[:num_users], minlength=num_parts)
    edges = np.bincount(part, weights=degree, minlength=num_parts).astype(np.int64)
    train_edges = np.bincount(part[:num_users], weights=degree[:num_users], minlength=num_parts).astype(np.int64)
    # Each undirected edge is stored twice (u->i and i->u) and both copies are cut or neither, so the
    # fraction of cut CSR entries is the fraction of cut edges.
    num_cut_entries = 0
    # bit p * stride + v is set when part p has a neighbor v owned elsewhere: P x N bits instead of a
    # global np.unique over (part, node) keys of every cut entry
    stride = (num_nodes + 7) // 8 * 8
    halo_bits = np.zeros(num_parts * stride // 8, dtype=np.uint8)
    for a, b, neighbor in _chunks(indptr, indices, chunk_entries):
        own = np.repeat(part[a:b], degree[a:b])
        cut = own != part[neighbor]
        num_cut_entries += int(np.count_nonzero(cut))
        key = own[cut] * stride + neighbor[cut]
        np.bitwise_or.at(halo_bits, key >> 3, np.left_shift(1, key & 7).astype(np.uint8))
    halo = [int(_POPCOUNT[row].sum(dtype=np.int64)) for row in halo_bits.reshape(num_parts, stride // 8)]
    return {
        "num_parts": int(num_parts),
        "num_nodes": nodes.tolist(),
        "num_users": users.tolist(),
        "num_items": (nodes - users).tolist(),
        "num_edges": edges.tolist(),
        "num_train_edges": train_edges.tolist(),
        "num_halo_nodes": halo,
        "num_cut_edges": num_cut_entries // 2,
        "edge_cut": num_cut_entries / num_entries if num_entries else 0.0,
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


class NpyAppender:
    """A ``.npy`` file of known dtype and shape, filled by appending values to one or more streams
    (consecutive spans of its flat data), so a part is written chunk by chunk, never whole.

    The header is numpy's own (``write_array_header_1_0``, what ``np.save`` writes), so the file is
    byte for byte what ``np.save`` of the whole array gives. Values go in with ``os.pwrite`` at their
    offset rather than through ``open_memmap``: written pages of a mapping count in the writer's
    resident memory until it is closed (the whole output), plain writes leave them to the page cache.
    The file is opened per write, so hundreds of parts need no more open files than one.
    """

    def __init__(self, path: Path, dtype, shape: tuple[int, ...], *, streams: tuple[int, ...] = (0,)):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(shape))
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": tuple(shape)}
        with open(self.path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            self._data_offset = fh.tell()
            fh.truncate(self._data_offset + self.size * self.dtype.itemsize)
        self._cursor = list(streams)  # next flat index of each stream
        self._end = [*streams[1:], self.size]

    def append(self, values: np.ndarray, *, stream: int = 0) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if not values.size:
            return
        start = self._cursor[stream]
        assert start + values.size <= self._end[stream], f"{self.path}: stream {stream} overflows"
        data = memoryview(values).cast("B")
        fd = os.open(self.path, os.O_WRONLY)
        try:
            offset = self._data_offset + start * self.dtype.itemsize
            while data:  # pwrite may write less than asked
                done = os.pwrite(fd, data, offset)
                data, offset = data[done:], offset + done
        finally:
            os.close(fd)
        self._cursor[stream] += values.size

    def check_full(self) -> None:
        assert self._cursor == self._end, f"{self.path}: written {self._cursor}, expected {self._end}"


def _write_parts(
    folder: Path,
    indptr: np.ndarray,
    indices,
    part: np.ndarray,
    stats: dict,
    *,
    num_users: int,
    user_features: np.ndarray | None,
    item_features: np.ndarray | None,
    chunk_entries: int,
) -> None:
    """Each part's files (module docstring) in ``folder``, appended to chunk by chunk of rows: one
    pass over the CSR in row order, and since rows are ascending, so is every part's output."""
    num_parts = int(stats["num_parts"])
    degree = np.diff(indptr)
    num_features = sum(f.shape[1] for f in (user_features, item_features) if f is not None)
    sort_type = np.int16 if num_parts <= np.iinfo(np.int16).max else np.int32  # stable argsort is a radix sort
    files = []
    for p in range(num_parts):
        sub = folder / part_folder_name(p)
        sub.mkdir()
        n, nnz, e = stats["num_nodes"][p], stats["num_edges"][p], stats["num_train_edges"][p]
        f = {
            "nodes": NpyAppender(sub / "nodes.npy", np.int64, (n,)),
            "indptr": NpyAppender(sub / "indptr.npy", np.int64, (n + 1,)),
            "indices": NpyAppender(sub / "indices.npy", np.int64, (nnz,)),
            "train_edges": NpyAppender(sub / "train_edges.npy", np.int64, (2, e), streams=(0, e)),
        }
        if num_features:
            f["features"] = NpyAppender(sub / "features.npy", np.float32, (n, num_features))
        f["indptr"].append(np.zeros(1))
        files.append(f)
    written = np.zeros(num_parts, dtype=np.int64)  # CSR entries written so far per part
    for a, b, neighbor in _chunks(indptr, indices, chunk_entries):
        chunk_part = part[a:b].astype(sort_type)
        row_order = np.argsort(chunk_part, kind="stable")  # rows grouped by part, ascending inside
        row_bounds = np.searchsorted(chunk_part[row_order], np.arange(num_parts + 1))
        own = np.repeat(chunk_part, degree[a:b])
        entry_order = np.argsort(own, kind="stable")
        entry_bounds = np.searchsorted(own[entry_order], np.arange(num_parts + 1))
        neighbor = neighbor[entry_order]
        for p in range(num_parts):  # over parts: a chunk's rows of part p are one slice of each order
            nodes = a + row_order[row_bounds[p] : row_bounds[p + 1]]
            if not nodes.size:
                continue
            f = files[p]
            deg = degree[nodes]
            rows = neighbor[entry_bounds[p] : entry_bounds[p + 1]]
            f["nodes"].append(nodes)
            f["indptr"].append(written[p] + np.cumsum(deg))
            f["indices"].append(rows)
            written[p] += rows.size
            # user rows come first (ascending ids) and hold exactly the training edges of owned users
            num_owned_users = int(np.searchsorted(nodes, num_users))
            user_entries = int(deg[:num_owned_users].sum())
            f["train_edges"].append(np.repeat(nodes[:num_owned_users], deg[:num_owned_users]), stream=0)
            f["train_edges"].append(rows[:user_entries], stream=1)
            if num_features:
                f["features"].append(feature_rows(nodes, num_users, user_features, item_features))
    for f in files:
        for appender in f.values():
            appender.check_full()


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
        "edge cut (%s): %.1f%% of training edges (%s) cross parts",
        method,
        100 * stats["edge_cut"],
        f"{stats['num_cut_edges']:,}",
    )
    log.info(
        "balance: largest part holds %.3fx the mean edges, %.3fx the mean nodes",
        stats["balance"],
        stats["node_balance"],
    )


def _load_array(path: Path, *, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable .npy array ({err})") from None


def write_partitions(
    graph_dir: str | Path,
    num_parts: int,
    *,
    method: str = "auto",
    seed: int = 0,
    memory_gb: float | None = None,
    chunk_entries: int = CHUNK_ENTRIES,
) -> dict:
    """Partition a prepared graph directory and write ``parts/`` inside it (see the module docstring).

    The graph directory is verified first (so its checksums are not re-blessed over damaged files),
    ``parts/`` is built in a temporary sibling and renamed into place, then the top-level meta.json
    records ``partitions`` and fresh checksums of every file, ``parts/`` included. The CSR is read in
    chunks of ``chunk_entries`` entries (METIS aside, which needs all of it at once).

    Args:
        method: one of :data:`CHOICES`; ``auto`` picks by ``memory_gb`` (:func:`choose_method`).
        memory_gb: the memory budget ``auto`` decides by; default :func:`default_memory_bytes`.

    Returns:
        the :func:`partition_stats` dict, plus ``elapsed_s`` of the partitioning itself.
    """
    graph_dir = Path(graph_dir)
    meta = verify_graph_dir(graph_dir)
    num_users, num_items = int(meta["num_users"]), int(meta["num_items"])
    num_nodes = num_users + num_items
    indptr = _load_array(graph_dir / "graph" / "indptr.npy", mmap=False)  # [N+1]: in memory, O(N)
    indices = _load_array(graph_dir / "graph" / "indices.npy", mmap=True)  # [nnz]: read by chunks
    if indptr.size != num_nodes + 1:
        raise DataError(f"{graph_dir}/graph/indptr.npy: expected {num_nodes + 1} entries, got {indptr.size}")
    if indices.size != indptr[-1]:
        raise DataError(f"{graph_dir}/graph/indices.npy: expected {int(indptr[-1])} entries, got {indices.size}")
    features = {}
    for kind in ("user", "item"):
        file = graph_dir / "features" / f"{kind}.npy"
        features[kind] = _load_array(file, mmap=True) if file.is_file() else None

    memory_bytes = int(memory_gb * 2**30) if memory_gb is not None else default_memory_bytes()
    resolved, reason = choose_method(
        method,
        num_nodes=num_nodes,
        num_entries=int(indices.size),
        num_parts=num_parts,
        memory_bytes=memory_bytes,
        chunk_entries=chunk_entries,
        metis_available=_metis_available(),
    )
    log.info("partition method: %s (%s)", resolved if method != "auto" else f"auto -> {resolved}", reason)
    t0 = time.perf_counter()
    part = partition_nodes(indptr, indices, num_parts, method=resolved, seed=seed, chunk_entries=chunk_entries)
    part = part.numpy()
    elapsed_s = time.perf_counter() - t0
    stats = partition_stats(indptr, indices, part, num_parts, num_users=num_users, chunk_entries=chunk_entries)
    stats["elapsed_s"] = round(elapsed_s, 3)

    with atomic_folder(graph_dir / PARTS_DIR, kind="parts") as tmp:
        np.save(tmp / NODE_PART_FILE, part.astype(np.int32))
        _write_parts(
            tmp,
            indptr,
            indices,
            part,
            stats,
            num_users=num_users,
            user_features=features["user"],
            item_features=features["item"],
            chunk_entries=chunk_entries,
        )
        write_meta(
            tmp,
            {
                "method": resolved,
                "num_parts": num_parts,
                "seed": seed,
                "num_users": num_users,
                "num_items": num_items,
                "stats": stats,
                "method_choice": {"requested": method, "reason": reason, "memory_budget_bytes": memory_bytes},
            },
        )

    top = {k: v for k, v in meta.items() if k != "checksums"}
    top["partitions"] = {"num_parts": num_parts, "method": resolved, "seed": seed}
    write_meta(graph_dir, top)
    log_partition_stats(stats, method=resolved)
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
