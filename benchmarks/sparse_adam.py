"""The embedding tables' optimizer step: distgnn's (:func:`distgnn.training.gradients.sparse_adam_rows`,
SparseAdam's arithmetic on the touched rows by index) against ``torch.optim.SparseAdam``, on the
gradients of real training steps, in one process, one torch thread.

    python -m benchmarks.sparse_adam --graph data/gowalla --config configs/gowalla.yaml --steps 8

Each step's gradients come from one sampled batch of the config's model; both optimizers then step
the same gradients on their own copy of the tables, and the tables are checked to stay equal to the
bit. The two take turns at stepping first. Prints ms per step (mean over ``--steps``), the rows
touched, and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from distgnn.core.config import TrainJobConfig, load_config
from distgnn.training.replicated import Replicated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", required=True, help="graph directory (python -m distgnn.prepare)")
    parser.add_argument("--config", default=None, help="training config (YAML) for the model and batch")
    parser.add_argument("--steps", type=int, default=8, help="steps timed (after one untimed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    strategy = Replicated(load_config(TrainJobConfig, args.config, graph=args.graph))
    loader, _ = strategy.make_loader(0)
    batches = iter(loader)
    ours = strategy.optimizers[0]  # one process: the whole tables are its block
    copies = [torch.nn.Parameter(t.detach().clone()) for t in ours.tables]
    theirs = torch.optim.SparseAdam(copies, lr=strategy.job.optim.lr)
    spent = {"distgnn": 0.0, "torch SparseAdam": 0.0}
    rows = 0
    for step in range(args.steps + 1):
        for opt in strategy.optimizers:
            opt.zero_grad()
        strategy.loss(next(batches)).backward()
        ours.reduce_gradients()
        for copy, shard in zip(copies, ours.shards):
            copy.grad = shard.grad.clone()
        order = [("distgnn", ours), ("torch SparseAdam", theirs)][:: 1 if step % 2 else -1]  # each first in turn
        for name, opt in order:
            t0 = time.perf_counter()
            opt.step()
            if step:  # the first step allocates the moments
                spent[name] += time.perf_counter() - t0
        rows += ours.shards[0].grad._nnz() if step else 0
        if not all(torch.equal(a, b) for a, b in zip(ours.tables, copies)):
            raise SystemExit("the two optimizers' tables differ")
    table = ours.tables[0]
    print(
        f"tables: {', '.join(f'{t.shape[0]:,} x {t.shape[1]}' for t in ours.tables)}; "
        f"{rows / args.steps:,.0f} rows of the first touched per step; tables equal to the bit after every step"
    )
    print("| optimizer step | ms per step |\n|---|---|")
    for name, seconds in spent.items():
        print(f"| {name} | {1000 * seconds / args.steps:.1f} |")
    print(
        f"speed-up: {spent['torch SparseAdam'] / spent['distgnn']:.2f}x; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB; "
        f"first table {table.numel() * table.element_size() / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
