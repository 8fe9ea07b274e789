"""Partitioned training with P = 1, 2, 4, 8 parts (one Ray worker each) on one machine.

    python -m benchmarks.partitioned --graph /tmp/part/syn10m --parts 1,2,4,8 --steps 20 --epochs 1 \\
        --global-batch 4096 --eval-users 4000 --out benchmarks/out/partitioned-syn10m
    python -m benchmarks.partitioned --graph data/gowalla --parts 1,4 --epochs 4 --global-batch 4096 \\
        --out benchmarks/out/partitioned-gowalla

For each P the graph is partitioned (``--method``, default metis; skipped when ``parts/`` already holds
P parts of that method), then ``distgnn.training.loop`` runs with ``cluster.partitioned`` on P Ray workers:
each worker loads only its part and its rows of the embedding table. The global batch is held fixed
(``--global-batch``, split evenly over the workers), so every P trains the same way. Per P it records:
edge cut, peak RSS per worker (whole process, and above the process's start: part + routing arrays +
embeddings + Adam state + step buffers), bytes each worker sends per step, the fraction of sampled
frontier nodes another part owned, step time and test Recall@20. Several workers share a core here,
so step times are the sum of all workers' work, not the time P machines would take.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def ensure_parts(graph: Path, num_parts: int, method: str) -> dict:
    from distgnn.data.partition import write_partitions

    meta_file = graph / "parts" / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta["num_parts"] == num_parts and meta["method"] == method:
            return meta["stats"]
    return write_partitions(graph, num_parts, method=method)


def run_one(graph: Path, num_parts: int, args, out: Path) -> dict:
    from distgnn.core.config import TrainJobConfig, load_config
    from distgnn.core.rundir import create_run_dir
    from distgnn.training.launcher import launch

    stats = ensure_parts(graph, num_parts, args.method)
    overrides = {
        "graph": str(graph.resolve()),
        "cluster.partitioned": True,
        "cluster.num_workers": num_parts,
        "cluster.cpus_per_worker": 1,
        "optim.batch_size": args.global_batch // num_parts,
        "optim.epochs": args.epochs,
        "optim.max_steps_per_epoch": args.steps,
        "eval.max_users": args.eval_users,
        "eval.patience": 0,
        "eval.every": args.epochs,
        "cluster.max_failures": 0,
        "optim.time_budget_min": 0,
    }
    job = load_config(TrainJobConfig, args.config, **overrides)
    run_dir = create_run_dir(job, str(out / "runs"), f"P{num_parts}-{time.strftime('%H%M%S')}")
    t0 = time.perf_counter()
    results = launch(job, run_dir)
    wall_s = time.perf_counter() - t0
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = history[-1]["traffic"]
    step_s = sum(h["train_s"] for h in history) / sum(h["steps"] for h in history)
    return {
        "P": num_parts,
        "edge_cut": stats["edge_cut"],
        "balance": stats["balance"],
        "peak_rss_mb": results["peak_rss_mb_per_worker"],
        "peak_rss_above_start_mb": results["peak_rss_mb_above_start"],
        "peak_rss_training_mb": results["peak_rss_mb_training"],
        "held_mb": sum(results["held_mb"].values()),
        "held_detail_mb": results["held_mb"],
        "bytes_per_step": steps["bytes_sent_per_step"],
        "remote_sample_fraction": steps["remote_sample_fraction"],
        "remote_row_fraction": steps["remote_row_fraction"],
        "rows_fetched_per_step": steps["rows_fetched_per_step"],
        "step_s": step_s,
        "epochs": len(history),
        "recall@20": results["test"]["recall@20"],
        "ndcg@20": results["test"]["ndcg@20"],
        "popularity_recall@20": results["popularity_test"]["recall@20"],
        "wall_s": wall_s,
        "run_dir": str(run_dir),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| P | edge cut | held MiB | vs P=1 | peak RSS/worker MiB | vs P=1 | during training MiB | "
        "above start MiB | MB sent/step/worker | "
        "remote sample frac | remote row frac | rows fetched/step | step s | epochs | Recall@20 | NDCG@20 |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    base, held = rows[0]["peak_rss_mb"], rows[0]["held_mb"]
    for r in rows:
        lines.append(
            f"| {r['P']} | {r['edge_cut']:.3f} | {r['held_mb']:.0f} | {r['held_mb'] / held:.0%} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base:.0%} | {r['peak_rss_training_mb']:.0f} | "
            f"{r['peak_rss_above_start_mb']:.0f} | {r['bytes_per_step'] / 1e6:.2f} | "
            f"{r['remote_sample_fraction']:.3f} | {r['remote_row_fraction']:.3f} | "
            f"{r['rows_fetched_per_step']:,.0f} | {r['step_s']:.3f} | {r['epochs']} | "
            f"{r['recall@20']:.4f} | {r['ndcg@20']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", required=True, help="prepared graph directory")
    parser.add_argument("--parts", default="1,2,4,8", help="comma-separated numbers of parts = workers")
    parser.add_argument("--method", default="metis", choices=("metis", "random", "hash"), help="partitioning")
    parser.add_argument("--config", default=None, help="YAML training config the runs start from")
    parser.add_argument("--global-batch", type=int, default=4096, help="training edges per step, all workers")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run")
    parser.add_argument("--steps", type=int, default=0, help="cap on steps per epoch (0 = full epochs)")
    parser.add_argument("--eval-users", type=int, default=0, help="evaluate a sample of this many users (0 = all)")
    parser.add_argument("--out", default="benchmarks/out/partitioned", help="folder for runs and results")
    args = parser.parse_args()
    import ray

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [int(p) for p in args.parts.split(",")]
    ray.init(num_cpus=max(parts), include_dashboard=False, logging_level="ERROR")
    rows = []
    for p in parts:
        rows.append(run_one(Path(args.graph), p, args, out))
        print(json.dumps(rows[-1]), flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; graph {args.graph}")
    print(table(rows))


if __name__ == "__main__":
    main()
