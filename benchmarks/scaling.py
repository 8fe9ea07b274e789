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
cores, and the table says so. ``--launch processes`` runs the same loop on plain processes joined in
a gloo group (the difference is what Ray's own processes cost the workers); ``--launch copies``
runs W independent one-worker trainings at once, which never communicate: the most this machine
gives W copies of the work, the ceiling of any data-parallel scheme. ``--repeats`` interleaves
repeated runs; the table gives the median run and the range.

    python -m benchmarks.scaling --graph data/gowalla --config configs/gowalla.yaml --workers 1,2 \
        --repeats 3 --launch copies
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
from pathlib import Path

import torch.distributed as tdist
import torch.multiprocessing as mp

from distgnn.core.cluster import start_ray
from distgnn.core.config import PrepareConfig, SyntheticConfig, TrainJobConfig, load_config, replace_nested
from distgnn.core.rundir import RESULTS_FILE, create_run_dir, read_history
from distgnn.data.prepare import prepare
from distgnn.training.launcher import build_strategy, launch
from distgnn.training.loop import fit

LAUNCHERS = {
    "ray": "Ray Train workers",
    "processes": "plain processes, one gloo group",
    "copies": "independent copies, no communication",
}
PHASES = ("sample", "forward", "backward", "wait", "exchange", "optimizer", "share")


def fit_in_process(rank: int, world: int, port: int, job: TrainJobConfig, run_dirs: list[str]) -> None:
    """One process of :func:`launch_processes`: the same loop and strategy as a Ray Train worker,
    in a gloo group of ``world`` (``world`` 1: an independent copy, run_dirs[rank] its own)."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fit(job, Path(run_dirs[rank if world == 1 else 0]), build_strategy(job))
    finally:
        if world > 1:
            tdist.destroy_process_group()


def launch_processes(job: TrainJobConfig, run_dirs: list[Path], *, copies: bool) -> None:
    """The workers as plain processes (no Ray): one gloo group, or (``copies``) as many
    independent one-worker runs at once that never communicate."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = len(run_dirs) if copies else job.cluster.num_workers
    world = 1 if copies else procs
    mp.spawn(fit_in_process, args=(world, port, job, [str(d) for d in run_dirs]), nprocs=procs)


def run_one(job: TrainJobConfig, out: Path, tag: str, launcher: str) -> dict:
    """One row: ``launcher`` ray (Ray Train, as ``distgnn.train``), processes (the same workers
    without Ray), or copies (``cluster.num_workers`` independent one-worker runs at once: what the
    machine gives that many copies of the work when they never talk, the ceiling of any scheme)."""
    workers = job.cluster.num_workers
    names = [f"{tag}-copy{i}" for i in range(workers)] if launcher == "copies" else [tag]
    run_dirs = []
    for name in names:
        # a fresh run each time: re-using a run name would resume the finished run instead of training
        shutil.rmtree(out / "runs" / name, ignore_errors=True)
        run_dirs.append(create_run_dir(job, str(out / "runs"), name))
    if launcher == "ray":
        launch(job, run_dirs[0])
    else:
        alone = replace_nested(job, **{"cluster.num_workers": 1}) if launcher == "copies" else job
        launch_processes(alone, run_dirs, copies=launcher == "copies")
    records = [read_history(d)[-1] for d in run_dirs]
    results = [json.loads((d / RESULTS_FILE).read_text()) for d in run_dirs]
    return {
        "tag": tag,
        "launcher": launcher,
        "workers": workers,
        "steps": records[0]["steps"],
        "batch_per_worker": job.optim.batch_size,
        "train_s": max(r["train_s"] for r in records),
        "edges_per_s": sum(r["edges_per_s"] for r in records),  # copies: their sum
        "step_ms": {k: sum(r["step_ms"][k] for r in records) / len(records) for k in records[0]["step_ms"]},
        "peak_rss_mb_per_worker": round(max(r["peak_rss_mb_per_worker"] for r in results)),
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


def kind_of(row: dict) -> str:
    return row["tag"].rsplit("-w", 1)[0]


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per (kind, workers): the run with the median edges/s (of an even number, the lower of
    the middle two), with the edges/s of every run."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((kind_of(r), r["workers"]), []).append(r)
    out = []
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: r["edges_per_s"])
        middle = dict(runs[(len(runs) - 1) // 2])
        middle["runs"] = [r["edges_per_s"] for r in runs]
        out.append(middle)
    return out


def table(rows: list[dict], cores: int) -> str:
    rows = median_rows(rows)
    base = {kind_of(r): r["edges_per_s"] for r in rows if r["workers"] == 1}
    head = (
        "| run | workers | cores shared | steps x batch | edges/s (median) | runs (edges/s) | speed-up | "
        + " | ".join(f"{p} ms" for p in PHASES)
        + " | peak RSS/worker MiB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        speedup = r["edges_per_s"] / base[kind_of(r)] if kind_of(r) in base else 0
        shared = "yes" if r["workers"] > cores else "no"
        lines.append(
            f"| {r['tag']} | {r['workers']} | {shared} | {r['steps']} x {r['batch_per_worker']} | "
            f"{r['edges_per_s']:,.0f} | {', '.join(f'{v:,.0f}' for v in r['runs'])} | {speedup:.2f}x | "
            + " | ".join(f"{r['step_ms'].get(p, 0):.1f}" for p in PHASES)
            + f" | {r['peak_rss_mb_per_worker']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    rows = median_rows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_split) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in sorted({kind_of(r) for r in rows}):
        mine = [r for r in rows if kind_of(r) == kind]
        label = f"{kind}: {LAUNCHERS[mine[0].get('launcher', 'ray')]}"
        ax_rate.plot([r["workers"] for r in mine], [r["edges_per_s"] for r in mine], marker="o", label=label)
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
    parser.add_argument(
        "--launch",
        choices=("ray", "processes", "copies"),
        default="ray",
        help="ray: Ray Train workers (as distgnn.train runs them); processes: the same loop on plain "
        "processes in one gloo group (what Ray's own processes cost); copies: W independent one-worker "
        "runs at once, never communicating (the most this machine gives W copies of the work)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="run the worker list this many times, interleaved")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--out", default="benchmarks/out/scaling", help="output folder")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workers = [int(w) for w in args.workers.split(",")]
    if args.launch == "ray":
        start_ray(num_cpus=max(workers))
    overrides = dict(kv.split("=", 1) for kv in args.set)
    rows = []
    for w in workers * args.repeats:
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
        suffix = "" if args.launch == "ray" else f"-{args.launch}"
        tag = f"{kind if not args.weak else 'weak'}{suffix}-w{w}"
        rows.append(run_one(job, out, tag, args.launch))
        print(json.dumps(rows[-1]), flush=True)
    name = ("weak" if args.weak else "strong") + ("" if args.launch == "ray" else f"-{args.launch}")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2))
    print(table(rows, os.cpu_count() or 1))
    plot(rows, out / f"{name}.png")


if __name__ == "__main__":
    main()
