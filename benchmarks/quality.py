"""Recommendation quality of distgnn's distributed training next to popularity and item-kNN baselines.

    python -m benchmarks.quality                      # synthetic default and MovieLens-100K
    python -m benchmarks.quality --datasets ml-100k --models lightgcn,mf

Each row trains with `distgnn.training.loop.launch` (Ray Train workers, DDP) and reads the run's results.json;
the table goes to stdout and to --out as Markdown.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from distgnn.core.config import PrepareConfig, TrainJobConfig, load_config, replace_nested
from distgnn.core.rundir import create_run_dir
from distgnn.data.graph import load_graph
from distgnn.data.prepare import prepare
from distgnn.eval.protocol import evaluate_item_knn_baseline
from distgnn.training.launcher import launch, resolve_graph

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# dataset name -> (prepare config or None for the built-in synthetic default, training config file)
DATASETS = {
    "synthetic": (None, "configs/default.yaml"),
    "ml-100k": (PrepareConfig(input=str(SHARED / "ml-100k"), split="given", val_fraction=0.1), "configs/ml-100k.yaml"),
    "ml-100k-random": (
        PrepareConfig(input=str(SHARED / "ml-100k"), split="random", val_fraction=0.1, test_fraction=0.2),
        "configs/ml-100k.yaml",
    ),
    "gowalla": (PrepareConfig(input=str(SHARED / "gowalla"), split="given", val_fraction=0.0), "configs/gowalla.yaml"),
}

MODELS = {
    "lightgcn": {},
    "lightgcn-nobias": {"model.item_bias": False},
    "mf": {"model.name": "mf"},
    "lightgcn-bpr": {"optim.loss": "bpr", "optim.lr": 0.005},
}


def run_one(dataset: str, model: str, work: Path, workers: int) -> dict:
    prep, config_file = DATASETS[dataset]
    job = load_config(TrainJobConfig, config_file, **MODELS[model], **{"cluster.num_workers": workers})
    if prep is not None:
        graph = work / "graphs" / dataset
        if not (graph / "meta.json").exists():
            prepare(replace_nested(prep, output=str(graph)))
        job = replace_nested(job, graph=str(graph))
    job = resolve_graph(replace_nested(job, **{"run.output_dir": str(work / "runs")}))
    run_dir = create_run_dir(job, str(work / "runs"), f"{dataset}-{model}")
    t0 = time.perf_counter()
    results = launch(job, run_dir)
    results["wall_s"] = time.perf_counter() - t0
    results["graph"] = job.graph
    return results


def item_knn(graph_dir: str, neighbors: int) -> dict:
    """Test metrics of item-kNN on the graph, as training evaluates (all users, same exclusions)."""
    graph = load_graph(graph_dir)
    return evaluate_item_knn_baseline(graph, "test", (20,), neighbors=neighbors, batch_size=1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="synthetic,ml-100k", help=f"comma-separated, of {list(DATASETS)}")
    parser.add_argument("--models", default="lightgcn,mf", help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    parser.add_argument("--work", default="benchmarks/out/quality", help="folder for graphs and runs")
    parser.add_argument("--knn-neighbors", type=int, default=100, help="neighbors per item of the item-kNN baseline")
    parser.add_argument("--out", default="benchmarks/out/quality.md", help="Markdown table to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    ray.init(logging_level="ERROR", include_dashboard=False)
    lines = [
        "| dataset | model | Recall@20 | NDCG@20 | popularity Recall@20 | popularity NDCG@20 | item-kNN Recall@20 "
        "| item-kNN NDCG@20 | epochs (best) | train s | wall s | workers | peak RSS/worker MiB |",
        "|" + "---|" * 13,
    ]
    for dataset in args.datasets.split(","):
        knn = None
        for model in args.models.split(","):
            r = run_one(dataset, model, Path(args.work), args.workers)
            knn = knn or item_knn(r["graph"], args.knn_neighbors)
            t, p = r["test"], r["popularity_test"]
            lines.append(
                f"| {dataset} | {model} | {t['recall@20']:.4f} | {t['ndcg@20']:.4f} | {p['recall@20']:.4f} "
                f"| {p['ndcg@20']:.4f} | {knn['recall@20']:.4f} | {knn['ndcg@20']:.4f} "
                f"| {r['epochs_run']} ({r['best_epoch']}) | {r['train_s']:.0f} "
                f"| {r['wall_s']:.0f} | {r['num_workers']} | {r['peak_rss_mb_per_worker']:.0f} |"
            )
            print(lines[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
