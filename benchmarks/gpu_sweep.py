"""Many training configs at once on one GPU machine, one single-process run per config.

    python -m benchmarks.gpu_sweep --config configs/gowalla.yaml --graph data/gowalla \
        --sweep configs/search/gowalla-sweep.jsonl --seconds 520 --out sweep-out

Each line of --sweep is ``{"name": ..., "o": {dotted.key: value, ...}}``. Every config runs
:func:`distgnn.training.loop.train_loop` in its own process (sampling on the CPU, the model on the GPU when
there is one) until it ends or --seconds pass; the per-epoch curves are printed as a table.

Why not Ray Tune: the lent GPU machines have no Ray (nothing can be installed there), and this is a
screen for directions (which loss, depth, temperature), not the search whose result is reported;
that one is ``python -m distgnn.tune``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def run_config(config: str, graph: str, name: str, overrides: dict, out: Path) -> None:
    """One config in this process (the child side of the sweep)."""
    import torch

    from distgnn.core.cli import configure_logging
    from distgnn.core.config import TrainJobConfig, load_config
    from distgnn.core.rundir import create_run_dir
    from distgnn.training.launcher import build_strategy
    from distgnn.training.loop import fit

    configure_logging()
    job = load_config(
        TrainJobConfig,
        config,
        **{"graph": graph, "run.name": name, "run.output_dir": str(out), "optim.time_budget_min": 0, **overrides},
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fit(job, create_run_dir(job, str(out), name), build_strategy(job, device))


def curves(out: Path, metric: str) -> list[str]:
    """One line per run: ``name  value(train s) value(train s) ...`` per evaluated epoch."""
    lines = []
    for history in sorted(out.glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in history.read_text().splitlines()]
        points = " ".join(f"{r['eval'][metric]:.4f}({r['train_s']:.0f}s)" for r in rows if "eval" in r)
        lines.append(f"{history.parent.name:24s} {points}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="base training config (YAML)")
    parser.add_argument("--graph", required=True, help="prepared graph directory")
    parser.add_argument("--sweep", required=True, help="JSONL file: one {name, o} config per line")
    parser.add_argument("--seconds", type=int, default=520, help="wall-clock limit of each config")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per config")
    parser.add_argument("--metric", default="recall@20", help="metric shown per epoch")
    parser.add_argument("--out", default="benchmarks/out/gpu-sweep", help="folder for the runs")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process: JSON of one line
    args = parser.parse_args()
    out = Path(args.out)
    if args.one:
        line = json.loads(args.one)
        run_config(args.config, args.graph, line["name"], line["o"], out)
        return
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    children = []
    for raw in Path(args.sweep).read_text().splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        line["o"].setdefault("cluster.threads_per_worker", args.threads)
        log = open(out / f"{line['name']}.log", "w")
        command = [
            "timeout",
            str(args.seconds),
            sys.executable,
            "-m",
            "benchmarks.gpu_sweep",
            "--config",
            args.config,
            "--graph",
            args.graph,
            "--sweep",
            args.sweep,
            "--out",
            str(out),
            "--one",
            json.dumps(line),
        ]
        children.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    for child in children:
        child.wait()
    print("\n".join(curves(out, args.metric)))


if __name__ == "__main__":
    main()
