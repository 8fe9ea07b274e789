"""Neighbor-sampling throughput: distgnn's sampler against PyG's, fanouts [10, 10], 1024 seeds per batch.

    python -m benchmarks.sampler [--quick] [--threads N]

Graphs: (a) a random bipartite graph of 50k users and 50k items with 1M distinct interactions, i.e.
100k nodes and 2M CSR entries (both directions), average degree 20; (b) Gowalla's LightGCN training
split from ../shared/data/gowalla (skipped when absent). Compared in the same process:

- ``distgnn sample_subgraph``: the sampler core, seeds in, relabelled ``SamplerOutput`` out;
- ``distgnn + NodeLoader``: the same through PyG's ``NodeLoader``, i.e. up to a PyG ``Data`` batch
  (``filter_data``, ``n_id``, ``edge_index``);
- ``PyG NeighborSampler`` / ``PyG NeighborLoader``: PyG's own, when torch-sparse or pyg-lib is
  importable (run from a venv holding the wheels of ../shared/wheels, see benchmarks/RESULTS_sampler.md).

Seeds are all nodes, shuffled. Each row is the median over repeats of the mean time per batch; prints a
markdown table and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch_geometric.typing
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader

from distgnn.data.writing import build_csr
from distgnn.nn.sampler import NeighborSampler, sample_subgraph

GOWALLA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gowalla" / "train.txt"
FANOUTS = [10, 10]
BATCH_SIZE = 1024


def csr_from_pairs(
    user: np.ndarray, item: np.ndarray, num_users: int, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both-direction CSR ``(indptr [N+1], indices [2E])`` of distinct (user, item) pairs, rows sorted."""
    indptr, indices = build_csr(num_users, num_items, user, item)
    return torch.from_numpy(indptr), torch.from_numpy(indices)


def random_bipartite(num_users: int, num_items: int, num_pairs: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # draw 5% extra, keep the distinct pairs, trim to num_pairs
    key = np.unique(rng.integers(0, num_users * num_items, int(num_pairs * 1.05)))
    key = rng.permutation(key)[:num_pairs]
    return csr_from_pairs(key // num_items, key % num_items, num_users, num_items)


def load_gowalla(path: Path):
    lines = path.read_text().split("\n")
    tokens = [np.array(line.split(), dtype=np.int64) for line in lines if line.strip()]
    user = np.concatenate([np.full(len(t) - 1, t[0]) for t in tokens])
    item = np.concatenate([t[1:] for t in tokens])
    num_users, num_items = int(user.max()) + 1, int(item.max()) + 1
    return num_users, num_items, csr_from_pairs(user, item, num_users, num_items)


def time_batches(next_batch: Callable[[], int], num_batches: int, repeats: int) -> tuple[float, float]:
    """Median over ``repeats`` of seconds per batch, and the mean number of sampled nodes per batch."""
    next_batch()  # warm-up
    per_batch, nodes = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        nodes += [next_batch() for _ in range(num_batches)]
        per_batch.append((time.perf_counter() - start) / num_batches)
    return statistics.median(per_batch), float(np.mean(nodes))


def loader_batches(loader) -> Callable[[], int]:
    it = iter(loader)

    def next_batch() -> int:
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        return batch.n_id.numel()

    return next_batch


def bench_graph(
    name: str,
    indptr: torch.Tensor,
    indices: torch.Tensor,
    num_users: int,
    num_items: int,
    *,
    num_batches: int,
    repeats: int,
) -> list[tuple]:
    num_nodes = num_users + num_items
    perm = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(0))
    seed_batches = perm[: (num_nodes // BATCH_SIZE) * BATCH_SIZE].view(-1, BATCH_SIZE)
    counter = iter(range(10**9))
    rows = []

    generator = torch.Generator().manual_seed(0)
    node_map = torch.full((num_nodes,), -1, dtype=torch.long)

    def core() -> int:
        seeds = seed_batches[next(counter) % len(seed_batches)]
        return sample_subgraph(indptr, indices, seeds, FANOUTS, generator=generator, node_map=node_map).node.numel()

    rows.append((name, "distgnn sample_subgraph", *time_batches(core, num_batches, repeats)))

    sampler = NeighborSampler(indptr, indices, FANOUTS, num_users=num_users, num_items=num_items, seed=0)
    data = Data(num_nodes=num_nodes, edge_index=torch.empty(2, 0, dtype=torch.long))
    loader = NodeLoader(
        data, node_sampler=sampler, input_nodes=torch.arange(num_nodes), batch_size=BATCH_SIZE, shuffle=True
    )
    rows.append((name, "distgnn + NodeLoader", *time_batches(loader_batches(loader), num_batches, repeats)))

    if torch_geometric.typing.WITH_PYG_LIB or torch_geometric.typing.WITH_TORCH_SPARSE:
        from torch_geometric.loader import NeighborLoader
        from torch_geometric.sampler import NeighborSampler as PyGNeighborSampler

        lib = "pyg-lib" if torch_geometric.typing.WITH_PYG_LIB else "torch-sparse"
        node = torch.repeat_interleave(torch.arange(num_nodes), indptr.diff())
        pyg_data = Data(edge_index=torch.stack([indices, node]), num_nodes=num_nodes)
        pyg_sampler = PyGNeighborSampler(pyg_data, FANOUTS, is_sorted=True)

        def pyg_core() -> int:
            seeds = seed_batches[next(counter) % len(seed_batches)]
            return pyg_sampler._sample(seeds).node.numel()

        rows.append((name, f"PyG NeighborSampler ({lib})", *time_batches(pyg_core, num_batches, repeats)))
        pyg_loader = NeighborLoader(
            pyg_data, FANOUTS, input_nodes=torch.arange(num_nodes), batch_size=BATCH_SIZE, shuffle=True
        )
        rows.append(
            (name, f"PyG NeighborLoader ({lib})", *time_batches(loader_batches(pyg_loader), num_batches, repeats))
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer batches and repeats")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    num_batches, repeats = (5, 3) if args.quick else (20, 7)

    graphs = [("random bipartite 100k/2M", 50_000, 50_000, random_bipartite(50_000, 50_000, 1_000_000))]
    if GOWALLA.exists():
        num_users, num_items, csr = load_gowalla(GOWALLA)
        graphs.append(("Gowalla train", num_users, num_items, csr))
    else:
        print(f"(Gowalla skipped: {GOWALLA} not found)")

    rows = []
    for name, num_users, num_items, (indptr, indices) in graphs:
        rows += bench_graph(name, indptr, indices, num_users, num_items, num_batches=num_batches, repeats=repeats)

    print(
        f"\nfanouts {FANOUTS}, {BATCH_SIZE} seed nodes per batch, median of {repeats} repeats x "
        f"{num_batches} batches; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs ({platform.machine()}), load average at the end "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print("| graph | sampler | ms/batch | batches/s | sampled nodes/batch | sampled nodes/s |")
    print("|---|---|---:|---:|---:|---:|")
    for name, sampler, seconds, nodes in rows:
        print(
            f"| {name} | {sampler} | {seconds * 1e3:.1f} | {1 / seconds:.1f} | {nodes:,.0f} | {nodes / seconds:,.0f} |"
        )
    baseline = {name: s for name, sampler, s, _ in rows if sampler.startswith("PyG NeighborLoader")}
    for name, sampler, seconds, _ in rows:
        if sampler == "distgnn + NodeLoader" and name in baseline:
            print(f"\n{name}: distgnn + NodeLoader is {baseline[name] / seconds:.1f}x faster than PyG NeighborLoader")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS: {peak_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
