"""Scaling of training throughput with the number of Ray Train workers, with a per-step time split.

    python -m benchmarks.scaling --graph data/gowalla --config configs/gowalla.yaml --workers 1,2,4
    python -m benchmarks.scaling --weak --edges-per-worker 2500000 --workers 1,2,4

Strong scaling: the same graph, the same per-worker batch, ``--steps`` steps per worker; the figure
is positive training edges per second over all workers (``edges_per_s`` of the epoch record: steps
x batch x workers / the slowest worker's epoch time). Weak scaling: a synthetic graph of
``--edges-per-worker`` x W training edges for W workers. Every row gives the mean milliseconds per
step of each phase (``step_ms``: sampling, forward incl. row fetch, backward, waiting for the
slowest worker at the exchange barrier, the gradient exchange to the rows' owners, the optimizer,
waiting for the updated rows to reach every worker), measured with
``run.profile true``. Workers run one torch thread each; with more workers than cores they share
cores, and the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from distgnn.core.cluster import start_ray
from distgnn.core.config import PrepareConfig, SyntheticConfig, TrainJobConfig, load_config, replace_nested
from distgnn.core.rundir import create_run_dir, read_history
from distgnn.data.prepare import prepare
from distgnn.training.launcher import launch

PHASES = ("sample", "forward", "backward", "wait", "exchange", "optimizer", "share")


def run_one(job: TrainJobConfig, out: Path, tag: str) -> dict:
    # a fresh run each time: re-using a run name would resume the finished run instead of training
    shutil.rmtree(out / "runs" / tag, ignore_errors=True)
    run_dir = create_run_dir(job, str(out / "runs"), tag)
    results = launch(job, run_dir)
    record = read_history(run_dir)[-1]
    return {
        "tag": tag,
        "workers": job.cluster.num_workers,
        "steps": record["steps"],
        "batch_per_worker": job.optim.batch_size,
        "train_s": record["train_s"],
        "edges_per_s": record["edges_per_s"],
        "step_ms": record["step_ms"],
        "peak_rss_mb_per_worker": round(results["peak_rss_mb_per_worker"]),
    }


def synthetic_graph(out: Path, edges: int) -> Path:
    """A planted-taste synthetic graph with about ``edges`` interactions (30 per user on average)."""
    users = max(1000, edges // 30)
    folder = out / "graphs" / f"synthetic-{edges}"
    if not (folder / "meta.json").exists():
        prepare(
            PrepareConfig(
                output=str(folder),
                split="random",
                val_fraction=0.0,
                test_fraction=0.05,
                synthetic=SyntheticConfig(num_users=users, num_items=max(2000, users // 10)),
            )
        )
    return folder


def table(rows: list[dict], cores: int) -> str:
    base = {r["tag"].rsplit("-w", 1)[0]: r["edges_per_s"] for r in rows if r["workers"] == 1}
    head = (
        "| run | workers | cores shared | steps x batch | edges/s | speed-up | "
        + " | ".join(f"{p} ms" for p in PHASES)
        + " | peak RSS/worker MiB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        speedup = r["edges_per_s"] / base[r["tag"].rsplit("-w", 1)[0]] if r["tag"].rsplit("-w", 1)[0] in base else 0
        shared = "yes" if r["workers"] > cores else "no"
        lines.append(
            f"| {r['tag']} | {r['workers']} | {shared} | {r['steps']} x {r['batch_per_worker']} | "
            f"{r['edges_per_s']:,.0f} | {speedup:.2f}x | "
            + " | ".join(f"{r['step_ms'].get(p, 0):.1f}" for p in PHASES)
            + f" | {r['peak_rss_mb_per_worker']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_split) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in sorted({r["tag"].rsplit("-w", 1)[0] for r in rows}):
        mine = [r for r in rows if r["tag"].startswith(kind + "-w")]
        ax_rate.plot([r["workers"] for r in mine], [r["edges_per_s"] for r in mine], marker="o", label=kind)
    ax_rate.set(xlabel="workers (1 thread each)", ylabel="positive edges / s", title="throughput")
    ax_rate.legend()
    ax_rate.grid(alpha=0.3)
    bottom = [0.0] * len(rows)
    for phase in PHASES:
        values = [r["step_ms"].get(phase, 0) for r in rows]
        ax_split.bar(range(len(rows)), values, bottom=bottom, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax_split.set_xticks(range(len(rows)), [r["tag"] for r in rows], rotation=30, ha="right")
    ax_split.set(ylabel="ms per step", title="where a step's time goes")
    ax_split.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", default="", help="graph directory for strong scaling")
    parser.add_argument("--config", default="", help="training config (YAML) the runs start from")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run")
    parser.add_argument("--steps", type=int, default=150, help="steps per worker per run")
    parser.add_argument("--weak", action="store_true", help="weak scaling on synthetic graphs instead")
    parser.add_argument("--edges-per-worker", type=int, default=2_500_000, help="weak scaling: edges per worker")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--out", default="benchmarks/out/scaling", help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = [int(w) for w in args.workers.split(",")]
    start_ray(num_cpus=max(workers))
    overrides = dict(kv.split("=", 1) for kv in args.set)
    rows = []
    for w in workers:
        graph = synthetic_graph(out, args.edges_per_worker * w) if args.weak else Path(args.graph)
        kind = f"weak-{args.edges_per_worker * w // 1_000_000}M" if args.weak else graph.name
        job = load_config(
            TrainJobConfig,
            args.config or None,
            **{
                "graph": str(graph.resolve()),
                "cluster.num_workers": w,
                "cluster.threads_per_worker": 1,
                "optim.epochs": 1,
                "optim.max_steps_per_epoch": args.steps,
                "optim.time_budget_min": 0,
                "eval.max_users": 2000,
                "run.profile": True,
                **overrides,
            },
        )
        job = replace_nested(job, **{"run.name": f"{kind}-w{w}"})
        rows.append(run_one(job, out, f"{kind if not args.weak else 'weak'}-w{w}"))
        print(json.dumps(rows[-1]), flush=True)
    (out / ("weak.json" if args.weak else "strong.json")).write_text(json.dumps(rows, indent=2))
    print(table(rows, os.cpu_count() or 1))
    plot(rows, out / ("weak.png" if args.weak else "strong.png"))


if __name__ == "__main__":
    main()
