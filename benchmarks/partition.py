"""Graph partitioning at scale: time, peak memory, edge cut and balance of metis / ldg / hash / random.

    python -m benchmarks.partition --make /tmp/part/syn10m:10000000 --make /tmp/part/syn100m:100000000
    python -m benchmarks.partition --graph /tmp/part/syn10m --graph /tmp/part/syn100m --methods ldg,hash --parts 2
    python -m benchmarks.partition                      # a small synthetic graph, as a smoke test

Each (graph, method, P) runs :func:`distgnn.data.partition.write_partitions` end to end in a fresh
process (spawned), so its peak RSS is its own: verify the graph's checksums, partition, count the
statistics, write ``parts/`` into the graph directory (replacing it), re-checksum. The table has
the peak RSS next to the prediction of :func:`distgnn.data.partition.partition_memory_bytes` that
``--method auto`` decides by. ``--no-write`` times only ``partition_nodes`` and ``partition_stats``
(reading the CSR as ``write_partitions`` does) and leaves the graph directory alone.

``--make DIR:EDGES`` first builds a minimal graph directory of about EDGES training edges straight
to disk, in bounded memory (4.3 GB at 100M: run it under ``flock``): EDGES/10 users (10 interactions
each on average) and a fifth as many items, in 256 planted clusters (ids shuffled): each user draws its items
from its own cluster with probability 0.8, else from all, in proportion to a Zipf(0.8) popularity,
with log-normal activity; pairs are deduplicated (about 5-10% fewer edges than asked). It holds the
CSR, empty val/test splits and meta.json: what partitioning needs, not a full prepare.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("metis", "ldg", "hash", "random")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_partition(graph_dir: str, method: str, num_parts: int, seed: int) -> dict:
    """In a fresh process: partition the graph's CSR and count its statistics, nothing written."""
    from distgnn.data.partition import partition_nodes, partition_stats

    num_users = json.loads((Path(graph_dir) / "meta.json").read_text())["num_users"]
    indptr = np.load(Path(graph_dir) / "graph" / "indptr.npy")
    indices = np.load(Path(graph_dir) / "graph" / "indices.npy", mmap_mode="r")
    baseline_mb = _rss_mb()
    t0 = time.perf_counter()
    part = partition_nodes(indptr, indices, num_parts, method=method, seed=seed)
    elapsed_s = time.perf_counter() - t0
    stats = partition_stats(indptr, indices, part, num_parts, num_users=num_users)
    return {
        "elapsed_s": elapsed_s,
        "total_s": time.perf_counter() - t0,
        "baseline_mb": baseline_mb,
        "peak_rss_mb": _peak_rss_mb(),
        **stats,
    }


def run_write(graph_dir: str, method: str, num_parts: int, seed: int) -> dict:
    """In a fresh process: the whole write_partitions, end to end."""
    from distgnn.data.partition import write_partitions

    baseline_mb = _rss_mb()
    t0 = time.perf_counter()
    stats = write_partitions(graph_dir, num_parts, method=method, seed=seed)
    return {"total_s": time.perf_counter() - t0, "baseline_mb": baseline_mb, "peak_rss_mb": _peak_rss_mb(), **stats}


def in_fresh_process(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def graph_size(graph_dir: str) -> tuple[int, int, int]:
    """Nodes, training edges and CSR entries of a graph directory."""
    meta = json.loads((Path(graph_dir) / "meta.json").read_text())
    entries = np.load(Path(graph_dir) / "graph" / "indices.npy", mmap_mode="r").size
    return meta["num_users"] + meta["num_items"], meta["num_interactions"]["train"], entries


def make_graph(out: Path, num_edges: int, *, num_clusters: int = 256, within: float = 0.8, seed: int = 0) -> dict:
    """A minimal graph directory of about ``num_edges`` planted-cluster edges (module docstring),
    built chunk by chunk of users: the user side is appended to a raw file, then copied into
    ``indices.npy`` while each chunk's edges are scattered into the item rows (users ascending, so
    every row stays sorted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distgnn.core.files import write_marker
    from distgnn.data.graph import write_meta

    num_users = max(num_edges // 10, 1)
    num_items = max(num_users // 5, 10)
    (out / "graph").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    popularity = (rng.permutation(num_items) + 1.0) ** -0.8
    cum_all = np.cumsum(popularity / popularity.sum())
    item_cluster = rng.integers(0, num_clusters, num_items)
    by_cluster = np.argsort(item_cluster, kind="stable")  # item ids grouped by cluster
    cum_sorted = np.cumsum(popularity[by_cluster] / popularity.sum())
    bounds = np.searchsorted(item_cluster[by_cluster], np.arange(num_clusters + 1))
    low = np.concatenate([[0.0], cum_sorted])[bounds[:-1]]
    mass = cum_sorted[np.maximum(bounds[1:] - 1, 0)] - low
    user_cluster = rng.integers(0, num_clusters, num_users)
    sigma = 0.8
    raw = out / "user_side.raw"
    user_degree = np.zeros(num_users, dtype=np.int64)
    item_degree = np.zeros(num_items, dtype=np.int64)
    with open(raw, "wb") as fh:
        for start in range(0, num_users, 500_000):  # over chunks of users: bounded memory
            stop = min(start + 500_000, num_users)
            draws = rng.lognormal(np.log(num_edges / num_users) - sigma**2 / 2, sigma, stop - start)
            user = np.repeat(np.arange(start, stop), np.maximum(1, np.round(draws)).astype(np.int64))
            inside = rng.random(user.size) < within
            item = np.searchsorted(cum_all, rng.random(user.size) * cum_all[-1], side="right")
            c = user_cluster[user[inside]]
            pos = np.searchsorted(cum_sorted, low[c] + rng.random(c.size) * mass[c], side="right")
            item[inside] = by_cluster[np.clip(pos, bounds[c], np.maximum(bounds[c + 1] - 1, bounds[c]))]
            key = np.unique(user * num_items + np.minimum(item, num_items - 1))  # CSR order: user, then item
            user, item = key // num_items, key % num_items
            user_degree[start:stop] = np.bincount(user - start, minlength=stop - start)
            item_degree += np.bincount(item, minlength=num_items)
            (item + num_users).tofile(fh)
    total = int(user_degree.sum())
    indptr = np.zeros(num_users + num_items + 1, dtype=np.int64)
    np.cumsum(np.concatenate([user_degree, item_degree]), out=indptr[1:])
    np.save(out / "graph" / "indptr.npy", indptr)
    indices = np.lib.format.open_memmap(out / "graph" / "indices.npy", mode="w+", dtype=np.int64, shape=(2 * total,))
    cursor = indptr[num_users:-1].copy()  # next free slot of each item row
    user_rows = np.repeat(np.arange(num_users), user_degree)
    for s in range(0, total, 20_000_000):  # over chunks of edges
        e = min(s + 20_000_000, total)
        neighbor = np.fromfile(raw, dtype=np.int64, count=e - s, offset=8 * s)
        indices[s:e] = neighbor
        order = np.argsort(neighbor - num_users, kind="stable")
        item, user = neighbor[order] - num_users, user_rows[s:e][order]
        first = np.r_[0, np.flatnonzero(item[1:] != item[:-1]) + 1]
        run = np.diff(np.r_[first, item.size])
        indices[cursor[item] + np.arange(item.size) - np.repeat(first, run)] = user
        cursor[item[first]] += run
    indices.flush()
    del indices, user_rows
    raw.unlink()
    empty = pa.table({"user": pa.array([], pa.int64()), "item": pa.array([], pa.int64())})
    for name in ("val", "test"):
        pq.write_table(empty, out / f"{name}.parquet")
    write_marker(out, "graph")
    meta = {
        "format_version": 1,
        "source": f"benchmarks.partition --make (edges {num_edges}, clusters {num_clusters}, within {within})",
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": {"train": total, "val": 0, "test": 0},
        "node_numbering": "users 0..num_users-1, items num_users..num_users+num_items-1",
    }
    write_meta(out, meta)
    return meta


def machine() -> str:
    from importlib.metadata import version

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, Python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {version('torch')}, pymetis {version('pymetis')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--graph",
        action="append",
        default=[],
        metavar="DIR",
        help="prepared graph directory (repeatable); none = a small synthetic graph",
    )
    parser.add_argument(
        "--make",
        action="append",
        default=[],
        metavar="DIR:EDGES",
        help="build a planted-cluster graph directory of about EDGES edges at DIR, then benchmark it (repeatable)",
    )
    parser.add_argument("--parts", default="2,8", help="comma-separated numbers of parts (default: 2,8)")
    parser.add_argument("--methods", default="metis,ldg,hash", help="comma-separated methods (default: metis,ldg,hash)")
    parser.add_argument("--seed", type=int, default=0, help="partitioning seed (default: 0)")
    parser.add_argument(
        "--no-write", action="store_true", help="time partition_nodes + partition_stats only; write nothing"
    )
    parser.add_argument("--make-only", action="store_true", help="build the --make graphs and stop")
    args = parser.parse_args()
    from distgnn.data.partition import partition_memory_bytes

    parts = [int(p) for p in args.parts.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    graphs = list(args.graph)
    for spec in args.make:
        folder, _, edges = spec.rpartition(":")
        t0 = time.perf_counter()
        meta = make_graph(Path(folder), int(edges.replace("_", "")))
        print(
            f"made {folder}: {meta['num_users']:,} users, {meta['num_items']:,} items, "
            f"{meta['num_interactions']['train']:,} edges in {time.perf_counter() - t0:.0f} s, "
            f"peak RSS {_peak_rss_mb():.0f} MB",
            flush=True,
        )
        graphs.append(folder)
    if args.make_only:
        return
    if not graphs:
        from distgnn.core.config import PrepareConfig
        from distgnn.data.prepare import prepare

        graphs = [str(prepare(PrepareConfig(output=str(Path(tempfile.mkdtemp()) / "synthetic"))))]

    print(f"machine: {machine()}\n")
    header = [
        "graph",
        "nodes",
        "train edges",
        "method",
        "P",
        "partition s",
        "total s",
        "edge cut",
        "balance (edges)",
        "balance (nodes)",
        "max halo nodes",
        "baseline MB",
        "peak RSS MB",
        "predicted MB",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for graph_dir in graphs:
        num_nodes, num_train, num_entries = graph_size(graph_dir)
        for method in methods:
            for num_parts in parts:
                fn = run_partition if args.no_write else run_write
                r = in_fresh_process(fn, graph_dir, method, num_parts, args.seed)
                predicted = partition_memory_bytes(
                    method, num_nodes=num_nodes, num_entries=num_entries, num_parts=num_parts
                )
                row = [
                    Path(graph_dir).name,
                    f"{num_nodes:,}",
                    f"{num_train:,}",
                    method,
                    str(num_parts),
                    f"{r['elapsed_s']:.1f}",
                    f"{r['total_s']:.1f}",
                    f"{r['edge_cut']:.3f}",
                    f"{r['balance']:.3f}",
                    f"{r['node_balance']:.3f}",
                    f"{max(r['num_halo_nodes']):,}",
                    f"{r['baseline_mb']:.0f}",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{predicted / 2**20:.0f}",
                ]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
