"""Graph partitioning: time, edge cut, balance and peak memory of metis / random / hash.

    python -m benchmarks.partition --graph /tmp/part/gowalla --graph /tmp/part/syn10m --parts 2,4,8
    python -m benchmarks.partition                      # a small synthetic graph, as a smoke test

Each (graph, method, P) runs in a fresh process (spawned), so its peak RSS is its own: the process
loads the graph directory (memory-mapped CSR), runs :func:`distgnn.data.partition.partition_nodes` (timed)
and :func:`distgnn.data.partition.partition_stats`. Peak RSS counts the pages of the memory-mapped CSR the
run touched, and the interpreter with torch imported (the ``baseline`` column, measured after loading).
With ``--write``, a second fresh process times the whole :func:`distgnn.data.partition.write_partitions`
(verify, partition, write ``parts/``, re-checksum), which leaves ``parts/`` in the graph directory.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("metis", "random", "hash")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_partition(graph_dir: str, method: str, num_parts: int, seed: int) -> dict:
    """In a fresh process: partition the graph's CSR and measure it."""
    from distgnn.data.graph import load_graph
    from distgnn.data.partition import partition_nodes, partition_stats

    graph = load_graph(graph_dir)
    baseline_mb = _rss_mb()
    t0 = time.perf_counter()
    part = partition_nodes(graph.indptr, graph.indices, num_parts, method=method, seed=seed)
    elapsed_s = time.perf_counter() - t0
    stats = partition_stats(graph.indptr, graph.indices, part, num_parts, num_users=graph.num_users)
    return {"elapsed_s": elapsed_s, "baseline_mb": baseline_mb, "peak_rss_mb": _peak_rss_mb(), **stats}


def run_write(graph_dir: str, method: str, num_parts: int, seed: int) -> dict:
    """In a fresh process: the whole write_partitions, end to end."""
    from distgnn.data.partition import write_partitions

    t0 = time.perf_counter()
    write_partitions(graph_dir, num_parts, method=method, seed=seed)
    return {"write_s": time.perf_counter() - t0, "write_peak_rss_mb": _peak_rss_mb()}


def in_fresh_process(fn, *args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def graph_size(graph_dir: str) -> tuple[int, int]:
    import json

    meta = json.loads((Path(graph_dir) / "meta.json").read_text())
    return meta["num_users"] + meta["num_items"], meta["num_interactions"]["train"]


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
    parser.add_argument("--parts", default="2,4,8", help="comma-separated numbers of parts (default: 2,4,8)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="partitioning seed (default: 0)")
    parser.add_argument(
        "--write", action="store_true", help="also time write_partitions end to end (writes DIR/parts/)"
    )
    args = parser.parse_args()
    parts = [int(p) for p in args.parts.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    graphs = args.graph
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
        "edge cut",
        "balance (edges)",
        "balance (nodes)",
        "max halo nodes",
        "baseline MB",
        "peak RSS MB",
    ]
    if args.write:
        header += ["write_partitions s", "write peak RSS MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for graph_dir in graphs:
        num_nodes, num_train = graph_size(graph_dir)
        for method in methods:
            for num_parts in parts:
                r = in_fresh_process(run_partition, graph_dir, method, num_parts, args.seed)
                row = [
                    Path(graph_dir).name,
                    f"{num_nodes:,}",
                    f"{num_train:,}",
                    method,
                    str(num_parts),
                    f"{r['elapsed_s']:.2f}",
                    f"{r['edge_cut']:.3f}",
                    f"{r['balance']:.3f}",
                    f"{r['node_balance']:.3f}",
                    f"{max(r['num_halo_nodes']):,}",
                    f"{r['baseline_mb']:.0f}",
                    f"{r['peak_rss_mb']:.0f}",
                ]
                if args.write:
                    w = in_fresh_process(run_write, graph_dir, method, num_parts, args.seed)
                    row += [f"{w['write_s']:.1f}", f"{w['write_peak_rss_mb']:.0f}"]
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
