"""How partitioned training should move rows between workers: torch.distributed all_to_all (gloo)
vs Ray actor calls, for the pattern of one step (send node ids to their owner, get rows back).

    python -m benchmarks.exchange --rows 1000,10000,100000 --dim 64

Two workers, each owning half of a [2n, dim] float32 table, each asking the other for n random rows.
gloo: :func:`distgnn.training.partitioned.exchange` twice (ids out, rows back), in 2 spawned processes.
Ray: worker A calls ``B.lookup.remote(ids)`` and waits for the rows (and B calls A at the same time),
between two actors. Median of ``--repeats`` round trips, after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import numpy as np
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, port: int, n: int, dim: int, repeats: int, results) -> None:
    import torch.distributed as tdist

    from distgnn.training.exchange import exchange

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    table = torch.randn(n, dim)
    times = []
    for i in range(repeats + 3):
        ids = torch.randint(n, (n,))
        counts = torch.tensor([0, n]) if rank == 0 else torch.tensor([n, 0])  # all rows from the other
        t0 = time.perf_counter()
        asked, asked_counts = exchange(ids, counts)
        rows, _ = exchange(table[asked], asked_counts, recv_counts=counts)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    results[rank] = statistics.median(times)
    tdist.destroy_process_group()


def time_gloo(n: int, dim: int, repeats: int) -> float:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Manager().dict()
    port = _free_port()
    procs = [ctx.Process(target=_gloo_worker, args=(r, port, n, dim, repeats, results)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return max(results.values())


def time_ray(n: int, dim: int, repeats: int) -> float:
    import ray

    @ray.remote(num_cpus=1)
    class Owner:
        def __init__(self):
            torch.set_num_threads(1)
            self.table = np.random.rand(n, dim).astype(np.float32)
            self.peer = None

        def set_peer(self, peer) -> None:
            self.peer = peer

        def lookup(self, ids: np.ndarray) -> np.ndarray:
            return self.table[ids]

        def run(self) -> float:
            times = []
            for i in range(repeats + 3):
                ids = np.random.randint(0, n, n)
                t0 = time.perf_counter()
                ray.get(self.peer.lookup.remote(ids))
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            return statistics.median(times)

    a, b = Owner.options(max_concurrency=2).remote(), Owner.options(max_concurrency=2).remote()
    try:
        ray.get([a.set_peer.remote(b), b.set_peer.remote(a)])
        return max(ray.get([a.run.remote(), b.run.remote()]))
    finally:  # free their CPUs for the next size's actors
        ray.kill(a)
        ray.kill(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000,10000,100000", help="rows fetched per round trip")
    parser.add_argument("--dim", type=int, default=64, help="row width (float32)")
    parser.add_argument("--repeats", type=int, default=20, help="timed round trips")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    print("| rows per round trip | MB of rows | gloo all_to_all ms | Ray actor call ms | Ray / gloo |")
    print("|---|---|---|---|---|")
    for n in (int(x) for x in args.rows.split(",")):
        gloo_s = time_gloo(n, args.dim, args.repeats)
        ray_s = time_ray(n, args.dim, args.repeats)
        print(
            f"| {n:,} | {n * args.dim * 4 / 1e6:.1f} | {gloo_s * 1e3:.2f} | {ray_s * 1e3:.2f} | "
            f"{ray_s / gloo_s:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
