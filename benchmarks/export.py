"""Exact layer-wise embeddings of a trained run: in one process vs on N Ray workers.

    python -m benchmarks.export --run runs/gowalla-lightgcn --workers 1,2 --out benchmarks/out/export

Each setting runs in a fresh Python process (so the driver's peak RSS is its own) through the code
`python -m distgnn.export --workers N` uses (:func:`distgnn.serving.export.exact_embeddings`), `--repeats`
times. Per setting it records: Ray start, worker start (actors spawned, graph rows loaded, adjacency
built) and layer time separately, the whole embedding time, the largest absolute difference from the
single-process embeddings (and whether they are bitwise equal), the driver's peak RSS and each
worker's (``ru_maxrss`` read inside the actor), its RSS once imports are done, the private memory
(USS) it gained from then to the end (what it holds: its rows' adjacency, allocator slack; not the
object store's shared layer tables), its rows, CSR entries and the MiB of adjacency it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np


def run_one(run: str, workers: int, chunk_size: int, out: Path) -> dict:
    """One setting, in this process: embeddings to ``out/emb-w{workers}.npy``, figures returned."""
    import torch

    from distgnn.serving.export import exact_embeddings, load_run
    from distgnn.training.loop import peak_rss_mb  # benchmarks may import any layer

    job, model, graph, _ = load_run(run)
    emb, info = exact_embeddings(model, job, graph, workers=workers, chunk_size=chunk_size)
    np.save(out / f"emb-w{workers}.npy", emb.numpy())
    return {
        **info,
        "driver_peak_rss_mb": peak_rss_mb(),
        "driver_threads": torch.get_num_threads(),
        "num_nodes": graph.num_nodes,
        "nnz": int(graph.indptr[-1]),
        "model": job.model.name,
        "num_layers": job.model.num_layers,
        "dim": job.model.dim,
    }


def measure(run: str, workers: int, chunk_size: int, out: Path) -> dict:
    """Run one setting in a fresh process and return its figures."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.export",
        "--run",
        run,
        "--one",
        str(workers),
        "--chunk-size",
        str(chunk_size),
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (
        "| workers | Ray start s | workers start s | layers s | embedding s (all) | max abs diff vs 1 | "
        "bitwise equal | driver peak RSS MiB | worker peak RSS MiB | worker RSS after imports MiB | "
        "worker private MiB added | rows per worker | CSR entries per worker | adjacency held MiB per worker |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        per = r.get("per_worker", [])

        def each(key: str, fmt: str, per: list = per) -> str:
            return " / ".join(format(w[key], fmt) for w in per) or "-"

        added = " / ".join(f"{w['uss_mb'] - w['uss_at_start_mb']:.0f}" for w in per) or "-"
        spans = " / ".join(f"{w['stop'] - w['start']:,}" for w in per) or f"{r['num_nodes']:,}"
        lines.append(
            f"| {r['workers']} | {r.get('ray_init_s', 0):.1f} | {r.get('workers_start_s', 0):.1f} | "
            f"{r.get('layers_s', r['embedding_s']):.2f} | {r['embedding_s']:.2f} | {r['max_abs_diff']:.1e} | "
            f"{'yes' if r['bitwise_equal'] else 'no'} | {r['driver_peak_rss_mb']:.0f} | {each('peak_rss_mb', '.0f')} | "
            f"{each('rss_at_start_mb', '.0f')} | {added} | "
            f"{spans} | "
            f"{each('nnz', ',')} | {each('held_mb', '.1f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory of a trained model")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (1 = in process)")
    parser.add_argument("--chunk-size", type=int, default=65536, help="destination rows per chunk")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting; the median time is shown")
    parser.add_argument("--out", default="benchmarks/out/export", help="folder for embeddings and results")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: one setting
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_one(args.run, args.one, args.chunk_size, out)))
        return

    counts = sorted({1, *(int(w) for w in args.workers.split(","))})  # 1 is the reference
    rows = []
    for workers in counts:
        runs = sorted(
            (measure(args.run, workers, args.chunk_size, out) for _ in range(args.repeats)),
            key=lambda r: r["embedding_s"],
        )
        row = runs[len(runs) // 2]  # the median run, with its own memory figures
        row["embedding_s_all"] = [r["embedding_s"] for r in runs]
        rows.append(row)
        print(json.dumps(row), flush=True)
    reference = np.load(out / "emb-w1.npy")
    for row in rows:
        emb = np.load(out / f"emb-w{row['workers']}.npy")
        row["max_abs_diff"] = float(np.abs(emb - reference).max())
        row["bitwise_equal"] = bool(np.array_equal(emb, reference))
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; run {args.run}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
