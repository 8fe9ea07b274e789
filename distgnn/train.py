"""python -m distgnn.train: train a GNN recommender with Ray Train workers.

    python -m distgnn.train                                  # synthetic default, 2 workers
    python -m distgnn.train --config configs/gowalla.yaml --optim.epochs 30
    launch/submit.sh --config configs/gowalla.yaml           # ray job submit -- python -m distgnn.train ...

Parse -> validate (before Ray starts) -> prepare the run directory -> train -> print the results.
"""

from __future__ import annotations

import logging
import sys
import time

from distgnn.core.cli import configure_logging, run_command, user_path
from distgnn.core.config import TrainJobConfig, config_from_args, make_parser, replace_nested
from distgnn.core.errors import ConfigError
from distgnn.core.rundir import create_run_dir, plot_curves, read_history, results_table
from distgnn.core.storage import upload
from distgnn.eval.protocol import SAMPLES_FILE
from distgnn.training.checks import check_job
from distgnn.training.launcher import launch, plan_before_launch, resolve_graph, storage_path, train_in_process
from distgnn.training.loop import peak_rss_mb

log = logging.getLogger("distgnn.train")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        TrainJobConfig,
        prog="python -m distgnn.train",
        description="Train a GNN recommender with Ray Train workers on neighbor-sampled "
        "mini-batches. With no arguments: the built-in synthetic dataset, "
        "LightGCN, 2 workers. Relative paths resolve against $DISTGNN_BASE_DIR "
        "when set (launch/submit.sh sets it), else the current folder.",
    )
    parser.add_argument(
        "--single-process", action="store_true", help="run the training loop in this process, without Ray (debugging)"
    )
    args = parser.parse_args(argv)
    single = args.__dict__.pop("single_process")
    configure_logging(verbose=args.__dict__.get("run.verbose") in ("true", "1", "yes"))
    return run_command(lambda: train_command(args, single))


def train_command(args, single: bool) -> int:
    job = config_from_args(TrainJobConfig, args)
    check_job(job)
    if single and job.cluster.partitioned:
        raise ConfigError("--single-process trains on the whole graph; drop --cluster.partitioned")
    job = replace_nested(
        job,
        **{
            "graph": user_path(job.graph, "config key 'graph'"),
            "run.output_dir": user_path(job.run.output_dir, "config key 'run.output_dir'", output=not job.run.storage),
            "run.storage": user_path(job.run.storage, "config key 'run.storage'", output=True),
        },
    )
    job = resolve_graph(job)
    plan = None if single else plan_before_launch(job)  # a job that will not fit is refused before any run directory
    run_dir = create_run_dir(job, job.run.output_dir, job.run.name)
    workers = "1 process" if single else f"{job.cluster.num_workers} Ray worker(s)"
    log.info("graph %s, model %s, %s; run directory %s", job.graph, job.model.name, workers, run_dir)
    t0 = time.perf_counter()
    # the workers write everything, samples.csv included: this process never holds the graph or the model
    results = train_in_process(job, run_dir) if single else launch(job, run_dir, plan=plan)
    wall_s = time.perf_counter() - t0
    plot = plot_curves(run_dir, read_history(run_dir), job.eval.metric)
    samples = run_dir / SAMPLES_FILE
    if job.run.storage:
        log.info("copied the run directory to %s", upload(run_dir, storage_path(job, run_dir)))
    print(f"\nTest metrics (best epoch {results['best_epoch']}, {results['epochs_run']} epochs, {wall_s:.0f} s wall):")
    rows = {job.model.name: results["test"], **results["baselines_test"]}
    print(results_table(rows, shown_metrics(job, results["test"])))
    print(f"peak RSS per worker {results['peak_rss_mb_per_worker']:.0f} MiB, driver {peak_rss_mb():.0f} MiB")
    print(
        f"\nrun directory: {run_dir}  (curves: {plot.name if plot else '-'}, metrics.jsonl, results.json, "
        f"{samples.name}: top-10 of 5 test users with the items' features)"
    )
    return 0


def shown_metrics(job, test: dict) -> list[str]:
    """The results table's columns: RMSE/MAE for the rating task, Recall/NDCG@K for ranking (with
    MRR/Precision at K <= 5, the top-3 style lists), the sampled-negatives HR/NDCG and the cold users'
    Recall/NDCG at the largest K when computed."""
    if job.task == "rating":
        return ["rmse", "mae"]
    names = [f"{m}@{k}" for k in job.eval.ks for m in ("recall", "ndcg")]
    names += [f"{m}@{k}" for k in job.eval.ks if k <= 5 for m in ("mrr", "precision")]
    names += [f"sampled_{m}@{k}" for k in job.eval.ks for m in ("hr", "ndcg") if f"sampled_{m}@{k}" in test]
    names += [f"cold/{m}@{k}" for k in job.eval.ks[-1:] for m in ("recall", "ndcg") if f"cold/{m}@{k}" in test]
    return names


if __name__ == "__main__":
    sys.exit(main())
