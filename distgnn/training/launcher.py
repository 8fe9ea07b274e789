"""The Ray Train shell around :func:`distgnn.training.loop.fit`: it builds the strategy in each
worker, hands ``fit`` Ray's report and checkpoint, and starts the workers from the driver.

Ray stays at the edges: ``fit`` takes ``report`` as a callable, so the single-process path (tests,
``--single-process``) is the same loop without Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from distgnn.core.cli import configure_logging
from distgnn.core.cluster import start_ray
from distgnn.core.config import PrepareConfig, TrainJobConfig, build_config, config_to_dict, replace_nested
from distgnn.core.errors import ConfigError
from distgnn.core.rundir import RESULTS_FILE
from distgnn.data.graph import load_graph, verify_graph_dir
from distgnn.data.partition import verify_partitions
from distgnn.training.loop import fit
from distgnn.training.partitioned import Partitioned
from distgnn.training.replicated import Replicated

log = logging.getLogger(__name__)


def build_strategy(job: TrainJobConfig, device: torch.device = torch.device("cpu")) -> Replicated | Partitioned:
    """The strategy ``cluster.partitioned`` names, built in this worker (threads set first)."""
    torch.set_num_threads(job.cluster.threads_per_worker)
    return (Partitioned if job.cluster.partitioned else Replicated)(job, device=device)


def train_in_process(job: TrainJobConfig, run_dir: Path) -> dict[str, Any]:
    """The whole loop in this process, without Ray (tests, debugging)."""
    return fit(job, run_dir, build_strategy(job))


def ray_worker(loop_config: dict) -> None:
    """What each Ray Train worker runs."""
    import ray.train
    import ray.train.torch

    job = build_config(TrainJobConfig, loop_config["job"])
    configure_logging(verbose=job.run.verbose)
    if not job.run.verbose:
        # Ray gives workers a root handler at INFO: its per-report lines would come through it, and
        # ours twice. Ours go through our handler only; the rest from WARNING.
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("distgnn").propagate = False
    if ray.train.get_context().get_world_rank() != 0:  # one worker's log is enough
        logging.getLogger("distgnn").setLevel(logging.WARNING)
    run_dir = Path(loop_config["run_dir"])
    strategy = build_strategy(job, ray.train.torch.get_device())

    def report(metrics: dict, folder: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
        ray.train.report(metrics, checkpoint=ckpt)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        fit(job, run_dir, strategy, report=report)
    else:
        with checkpoint.as_directory() as folder:
            fit(job, run_dir, strategy, report=report, restore=Path(folder))


def launch(job: TrainJobConfig, run_dir: Path) -> dict[str, Any]:
    """Run :func:`fit` on ``cluster.num_workers`` Ray Train workers; returns the results."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    start_ray(job.cluster.address, verbose=job.run.verbose)
    use_gpu = job.cluster.use_gpu == "true" or (
        job.cluster.use_gpu == "auto" and ray.cluster_resources().get("GPU", 0) > 0
    )
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"job": config_to_dict(job), "run_dir": str(run_dir.resolve())},
        scaling_config=ScalingConfig(
            num_workers=job.cluster.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": job.cluster.cpus_per_worker},
        ),
        run_config=RunConfig(
            name="ray",
            storage_path=storage_path(job, run_dir),
            failure_config=FailureConfig(max_failures=job.cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray's per-report and per-checkpoint lines are noise to a person
            logging_config=LoggingConfig(log_level="INFO" if job.run.verbose else "WARNING"),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return json.loads((run_dir / RESULTS_FILE).read_text())


def storage_path(job: TrainJobConfig, run_dir: Path) -> str:
    """Where Ray Train keeps the checkpoints: ``run.storage/NAME`` when set, else the run directory."""
    return f"{job.run.storage.rstrip('/')}/{run_dir.name}" if job.run.storage else str(run_dir.resolve())


def resolve_graph(job: TrainJobConfig) -> TrainJobConfig:
    """Point the job at a verified graph directory (an absolute path: Ray workers run in other
    folders), preparing the synthetic default if none is given."""
    if job.graph:
        verify_graph_dir(job.graph)
        needed = (["rating"] if job.task == "rating" else []) + (["weight"] if job.optim.edge_weight else [])
        graph = load_graph(job.graph)
        for column in needed:  # fail here, in one line, rather than inside every Ray worker
            graph.require_column("train", column)
        if job.cluster.partitioned:
            verify_partitions(job.graph, job.cluster.num_workers)
        return replace_nested(job, graph=str(Path(job.graph).resolve()))
    if job.cluster.partitioned:
        raise ConfigError(
            "config key 'cluster.partitioned': needs a partitioned --graph (python -m "
            "distgnn.partition --graph DIR --partitions N, N = cluster.num_workers)"
        )
    from distgnn.data.prepare import prepare

    s = job.synthetic
    # the folder name carries a digest of every generator setting, so a changed setting never
    # reuses a stale graph
    digest = hashlib.sha1(json.dumps(config_to_dict(s), sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(job.run.output_dir) / f"synthetic-u{s.num_users}-i{s.num_items}-{digest}"
    if not (folder / "meta.json").exists():
        log.info("no --graph given: preparing the built-in synthetic dataset in %s", folder)
        prepare_log = logging.getLogger("distgnn.data.prepare")
        level = prepare_log.level
        prepare_log.setLevel(logging.WARNING)  # its per-step lines are one line too many here
        try:
            prepare(PrepareConfig(output=str(folder), synthetic=s, split="random"))
        finally:
            prepare_log.setLevel(level)
    return replace_nested(job, graph=str(folder.resolve()))
