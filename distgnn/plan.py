"""python -m distgnn.plan: the memory and traffic plan of a training job, before it runs.

    python -m distgnn.plan --graph data/big --workers 2 --partitioned
    python -m distgnn.plan --config configs/gowalla.yaml --graph data/gowalla --model.dim 128 --gpu-memory 80

It takes the options of ``python -m distgnn.train`` (``--config`` and ``--section.key value``), so
the plan is of the job train would run; train prints the same plan as one line and refuses a job
that does not fit. Parse -> plan (:mod:`distgnn.training.plan`) -> print.
"""

from __future__ import annotations

import sys

from distgnn.core.cli import configure_logging, run_command, user_path
from distgnn.core.config import TrainJobConfig, config_from_args, make_parser, replace_nested
from distgnn.core.errors import ConfigError
from distgnn.training import plan as planning
from distgnn.training.checks import check_job


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(
        TrainJobConfig,
        prog="python -m distgnn.plan",
        description="Plan a training job on a prepared graph without running it: each worker's and the "
        "driver's peak memory term by term, the bytes a step sends, and whether it fits this node "
        "(Ray's memory monitor kills workers past 95%% of its memory) or a GPU. Takes every option "
        "of python -m distgnn.train.",
    )
    parser.add_argument("--workers", dest="cluster.num_workers", metavar="P", help="= --cluster.num_workers P")
    parser.add_argument(
        "--partitioned", dest="cluster.partitioned", action="store_const", const=True,
        help="= --cluster.partitioned true",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-memory", dest="gpu_memory", type=float, default=None, metavar="GB",
        help="judge a worker's device memory against a GPU of this many GB instead of this node's memory",
    )  # fmt: skip
    parser.add_argument(
        "--sample-batches", dest="sample_batches", type=int, default=4, metavar="N",
        help="batches sampled on the memory-mapped CSR to count a step's rows (0: from the degree "
        "distribution alone, as train does before Ray starts; default: 4)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    gpu_memory, sample_batches = args.__dict__.pop("gpu_memory"), args.__dict__.pop("sample_batches")
    configure_logging()
    return run_command(lambda: plan_command(args, gpu_memory, sample_batches))


def plan_command(args, gpu_memory: float | None, sample_batches: int) -> int:
    job = config_from_args(TrainJobConfig, args)
    check_job(job)
    if not job.graph:
        raise ConfigError("config key 'graph': the plan needs a prepared graph directory (--graph DIR)")
    if gpu_memory is not None and not gpu_memory > 0:
        raise ConfigError(f"--gpu-memory: expected a positive number of GB, got {gpu_memory}")
    job = replace_nested(job, graph=user_path(job.graph, "config key 'graph'"))
    planner = planning.make_planner(job, sample_batches=sample_batches)
    plan = planner.plan(job)
    machine = planning.machine_here(job, gpu_memory_gb=gpu_memory)
    verdict = planning.judge(plan, machine)
    options = [] if verdict.fits else planning.options_that_fit(planner, job, machine)
    print(planning.plan_table(plan, verdict, options, job=job, size=planner.size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
